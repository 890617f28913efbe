"""What a user reads: one-line reasons from exceptions, byte sizes, JSON-ready values, package versions.

Each of these was written several times across the package with small differences (an ``IndexError`` on an
exception with an empty message, KB with or without the byte count); one definition keeps every message,
table and record consistent.
"""
from __future__ import annotations

import math
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

#: The packages whose versions a run and a bundle record: what it takes to reproduce a figure.
PACKAGES = ("tinynas", "tensorflow", "tf_keras", "tensorflow-model-optimization", "tflite-micro", "optuna", "numpy",
            "sqlalchemy", "psycopg2-binary")


def first_line(error: BaseException | str, *, with_type: bool = False, limit: int = 500) -> str:
    """The first non-empty line of an exception's message (or of a text), for a one-line report.

    An exception with an empty message gives its type name instead of nothing (``str(MemoryError())`` is
    ``''``), so a failed candidate always carries a reason.
    """
    text = error if isinstance(error, str) else str(error)
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    if not isinstance(error, str) and (with_type or not line):
        line = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line[:limit]


def kb(n: float | int | None) -> str:
    """``12.3 KB`` (1 KB = 1024 B, as everywhere in the project); ``-`` for a missing or NaN value."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    return f"{n / 1024:,.1f} KB"


def bytes_and_kb(n: int | None) -> str:
    """``23,040 B (22.5 KB)``: exact bytes for firmware figures, with the KB a person reads."""
    return "-" if n is None else f"{n:,} B ({n / 1024:,.1f} KB)"


def jsonable(value: Any) -> Any:
    """``json.dumps(default=jsonable)``: numpy scalars and arrays as Python values, paths as strings."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def package_versions(packages: Iterable[str] = PACKAGES) -> dict[str, str]:
    """Python and each installed package's version (packages that are not installed are left out)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kKmMgG]?)\s*$")
_COUNT_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_count(text: str) -> int:
    """A count in ``2000000``, ``2e6``, ``500k``, ``2M`` or ``1.5G``; ``ValueError`` for anything else."""
    m = _COUNT.match(str(text))
    if not m:
        raise ValueError(f"a count such as 2000000, 2M or 500k, got {text!r}")
    return int(round(float(m.group(1)) * _COUNT_SCALE[m.group(2).lower()]))


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``10m``, ``1h``, ``1h30m`` or ``2.5h``; ``ValueError`` for anything else."""
    m = _DURATION.match(str(text))
    if not m or not any(m.groups()):
        raise ValueError(f"a duration such as 10m, 1h30m or 90s, got {text!r}")
    h, mins, secs = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mins * 60 + secs
