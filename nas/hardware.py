"""Deployment targets: the limits a candidate must meet and a first-order model of its latency and energy.

A target is one YAML file (schema in ``nas/constraints/README.md``). The shipped ones live in the package's
``nas/constraints/`` folder (installed with the wheel) and are found by bare name (``imx500`` or
``imx500.yaml``); any other path is the user's own file. Loading validates everything up front so that a
typo in a constraints file fails in one line, naming the file, the field and what was expected
(:class:`nas.errors.UserError`), before a search spends hours on the wrong budget.

Units, one convention everywhere:

* sizes are bytes; ``1 KB = 1 KiB = 1024 bytes`` and ``1 MB = 1 MiB = 1024 * 1024 bytes`` (binary, as
  microcontroller linker maps and the IMX500 converter count), so ``250 KB`` is 256,000 bytes and the
  IMX500's 8,388,480 bytes is just under ``8 MB`` (8,388,608);
* MAC counts are decimal: ``60M = 60e6``, ``1.2G = 1.2e9``, ``500k = 500e3``;
* time in milliseconds, energy in millijoules, power in milliwatts (mW x ms = uJ).

The hardware model is deliberately simple, because the paper figures it is calibrated on are end-to-end
measurements of one network (TinyTracker) per platform::

    inference_ms  = macs / (macs_per_cycle * clock_hz) * 1000
    latency_ms    = fixed_latency_ms + inference_ms          (sensor read-out, transfer, result retrieval)
    energy_mj     = fixed_energy_mj + inference_power_mw * inference_ms / 1000

It ranks candidates of one family on one platform; it is not a cycle-accurate simulator. That linear model
(``hardware.latency_model: linear``, the default) stays for the IMX500 and the Coral, whose only data are
those end-to-end figures. A target with ``latency_model: per_op`` replaces ``inference_ms`` by the
per-operator model of :mod:`nas.latency` (cycles per MAC by op class, per operator and per element, a
shipped ``profile`` fitted on MLPerf Tiny board measurements or the user's ``coefficients``, e.g. from
``nas calibrate``), computed on the operator graph passed as ``layers``; the energy formula is the same.
The linear path ignores ``layers``, so its figures are bit for bit what they were.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from nas import latency, shipped, yamlio
from nas.errors import UserError, did_you_mean
from nas.latency import CostLayer, CostProfile

log = logging.getLogger(__name__)

RUNTIMES = ("tflm", "imx500")
ENV_CONSTRAINTS_DIR = "TINYNAS_CONSTRAINTS_DIR"

TOP_FIELDS = ("name", "runtime", "limits", "hardware")
LIMIT_FIELDS = ("sram", "flash", "onchip", "macs", "latency_ms", "energy_mj")
HARDWARE_FIELDS = ("latency_model", "profile", "coefficients", "clock_hz", "macs_per_cycle", "inference_power_mw",
                   "fixed_latency_ms", "fixed_energy_mj")
REQUIRED_HARDWARE = ("clock_hz", "macs_per_cycle", "inference_power_mw")
#: ``hardware.latency_model``: ``linear`` (MACs at one MACs-per-cycle figure; the default) or ``per_op``
#: (:mod:`nas.latency`: cycles per MAC by operator class, per operator and per element-wise element)
LATENCY_MODELS = ("linear", "per_op")

# Which limits make sense for which runtime. TFLM on an MCU has a RAM arena and a flash image; the IMX500
# has one on-chip memory for weights and activations together (the converter's "Total Memory Available On
# Chip"), so 'sram'/'flash' there (or 'onchip' on an MCU) is a mix-up worth stopping.
RUNTIME_LIMITS = {
    "tflm": ("sram", "flash", "macs", "latency_ms", "energy_mj"),
    "imx500": ("onchip", "macs", "latency_ms", "energy_mj"),
}
RUNTIME_MEMORY = {"tflm": "sram", "imx500": "onchip"}
#: Which measured figure checks which memory limit, per runtime: the value key :meth:`Target.check` reads ->
#: the figures that can stand for it, best first, each with what it is. The names are those a bundle's
#: metadata.json records (``memory.measured``), plus ``imx500_usage_bytes``: the IMX500 converter's own
#: memory report, which beats our memory model of the converted graph when the converter has run.
MEMORY_BASIS: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "tflm": {"sram_bytes": (("tflm_arena_bytes", "measured: TFLM arena (host interpreter)"),),
             "flash_bytes": (("tflite_bytes", "measured: .tflite file size"),)},
    "imx500": {"onchip_bytes": (("imx500_usage_bytes", "IMX500 converter memory report: Memory Usage"),
                                ("imx500_model_bytes", "measured: IMX500 memory model on the converted graph"))},
}

# Binary units: see the module docstring. Keys are lower case; units are matched case-insensitively.
SIZE_UNITS = {
    "": 1, "b": 1, "byte": 1, "bytes": 1,
    "k": 1024, "kb": 1024, "kib": 1024,
    "m": 1024 ** 2, "mb": 1024 ** 2, "mib": 1024 ** 2,
    "g": 1024 ** 3, "gb": 1024 ** 3, "gib": 1024 ** 3,
}
# Decimal multipliers for operation counts (MACs are counted, not addressed).
MAC_UNITS = {"": 1, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9}
HZ_UNITS = {"": 1, "hz": 1, "khz": 10 ** 3, "mhz": 10 ** 6, "ghz": 10 ** 9}

SIZE_FORM = ("a positive size in bytes: a plain integer or a number with KB/MB/GB or KiB/MiB/GiB (1 KB = 1024 B), "
             "e.g. '250 KB'")
MACS_FORM = "a positive MAC count: a plain integer or a number with k/M/G (decimal, M = 1e6), e.g. '60M' or '60e6'"

_NUMBER_WITH_UNIT = re.compile(r"^([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)$")


# --------------------------------------------------------------------------------------------- parsing


def _number_and_unit(value: Any, units: Mapping[str, float], source: str, field: str, form: str) -> tuple[float, str]:
    """Read ``value`` (a YAML int/float or text like '250 KB') as (positive finite value in base units, unit text)."""
    if isinstance(value, bool) or value is None:
        raise UserError(source, field, f"{form}, got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise UserError(source, field, f"{form}; it must be positive, got '{value}'")
        match = _NUMBER_WITH_UNIT.match(text.lstrip("+"))
        if not match or match.group(2).lower() not in units:
            raise UserError(source, field, f"{form}, got '{value}'")
        unit = match.group(2).lower()
        number = float(match.group(1)) * units[unit]
    else:
        raise UserError(source, field, f"{form}, got a {type(value).__name__}")
    if not math.isfinite(number) or number <= 0:
        raise UserError(source, field, f"{form}; it must be positive and finite, got {value!r}")
    return number, unit


def parse_size(text: Any, source: str = "", field: str = "size") -> int:
    """A byte count from ``250 KB``, ``8 MB``, ``512 KiB``, ``1.5 MB`` or a plain integer of bytes.

    Binary units only (1 KB = 1 KiB = 1024 B, 1 MB = 1024 KB): microcontroller linker maps and the IMX500
    memory report count that way, and having one reading avoids the 2.4% (KB) / 4.9% (MB) ambiguity that
    would otherwise decide whether a candidate "fits". Units are case-insensitive and always mean bytes
    (never bits). A fractional result is rounded to the nearest byte; a number without a unit (or with
    ``B``) must already be a whole number of bytes.
    """
    number, unit = _number_and_unit(text, SIZE_UNITS, source, field, SIZE_FORM)
    if SIZE_UNITS[unit] == 1 and number != int(number):
        raise UserError(source, field, f"{SIZE_FORM}; a size in bytes is a whole number, got {text!r}")
    return int(round(number))


def parse_macs(text: Any, source: str = "", field: str = "macs") -> int:
    """A MAC count from ``60M``, ``60e6``, ``1.2G``, ``500k`` or a plain integer (decimal: M = 1e6)."""
    return int(round(_number_and_unit(text, MAC_UNITS, source, field, MACS_FORM)[0]))


def _positive(value: Any, source: str, field: str, what: str, *, allow_zero: bool = False) -> float:
    """A finite number > 0 (or >= 0 for fixed costs), accepting text such as '2.67e8' that YAML 1.1 leaves a string."""
    form = f"a {'non-negative' if allow_zero else 'positive'} number ({what})"
    if isinstance(value, bool) or value is None:
        raise UserError(source, field, f"{form}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(source, field, f"{form}, got {value!r}") from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise UserError(source, field, f"{form}, got {value!r}")
    return number


def _clock(value: Any, source: str, field: str) -> float:
    """A clock frequency in Hz: a number (``800e6``) or text with a unit (``800 MHz``, ``1 GHz``)."""
    form = "a positive clock frequency in Hz, e.g. 800000000, 800e6 or '800 MHz'"
    return _number_and_unit(value, HZ_UNITS, source, field, form)[0]


# --------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class LimitCheck:
    """One limit against one measured or estimated value; ``ok`` when value <= limit."""

    name: str
    value: float
    limit: float
    unit: str
    ok: bool

    @property
    def headroom(self) -> float:
        """Limit minus value: what is left (negative when the limit is exceeded)."""
        return self.limit - self.value


# The value key check() reads for each limit, and its unit.
_CHECKS = (
    ("sram_bytes", "B"),
    ("flash_bytes", "B"),
    ("onchip_bytes", "B"),
    ("max_macs", "MACs"),
    ("max_latency_ms", "ms"),
    ("max_energy_mj", "mJ"),
)
_VALUE_KEY = {"sram_bytes": "sram_bytes", "flash_bytes": "flash_bytes", "onchip_bytes": "onchip_bytes",
              "max_macs": "macs", "max_latency_ms": "latency_ms", "max_energy_mj": "energy_mj"}


@dataclass(frozen=True)
class Target:
    """A deployment target: limits (None = no limit, sizes in bytes) and a calibrated latency/energy model."""

    name: str
    runtime: str
    path: str
    clock_hz: float
    macs_per_cycle: float
    inference_power_mw: float
    fixed_latency_ms: float = 0.0
    fixed_energy_mj: float = 0.0
    sram_bytes: Optional[int] = None
    flash_bytes: Optional[int] = None
    onchip_bytes: Optional[int] = None
    max_macs: Optional[int] = None
    max_latency_ms: Optional[float] = None
    max_energy_mj: Optional[float] = None
    latency_model: str = "linear"
    cost: Optional[CostProfile] = None  #: the per-operator profile (``latency_model: per_op``), else None

    @property
    def memory_limit_bytes(self) -> Optional[int]:
        """The working-memory budget a candidate's peak must fit: SRAM for TFLM, on-chip total for the IMX500."""
        return self.onchip_bytes if self.runtime == "imx500" else self.sram_bytes

    def memory_basis(self, measured: Mapping[str, Optional[float]]) -> dict[str, tuple[Optional[float], str]]:
        """Which measured figure checks which memory limit of this runtime: value key -> (value, what it is).

        ``measured`` holds figures by the names in :data:`MEMORY_BASIS` (``tflm_arena_bytes``,
        ``tflite_bytes``, ``imx500_model_bytes``, ``imx500_usage_bytes``); for each limit the first one given
        (not None) is taken. One table, so export and anything else that reports a limit check agree on
        what was compared with what. A limit with no figure gets None, which :meth:`check` refuses.
        """
        out: dict[str, tuple[Optional[float], str]] = {}
        for key, options in MEMORY_BASIS[self.runtime].items():
            given = [(measured[name], what) for name, what in options if measured.get(name) is not None]
            out[key] = given[0] if given else (None, options[-1][1])
        return out

    def inference_ms(self, macs: float, layers: Optional[Sequence[CostLayer]] = None) -> float:
        """Time for the network alone. Linear: MACs at the calibrated MACs/cycle and clock (``layers`` ignored).
        Per-op: the profile's cycles over ``layers`` (a spec's ``nas.profile.Profile.layers`` or a model's
        ``nas.latency.layers_from_tflite_graph``); without them, MACs alone at the pointwise rate
        (:meth:`nas.latency.CostProfile.macs_only_cycles`), for callers that only kept a MAC count."""
        if self.cost is None:
            return float(macs) / (self.macs_per_cycle * self.clock_hz) * 1000.0
        cycles = self.cost.macs_only_cycles(macs) if layers is None else self.cost.cycles(layers)
        return cycles / self.clock_hz * 1000.0

    def layer_ms(self, layers: Sequence[CostLayer]) -> list[float]:
        """Inference time of each operator (ms), in order; they sum to :meth:`inference_ms` of ``layers``."""
        if self.cost is None:
            return [self.inference_ms(layer.macs) for layer in layers]
        return [self.cost.layer_cycles(layer) / self.clock_hz * 1000.0 for layer in layers]

    def latency_ms(self, macs: float, layers: Optional[Sequence[CostLayer]] = None) -> float:
        """End-to-end time per frame: fixed costs (read-out, transfer, retrieval) plus inference."""
        return self.fixed_latency_ms + self.inference_ms(macs, layers)

    def inference_energy_mj(self, macs: float, layers: Optional[Sequence[CostLayer]] = None) -> float:
        """Energy of the inference alone: inference power over the inference time (mW x ms / 1000 = mJ)."""
        return self.inference_power_mw * self.inference_ms(macs, layers) / 1000.0

    def energy_mj(self, macs: float, layers: Optional[Sequence[CostLayer]] = None) -> float:
        """End-to-end energy per frame: fixed energy plus inference energy."""
        return self.fixed_energy_mj + self.inference_energy_mj(macs, layers)

    def limits(self) -> dict[str, float]:
        """The limits this target sets, keyed by the value key :meth:`check` reads (``macs``, ``sram_bytes``...)."""
        return {_VALUE_KEY[attr]: getattr(self, attr) for attr, _ in _CHECKS if getattr(self, attr) is not None}

    def check(self, values: Mapping[str, float]) -> list[LimitCheck]:
        """Compare ``values`` with every limit this target sets, in a fixed order.

        ``values`` may hold ``macs``, ``sram_bytes``, ``flash_bytes``, ``onchip_bytes``, ``latency_ms`` and
        ``energy_mj``; keys for limits the target does not set are ignored. A limit the target sets whose
        value is missing raises ValueError: the caller forgot to measure something, and silently passing
        would let an over-budget candidate through.
        """
        results = []
        for attr, unit in _CHECKS:
            limit = getattr(self, attr)
            if limit is None:
                continue
            key = _VALUE_KEY[attr]
            if key not in values or values[key] is None:
                raise ValueError(f"target '{self.name}' ({self.path}) limits '{key}' but no '{key}' value was given; "
                                 f"got keys {sorted(values)}")
            value = values[key]
            results.append(LimitCheck(name=key, value=value, limit=limit, unit=unit, ok=bool(value <= limit)))
        return results


