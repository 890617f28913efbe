"""The evaluation protocol: the search optimises the validation split and never reads the test split's labels.

Proved from the outside: two image folders identical but for the test split's labels (every test image moved to
another class's folder) give searches with identical trial values, while the same trained model scores
differently on the two test splits, so the scramble would have shown had the search looked.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nas import results
from nas.cli import main as nas_main
from tests.test_search import TINY, nas, write_space

CLASSES = ("left", "right")

def _image(rng: np.random.Generator, cls: int) -> np.ndarray:
    """A 16x16 RGB image whose brightness is its class (dark 0-80 or bright 150-230), under noise: a signal a
    tiny network learns within a few dozen steps (a left/right-half pattern left some candidates at chance)."""
    low = 0 if cls == 0 else 150
    return rng.integers(low, low + 80, (16, 16, 3), dtype=np.uint8)


def _folder(root: Path, n_train: int, n_test: int, seed: int = 3) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_image(rng, c)).save(root / split / name / f"{name}{i}.png")

def _scrambled_copy(src: Path, dst: Path) -> None:
    """``src`` with every test image in the other class's folder (file names kept): the test labels all wrong."""
    shutil.copytree(src / "train", dst / "train")
    for c, name in enumerate(CLASSES):
        other = CLASSES[1 - c]
        (dst / "test" / other).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / "test" / name).iterdir()):
            shutil.copy(f, dst / "test" / other / f.name)

def _search(tmp_path: Path, data: Path, run_dir: Path) -> list[results.TrialRecord]:
    space = write_space(tmp_path / "tiny.yaml", TINY)
    res = nas("search", "--constraints", "mcu_vww.yaml", "--dataset", str(data), "--space", str(space),
              "--trials", "2", "--epochs", "6", "--seed", "0", "--run-dir", str(run_dir), timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return results.Run(run_dir).trials()

@pytest.mark.slow
def test_scrambling_the_test_labels_leaves_every_trial_value_unchanged(tmp_path, capsys):
    true, scrambled = tmp_path / "true", tmp_path / "scrambled"
    _folder(true, n_train=120, n_test=30)
    _scrambled_copy(true, scrambled)
    a = _search(tmp_path, true, tmp_path / "run_true")
    b = _search(tmp_path, scrambled, tmp_path / "run_scrambled")
    assert [r.spec for r in a] == [r.spec for r in b] and len(a) == 2
    for ra, rb in zip(a, b):
        assert ra.status == rb.status == "trained"
        assert ra.metric_split == rb.metric_split == "val"
        assert ra.metric_samples == rb.metric_samples == 36  # 15% of each class's 120 training images
        assert ra.objectives() == rb.objectives()  # bit for bit: the search never saw the test labels
        assert ra.int8_interval == rb.int8_interval

    # ... and the scramble is not a no-op: the same INT8 model scores very differently on the two test splits
    best = max(a, key=lambda r: r.int8_metric or 0.0)
    assert best.model_path
    scores = {}
    for name, data in (("true", true), ("scrambled", scrambled)):
        assert nas_main(["evaluate", best.model_path, "--dataset", str(data), "--split", "test", "--json"]) == 0
        scores[name] = json.loads(capsys.readouterr().out)["int8_metric"]
    assert scores["true"] + scores["scrambled"] == pytest.approx(1.0)  # two classes, every label swapped
    assert abs(scores["true"] - scores["scrambled"]) > 0.2, scores
