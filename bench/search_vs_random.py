"""Search efficiency: the default sampler (constraint-aware multi-objective TPE) against random search.

Same data (``../shared/data/vww96``, read in place), same constraint file (``mcu_vww.yaml``), same search
space (``mobilenetv3.yaml``), same training budget per candidate and the same number of trained candidates
(``--trials``, which counts trained and failed candidates; rejected ones are free), for several seeds. Each
search is a real ``nas search`` run (``nas.search.create_run`` + ``execute``: one worker process, real QAT,
INT8 conversion and TFLM measurement); seed ``s`` fixes the data split, the training seed and the sampler's
seed, so the two samplers of one seed see the same split.

Reported per search and per sampler:

* the hypervolume of the feasible Pareto front after each trained trial (a curve). Objectives, all
  minimised and normalised to [0, 1]: ``1 - INT8 accuracy``, measured TFLM arena / the SRAM limit
  (250 KB = 256,000 B), energy per inference / the energy at the MAC limit (60M MACs on the target's model).
  Fixed reference point (1, 1, 1): accuracy 0, arena = the SRAM limit, energy = that of a 60M-MAC model.
  Only trained trials that meet every limit with their *measured* memory and ``.tflite`` size count;
* the share of the search's wall time spent on infeasible candidates: rejected on paper (they cost only the
  analytic profile) and trained ones whose measured memory / flash broke a limit (goal: zero);
* the per-candidate time breakdown (medians of ``nas.tf.candidate.evaluate``'s timings: data, build,
  train = float + QAT, convert, evaluate, measure) and what the search loop adds around a candidate.

Writes ``search_vs_random.{json,md,png}`` to ``bench/results/`` (``search_vs_random_quick.*`` with
``--quick``: embedded MNIST, a tiny space, 2 trials, 1 seed).

    python bench/search_vs_random.py [--seeds 0 1] [--trials 8] [--epochs 2] [--parallel 2] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

import common  # bench/common.py: run as a script, this folder is first on sys.path
from nas import results, search
from nas.hardware import load_target
from nas.hypervolume import hypervolume
from nas.rundir import TrialStatus
from nas.storage import startup_trials as tpe_startup_trials

SAMPLERS = ("tpe", "random")
PHASES = ("data", "build", "train", "float_train", "qat_train", "convert", "evaluate", "measure")

# --quick: a tiny classification space; the 512 and 640 px resolutions break the 250 KB SRAM limit on paper
# (their int8 input tensor alone is 256 KB / 400 KB), so the quick run also rejects candidates; upsample: true
# keeps those resolutions above MNIST's 28 px in the search.
QUICK_SPACE = {
    "name": "quick",
    "resolution": [16, 512, 32, 640],
    "upsample": True,
    "width": [0.25, 0.5],
    "stages": [
        {"name": "stem", "kind": "cn", "channels": 8, "stride": 2, "act": "relu"},
        {"name": "s1", "kind": "ir", "channels": 16, "stride": 2, "depth": [1, 2], "kernel": [3, 5],
         "expansion": [2, 4], "act": ["relu", "hswish"]},
        {"name": "last", "kind": "cn", "channels": [32, 64], "kernel": 1, "depth": [0, 1]},
    ],
    "head": {"kind": "classifier", "hidden": [0, 32]},
}


def startup_trials(trials: int) -> int:
    """TPE's random start-up trials in nas.search.make_sampler for a budget of ``trials``."""
    return tpe_startup_trials(search.make_sampler("tpe", 0, trials))


def normaliser(target: Any) -> dict[str, float]:
    """The fixed scale of each objective: the SRAM limit and the energy of a model at the MAC limit."""
    return {"memory_bytes": float(target.sram_bytes), "energy_mj": float(target.energy_mj(target.max_macs))}


def normalised(rec: dict[str, Any], scale: dict[str, float]) -> tuple[float, float, float]:
    return (1.0 - rec["int8_metric"], rec["memory_bytes"] / scale["memory_bytes"],
            rec["energy_mj"] / scale["energy_mj"])


def hv_of(recs: list[dict[str, Any]], scale: dict[str, float]) -> float:
    pts = [normalised(r, scale) for r in recs if r["feasible"]]
    return hypervolume(pts, (1.0, 1.0, 1.0))


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else (b - a).total_seconds()


