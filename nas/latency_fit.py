"""Fitting :class:`nas.latency.CostProfile` coefficients to measured latencies: published boards and a user's own.

The published data are few: ``../shared/hardware/mlperf_tiny_latency.csv`` holds at most three models per
(board, kernel library) and one row for most. A model with seven coefficients per stack cannot be fitted on
three rows, so the fit shares what the data can only see across stacks:

* **shared** by all stacks: the op classes' cycles per MAC *relative to pointwise* (``conv_first``, ``conv``,
  ``depthwise``, ``fc``), the per-operator overhead and the element-wise cost per element, both in units of
  one pointwise MAC;
* **per stack**: one scale, the cycles of a pointwise MAC (``s``), which also scales the shared terms.

"All stacks" means all stacks of one kernel-library family (:func:`library_family`): ST's X-CUBE-AI kernels,
and the rest (TFLM's reference and CMSIS-NN kernels and the libraries built on them). One set of relative
costs for every library fitted worse in leave-one-model-out (bench/latency_model.py reports both): on TFLM
2.3.1 + CMSIS-NN the fully connected autoencoder runs 1.5x faster per MAC than the DS-CNN, on X-CUBE-AI it
runs slower; no shared relative cost can say both.

So a stack's profile is ``s x (shared relative costs)``. The fit minimises squared log errors (relative
errors, so a 1 ms model weighs as much as a 700 ms one) plus a ridge term pulling every shared log-ratio
towards 0, i.e. towards the linear MACs model: with no evidence for a difference, per-op reduces to linear.
Gauss-Newton with a numeric Jacobian on a dozen parameters (numpy only; no SciPy dependency).

The reference networks are rebuilt here as layer lists, so fitting needs no ``.tflite`` and no TensorFlow:
VWW and IC from the presets (``mobilenetv1-vww`` and ``resnet8-cifar``, whose MACs equal the references'),
KWS and AD from the mlcommons/tiny architectures (:func:`reference_layers`).
"""
from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from nas.latency import ELEMENTWISE, FREE_OPS, OP_CLASSES, CostLayer, CostProfile, Layer

log = logging.getLogger(__name__)

#: the classes whose cost relative to pointwise is fitted (pointwise is the unit)
RELATIVE = tuple(c for c in OP_CLASSES if c != "pointwise")
SHARED = (*RELATIVE, "overhead", "elementwise")
#: ridge weight on the shared log-ratios (towards the linear model); one squared log error of 1 costs as
#: much as a log-ratio of 1/sqrt(RIDGE). Chosen, not fitted: 0.05 lets a ratio of 3 (log 1.1) cost 0.06.
RIDGE = 0.05
#: the starting point (and, through the ridge, the prior) of the overhead and element-wise terms, in
#: pointwise-MAC units: ASSUMPTION, an operator's fixed cost of the order of 1,000 MACs and an element-wise
#: element of the order of one MAC; the fit moves them where the data say otherwise.
PRIOR = {"overhead": 1000.0, "elementwise": 1.0}


# ------------------------------------------------------------------------------------------- references


def _kws_dscnn() -> tuple[Layer, ...]:
    """MLPerf Tiny KWS DS-CNN (mlcommons/tiny benchmark/training/keyword_spotting/keras_model.py, 'ds_cnn'):
    49x10x1 MFCC input; Conv2D 64 filters 10x4 stride 2 'same' -> 25x5x64; four times (DepthwiseConv2D 3x3
    'same', Conv2D 64 1x1), BN and ReLU folded or fused; AveragePooling2D 25x5; Flatten; Dense 12; softmax.
    MACs 320,000 + 4 x (72,000 + 512,000) + 768 = 2,656,768, the CSV README's figure (conv 12%, depthwise
    10.8%, pointwise 77.1%)."""
    fmap = 25 * 5 * 64
    layers = [Layer("CONV_2D", "conv_first", fmap * 10 * 4 * 1, fmap)]
    for _ in range(4):
        layers += [Layer("DEPTHWISE_CONV_2D", "depthwise", fmap * 9, fmap),
                   Layer("CONV_2D", "pointwise", fmap * 64, fmap)]
    return (*layers, Layer("AVERAGE_POOL_2D", ELEMENTWISE, 0, fmap), Layer("RESHAPE", ELEMENTWISE, 0, 64),
            Layer("FULLY_CONNECTED", "fc", 64 * 12, 12), Layer("SOFTMAX", ELEMENTWISE, 0, 12))


