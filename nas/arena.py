"""TensorFlow Lite Micro arena memory predicted: exact head planning and a calibrated tail (measured in nas.tflm).

A TFLM tensor arena has two parts:

* the **head** (non-persistent): every activation tensor that is not a constant, plus scratch buffers
  that kernels request in ``Prepare``, laid out by TFLM's ``GreedyMemoryPlanner``;
* the **tail** (persistent): runtime bookkeeping that lives as long as the interpreter: one
  ``TfLiteEvalTensor`` per tensor, one ``NodeAndRegistration`` per operator, each kernel's ``OpData``
  (with per-channel multiplier / shift arrays for convolutions), parsed builtin options, quantization
  copies for the input / output tensors, and the allocator objects themselves.

A naive "largest sum of live tensors" undershoots the head because the greedy planner leaves gaps
(STACK.md: 55,296 B naive vs 73,728 B real on the MLPerf VWW model), and the tail is 20-60 KB on the
models we care about, so both must be modelled to decide whether a candidate fits a microcontroller.

This module offers three levels of truth:

* :func:`buffers_from_tflite` + :func:`plan_arena`: a line-by-line emulation of TFLM's allocation-info
  builder and greedy planner; on all 92 models we measured it reproduces the head *exactly*;
* :func:`estimate_tail`: a small structural model of the tail, calibrated against the real runtime
  (constants and errors documented at :data:`TAIL_COEFFS`), usable from a spec before any training;
* :func:`nas.tflm.measure_tflm`: the TFLM host interpreter itself (``tflite_micro``), the ground truth.

Scope of the figures: they are those of the 64-bit host build of TFLM with reference kernels, which
is what ``tflite_micro`` ships. On a 32-bit microcontroller the pointer-holding tail structs are
smaller (``TfLiteEvalTensor`` is 12 B instead of 24), so the host tail should be an upper bound there
(not measured here). Optimized kernels (CMSIS-NN on Arm) request extra scratch buffers for some
convolutions, which can make the real head *larger* than the reference-kernel head computed here.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)

#: TFLM aligns every non-persistent buffer to this many bytes (``MicroArenaBufferAlignment()``).
ARENA_ALIGNMENT = 16


def _align_up(size: int, alignment: int = ARENA_ALIGNMENT) -> int:
    """``AlignSizeUp`` from TFLM's memory_helpers.cc."""
    return (size + alignment - 1) // alignment * alignment


# ---------------------------------------------------------------------------------------------------
# Head: buffers and the greedy memory planner
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Buffer:
    """One non-persistent buffer the TFLM memory planner must place.

    Lifetimes use TFLM's *allocation scope* counter (``micro_allocation_info.cc``): graph inputs
    (and, provisionally, outputs) are created at scope 0, operator ``i`` runs in scope ``i + 1``;
    a tensor lives from the scope of the op that produces it to the scope of the last op that reads
    it, and graph outputs live to the last scope. Any monotone numbering works for
    :func:`plan_arena`, as long as two buffers overlap exactly when their inclusive
    ``[first_use, last_use]`` intervals intersect.

    ``tensor_index`` is the buffer's position in TFLM's allocation-info array: the tensor index for
    tensors (subgraph 0), and ``number_of_tensors + k`` for the k-th scratch buffer request. The
    planner uses it only to break ties between buffers of equal aligned size.
    """

    size: int
    first_use: int
    last_use: int
    tensor_index: int
    name: str = field(default="", compare=False)

    @property
    def aligned_size(self) -> int:
        """The size TFLM hands to the planner: rounded up to :data:`ARENA_ALIGNMENT`."""
        return _align_up(self.size)


