"""The Visual Wake Words result: the best model the search finds under mcu_vww.yaml against two baselines.

On ``../shared/data/vww96`` (600 labelled 96x96 RGB images, person / non-person; read in place and split by
``nas.data.load(..., seed)``: stratified, 15 % validation, 20 % test):

1. a search (``nas.search``: the default sampler, TPE, the ``mobilenetv3.yaml`` space, ``mcu_vww.yaml``) with a
   short screening budget per candidate; its best feasible trained candidate (highest INT8 accuracy on the test
   split, then the smaller measured arena) is taken;
2. that spec, the MLPerf Tiny reference (``mobilenetv1-vww``: MobileNetV1 0.25 at 96x96x3) and a hand-picked
   MobileNetV3-Small 0.35 at 96x96 are each trained from scratch with exactly the same recipe and budget
   (``--epochs``, ``--patience``, learning rate, batch), once per training seed (``--seeds``; a seed sets the
   initialisation, the shuffling and the 390 / 90 / 120 split), converted to full INT8 and measured;
3. side by side: INT8 accuracy on the test split and on the unseen holdout folder
   (``../shared/holdout/vww96``, all of it, via ``nas.tf.convert.evaluate_file``), the measured TFLM arena, flash
   (``.tflite`` size), MACs, estimated latency and energy from ``mcu_vww.yaml``'s model, and whether each
   model fits the target with its measured memory and flash.

The searched model was selected on the test split during the search, so its test accuracy carries a selection
bias; the holdout folder is the unbiased comparison. Writes ``vww.{json,md,png}`` to ``bench/results/``
(``vww_quick.*`` with ``--quick``: 64 training images, 32 px inputs, 1 epoch, a 2-trial search).

    python bench/vww.py [--search-trials 8] [--search-epochs 2] [--epochs 30] [--patience 8] [--seeds 0 1 2]
                        [--jobs 2] [--quick] [--out DIR] [--render JSON]
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

import common  # bench/common.py: run as a script, this folder is first on sys.path
from nas import results, rundir, search
from nas.hardware import load_target
from nas.spec import ArchSpec, preset

QUICK_SPACE = {
    "name": "quick",
    "resolution": [32],
    "width": [0.25, 0.5],
    "stages": [
        {"name": "stem", "kind": "cn", "channels": 8, "stride": 2, "act": "relu"},
        {"name": "s1", "kind": "ir", "channels": 16, "stride": 2, "depth": [1, 2], "kernel": [3, 5],
         "expansion": [2, 4], "act": ["relu", "hswish"]},
        {"name": "last", "kind": "cn", "channels": [32, 64], "kernel": 1, "depth": [0, 1]},
    ],
    "head": {"kind": "classifier", "hidden": [0, 32]},
}


def baselines(quick: bool) -> list[tuple[str, ArchSpec]]:
    ref = preset("mobilenetv1-vww")
    mnv3 = preset("mobilenetv3-small").replace(resolution=96, width=0.35, classes=2)
    if quick:
        ref, mnv3 = ref.replace(resolution=32), mnv3.replace(resolution=32)
    return [("mobilenetv1-vww (MLPerf Tiny reference)", ref), ("MobileNetV3-Small 0.35 @96 (hand-picked)", mnv3)]


def _init_worker(threads: int) -> None:
    for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(min(2, threads))
    common.search_env()


def train_final(job: dict[str, Any]) -> dict[str, Any]:
    """One model with the shared recipe: train, INT8, measure; then the holdout folder. Runs in a worker process."""
    logging.basicConfig(level=logging.WARNING)
    from nas.tf import convert
    from nas.budget import Budget
    from nas.tf.candidate import evaluate
    target = load_target(common.CONSTRAINTS)
    spec = ArchSpec.from_string(job["spec"])  # not load_spec: it stats the string as a path first
    t0 = time.perf_counter()
    metrics = evaluate(spec, job["dataset"], Budget(**job["budget"]), Path(job["out_dir"]), seed=job["seed"],
                       target=target, report="test")
    train_wall = time.perf_counter() - t0
    estimate, _ = search.estimate_record(ArchSpec.from_string(metrics["spec"]), target)
    checks = search.measured_checks(estimate, metrics, target)
    holdout = None
    if job.get("holdout"):
        t1 = time.perf_counter()
        h = convert.evaluate_file(str(Path(job["out_dir"]) / rundir.MODEL_FILE), job["holdout"], split="all",
                                  seed=job["seed"])
        holdout = {"int8_accuracy": h["int8_metric"], "samples": h["samples"],
                   "seconds": round(time.perf_counter() - t1, 2)}
    hist = metrics.get("history", {})
    return {
        "name": job["name"], "role": job["role"], "seed": job["seed"], "spec": metrics["spec"],
        "int8_accuracy": metrics["int8_metric"], "float_accuracy": metrics["float_metric"],
        "best_val_accuracy": max(hist.get("val_accuracy", [float("nan")])),
        "holdout": holdout,
        "tflm_arena_bytes": metrics["tflm_arena_bytes"], "estimated_sram_bytes": metrics["estimated_memory_bytes"],
        "tflite_bytes": metrics["tflite_bytes"], "macs": metrics["macs"], "params": metrics["params"],
        "latency_ms": metrics["latency_ms"], "energy_mj": metrics["energy_mj"],
        "fits": all(c.ok for c in checks),
        "limits": {c.name: {"value": c.value, "limit": c.limit, "ok": c.ok} for c in checks},
        "broken": [c.name for c in checks if not c.ok],
        "epochs_run": metrics["epochs_run"], "timings": metrics["timings"], "seconds": round(train_wall, 1),
        "history": hist,
    }


def run_search(args: argparse.Namespace, root: Path, space: str, dataset: str,
               train_limit: int | None) -> dict[str, Any]:
    req = search.SearchRequest(constraints=common.CONSTRAINTS, space=space, dataset=dataset, trials=args.search_trials,
                               epochs=args.search_epochs, train_limit=train_limit, sampler="tpe", workers=1,
                               seed=args.seed, run_dir=str(root / "search"), command=("bench/vww.py",))
    t0 = time.perf_counter()
    run_dir = search.create_run(req)
    outcome = search.execute(run_dir, workers=1)
    wall = time.perf_counter() - t0
    run = results.open_run(run_dir)
    records = run.trials()
    feasible = [r for r in records if r.feasible]
    if not feasible:
        raise SystemExit(f"the search trained no feasible candidate ({outcome.summary})")
    best = max(feasible, key=lambda r: (r.int8_metric, -(r.memory_bytes or 0), -r.number))
    trials = [{"number": r.number, "status": r.status, "feasible": r.feasible, "spec": r.spec,
               "int8_accuracy": r.int8_metric, "tflm_arena_bytes": r.memory_bytes, "tflite_bytes": r.tflite_bytes,
               "macs": r.macs, "energy_mj": r.energy_mj, "seconds": r.train_seconds} for r in records]
    return {"wall_s": round(wall, 1), "summary": outcome.summary.to_dict(), "sampler": "tpe", "space": space,
            "trials_budget": args.search_trials, "epochs": args.search_epochs, "train_limit": train_limit,
            "best": {"number": best.number, "spec": best.spec, "int8_accuracy": best.int8_metric,
                     "tflm_arena_bytes": best.memory_bytes, "tflite_bytes": best.tflite_bytes},
            "pareto": [r.number for r in run.pareto(records)], "trials": trials}


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model over its training seeds: mean (and per-seed) accuracies; the worst seed's memory."""
    models: list[dict[str, Any]] = []
    for name in dict.fromkeys(r["name"] for r in runs):
        mine = [r for r in runs if r["name"] == name]
        worst = max(mine, key=lambda r: (len(r["broken"]), r["tflite_bytes"], r["tflm_arena_bytes"]))

        def mean(key: str, rows: list[dict[str, Any]] = mine) -> float:
            return sum(r[key] for r in rows) / len(rows)

        hold = [r["holdout"]["int8_accuracy"] for r in mine if r["holdout"]]
        models.append({
            "name": name, "role": mine[0]["role"], "spec": mine[0]["spec"], "seeds": [r["seed"] for r in mine],
            "int8_accuracy": mean("int8_accuracy"), "int8_accuracy_per_seed": [r["int8_accuracy"] for r in mine],
            "float_accuracy": mean("float_accuracy"),
            "holdout_int8_accuracy": sum(hold) / len(hold) if hold else None, "holdout_per_seed": hold,
            "holdout_samples": mine[0]["holdout"]["samples"] if mine[0]["holdout"] else None,
            "tflm_arena_bytes": worst["tflm_arena_bytes"], "tflite_bytes": worst["tflite_bytes"],
            "tflm_arena_range": [min(r["tflm_arena_bytes"] for r in mine), max(r["tflm_arena_bytes"] for r in mine)],
            "tflite_range": [min(r["tflite_bytes"] for r in mine), max(r["tflite_bytes"] for r in mine)],
            "macs": worst["macs"], "params": worst["params"], "latency_ms": worst["latency_ms"],
            "energy_mj": worst["energy_mj"], "fits": all(r["fits"] for r in mine),
            "broken": sorted({b for r in mine for b in r["broken"]}), "limits": worst["limits"],
            "epochs_run": [r["epochs_run"] for r in mine], "seconds": [r["seconds"] for r in mine],
        })
    return models


