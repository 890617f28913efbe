"""The training recipe, measured: the legacy QAT-from-the-first-step recipe against the default one (issue 18).

Every run trains one preset with :func:`nas.tf.candidate.evaluate` exactly as ``nas train`` does (INT8 QAT,
conversion, INT8 evaluation), on a presplit folder's ``train/`` (validation carved from it) with the INT8
model scored on ``test/``, read only for this report. Each run records INT8 test accuracy with its sample
count and Wilson 95% interval, float accuracy, validation accuracy, whether the run collapsed (loss at
ln K or accuracy at chance), its attempts and wall time.

Runs are saved to the JSON file as each one finishes and skipped when present, so the full grid can span
several sittings: run the same command again and it continues where it stopped.

Usage::

    python bench/recipe.py                              # the CIFAR-10 grid (hours on 2 cores; resumable)
    python bench/recipe.py --models mbv3s-0.5 --epochs 2 5
    python bench/recipe.py --ablation                   # each default choice removed in turn (CIFAR-10 subset)
    python bench/recipe.py --small                      # vww96, mnist, faces: not worse than legacy
    python bench/recipe.py --quick --out /tmp/r         # seconds: the default tests run this
    python bench/recipe.py --render bench/results/recipe.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

MODELS = {  # name -> (preset, resolution, width); CIFAR-10 is 32x32 (MLPerf Tiny IC)
    "mbv3s-0.5": ("mobilenetv3-small", 32, 0.5),
    "mbv3s-1.0": ("mobilenetv3-small", 32, 1.0),
    "resnet8": ("resnet8-cifar", None, None),
}
CIFAR10 = common.SHARED / "data" / "cifar10"
SMALL_SETS = {"vww96": str(common.VWW96), "mnist": "mnist", "faces": "faces"}
TEN_MINUTES_S = 600.0


def _spec(model: str, classes: int):
    from nas.spec import load_spec

    preset, res, width = MODELS[model]
    spec = load_spec(preset)
    changes: dict[str, Any] = {"classes": classes}
    if res:
        changes["resolution"] = res
    if width:
        changes["width"] = width
    return spec.replace(**changes)


def _ablations() -> dict[str, Any]:
    """The default recipe with one choice removed at a time (plus the legacy recipe's learning rate)."""
    from nas.budget import RECIPES

    d = RECIPES["default"]
    return {
        "default": d,
        "no-float-phase": dataclasses.replace(d, name="no-float-phase", float_share=0.0),
        "no-warmup": dataclasses.replace(d, name="no-warmup", warmup_share=0.0),
        "no-weight-decay": dataclasses.replace(d, name="no-weight-decay", optimizer="adam", weight_decay=0.0),
        "no-label-smoothing": dataclasses.replace(d, name="no-label-smoothing", label_smoothing=0.0),
        "batch-32": "batch-32",  # the default recipe at the legacy batch (its lr scaled by the sqrt rule)
        "legacy": "legacy",
    }


def run_one(job: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """Train, convert and score one (model, recipe, epochs, data) job; never raises for a failed training."""
    from nas.budget import RECIPES, Budget, Recipe
    from nas.tf.candidate import CandidateError, evaluate, load_dataset

    ds = load_dataset(job["dataset"], 0)
    spec = _spec(job["model"], ds.num_classes) if job["model"] in MODELS else None
    if spec is None:
        from nas.spec import parse_spec_string
        spec = parse_spec_string(job["model"])
    recipe: str | Recipe = job["recipe"]
    batch = None
    if isinstance(recipe, dict):
        recipe = Recipe(**recipe)
    elif recipe == "batch-32":
        recipe, batch = RECIPES["default"], 32
    budget = Budget(epochs=job["epochs"], recipe=recipe, batch_size=batch, train_limit=job.get("train_limit"))
    out_dir = scratch / job["id"].replace("/", "_")
    t0 = time.perf_counter()
    row: dict[str, Any] = {**job, "spec": spec.to_string()}
    try:
        m = evaluate(spec, job["dataset"], budget, out_dir, seed=job.get("seed", 0), report="test")
    except CandidateError as e:
        row.update(failed=str(e), wall_s=round(time.perf_counter() - t0, 1))
        return row
    wall = time.perf_counter() - t0
    hist = m["history"]
    n_train = min(len(ds.train.y), job.get("train_limit") or len(ds.train.y))
    trained_s = m["timings"].get("float_train", 0.0) + m["timings"].get("qat_train", 0.0)
    row.update(
        int8_test=m["int8_metric"], int8_interval=m["int8_interval"], float_test=m["float_metric"],
        test_samples=m["split_counts"]["test"], val_float=m["val_float_metric"], val_samples=m["split_counts"]["val"],
        train_samples=n_train, plan=m["plan_text"], attempts=m["attempts"], epochs_run=m["epochs_run"],
        wall_s=round(wall, 1), timings=m["timings"], macs=m["macs"], tflm_arena_bytes=m["tflm_arena_bytes"],
        tflite_bytes=m["tflite_bytes"],
        train_images_per_s=round(n_train * m["epochs_run"] / trained_s, 1) if trained_s else None,
        history=hist)
    return row


def _classes(r: dict[str, Any]) -> int | None:
    """K, from the run's spec string (its classifier head ``cls_n{K}``)."""
    import re

    m = re.search(r"cls_n(\d+)", r.get("spec", ""))
    return int(m.group(1)) if m else None


def _uniform(r: dict[str, Any]) -> bool | None:
    """The collapse signature: the last validation loss within 1% of ln K (a uniform softmax)."""
    import math

    hist = r.get("history") or {}
    last = (hist.get("val_loss") or [None])[-1]
    k = _classes(r)
    if last is None or not k:
        return None
    return abs(last - math.log(k)) <= 0.01 * math.log(k)


def _at_chance(r: dict[str, Any]) -> bool | None:
    """The INT8 test interval holds chance (1/K): the run is not told apart from guessing."""
    k = _classes(r)
    if "int8_interval" not in r or not k:
        return None
    lo, hi = r["int8_interval"]
    return lo <= 1.0 / k <= hi


def jobs_for(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.quick:
        spec = "in16x1-w0.35-cn_r1_k3_s2_c16_re-ir_r1_k3_s2_e2_c16_re-cls_n10_d0_re"
        return [{"id": f"quick/{r}/1", "model": spec, "recipe": r, "epochs": 2, "dataset": "mnist",
                 "train_limit": 600} for r in ("legacy", "default")]
    if args.ablation:
        out = []
        for name, recipe in _ablations().items():
            rec = dataclasses.asdict(recipe) if not isinstance(recipe, str) else recipe
            out.append({"id": f"ablation/{name}", "model": "mbv3s-0.5", "recipe": rec, "epochs": args.ablation_epochs,
                        "dataset": str(CIFAR10), "train_limit": args.ablation_limit, "ablation": name})
        return out
    if args.small:
        return [{"id": f"small/{d}/{m}/{r}/{e}", "model": m, "recipe": r, "epochs": e, "dataset": path}
                for d, path in SMALL_SETS.items() for m in ("mbv3s-0.5",) for r in ("legacy", "default")
                for e in args.small_epochs]
    return [{"id": f"cifar10/{m}/{r}/{e}", "model": m, "recipe": r, "epochs": e, "dataset": str(CIFAR10)}
            for e in args.epochs for m in args.models for r in args.recipes]


# ------------------------------------------------------------------------------------------ report


def _acc(r: dict[str, Any]) -> str:
    if "failed" in r:
        return "failed: " + r["failed"][:80]
    lo, hi = r["int8_interval"]
    return f"{r['int8_test']:.1%} [{lo:.1%}, {hi:.1%}]"


def markdown(out: dict[str, Any]) -> str:
    runs = sorted(out["runs"].values(), key=lambda r: r["id"])
    rows = [[r["id"].split("/", 1)[1], r.get("plan", "-")[:60], _acc(r), r.get("test_samples", "-"),
             common.fmt(r.get("float_test")), common.fmt(r.get("val_float")),
             common.fmt(_uniform(r)), common.fmt(_at_chance(r)), len(r.get("attempts", [])) or "-",
             common.fmt(r.get("wall_s"), 0),
             common.fmt(r.get("train_images_per_s"), 0), r.get("commit", "-")] for r in runs]
    lines = [f"# Training recipe benchmark ({'quick' if out['quick'] else 'full'}; each run's commit in its row)", "",
             "INT8 test accuracy of the converted model with its Wilson 95% interval (n = test samples); "
             "float = the Keras QAT model on the same test split; val = validation split (carved from train/). "
             "Uniform = the last validation loss within 1% of ln K (the collapse signature); at chance = the INT8 "
             "interval holds 1/K. "
             "Wall = the whole `nas train` job (data prep, build, training, conversion, evaluation).", "",
             common.table(["run", "plan", "INT8 test [95% CI]", "n", "float test", "val", "uniform", "at chance",
                           "attempts",
                           "wall s", "train img/s", "commit"], rows)]
    ten = _within(runs, TEN_MINUTES_S)
    if ten:
        lines += ["", "Best INT8 test accuracy reached within a 10-minute job (wall), per model and recipe:", ""]
        lines += [f"- {k}: {_acc(v)} ({v['id']}, {v['wall_s']:.0f} s)" for k, v in sorted(ten.items())]
    lines += ["", common.loadavg_note(out["clock"])]
    return "\n".join(lines)


def _within(runs: list[dict[str, Any]], limit_s: float) -> dict[str, dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for r in runs:
        if "failed" in r or r["wall_s"] > limit_s or not r["id"].startswith("cifar10/"):
            continue
        key = f"{r['model']} {r['recipe']}"
        if key not in best or r["int8_test"] > best[key]["int8_test"]:
            best[key] = r
    return best


def plot(out: dict[str, Any], path: Path) -> bool:
    plt = common.pyplot()
    if plt is None:
        return False
    runs = [r for r in out["runs"].values() if "failed" not in r]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({(r["model"], str(r["recipe"])[:20]) for r in runs}):
        mine = sorted((r for r in runs if (r["model"], str(r["recipe"])[:20]) == key), key=lambda r: r["wall_s"])
        xs = [r["wall_s"] / 60 for r in mine]
        ys = [r["int8_test"] for r in mine]
        err = [[r["int8_test"] - r["int8_interval"][0] for r in mine], [r["int8_interval"][1] - r["int8_test"]
                                                                       for r in mine]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{key[0][:28]} / {key[1]}")
    ax.axvline(TEN_MINUTES_S / 60, color="grey", ls=":", lw=1)
    ax.set_xlabel("wall time of the training job (min, 2 cores)")
    ax.set_ylabel("INT8 test accuracy (95% CI)")
    ax.legend(fontsize=7)
    return common.save_figure(fig, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--recipes", nargs="+", default=["legacy", "default"], choices=["legacy", "default"])
    ap.add_argument("--epochs", nargs="+", type=int, default=[2, 5, 15])
    ap.add_argument("--ablation", action="store_true", help="each default choice removed in turn, on a subset")
    ap.add_argument("--ablation-epochs", type=int, default=4)
    ap.add_argument("--ablation-limit", type=int, default=10000, help="training images of the ablation runs")
    ap.add_argument("--small", action="store_true", help="vww96, mnist and faces, legacy vs default")
    ap.add_argument("--small-epochs", nargs="+", type=int, default=[5])
    ap.add_argument("--quick", action="store_true", help="two tiny mnist runs (the default tests run this)")
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    ap.add_argument("--stem", help="result file name (default recipe, recipe_ablation, recipe_small, recipe_quick)")
    ap.add_argument("--render", type=Path, help="rewrite the Markdown and plot of a recorded JSON")
    args = ap.parse_args()
    if args.render:
        return common.render_only(args.render, markdown, plot)
    common.search_env()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stem = args.stem or ("recipe_quick" if args.quick else "recipe_ablation" if args.ablation
                         else "recipe_small" if args.small else "recipe")
    path = args.out / f"{stem}.json"
    out = json.loads(path.read_text()) if path.exists() else common.header("recipe", args.quick, runs={})
    clock = common.Clock()
    todo = [j for j in jobs_for(args) if j["id"] not in out["runs"]]
    print(f"recipe: {len(todo)} run(s) to do, {len(out['runs'])} recorded in {path}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="recipe-") as tmp:
        for i, job in enumerate(todo, 1):
            row = run_one(job, Path(tmp))
            row.update(commit=common.commit(), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            out["runs"][job["id"]] = row
            out["commit"] = common.commit()
            out["clock"] = clock.record()
            common.finish(args.out, stem, out, markdown, plot)  # saved after every run: a kill loses one run
            print(f"recipe: {i}/{len(todo)} {job['id']}: {_acc(row)}, {row['wall_s']:.0f} s", file=sys.stderr,
                  flush=True)
    if not todo:
        out["clock"] = out.get("clock") or clock.record()
        common.finish(args.out, stem, out, markdown, plot)
    print(markdown(out))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