def _ad_autoencoder() -> tuple[Layer, ...]:
    """MLPerf Tiny AD FC autoencoder (mlcommons/tiny benchmark/training/anomaly_detection/keras_model.py):
    640 inputs; Dense 128 x4, Dense 8, Dense 128 x4 (BN folded, ReLU fused), Dense 640. MACs 264,192, the CSV
    README's figure."""
    widths = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    return tuple(Layer("FULLY_CONNECTED", "fc", a * b, b) for a, b in zip(widths, widths[1:]))


def reference_layers(model: str) -> tuple[CostLayer, ...]:
    """The cost layers of an MLPerf Tiny reference model by its CSV ``benchmark`` name (vww, ic, kws, ad)."""
    if model == "kws":
        return _kws_dscnn()
    if model == "ad":
        return _ad_autoencoder()
    from nas import profile
    from nas.spec import preset

    name = {"vww": "mobilenetv1-vww", "ic": "resnet8-cifar"}[model]
    return profile.estimate(preset(name)).layers


# ------------------------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Row:
    """One measured model on one stack: its layers, the latency in ms and (if measured) the energy in mJ."""

    stack: str
    model: str
    layers: tuple[CostLayer, ...]
    clock_hz: float
    latency_ms: float
    energy_mj: Optional[float] = None
    source: str = ""


def library_family(stack: str) -> str:
    """The kernel-library family whose relative op costs a stack shares: 'x-cube-ai' or 'tflm-cmsis-nn'."""
    return "x-cube-ai" if "x-cube-ai" in stack else "tflm-cmsis-nn"


def stack_name(core: str, library: str) -> str:
    """A profile name from a core and a library: 'Cortex-M4F', 'X-CUBE-AI 10.2' -> 'cortex-m4f/x-cube-ai-10.2'."""
    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")
    return f"{slug(core)}/{slug(library)}"


