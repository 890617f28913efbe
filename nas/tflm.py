"""The ground truth for memory: the TensorFlow Lite Micro host interpreter (``tflite_micro``).

:mod:`nas.arena` predicts a model's arena (the greedy planner emulated and a calibrated tail); this module
asks the real runtime. ``tflite_micro`` is its own C++ extension and imports no TensorFlow, so the search
coordinator and ``nas profile`` can measure without loading TensorFlow.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from nas.arena import ARENA_ALIGNMENT, load_bytes, read_graph

log = logging.getLogger(__name__)




@dataclass(frozen=True)
class ArenaMeasurement:
    """What TFLM's ``RecordingMicroAllocator`` reports for one model (host build, reference kernels)."""

    arena_bytes: int  #: "Arena allocation total": the arena the model actually needs
    head_bytes: int  #: "Arena allocation head": the greedy planner's non-persistent section
    tail_bytes: int  #: "Arena allocation tail": persistent runtime structures
    min_arena_bytes: int | None = None  #: smallest ``arena_size`` that allocates (``find_minimum``)
    #: the recorder's per-category lines: name -> bytes used (with alignment overhead)
    breakdown: Mapping[str, int] = field(default_factory=dict, compare=False)
    #: the recorder's per-category lines: name -> number of allocations
    counts: Mapping[str, int] = field(default_factory=dict, compare=False)


_TOTAL_RE = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
_CATEGORY_RE = re.compile(
    r"'([^']+)' used (\d+) bytes with alignment overhead \(requested (\d+) bytes for (\d+)"
)
#: First arena tried, and the largest one tried before giving up (the wrapper mallocs it).
_FIRST_ARENA = 4 << 20
_MAX_ARENA = 64 << 20


class CaptureStderr:
    """Redirect file descriptor 2 to a temporary file: TFLM logs through C ``stderr``, not Python's."""

    def __enter__(self) -> "CaptureStderr":
        self._tmp = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._tmp.fileno(), 2)
        self.text = ""
        return self

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._tmp.seek(0)
        self.text = self._tmp.read().decode("utf-8", "replace")
        self._tmp.close()


def _interpreter(data: bytes, arena_size: int) -> tuple[Any | None, str]:
    """Build a TFLM interpreter; return (interpreter, or None when allocation failed; runtime log).

    Errors other than TFLM's own ``RuntimeError`` propagate (the caller adds the model's name).
    """
    from tflite_micro import runtime

    with CaptureStderr() as cap:
        try:
            interp = runtime.Interpreter.from_bytes(data, arena_size=arena_size)
        except RuntimeError:
            interp = None
    return interp, cap.text


def _one_line(text: str) -> str:
    """TFLM's multi-line log as one line for an exception message."""
    return " | ".join(line.strip() for line in text.splitlines() if line.strip()) or "no message"


def _is_out_of_memory(log_text: str) -> bool:
    return any(s in log_text for s in ("Failed to resize buffer", "Failed to allocate", "missing:"))


def measure_tflm(model: bytes | bytearray | str | Path, *, find_minimum: bool = False) -> ArenaMeasurement:
    """Measure a model's arena with the real TFLM host interpreter (``tflite_micro``).

    The model is parsed and validated in Python first (:func:`read_graph`), so garbage fails with a
    ``ValueError`` naming the file rather than crashing the C++ runtime. The interpreter is built with
    a generous arena (4 MiB, doubled on allocation failure up to 64 MiB), invoked once on zeros, and
    ``print_allocations()`` is read back from the C-level stderr. A model TFLM cannot run (unsupported
    op, bad quantization) raises ``RuntimeError`` with the path and TFLM's own message.

    With ``find_minimum`` a binary search finds the smallest ``arena_size`` that still allocates; it
    can be a few bytes below ``arena_bytes`` (the recorder counts the tail's alignment padding).
    """
    data, source = load_bytes(model)
    graph = read_graph(data, source)  # raises ValueError on a corrupt flatbuffer
    arena = max(_FIRST_ARENA, 2 * len(data))
    try:
        while True:
            interp, text = _interpreter(data, arena)
            if interp is not None:
                break
            if not _is_out_of_memory(text) or arena >= _MAX_ARENA:
                raise RuntimeError(f"{source}: TFLM could not prepare the model (arena of {arena} bytes): "
                                   f"{_one_line(text)}")
            arena *= 2
        with CaptureStderr() as cap:
            for i in range(len(graph.main.inputs)):
                d = interp.get_input_details(i)
                interp.set_input(np.zeros(d["shape"], dtype=d["dtype"]), i)
            interp.invoke()
            interp.print_allocations()
    except RuntimeError as e:
        if str(e).startswith(source):
            raise
        raise RuntimeError(f"{source}: TFLM failed to run the model: {_one_line(str(e))}") from e
    except Exception as e:  # the wrapper's own parsing (struct.error, ...) on a subtly broken file
        raise RuntimeError(f"{source}: TFLM rejected the model ({type(e).__name__}: {e})") from e
    totals = {k: int(v) for k, v in _TOTAL_RE.findall(cap.text)}
    if set(totals) != {"total", "head", "tail"}:
        raise RuntimeError(f"{source}: no allocation summary from TFLM print_allocations(): {cap.text!r}")
    categories = _CATEGORY_RE.findall(cap.text)
    breakdown = {name: int(used) for name, used, _, _ in categories}
    counts = {name: int(n) for name, _, _, n in categories}
    minimum = _find_minimum_arena(data, totals["head"], totals["total"]) if find_minimum else None
    result = ArenaMeasurement(totals["total"], totals["head"], totals["tail"], minimum, breakdown, counts)
    log.debug("%s: %s", source, result)
    return result


def _find_minimum_arena(data: bytes, low: int, high: int) -> int:
    """Smallest arena size that allocates, by bisection between the head (fails) and a success."""
    while _interpreter(data, high)[0] is None:  # the reported total normally works; make sure
        high += ARENA_ALIGNMENT * 64
    lo, hi = low, high  # invariant: lo fails (an arena no bigger than the head cannot hold the tail)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _interpreter(data, mid)[0] is not None:
            hi = mid
        else:
            lo = mid
    return hi
