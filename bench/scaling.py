"""Scaling: trials per hour with 1 and 2 local workers, SQLite and PostgreSQL, and what the search loop adds.

Part 1, throughput. Three real ``nas search`` runs (``nas.search.create_run`` + ``execute``) on
``../shared/data/vww96`` under ``mcu_vww.yaml``: 1 worker on SQLite, 2 workers on SQLite, 2 workers on a
PostgreSQL server started here for the purpose (local, on 127.0.0.1, exactly as ``tests/test_search.py`` starts
one). To measure the machinery rather than the luck of the sampler, the search space is one fixed point (a
MobileNetV3-Small-shaped network at 64x64, width 0.35: every trial trains the same candidate with the same
budget), in ``--rounds`` rounds whose order alternates (background load drifts). Trials per hour = trained trials /
the sessions' wall time (worker start-up included); the steady-state rate leaves out the start-up (first trial
start to last trial end).

Part 2, the search loop's own cost per trial as the study grows. A study of the shipped ``mobilenetv3.yaml``
space under ``mcu_vww.yaml`` is filled with *generated* trial records (not trained: random points of the
space, profiled for real; those that break a limit are recorded as rejected exactly as a worker records them,
the rest as trained with synthetic metrics, timings and history of realistic size), to 100, 1,000 and 5,000
records. At each size the worker's loop runs a few times with ``nas.tf.candidate.evaluate`` replaced by a stub
that returns at once: Optuna ask (the sampler: multi-objective TPE with constraints, and random for comparison),
the analytic profile, the budget claim (a re-read of the study), the user attributes, Optuna tell, the loop's
counts; plus one coordinator poll (``Run.summary()``, once a second while a search runs). Everything but the
training, on SQLite (the default storage).

Writes ``scaling.{json,md,png}`` to ``bench/results/`` (``scaling_quick.*`` with ``--quick``: MNIST, a 16 px
fixed candidate, 2 trials per configuration, studies of 20 and 60 records).

    python bench/scaling.py [--trials 8] [--epochs 1] [--rounds 2] [--sizes 100 1000 5000] [--reps 5] [--quick]
                            [--out DIR] [--render JSON]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

import common  # bench/common.py: run as a script, this folder is first on sys.path
from nas import results, rundir, search
from nas import space as space_mod
from nas.errors import CandidateError
from nas.search import worker as worker_mod
from nas.storage import insert_trials, open_storage
from nas.testing import postgres, postgres_version

ROOT = common.ROOT
# The fixed candidate of part 1: one point of mobilenetv3.yaml (parameters not named take their first choice).
FIXED_POINT = {"resolution": 64, "width": 0.35, "stem.channels": 16, "stem.act": "hswish", "s1.se": 0.25,
               "s2.depth": 1, "s2.kernel": 3, "s2.expansion": 4.5, "s3.depth": 1, "s3.kernel": 5, "s3.expansion": 4,
               "s3.se": 0.25, "s3.act": "hswish", "s4.depth": 1, "s4.kernel": 5, "s4.expansion": 3, "s4.se": 0.25,
               "s4.act": "hswish", "s5.depth": 1, "s5.kernel": 5, "s5.expansion": 6, "s5.se": 0.25,
               "s5.act": "hswish", "last.channels": 288, "last.depth": 1, "head.hidden": 0}
QUICK_FIXED = {
    "name": "quick-fixed", "resolution": 16, "width": 0.25,
    "stages": [{"name": "stem", "kind": "cn", "channels": 8, "stride": 2, "act": "relu"},
               {"name": "s1", "kind": "ir", "channels": 16, "stride": 2, "expansion": 2, "act": "relu"}],
    "head": {"kind": "classifier", "hidden": 0},
}


def fixed_space(path: Path) -> Path:
    """mobilenetv3.yaml with every list collapsed to FIXED_POINT's value: a space of exactly one candidate."""
    data = yaml.safe_load((ROOT / "nas" / "search_spaces" / "mobilenetv3.yaml").read_text())

    def pick(name: str, v: Any) -> Any:
        return FIXED_POINT.get(name, v[0]) if isinstance(v, list) else v

    data["name"] = "mobilenetv3-fixed"
    data["description"] = "one point of mobilenetv3.yaml (bench/scaling.py)"
    data["resolution"] = pick("resolution", data["resolution"])
    data["width"] = pick("width", data["width"])
    for st in data["stages"]:
        for k in list(st):
            if k not in ("name", "kind"):
                st[k] = pick(f"{st['name']}.{k}", st[k])
    for k in list(data["head"]):
        if k != "kind":
            data["head"][k] = pick(f"head.{k}", data["head"][k])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------ part 1


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def throughput(label: str, workers: int, storage: str | None, args: argparse.Namespace, root: Path, space: Path,
               dataset: str, train_limit: int | None, round_: int = 0) -> dict[str, Any]:
    req = search.SearchRequest(constraints=common.CONSTRAINTS, space=str(space), dataset=dataset, trials=args.trials,
                               epochs=args.epochs, train_limit=train_limit, sampler="tpe", workers=workers,
                               storage=storage, seed=round_, run_dir=str(root / slug(f"{label} r{round_}")),
                               command=("bench/scaling.py", label))
    load0 = [round(v, 2) for v in os.getloadavg()]
    t0 = time.perf_counter()
    run_dir = search.create_run(req)
    t1 = time.perf_counter()
    outcome = search.execute(run_dir, workers=workers, storage=storage)
    t2 = time.perf_counter()
    run = results.open_run(run_dir, storage)
    frozen = {t.number: t for t in run.frozen_trials()}
    trained = [r for r in run.trials() if r.status == "trained"]
    starts = [frozen[r.number].datetime_start for r in trained]
    ends = [frozen[r.number].datetime_complete for r in trained]
    steady = (max(ends) - min(starts)).total_seconds() if trained else 0.0
    per_worker: dict[str, int] = {}
    for r in trained:
        key = str(r.worker.get("pid"))
        per_worker[key] = per_worker.get(key, 0) + 1
    execute_s = t2 - t1
    return {
        "config": label, "round": round_, "workers": workers, "storage": "postgresql" if storage else "sqlite",
        "trained": len(trained), "failed": outcome.summary.failed, "worker_errors": list(outcome.worker_errors),
        "create_s": round(t1 - t0, 2), "execute_s": round(execute_s, 2),
        "trials_per_hour": round(3600 * len(trained) / execute_s, 1) if execute_s else None,
        "steady_s": round(steady, 2),
        "steady_trials_per_hour": round(3600 * len(trained) / steady, 1) if steady else None,
        "candidate_s_median": common.median([r.train_seconds for r in trained]),
        "trial_s_median": common.median([(e - s).total_seconds() for s, e in zip(starts, ends)]),
        "trials_per_worker": sorted(per_worker.values()),
        "candidate_s": [r.train_seconds for r in trained],
        "loadavg_start": load0, "loadavg_end": [round(v, 2) for v in os.getloadavg()],
    }


