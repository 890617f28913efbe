"""``nas profile MODEL.tflite``: what any converted INT8 model costs, read from its flatbuffer.

A user's own model (or a public reference) is profiled with the same parts a candidate is: MACs counted on the
graph as :func:`nas.profile.graph_macs` counts them, split by operator class (a standard convolution, the first
layer's few-channel convolution, pointwise 1x1, depthwise, fully connected), flash = the file, the TFLM arena
both as :mod:`nas.arena` predicts it and as the real TFLM host interpreter allocates it (:mod:`nas.tflm`), the
IMX500 memory model, per-operator live memory, and a target's latency, energy and limits. A model the profiler
cannot count (an operator outside :data:`KNOWN_OPS`, float weights) is refused in one line naming what it has,
never profiled with a silent zero.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any

from nas import arena, latency, profile
from nas.errors import UserError

#: operators with multiply-accumulates, counted per output element (nas.profile.graph_macs)
MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
#: operators without multiply-accumulates that the profiler knows (their cost is memory, not MACs)
ELEMENTWISE_OPS = ("ADD", "MUL", "SUB", "AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN", "RESHAPE", "SOFTMAX",
                   "CONCATENATION", "PAD", "PADV2", "TANH", "LOGISTIC", "HARD_SWISH", "RELU", "RELU6", "LEAKY_RELU",
                   "QUANTIZE", "DEQUANTIZE", "SQUEEZE", "STRIDED_SLICE", "TRANSPOSE", "RESIZE_NEAREST_NEIGHBOR",
                   "RESIZE_BILINEAR")
KNOWN_OPS = MAC_OPS + ELEMENTWISE_OPS
FIRST_LAYER_CHANNELS = latency.FIRST_LAYER_CHANNELS  # a convolution over this few input channels: "conv_first"


def op_class(kind: str, weight_shape: tuple[int, ...]) -> str:
    """The operator class of a MAC-bearing op: ``conv_first``, ``conv``, ``pointwise``, ``depthwise``, ``fc``."""
    if kind == "DEPTHWISE_CONV_2D":
        return "depthwise"
    if kind == "FULLY_CONNECTED":
        return "fc"
    _, kh, kw, cin = weight_shape
    return latency.conv_class(kh, kw, cin)


def tflite_report(tflite: bytes, source: str, target: Any = None, *, measure: bool = True) -> dict[str, Any]:
    """The profile of a ``.tflite`` model as one JSON-ready record (``measure``: run the real TFLM interpreter)."""
    graph = arena.read_graph(tflite, source)
    sg = graph.main
    kinds = Counter(op.kind for op in sg.ops)
    unknown = sorted(k for k in kinds if k not in KNOWN_OPS)
    if unknown:
        raise UserError(source, "operators", f"a model of operators tinynas can count ({', '.join(MAC_OPS)} and "
                                             f"element-wise ones); it has {', '.join(unknown)}")
    layers: list[dict[str, Any]] = []
    by_class: Counter[str] = Counter()
    live = _live_bytes(graph)
    for i, op in enumerate(sg.ops):
        out = sg.tensors[op.outputs[0]]
        macs, cls = 0, "elementwise"
        if op.kind in MAC_OPS and len(op.inputs) >= 2:
            weight = sg.tensors[op.inputs[1]]
            if weight.dtype != "INT8":
                raise UserError(source, "weights", f"an INT8 model; operator {i} ({op.kind}) has {weight.dtype} "
                                                   f"weights")
            cls = op_class(op.kind, weight.shape)
            per_output = (weight.shape[1] * weight.shape[2] if op.kind == "DEPTHWISE_CONV_2D"
                          else math.prod(weight.shape[1:]))
            macs = out.elements * per_output
        by_class[cls] += macs
        layers.append({"index": i, "op": op.kind, "class": cls, "shape": list(out.shape), "macs": macs,
                       "live_bytes": live[i]})
    macs = int(sum(by_class.values()))
    assert macs == profile.graph_macs(graph)  # one way of counting, whichever entry point
    constants = sum(t.nbytes for t in sg.tensors if t.is_constant)
    estimated = arena.estimate_arena(tflite)
    inp, outp = sg.tensors[sg.inputs[0]], sg.tensors[sg.outputs[0]]
    rep: dict[str, Any] = {
        "model": source, "tflite_bytes": len(tflite), "ops": dict(kinds), "macs": macs,
        "macs_by_class": {k: v for k, v in by_class.items() if k != "elementwise"},
        "weight_bytes": constants, "input": {"shape": list(inp.shape), "dtype": inp.dtype},
        "output": {"shape": list(outp.shape), "dtype": outp.dtype},
        "estimated_arena_bytes": estimated,
        "imx500_bytes": constants + arena.plan_arena(arena.buffers_from_graph(graph)),
        "tflm_arena_bytes": None, "layers": layers, "target": None, "limits": [], "fits": None,
    }
    if measure:
        from nas import tflm

        rep["tflm_arena_bytes"] = tflm.measure_tflm(tflite).arena_bytes
    cost_layers = latency.layers_from_tflite_graph(graph)
    assert [c.macs for c in cost_layers] == [row["macs"] for row in layers]
    if target is not None:
        for row, ms in zip(layers, target.layer_ms(cost_layers)):
            row["latency_ms"] = ms
        basis = target.memory_basis({"tflm_arena_bytes": rep["tflm_arena_bytes"] or estimated,
                                     "tflite_bytes": len(tflite), "imx500_model_bytes": rep["imx500_bytes"]})
        values = {"macs": macs, "latency_ms": target.latency_ms(macs, cost_layers),
                  "energy_mj": target.energy_mj(macs, cost_layers),
                  **{k: v for k, (v, _) in basis.items() if v is not None}}
        checks = target.check(values)
        rep.update(target={"name": target.name, "runtime": target.runtime, "path": target.path},
                   latency_ms=values["latency_ms"], inference_ms=target.inference_ms(macs, cost_layers),
                   latency_model=target.latency_model,
                   energy_mj=values["energy_mj"],
                   limits=[{"name": c.name, "value": c.value, "limit": c.limit, "unit": c.unit, "ok": c.ok,
                            "basis": basis.get(c.name, (None, "analytic"))[1]} for c in checks],
                   fits=all(c.ok for c in checks))
    return rep


def _live_bytes(graph: arena.GraphInfo) -> list[int]:
    """Bytes of non-persistent buffers alive while each operator runs (operator i runs in scope i + 1)."""
    buffers = arena.buffers_from_graph(graph)
    return [sum(b.aligned_size for b in buffers if b.first_use <= i + 1 <= b.last_use)
            for i in range(len(graph.main.ops))]


def format_tflite_report(rep: dict[str, Any]) -> str:
    """The readable table of :func:`tflite_report`."""
    classes = ", ".join(f"{k} {v / 1e6:,.2f} M" for k, v in sorted(rep["macs_by_class"].items(), key=lambda kv: -kv[1]))
    real = rep["tflm_arena_bytes"]
    lines = [f"model       {rep['model']}",
             f"input       {rep['input']['dtype']} {rep['input']['shape']}; output {rep['output']['dtype']} "
             f"{rep['output']['shape']}",
             f"MACs        {rep['macs']:,} ({classes})",
             f"flash       {rep['tflite_bytes']:,} B (.tflite; weights and biases {rep['weight_bytes']:,} B)",
             f"TFLM arena  estimated {rep['estimated_arena_bytes']:,} B"
             + (f", measured {real:,} B (host TFLM interpreter)" if real is not None else ""),
             f"IMX500      {rep['imx500_bytes']:,} B on chip (weights + planned activations)", "",
             f"{'#':>3}  {'op':<18}{'class':<12}{'output':<18}{'MACs':>12}{'live':>12}"
             + (f"{'latency':>13}" if rep["target"] else "")]
    peak = max(row["live_bytes"] for row in rep["layers"]) if rep["layers"] else 0
    for row in rep["layers"]:
        mark = "  <- peak" if row["live_bytes"] == peak else ""
        ms = f"{row['latency_ms']:>10,.3f} ms" if "latency_ms" in row else ""
        lines.append(f"{row['index']:>3}  {row['op']:<18}{row['class']:<12}{'x'.join(map(str, row['shape'])):<18}"
                     f"{row['macs']:>12,}{row['live_bytes'] / 1024:>9,.1f} KB{ms}{mark}")
    if rep["target"]:
        t = rep["target"]
        lines += ["", f"target      {t['name']} ({t['runtime']}, {t['path']})",
                  f"latency     {rep['latency_ms']:.3f} ms end to end ({rep['inference_ms']:.3f} ms inference; "
                  f"{rep['latency_model']} model)",
                  f"energy      {rep['energy_mj']:.4f} mJ per inference", ""]
        for c in rep["limits"]:
            lines.append(f"{c['name']:<12}{_num(c['value']):>16} {c['unit']:<5} limit {_num(c['limit']):>14}  "
                         f"{'pass' if c['ok'] else 'FAIL'}  ({c['basis']})")
        lines.append(f"\nfits        {'yes' if rep['fits'] else 'NO'}")
    return "\n".join(lines)


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.3f}"