# --------------------------------------------------------------------------------------------- loading


def constraints_dir() -> Path:
    """Where shipped targets live: ``$TINYNAS_CONSTRAINTS_DIR`` if set, else the package's ``nas/constraints/``."""
    return shipped.folder("constraints", ENV_CONSTRAINTS_DIR)


def shipped_targets() -> list[str]:
    """Names of the shipped targets (file stems), sorted."""
    return shipped.names(constraints_dir())


def resolve_target_path(name_or_path: str) -> Path:
    """An existing file for ``name_or_path``: the path itself, else a shipped target by bare name."""
    return shipped.resolve(name_or_path, constraints_dir(), "constraints")


def _mapping(data: Any, source: str, field: str, allowed: tuple[str, ...]) -> dict:
    """A YAML section that must be a mapping of known fields (unknown ones get a did-you-mean)."""
    if not isinstance(data, dict):
        kind = "nothing" if data is None else f"a {type(data).__name__}"
        raise UserError(source, field, f"a mapping of {', '.join(allowed)}, got {kind}")
    for key in data:
        if str(key) not in allowed:
            prefix = f"{field}." if field else ""
            raise UserError(source, f"{prefix}{key}", f"a known field ({', '.join(allowed)}); unknown field"
                            + did_you_mean(str(key), allowed))
    return data