def run_search(sampler: str, seed: int, args: argparse.Namespace, root: Path, space: str, dataset: str,
               train_limit: int | None) -> dict[str, Any]:
    """One real search; its trials as plain rows, the hypervolume curve and the time accounting."""
    req = search.SearchRequest(constraints=common.CONSTRAINTS, space=space, dataset=dataset, trials=args.trials,
                               epochs=args.epochs, train_limit=train_limit, sampler=sampler, workers=1, seed=seed,
                               run_dir=str(root / f"{sampler}-seed{seed}"),
                               command=("bench/search_vs_random.py", sampler, str(seed)))
    started = datetime.now()
    t0 = time.perf_counter()
    run_dir = search.create_run(req)
    t_created = time.perf_counter()
    outcome = search.execute(run_dir, workers=1)
    wall = time.perf_counter() - t0
    run = results.open_run(run_dir)
    target = run.target()
    scale = normaliser(target)
    frozen = {t.number: t for t in run.frozen_trials()}
    rows = []
    for rec in run.trials():
        ft = frozen[rec.number]
        rows.append({
            "number": rec.number, "status": rec.status, "feasible": rec.feasible, "spec": rec.spec,
            "int8_metric": rec.int8_metric, "float_metric": rec.float_metric, "memory_bytes": rec.memory_bytes,
            "estimated_memory_bytes": rec.estimated_memory_bytes, "tflite_bytes": rec.tflite_bytes,
            "macs": rec.macs, "energy_mj": rec.energy_mj, "violations": rec.violations, "reason": rec.reason,
            "duration_s": _seconds(ft.datetime_start, ft.datetime_complete),
            "finished_after_s": _seconds(started, ft.datetime_complete),
            "candidate_s": rec.train_seconds or None, "timings": rec.timings,
        })
    # Completion order = the order the budget was spent in (one worker: trial-number order).
    spent = sorted((r for r in rows if TrialStatus(r["status"]).uses_budget),
                   key=lambda r: (r["finished_after_s"] or 0.0, r["number"]))
    curve, seen = [], []
    for k, r in enumerate(spent, 1):
        seen.append(r)
        curve.append({"trained": k, "trial": r["number"], "after_s": r["finished_after_s"],
                      "hypervolume": round(hv_of(seen, scale), 6)})
    rejected = [r for r in rows if r["status"] == "rejected"]
    measured_infeasible = [r for r in rows if r["status"] == "trained" and not r["feasible"]]
    failed = [r for r in rows if r["status"] == "failed"]
    sums = {k: sum(r["duration_s"] or 0.0 for r in v) for k, v in
            (("rejected", rejected), ("trained_infeasible", measured_infeasible), ("failed", failed),
             ("trained_feasible", [r for r in rows if r["feasible"]]))}
    feasible = [r for r in rows if r["feasible"]]
    best = max(feasible, key=lambda r: (r["int8_metric"], -r["memory_bytes"]), default=None)
    return {
        "sampler": sampler, "seed": seed, "run_dir": str(run_dir), "wall_s": round(wall, 2),
        "create_s": round(t_created - t0, 2), "worker_errors": list(outcome.worker_errors), "stopped": outcome.stopped,
        "summary": outcome.summary.to_dict(), "scale": scale, "curve": curve,
        "final_hypervolume": curve[-1]["hypervolume"] if curve else 0.0,
        "best": None if best is None else {k: best[k] for k in ("number", "spec", "int8_metric", "memory_bytes",
                                                                "tflite_bytes", "macs", "energy_mj")},
        "pareto": [r.number for r in run.pareto()],
        "time": {
            "rejected_s": round(sums["rejected"], 4), "rejected_count": len(rejected),
            "rejected_median_ms": round(1000 * (common.median([r["duration_s"] for r in rejected]) or 0.0), 2),
            "trained_infeasible_s": round(sums["trained_infeasible"], 2),
            "trained_infeasible_count": len(measured_infeasible),
            "failed_s": round(sums["failed"], 2), "trained_feasible_s": round(sums["trained_feasible"], 2),
            "infeasible_share": round((sums["rejected"] + sums["trained_infeasible"]) / wall, 6),
            "rejected_share": round(sums["rejected"] / wall, 6),
        },
        "trials": rows,
    }