def _per_seed(values: list[float]) -> str:
    return "" if len(values) < 2 else " (" + " / ".join(f"{v:.3f}" for v in values) + ")"


def markdown(out: dict[str, Any]) -> str:
    s, srch = out["settings"], out["search"]
    r = s["recipe"]
    seeds = s["seeds"]
    lines = [f"Visual Wake Words (vww96), commit {out['commit']}", ""]
    lines.append(f"Data `{s['dataset_label']}`: {s['split_text']} (nas.data.load: stratified, 15 % validation, "
                 f"20 % test; a seed draws its own split of these sizes); holdout `{s['holdout_label']}` "
                 f"({s['holdout_samples']} images, never used for training, early stopping or selection).")
    lines.append("")
    lines.append(f"Search: TPE over `{srch['space']}` under `{s['constraints']}`, {srch['trials_budget']} trained "
                 f"candidates at {srch['epochs']} training epoch(s) each, split seed {s['search_seed']} "
                 f"({srch['summary']['feasible']} feasible, {srch['summary']['rejected']} rejected on paper, "
                 f"{srch['wall_s']:.0f} s); picked trial {srch['best']['number']}, the best feasible INT8 test "
                 f"accuracy in the search ({srch['best']['int8_accuracy']:.3f}; ties broken by the smaller "
                 f"measured arena).")
    lines.append("")
    recipe = r.get("recipe", "legacy") if "float_epochs" not in r else "legacy"
    how = ("INT8 QAT from scratch (no float warm-up), Adam, cosine learning rate from "
           f"{r['learning_rate']}" if recipe == "legacy" else
           f"the `{recipe}` recipe of nas/budget.py (float, then QAT; docs/training.md), peak learning rate "
           f"{r.get('learning_rate') or 'the recipe default'}")
    lines.append(f"Final recipe, identical for the three models: {how}, at most {r['epochs']} epochs, early "
                 f"stopping on validation accuracy with patience {r['patience']} (best weights restored), "
                 f"batch {r.get('batch_size') or 'auto'}, {s['train_images']} training images with flip / translation "
                 f"augmentation; "
                 f"training seeds {seeds} (accuracies are means over them, per seed in brackets); {s['jobs']} model(s) "
                 f"trained at a time.")
    lines.append("")
    rows = []
    for m in out["models"]:
        lim = m["limits"]
        rows.append([
            m["name"], f"{m['int8_accuracy']:.3f}{_per_seed(m['int8_accuracy_per_seed'])}",
            "-" if m["holdout_int8_accuracy"] is None else
            f"{m['holdout_int8_accuracy']:.3f}{_per_seed(m['holdout_per_seed'])}",
            f"{m['tflm_arena_bytes']:,} B ({m['tflm_arena_bytes'] / 1024:.1f} KB)",
            f"{m['tflite_bytes']:,} B ({m['tflite_bytes'] / 1024:.1f} KB)",
            f"{m['macs'] / 1e6:.2f} M", f"{m['latency_ms']:.1f} ms", f"{m['energy_mj']:.3f} mJ",
            "yes" if m["fits"] else "no: " + ", ".join(
                f"{k.replace('_bytes', '')} {lim[k]['value'] / 1024:,.1f} KB > {lim[k]['limit'] / 1024:,.0f} KB"
                if k.endswith("bytes") else f"{k} {lim[k]['value']:,.0f} > {lim[k]['limit']:,.0f}"
                for k in m["broken"]),
            "/".join(str(e) for e in m["epochs_run"])])
    lines.append(common.table(
        ["model", f"INT8 acc, test split (n={s['split']['test']})",
         f"INT8 acc, holdout (n={s['holdout_samples']})", "TFLM arena (measured)", "flash (.tflite)", "MACs",
         "latency (est.)", "energy (est.)", "fits mcu_vww (250 KB SRAM, 250 KB flash, 60M MACs)", "epochs run"], rows))
    lines.append("")
    lines.append("Specs: " + "; ".join(f"{m['name']}: `{m['spec']}`" for m in out["models"]))
    lines.append("")
    lines.append(f"Latency and energy: MACs / (0.20 MACs/cycle x 156 MHz) at 20 mW (mcu_vww.yaml's Cortex-M4F model). "
                 f"Memory and flash are the largest over the seeds. The searched model was picked by its test-split "
                 f"accuracy during the search, so its test column is optimistic; the holdout column is not. "
                 f"{common.loadavg_note(out['clock'])}.")
    return "\n".join(lines)