def read_mlperf_csv(path: Path) -> list[Row]:
    """The rows of ``mlperf_tiny_latency.csv`` (read in place), each with its reference model's layers."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            layers = tuple(reference_layers(r["benchmark"]))
            macs = sum(layer.macs for layer in layers)
            if macs != int(r["macs"]):
                raise ValueError(f"{path}: {r['benchmark']} has {r['macs']} MACs, the rebuilt layers {macs}")
            energy = float(r["energy_uj"]) / 1000.0 if r["energy_uj"].strip() else None
            rows.append(Row(stack_name(r["core"], r["stack"]), r["benchmark"], layers, float(r["clock_mhz"]) * 1e6,
                            float(r["latency_ms"]), energy, f"{r['board']}: {r['source']}"))
    return rows


# ------------------------------------------------------------------------------------------- the fit


def class_totals(layers: Iterable[CostLayer]) -> dict[str, float]:
    """What the model multiplies: MACs per class, operators (not free ones) and element-wise elements."""
    out = dict.fromkeys((*OP_CLASSES, "overhead", "elementwise"), 0.0)
    for layer in layers:
        if layer.kind in FREE_OPS:
            continue
        out["overhead"] += 1
        if layer.op_class == ELEMENTWISE:
            out["elementwise"] += layer.elements
        else:
            out[layer.op_class] += layer.macs
    return out


@dataclass(frozen=True)
class Fit:
    """Shared relative costs (pointwise = 1), a pointwise cycles-per-MAC scale per stack, and the profiles."""

    relative: Mapping[str, float]
    scale: Mapping[str, float]
    power_mw: Mapping[str, Optional[float]]

    def profile(self, stack: str) -> CostProfile:
        s = self.scale[stack]
        return CostProfile(stack, {"pointwise": s, **{c: s * self.relative[c] for c in RELATIVE}},
                           s * self.relative["overhead"], s * self.relative["elementwise"])


def _predict_ms(relative: Mapping[str, float], s: float, totals: Mapping[str, float], clock_hz: float) -> float:
    units = totals["pointwise"] + sum(relative[k] * totals[k] for k in SHARED)
    return s * units / clock_hz * 1000.0


def fit(rows: Sequence[Row], *, shared: Optional[Mapping[str, float]] = None, ridge: float = RIDGE) -> Fit:
    """Fit the shared relative costs and one scale per stack on ``rows`` (or keep ``shared`` fixed and fit the
    scales only: what a stack with one or two rows can support, and what ``nas calibrate`` does by default)."""
    stacks = sorted({r.stack for r in rows})
    totals = [class_totals(r.layers) for r in rows]
    prior = {**dict.fromkeys(RELATIVE, 1.0), **PRIOR}
    free = [] if shared is not None else list(SHARED)

    def unpack(theta: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
        rel = dict(shared) if shared is not None else {k: float(math.exp(theta[i])) for i, k in enumerate(free)}
        scales = {s: float(math.exp(theta[len(free) + j])) for j, s in enumerate(stacks)}
        return rel, scales

    def residuals(theta: np.ndarray) -> np.ndarray:
        rel, scales = unpack(theta)
        res = [math.log(_predict_ms(rel, scales[r.stack], t, r.clock_hz) / r.latency_ms) for r, t in zip(rows, totals)]
        res += [math.sqrt(ridge) * (theta[i] - math.log(prior[k])) for i, k in enumerate(free)]
        return np.array(res)

    theta = np.array([math.log(prior[k]) for k in free] + [0.0] * len(stacks))
    for j, s in enumerate(stacks):  # start each scale where the starting shared costs put it
        mine = [(r, t) for r, t in zip(rows, totals) if r.stack == s]
        rel0, _ = unpack(theta)
        theta[len(free) + j] = float(np.mean([math.log(r.latency_ms / _predict_ms(rel0, 1.0, t, r.clock_hz))
                                              for r, t in mine]))
    theta = _gauss_newton(residuals, theta)
    rel, scales = unpack(theta)
    return Fit(rel, scales, {s: _power(r for r in rows if r.stack == s) for s in stacks})


def fit_by_family(rows: Sequence[Row], *, ridge: float = RIDGE) -> dict[str, Fit]:
    """One :func:`fit` per kernel-library family (:func:`library_family`): stack -> the fit it belongs to."""
    out: dict[str, Fit] = {}
    for family in sorted({library_family(r.stack) for r in rows}):
        f = fit([r for r in rows if library_family(r.stack) == family], ridge=ridge)
        out.update(dict.fromkeys(f.scale, f))
    return out


def _gauss_newton(residuals, theta: np.ndarray, steps: int = 200) -> np.ndarray:
    """Levenberg-Marquardt on a small least-squares problem (numeric Jacobian)."""
    lam, cost = 1e-3, float(np.sum(residuals(theta) ** 2))
    for _ in range(steps):
        r = residuals(theta)
        jac = np.empty((r.size, theta.size))
        for i in range(theta.size):
            d = np.zeros_like(theta)
            d[i] = 1e-6
            jac[:, i] = (residuals(theta + d) - r) / 1e-6
        a = jac.T @ jac
        step = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-9), -jac.T @ r)
        new = theta + step
        new_cost = float(np.sum(residuals(new) ** 2))
        if new_cost < cost:
            theta, lam, improved = new, lam / 3, cost - new_cost
            cost = new_cost
            if improved < 1e-14:
                break
        else:
            lam *= 10
            if lam > 1e10:
                break
    return theta


def _power(rows: Iterable[Row]) -> Optional[float]:
    """The stack's active power, mW: mean energy / latency over its rows with an energy figure."""
    ratios = [r.energy_mj / r.latency_ms * 1000.0 for r in rows if r.energy_mj is not None]
    return float(np.mean(ratios)) if ratios else None


