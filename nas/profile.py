"""Profile first: MACs, parameters, flash and peak SRAM from the spec alone, in milliseconds.

The analytic profile walks the same operator graph the TFLite converter emits for a model built by
:mod:`nas.tf.builder` (BN folded, ReLU / ReLU6 fused into the producing op, hard-swish as its own
``HARD_SWISH`` op, the squeeze-excite gate as ``ADD(relu6) + MUL``, ...), gives every activation tensor
its INT8 size and lifetime, and places them with the same greedy planner TensorFlow Lite Micro uses
(:mod:`nas.arena`). Peak SRAM = that planned activation arena + a calibrated model of TFLM's
persistent runtime memory. The tests hold the estimate against the real TFLM arena of converted models.

:func:`measure` gives the truth for a converted model: ``.tflite`` size and the arena TFLM allocates.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from nas import arena, tflm
from nas.latency import conv_class
from nas.spec import ArchSpec, Block, make_divisible

# Flatbuffer size model (names are stripped at conversion, nas.tf.convert.strip_names): constant data (int8
# weights, int32 biases) plus, per per-channel-quantized output channel, the scale and zero-point entries of
# the weight and its bias (~24 B), per tensor its table and quantization record (~89 B), per op its entry
# (~52 B), and a header. Least-squares fit on 35 converted models (30 random specs, mobilenetv1-vww,
# tinytracker, MobileNetV3-Small 0.35 and two 1x1-map specs; trained-like weights, TF 2.21): residuals
# -0.21% .. +0.19% of the file, leave-one-out max 0.23% (bench/fidelity.py keeps measuring it).
_FLASH_PER_CHANNEL = 24
_FLASH_PER_TENSOR = 89
_FLASH_PER_OP = 52
_FLASH_FIXED = 697

# How far an analytic memory figure may be from the measured one, as a fraction of the limit it is checked
# against. bench/results/fidelity.md (60 random specs, both heads, up to 224 px) measured max errors of
# 0.12% (peak SRAM vs TFLM arena, always under), 0.43% (flash vs .tflite, both ways) and 0.07% (IMX500
# memory model vs converted graph); the margin is about twice the worst. Inside it the estimate cannot
# decide a limit, so the untrained INT8 model is measured before training (see paper_verdict). MACs,
# latency and energy are exact functions of the spec: no margin.
ESTIMATE_MARGIN = {"sram_bytes": 0.01, "flash_bytes": 0.01, "onchip_bytes": 0.01}
# ... and never less than this many bytes: the worst absolute misses over the same specs were 53 B (SRAM),
# 206 B (flash) and 19 B (IMX500); for a tiny model a few dozen bytes are more than 1%.
ESTIMATE_MARGIN_MIN_BYTES = 1024


@dataclass(frozen=True)
class Op:
    """One operator of the INT8 graph, as the converter will emit it."""

    index: int
    kind: str                       # TFLite builtin name, e.g. CONV_2D
    name: str                       # our layer name (block position)
    inputs: tuple[int, ...]         # activation tensor ids read
    output: int                     # activation tensor id written
    shape: tuple[int, ...]          # output shape (no batch)
    macs: int = 0
    weights: int = 0                # int8 weight elements
    biases: int = 0                 # int32 bias elements
    channels_quant: int = 0         # per-channel quantization entries (conv / depthwise / dense weights)
    op_class: str = "elementwise"   # the latency model's class (nas.latency.OP_CLASSES)


@dataclass(frozen=True)
class LayerMemory:
    """Activation memory while one op runs: the bytes of every tensor alive at that op."""

    index: int
    kind: str
    name: str
    shape: tuple[int, ...]
    macs: int
    live_bytes: int
    op_class: str = "elementwise"   # nas.latency: what the operator costs per MAC (or per element)
    elements: int = 0               # elements read (first input) or written, the larger: element-wise work


@dataclass(frozen=True)
class Profile:
    """Everything known about a spec before training. All sizes in bytes."""

    spec: str
    macs: int
    params: int
    weight_bytes: int               # int8 weights + int32 biases
    flash_bytes: int                # estimated .tflite size
    activation_bytes: int           # TFLM planner's arena head (non-persistent tensors)
    runtime_overhead_bytes: int     # TFLM's persistent tail (calibrated model)
    peak_sram_bytes: int            # activation_bytes + runtime_overhead_bytes
    onchip_bytes: int               # IMX500 model: weights and activations both held on chip
    peak_layer: int                 # index into ``layers`` with the most live activation memory
    layers: tuple[LayerMemory, ...] = field(repr=False)

    def to_dict(self, with_layers: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not with_layers:
            d.pop("layers")
        return d

    def limit_values(self, runtime: str) -> dict[str, int]:
        """The values a constraint file's limits are checked against."""
        return {"macs": self.macs, "sram_bytes": self.peak_sram_bytes, "flash_bytes": self.flash_bytes,
                "onchip_bytes": self.onchip_bytes}


