"""bench/search_vs_random.py, bench/vww.py and bench/scaling.py keep working: each runs in its quick mode.

The three quick runs are started together (one module fixture) and each test checks its own output, so the
file costs about as long as the slowest of them rather than their sum. Nothing is mocked: every quick run
trains real candidates (tiny budgets), and scaling's quick mode starts a real local PostgreSQL server.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ("search_vs_random", "vww", "scaling", "cifar10")
TIMEOUT_S = 900


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Start every quick benchmark at once; {name: (out_dir, returncode, stderr tail)} once each has finished."""
    procs = {}
    for name in BENCHES:
        out = tmp_path_factory.mktemp(name)
        log = open(out / "log.txt", "w")
        procs[name] = (out, log, subprocess.Popen([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--quick",
                                                   "--out", str(out)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
    done = {}
    try:
        for name, (out, log, proc) in procs.items():
            rc = proc.wait(timeout=TIMEOUT_S)
            log.close()
            done[name] = (out, rc, (out / "log.txt").read_text()[-3000:])
    finally:
        for _, log, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return done


def _load(quick_runs, name):
    out, rc, tail = quick_runs[name]
    assert rc == 0, tail
    data = json.loads((out / f"{name}_quick.json").read_text())
    assert data["benchmark"] == name and data["quick"] is True
    assert data["commit"] and data["commit"] != "unknown"
    clock = data["clock"]
    assert clock["wall_s"] > 0 and len(clock["loadavg_start"]) == 3 and len(clock["loadavg_end"]) == 3
    assert (out / f"{name}_quick.md").read_text().strip()
    assert (out / f"{name}_quick.png").stat().st_size > 0 and data["plot"] is True
    return data


def _union_volume(points, ref) -> float:
    """Volume of the union of the boxes [p, ref] by inclusion-exclusion: exact, independent, O(2^n)."""
    import itertools

    import numpy as np

    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in itertools.combinations(points, k):
            corner = np.max(np.asarray(subset), axis=0)
            total += (-1) ** (k + 1) * float(np.prod(np.clip(np.asarray(ref) - corner, 0.0, None)))
    return total


def test_hypervolume_is_exact():
    """The sweep's 2-D and 3-D hypervolume equals inclusion-exclusion over the boxes on random fronts."""
    import numpy as np

    from nas.hypervolume import hypervolume

    rng = np.random.default_rng(0)
    for dims in (2, 3):
        for n in (1, 2, 5, 10):
            pts = rng.random((n, dims))
            ref = np.ones(dims)
            assert math.isclose(hypervolume(pts, ref), _union_volume(pts, ref), rel_tol=1e-9, abs_tol=1e-12)
    assert hypervolume([[0.5, 0.5, 0.5]], [1, 1, 1]) == pytest.approx(0.125)
    assert hypervolume([[1.5, 0.1, 0.1]], [1, 1, 1]) == 0.0  # outside the reference box: adds nothing


def test_search_vs_random_quick(quick_runs):
    data = _load(quick_runs, "search_vs_random")
    s = data["settings"]
    assert s["trials"] == 2 and s["hypervolume"]["reference_point"] == [1.0, 1.0, 1.0]
    assert set(data["samplers"]) == {"tpe", "random"}
    for run in data["runs"]:
        curve = [c["hypervolume"] for c in run["curve"]]
        assert len(curve) == 2  # one point per trained (or failed) candidate: the same budget for both samplers
        assert all(0.0 <= h <= 1.0 for h in curve)
        assert all(b >= a for a, b in zip(curve, curve[1:]))  # a front only grows
        assert run["summary"]["trained"] + run["summary"]["failed"] == 2
        t = run["time"]
        # rejected candidates cost the analytic profile and a few storage writes, never training time
        assert t["trained_infeasible_s"] == 0 and t["rejected_share"] < 0.05
        for r in run["trials"]:
            if r["status"] == "rejected":
                assert r["violations"] and r["duration_s"] < 5.0 and not r["timings"]
    assert sum(r["summary"]["rejected"] for r in data["runs"]) > 0  # the quick space rejects most 'big' choices
    for name, agg in data["samplers"].items():
        b = agg["breakdown"]
        for key in ("data", "build", "train", "convert", "evaluate", "measure", "candidate_total", "trial_total"):
            assert key in b
        assert b["train"] > 0 and b["build"] > 0 and b["convert"] > 0
        assert b["candidate_total"] >= b["train"]
        assert len(agg["curve"]) == 2


def test_vww_quick(quick_runs):
    data = _load(quick_runs, "vww")
    s = data["settings"]
    assert s["split"] == {"train": 390, "val": 90, "test": 120}  # the 600 images, as nas.data.load splits them
    assert s["holdout_samples"] == 400
    assert s["recipe"]["epochs"] == 1 and s["seeds"] == [0]
    models = data["models"]
    assert [m["role"] for m in models] == ["searched", "baseline", "baseline"]
    assert models[0]["spec"] == data["search"]["best"]["spec"]
    assert len(data["runs"]) == 3 and {r["seed"] for r in data["runs"]} == {0}
    for m in models:
        assert 0.0 <= m["int8_accuracy"] <= 1.0 and 0.0 <= m["holdout_int8_accuracy"] <= 1.0
        assert m["holdout_samples"] == 400
        assert m["tflm_arena_bytes"] > 0 and m["tflite_bytes"] > 0 and m["macs"] > 0
        assert m["latency_ms"] > 0 and m["energy_mj"] > 0
        assert m["fits"] == (not m["broken"])
    assert models[0]["fits"]  # the search only ever returns a feasible candidate
    # the MLPerf reference is a 0.25-width MobileNetV1 whose .tflite is ~300 KB whatever the resolution
    assert "flash_bytes" in models[1]["broken"]
    assert "| mobilenetv1-vww" in (quick_runs["vww"][0] / "vww_quick.md").read_text()


def test_scaling_quick(quick_runs):
    data = _load(quick_runs, "scaling")
    tp = {r["config"]: r for r in data["throughput"]}
    assert set(tp) == {"1 worker, SQLite", "2 workers, SQLite", "2 workers, PostgreSQL"}
    for r in tp.values():
        assert r["trained"] == 2 and r["failed"] == 0 and not r["worker_errors"]
        assert r["trials_per_hour"] > 0 and r["steady_trials_per_hour"] >= r["trials_per_hour"] * 0.99
        assert len(r["rounds"]) == 1 and r["rounds"][0]["trained"] == 2
    assert tp["2 workers, SQLite"]["rounds"][0]["trials_per_worker"] == [1, 1]  # both workers trained one
    assert tp["2 workers, PostgreSQL"]["rounds"][0]["trials_per_worker"] == [1, 1]
    o = data["loop_overhead"]
    assert data["settings"]["records_are_generated"] is True
    assert o["final_records"] >= 60 and 0 < o["generated"] < o["final_records"]
    assert {r["records"] for r in o["rows"]} == {20, 60} and {r["sampler"] for r in o["rows"]} == {"tpe", "random"}
    for r in o["rows"]:
        assert r["last_status"] == "trained"  # the stubbed loop went all the way through tell
        assert 0 < r["sampler_ms"] <= r["total_ms"] and 0 < r["profile_ms"] <= r["total_ms"]
        assert r["coordinator_poll_ms"] > 0 and r["summary_cold_ms"] > 0


def test_cifar10_quick(quick_runs):
    """bench/cifar10.py's quick mode: two arms under one wall-clock budget, the multi-fidelity one in rungs."""
    data = _load(quick_runs, "cifar10")
    s = data["settings"]
    assert s["budget_s"] == 30.0 and s["dataset"] == "mnist" and "val 750" in s["split"]
    runs = {r["arm"]: r for r in data["runs"]}
    assert set(runs) == {"tpe", "tpe-asha"} and {r["seed"] for r in data["runs"]} == {0}
    for r in runs.values():
        assert r["budget_s"] == 30.0 and r["wall_s"] < 30.0 + 120.0, r["wall_s"]  # stopped by the clock
        assert r["final_hypervolume"] == (r["curve"][-1]["hypervolume"] if r["curve"] else 0.0)
        assert all(row["int8_metric"] is not None for row in r["rows"] if row["feasible"])
    assert runs["tpe"]["fidelity"] == "none" and runs["tpe"]["whole_candidates"] >= 1
    asha = runs["tpe-asha"]
    assert asha["fidelity"] == "asha" and asha["summary"]["rungs"]["0"] == asha["candidates_started"] >= 1
    # rung 0 costs less than a whole candidate (the four quick benchmarks share the cores: no tighter claim)
    assert asha["candidates_started"] >= runs["tpe"]["candidates_started"]
    assert data["verdict"].startswith("not judged")  # no random arm in the quick mode: no claim is made
    # resumable: a second call with the same output skips every recorded (arm, seed)
    out, _, _ = quick_runs["cifar10"]
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "cifar10.py"), "--quick", "--out", str(out)],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and again.stdout.count("recorded, skipped") == 2, again.stdout[-2000:]
