"""Latency model: the per-operator model (nas/latency.py) against the linear MACs model, on real boards.

1. **Leave one model out** on ``../shared/hardware/mlperf_tiny_latency.csv`` (read in place): for every
   (board, library) with at least three reference models, each model in turn is left out, both models are fitted
   on the remaining rows and predict it. Linear: the stack's MACs per cycle (geometric mean of its other rows).
   Per-op, three variants of :mod:`nas.latency_fit`:

   * ``family`` (what ships in ``nas/latency_profiles.yaml``): relative op costs shared by the stacks of one
     library family, fitted on that family's rows minus the one left out; the stack's scale on its own others;
   * ``strict``: as ``family``, but the left-out network is removed from *every* stack's rows, so neither the
     shared costs nor the scale have seen it on any board;
   * ``all-shared``: one set of relative costs for every library (the first design; kept to show why not).

   Goals (issue 17): per-op median |error| <= 15% and at least 2x below the linear model's median. The ridge
   weight and the family split were chosen while looking at these same errors, so the ``family`` figure is
   optimistic; ``ridge`` below shows how much it moves with that choice.
2. **Ranking**: random specs of the default search space (``mobilenetv3.yaml``, 10 classes, 3 channels) ranked
   by predicted latency on the per-op target of ``mcu_vww.yaml`` vs ranked by MACs (Spearman), and the pair
   with the largest "fewer MACs but slower" ratio.

Writes ``latency_model.json`` and ``latency_model.md`` to ``bench/results/`` (``latency_model_quick.*`` with
``--quick``: 40 specs instead of 400, for the tests; the leave-one-out part is the same).

    python bench/latency_model.py [--n 400] [--seed 0] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import common  # bench/common.py: run as a script, this folder is first on sys.path

from nas import latency_fit as lf
from nas import profile
from nas.hardware import load_target
from nas.latency import CostProfile, shipped_profiles
from nas.space import DataShape, default_space_for, load_space, sample, to_spec

CSV = common.SHARED / "hardware" / "mlperf_tiny_latency.csv"
GOAL_MEDIAN = 0.15
GOAL_RATIO = 2.0
RIDGES = (0.01, 0.05, 0.2, 1.0)
#: the ranking's second target: the profile whose fitted relative op costs differ most from 1
OTHER_PROFILE = "cortex-m7/x-cube-ai-9.0"


def _macs(row: lf.Row) -> int:
    return sum(layer.macs for layer in row.layers)


def _per_op(train: Sequence[lf.Row], row: lf.Row, variant: str, ridge: float) -> float:
    if variant == "all-shared":
        f = lf.fit(list(train), ridge=ridge)
    else:
        f = lf.fit_by_family(list(train), ridge=ridge)[row.stack]
    return lf.predict_ms(f.profile(row.stack), row.layers, row.clock_hz)


def leave_one_out(rows: Sequence[lf.Row], ridge: float = lf.RIDGE) -> list[dict[str, Any]]:
    """One record per left-out row of a stack with >= 3 models: measured, and each model's prediction."""
    count = Counter(r.stack for r in rows)
    out = []
    for i, row in enumerate(rows):
        if count[row.stack] < 3:
            continue
        train = [r for j, r in enumerate(rows) if j != i]
        strict = [r for r in train if r.model != row.model]
        mpc = lf.linear_fit([r for r in train if r.stack == row.stack])[row.stack]
        pred = {"linear": _macs(row) / (mpc * row.clock_hz) * 1000.0,
                "family": _per_op(train, row, "family", ridge),
                "strict": _per_op(strict, row, "family", ridge),
                "all-shared": _per_op(train, row, "all-shared", ridge)}
        out.append({"stack": row.stack, "model": row.model, "measured_ms": row.latency_ms,
                    "predicted_ms": pred, "error": {k: v / row.latency_ms - 1 for k, v in pred.items()}})
    return out


