"""Shared helpers of the search benchmarks (search_vs_random, vww, scaling).

* where things are: the repository, the shared VWW data and its holdout (read in place, never copied);
* what every result file records: commit, machine, load average at start and end, wall time;
* a small Markdown table writer.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from nas.formatting import jsonable


BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared"
VWW96 = SHARED / "data" / "vww96"
HOLDOUT_VWW96 = SHARED / "holdout" / "vww96"
CONSTRAINTS = "mcu_vww.yaml"


# ------------------------------------------------------------------------------------------ run records


def commit() -> str:
    """Short hash of the checked-out commit ('+dirty' when tracked files differ from it), or 'unknown'.

    Results in bench/results/ do not count as a difference: one benchmark's fresh results must not mark the
    next benchmark of the same run as measured on modified code.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)bench/results"], capture_output=True,
                               text=True, cwd=ROOT, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown"


def machine() -> dict[str, Any]:
    return {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(terse=True)}


class Clock:
    """Wall time and load average of one benchmark run (both ends recorded: other jobs share the machine)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.load_start = [round(v, 2) for v in os.getloadavg()]

    def record(self) -> dict[str, Any]:
        return {"started": self.started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "wall_s": round(time.perf_counter() - self.t0, 1), "loadavg_start": self.load_start,
                "loadavg_end": [round(v, 2) for v in os.getloadavg()]}


def header(name: str, quick: bool, **extra: Any) -> dict[str, Any]:
    return {"benchmark": name, "commit": commit(), "machine": machine(), "quick": quick, **extra}


def write(out_dir: Path, stem: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    js.write_text(json.dumps(data, indent=1, default=jsonable) + "\n")
    md.write_text(markdown.rstrip() + "\n")
    return js, md


def table(header_row: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header_row) + " |", "|" + "---|" * len(header_row)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}f}"


def loadavg_note(clock: dict[str, Any]) -> str:
    return (f"wall {clock['wall_s']:.0f} s; load average (1/5/15 min) {clock['loadavg_start']} at start, "
            f"{clock['loadavg_end']} at end on {os.cpu_count()} cores")


def search_env() -> None:
    """Quiet TensorFlow and Optuna in worker processes started from here."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


@contextmanager
def scratch(keep: Path | None, prefix: str) -> Iterator[Path]:
    """A directory for run directories: ``keep`` (kept) or a temporary one (removed at the end)."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finish(out_dir: Path, stem: str, out: dict[str, Any], markdown_fn: Any, plot_fn: Any, *,
           write_json: bool = True) -> str:
    """Plot, Markdown and (unless only re-rendering a recorded run) JSON of one benchmark run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = markdown_fn(out)
    out["plot"] = plot_fn(out, out_dir / f"{stem}.png")
    if not out["plot"]:
        md += "\n\n(no plot: matplotlib is not installed in this environment)"
    if write_json:
        write(out_dir, stem, out, md)
    else:
        (out_dir / f"{stem}.md").write_text(md.rstrip() + "\n")
    return md


def render_only(path: Path, markdown_fn: Any, plot_fn: Any) -> int:
    """``--render FILE.json``: rewrite the Markdown and plot of a recorded run from its JSON (no new numbers)."""
    out = json.loads(Path(path).read_text())
    md = finish(Path(path).parent, Path(path).stem, out, markdown_fn, plot_fn, write_json=False)
    print(md)
    return 0


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or None where matplotlib is missing (no plot then)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig: Any, path: Path) -> bool:
    """Write a benchmark's figure (tight layout, 120 dpi) and free it; True, for the result's ``plot`` field."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True