def plan_offsets(buffers: Sequence[Buffer]) -> list[int]:
    """Byte offset of each buffer (same order as ``buffers``) as TFLM's ``GreedyMemoryPlanner`` places it.

    A faithful port of ``GreedyMemoryPlanner::CalculateOffsetsIfNeeded`` (online buffers only):

    1. sizes are rounded up to 16 B (``CreatePlan``);
    2. buffers are taken largest first. TFLM fills its sort array back to front and then runs a
       *stable* descending bubble sort, so among equal sizes the buffer added *later* (higher
       allocation-info index: higher tensor index, scratch buffers after all tensors) goes first;
    3. each buffer goes at the lowest offset where it fits: walk the already-placed buffers in
       offset order, skipping those whose lifetime does not overlap; the candidate offset is the
       furthest end of the overlapping buffers seen so far, and the first gap before the next
       overlapping buffer that is at least the buffer's size wins; otherwise it goes after the last.
    """
    n = len(buffers)
    if n == 0:
        return []
    sizes = [b.aligned_size for b in buffers]
    order = sorted(range(n), key=lambda i: (-sizes[i], -buffers[i].tensor_index, -i))
    offsets = [-1] * n
    # Placed buffers as a list kept sorted by offset; equal offsets keep insertion order (TFLM
    # inserts a new entry after existing ones with the same offset, except at the very head).
    placed: list[int] = []
    first = order[0]
    offsets[first] = 0
    placed.append(first)
    for bid in order[1:]:
        want = sizes[bid]
        first_use, last_use = buffers[bid].first_use, buffers[bid].last_use
        candidate = 0
        for pid in placed:
            p = buffers[pid]
            if p.first_use > last_use or first_use > p.last_use:
                continue  # not alive at the same time
            if offsets[pid] - candidate >= want:
                break  # the gap before this overlapping buffer is big enough
            candidate = max(candidate, offsets[pid] + sizes[pid])
        offsets[bid] = candidate
        if offsets[placed[0]] > candidate:
            placed.insert(0, bid)
        else:
            pos = len(placed)
            for k in range(1, len(placed)):
                if offsets[placed[k]] > candidate:
                    pos = k
                    break
            placed.insert(pos, bid)
    return offsets


def plan_arena(buffers: Sequence[Buffer]) -> int:
    """Head bytes TFLM's greedy planner needs for ``buffers`` (``GetMaximumMemorySize``)."""
    offsets = plan_offsets(buffers)
    return max((o + b.aligned_size for o, b in zip(offsets, buffers)), default=0)


def naive_peak(buffers: Sequence[Buffer]) -> int:
    """Largest sum of aligned buffer sizes alive at one scope: a lower bound on :func:`plan_arena`."""
    if not buffers:
        return 0
    lo = min(b.first_use for b in buffers)
    hi = max(b.last_use for b in buffers)
    return max(
        sum(b.aligned_size for b in buffers if b.first_use <= t <= b.last_use) for t in range(lo, hi + 1)
    )


# ---------------------------------------------------------------------------------------------------
# Reading a .tflite flatbuffer
# ---------------------------------------------------------------------------------------------------

#: Bytes per element, as TFLM's ``TfLiteTypeSizeOf`` (memory_helpers.cc), keyed by schema TensorType name.
_TYPE_SIZE = {
    "FLOAT16": 2, "BFLOAT16": 2, "FLOAT32": 4, "FLOAT64": 8, "INT16": 2, "UINT16": 2, "INT32": 4,
    "UINT32": 4, "UINT8": 1, "INT8": 1, "INT64": 8, "UINT64": 8, "BOOL": 1, "RESOURCE": 4,
    "COMPLEX64": 8, "COMPLEX128": 16, "INT4": 1,
}


