"""Shared helpers of the search benchmarks (search_vs_random, vww, scaling).

* where things are: the repository, the shared VWW data and its holdout (read in place, never copied);
* what every result file records: commit, machine, load average at start and end, wall time;
* the normalised hypervolume of a feasible Pareto front (exact, 3 objectives, all minimised);
* a throw-away local PostgreSQL server, started exactly as ``tests/test_search.py`` starts one;
* a small Markdown table writer.
"""
from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared"
VWW96 = SHARED / "data" / "vww96"
HOLDOUT_VWW96 = SHARED / "holdout" / "vww96"
CONSTRAINTS = "mcu_vww.yaml"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


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
    js.write_text(json.dumps(data, indent=1, default=_jsonable) + "\n")
    md.write_text(markdown.rstrip() + "\n")
    return js, md


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    return str(v)


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


# ------------------------------------------------------------------------------------------ hypervolume


def hypervolume(points: Any, ref: Sequence[float]) -> float:
    """Exact hypervolume dominated by ``points`` (n x 3 or n x 2, every column minimised) up to ``ref``.

    Points that do not strictly dominate ``ref`` in every column add nothing and are dropped. Three
    objectives: slices along the first column, each slice's 2-D area computed by a staircase sweep
    (O(n^2 log n): fronts here have tens of points).
    """
    pts = np.asarray(points, dtype=float).reshape(-1, len(ref))
    ref = np.asarray(ref, dtype=float)
    pts = pts[np.all(pts < ref, axis=1)] if len(pts) else pts
    if len(pts) == 0:
        return 0.0
    if len(ref) == 2:
        return _area_2d(pts, ref)
    if len(ref) != 3:
        raise ValueError("hypervolume: 2 or 3 objectives")
    pts = pts[np.argsort(pts[:, 0], kind="stable")]
    total = 0.0
    for i in range(len(pts)):
        x_next = pts[i + 1, 0] if i + 1 < len(pts) else ref[0]
        width = x_next - pts[i, 0]
        if width > 0:
            total += width * _area_2d(pts[: i + 1, 1:], ref[1:])
    return float(total)


def _area_2d(pts: np.ndarray, ref: np.ndarray) -> float:
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
    area, best = 0.0, ref[1]
    for i, (a, b) in enumerate(pts):
        if b >= best:
            continue
        area += (ref[0] - a) * (best - b)
        best = b
    return float(area)


# ------------------------------------------------------------------------------------------ PostgreSQL


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_available() -> bool:
    return bool(_pg_bin("initdb") and _pg_bin("pg_ctl"))


@contextmanager
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL server on a free local port (the tests' fixture too); its URL.

    Debian's ``postgresql`` server binaries (initdb, pg_ctl); as root the server runs as user postgres.
    Trust authentication on 127.0.0.1 only, fsync off (the data is thrown away); stopped and removed at the end.
    """
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's 'postgresql' "
                           "package (apt-get install -y postgresql)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    tmp = Path(tempfile.mkdtemp(prefix="tinynas-pg-"))
    if as_postgres:
        shutil.chown(tmp, "postgres", "postgres")
    data, port = tmp / "data", _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_postgres, *cmd], check=True, capture_output=True, text=True, timeout=120)

    started = False
    try:
        run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        run(pg_ctl, "-D", str(data), "-l", str(tmp / "log.txt"), "-w", "-t", "60", "start",
            "-o", f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off")
        started = True
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE tinynas")
        conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/tinynas"
    finally:
        if started:
            subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True,
                           timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


def postgres_version() -> str | None:
    pg = _pg_bin("postgres")
    if not pg:
        return None
    try:
        return subprocess.run([pg, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


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