class _Graph:
    """Accumulates ops and activation tensors while walking the spec."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.sizes: dict[int, int] = {}
        self.shapes: dict[int, tuple[int, ...]] = {}

    def tensor(self, shape: tuple[int, ...]) -> int:
        t = len(self.sizes)
        self.sizes[t] = math.prod(shape)
        self.shapes[t] = shape
        return t

    def op(self, kind: str, name: str, inputs: tuple[int, ...], shape: tuple[int, ...], **kw: Any) -> int:
        out = self.tensor(shape)
        self.ops.append(Op(len(self.ops), kind, name, inputs, out, shape, **kw))
        return out

    def act(self, t: int, act: str, name: str) -> int:
        """ReLU / ReLU6 fuse into the producer; hard-swish is an op of its own."""
        if act == "hswish":
            return self.op("HARD_SWISH", f"{name}_hswish", (t,), self.shapes[t])
        return t

    def conv(self, t: int, cout: int, k: int, stride: int, act: str | None, name: str, bias: bool = True) -> int:
        h, w, cin = self.shapes[t]
        ho, wo = math.ceil(h / stride), math.ceil(w / stride)
        out = self.op("CONV_2D", name, (t,), (ho, wo, cout), macs=ho * wo * k * k * cin * cout,
                      weights=k * k * cin * cout, biases=cout, channels_quant=cout, op_class=conv_class(k, k, cin))
        return self.act(out, act, name) if act else out

    def dw(self, t: int, k: int, stride: int, act: str, name: str) -> int:
        h, w, c = self.shapes[t]
        ho, wo = math.ceil(h / stride), math.ceil(w / stride)
        out = self.op("DEPTHWISE_CONV_2D", name, (t,), (ho, wo, c), macs=ho * wo * k * k * c,
                      weights=k * k * c, biases=c, channels_quant=c, op_class="depthwise")
        return self.act(out, act, name)

    def fc(self, t: int, units: int, act: str | None, name: str) -> int:
        n = math.prod(self.shapes[t])
        # QAT dense weights are quantized per tensor, except where the converter fuses a ReLU / ReLU6 into the
        # dense op: then it re-quantizes them per output channel (seen on every converted model, TF 2.21)
        per_channel = units if act in ("relu", "relu6") else 0
        out = self.op("FULLY_CONNECTED", name, (t,), (units,), macs=n * units, weights=n * units, biases=units,
                      channels_quant=per_channel, op_class="fc")
        return self.act(out, act, name) if act else out

    def squeeze_excite(self, t: int, ratio: float, name: str) -> int:
        h, w, c = self.shapes[t]
        # pooling a 1x1 map is the identity: the converter drops that MEAN
        s = self.op("MEAN", f"{name}_se_pool", (t,), (1, 1, c)) if h * w > 1 else t
        s = self.conv(s, make_divisible(c * ratio), 1, 1, "relu", f"{name}_se_reduce")
        s = self.conv(s, c, 1, 1, None, f"{name}_se_expand")
        s = self.op("ADD", f"{name}_se_gate_add", (s,), (1, 1, c))      # + 3, ReLU6 fused
        s = self.op("MUL", f"{name}_se_gate_mul", (s,), (1, 1, c))      # * 1/6
        return self.op("MUL", f"{name}_se_mul", (t, s), self.shapes[t])

    def basic_residual(self, t: int, b: Block, cout: int, stride: int, name: str) -> int:
        """ResNet's basic block in :mod:`nas.topology`'s order (conv, conv, projection, ADD): the activation
        after the add fuses into the ADD (ReLU / ReLU6) or follows it (hard-swish)."""
        y = self.conv(t, cout, b.kernel, stride, b.act, f"{name}_a")
        y = self.conv(y, cout, b.kernel, 1, None, f"{name}_b")
        shortcut = t
        if stride != 1 or self.shapes[t][-1] != cout:
            shortcut = self.conv(t, cout, 1, stride, None, f"{name}_proj")
        x = self.op("ADD", f"{name}_add", (shortcut, y), self.shapes[y])
        return self.act(x, b.act, f"{name}_add")

    def block(self, t: int, spec: ArchSpec, b: Block, stride: int, name: str) -> int:
        cin, cout = self.shapes[t][-1], spec.channels_of(b)
        if b.kind == "cn":
            return self.conv(t, cout, b.kernel, stride, b.act, name)
        if b.kind == "rb":
            return self.basic_residual(t, b, cout, stride, name)
        if b.kind == "ds":
            x = self.dw(t, b.kernel, stride, b.act, name)
            if b.se:
                x = self.squeeze_excite(x, b.se, name)
            return self.conv(x, cout, 1, 1, b.act, f"{name}_pw")
        x = t
        expanded = make_divisible(cin * b.expansion)
        if expanded != cin:
            x = self.conv(x, expanded, 1, 1, b.act, f"{name}_expand")
        x = self.dw(x, b.kernel, stride, b.act, name)
        if b.se:
            x = self.squeeze_excite(x, b.se, name)
        x = self.conv(x, cout, 1, 1, None, f"{name}_project")
        if stride == 1 and cin == cout:
            x = self.op("ADD", f"{name}_add", (t, x), self.shapes[x])
        return x


def graph(spec: ArchSpec) -> tuple[list[Op], dict[int, int], int, int]:
    """The INT8 operator graph of ``spec``: ops, tensor sizes (bytes), input and output tensor ids."""
    g = _Graph()
    inp = g.tensor((spec.resolution, spec.resolution, spec.input_channels))
    x = inp
    head = spec.head
    if head.kind == "gaze" and head.grid_channels:
        x = g.conv(x, spec.channels, 1, 1, None, "grid_fuse")
    for i, b in enumerate(spec.blocks):
        for r in range(b.repeats):
            x = g.block(x, spec, b, b.stride if r == 0 else 1, f"b{i}_{r}")
    if head.kind == "classifier":
        x = g.op("MEAN", "head_pool", (x,), (g.shapes[x][-1],))
        if head.hidden:
            x = g.fc(x, head.hidden, head.act, "head_hidden")
        x = g.fc(x, head.classes, None, "head_logits")
        x = g.op("SOFTMAX", "head_softmax", (x,), g.shapes[x])
    else:
        x = g.conv(x, head.conv_channels, 1, 1, head.act, "head_conv")
        if math.prod(g.shapes[x][:2]) > 1:  # flattening a 1x1 map is dropped by the converter
            x = g.op("RESHAPE", "head_flatten", (x,), (math.prod(g.shapes[x]),))
        if head.hidden:
            x = g.fc(x, head.hidden, head.act, "head_hidden")
        x = g.fc(x, 2, None, "head_gaze")
        x = g.op("TANH", "head_tanh", (x,), (2,))
        x = g.op("MUL", "head_cm", (x,), (2,))
    return g.ops, g.sizes, inp, x


def buffers(ops: list[Op], sizes: dict[int, int], inp: int, out: int) -> list[arena.Buffer]:
    """Activation tensors with TFLM lifetimes: produced at their op, alive until their last reader;
    the model input from the start and the output to the end."""
    first = {inp: 0}
    last = {inp: 0}
    for op in ops:
        first.setdefault(op.output, op.index)
        last[op.output] = max(last.get(op.output, op.index), op.index)
        for t in op.inputs:
            last[t] = max(last.get(t, 0), op.index)
    last[out] = len(ops) - 1
    bufs = [arena.Buffer(size=sizes[t], first_use=first[t], last_use=last[t], tensor_index=t) for t in sizes]
    # int8 MEAN asks TFLM for scratch while it runs: int32 sums per output element plus two small index
    # arrays (nas.arena.scratch_requests); scratch buffers are numbered after all tensors.
    scratch_index = 1 << 20
    for op in ops:
        if op.kind == "MEAN":
            for size in (4 * math.prod(op.shape), 4 * 4, 4 * 2):  # sums; input rank 4; two axes (H, W)
                bufs.append(arena.Buffer(size=size, first_use=op.index, last_use=op.index, tensor_index=scratch_index))
                scratch_index += 1
    return bufs


def estimate(spec: ArchSpec) -> Profile:
    """The analytic profile of ``spec`` (no TensorFlow involved; well under a second)."""
    ops, sizes, inp, out = graph(spec)
    bufs = buffers(ops, sizes, inp, out)
    head = arena.plan_arena(bufs)
    tail = arena.estimate_tail(tail_features(ops, sizes))
    live = [0] * len(ops)
    for b in bufs:
        for i in range(max(b.first_use, 0), b.last_use + 1):
            live[i] += b.size
    layers = tuple(LayerMemory(op.index, op.kind, op.name, op.shape, op.macs, live[op.index], op.op_class,
                               max([sizes[op.output], *(sizes[t] for t in op.inputs[:1])])) for op in ops)
    macs = sum(op.macs for op in ops)
    weights = sum(op.weights for op in ops)
    biases = sum(op.biases for op in ops)
    weight_bytes = weights + 4 * biases
    flash = (weight_bytes + _FLASH_PER_CHANNEL * sum(op.channels_quant for op in ops)
             + _FLASH_PER_TENSOR * (len(sizes) + constant_tensors(ops)) + _FLASH_PER_OP * len(ops) + _FLASH_FIXED)
    peak_layer = max(range(len(ops)), key=live.__getitem__)
    return Profile(
        spec=spec.to_string(), macs=macs, params=weights + biases, weight_bytes=weight_bytes,
        flash_bytes=flash, activation_bytes=head, runtime_overhead_bytes=tail, peak_sram_bytes=head + tail,
        onchip_bytes=weight_bytes + head, peak_layer=peak_layer, layers=layers,
    )


def constant_tensors(ops: list[Op]) -> int:
    """Constant tensors of the converted graph: weights and biases, plus the small constants the converter
    adds (MEAN axes and RESHAPE shapes, shared between ops; the squeeze-excite gate's +3 and 1/6 scalars and
    the gaze scale, shared between gates when their quantization is equal, as it nearly always is)."""
    weights = sum(1 + (1 if op.biases else 0) for op in ops if op.weights)
    kinds = {op.kind for op in ops}
    shared = sum(1 for k in ("MEAN", "RESHAPE") if k in kinds)
    scalars = 2 * any(op.name.endswith("_se_gate_add") for op in ops) + any(op.name == "head_cm" for op in ops)
    return weights + shared + scalars


def tail_features(ops: list[Op], sizes: dict[int, int]) -> "arena.TailFeatures":
    """Graph features TFLM's persistent memory depends on (see :func:`nas.arena.estimate_tail`)."""
    kinds: dict[str, int] = {}
    for op in ops:
        kinds[op.kind] = kinds.get(op.kind, 0) + 1
    return arena.TailFeatures(
        n_tensors=len(sizes) + constant_tensors(ops), n_ops=len(ops),
        channels=tuple(op.channels_quant for op in ops if op.channels_quant),
        op_counts=kinds,
    )