def summarize(loo: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for model in ("linear", "family", "strict", "all-shared"):
        errs = [abs(r["error"][model]) for r in loo]
        out[model] = {"median": statistics.median(errs), "mean": statistics.fmean(errs), "max": max(errs),
                      "n": len(errs)}
    lin = out["linear"]["median"]
    out["goals"] = {m: {"median_ok": out[m]["median"] <= GOAL_MEDIAN,
                        "ratio": lin / out[m]["median"] if out[m]["median"] else math.inf,
                        "ratio_ok": out[m]["median"] * GOAL_RATIO <= lin} for m in ("family", "strict", "all-shared")}
    return out


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def ranking(n: int, seed: int, profile_name: str | None = None) -> dict[str, Any]:
    """Predicted latency (per-op ``mcu_vww.yaml``, or it with another shipped profile) vs MACs over random specs
    of the default space."""
    target = load_target(common.CONSTRAINTS)
    if profile_name is not None:
        record = shipped_profiles()[profile_name]
        target = dataclasses.replace(target, cost=CostProfile.from_coefficients(profile_name, record["coefficients"]),
                                     clock_hz=float(record["clock_hz"]))
    space = load_space(default_space_for("classification"))
    rng = random.Random(seed)
    specs: list[dict[str, Any]] = []
    for _ in range(n):
        params = sample(space, lambda name, values: rng.choice(values))
        prof = profile.estimate(to_spec(space, params, DataShape("classification", 10, 3)))
        specs.append({"spec": prof.spec, "macs": prof.macs, "latency_ms": target.latency_ms(prof.macs, prof.layers)})
    macs = [float(s["macs"]) for s in specs]
    lat = [float(s["latency_ms"]) for s in specs]
    best = None
    for a in specs:
        for b in specs:
            if a["macs"] < b["macs"] and a["latency_ms"] > b["latency_ms"]:
                ratio = a["latency_ms"] / b["latency_ms"]
                if best is None or ratio > best[0]:
                    best = (ratio, a, b)
    inverted = sum(1 for i, a in enumerate(specs) for b in specs[i + 1:]
                   if (a["macs"] - b["macs"]) * (a["latency_ms"] - b["latency_ms"]) < 0)
    pairs = n * (n - 1) // 2
    pair = None if best is None else {"slower_with_fewer_macs": best[1], "faster_with_more_macs": best[2],
                                      "latency_ratio": best[0]}
    return {"target": target.name, "profile": target.cost.name if target.cost else None, "n": n,
            "spearman_latency_vs_macs": spearman(lat, macs), "inverted_pairs": inverted, "pairs": pairs,
            "pair": pair}


def run(n: int, seed: int, quick: bool) -> dict[str, Any]:
    clock = common.Clock()
    rows = lf.read_mlperf_csv(CSV)
    loo = leave_one_out(rows)
    ridge = {str(r): {m: v["median"] for m, v in summarize(leave_one_out(rows, r)).items() if m != "goals"}
             for r in RIDGES}
    out = common.header("latency_model", quick, csv=str(CSV), rows=len(rows), ridge_used=lf.RIDGE)
    ranks = [ranking(n, seed), ranking(n, seed, OTHER_PROFILE)]
    out.update(loo=loo, summary=summarize(loo), ridge_sensitivity=ridge, ranking=ranks, clock=clock.record())
    return out


def markdown(out: dict[str, Any]) -> str:
    s = out["summary"]
    pct = lambda v: f"{100 * v:+.1f}%"  # noqa: E731
    lines = ["Latency model: per-operator vs linear, leave one model out on the MLPerf Tiny rows",
             f"(commit {out['commit']}, {out['rows']} rows of {out['csv']}; stacks with >= 3 models)", "",
             common.table(["stack", "model", "measured ms", "linear", "per-op family", "per-op strict",
                           "per-op all-shared"],
                          [[r["stack"], r["model"], f"{r['measured_ms']:g}", pct(r["error"]["linear"]),
                            pct(r["error"]["family"]), pct(r["error"]["strict"]), pct(r["error"]["all-shared"])]
                           for r in out["loo"]]), "",
             common.table(["model", "median abs error", "mean", "max", "median <= 15%", "linear median / this"],
                          [[m, f"{100 * s[m]['median']:.1f}%", f"{100 * s[m]['mean']:.1f}%",
                            f"{100 * s[m]['max']:.1f}%",
                            "-" if m == "linear" else common.fmt(s["goals"][m]["median_ok"]),
                            "-" if m == "linear" else f"{s['goals'][m]['ratio']:.2f}x"]
                           for m in ("linear", "family", "strict", "all-shared")]), "",
             "Median abs error by ridge weight (the shipped fit uses "
             f"{out['ridge_used']}; chosen looking at these errors):", "",
             common.table(["ridge", *out["ridge_sensitivity"][str(RIDGES[0])]],
                          [[r, *(f"{100 * v:.1f}%" for v in med.values())]
                           for r, med in out["ridge_sensitivity"].items()])]
    for rk in out["ranking"]:
        lines += _ranking_lines(rk)
    lines += ["", common.loadavg_note(out["clock"])]
    return "\n".join(lines)


def _ranking_lines(rk: dict[str, Any]) -> list[str]:
    lines = ["", f"Ranking: {rk['n']} random specs of the default space on {rk['target']} (profile {rk['profile']}): "
                  f"Spearman(predicted latency, MACs) = {rk['spearman_latency_vs_macs']:.3f}; "
                  f"{rk['inverted_pairs']:,} of {rk['pairs']:,} pairs ordered the other way round by MACs."]
    if rk["pair"]:
        a, b = rk["pair"]["slower_with_fewer_macs"], rk["pair"]["faster_with_more_macs"]
        lines += [f"Fewer MACs, slower: `{a['spec']}` {a['macs']:,} MACs, {a['latency_ms']:.1f} ms vs "
                  f"`{b['spec']}` {b['macs']:,} MACs, {b['latency_ms']:.1f} ms ({rk['pair']['latency_ratio']:.2f}x)."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400, help="random specs for the ranking (default 400)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="40 specs for the ranking (used by the tests)")
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    args = ap.parse_args()
    out = run(40 if args.quick else args.n, args.seed, args.quick)
    md = markdown(out)
    common.write(args.out, "latency_model_quick" if args.quick else "latency_model", out, md)
    print(md)


if __name__ == "__main__":
    main()