def plot(out: dict[str, Any], path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = dict(zip((m["name"] for m in out["models"]), ("tab:blue", "tab:orange", "tab:green")))
    for r in out["runs"]:
        h = r["history"]
        if "val_accuracy" in h:
            first = r["seed"] == out["models"][0]["seeds"][0]
            ax1.plot(range(1, len(h["val_accuracy"]) + 1), h["val_accuracy"], color=colors[r["name"]], alpha=0.7,
                     lw=1.2, label=r["name"] if first else None)
    for m in out["models"]:
        hold = m["holdout_per_seed"] or m["int8_accuracy_per_seed"]
        mean = sum(hold) / len(hold)
        ax2.errorbar(m["tflm_arena_bytes"] / 1024, mean, yerr=[[mean - min(hold)], [max(hold) - mean]], fmt="o",
                     ms=5 + m["tflite_bytes"] / 40000, color=colors[m["name"]], capsize=3,
                     label=f"{m['name']}: {m['tflite_bytes'] / 1024:.0f} KB flash, "
                           f"{'fits' if m['fits'] else 'does not fit'}")
    ax1.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("validation accuracy (QAT model)")
    ax1.set_title("training, same recipe (one line per seed)", fontsize=10)
    ax1.legend(fontsize=7)
    ax2.axvline(250, color="red", lw=0.8, ls="--", label="250 KB SRAM limit")
    ax2.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax2.set_xlim(0, 260)
    ax2.set_xlabel("measured TFLM arena (KB)")
    ax2.set_ylabel("INT8 accuracy on the holdout folder (mean, min..max)")
    ax2.set_title("accuracy vs memory (marker size ~ flash)", fontsize=10)
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--search-trials", type=int, default=8)
    ap.add_argument("--search-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30, help="final recipe: QAT epochs at most (default 30)")
    ap.add_argument("--patience", type=int, default=8, help="final recipe: early-stopping patience (default 8)")
    ap.add_argument("--lr", type=float, default=None, help="final recipe: peak learning rate (default: Budget's)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0, help="the search's seed (split, training, sampler)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of the final models")
    ap.add_argument("--jobs", type=int, default=2, help="final models trained at the same time (default 2)")
    ap.add_argument("--quick", action="store_true", help="64 training images, 32 px, 1 epoch (used by the tests)")
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
    from nas import data
    from nas.budget import Budget

    train_limit = None
    if args.quick:
        args.search_trials, args.search_epochs, args.epochs, args.patience, args.seeds = 2, 1, 1, 1, [0]
        train_limit = 64
    ds = data.load(str(common.VWW96), seed=args.seed)
    desc = ds.description
    holdout = data.load(str(common.HOLDOUT_VWW96), seed=args.seed)
    holdout_samples = len(holdout.train) + len(holdout.val) + len(holdout.test)
    del ds, holdout
    budget_kw = {"epochs": args.epochs, "patience": args.patience, "batch_size": args.batch_size,
                 "train_limit": train_limit}
    if args.lr is not None:
        budget_kw["learning_rate"] = args.lr
    budget = Budget(**budget_kw).to_dict()
    with common.scratch(args.keep_runs, "tinynas-vww-") as root:
        if args.quick:
            space_path = root / "quick_space.yaml"
            space_path.write_text(yaml.safe_dump(QUICK_SPACE, sort_keys=False))
            space = str(space_path)
        else:
            space = "mobilenetv3.yaml"
        srch = run_search(args, root, space, str(common.VWW96), train_limit)
        print(f"search: best feasible trial {srch['best']['number']} INT8 {srch['best']['int8_accuracy']:.3f} "
              f"({srch['wall_s']:.0f} s)", flush=True)
        models = [("searched (best feasible of the search)", "searched", srch["best"]["spec"])]
        models += [(name, "baseline", spec.to_string()) for name, spec in baselines(args.quick)]
        jobs = [{"name": name, "role": role, "spec": spec, "dataset": str(common.VWW96),
                 "holdout": str(common.HOLDOUT_VWW96), "budget": budget, "seed": seed,
                 "out_dir": str(root / "final" / f"m{i}-seed{seed}")}
                for seed in args.seeds for i, (name, role, spec) in enumerate(models)]
        threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
        ctx = multiprocessing.get_context("spawn")  # TensorFlow only ever starts inside the workers
        with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx, initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            runs = list(pool.map(train_final, jobs))
    for m in runs:
        print(f"{m['name']} seed {m['seed']}: INT8 test {m['int8_accuracy']:.3f}, holdout "
              f"{m['holdout']['int8_accuracy']:.3f}, arena {m['tflm_arena_bytes']:,} B, flash {m['tflite_bytes']:,} B, "
              f"fits {m['fits']}", flush=True)
    counts = desc["counts"]
    out = common.header("vww", args.quick)
    out["settings"] = {
        "dataset": str(common.VWW96), "dataset_label": "../shared/data/vww96",
        "holdout": str(common.HOLDOUT_VWW96), "holdout_label": "../shared/holdout/vww96",
        "holdout_samples": holdout_samples, "search_seed": args.seed, "seeds": args.seeds,
        "constraints": common.CONSTRAINTS,
        "split": counts, "class_counts": desc.get("class_counts"),
        "split_text": f"{sum(counts.values())} images = train {counts['train']} / validation {counts['val']} / "
                      f"test {counts['test']}",
        "train_images": train_limit or counts["train"], "recipe": budget, "jobs": args.jobs,
        "selection": "best feasible trained trial of the search by INT8 accuracy on the test split, then smaller "
                     "measured arena",
    }
    out["search"] = srch
    out["models"] = aggregate(runs)
    out["runs"] = runs
    out["clock"] = clock.record()
    stem = "vww_quick" if args.quick else "vww"
    md = common.finish(args.out, stem, out, markdown, plot)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