@dataclass(frozen=True)
class Measured:
    """Memory of a real converted model: the truth the estimate is held against."""

    tflite_bytes: int
    tflm_arena_bytes: int
    imx500_bytes: int  # IMX500 memory model on the real graph: constant data + planned activations

    def memory_bytes(self, runtime: str) -> int:
        """The memory that counts on this runtime: the TFLM arena, or the IMX500's on-chip total."""
        return self.imx500_bytes if runtime == "imx500" else self.tflm_arena_bytes

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def measure(tflite: bytes) -> Measured:
    """``.tflite`` size, the arena TensorFlow Lite Micro actually allocates for it, and the IMX500 memory
    model (weights and activations both held on chip) evaluated on the converted graph."""
    graph = arena.read_graph(tflite)
    constants = sum(t.nbytes for t in graph.main.tensors if t.is_constant)
    return Measured(tflite_bytes=len(tflite), tflm_arena_bytes=tflm.measure_tflm(tflite).arena_bytes,
                    imx500_bytes=constants + arena.plan_arena(arena.buffers_from_graph(graph)))


def graph_macs(graph: "arena.GraphInfo") -> int:
    """MACs of a converted model, counted on its graph the way :func:`estimate` counts them on a spec: so a
    public reference ``.tflite`` (``shared/models``) and the preset meant to equal it can be compared.

    CONV_2D: output elements x kernel area x input channels (weights are OHWI); DEPTHWISE_CONV_2D: output
    elements x kernel area; FULLY_CONNECTED: output elements x input features. Other ops count no MACs.
    """
    sg = graph.main
    macs = 0
    for op in sg.ops:
        if op.kind not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or len(op.inputs) < 2:
            continue
        out = sg.tensors[op.outputs[0]].elements
        weight = sg.tensors[op.inputs[1]].shape
        per_output = weight[1] * weight[2] if op.kind == "DEPTHWISE_CONV_2D" else math.prod(weight[1:])
        macs += out * per_output
    return macs


