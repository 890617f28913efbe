"""``nas calibrate``: a per-op latency profile fitted to a user's own board, written as a constraint file.

A user times a few models on their board and lists them in a CSV (header ``model,latency_ms[,energy_mj]``;
``model`` a ``.tflite`` path, relative to the CSV's folder, or a spec: preset, string or spec file). The
fit starts from the ``--constraints`` file's model and fits, by least squares on relative errors:

* ``scale`` (few rows): one factor on the base profile's coefficients (a linear base: all op classes at its
  MACs per cycle). What three or four timings can support;
* ``all`` (many rows): every coefficient of :data:`nas.latency.COEFFICIENTS` that the rows exercise (a class
  no row has MACs in keeps the base value), non-negative (an active-set loop: a negative one is pinned at 0).

``auto`` picks ``all`` when there are at least two rows more than coefficients to fit, else ``scale``. The
measured times are inference only; the base file's fixed costs are kept. With an ``energy_mj`` column the
inference power is the mean energy / latency of those rows, else the base file's.
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from nas import latency, yamlio
from nas.errors import UserError
from nas.latency import COEFFICIENTS, OP_CLASSES, CostLayer, CostProfile

log = logging.getLogger(__name__)

FIT_MODES = ("auto", "scale", "all")


@dataclass(frozen=True)
class Measurement:
    """One timed model: what it is, its cost layers, measured ms and (optional) mJ."""

    model: str
    layers: tuple[CostLayer, ...]
    latency_ms: float
    energy_mj: Optional[float]


@dataclass(frozen=True)
class Calibration:
    """The fitted profile, the mode used, the inference power and each row's predicted ms."""

    profile: CostProfile
    mode: str
    power_mw: float
    predicted_ms: tuple[float, ...]
    rows: tuple[Measurement, ...]


