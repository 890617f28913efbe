"""Cost-model fidelity: the analytic profile of a spec against the model the converter actually emits.

The search trusts :func:`nas.profile.estimate` to reject candidates before any training, so its figures must
match the truth: the INT8 model a trained candidate converts to. For seeded random specs, this benchmark builds
and converts each one with trained-like parameters (:func:`nas.profile.untrained_int8`, which randomises biases
and batch-norm statistics) and compares, per spec:

* peak SRAM (planned activations + modelled TFLM runtime) vs the arena the TFLM host interpreter allocates;
* flash (modelled ``.tflite`` size) vs the size of the converted file;
* MACs vs an independent count read from the converted graph's tensor shapes (:func:`tflite_macs`), so the
  check does not share a line of code with the profiler;
* IMX500 on-chip bytes (weights + planned activations) vs the same memory model on the converted graph.

It reports the relative error distribution (median, 95th percentile, max) per quantity and how often the
verdict on paper (:func:`nas.profile.paper_verdict`: fits, exceeds, or borderline within the cost model's
margin, where the search measures the untrained candidate's INT8 model before training) is wrong, for the SRAM
and flash limits of ``nas/constraints/mcu_vww.yaml`` and the on-chip limit of ``nas/constraints/imx500.yaml``.
Goal: every error under 5%, no wrong verdict. A verdict check only means something near the limit, so half of
the specs are chosen with an estimated peak SRAM within 10% of the 250 KB limit; the other half spread over heads
and resolutions.

Specs come from the shipped search spaces (``mobilenetv3``, ``tinytracker``) and from
``tests.random_specs.random_spec``, which covers what the spaces do not (every block kind, kernel 7,
resolutions up to 224, gaze heads with SE and hard-swish). Writes ``fidelity.json`` (rows, summary, commit,
machine), ``fidelity.md`` and ``fidelity.png`` to ``bench/results/`` (``fidelity_quick.*`` with ``--quick``).

    python bench/fidelity.py [--n 60] [--seed 0] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import common  # bench/common.py: run as a script, this folder is first on sys.path
import numpy as np
from tqdm import tqdm

from nas import arena, profile, tflm
from nas.hardware import load_target
from nas.space import DataShape, Space, load_space, sample, to_spec
from nas.spec import ArchSpec
from nas.testing import random_spec  # the sampler that covers every option of a spec
from nas.tf import convert

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"
QUANTITIES = ("sram", "flash", "macs", "imx500")
LABELS = {"sram": "peak SRAM vs TFLM arena", "flash": "flash vs .tflite size",
          "macs": "MACs vs count from the .tflite", "imx500": "IMX500 on-chip vs converted graph"}
GOAL_MAX_ERROR = 0.05
MISS_REPORTED = 0.02  # errors above this are counted, and the worst listed, in the Markdown report
WORST_LISTED = 5
NEAR_BAND = 0.10  # "near the limit": estimated value within 10% of it
POOL = {"mobilenetv3": 1500, "tinytracker": 1500, "random": 3000}


@dataclass(frozen=True)
class Candidate:
    """A spec, where it was sampled from, and its analytic profile (cheap: computed for the whole pool)."""

    source: str
    spec: ArchSpec
    estimate: profile.Profile


# ------------------------------------------------------------------------------------------ sampling


def _space_specs(space: Space, rng: random.Random, count: int, shapes: list[DataShape]) -> Iterable[ArchSpec]:
    """Points of a shipped space drawn uniformly, each with a data shape drawn from ``shapes``."""
    for _ in range(count):
        params = sample(space, lambda _name, values: rng.choice(values))
        yield to_spec(space, params, rng.choice(shapes))


def candidate_pool(rng: random.Random, quick: bool) -> list[Candidate]:
    """Distinct specs from both search spaces and from ``random_spec``; small ones only in quick mode.

    The pool is far larger than the benchmark so :func:`select` can place half of its picks near the limit.
    """
    specs: list[tuple[str, ArchSpec]] = []
    if quick:
        specs += [("random", random_spec(rng, max_resolution=64, small=True)) for _ in range(200)]
    else:
        cls_shapes = [DataShape("classification", classes=2, channels=c) for c in (1, 3)]
        gaze_shapes = [DataShape("gaze", classes=0, channels=c, grid_channels=2) for c in (1, 3)]
        specs += [("mobilenetv3", s) for s in
                  _space_specs(load_space("mobilenetv3"), rng, POOL["mobilenetv3"], cls_shapes)]
        specs += [("tinytracker", s) for s in
                  _space_specs(load_space("tinytracker"), rng, POOL["tinytracker"], gaze_shapes)]
        specs += [("random", random_spec(rng, max_resolution=224)) for _ in range(POOL["random"])]
    seen: set[str] = set()
    pool = []
    for source, spec in specs:
        key = spec.to_string()
        if key not in seen:
            seen.add(key)
            pool.append(Candidate(source, spec, profile.estimate(spec)))
    return pool


def _round_robin(groups: dict[Any, list[Candidate]], count: int) -> list[Candidate]:
    """Take one candidate from each group in turn (groups in sorted order) until ``count`` are taken."""
    picked: list[Candidate] = []
    queues = [list(groups[k]) for k in sorted(groups)]
    while len(picked) < count and any(queues):
        for q in queues:
            if q and len(picked) < count:
                picked.append(q.pop())
    return picked


def select(pool: list[Candidate], n: int, sram_limit: int, rng: random.Random) -> list[Candidate]:
    """Half the specs near the SRAM limit (spread over source and head), half over source, head and resolution.

    Without the near half almost every verdict would be trivially right: most random specs are far from
    250 KB, on either side.
    """
    shuffled = list(pool)
    rng.shuffle(shuffled)
    near, far = {}, {}
    for c in shuffled:
        if abs(c.estimate.peak_sram_bytes / sram_limit - 1) <= NEAR_BAND:
            near.setdefault((c.source, c.spec.head.kind), []).append(c)
        else:
            far.setdefault((c.spec.resolution, c.source, c.spec.head.kind), []).append(c)
    picked = _round_robin(near, n // 2)
    return picked + _round_robin(far, n - len(picked))


# ------------------------------------------------------------------------------------------ measuring


def tflite_macs(graph: arena.GraphInfo) -> int:
    """MACs of the converted model, from its tensor shapes alone (independent of :mod:`nas.profile`).

    Each CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED output element costs one multiply-accumulate per
    filter tap it reads: ``kh * kw * in_channels_per_group`` for a convolution (filter ``[O, kh, kw, I]``),
    ``kh * kw`` for a depthwise one (filter ``[1, kh, kw, C]``) and the input width for a dense layer
    (filter ``[units, in]``). Element-wise ops, pooling and the squeeze-excite gate are not counted, by the
    same convention as MobileNet's MAC tables.
    """
    sg = graph.main
    total = 0
    for op in sg.ops:
        if op.kind not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        out = sg.tensors[op.outputs[0]].elements
        w = sg.tensors[op.inputs[1]].shape
        if op.kind == "CONV_2D":
            total += out * w[1] * w[2] * w[3]
        elif op.kind == "DEPTHWISE_CONV_2D":
            total += out * w[1] * w[2]
        else:
            total += out * w[1]
    return total


def flatbuffer_parts(tflite: bytes) -> dict[str, int]:
    """Where a .tflite file's bytes go: constant data, tensor names, quantization parameters, the rest.

    The flash estimate models names and flatbuffer tables as a flat cost per tensor; this split shows
    which part a flash miss comes from.
    """
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    m = fb.Model.GetRootAs(tflite, 0)
    data = sum(m.Buffers(b).DataLength() for b in range(m.BuffersLength()))
    names = quant = 0
    sg = m.Subgraphs(0)
    for t in range(sg.TensorsLength()):
        ten = sg.Tensors(t)
        names += len(ten.Name() or b"")
        q = ten.Quantization()
        if q is not None:
            quant += 4 * q.ScaleLength() + 8 * q.ZeroPointLength()  # float32 scales, int64 zero points
    return {"total": len(tflite), "constant_data": data, "tensor_names": names, "quantization": quant,
            "other": len(tflite) - data - names - quant, "tensors": sg.TensorsLength(),
            "ops": sg.OperatorsLength()}


def _op_mismatch(estimate: profile.Profile, graph: arena.GraphInfo) -> dict[str, list[int]]:
    """Op kinds whose count differs between the analytic graph and the converted one: [estimated, real].

    Empty when the profiler models the converter's graph op for op; otherwise it names the cause of a miss.
    """
    est = Counter(layer.kind for layer in estimate.layers)
    real = Counter(op.kind for op in graph.main.ops)
    return {k: [est[k], real[k]] for k in sorted(set(est) | set(real)) if est[k] != real[k]}


def measure_row(index: int, cand: Candidate, seed: int, limits: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """Convert one spec and put every estimate next to its measured value."""
    spec, est = cand.spec, cand.estimate
    t0 = time.perf_counter()
    tflite = convert.untrained_int8(spec, seed)
    t1 = time.perf_counter()
    meas = profile.measure(tflite)
    graph = arena.read_graph(tflite)
    real = tflm.measure_tflm(tflite)  # head / tail split: which half of the SRAM model a miss comes from
    t2 = time.perf_counter()
    values = {
        "sram": (est.peak_sram_bytes, meas.tflm_arena_bytes),
        "flash": (est.flash_bytes, meas.tflite_bytes),
        "macs": (est.macs, tflite_macs(graph)),
        "imx500": (est.onchip_bytes, meas.imx500_bytes),
    }
    row: dict[str, Any] = {
        "index": index, "source": cand.source, "spec": spec.to_string(), "head": spec.head.kind,
        "resolution": spec.resolution, "width": spec.width, "channels": spec.channels, "seed": seed,
    }
    for q, (e, m) in values.items():
        row[q] = {"estimated": e, "measured": m, "rel_error": (e - m) / m}
    row["sram_parts"] = {"head_estimated": est.activation_bytes, "head_measured": real.head_bytes,
                         "tail_estimated": est.runtime_overhead_bytes, "tail_measured": real.tail_bytes}
    row["verdicts"] = {
        name: {"quantity": q, "limit": limit, "estimated": profile.paper_verdict(key, values[q][0], limit),
               "fits_measured": values[q][1] <= limit}
        for name, (q, key, limit) in limits.items()
    }
    row["flash_parts"] = {"weight_bytes_estimated": est.weight_bytes, **flatbuffer_parts(tflite)}
    row["op_count_mismatch"] = _op_mismatch(est, graph)
    row["convert_s"] = round(t1 - t0, 2)
    row["measure_s"] = round(t2 - t1, 2)
    return row


# ------------------------------------------------------------------------------------------ summary


def _wrong(verdict: dict[str, Any]) -> bool:
    """A verdict on paper the measured model contradicts (borderline defers to the measurement: never wrong)."""
    return {"fits": not verdict["fits_measured"], "exceeds": verdict["fits_measured"]}.get(verdict["estimated"], False)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Error distribution per quantity (of |relative error|) and verdict disagreements per limit."""
    out: dict[str, Any] = {"errors": {}, "verdicts": {}}
    for q in QUANTITIES:
        errs = np.abs([r[q]["rel_error"] for r in rows])
        worst = rows[int(np.argmax(errs))]
        out["errors"][q] = {
            "what": LABELS[q], "n": len(rows), "median": float(np.median(errs)),
            "p95": float(np.percentile(errs, 95)), "max": float(errs.max()),
            "mean_signed": float(np.mean([r[q]["rel_error"] for r in rows])),
            "over_2pct": int((errs > MISS_REPORTED).sum()), "worst_spec": worst["spec"],
            "goal_met": bool(errs.max() < GOAL_MAX_ERROR),
        }
    for name in rows[0]["verdicts"]:
        v = [r["verdicts"][name] for r in rows]
        limit, quantity = v[0]["limit"], v[0]["quantity"]
        out["verdicts"][name] = {
            "limit_bytes": limit, "quantity": quantity,
            "wrong": sum(_wrong(x) for x in v),
            "false_fit": sum(x["estimated"] == "fits" and not x["fits_measured"] for x in v),
            "false_reject": sum(x["estimated"] == "exceeds" and x["fits_measured"] for x in v),
            "borderline": sum(x["estimated"] == "borderline" for x in v),
            "borderline_failed": sum(x["estimated"] == "borderline" and not x["fits_measured"] for x in v),
            "fits_measured": sum(x["fits_measured"] for x in v),
            "near_limit": sum(abs(r[quantity]["measured"] / limit - 1) <= NEAR_BAND for r in rows),
        }
    out["goal_met"] = (all(e["goal_met"] for e in out["errors"].values())
                       and all(v["wrong"] == 0 for v in out["verdicts"].values()))
    return out