def predict_ms(profile: CostProfile, layers: Sequence[CostLayer], clock_hz: float) -> float:
    return profile.cycles(layers) / clock_hz * 1000.0


def linear_fit(rows: Sequence[Row]) -> dict[str, float]:
    """The linear model's one figure per stack: MACs per cycle, the least-squares fit in log space (geometric
    mean of the rows' MACs per cycle)."""
    out: dict[str, list[float]] = {}
    for r in rows:
        macs = sum(layer.macs for layer in r.layers)
        out.setdefault(r.stack, []).append(math.log(macs / (r.latency_ms / 1000.0 * r.clock_hz)))
    return {s: float(math.exp(np.mean(v))) for s, v in out.items()}


# ------------------------------------------------------------------------------------------- shipped file

HEADER = """\
# Per-operator latency profiles, one per (core, kernel library): GENERATED by `python -m nas.latency_fit
# ../shared/hardware/mlperf_tiny_latency.csv > nas/latency_profiles.yaml` (nas/latency_fit.py), do not edit.
#
# Source of every figure: the MLPerf Tiny results in ../shared/hardware/mlperf_tiny_latency.csv (public
# mlcommons/tiny_results_v0.5 ... v1.3, the path of each row in `sources` below); the reference networks'
# layers from mlcommons/tiny benchmark/training/*/keras_model.py (nas/latency_fit.py: reference_layers).
#
# What is FITTED and what is SHARED (few rows per stack, so most is shared):
#   cycles per MAC of conv_first, conv, depthwise, fc relative to pointwise, the per-operator overhead and
#   the per-element element-wise cost are shared by all stacks of one library family (`family`), fitted on
#   all of that family's rows (squared log error + ridge 0.05 towards the linear model);
#   per stack only the scale (cycles of a pointwise MAC) is fitted, on that stack's own rows.
#   A stack with one row (rows: 1) has its scale solved from that row: its residual is 0 by construction
#   and says nothing; bench/latency_model.py's leave-one-model-out is the check (stacks with 3 rows).
# active_power_mw: mean energy / latency over the stack's rows with an energy figure (null: none measured).
# coefficients: cycles per MAC (conv_first ... fc), cycles per operator (overhead), cycles per element.
"""


def profiles_yaml(rows: Sequence[Row]) -> str:
    """The shipped profiles file for ``rows``: coefficients, clock, power and per-row residuals per stack."""
    import yaml

    fits = fit_by_family(rows)
    out: dict[str, dict] = {}
    for stack in sorted(fits):
        mine = [r for r in rows if r.stack == stack]
        prof = fits[stack].profile(stack)
        power = fits[stack].power_mw[stack]
        out[stack] = {
            "family": library_family(stack), "board": mine[0].source.split(":")[0], "clock_hz": mine[0].clock_hz,
            "active_power_mw": None if power is None else round(power, 2),
            "rows": len(mine),
            "coefficients": {k: float(f"{v:.6g}") for k, v in prof.coefficients().items()},
            "residuals_percent": {r.model: round(100 * (predict_ms(prof, r.layers, r.clock_hz) / r.latency_ms - 1), 1)
                                  for r in mine},
            "sources": [r.source for r in mine],
        }
    return HEADER + yaml.safe_dump({"profiles": out}, sort_keys=False, width=200)


if __name__ == "__main__":  # pragma: no cover - regenerates nas/latency_profiles.yaml
    import sys

    print(profiles_yaml(read_mlperf_csv(Path(sys.argv[1]))), end="")