def _number(text: Any, source: str, field: str, what: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise UserError(source, field, f"a positive number ({what}), got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(source, field, f"a positive number ({what}), got {text!r}")
    return value


def _layers(model: str, base: Path, source: str, field: str) -> tuple[CostLayer, ...]:
    """The cost layers of a row's model: a ``.tflite`` graph, or a spec's analytic graph."""
    from nas import arena, profile, tflite_report
    from nas.spec import load_spec

    path = Path(model) if Path(model).is_absolute() else base / model
    if model.endswith(".tflite"):
        if not path.is_file():
            raise UserError(source, field, f"an existing .tflite file, got {model!r} (looked at {path})")
        try:
            graph = arena.read_graph(path.read_bytes(), str(path))
        except ValueError as e:
            raise UserError(source, field, f"a TensorFlow Lite flatbuffer ({e})") from None
        unknown = sorted({op.kind for op in graph.main.ops} - set(tflite_report.KNOWN_OPS))
        if unknown:
            raise UserError(source, field, f"a model of operators tinynas can count; {model} has {', '.join(unknown)}")
        return latency.layers_from_tflite_graph(graph)
    try:
        spec = load_spec(str(path) if path.is_file() else model)
    except UserError as e:
        raise UserError(source, field, f"a .tflite path or a spec ({e.expected})") from None
    return tuple(profile.estimate(spec).layers)


def read_measurements(csv_path: Path) -> list[Measurement]:
    """The rows of a measurements CSV, validated: one-line errors name the file, the row and the column."""
    source = str(csv_path)
    if not csv_path.is_file():
        raise UserError(source, "", "an existing CSV file of measurements (model,latency_ms[,energy_mj])")
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "model" not in header or "latency_ms" not in header:
            raise UserError(source, "header", f"the columns model,latency_ms[,energy_mj]; got {','.join(header)!r}")
        rows = []
        for n, raw in enumerate(reader, start=2):
            r = {str(k).strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not r.get("model"):
                raise UserError(source, f"line {n}: model", "a .tflite path or a spec; it is empty")
            ms = _number(r.get("latency_ms", ""), source, f"line {n}: latency_ms", "measured milliseconds")
            mj = r.get("energy_mj") or None
            energy = None if mj is None else _number(mj, source, f"line {n}: energy_mj", "measured millijoules")
            rows.append(Measurement(r["model"], _layers(r["model"], csv_path.parent, source, f"line {n}: model"),
                                    ms, energy))
    if not rows:
        raise UserError(source, "", "at least one measured model; the file has a header only")
    return rows


def _base_profile(target: Any) -> CostProfile:
    """Where the fit starts: the target's per-op profile, or its linear model written as one."""
    if target.cost is not None:
        return target.cost
    k = 1.0 / target.macs_per_cycle
    return CostProfile("linear", dict.fromkeys(OP_CLASSES, k), 0.0, 0.0)


def _design(rows: Sequence[Measurement]) -> np.ndarray:
    """Per row, what each coefficient multiplies: MACs per class, operators, element-wise elements."""
    from nas.latency_fit import class_totals

    return np.array([[class_totals(r.layers)[c] for c in COEFFICIENTS] for r in rows], dtype=float)


def fit(rows: Sequence[Measurement], target: Any, mode: str = "auto") -> Calibration:
    """Fit a profile on ``rows`` starting from ``target``'s model (see the module docstring for the modes)."""
    base = _base_profile(target)
    base_k = np.array([base.coefficients()[c] for c in COEFFICIENTS])
    cycles = np.array([r.latency_ms / 1000.0 * target.clock_hz for r in rows])
    x = _design(rows)
    used = [i for i in range(len(COEFFICIENTS)) if x[:, i].any()]
    if mode == "auto":
        mode = "all" if len(rows) >= len(used) + 2 else "scale"
    if mode == "scale":
        pred = x @ base_k
        k = base_k * math.exp(float(np.mean(np.log(cycles / pred))))
    else:
        k = base_k.copy()
        free = list(used)
        while free:
            w = 1.0 / cycles  # relative errors: every row weighs the same whatever its size
            fixed = x @ np.where(np.isin(np.arange(k.size), free), 0.0, k)
            sol, *_ = np.linalg.lstsq(x[:, free] * w[:, None], (cycles - fixed) * w, rcond=None)
            if (sol >= 0).all():
                k[free] = sol
                break
            worst = free[int(np.argmin(sol))]
            k[worst] = 0.0
            free.remove(worst)
    prof = CostProfile.from_coefficients("calibrated", dict(zip(COEFFICIENTS, (float(v) for v in k))))
    energies = [r.energy_mj / r.latency_ms * 1000.0 for r in rows if r.energy_mj is not None]
    power = float(np.mean(energies)) if energies else float(target.inference_power_mw)
    predicted = tuple(prof.cycles(r.layers) / target.clock_hz * 1000.0 for r in rows)
    return Calibration(prof, mode, power, predicted, tuple(rows))


def constraints_yaml(cal: Calibration, target: Any, csv_path: Path) -> str:
    """The new constraint file: the base file's name, runtime and limits, hardware from the calibration."""
    import yaml

    base = yamlio.load(Path(target.path).read_text(encoding="utf-8"), target.path)
    hardware = {"latency_model": "per_op",
                "coefficients": {k: float(f"{v:.6g}") for k, v in cal.profile.coefficients().items()},
                "clock_hz": target.clock_hz, "inference_power_mw": float(f"{cal.power_mw:.6g}"),
                "fixed_latency_ms": target.fixed_latency_ms, "fixed_energy_mj": target.fixed_energy_mj}
    lines = [f"# GENERATED by nas calibrate {csv_path} --constraints {target.path}",
             f"# fit: {cal.mode} on {len(cal.rows)} measured row(s); coefficients in cycles per MAC (by op class), per",
             "# operator (overhead) and per element-wise element; residuals (predicted / measured - 1):"]
    lines += [f"#   {r.model}: measured {r.latency_ms:g} ms, predicted {p:.4g} ms, {100 * (p / r.latency_ms - 1):+.1f}%"
              for r, p in zip(cal.rows, cal.predicted_ms)]
    lines.append("# inference power: " + ("mean energy / latency of the rows with energy_mj" if any(
        r.energy_mj is not None for r in cal.rows) else f"kept from {target.path}"))
    data = {"name": f"{base.get('name', target.name)} (calibrated)", "runtime": base["runtime"],
            "limits": base["limits"], "hardware": hardware}
    return "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False)