def target_from_dict(data: Any, source: str) -> Target:
    """Validate a parsed constraints mapping and build the :class:`Target` (``source`` names it in errors)."""
    top = _mapping(data, source, "", TOP_FIELDS)
    for required in ("runtime", "limits", "hardware"):
        if required not in top:
            raise UserError(source, required, "a required field; it is missing (see nas/constraints/README.md)")

    runtime = top["runtime"]
    if runtime not in RUNTIMES:
        raise UserError(source, "runtime", f"one of {', '.join(RUNTIMES)}, got {runtime!r}"
                        + did_you_mean(str(runtime), RUNTIMES))
    name = top.get("name", Path(source).stem)
    if not isinstance(name, str) or not name.strip():
        raise UserError(source, "name", f"a non-empty string, got {name!r}")

    limits = _mapping(top["limits"], source, "limits", LIMIT_FIELDS)
    allowed = RUNTIME_LIMITS[runtime]
    for key, value in limits.items():
        if key not in allowed and value is not None:
            other = "'onchip' (the IMX500's one on-chip budget)" if runtime == "imx500" else "'sram' and 'flash'"
            raise UserError(source, f"limits.{key}", f"not a limit for runtime '{runtime}': use {other}")
    memory = RUNTIME_MEMORY[runtime]
    if limits.get(memory) is None:
        what = "peak SRAM / tensor arena" if runtime == "tflm" else "on-chip memory for weights + activations"
        raise UserError(source, f"limits.{memory}", f"a required limit for runtime '{runtime}' ({what}); it is missing")

    def size(key: str) -> Optional[int]:
        value = limits.get(key)
        return None if value is None else parse_size(value, source, f"limits.{key}")

    def optional_positive(key: str, what: str) -> Optional[float]:
        value = limits.get(key)
        return None if value is None else _positive(value, source, f"limits.{key}", what)

    hardware = dict(_mapping(top["hardware"], source, "hardware", HARDWARE_FIELDS))
    model = hardware.get("latency_model", "linear")
    if model not in LATENCY_MODELS:
        raise UserError(source, "hardware.latency_model", f"one of {', '.join(LATENCY_MODELS)}, got {model!r}"
                        + did_you_mean(str(model), LATENCY_MODELS))
    cost = None
    if model == "per_op":
        cost = _cost_profile(hardware, source)
    else:
        for key in ("profile", "coefficients"):
            if hardware.get(key) is not None:
                raise UserError(source, f"hardware.{key}", "only with 'latency_model: per_op'; the linear model "
                                                            "has one figure, macs_per_cycle")
    for required in REQUIRED_HARDWARE:
        if hardware.get(required) is None:
            raise UserError(source, f"hardware.{required}", "a required hardware figure; it is missing")

    def fixed(key: str, what: str) -> float:
        # Fixed per-frame costs default to 0: a bare MCU benchmark has no sensor pipeline to account for.
        value = hardware.get(key)
        return 0.0 if value is None else _positive(value, source, f"hardware.{key}", what, allow_zero=True)

    macs = limits.get("macs")
    return Target(
        name=name.strip(),
        runtime=runtime,
        path=str(source),
        clock_hz=_clock(hardware["clock_hz"], source, "hardware.clock_hz"),
        macs_per_cycle=_positive(hardware["macs_per_cycle"], source, "hardware.macs_per_cycle", "MACs per clock cycle"),
        inference_power_mw=_positive(hardware["inference_power_mw"], source, "hardware.inference_power_mw", "mW"),
        fixed_latency_ms=fixed("fixed_latency_ms", "ms"),
        fixed_energy_mj=fixed("fixed_energy_mj", "mJ"),
        sram_bytes=size("sram"),
        flash_bytes=size("flash"),
        onchip_bytes=size("onchip"),
        max_macs=None if macs is None else parse_macs(macs, source, "limits.macs"),
        max_latency_ms=optional_positive("latency_ms", "milliseconds"),
        max_energy_mj=optional_positive("energy_mj", "millijoules"),
        latency_model=model,
        cost=cost,
    )


