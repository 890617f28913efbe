"""nas finalize on a tiny real run: retrain the best trial with two seeds, report it on the test split, continue
where it stopped, refuse a silent budget change, and hand the finalized model to nas pareto and nas export."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nas import finalize, results, rundir
from tests.test_search import QUICK, TINY, nas, write_space

FINAL = ["--top", "1", "--epochs", "3", "--seeds", "2", "--train-limit", "800"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("finalize")
    space = write_space(tmp / "tiny.yaml", TINY)
    run_dir = tmp / "run"
    res = nas("search", "--constraints", "mcu_vww.yaml", "--dataset", "mnist", "--trials", "2", *QUICK,
              "--space", str(space), "--run-dir", str(run_dir))
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def finalized(run_dir) -> tuple[Path, str]:
    res = nas("finalize", str(run_dir), *FINAL)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir, res.stdout


def test_finalize_retrains_the_top_trial_per_seed_and_reports_it_on_the_test_split(finalized):
    run_dir, out = finalized
    run = results.open_run(run_dir)
    best = max((r for r in run.trials() if r.feasible), key=lambda r: (r.int8_metric, -r.number))
    models = finalize.read_finalized(run_dir)
    assert [(m.trial, m.seed) for m in models] == [(best.number, 0), (best.number, 1)]
    for m in models:
        metrics = json.loads((m.path / rundir.METRICS_FILE).read_text())
        assert metrics["metric_split"] == "test" and m.test_samples == 1000  # MNIST's 20% test split
        assert metrics["seed"] == 0 and metrics["train_seed"] == m.seed  # the search's split, another init
        assert metrics["budget"]["epochs"] == 3 and metrics["budget"]["train_limit"] == 800
        assert m.val_interval and m.val_interval[0] <= m.val_metric <= m.val_interval[1]
        assert m.test_interval and m.test_interval[0] <= m.test_metric <= m.test_interval[1]
        assert m.feasible and m.spec == best.spec
        assert m.test_interval[0] > 0.1  # above the 10% of chance by more than its interval
    ships = finalize.chosen(models, True)[best.number]
    assert ships.val_metric == max(m.val_metric for m in models)  # chosen on validation, never on test
    assert "ships" in out and f"{ships.test_metric:.4f}" in out and "n = 1,000" in out


def test_a_second_call_keeps_finished_models_and_retrains_an_unfinished_one(finalized):
    run_dir, _ = finalized
    models = finalize.read_finalized(run_dir)
    kept, cut = models
    kept_mtime = (kept.path / rundir.MODEL_FILE).stat().st_mtime_ns
    (cut.path / rundir.FINAL_FILE).unlink()  # as a kill before final.json leaves it
    res = nas("finalize", str(run_dir), *FINAL)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (kept.path / rundir.MODEL_FILE).stat().st_mtime_ns == kept_mtime
    assert "model 2/2" in res.stderr and "model 1/2" not in res.stderr  # seed 0 was not trained again
    assert [(m.trial, m.seed) for m in finalize.read_finalized(run_dir)] == [(kept.trial, 0), (kept.trial, 1)]


def test_another_budget_is_refused_without_force(finalized):
    run_dir, _ = finalized
    res = nas("finalize", str(run_dir), "--top", "1", "--epochs", "4", "--seeds", "1", "--train-limit", "800")
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()[-1:]
    assert line.startswith("nas finalize: error:") and "--force" in line and "seed0" in line


def test_pareto_and_export_prefer_the_finalized_model(finalized, tmp_path):
    run_dir, _ = finalized
    ships = next(iter(finalize.chosen(finalize.read_finalized(run_dir), True).values()))
    res = nas("pareto", str(run_dir))
    assert res.returncode == 0 and "Finalized by nas finalize" in res.stdout
    assert "validation split (what the search selected on)" in res.stdout
    res = nas("export", str(run_dir), "--best", "accuracy", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    bundle = tmp_path / f"trial-{ships.trial}"
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["source"]["finalized"]["seed"] == ships.seed
    assert meta["metrics"]["split"] == "test" and meta["metrics"]["int8"] == ships.test_metric
    card = (bundle / "README.md").read_text()
    lo, hi = ships.test_interval
    assert f"(INT8 .tflite, test split) | {ships.test_metric:.4f} (95% CI {lo:.4f}-{hi:.4f}, n = 1,000)" in card
    assert "retrained by `nas finalize` (3 epochs" in card
    assert nas("verify", str(bundle)).returncode == 0