def breakdown(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over every trained candidate of these runs: evaluate()'s phases and the loop around them."""
    cands = [r for run in runs for r in run["trials"] if r["status"] == "trained"]
    out: dict[str, Any] = {"candidates": len(cands)}
    for phase in PHASES:
        if phase == "train":
            vals = [r["timings"].get("float_train", 0.0) + r["timings"].get("qat_train", 0.0) for r in cands]
        else:
            vals = [r["timings"].get(phase, 0.0) for r in cands]
        out[phase] = common.median(vals)
    out["candidate_total"] = common.median([r["candidate_s"] for r in cands])
    out["trial_total"] = common.median([r["duration_s"] for r in cands])
    # The first candidate of each worker also pays the worker's one-time TensorFlow import (inside the trial, not
    # inside evaluate): reported on its own, and left out of the per-trial loop overhead.
    firsts, rest = [], []
    for run in runs:
        mine = sorted((r for r in run["trials"] if r["status"] == "trained"), key=lambda r: r["number"])
        for i, r in enumerate(mine):
            if r["duration_s"] is not None and r["candidate_s"]:
                (firsts if i == 0 else rest).append(r["duration_s"] - r["candidate_s"])
    out["loop_overhead"] = common.median(rest)
    out["first_trial_overhead"] = common.median(firsts)
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def aggregate(runs: list[dict[str, Any]], trials: int) -> dict[str, Any]:
    by: dict[str, Any] = {}
    for sampler in SAMPLERS:
        mine = [r for r in runs if r["sampler"] == sampler]
        if not mine:
            continue
        curve = []
        for k in range(1, trials + 1):
            vals = [r["curve"][k - 1]["hypervolume"] if len(r["curve"]) >= k else
                    (r["curve"][-1]["hypervolume"] if r["curve"] else 0.0) for r in mine]
            curve.append({"trained": k, "mean": round(sum(vals) / len(vals), 6), "min": min(vals), "max": max(vals)})
        finals = [r["final_hypervolume"] for r in mine]
        bests = [r["best"]["int8_metric"] for r in mine if r["best"]]
        walls = sum(r["wall_s"] for r in mine)
        by[sampler] = {
            "seeds": [r["seed"] for r in mine], "final_hypervolume": finals,
            "final_hypervolume_mean": round(sum(finals) / len(finals), 6), "curve": curve,
            "best_int8_accuracy": bests,
            "trained": sum(r["summary"]["trained"] for r in mine),
            "feasible": sum(r["summary"]["feasible"] for r in mine),
            "failed": sum(r["summary"]["failed"] for r in mine),
            "rejected": sum(r["summary"]["rejected"] for r in mine),
            "trained_infeasible": sum(r["time"]["trained_infeasible_count"] for r in mine),
            "wall_s": round(walls, 1),
            "rejected_s": round(sum(r["time"]["rejected_s"] for r in mine), 4),
            "infeasible_share": round(sum(r["time"]["infeasible_share"] * r["wall_s"] for r in mine) / walls, 6),
            "breakdown": breakdown(mine),
        }
    return by


def markdown(out: dict[str, Any]) -> str:
    s = out["settings"]
    agg = out["samplers"]
    lines = [f"Search efficiency: default sampler (tpe) vs random, commit {out['commit']}", ""]
    lines.append(f"Data `{s['dataset_label']}` (split per seed, {s['split']}), constraints `{s['constraints']}`, space "
                 f"`{s['space_label']}`; {s['trials']} trained candidates per search, {s['epochs']} QAT epoch(s) each "
                 f"(batch {s['budget']['batch_size']}, lr {s['budget']['learning_rate']}, train cap "
                 f"{s['train_limit'] or 'none'}); seeds {s['seeds']}; {s['parallel']} search(es) at a time, one "
                 f"worker each. {common.loadavg_note(out['clock'])}.")
    lines.append("")
    lines.append("Hypervolume of the feasible Pareto front (trained, every limit met with measured memory and "
                 "flash), objectives normalised and minimised: 1 - INT8 accuracy, TFLM arena / 256,000 B, energy / "
                 f"{s['energy_scale_mj']:.2f} mJ (a 60M-MAC model); reference point (1, 1, 1).")
    lines.append("")
    rows = []
    for name, a in agg.items():
        rows.append([name, " / ".join(f"{v:.4f}" for v in a["final_hypervolume"]), f"{a['final_hypervolume_mean']:.4f}",
                     " / ".join(f"{v:.3f}" for v in a["best_int8_accuracy"]) or "-",
                     f"{a['feasible']}/{a['trained']}", a["failed"], a["rejected"],
                     f"{a['rejected_s']:.3f} s", f"{100 * a['infeasible_share']:.3f} %", f"{a['wall_s']:.0f} s"])
    lines.append(common.table(["sampler", "final HV per seed", "mean", "best feasible INT8 acc per seed",
                               "feasible/trained", "failed", "rejected on paper", "time on rejected",
                               "wall share on infeasible", "wall (sum)"], rows))
    lines.append("")
    lines.append("Hypervolume after k trained candidates (mean over seeds; min..max):")
    lines.append("")
    trials = s["trials"]
    rows = []
    for k in range(1, trials + 1):
        row: list[Any] = [k]
        for name in agg:
            c = agg[name]["curve"][k - 1]
            row.append(f"{c['mean']:.4f} ({c['min']:.4f}..{c['max']:.4f})")
        rows.append(row)
    lines.append(common.table(["k", *agg], rows))
    lines.append("")
    lines.append("Per trained candidate, median seconds (nas.tf.candidate.evaluate's timings; "
                 "float_train = float epochs before QAT, 0 here: the search's recipe "
                 "is INT8 QAT from scratch; qat_train = the QAT epochs; "
                 "loop = trial time outside evaluate: sampling, profile, storage, bookkeeping, "
                 "over every trial but a worker's first; first trial = the same for a worker's first trial, "
                 "which also imports TensorFlow):")
    lines.append("")
    rows = []
    for phase in ("data", "build", "float_train", "qat_train", "convert", "evaluate", "measure", "candidate_total",
                  "loop_overhead",
                  "first_trial_overhead", "trial_total"):
        rows.append([phase, *[common.fmt(agg[n]["breakdown"].get(phase), 2) for n in agg]])
    lines.append(common.table(["phase", *[f"{n} (n={agg[n]['breakdown']['candidates']})" for n in agg]], rows))
    lines.append("")
    rejected_ms = {n: common.median([r["time"]["rejected_median_ms"] for r in out["runs"] if r["sampler"] == n]) or 0
                   for n in agg}
    lines.append("Infeasible time: no candidate that breaks a limit on paper is trained. A rejected trial costs "
                 "sampling, the analytic profile and the trial's storage writes (median "
                 + ", ".join(f"{n} {rejected_ms[n]:.0f} ms" for n in agg)
                 + " per rejected trial on SQLite; scaling.md splits this up). "
                 "A candidate whose estimate is within the cost model's margin of a limit is converted untrained "
                 "and measured before training (seconds; in a "
                 "worker's first trial this includes importing TensorFlow), and rejected if it does not fit: the "
                 "time-on-rejected and infeasible-share columns include that. Trained candidates whose measured arena "
                 "or .tflite broke a limit: " + ", ".join(f"{n} {agg[n]['trained_infeasible']}" for n in agg) + ".")
    lines.append("")
    lines.append(f"Same seed, same start: TPE's first {startup_trials(s['trials'])} trials "
                 "(rejected ones included) are random draws from the same seed as the random sampler's, "
                 "so both searches of a seed begin with the "
                 "same candidates and diverge after that.")
    return "\n".join(lines)


def plot(out: dict[str, Any], path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = {"tpe": "tab:blue", "random": "tab:orange"}
    for run in out["runs"]:
        ks = [c["trained"] for c in run["curve"]]
        ax.plot(ks, [c["hypervolume"] for c in run["curve"]], color=colors[run["sampler"]], alpha=0.35, lw=1,
                marker=".", ms=3)
    for name, a in out["samplers"].items():
        ks = [c["trained"] for c in a["curve"]]
        ax.plot(ks, [c["mean"] for c in a["curve"]], color=colors[name], lw=2.2,
                label=f"{name} (mean of {len(a['seeds'])} seed(s))")
    ax.set_xlabel("trained candidates")
    ax.set_ylabel("hypervolume (normalised, ref (1, 1, 1))")
    ax.set_title(f"Feasible Pareto front, {out['settings']['dataset_label']}, mcu_vww.yaml", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--trials", type=int, default=8, help="trained candidates per search (default 8)")
    ap.add_argument("--epochs", type=int, default=2, help="QAT epochs per candidate (default 2)")
    ap.add_argument("--train-limit", type=int, default=None, help="cap on training images (default: all 390)")
    ap.add_argument("--parallel", type=int, default=2, help="searches run at the same time (default 2: the "
                    "tpe and random searches of one seed side by side, so both see the same machine load)")
    ap.add_argument("--quick", action="store_true", help="MNIST, a tiny space, 2 trials, 1 seed (used by the tests)")
    ap.add_argument("--keep-runs", type=Path, default=None, help="keep the run directories here")
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    ap.add_argument("--render", type=Path, default=None, metavar="JSON",
                    help="only rewrite the Markdown and plot of a recorded run from its JSON")
    args = ap.parse_args(argv)
    if args.render:
        return common.render_only(args.render, markdown, plot)
    logging.basicConfig(level=logging.WARNING)
    common.search_env()
    clock = common.Clock()
    with common.scratch(args.keep_runs, "tinynas-svr-") as root:
        if args.quick:
            args.seeds, args.trials, args.epochs = [0], 2, 1
            space_path = root / "quick_space.yaml"
            space_path.write_text(yaml.safe_dump(QUICK_SPACE, sort_keys=False))
            space, dataset, train_limit = str(space_path), "mnist", 64
            dataset_label, space_label = "mnist (embedded)", "quick (16/32 px)"
        else:
            space, dataset, train_limit = "mobilenetv3.yaml", str(common.VWW96), args.train_limit
            dataset_label, space_label = "../shared/data/vww96", "mobilenetv3.yaml"
        jobs = [(sampler, seed) for seed in args.seeds for sampler in SAMPLERS]
        with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            futures = [pool.submit(run_search, sampler, seed, args, root, space, dataset, train_limit)
                       for sampler, seed in jobs]
            runs = [f.result() for f in futures]
        for r in runs:
            print(f"{r['sampler']:>6} seed {r['seed']}: HV {r['final_hypervolume']:.4f}, "
                  f"{r['summary']['feasible']}/{r['summary']['trained']} feasible, "
                  f"{r['summary']['rejected']} rejected, "
                  f"wall {r['wall_s']:.0f} s", flush=True)
        desc = results.open_run(runs[0]["run_dir"]).dataset_description()
        from nas.budget import Budget

        budget = Budget(epochs=args.epochs, train_limit=train_limit).to_dict()
        if args.keep_runs is None:
            for r in runs:
                r["run_dir"] = None
    target = load_target(common.CONSTRAINTS)
    out = common.header("search_vs_random", args.quick)
    out["settings"] = {
        "dataset": dataset, "dataset_label": dataset_label, "space": space if not args.quick else "quick",
        "space_label": space_label, "constraints": common.CONSTRAINTS, "seeds": args.seeds, "trials": args.trials,
        "epochs": args.epochs, "train_limit": train_limit, "budget": budget, "parallel": args.parallel,
        "samplers": list(SAMPLERS),
        "split": ", ".join(f"{k} {v}" for k, v in desc["counts"].items()),
        "split_counts": desc["counts"], "energy_scale_mj": normaliser(target)["energy_mj"],
        "hypervolume": {"objectives": ["1 - int8_accuracy", "tflm_arena_bytes / 256000",
                                       f"energy_mj / {normaliser(target)['energy_mj']:.4f} (energy at 60M MACs)"],
                        "reference_point": [1.0, 1.0, 1.0], "counted": "trained trials meeting every limit "
                        "with measured arena and .tflite size"},
    }
    out["samplers"] = aggregate(runs, args.trials)
    out["runs"] = runs
    out["clock"] = clock.record()
    stem = "search_vs_random_quick" if args.quick else "search_vs_random"
    md = markdown(out)
    md = common.finish(args.out, stem, out, markdown, plot)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