def _cost_profile(hardware: dict, source: str) -> CostProfile:
    """The per-op profile of a ``latency_model: per_op`` section: a shipped ``profile`` by name or the user's
    ``coefficients``. A shipped profile also fills in its board's ``clock_hz`` and ``inference_power_mw`` when
    the file leaves them out; ``macs_per_cycle`` becomes the profile's pointwise rate (what MACs alone get)."""
    name, given = hardware.get("profile"), hardware.get("coefficients")
    if (name is None) == (given is None):
        raise UserError(source, "hardware.profile", "with 'latency_model: per_op', either a shipped profile name "
                        "or a 'coefficients' mapping (one of the two); got " + ("both" if name else "neither"))
    if name is not None:
        profiles = latency.shipped_profiles()
        if not isinstance(name, str) or name not in profiles:
            raise UserError(source, "hardware.profile", f"a shipped latency profile ({', '.join(sorted(profiles))}), "
                            f"got {name!r}" + did_you_mean(str(name), profiles))
        record = profiles[name]
        cost = CostProfile.from_coefficients(name, record["coefficients"])
        hardware.setdefault("clock_hz", record["clock_hz"])
        if record.get("active_power_mw") is not None:
            hardware.setdefault("inference_power_mw", record["active_power_mw"])
    else:
        if not isinstance(given, dict):
            raise UserError(source, "hardware.coefficients", f"a mapping of {', '.join(latency.COEFFICIENTS)}, "
                                                             f"got a {type(given).__name__}")
        for key in given:
            if str(key) not in latency.COEFFICIENTS:
                raise UserError(source, f"hardware.coefficients.{key}", f"a coefficient "
                                f"({', '.join(latency.COEFFICIENTS)}); unknown" + did_you_mean(str(key),
                                                                                              latency.COEFFICIENTS))
        values = {}
        for key in latency.COEFFICIENTS:
            if given.get(key) is None:
                raise UserError(source, f"hardware.coefficients.{key}", "a required coefficient; it is missing")
            what = "cycles per MAC" if key in latency.OP_CLASSES else (
                "cycles per operator" if key == "overhead" else "cycles per element")
            values[key] = _positive(given[key], source, f"hardware.coefficients.{key}", what,
                                    allow_zero=key not in latency.OP_CLASSES)
        cost = CostProfile.from_coefficients("coefficients", values)
    hardware.setdefault("macs_per_cycle", 1.0 / cost.cycles_per_mac["pointwise"])
    return cost


def load_target(name_or_path: str) -> Target:
    """Load and validate a target: a shipped name (``imx500``, ``imx500.yaml``) or a path to the user's YAML file."""
    path = resolve_target_path(name_or_path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(source, "", "a UTF-8 YAML text file; it is not text") from None
    except OSError as e:
        raise UserError(source, "", f"a readable constraints file ({e.strerror or e})") from None
    if not text.strip():
        raise UserError(source, "", "a YAML mapping with runtime, limits and hardware; the file is empty")
    try:
        data = yamlio.load(text, source)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise UserError(source, "", f"valid YAML ({problem}{where})") from None
    if data is None:
        raise UserError(source, "", "a YAML mapping with runtime, limits and hardware; the file holds only comments")
    if not isinstance(data, dict):
        raise UserError(source, "", f"a mapping (name, runtime, limits, hardware) at the top level, "
                                    f"got a {type(data).__name__}")
    return target_from_dict(data, source)
