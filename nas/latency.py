"""A per-operator latency model: what a layer costs on a (core, kernel library), not just how many MACs it has.

Boards disagree with one MACs-per-cycle figure: on one board and one kernel library the MLPerf Tiny models run
at MACs-per-cycle figures up to 2x apart (``../shared/hardware/mlperf_tiny_latency.csv``), because depthwise,
pointwise, standard and fully connected layers run at different speeds and every operator has a fixed cost. So::

    cycles = sum over operators of ( overhead_cycles
                                     + MACs x cycles_per_mac[op class]          (MAC-bearing operators)
                                     + elements x elementwise_cycles )          (element-wise operators)
    inference_ms = cycles / clock_hz x 1000

Op classes (:data:`OP_CLASSES`): ``conv_first`` (a standard convolution over at most
:data:`FIRST_LAYER_CHANNELS` input channels: kernels vectorise over input channels, so a 1- or 3-channel first
layer runs far below a deep one), ``conv``, ``pointwise`` (1x1), ``depthwise``, ``fc``; every other operator is
``elementwise`` (pooling, add, mul, softmax, activations...), costed per element it reads or writes. Shape
operators that move no data in TFLM (``RESHAPE``, ``SQUEEZE``) cost nothing.

The coefficients of one (core, library) are a :class:`CostProfile`; :mod:`nas.latency_fit` fits them on
published measurements and ships them in ``nas/latency_profiles.yaml``. This module is pure Python: it is
used by the search coordinator, ``nas profile`` and the explorer, none of which may import TensorFlow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

#: classes of the MAC-bearing operators, each with its own cycles per MAC
OP_CLASSES = ("conv_first", "conv", "pointwise", "depthwise", "fc")
ELEMENTWISE = "elementwise"
#: a standard convolution over at most this many input channels is the "first layer" class
FIRST_LAYER_CHANNELS = 4
#: operators TFLM runs without touching the data (an in-place view of the same buffer)
FREE_OPS = ("RESHAPE", "SQUEEZE")
#: every coefficient of a profile: cycles per MAC of each class, then per operator, then per element
COEFFICIENTS = (*OP_CLASSES, "overhead", "elementwise")


class CostLayer(Protocol):
    """What the model needs of one operator; :class:`Layer` and ``nas.profile.LayerMemory`` both have it."""

    @property
    def kind(self) -> str: ...
    @property
    def op_class(self) -> str: ...
    @property
    def macs(self) -> int: ...
    @property
    def elements(self) -> int: ...


@dataclass(frozen=True)
class Layer:
    """One operator as the latency model sees it: its TFLite name, class, MACs and elements touched."""

    kind: str
    op_class: str
    macs: int = 0
    elements: int = 0  #: element-wise work: the larger of the elements read (first input) and written


def conv_class(kernel_h: int, kernel_w: int, in_channels: int) -> str:
    """The class of a ``CONV_2D``: ``conv_first`` for few input channels, else ``pointwise`` (1x1) or ``conv``."""
    if in_channels <= FIRST_LAYER_CHANNELS:
        return "conv_first"
    return "pointwise" if kernel_h == kernel_w == 1 else "conv"


def layers_from_tflite_graph(graph: Any) -> tuple[Layer, ...]:
    """The cost layers of a converted model's main subgraph (an :class:`nas.arena.GraphInfo`).

    MACs are counted as :func:`nas.profile.graph_macs` counts them (weights OHWI; depthwise 1HWC).
    """
    sg = graph.main
    out: list[Layer] = []
    for op in sg.ops:
        result = sg.tensors[op.outputs[0]]
        if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(op.inputs) >= 2:
            w = sg.tensors[op.inputs[1]].shape
            if op.kind == "DEPTHWISE_CONV_2D":
                cls, per_output = "depthwise", w[1] * w[2]
            elif op.kind == "FULLY_CONNECTED":
                cls, per_output = "fc", math.prod(w[1:])
            else:
                cls, per_output = conv_class(w[1], w[2], w[3]), math.prod(w[1:])
            out.append(Layer(op.kind, cls, result.elements * per_output, result.elements))
            continue
        first = sg.tensors[op.inputs[0]].elements if op.inputs and op.inputs[0] >= 0 else 0
        out.append(Layer(op.kind, ELEMENTWISE, 0, max(first, result.elements)))
    return tuple(out)


@dataclass(frozen=True)
class CostProfile:
    """Cycles of one (core, kernel library): per MAC of each op class, per operator, per element-wise element."""

    name: str
    cycles_per_mac: Mapping[str, float]
    overhead_cycles: float
    elementwise_cycles: float

    def layer_cycles(self, layer: CostLayer) -> float:
        """Cycles of one operator (0 for a data-free reshape)."""
        if layer.kind in FREE_OPS:
            return 0.0
        if layer.op_class == ELEMENTWISE:
            return self.overhead_cycles + self.elementwise_cycles * layer.elements
        return self.overhead_cycles + self.cycles_per_mac[layer.op_class] * layer.macs

    def cycles(self, layers: Sequence[CostLayer]) -> float:
        """Cycles of a whole network: the sum over its operators."""
        return math.fsum(self.layer_cycles(layer) for layer in layers)

    def macs_only_cycles(self, macs: float) -> float:
        """Cycles from a MAC count alone, for callers that have no graph: every MAC at the pointwise rate, no
        overhead (the class most of a MobileNet's MACs are in). A lower bound for most networks, never used
        where the graph is known."""
        return float(macs) * self.cycles_per_mac["pointwise"]

    def coefficients(self) -> dict[str, float]:
        """The profile as the flat mapping a constraint file's ``hardware.coefficients`` holds."""
        return {**{c: float(self.cycles_per_mac[c]) for c in OP_CLASSES}, "overhead": float(self.overhead_cycles),
                "elementwise": float(self.elementwise_cycles)}

    @classmethod
    def from_coefficients(cls, name: str, values: Mapping[str, float]) -> "CostProfile":
        return cls(name, {c: float(values[c]) for c in OP_CLASSES}, float(values["overhead"]),
                   float(values["elementwise"]))


def shipped_profiles() -> dict[str, dict[str, Any]]:
    """The profiles shipped in ``nas/latency_profiles.yaml`` (generated by :mod:`nas.latency_fit`): name ->
    its record (``coefficients``, ``clock_hz``, ``active_power_mw``, ``rows``, ``residuals_percent``, ...)."""
    from importlib import resources

    from nas import yamlio

    source = "nas/latency_profiles.yaml"
    text = resources.files("nas").joinpath("latency_profiles.yaml").read_text(encoding="utf-8")
    return dict(yamlio.load(text, source)["profiles"])
