"""The training recipe's guards, with real training: a collapsed run is retried once at a lower learning rate
and then fails with its reason; ``nas train`` says so in one line and shows progress per epoch."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nas import data
from nas.budget import Budget
from nas.metrics import intervals_overlap, wilson_interval
from nas.spec import load_spec, parse_spec_string
from tests.shared import SHARED, require

NAS = str(Path(sys.executable).with_name("nas"))
TINY = "in16x1-w0.5-cn_r1_k3_s2_c16_re-ds_r1_k3_s2_c32_re-cls_n10_d0_re"


def test_chance_verdict() -> None:
    from nas.tf.train import MIN_STEPS_FOR_COLLAPSE, Chance

    y = np.repeat(np.arange(10), 100)  # balanced: chance 10%, two standard errors 1.9 points
    c, n = Chance.of(y, 10), MIN_STEPS_FOR_COLLAPSE
    assert c.majority_share == pytest.approx(0.1) and c.threshold == pytest.approx(0.1 + 2 * math.sqrt(0.09 / 1000))
    assert "uniform output" in c.verdict(math.log(10), 0.3, n)
    assert "at chance" in c.verdict(2.0, 0.11, n)
    assert c.verdict(2.0, 0.13, n) is None and c.verdict(2.29, 0.2, n) is None  # slow learning is not collapse
    assert c.verdict(math.log(10), 0.1, n - 1) is None  # too few steps to judge


def test_a_forced_collapse_is_retried_once_then_fails_with_its_reason() -> None:
    """A learning rate of 30 kills the network (uniform output, chance accuracy) at 30 and again at 7.5; judged
    once 300 steps are done (204 float steps, then the first QAT epoch)."""
    from nas.tf.train import TrainingError, train_qat

    ds = data.load("mnist")  # 3,250 training images: 204 steps of 16 an epoch
    events: list = []
    with pytest.raises(TrainingError, match=r"collapsed twice: at peak learning rate 30, .*; then at peak learning "
                                            r"rate 7\.5, .*after epoch 1 of the qat phase"):
        train_qat(parse_spec_string(TINY), ds, Budget(epochs=2, batch_size=16, learning_rate=30.0),
                  progress=events.append)
    assert [(e.attempt, e.phase) for e in events if e.val_metric is not None] == [(1, "float"), (1, "qat"),
                                                                                  (2, "float"), (2, "qat")]


def test_a_healthy_run_is_not_called_collapsed() -> None:
    from nas.tf.train import train_qat

    ds = data.load("mnist")
    events: list = []
    t = train_qat(parse_spec_string(TINY), ds, Budget(epochs=3, batch_size=16), progress=events.append)
    assert [a["outcome"] for a in t.attempts] == ["trained"] and t.val_metric > 0.2  # 10% is chance; it learns
    assert (t.plan.float_epochs, t.plan.qat_epochs) == (2, 1)
    ends = [(e.phase, e.epoch) for e in events if e.val_metric is not None]
    assert ends == [("float", 1), ("float", 2), ("qat", 1)]
    steps = [e.step for e in events]
    assert steps == sorted(steps) and steps[-1] == events[-1].total_steps == 3 * t.plan.steps_per_epoch
    assert set(t.timings) >= {"data", "build", "float_train", "quantize", "qat_train"}


def test_nas_train_reports_a_collapse_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    res = subprocess.run([NAS, "train", "--spec", TINY, "--dataset", "mnist", "--epochs", "4", "--batch-size", "32",
                          "--lr", "30", "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env)
    assert res.returncode == 1, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("nas train: training failed: training collapsed twice: at peak learning rate 30"), last
    assert "\n" not in last and "Traceback" not in res.stderr
    assert "train: float epoch 1/3" in res.stderr  # stderr is a pipe: one progress line per epoch
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_on_cifar10_the_legacy_recipe_barely_learns_and_the_default_does() -> None:
    """Issue 18's case at a test's size: MobileNetV3-Small 0.5 at 32 px on 10,000 CIFAR-10 images (6,500 to train).
    The issue's old settings (QAT from the first step, Adam 5e-3, batch 32, 4 epochs) get off the ground slowly
    (measured: validation accuracy 17.2%, 15.9%, 21.9%, 21.2%); on the full set they stick (17.3%, 15.9% after 2
    epochs, bench/results/recipe.md) and in the issue sat at ln 10 from epoch 2. The full-set collapse needs about
    2,600 QAT steps, minutes too many for the default suite; this subset shows the gap. The default recipe,
    float first with warm-up, learns in 3 epochs (measured: 32.9%), and the gap is beyond both 95% intervals."""
    from nas.tf.train import train_qat

    ds = data.load(str(require(SHARED / "data" / "cifar10")), limit=10_000)
    spec = load_spec("mobilenetv3-small").replace(resolution=32, width=0.5, classes=10)
    n = len(ds.val.y)
    results = {}
    for recipe, epochs in (("legacy", 4), ("default", 3)):
        t = train_qat(spec, ds, Budget(epochs=epochs, recipe=recipe))
        results[recipe] = (t.val_metric, wilson_interval(t.val_metric * n, n))
    (old, old_ci), (new, new_ci) = results["legacy"], results["default"]
    assert old < 0.26 and new > 0.28, results
    assert not intervals_overlap(old_ci, new_ci), results  # better by more than the 95% intervals
