"""Reliability, concurrency: two, then four worker processes on one study, in a SQLite run directory and on
PostgreSQL. No trial number is reused, no trial is lost (exactly the budget is trained, every trial folder belongs
to a trial the study knows), and every stored ``.tflite`` is byte for byte what its trial's record says (sha256 and
size recorded by ``nas.tf.candidate.evaluate`` in the trial's metrics). Real processes, real training (tiny budgets).

Two workers on SQLite run in the default suite; four workers, and PostgreSQL (whose two-worker case the default
suite covers in tests/test_search.py and tests/test_reliability_faults.py), are marked slow: on 2 cores four
TensorFlow workers mostly wait for each other.
"""
from __future__ import annotations


import pytest

from nas import results, rundir
from tests.test_reliability_faults import check_study, tiny_search_args
from tests.test_search import nas, postgres  # noqa: F401  (the PostgreSQL server fixture)


def run_workers(tmp_path, workers: int, storage: str | None = None) -> list:
    run_dir = tmp_path / "run"
    trials = 2 * workers
    extra = ["--workers", str(workers), *(["--storage", storage] if storage else [])]
    out = nas("search", *tiny_search_args(tmp_path, run_dir, trials, *extra), timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert (run_dir / rundir.STUDY_DB).exists() == (storage is None)
    records = check_study(run_dir, storage, budget=trials)
    trained = [r for r in records if r.status == "trained"]
    assert len({r.model_path for r in trained}) == trials
    assert not [r for r in records if r.status in ("failed", "interrupted")]  # "unused" (stepped back) is fine
    pids = {r.worker["pid"] for r in trained}
    assert len(pids) >= 2, f"only one worker trained anything: {pids}"
    assert _overlapping(results.open_run(run_dir, storage).frozen_trials()), "the workers never trained at once"
    for k in range(workers):
        log = (run_dir / "logs" / f"worker-0-{k}.log").read_text()
        assert "Traceback" not in log and "database is locked" not in log, log[-3000:]
    assert nas("pareto", str(run_dir), *(["--storage", storage] if storage else [])).returncode == 0
    return records


def _overlapping(frozen) -> bool:
    """Did two trained trials run at the same time (the workers really were concurrent)?"""
    spans = sorted((t.datetime_start, t.datetime_complete) for t in frozen if t.state.name == "COMPLETE")
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("workers", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_workers_on_one_sqlite_run_directory(tmp_path, workers):
    run_workers(tmp_path, workers)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 4])
def test_workers_on_postgresql(tmp_path, postgres, workers):  # noqa: F811
    run_workers(tmp_path, workers, storage=postgres)
