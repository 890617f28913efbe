"""The Pareto front (sort-based, against brute force) and how a run's trials are read (nas.results)."""
import time

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from nas import results
from nas.results import (TrialRecord, format_pareto, pareto_front, pareto_mask, pareto_rows, record_from_trial,
                         summarize, versus_best)


def brute_force(points):
    pts = np.asarray(points, float)
    out = []
    for i, p in enumerate(pts):
        if np.isnan(p).any():
            out.append(False)
            continue
        dominated = False
        for j, q in enumerate(pts):
            if j != i and not np.isnan(q).any() and np.all(q <= p) and np.any(q < p):
                dominated = True
                break
        out.append(not dominated)
    return np.array(out)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_with_ties_duplicates_and_nan(k, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    pts = rng.integers(0, 6, size=(n, k)).astype(float)  # few values: many ties and duplicates
    if n > 3:
        pts[rng.integers(0, n)] = np.nan
    assert np.array_equal(pareto_mask(pts), brute_force(pts))


@pytest.mark.parametrize("k", [2, 3])
def test_continuous_points(k):
    rng = np.random.default_rng(42)
    pts = rng.random((400, k))
    assert np.array_equal(pareto_mask(pts), brute_force(pts))


def test_edge_cases():
    assert pareto_mask(np.empty((0, 3))).shape == (0,)
    assert pareto_mask([[1.0, 2.0, 3.0]]).tolist() == [True]
    assert pareto_mask([[1, 1, 1], [1, 1, 1]]).tolist() == [True, True]  # equal points do not dominate
    assert pareto_mask([[np.nan, 1, 1]]).tolist() == [False]
    with pytest.raises(ValueError):
        pareto_mask([1, 2, 3])


def test_not_quadratic_when_every_point_is_on_the_front():
    # Points on the plane a + b + c = 1: all mutually non-dominated, the worst case for pairwise checks.
    rng = np.random.default_rng(0)
    n = 60_000
    ab = rng.random((n, 2)) / 2
    pts = np.column_stack([ab, 1 - ab.sum(axis=1)])
    t0 = time.perf_counter()
    mask = pareto_mask(pts)
    elapsed = time.perf_counter() - t0
    assert mask.all()
    assert elapsed < 5.0, elapsed  # 60,000^2 pairwise comparisons would take minutes
    big = rng.random((300_000, 2))
    t0 = time.perf_counter()
    pareto_mask(big)
    assert time.perf_counter() - t0 < 2.0


# -- trials as records ----------------------------------------------------------------------------------

DIST = {"width": CategoricalDistribution([0.25, 0.5])}


def frozen(state, status=None, values=None, constraints=None, metrics=None, number_attrs=None):
    attrs = {"spec": "in32x1-w0.25-cn_r1_k3_s2_c8_re-cls_n10_d0_hs",
             "estimate": {"macs": 1000, "params": 10, "flash_bytes": 5000, "memory_bytes": 9000,
                          "latency_ms": 1.0, "energy_mj": 0.5},
             "worker": {"host": "h", "pid": 1, "index": 0}}
    if status:
        attrs["status"] = status
    if metrics:
        attrs["metrics"] = metrics
        attrs["trial_dir"] = "trials/0"
    t = create_trial(state=state, values=values, params={"width": 0.25}, distributions=DIST, user_attrs=attrs)
    for k, v in (constraints or {}).items():
        t.system_attrs[f"constraints:{k}"] = v
    return t


def metrics(acc, mem, seconds=3.0):
    return {"metric_name": "accuracy", "higher_is_better": True, "int8_metric": acc, "float_metric": acc,
            "measured_memory_bytes": mem, "tflm_arena_bytes": mem, "tflite_bytes": 4000, "seconds": seconds,
            "timings": {"qat_train": 2.0}}


def test_status_of_each_kind_of_trial():
    cases = [
        (frozen(TrialState.COMPLETE, "trained", [0.9, 9000, 0.5], {"sram_bytes": -0.5}, metrics(0.9, 9000)), "trained"),
        (frozen(TrialState.PRUNED, "rejected", constraints={"sram_bytes": 0.3}), "rejected"),
        (frozen(TrialState.FAIL, "failed"), "failed"),
        (frozen(TrialState.FAIL, "training"), "interrupted"),  # cut off by a kill, failed by the heartbeat
        (frozen(TrialState.FAIL, "interrupted"), "interrupted"),
        (frozen(TrialState.FAIL, "unused"), "unused"),
    ]
    for trial, want in cases:
        rec = record_from_trial(trial)
        assert rec.status == want
    trained = record_from_trial(cases[0][0])
    assert trained.feasible and trained.int8_metric == 0.9 and trained.memory_bytes == 9000
    assert trained.estimated_memory_bytes == 9000 and trained.train_seconds == 3.0
    rejected = record_from_trial(cases[1][0])
    assert not rejected.feasible and rejected.violations == ["sram_bytes"]
    assert rejected.train_seconds == 0 and rejected.int8_metric is None and rejected.model_path is None


def rec(n, acc, mem, energy, status="trained", feasible=True):
    return TrialRecord(number=n, status=status, state="COMPLETE", int8_metric=acc, memory_bytes=mem,
                       energy_mj=energy, feasible=feasible)


def test_front_holds_only_feasible_trained_trials_best_metric_first():
    records = [
        rec(0, 0.90, 100, 1.0),
        rec(1, 0.95, 200, 2.0),
        rec(2, 0.80, 300, 3.0),                    # dominated by 0
        rec(3, 0.99, 50, 0.1, feasible=False),     # measured memory broke the limit: never on the front
        rec(4, None, None, None, status="rejected", feasible=False),
        rec(5, 0.85, 90, 1.5),
    ]
    front = pareto_front(records, higher_is_better=True)
    assert [r.number for r in front] == [1, 0, 5]
    # gaze: lower error is better
    gaze = [rec(0, 2.0, 100, 1.0), rec(1, 1.0, 100, 1.0), rec(2, 3.0, 50, 1.0)]
    assert [r.number for r in pareto_front(gaze, higher_is_better=False)] == [1, 2]


def test_summary_counts_and_bests():
    records = [rec(0, 0.9, 100, 1.0), rec(1, 0.95, 200, 2.0), rec(2, 0.99, 10, 0.1, feasible=False),
               rec(3, None, None, None, status="rejected", feasible=False),
               TrialRecord(number=4, status="failed", state="FAIL", train_seconds=2.0)]
    s = summarize(records, budget=10, metric_name="accuracy", higher_is_better=True)
    assert (s.trained, s.feasible, s.rejected, s.failed, s.used) == (3, 2, 1, 1, 4)
    assert s.best_metric == 0.95 and s.best_memory_bytes == 100 and s.best_energy_mj == 1.0
    assert s.pareto == 2


def test_in_memory_study_round_trip():
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.add_trial(frozen(TrialState.COMPLETE, "trained", [0.9, 9000, 0.5], {"sram_bytes": -0.5}, metrics(0.9, 9000)))
    study.add_trial(frozen(TrialState.PRUNED, "rejected", constraints={"flash_bytes": 0.2}))
    records = [record_from_trial(t) for t in study.get_trials()]
    assert [r.status for r in records] == ["trained", "rejected"]
    assert records[1].constraints == {"flash_bytes": 0.2}


def test_redact_hides_passwords():
    assert results.redact("postgresql+psycopg2://u:secret@h:5432/db") == "postgresql+psycopg2://u@h:5432/db"
    assert results.redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_a_record_carries_its_split_samples_and_interval_and_old_records_say_test():
    new = metrics(0.8, 9000) | {"metric_split": "val", "metric_samples": 750, "int8_interval": [0.77, 0.83]}
    r = record_from_trial(frozen(TrialState.COMPLETE, "trained", [0.8, 9000, 0.5], {}, new))
    assert (r.metric_split, r.metric_samples, r.int8_interval) == ("val", 750, (0.77, 0.83))
    old = metrics(0.8, 9000) | {"split_counts": {"train": 3000, "val": 750, "test": 1000}}  # before tinynas 0.5
    r = record_from_trial(frozen(TrialState.COMPLETE, "trained", [0.8, 9000, 0.5], {}, old))
    assert (r.metric_split, r.metric_samples, r.int8_interval) == ("test", 1000, None)


def test_models_whose_intervals_overlap_the_best_are_tied_not_ranked():
    def with_ci(n, acc, lo, hi, mem):
        return TrialRecord(number=n, status="trained", state="COMPLETE", int8_metric=acc, int8_interval=(lo, hi),
                           metric_split="val", metric_samples=750, memory_bytes=mem, energy_mj=1.0, feasible=True,
                           macs=10**6, latency_ms=1.0, spec=f"spec{n}")

    best, close, far = with_ci(0, 0.80, 0.77, 0.83, 300), with_ci(1, 0.79, 0.76, 0.82, 200), \
        with_ci(2, 0.60, 0.56, 0.64, 100)
    assert [versus_best(r, best) for r in (best, close, far)] == ["best", "tied", "worse"]
    assert versus_best(rec(3, 0.5, 50, 1.0), best) == "unknown"  # no interval recorded: not ranked either

    records = [far, close, best]
    report = {"run_dir": "run", "study": "s", "target": "t", "dataset": "d", "metric_name": "accuracy",
              "summary": summarize(records, 3, "accuracy", True).to_dict(),
              "pareto": pareto_rows(pareto_front(records, True))}
    text = format_pareto(report)
    assert "validation split (what the search selected on), n = 750" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip()[:1].isdigit()}
    assert "0.7700-0.8300" in rows["0"] and " best " in rows["0"]
    assert " tied " in rows["1"] and " worse " in rows["2"]