def combine(label: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration over its rounds: rates from the summed trials and times."""
    trained = sum(r["trained"] for r in rounds)
    execute_s = sum(r["execute_s"] for r in rounds)
    steady_s = sum(r["steady_s"] for r in rounds)
    return {
        "config": label, "workers": rounds[0]["workers"], "storage": rounds[0]["storage"], "trained": trained,
        "failed": sum(r["failed"] for r in rounds), "worker_errors": [e for r in rounds for e in r["worker_errors"]],
        "execute_s": round(execute_s, 2),
        "trials_per_hour": round(3600 * trained / execute_s, 1) if execute_s else None,
        "steady_trials_per_hour": round(3600 * trained / steady_s, 1) if steady_s else None,
        "per_round_trials_per_hour": [r["trials_per_hour"] for r in rounds],
        "candidate_s_median": common.median([c for r in rounds for c in r["candidate_s"]]),
        "loadavg_1min": [r["loadavg_start"][0] for r in rounds] + [rounds[-1]["loadavg_end"][0]],
        "rounds": rounds,
    }


# ------------------------------------------------------------------------------------------ part 2


class StubWorker(search.Worker):
    """The real worker with an instant training step (:func:`stub_train_step`); times its own phases."""

    marks: dict[str, float] = {}

    def objective(self, trial: Any) -> tuple[float, float, float]:
        self.marks["enter"] = time.perf_counter()
        try:
            return super().objective(trial)
        finally:
            self.marks["leave"] = time.perf_counter()


_STUB_RNG = random.Random(1)


def stub_train_step(spec: Any, dataset: str, budget: Any, out_dir: Path, *, seed: int = 0,
                    target: Any = None) -> dict[str, Any]:
    """A training step in place of ``nas.tf.candidate.evaluate``: no training, made-up metrics, no files."""
    return synthetic_metrics(spec, target, budget.to_dict(), _STUB_RNG)


def synthetic_metrics(spec: Any, target: Any, budget: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """What nas.tf.candidate.evaluate returns, with made-up numbers (same keys, same size)."""
    from nas import profile

    est = profile.estimate(spec)
    arena = int(est.peak_sram_bytes * rng.uniform(0.97, 1.03))
    epochs = int(budget.get("epochs") or 2)
    acc = rng.uniform(0.45, 0.75)
    hist = {k: [rng.uniform(0.3, 0.8) for _ in range(epochs)] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
    return {
        "spec": spec.to_string(), "dataset": "generated", "task": "classification",
        "class_names": ["non_person", "person"], "metric_name": "accuracy", "higher_is_better": True,
        "float_metric": acc + rng.uniform(-0.02, 0.02), "pretrain_float_metric": None, "int8_metric": acc,
        "quantization_delta": rng.uniform(-0.02, 0.02), "epochs_run": epochs,
        "tflite_bytes": int(est.flash_bytes * rng.uniform(0.99, 1.01)), "tflm_arena_bytes": arena, "imx500_bytes": 0,
        "measured_memory_bytes": arena, "estimated_memory_bytes": est.peak_sram_bytes,
        "estimated_flash_bytes": est.flash_bytes, "macs": est.macs, "params": est.params,
        "input_quantization": {"scale": 0.0039, "zero_point": -128, "shape": [1, spec.resolution, spec.resolution, 3],
                               "dtype": "int8"},
        "budget": budget, "seed": 0, "history": hist,
        "timings": {k: round(rng.uniform(0.05, 30), 3) for k in ("data", "build", "qat_train", "convert", "evaluate",
                                                                   "measure")},
        "target": target.name, "runtime": "tflm", "latency_ms": target.latency_ms(est.macs, est.layers),
        "inference_ms": target.inference_ms(est.macs, est.layers), "energy_mj": target.energy_mj(est.macs, est.layers),
        "seconds": round(rng.uniform(20, 120), 3),
    }


def generated_trials(worker: search.Worker, n: int, start: int, rng: random.Random) -> list[Any]:
    """``n`` FrozenTrials as a worker records them: rejected (PRUNED) when a limit breaks on paper, else trained."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    from nas.budget import Budget

    dists = {name: CategoricalDistribution(list(vals)) for name, vals in worker.space.parameters().items()}
    out = []
    for i in range(n):
        params = space_mod.sample(worker.space, lambda _name, vals: rng.choice(vals))
        spec = space_mod.to_spec(worker.space, params, worker.shape)
        estimate, checks = search.estimate_record(spec, worker.target)
        attrs: dict[str, Any] = {"worker": {"host": search.HOST, "pid": 0, "index": 0}, "spec": spec.to_string(),
                                 "estimate": estimate, "generated": True}
        if not all(c.ok for c in checks):
            attrs["status"] = "rejected"
            out.append(optuna.trial.create_trial(state=TrialState.PRUNED, params=params, distributions=dists,
                                                 user_attrs=attrs,
                                                 constraints={c.name: search.violation(c) for c in checks}))
            continue
        metrics = synthetic_metrics(spec, worker.target, Budget(epochs=2).to_dict(), rng)
        attrs.update(status="trained", trial_dir=f"trials/{start + i}", metrics=metrics)
        measured = search.measured_checks(estimate, metrics, worker.target)
        out.append(optuna.trial.create_trial(
            state=TrialState.COMPLETE, params=params, distributions=dists, user_attrs=attrs,
            values=[metrics["int8_metric"], float(metrics["measured_memory_bytes"]), float(estimate["energy_mj"])],
            constraints={c.name: search.violation(c) for c in measured}))
    return out


class Timer:
    """Seconds spent inside wrapped callables since the last reset."""

    def __init__(self) -> None:
        self.total = 0.0

    def wrap(self, fn: Any) -> Any:
        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.total += time.perf_counter() - t0
        return timed

    def take(self) -> float:
        v, self.total = self.total, 0.0
        return v


SAMPLER_CALLS = ("infer_relative_search_space", "sample_relative", "sample_independent", "before_trial", "after_trial")


def timed_sampler(name: str, timer: Timer) -> Any:
    """search.make_sampler's sampler with every call Optuna makes into it timed (relative sampling is lazy:
    it runs at the trial's first suggest, inside the objective, not in ask)."""
    sampler = search.make_sampler(name, 0, 8)
    for call in SAMPLER_CALLS:
        setattr(sampler, call, timer.wrap(getattr(sampler, call)))
    return sampler


def _study(url: str, name: str, sampler: Any) -> Any:
    """A fresh storage + study object, as a worker process opens it (heartbeat on)."""
    import optuna

    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=True), sampler=sampler)