@dataclass(frozen=True)
class TensorInfo:
    """What the allocator needs to know about one tensor of a flatbuffer."""

    index: int
    shape: tuple[int, ...]
    dtype: str
    is_constant: bool  #: has serialized data: lives in the flatbuffer, never in the arena
    is_variable: bool  #: allocated in the persistent tail by ``AllocateVariables``
    n_scales: int  #: length of the quantization scale vector (0: not quantized)

    @property
    def elements(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    @property
    def nbytes(self) -> int:
        """``TfLiteEvalTensorByteLength``: elements x type size (scalars have one element)."""
        return self.elements * _TYPE_SIZE.get(self.dtype, 0)


@dataclass(frozen=True)
class OpInfo:
    """One operator: its builtin name and tensor indices (-1 for omitted optional inputs)."""

    kind: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    intermediates: tuple[int, ...] = ()
    subgraphs: tuple[int, ...] = ()  #: subgraphs a control-flow op invokes (IF / WHILE / CALL_ONCE)


@dataclass(frozen=True)
class SubgraphInfo:
    tensors: tuple[TensorInfo, ...]
    ops: tuple[OpInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class GraphInfo:
    """The parts of a .tflite model that determine TFLM's arena: every subgraph, tensor and op."""

    subgraphs: tuple[SubgraphInfo, ...]

    @property
    def main(self) -> SubgraphInfo:
        return self.subgraphs[0]


def _schema() -> Any:
    """The flatbuffer schema bindings shipped with ``tflite_micro`` (the runtime we emulate)."""
    try:
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb
    except ImportError:  # pragma: no cover - tflite_micro is a hard dependency
        from tensorflow.lite.python import schema_py_generated as fb
    return fb


def _enum_names(enum_cls: Any) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def read_graph(model: bytes | bytearray | memoryview, source: str = "<bytes>") -> GraphInfo:
    """Parse a .tflite flatbuffer into a :class:`GraphInfo`; raise ``ValueError`` naming ``source``.

    Reads through the lazy flatbuffer accessors (no copy of weight data) and cross-checks every
    index, so a truncated or tampered file fails here with a clear message instead of deep inside
    the C++ runtime.
    """
    fb = _schema()
    data = bytes(model)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(f"{source}: not a TFLite flatbuffer (missing 'TFL3' identifier)")
    op_names = _enum_names(fb.BuiltinOperator)
    type_names = _enum_names(fb.TensorType)
    try:
        m = fb.Model.GetRootAs(data, 0)
        n_buffers = m.BuffersLength()
        const_buffer = []
        for b in range(n_buffers):
            buf = m.Buffers(b)
            const_buffer.append(buf is not None and (buf.DataLength() > 0 or buf.Offset() > 1))
        codes = []
        for c in range(m.OperatorCodesLength()):
            oc = m.OperatorCodes(c)
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            name = op_names.get(code, f"BUILTIN_{code}")
            if name == "CUSTOM":
                name = "CUSTOM:" + (oc.CustomCode() or b"").decode("utf-8", "replace")
            codes.append(name)
        subgraphs = []
        if m.SubgraphsLength() < 1:
            raise ValueError("model has no subgraph")
        for s in range(m.SubgraphsLength()):
            sg = m.Subgraphs(s)
            tensors = []
            for t in range(sg.TensorsLength()):
                ten = sg.Tensors(t)
                if ten.Buffer() >= n_buffers:
                    raise ValueError(f"tensor {t} refers to buffer {ten.Buffer()} of {n_buffers}")
                shape = tuple(int(x) for x in ten.ShapeAsNumpy()) if ten.ShapeLength() else ()
                if any(d < 0 for d in shape):
                    raise ValueError(f"tensor {t} has a dynamic shape {shape}; TFLM needs static shapes")
                q = ten.Quantization()
                n_scales = q.ScaleLength() if q is not None else 0
                tensors.append(TensorInfo(
                    index=t, shape=shape, dtype=type_names.get(ten.Type(), str(ten.Type())),
                    is_constant=const_buffer[ten.Buffer()], is_variable=bool(ten.IsVariable()),
                    n_scales=n_scales,
                ))
            n_t = len(tensors)
            ops = []
            for i in range(sg.OperatorsLength()):
                op = sg.Operators(i)
                if op.OpcodeIndex() >= len(codes):
                    raise ValueError(f"operator {i} has opcode index {op.OpcodeIndex()} of {len(codes)}")
                ins = tuple(int(x) for x in op.InputsAsNumpy()) if op.InputsLength() else ()
                outs = tuple(int(x) for x in op.OutputsAsNumpy()) if op.OutputsLength() else ()
                inter = tuple(int(x) for x in op.IntermediatesAsNumpy()) if op.IntermediatesLength() else ()
                for t in ins + outs + inter:
                    if t >= n_t or t < -1:
                        raise ValueError(f"operator {i} refers to tensor {t} of {n_t}")
                kind = codes[op.OpcodeIndex()]
                ops.append(OpInfo(kind, ins, outs, inter, _called_subgraphs(fb, op, kind)))
            g_in = tuple(int(x) for x in sg.InputsAsNumpy()) if sg.InputsLength() else ()
            g_out = tuple(int(x) for x in sg.OutputsAsNumpy()) if sg.OutputsLength() else ()
            for t in g_in + g_out:
                if not 0 <= t < n_t:
                    raise ValueError(f"subgraph {s} input/output tensor {t} out of range 0..{n_t - 1}")
            subgraphs.append(SubgraphInfo(tuple(tensors), tuple(ops), g_in, g_out))
    except ValueError as e:
        raise ValueError(f"{source}: invalid TFLite model: {e}") from e
    except Exception as e:  # struct.error, IndexError, TypeError from a corrupt flatbuffer
        raise ValueError(f"{source}: corrupt TFLite flatbuffer ({type(e).__name__}: {e})") from e
    return GraphInfo(tuple(subgraphs))


def _called_subgraphs(fb: Any, op: Any, kind: str) -> tuple[int, ...]:
    """Subgraph indices a control-flow op runs, in the order TFLM plans them."""
    table = op.BuiltinOptions()
    if table is None:
        return ()
    if kind == "IF":
        o = fb.IfOptions()
        o.Init(table.Bytes, table.Pos)
        return (o.ThenSubgraphIndex(), o.ElseSubgraphIndex())
    if kind == "WHILE":
        o = fb.WhileOptions()
        o.Init(table.Bytes, table.Pos)
        return (o.CondSubgraphIndex(), o.BodySubgraphIndex())
    if kind == "CALL_ONCE":
        o = fb.CallOnceOptions()
        o.Init(table.Bytes, table.Pos)
        return (o.InitSubgraphIndex(),)
    return ()


def load_bytes(model: bytes | bytearray | str | Path) -> tuple[bytes, str]:
    """Model bytes and a name for messages (the path when given one)."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model), "<bytes>"
    path = Path(model)
    if not path.is_file():
        raise ValueError(f"{path}: no such model file")
    return path.read_bytes(), str(path)


# ---------------------------------------------------------------------------------------------------
# Lifetimes exactly as TFLM's AllocationInfoBuilder computes them
# ---------------------------------------------------------------------------------------------------


def scratch_requests(graph: GraphInfo, subgraph: int, op: OpInfo) -> list[int]:
    """Bytes of each scratch buffer the *reference* TFLM kernel for ``op`` requests in ``Prepare``.

    The host ``tflite_micro`` package is built with the reference kernels. Of the operators a
    vision model uses, the int8 ones that request arena scratch are (kernels/*.cc):

    * ``MEAN`` / ``SUM`` with an int8 / int16 / uint8 input: one int32 accumulator per output element
      (``reduce_common.cc``, ``PrepareMeanOrSum``), plus two small index buffers (``4 * input rank``
      and ``4 * number of axes``). The two index buffers are not in the reduce_common.cc versions we
      could read, but the runtime shipped in ``tflite_micro`` needs exactly 32 more head bytes when a
      MEAN sits at the memory peak (probed with rank-2..4 inputs and 1..3 axes), which is what two
      16-byte-aligned requests of that size give; they are modelled like REDUCE_MAX's;
    * ``REDUCE_MAX`` / ``REDUCE_MIN``: ``4 * input rank`` and ``4 * number of axes``;
    * ``CONV_2D`` / ``DEPTHWISE_CONV_2D`` / ``FULLY_CONNECTED`` with INT4 (packed) weights: room to
      unpack the filter, one byte per weight;
    * ``TRANSPOSE_CONV`` with int8 / int16 input: an int32 / int64 accumulator per output element.

    MEAN and REDUCE_MAX were probed against the runtime; the INT4 and TRANSPOSE_CONV rules are read
    from the kernel sources only (no such model was measured).

    CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED (int8 weights), ADD, MUL, SOFTMAX, pooling, PAD,
    RESHAPE, CONCATENATION, activations and (DE)QUANTIZE request none. CMSIS-NN builds (real Arm
    targets) request im2col-style scratch for convolutions as well; that is not modelled here.
    """
    sg = graph.subgraphs[subgraph]
    t = lambda k: sg.tensors[op.inputs[k]] if len(op.inputs) > k and op.inputs[k] >= 0 else None  # noqa: E731
    out = sg.tensors[op.outputs[0]] if op.outputs else None
    inp = t(0)
    kind = op.kind
    if kind in ("MEAN", "SUM") and inp is not None and out is not None:
        if inp.dtype in ("INT8", "INT16", "UINT8"):
            axis = t(1)
            return [out.elements * 4, 4 * len(inp.shape), 4 * (axis.elements if axis is not None else 0)]
    elif kind in ("REDUCE_MAX", "REDUCE_MIN") and inp is not None:
        axis = t(1)
        return [4 * len(inp.shape), 4 * (axis.elements if axis is not None else 0)]
    elif kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
        w = t(1)
        if w is not None and w.dtype == "INT4":
            return [w.elements]
    elif kind == "TRANSPOSE_CONV" and out is not None:
        x = t(2)
        if x is not None and x.dtype == "INT8":
            return [out.elements * 4]
        if x is not None and x.dtype == "INT16":
            return [out.elements * 8]
    return []


def buffers_from_graph(graph: GraphInfo) -> list[Buffer]:
    """Non-persistent buffers of ``graph`` in TFLM's allocation-info order, with TFLM's lifetimes.

    Port of ``AllocationInfoBuilder`` (micro_allocation_info.cc) and ``CreatePlan``:

    * every tensor of every subgraph gets an allocation-info slot (subgraph 0's tensors first), then
      one slot per scratch buffer request, in request (= ``Prepare``) order;
    * a tensor needs arena space when it has no serialized data, is not a variable (those go to the
      tail) and has a non-zero byte length;
    * the allocation scope counter starts at 0; graph inputs and outputs are "created" at the scope
      where their subgraph starts; each operator opens a new scope (op ``i`` of subgraph 0 is scope
      ``i + 1``), its outputs are created there and its inputs' and outputs' last use is moved there;
      after the last op, graph outputs are extended to the final scope;
    * a scratch buffer lives exactly in the scope of the op that requested it;
    * IF / WHILE / CALL_ONCE plan their subgraphs in fresh scopes right after the op's outputs are
      created, so those tensors nest inside the calling op's lifetime.

    Tensors no operator touches keep lifetime ``(-1, -1)``, as in TFLM.
    """
    tensor_offset = []
    total = 0
    for sg in graph.subgraphs:
        tensor_offset.append(total)
        total += len(sg.tensors)
    first = [-1] * total
    last = [-1] * total
    scratch: list[tuple[int, int, int, int, int]] = []  # (subgraph, op, bytes, first, last)
    scope = 0

    def mark(s: int) -> None:
        nonlocal scope
        sg = graph.subgraphs[s]
        base = tensor_offset[s]
        for t in sg.inputs + sg.outputs:
            first[base + t] = scope
            last[base + t] = scope
        for op_index, op in enumerate(sg.ops):
            scope += 1
            for t in op.outputs:
                first[base + t] = scope
                last[base + t] = scope
            start = scope
            for called in op.subgraphs:
                scope += 1
                mark(called)
            for t in op.inputs:
                if t >= 0:
                    last[base + t] = scope
            for t in op.outputs:
                last[base + t] = scope
            for nbytes in scratch_requests(graph, s, op):
                scratch.append((s, op_index, nbytes, start, scope))
        for t in sg.outputs:
            last[base + t] = scope

    mark(0)
    buffers = []
    for s, sg in enumerate(graph.subgraphs):
        base = tensor_offset[s]
        for t in sg.tensors:
            if t.is_constant or t.is_variable or t.nbytes == 0:
                continue
            buffers.append(Buffer(t.nbytes, first[base + t.index], last[base + t.index], base + t.index,
                                  name=f"t{t.index}" if s == 0 else f"sg{s}/t{t.index}"))
    # Requests are numbered in Prepare order (subgraph by subgraph, op by op), not planning order.
    scratch.sort(key=lambda r: (r[0], r[1]))
    for k, (_, _, nbytes, first_use, last_use) in enumerate(scratch):
        buffers.append(Buffer(nbytes, first_use, last_use, total + k, name=f"scratch{k}"))
    return buffers


def buffers_from_tflite(model: bytes | bytearray | str | Path) -> list[Buffer]:
    """Non-persistent buffers of a .tflite model (bytes or path) with TFLM's lifetimes.

    ``plan_arena(buffers_from_tflite(m))`` is the head TFLM's greedy planner allocates for ``m``.
    """
    data, source = load_bytes(model)
    return buffers_from_graph(read_graph(data, source))


# ---------------------------------------------------------------------------------------------------
# Tail: a calibrated model of TFLM's persistent memory
# ---------------------------------------------------------------------------------------------------

#: ``sizeof(TfLiteEvalTensor)`` on the 64-bit host: one per tensor of the model, constants included.
EVAL_TENSOR_BYTES = 24
#: ``sizeof(NodeAndRegistration)`` on the 64-bit host: one per operator.
NODE_BYTES = 64
#: A persistent ``TfLiteTensor`` the interpreter keeps for every graph input and output.
IO_TENSOR_BYTES = 64
#: Quantization copy for a quantized graph input / output: ``TfLiteAffineQuantization`` (24 B) plus a
#: one-entry zero-point ``TfLiteIntArray`` (8 B).
IO_QUANT_BYTES = 32
#: Ops whose kernel keeps per-output-channel int32 multiplier and shift arrays (two persistent
#: allocations of ``4 * channels`` bytes, each rounded up to 16).
PER_CHANNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")

#: Fitted part of the tail, in bytes: ``"base"`` (allocator / planner / interpreter objects, the
#: scratch-handle array) and, per builtin op, the kernel's ``OpData`` (allocated in ``Init``, rounded
#: up to 16) plus its parsed builtin options (``TfLite*Params``).
#:
#: How they were fitted: ordinary least squares of ``measured tail - exact terms`` (tensors x 24,
#: ops x 64, graph I/O x 64 (+32 when quantized), per-channel arrays, variable tensors) on the op
#: counts, over 88 models measured with ``tflite_micro`` 0.dev20261023 (host, reference kernels):
#: the 4 holdout models (MLPerf Tiny VWW, TFLM person_detect, TinyTracker, TinyTrackerS), 60
#: random tf_keras conv nets (MobileNet-style separable / inverted-residual blocks, squeeze-excite
#: with sigmoid / hard-sigmoid, hard-swish, residual ADD, CONCATENATION, PAD, pooling, dense heads,
#: softmax / tanh / sigmoid outputs, int8 and float I/O, 12x12..48x48 inputs with 1-3 channels)
#: converted to full-int8 TFLite with TF 2.21, 16 nets exercising standalone MAXIMUM / SUB /
#: LEAKY_RELU / STRIDED_SLICE / REDUCE_MAX / RESIZE_NEAREST_NEIGHBOR, and 8 MEAN / REDUCE_MAX probes.
#: Rounded to whole bytes (MAXIMUM's -1 clipped to 0). With these constants the error on the 88 tails
#: (1.3 KB to 60 KB) is at most 15 B: median 0.08 %, max 0.34 %; holdouts -6 / +5 / -2 / +6 B.
#: Leave-one-out refits: median 0.13 %, max 5.2 % (a 1.3 KB probe whose EXPAND_DIMS was unique).
#: MINIMUM and RELU only ever appeared together (Keras hard_sigmoid), so their split is arbitrary.
TAIL_COEFFS: dict[str, int] = {
    "base": 522,
    "ADD": 71, "AVERAGE_POOL_2D": 72, "CONCATENATION": 87, "CONV_2D": 108, "DEPTHWISE_CONV_2D": 108,
    "DEQUANTIZE": 30, "EXPAND_DIMS": 4, "FULLY_CONNECTED": 113, "HARD_SWISH": 31, "LEAKY_RELU": 34,
    "LOGISTIC": 18, "MAXIMUM": 0, "MAX_POOL_2D": 71, "MEAN": 73, "MINIMUM": 16, "MUL": 52,
    "PAD": 65, "QUANTIZE": 36, "REDUCE_MAX": 69, "RELU": 16, "RESHAPE": 38,
    "RESIZE_NEAREST_NEIGHBOR": 0, "SOFTMAX": 85, "STRIDED_SLICE": 117, "SUB": 71, "TANH": 16,
}
#: Fitted cost of an op kind that was not in the calibration set: a typical OpData + options.
DEFAULT_OP_TAIL = 72


@dataclass(frozen=True)
class TailFeatures:
    """The plain graph features TFLM's tail depends on; computable from a spec or from a .tflite.

    ``n_tensors`` counts every tensor in the flatbuffer: graph inputs, every op's output, and the
    constant inputs (weights, biases, and small int32 constants such as RESHAPE shapes, MEAN axes and
    PAD paddings; the converter shares identical constants between ops). ``channels`` lists the
    output channels of every per-channel quantized layer: all CONV_2D and DEPTHWISE_CONV_2D, plus
    FULLY_CONNECTED layers when their weights are per-channel (TF >= 2.16's converter does that by
    default; older models such as the MLPerf ones use per-tensor dense weights). When only a total is
    known, pass ``n_conv_channels`` instead; it is exact whenever every count is a multiple of 4.
    """

    n_tensors: int
    n_ops: int
    op_counts: Mapping[str, int]
    channels: tuple[int, ...] = ()
    n_conv_channels: int = 0  #: used only when ``channels`` is empty
    n_io: int = 2  #: graph inputs + outputs
    n_quantized_io: int = 2  #: of which int8/int16 (float I/O adds QUANTIZE / DEQUANTIZE ops instead)
    variable_bytes: int = 0  #: total bytes of variable tensors (stateful ops only)

    @property
    def per_channel_bytes(self) -> int:
        """Persistent bytes of the per-channel multiplier and shift arrays."""
        if self.channels:
            return sum(2 * _align_up(4 * c) for c in self.channels)
        return 8 * self.n_conv_channels

    @classmethod
    def from_graph(cls, graph: GraphInfo) -> "TailFeatures":
        """Features of subgraph 0 of a parsed model (what every vision model has)."""
        sg = graph.main
        channels = []
        for op in sg.ops:
            if op.kind in PER_CHANNEL_OPS and len(op.inputs) > 1 and op.inputs[1] >= 0:
                w = sg.tensors[op.inputs[1]]
                if not w.shape:
                    continue
                if op.kind == "DEPTHWISE_CONV_2D":
                    channels.append(w.shape[-1])
                elif op.kind == "FULLY_CONNECTED":
                    if w.n_scales > 1:
                        channels.append(w.shape[0])
                else:
                    channels.append(w.shape[0])
        io = [sg.tensors[t] for t in sg.inputs + sg.outputs]
        return cls(
            n_tensors=len(sg.tensors),
            n_ops=len(sg.ops),
            op_counts=dict(Counter(op.kind for op in sg.ops)),
            channels=tuple(channels),
            n_io=len(io),
            n_quantized_io=sum(1 for t in io if t.n_scales > 0),
            variable_bytes=sum(_align_up(t.nbytes) for t in sg.tensors if t.is_variable),
        )


def exact_tail_terms(f: TailFeatures) -> int:
    """The part of the tail fixed by struct sizes alone (no fitted constant involved)."""
    return (EVAL_TENSOR_BYTES * f.n_tensors + NODE_BYTES * f.n_ops + IO_TENSOR_BYTES * f.n_io
            + IO_QUANT_BYTES * f.n_quantized_io + f.per_channel_bytes + f.variable_bytes)


def estimate_tail(model_or_features: TailFeatures | GraphInfo | bytes | bytearray | str | Path) -> int:
    """Estimated persistent (tail) bytes of TFLM's arena, host build (see :data:`TAIL_COEFFS`).

    Accepts a :class:`TailFeatures` record (what a spec-based profiler builds), a parsed
    :class:`GraphInfo`, or a model as bytes / path.
    """
    if isinstance(model_or_features, TailFeatures):
        f = model_or_features
    elif isinstance(model_or_features, GraphInfo):
        f = TailFeatures.from_graph(model_or_features)
    else:
        data, source = load_bytes(model_or_features)
        f = TailFeatures.from_graph(read_graph(data, source))
    fitted = TAIL_COEFFS["base"]
    for kind, count in f.op_counts.items():
        if kind not in TAIL_COEFFS:
            log.debug("no calibrated tail cost for op %s; using %d B", kind, DEFAULT_OP_TAIL)
        fitted += count * TAIL_COEFFS.get(kind, DEFAULT_OP_TAIL)
    return exact_tail_terms(f) + fitted


def fit_tail_coefficients(samples: Sequence[tuple[TailFeatures, int]]) -> dict[str, float]:
    """Least-squares fit of :data:`TAIL_COEFFS` from ``(features, measured tail)`` pairs.

    Kept so the constants can be re-derived when ``tflite_micro`` changes: measure a set of models
    with :func:`nas.tflm.measure_tflm`, pair :meth:`TailFeatures.from_graph` with ``tail_bytes`` and paste the
    rounded result into :data:`TAIL_COEFFS`.
    """
    import numpy as np

    kinds = sorted({k for f, _ in samples for k in f.op_counts})
    x = np.array([[1.0] + [f.op_counts.get(k, 0) for k in kinds] for f, _ in samples])
    y = np.array([tail - exact_tail_terms(f) for f, tail in samples], dtype=float)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return dict(zip(["base"] + kinds, (float(c) for c in coef)))


def estimate_arena(model: bytes | bytearray | str | Path) -> int:
    """Estimated total arena: exact planned head plus estimated tail (no interpreter needed)."""
    data, source = load_bytes(model)
    graph = read_graph(data, source)
    return plan_arena(buffers_from_graph(graph)) + estimate_tail(graph)
