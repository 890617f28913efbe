"""The ground truth for memory: the TensorFlow Lite Micro host interpreter (``tflite_micro``).

:mod:`nas.arena` predicts a model's arena (the greedy planner emulated and a calibrated tail); this module
asks the real runtime. ``tflite_micro`` is its own C++ extension and imports no TensorFlow, so the search
coordinator and ``nas profile`` can measure without loading TensorFlow.

Why a child process: on some arenas that are too small, ``tflite_micro``'s interpreter does not raise but
crashes the whole process with SIGSEGV inside ``runtime.Interpreter.__init__`` (it logs "Failed to
allocate temp memory ... Failed to populate a temp TfLiteTensor struct from flatbuffer data!" and a kernel
then reads the missing tensor; ``shared/bugs/tflm_segfault_small_arena.tflite`` at 30,000 bytes). So an
arena that may not fit is only ever tried in a child process, :class:`ArenaProber`, where
a death by signal is simply the answer "does not fit". One child serves a whole bisection and is restarted
only after a crash, so a search costs one interpreter start-up more than in-process probing.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Mapping

import numpy as np

from nas.arena import ARENA_ALIGNMENT, estimate_arena, load_bytes, read_graph

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
#: The generous first arena is tried in-process only when it is at least this many times the estimate
#: (:func:`nas.arena.estimate_arena`: exact head, tail within 2 % on every model seen), i.e. when it cannot
#: be too small, the only case in which TFLM can crash.
_IN_PROCESS_MARGIN = 2


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


def interpreter(data: bytes, arena_size: int) -> tuple[Any | None, str]:
    """Build a TFLM interpreter in this process; return (interpreter, or None when allocation failed; log).

    Only for an arena known to fit (``measure_tflm``'s ``arena_bytes`` or ``min_arena_bytes``): on some
    too-small arenas TFLM crashes the process instead of failing (module docstring); ask :func:`fits` or
    an :class:`ArenaProber` first. Errors other than TFLM's own ``RuntimeError`` propagate.
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


def _allocation_report(data: bytes, n_inputs: int, arena_size: int) -> dict[str, str]:
    """One measuring attempt: allocate, invoke once on zeros, ``print_allocations()``.

    Returns ``{"status": "ok", "log": <the allocation report>}``, ``{"status": "no-fit", "log": ...}`` when
    the arena is too small, or ``{"status": "error", "message": ...}`` for a model TFLM cannot run. A dict
    of strings because the child process sends it back as one JSON line.
    """
    try:
        interp, text = interpreter(data, arena_size)
        if interp is None:
            if _is_out_of_memory(text):
                return {"status": "no-fit", "log": text}
            return {"status": "error", "message": f"TFLM could not prepare the model (arena of {arena_size} "
                                                  f"bytes): {_one_line(text)}"}
        with CaptureStderr() as cap:
            for i in range(n_inputs):
                d = interp.get_input_details(i)
                interp.set_input(np.zeros(d["shape"], dtype=d["dtype"]), i)
            interp.invoke()
            interp.print_allocations()
    except RuntimeError as e:
        return {"status": "error", "message": f"TFLM failed to run the model: {_one_line(str(e))}"}
    except Exception as e:  # noqa: BLE001 - the wrapper's own parsing raises arbitrary errors on a broken file
        return {"status": "error", "message": f"TFLM rejected the model ({type(e).__name__}: {e})"}
    return {"status": "ok", "log": cap.text}


class ArenaProber:
    """A child process (:func:`_serve`) that tries arena sizes for one model, so a TFLM crash on a
    too-small arena kills the child, not the caller. A context manager; the child starts on the first
    question and again after each crash.

    Protocol: the model goes to the child as a file; then one request per line on its stdin
    (``fits N`` or ``measure N``), one JSON line back per request.
    """

    def __init__(self, data: bytes, n_inputs: int) -> None:
        self._data = data
        self._n_inputs = n_inputs
        self._model: IO[bytes] | None = None  # the model file the child reads, written when one first starts
        self._errors: IO[bytes] | None = None  # the child's stderr: TFLM's logs, or a Python traceback
        self._child: subprocess.Popen[str] | None = None
        self.crashes = 0  #: how many requests the child died on (each one answered "does not fit")

    def __enter__(self) -> "ArenaProber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reap(self) -> int:
        """Close the child's pipes (its loop ends on EOF) and wait for it; its exit status."""
        child, self._child = self._child, None
        assert child is not None, "_reap without a child"
        for pipe in (child.stdin, child.stdout):
            assert pipe is not None  # _start pipes both
            try:
                pipe.close()
            except BrokenPipeError:  # stdin's buffer could not be flushed into a dead child
                pass
        return child.wait()

    def close(self) -> None:
        if self._child is not None:
            self._reap()
        for f in (self._model, self._errors):
            if f is not None:
                f.close()

    def _start(self) -> subprocess.Popen[str]:
        if self._model is None:
            self._model = tempfile.NamedTemporaryFile(prefix="tinynas-tflm-", suffix=".tflite")
            self._model.write(self._data)
            self._model.flush()
            self._errors = tempfile.TemporaryFile()
        assert self._errors is not None  # created together with the model file
        self._errors.seek(0)
        self._errors.truncate()
        # The child gets this process's sys.path (as multiprocessing's spawn does), so it imports this very
        # ``nas``, whether from a checkout, a test run's root or a wheel, and nothing that this process would not.
        code = (f"import sys; sys.path[:] = {sys.path!r}; from nas.tflm import _serve; "
                f"sys.exit(_serve({self._model.name!r}, {self._n_inputs}))")
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=self._errors, text=True, bufsize=1)

    def _ask(self, request: str, arena_size: int) -> dict[str, str]:
        if self._child is None:
            self._child = self._start()
        stdin, stdout = self._child.stdin, self._child.stdout
        assert stdin is not None and stdout is not None  # _start pipes both
        try:
            stdin.write(f"{request} {arena_size}\n")
            stdin.flush()
            line = stdout.readline()
        except BrokenPipeError:
            line = ""
        if line:
            return json.loads(line)
        code = self._reap()
        if code < 0:  # killed by a signal: TFLM crashed on this arena, which therefore does not fit
            self.crashes += 1
            log.debug("TFLM child died with %s on an arena of %d bytes", signal.Signals(-code).name, arena_size)
            return {"status": "no-fit", "log": f"TFLM crashed ({signal.Signals(-code).name})"}
        assert self._errors is not None  # a child ran, so _start created it
        self._errors.seek(0)
        tail = self._errors.read().decode("utf-8", "replace").strip().splitlines()[-3:]
        raise RuntimeError(f"the TFLM child process exited with {code}: {' | '.join(tail) or 'no message'}")

    def fits(self, arena_size: int) -> bool:
        """Whether the model allocates in ``arena_size`` bytes (a crash counts as no)."""
        return self._ask("fits", arena_size)["status"] == "ok"

    def measure(self, arena_size: int) -> dict[str, str]:
        """:func:`_allocation_report` at ``arena_size``, run in the child (a crash reads as ``no-fit``)."""
        return self._ask("measure", arena_size)