def loop_overhead(args: argparse.Namespace, root: Path, dataset: str) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # trials: large only so that the budget claim never says "used up" while records are added.
    req = search.SearchRequest(constraints=common.CONSTRAINTS, space="mobilenetv3.yaml", dataset=dataset,
                               trials=10_000, epochs=2, sampler="tpe", seed=0, run_dir=str(root / "overhead"),
                               command=("bench/scaling.py", "overhead"))
    run_dir = search.create_run(req)
    config = rundir.RunConfig.load(run_dir)
    url = config.storage_url(run_dir)
    name = config.study_name
    worker = StubWorker.load(run_dir, train_step=stub_train_step)
    rng = random.Random(0)
    rows, gen_s, size = [], 0.0, 0
    pid = os.getpid()
    sampler_timer, profile_timer = Timer(), Timer()
    real_estimate = worker_mod.estimate_record
    worker_mod.estimate_record = profile_timer.wrap(real_estimate)  # this process only: the worker's analytic profile
    for target_size in args.sizes:
        need = target_size - size
        if need > 0:
            t0 = time.perf_counter()
            insert_trials(url, name, generated_trials(worker, need, size, rng))
            gen_s += time.perf_counter() - t0
        for sampler_name in ("tpe", "random"):
            # n_startup_trials as an 8-trial search sets it; each size and sampler gets a fresh study object whose
            # first (untimed) trial warms Optuna's trial cache, as a worker's first trial does.
            st = _study(url, name, timed_sampler(sampler_name, sampler_timer))
            phases: dict[str, list[float]] = {k: [] for k in ("counts", "ask", "objective", "tell", "last_unused",
                                                             "sampler", "profile", "storage_and_bookkeeping",
                                                             "total")}
            for rep in range(args.reps + 1):
                sampler_timer.take()
                profile_timer.take()
                t0 = time.perf_counter()
                search.budget_counts(st)
                t1 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    st.optimize(worker.objective, n_trials=1, catch=(CandidateError, search.BudgetUsed))
                t2 = time.perf_counter()
                search.last_was_unused(st, pid)
                t3 = time.perf_counter()
                if rep == 0:
                    continue
                m = worker.marks
                phases["counts"].append(t1 - t0)
                phases["ask"].append(m["enter"] - t1)
                phases["objective"].append(m["leave"] - m["enter"])
                phases["tell"].append(t2 - m["leave"])
                phases["last_unused"].append(t3 - t2)
                phases["total"].append(t3 - t0)
                smp, prof = sampler_timer.take(), profile_timer.take()
                phases["sampler"].append(smp)
                phases["profile"].append(prof)
                phases["storage_and_bookkeeping"].append(t3 - t0 - smp - prof)
            size = len(st.get_trials(deepcopy=False))
            last = st.get_trials(deepcopy=False)[-1]
            rows.append({"records": target_size, "records_after": size, "sampler": sampler_name, "reps": args.reps,
                         "last_status": results.status_of(last.state.name, last.user_attrs),
                         **{f"{k}_ms": round(1000 * common.median(v), 2) for k, v in phases.items()}})
            print(f"loop overhead: {target_size} records, {sampler_name}: {rows[-1]['total_ms']:.1f} ms per trial",
                  flush=True)
        # The coordinator of `nas search` calls Run.summary() about once a second for its progress line; the run is
        # opened once, so after the first call Optuna's trial cache only fetches new trials. Cold = opening the
        # run and the first summary (what `nas pareto` or the app pay); warm = each later poll.
        t0 = time.perf_counter()
        run = results.open_run(run_dir)
        run.summary()
        cold = time.perf_counter() - t0
        warm = []
        for _ in range(3):
            t0 = time.perf_counter()
            run.summary()
            warm.append(time.perf_counter() - t0)
        for r in rows:
            if r["records"] == target_size:
                r["summary_cold_ms"] = round(1000 * cold, 1)
                r["coordinator_poll_ms"] = round(1000 * common.median(warm), 1)
    worker_mod.estimate_record = real_estimate
    trials = _study(url, name, None).get_trials(deepcopy=False)
    statuses: dict[str, int] = {}
    for t in trials:
        s = results.status_of(t.state.name, t.user_attrs)
        statuses[s] = statuses.get(s, 0) + 1
    return {"storage": "sqlite", "space": "mobilenetv3.yaml", "generated_s": round(gen_s, 1),
            "final_records": len(trials), "statuses": statuses,
            "generated": sum(1 for t in trials if t.user_attrs.get("generated")), "rows": rows,
            "db_bytes": (run_dir / rundir.STUDY_DB).stat().st_size}