def paper_verdict(key: str, value: float, limit: float) -> str:
    """What an analytic figure can say about one limit: ``fits``, ``exceeds`` or ``borderline``.

    ``borderline`` means within :data:`ESTIMATE_MARGIN` of the limit, where the cost model's own error could
    flip the answer. The search measures a borderline candidate's untrained INT8 model (seconds) before any
    training, so it neither rejects a candidate that fits nor trains one that cannot.
    """
    if key not in ESTIMATE_MARGIN:
        return "exceeds" if value > limit else "fits"
    margin = max(ESTIMATE_MARGIN[key] * float(limit), ESTIMATE_MARGIN_MIN_BYTES)
    if value > limit + margin:
        return "exceeds"
    if value > limit - margin:
        return "borderline"
    return "fits"


def checks_verdict(checks: list[Any]) -> str:
    """The verdict of a candidate on all its limit checks: the worst of :func:`paper_verdict` over them."""
    verdicts = {paper_verdict(c.name, c.value, c.limit) for c in checks}
    return next((v for v in ("exceeds", "borderline") if v in verdicts), "fits")


def report(prof: Profile, target=None) -> dict[str, Any]:
    """The profile as one JSON-ready record, with the target's limits, latency and energy when given."""
    peak = prof.layers[prof.peak_layer]
    out: dict[str, Any] = {
        "spec": prof.spec, "macs": prof.macs, "params": prof.params, "weight_bytes": prof.weight_bytes,
        "flash_bytes": prof.flash_bytes, "activation_bytes": prof.activation_bytes,
        "runtime_overhead_bytes": prof.runtime_overhead_bytes, "peak_sram_bytes": prof.peak_sram_bytes,
        "onchip_bytes": prof.onchip_bytes,
        "peak_layer": {"index": peak.index, "op": peak.kind, "name": peak.name, "shape": list(peak.shape),
                       "live_bytes": peak.live_bytes},
        "target": None, "latency_ms": None, "inference_ms": None, "energy_mj": None, "latency_model": None,
        "limits": [], "fits": None,
        "verdict": None,
    }
    if target is not None:
        values = {**prof.limit_values(target.runtime), "latency_ms": target.latency_ms(prof.macs, prof.layers),
                  "energy_mj": target.energy_mj(prof.macs, prof.layers)}
        checks = target.check(values)
        out.update(
            target={"name": target.name, "runtime": target.runtime, "path": target.path},
            latency_ms=values["latency_ms"], inference_ms=target.inference_ms(prof.macs, prof.layers),
            latency_model=target.latency_model,
            energy_mj=values["energy_mj"],
            limits=[{"name": c.name, "value": c.value, "limit": c.limit, "unit": c.unit,
                     "headroom": c.headroom, "ok": c.ok,
                     "verdict": paper_verdict(c.name, c.value, c.limit)} for c in checks],
            fits=all(c.ok for c in checks), verdict=checks_verdict(checks),
        )
    return out