def fits(model: bytes | bytearray | str | Path, arena_size: int) -> bool:
    """Whether ``model`` allocates in an arena of ``arena_size`` bytes, asked in a child process."""
    data, source = load_bytes(model)
    with ArenaProber(data, len(read_graph(data, source).main.inputs)) as prober:
        return prober.fits(arena_size)


def _in_process_is_safe(data: bytes, arena_size: int) -> bool:
    """Whether ``arena_size`` is surely big enough for an in-process attempt (see :data:`_IN_PROCESS_MARGIN`)."""
    try:
        return _IN_PROCESS_MARGIN * estimate_arena(data) <= arena_size
    except Exception as e:  # noqa: BLE001 - an op the estimate does not know: measure in the child
        log.debug("no arena estimate (%s); measuring in a child process", e)
        return False


def measure_tflm(model: bytes | bytearray | str | Path, *, find_minimum: bool = False) -> ArenaMeasurement:
    """Measure a model's arena with the real TFLM host interpreter (``tflite_micro``).

    The model is parsed and validated in Python first (:func:`read_graph`), so garbage fails with a
    ``ValueError`` naming the file rather than crashing the C++ runtime. The interpreter is built with
    a generous arena (4 MiB, doubled on allocation failure up to 64 MiB), invoked once on zeros, and
    ``print_allocations()`` is read back from the C-level stderr. A model TFLM cannot run (unsupported
    op, bad quantization) raises ``RuntimeError`` with the path and TFLM's own message.

    With ``find_minimum`` a binary search finds the smallest ``arena_size`` that still allocates; it
    can be a few bytes below ``arena_bytes`` (the recorder counts the tail's alignment padding). The
    search, and a generous arena that might be too small, run in a child process (:class:`ArenaProber`):
    TFLM can crash on a too-small arena.
    """
    data, source = load_bytes(model)
    graph = read_graph(data, source)  # raises ValueError on a corrupt flatbuffer
    n_inputs = len(graph.main.inputs)
    arena = max(_FIRST_ARENA, 2 * len(data))
    with ArenaProber(data, n_inputs) as prober:
        attempt: Callable[[int], dict[str, str]] = prober.measure
        # With find_minimum a child starts anyway, so it measures too; else this process, when that is safe.
        if not find_minimum and _in_process_is_safe(data, arena):
            attempt = lambda size: _allocation_report(data, n_inputs, size)  # noqa: E731
        while True:
            report = attempt(arena)
            if report["status"] == "error":
                raise RuntimeError(f"{source}: {report['message']}")
            if report["status"] == "ok":
                break
            if arena >= _MAX_ARENA:
                raise RuntimeError(f"{source}: TFLM could not prepare the model (arena of {arena} bytes): "
                                   f"{_one_line(report['log'])}")
            arena *= 2
        text = report["log"]
        totals = {k: int(v) for k, v in _TOTAL_RE.findall(text)}
        if set(totals) != {"total", "head", "tail"}:
            raise RuntimeError(f"{source}: no allocation summary from TFLM print_allocations(): {text!r}")
        minimum = _find_minimum_arena(prober.fits, totals["head"], totals["total"]) if find_minimum else None
        if prober.crashes:
            log.info("%s: TFLM crashed on %d too-small arena(s) in the child process", source, prober.crashes)
    categories = _CATEGORY_RE.findall(text)
    breakdown = {name: int(used) for name, used, _, _ in categories}
    counts = {name: int(n) for name, _, _, n in categories}
    result = ArenaMeasurement(totals["total"], totals["head"], totals["tail"], minimum, breakdown, counts)
    log.debug("%s: %s", source, result)
    return result


def _find_minimum_arena(fits_in: Callable[[int], bool], low: int, high: int) -> int:
    """Smallest arena size that allocates, by bisection between the head (fails) and a success."""
    while not fits_in(high):  # the reported total normally works; make sure
        high += ARENA_ALIGNMENT * 64
    lo, hi = low, high  # invariant: lo fails (an arena no bigger than the head cannot hold the tail)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits_in(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _serve(model_path: str, n_inputs: int) -> int:
    """The :class:`ArenaProber` child's loop: answer ``fits N`` / ``measure N`` lines from stdin."""
    data = Path(model_path).read_bytes()
    for line in sys.stdin:
        request, size = line.split()
        if request == "fits":
            answer = {"status": "ok" if interpreter(data, int(size))[0] is not None else "no-fit"}
        else:
            answer = _allocation_report(data, n_inputs, int(size))
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0