# ------------------------------------------------------------------------------------------ report


def markdown(out: dict[str, Any]) -> str:
    s = out["settings"]
    lines = [f"Scaling, commit {out['commit']}", ""]
    lines.append(f"Throughput: data `{s['dataset_label']}`, `{s['constraints']}`, one fixed candidate "
                 f"(`{s['fixed_spec']}`), {s['trials']} trained trials per configuration and round, "
                 f"{s['epochs']} QAT epoch(s), "
                 f"train cap {s['train_limit'] or 'none'}; {s['postgres_version'] or 'PostgreSQL'} local server on "
                 f"127.0.0.1 (fsync off). {common.loadavg_note(out['clock'])}.")
    lines.append("")
    rows = [[r["config"], r["trained"], f"{r['execute_s']:.0f} s", f"{r['trials_per_hour']:.0f}",
             " / ".join(f"{v:.0f}" for v in r["per_round_trials_per_hour"]), f"{r['steady_trials_per_hour']:.0f}",
             common.fmt(r["candidate_s_median"], 1),
             ", ".join("/".join(str(n) for n in rr["trials_per_worker"]) for rr in r["rounds"]),
             ", ".join(f"{rr['loadavg_start'][0]:.1f}" for rr in r["rounds"])]
            for r in out["throughput"]]
    lines.append(common.table(["configuration", "trained", "wall (workers started to done, all rounds)",
                               "trials/hour", "per round", "steady-state trials/hour", "median candidate s",
                               "trials per worker", "1-min load at each start"], rows))
    lines.append("")
    lines.append(f"{s.get('rounds', 1)} round(s), the configurations in alternating order; "
                 "trials/hour = trained trials / wall time including the workers' start-up (TensorFlow import, "
                 "data loading); steady state = from the first trial's start to the last trial's end.")
    lines.append("")
    o = out["loop_overhead"]
    lines.append(f"Search-loop cost per trial with the candidate's training stubbed out, on a study of generated "
                 f"records (random points of `mobilenetv3.yaml`, profiled; "
                 f"{o['statuses'].get('rejected', 0)} rejected / "
                 f"{o['statuses'].get('trained', 0)} trained at the end, synthetic metrics; generating them took "
                 f"{o['generated_s']:.0f} s; SQLite file {o['db_bytes'] / 1e6:.1f} MB). "
                 f"Median of {o['rows'][0]['reps']} trials per cell, ms:")
    lines.append("")
    rows = [[f"{r['records']:,}", r["sampler"], r["sampler_ms"], r["profile_ms"], r["storage_and_bookkeeping_ms"],
             r["total_ms"]] for r in o["rows"]]
    lines.append(common.table(["records", "sampler", "sampling (Optuna sampler calls)", "analytic profile",
                               "storage + bookkeeping (ask/tell, 26 suggest writes, attributes, budget claim, "
                               "loop counts)", "total per trial"], rows))
    lines.append("")
    lines.append("Reading the run (the coordinator's progress poll, `nas pareto`, the app), ms:")
    lines.append("")
    seen, rows = set(), []
    for r in o["rows"]:
        if r["records"] in seen:
            continue
        seen.add(r["records"])
        rows.append([f"{r['records']:,}", r.get("summary_cold_ms", "-"), r.get("coordinator_poll_ms", "-")])
    lines.append(common.table(["records", "open the run + Run.summary() (cold)",
                               "Run.summary() again (warm trial cache: each 1-s progress poll of nas search)"], rows))
    return "\n".join(lines)