def _human(value: float, unit: str) -> str:
    if unit in ("B", "bytes"):
        return f"{value / 1024:,.1f} KB"
    if unit == "MACs":
        return f"{value / 1e6:,.2f} M"
    return f"{value:,.3f} {unit}"


_RESULT = {"fits": "pass", "exceeds": "FAIL", "borderline": "borderline (within the estimate's margin)"}
_FITS = {"fits": "yes", "exceeds": "NO",
         "borderline": "borderline: within the cost model's error of a limit; `nas profile --measure` decides"}


def format_report(rep: dict[str, Any], prof: Profile) -> str:
    """A readable table of :func:`report` (the CLI's default output)."""
    peak = rep["peak_layer"]
    lines = [
        f"spec        {rep['spec']}",
        f"MACs        {rep['macs']:,}",
        f"params      {rep['params']:,}",
        f"flash       {_human(rep['flash_bytes'], 'bytes')} "
        f"(estimated .tflite; weights {_human(rep['weight_bytes'], 'bytes')})",
        f"peak SRAM   {_human(rep['peak_sram_bytes'], 'bytes')} (activations {_human(rep['activation_bytes'], 'bytes')}"
        f" + TFLM runtime {_human(rep['runtime_overhead_bytes'], 'bytes')})",
        f"peak layer  #{peak['index']} {peak['name']} ({peak['op']}, out {'x'.join(map(str, peak['shape']))}):"
        f" {_human(peak['live_bytes'], 'bytes')} live",
    ]
    if rep.get("measured"):
        m = rep["measured"]
        lines.append(f"measured    .tflite {m['tflite_bytes']:,} B, TFLM arena {m['tflm_arena_bytes']:,} B")
    if rep["target"]:
        t = rep["target"]
        lines += ["", f"target      {t['name']} ({t['runtime']}, {t['path']})",
                  f"latency     {rep['latency_ms']:.3f} ms end to end ({rep['inference_ms']:.3f} ms inference; "
                  f"{rep['latency_model']} model)",
                  f"energy      {rep['energy_mj']:.4f} mJ per inference", "",
                  f"{'limit':<12}{'value':>16}{'limit':>16}{'headroom':>16}  result"]
        for c in rep["limits"]:
            lines.append(f"{c['name']:<12}{_human(c['value'], c['unit']):>16}{_human(c['limit'], c['unit']):>16}"
                         f"{_human(c['headroom'], c['unit']):>16}  {_RESULT[c['verdict']]}")
        lines.append(f"\nfits        {_FITS[rep['verdict']]}")
    return "\n".join(lines)