def coverage(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """How the measured specs spread over source, head, resolution and width (what the summary speaks for)."""
    return {key: {str(k): v for k, v in sorted(Counter(r[key] for r in rows).items())}
            for key in ("source", "head", "resolution", "width", "channels")}


# ------------------------------------------------------------------------------------------ output


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def markdown(result: dict[str, Any]) -> str:
    """The short report: error table, verdict table, every wrong verdict, and the worst misses over 2%."""
    s = result["summary"]
    rows = result["rows"]
    lines = [f"Cost-model fidelity: {result['n']} specs, commit {result['commit']}, {result['machine']}, "
             f"{result['runtime_s'] / 60:.1f} min", "",
             "| quantity | median | p95 | max | goal met (max < 5%) |", "|---|---|---|---|---|"]
    for q in QUANTITIES:
        e = s["errors"][q]
        lines.append(f"| {e['what']} | {_pct(e['median'])} | {_pct(e['p95'])} | {_pct(e['max'])} | "
                     f"{'yes' if e['goal_met'] else 'NO'} |")
    lines += ["", "| verdict | limit | specs within 10% of it "
                  "| borderline on paper (measured before training: over the limit) "
                  "| wrong (false fit / false reject) |",
              "|---|---|---|---|---|"]
    for name, v in s["verdicts"].items():
        lines.append(f"| {name} | {v['limit_bytes']:,} B | {v['near_limit']} | {v['borderline']} "
                     f"({v['borderline_failed']}) | {v['wrong']} ({v['false_fit']} / {v['false_reject']}) |")
    margins = (", ".join(f"{k} {100 * m:g}%" for k, m in profile.ESTIMATE_MARGIN.items())
               + f" of the limit, at least {profile.ESTIMATE_MARGIN_MIN_BYTES:,} B")
    lines += ["", f"Verdict on paper: exceeds (rejected, never trained) when the estimate is over the limit by more "
                  f"than the cost model's margin ({margins}; nas.profile.ESTIMATE_MARGIN), borderline "
                  f"within it (the search converts the untrained candidate and measures it, seconds, before any "
                  f"training: memory does not depend on the weights), fits below."]
    wrong = [(name, r) for r in rows for name, v in r["verdicts"].items() if _wrong(v)]
    if wrong:
        lines += ["", "Wrong verdicts:", ""]
        for name, r in wrong:
            q = r["verdicts"][name]["quantity"]
            lines.append(f"- {name}: `{r['spec']}`: estimated {r[q]['estimated']:,} B, measured "
                         f"{r[q]['measured']:,} B, limit {r['verdicts'][name]['limit']:,} B")
    for q in QUANTITIES:
        misses = sorted((r for r in rows if abs(r[q]["rel_error"]) > MISS_REPORTED),
                        key=lambda r: -abs(r[q]["rel_error"]))
        if not misses:
            continue
        lines += ["", f"{LABELS[q]}: {len(misses)} of {len(rows)} estimates off by more than 2% "
                      f"({sum(r[q]['rel_error'] < 0 for r in misses)} under); the worst "
                      f"(all rows in the JSON):", "",
                  "| spec | estimated | measured | error |", "|---|---|---|---|"]
        for r in misses[:WORST_LISTED]:
            lines.append(f"| `{r['spec']}` | {r[q]['estimated']:,} | {r[q]['measured']:,} | "
                         f"{100 * r[q]['rel_error']:+.2f}% |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], sram_limit: int, path: Path) -> None:
    """Estimated vs measured peak SRAM: every spec on log axes, and a linear zoom on the 250 KB limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    kb = 1024
    for ax, zoom in zip(axes, (False, True)):
        for head, marker in (("classifier", "o"), ("gaze", "^")):
            pts = [(r["sram"]["measured"] / kb, r["sram"]["estimated"] / kb) for r in rows if r["head"] == head]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, s=22, alpha=0.75, label=head)
        values = [r["sram"][k] / kb for r in rows for k in ("measured", "estimated")]
        lo, hi = ((0.8 * sram_limit / kb, 1.2 * sram_limit / kb) if zoom
                  else (0.8 * min(values), 1.25 * max(values)))
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, label="y = x")
        ax.axvline(sram_limit / kb, color="r", ls="--", lw=0.8, label=f"{sram_limit / kb:g} KB limit")
        ax.axhline(sram_limit / kb, color="r", ls="--", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        if not zoom:
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_xlabel("measured TFLM arena (KB)")
        ax.set_ylabel("estimated peak SRAM (KB)")
        ax.set_title("near the limit (+-20%)" if zoom else f"all {len(rows)} specs")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _machine() -> str:
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs, TensorFlow {tf.__version__}"


def verdict_limits() -> dict[str, tuple[str, str, int]]:
    """Each verdict checked: its name -> (the quantity it reads, the target's limit key, the limit in bytes)."""
    vww, imx = load_target("mcu_vww"), load_target("imx500")
    return {"mcu_vww.sram": ("sram", "sram_bytes", vww.sram_bytes),
            "mcu_vww.flash": ("flash", "flash_bytes", vww.flash_bytes),
            "imx500.onchip": ("imx500", "onchip_bytes", imx.onchip_bytes)}


def run(n: int, seed: int, quick: bool) -> dict[str, Any]:
    """Sample, select, convert and measure ``n`` specs; the whole result as one JSON-ready dict."""
    t0 = time.perf_counter()
    limits = verdict_limits()
    sram_limit = limits["mcu_vww.sram"][2]
    rng = random.Random(seed)
    chosen = select(candidate_pool(rng, quick), n, sram_limit, rng)
    rows = [measure_row(i, c, seed + i, limits)
            for i, c in enumerate(tqdm(chosen, desc="convert + measure", unit="spec"))]
    return {
        "benchmark": "fidelity", "commit": common.commit(), "machine": _machine(), "quick": quick, "seed": seed,
        "n": len(rows), "runtime_s": round(time.perf_counter() - t0, 1),
        "goal": {"max_rel_error": GOAL_MAX_ERROR, "wrong_verdicts": 0},
        "sram_limit": sram_limit,
        "coverage": coverage(rows), "summary": summarize(rows), "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=60, help="specs to convert and measure (default 60)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="4 small specs at <= 64x64 (used by the tests)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    result = run(4 if args.quick else args.n, args.seed, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "fidelity_quick" if args.quick else "fidelity"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(result))
    plot(result["rows"], result["sram_limit"], args.out / f"{stem}.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