def plot(out: dict[str, Any], path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    tp = out["throughput"]
    xs = range(len(tp))
    ax1.bar([x - 0.2 for x in xs], [r["trials_per_hour"] for r in tp], 0.4, label="wall (with start-up)")
    ax1.bar([x + 0.2 for x in xs], [r["steady_trials_per_hour"] for r in tp], 0.4, label="steady state")
    ax1.set_xticks(list(xs), [r["config"] for r in tp], fontsize=8)
    ax1.set_ylabel("trained trials per hour")
    ax1.set_title("throughput (fixed candidate)", fontsize=10)
    ax1.legend(fontsize=8)
    rows = out["loop_overhead"]["rows"]
    for name, c in (("tpe", "tab:blue"), ("random", "tab:orange")):
        mine = [r for r in rows if r["sampler"] == name]
        ax2.plot([r["records"] for r in mine], [r["total_ms"] for r in mine], marker="o", color=c,
                 label=f"{name}: total")
        ax2.plot([r["records"] for r in mine], [r["sampler_ms"] for r in mine], marker=".", ls="--", color=c,
                 label=f"{name}: sampler")
    polls = {r["records"]: r for r in rows if "coordinator_poll_ms" in r}
    if polls:
        ks = sorted(polls)
        ax2.plot(ks, [polls[k]["coordinator_poll_ms"] for k in ks], marker="s", color="grey",
                 label="Run.summary, warm (progress poll)")
        if all("summary_cold_ms" in polls[k] for k in ks):
            ax2.plot(ks, [polls[k]["summary_cold_ms"] for k in ks], marker="s", ls=":", color="grey",
                     label="open run + Run.summary (cold)")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("trial records in the study (generated)")
    ax2.set_ylabel("ms (per trial, training excluded; per poll)")
    ax2.set_title("search-loop cost per trial (SQLite)", fontsize=10)
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=8, help="trained trials per throughput configuration (default 8)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    ap.add_argument("--reps", type=int, default=5, help="timed loop iterations per size and sampler (default 5)")
    ap.add_argument("--rounds", type=int, default=2, help="throughput rounds, in alternating order (default 2)")
    ap.add_argument("--skip-postgres", action="store_true", help="leave out the PostgreSQL configuration")
    ap.add_argument("--quick", action="store_true", help="MNIST, a 16 px candidate, 2 trials, small studies (tests)")
    ap.add_argument("--keep-runs", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    ap.add_argument("--render", type=Path, default=None, metavar="JSON",
                    help="only rewrite the Markdown and plot of a recorded run from its JSON")
    args = ap.parse_args(argv)
    if args.render:
        return common.render_only(args.render, markdown, plot)
    logging.basicConfig(level=logging.WARNING)
    common.search_env()
    clock = common.Clock()
    with common.scratch(args.keep_runs, "tinynas-scaling-") as root:
        if args.quick:
            args.trials, args.epochs, args.sizes, args.reps, args.rounds = 2, 1, [20, 60], 2, 1
            space = root / "quick_fixed.yaml"
            space.write_text(yaml.safe_dump(QUICK_FIXED, sort_keys=False))
            dataset, label, train_limit = "mnist", "mnist (embedded)", 64
        else:
            space = fixed_space(root / "fixed.yaml")
            dataset, label, train_limit = str(common.VWW96), "../shared/data/vww96", None
        sp = space_mod.load_space(str(space))
        assert sp.size() == 1, "the throughput space must be a single candidate"
        configs: list[tuple[str, int, bool]] = [("1 worker, SQLite", 1, False), ("2 workers, SQLite", 2, False)]
        if not args.skip_postgres:
            configs.append(("2 workers, PostgreSQL", 2, True))
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(postgres()) if not args.skip_postgres else None
            raw = []
            for k in range(args.rounds):
                # alternate the order so that a drift in the machine's background load favours no configuration
                for name, w, pg in (configs if k % 2 == 0 else configs[::-1]):
                    r = throughput(name, w, url if pg else None, args, root, space, dataset, train_limit, k)
                    raw.append(r)
                    print(f"round {k}: {name}: {r['trained']} trained in {r['execute_s']:.0f} s = "
                          f"{r['trials_per_hour']:.0f}/h", flush=True)
        tp = [combine(name, [r for r in raw if r["config"] == name]) for name, _, _ in configs]
        fixed_spec = results.open_run(root / slug(f"{configs[0][0]} r0")).trials()[0].spec
        overhead = loop_overhead(args, root, dataset)
    out = common.header("scaling", args.quick)
    out["settings"] = {"dataset": dataset, "dataset_label": label, "constraints": common.CONSTRAINTS,
                       "trials": args.trials, "epochs": args.epochs, "train_limit": train_limit,
                       "fixed_spec": fixed_spec,
                       "sampler": "tpe", "postgres_version": postgres_version(), "sizes": args.sizes,
                       "reps": args.reps, "rounds": args.rounds, "records_are_generated": True}
    out["throughput"] = tp
    out["loop_overhead"] = overhead
    out["clock"] = clock.record()
    stem = "scaling_quick" if args.quick else "scaling"
    md = common.finish(args.out, stem, out, markdown, plot)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
