"""The explorer's data side, without Streamlit: open a run, tabulate its trials, re-check them, filter, find the front.

Everything about a trial comes from :mod:`nas.results` (``open_run`` / ``TrialRecord`` / ``pareto_mask``), the one
reader of runs, so the explorer, ``nas pareto`` and ``nas export`` agree on a trial's figures and on the front.

* :func:`load_source` opens a run directory, a ``study.db`` file or a storage URL (one of whose studies is chosen;
  a study's run directory is found from the ``run_dir`` attribute ``nas search`` writes on it) and returns a
  picklable :class:`Loaded` (what Streamlit's cache keeps). Every failure a user can cause becomes an
  :class:`AppError` with a one-line message.
* :func:`trial_frame` makes one row per trial (pandas) with the figures the charts need, re-evaluated against
  another constraint file when one is chosen: latency and energy from that target's model and the trial's MACs,
  memory and flash from the stored measurements (or the stored analytic estimate for untrained trials), and the
  limits checked with :meth:`nas.hardware.Target.check`. No retraining, no model files read.
* :func:`filter_mask` and :func:`front_mask` apply the sliders and find the Pareto front of what is left with
  :func:`nas.results.pareto_mask` (sort-based, O(n log n)).
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from nas import finalize, results, rundir
from nas.errors import UserError
from nas.metrics import intervals_overlap, split_name
from nas.storage import dispose, open_storage, study_order

# Trial categories, in drawing order (the front is drawn last, on top).
CATEGORIES = ("feasible", "infeasible", "rejected", "failed", "running", "front")
CATEGORY_LABELS = {
    "front": "Pareto front",
    "feasible": "feasible (trained)",
    "infeasible": "trained, breaks a limit",
    "rejected": "rejected on paper (never trained)",
    "failed": "failed / interrupted / unused",
    "running": "running",
}
TRAINED_CATEGORIES = ("front", "feasible", "infeasible")
FILTER_COLUMNS = {  # slider name -> (column, unit)
    "memory": ("memory_kb", "KB"),
    "macs": ("macs_m", "M MACs"),
    "latency": ("latency_ms", "ms"),
    "energy": ("energy_mj", "mJ"),
    "metric": ("metric", ""),
}
DERIVED_COLOURS = {"macs_m": "MACs (M)", "latency_ms": "latency (ms)", "flash_kb": "flash (KB)",
                   "quant_delta": "INT8 - float metric", "train_seconds": "training time (s)"}
PARAM_PREFIX = "p:"


class AppError(Exception):
    """Something the user can fix (a wrong path, an unreachable database...): shown as one message."""


# --------------------------------------------------------------------------------------------- loading


@dataclass
class Loaded:
    """A run (or a bare study) as plain, picklable data: what the app caches."""

    source: str
    url: str                               # storage URL without its password
    study_name: str
    studies: list[str]                     # every study in the same storage
    records: list[results.TrialRecord]
    metric_name: str
    higher_is_better: bool
    run_dir: str | None = None             # None: the study's run directory is not on this machine
    run_id: str | None = None
    budget: int | None = None
    target_path: str | None = None         # the run's own copy of its constraint file
    target_name: str | None = None
    runtime: str | None = None
    dataset: str | None = None
    seconds: float = 0.0                   # how long the read took
    note: str | None = None                # a warning to show (e.g. no run directory here)
    finalized: dict[int, Any] = field(default_factory=dict)  # trial -> its chosen nas.finalize.FinalModel
    loaded_at: float = field(default_factory=time.time)

    def fingerprint(self) -> tuple[int, tuple[tuple[str, int], ...]]:
        """Changes when a trial is added or changes status: what auto-refresh compares."""
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r.status] = counts.get(r.status, 0) + 1
        return len(self.records), tuple(sorted(counts.items()))

    def record(self, number: int) -> results.TrialRecord | None:
        for r in self.records:
            if r.number == number:
                return r
        return None

    @property
    def running(self) -> int:
        return sum(1 for r in self.records if r.status == "running")

    def summary(self) -> results.Summary:
        return results.summarize(self.records, self.budget or 0, self.metric_name, self.higher_is_better)


def is_url(text: str) -> bool:
    return "://" in text


def _first_line(e: BaseException) -> str:
    """``Type: first line`` of the innermost cause (Optuna wraps driver errors in a vague StorageInternalError)."""
    seen = set()
    while (inner := e.__cause__ or e.__context__) is not None and id(e) not in seen:
        seen.add(id(e))
        e = inner
    text = [line for line in str(e).strip().splitlines() if line.strip()]
    if text and text[0].startswith("(") and ")" in text[0]:  # SQLAlchemy's "(psycopg2.OperationalError) ..."
        text[0] = text[0].split(")", 1)[1].strip() or text[0]
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _storage(url: str) -> Any:
    """An RDB storage that never creates tables (looking must not write) and gives up on a dead host quickly."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if not db.is_file():
            raise AppError(f"No study database at {db}: the file does not exist.")
    try:
        return open_storage(url, read_only=True)
    except Exception as e:  # noqa: BLE001 - driver / URL / connection errors
        why = _first_line(e)
        if "version_info" in why:  # reachable, but no Optuna tables: nothing was ever written there
            raise AppError(f"The storage {results.redact(url)} holds no Optuna study yet (no Optuna tables): has "
                           f"nas search --storage started on it?") from None
        raise AppError(f"Cannot open the storage {results.redact(url)}: {why}") from None


def list_studies(url: str) -> list[str]:
    """Names of the studies in a storage, oldest first; an :class:`AppError` when it cannot be read."""
    storage = _storage(url)
    try:
        return [s.study_name for s in sorted(storage.get_all_studies(), key=study_order)]
    except Exception as e:  # noqa: BLE001 - any failure to read the storage is shown in the page, not as a traceback
        raise AppError(f"Cannot read the studies in {results.redact(url)} (is it an Optuna storage, and is the "
                       f"database reachable?): {_first_line(e)}") from None
    finally:
        dispose(storage)


def load_source(source: str, study: str | None = None, storage: str | None = None) -> Loaded:
    """Open what the user named: a run directory, a ``study.db`` file or a storage URL (``study`` picks one).

    ``storage`` overrides the storage URL: a run directory's (run.yaml keeps it without its password) or the
    one given as ``source`` (e.g. ``source`` without the password, ``storage`` with it).
    """
    t0 = time.perf_counter()
    text = (source or "").strip()
    if not text:
        raise AppError("No run given: enter a run directory (made by nas search) or a storage URL in the sidebar.")
    if is_url(text):
        # ``storage``: the same URL with its password (kept off the command line and out of the page)
        loaded = _load_from_storage(storage or text, study, results.redact(text))
    else:
        path = Path(text).expanduser()
        if path.is_file() and path.suffix == ".db":
            loaded = _load_from_storage(f"sqlite:///{path.resolve()}", study, text)
        elif not path.exists():
            raise AppError(f"{path}: no such run directory (give the folder nas search wrote, with run.yaml).")
        else:
            run = _open_run(path, storage)
            studies = _studies_or(run.url, [run.study_name])
            if study and study != run.study_name and study in studies:
                loaded = _load_from_storage(run.url, study, text)
            else:
                loaded = _from_run(run, text, studies)
    loaded.seconds = time.perf_counter() - t0
    return loaded


def _studies_or(url: str, default: list[str]) -> list[str]:
    try:
        return list_studies(url) or default
    except AppError:
        return default


def _open_run(path: Path, storage: str | None) -> results.Run:
    try:
        return results.open_run(path, storage)
    except UserError as e:
        raise AppError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - a damaged study.db, a dropped connection
        raise AppError(f"{path}: cannot read this run ({_first_line(e)})") from None


def _from_run(run: results.Run, source: str, studies: list[str]) -> Loaded:
    try:
        records = run.trials()
    except Exception as e:  # noqa: BLE001 - a broken study record is shown in the page, not as a traceback
        raise AppError(f"{run.path}: cannot read the trials of study {run.study_name} ({_first_line(e)})") from None
    name, higher = run.metric
    cfg = run.config
    target = cfg.target or {}
    return Loaded(source=source, url=results.redact(run.url), study_name=run.study_name, studies=studies,
                  records=records, metric_name=name, higher_is_better=higher, run_dir=str(run.path),
                  run_id=run.run_id, budget=run.budget, target_path=str(run.path / rundir.CONSTRAINTS_FILE),
                  target_name=target.get("name"), runtime=target.get("runtime"), dataset=cfg.dataset,
                  finalized=finalize.chosen(finalize.read_finalized(run.path), higher))


def _load_from_storage(url: str, study: str | None, source: str) -> Loaded:
    import optuna

    studies = list_studies(url)
    if not studies:
        raise AppError(f"The storage {results.redact(url)} holds no study yet (has nas search started?).")
    name = study if study in studies else studies[-1]
    storage = _storage(url)
    try:
        try:
            st = optuna.load_study(study_name=name, storage=storage)
            run_dir = st.user_attrs.get(rundir.STUDY_RUN_DIR_ATTR)
        except Exception as e:  # noqa: BLE001 - driver / connection errors are shown in the page
            raise AppError(f"Cannot read study '{name}' in {results.redact(url)}: {_first_line(e)}") from None
        if run_dir and (Path(run_dir) / rundir.RUN_FILE).is_file():
            run = _open_run(Path(run_dir), url)
            if run.study_name == name:
                return _from_run(run, source, studies)
        # No run directory here (another machine wrote it): the trials still tell their figures.
        try:
            trials = sorted(st.get_trials(deepcopy=False), key=lambda t: t.number)
            records = [results.record_from_trial(t) for t in trials]
            higher = st.directions[0].name == "MAXIMIZE"
        except Exception as e:  # noqa: BLE001 - a broken study record is shown in the page, not as a traceback
            raise AppError(f"Cannot read the trials of study '{name}' in {results.redact(url)}: "
                           f"{_first_line(e)}") from None
    finally:
        dispose(storage)
    metric = next((r.metric_name for r in records if r.metric_name), "metric")
    return Loaded(source=source, url=results.redact(url), study_name=name, studies=studies, records=records,
                  metric_name=metric, higher_is_better=higher,
                  note=(f"The run directory of study '{name}' ({run_dir or 'not recorded'}) is not on this machine: "
                        f"its trials are shown, but the run's constraint file and the trained models (export) are "
                        f"not available. Pick a constraint file to check the limits."))


# --------------------------------------------------------------------------------------------- the table


def _cost_layers(spec: str | None, target: Any) -> Any:
    """The operator graph a per-op target's latency needs (None for a linear target: MACs are enough)."""
    return spec_profile(spec).layers if spec and getattr(target, "cost", None) is not None else None


@functools.lru_cache(maxsize=8192)
def spec_profile(spec: str) -> Any:
    """The analytic profile of a spec string (per-layer activation memory, peak layer...), cached."""
    from nas import profile
    from nas.spec import parse_spec_string

    return profile.estimate(parse_spec_string(spec))


def load_target(path_or_name: str) -> Any:
    from nas.hardware import load_target as load

    try:
        return load(path_or_name)
    except UserError as e:
        raise AppError(str(e)) from None


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def trial_frame(loaded: Loaded, target: Any = None) -> pd.DataFrame:
    """One row per trial. ``target``: a :class:`nas.hardware.Target` to re-evaluate against (None: the run's own
    checks, as stored).

    Columns: ``number status category spec metric metric_lo metric_hi metric_n metric_split float_metric
    memory_kb memory_basis flash_kb macs_m latency_ms
    energy_mj fits violations trial_dir model_path reason train_seconds quant_delta hover`` and ``p:<param>`` for
    every search parameter. ``memory_kb`` is the measured peak memory for trained trials (TFLM arena, or the
    IMX500 memory model) and the analytic estimate for the others; ``memory_basis`` says which.
    """
    recs = loaded.records
    status = np.array([r.status for r in recs], dtype=object)
    trained = status == "trained"
    df = pd.DataFrame({
        "number": np.array([r.number for r in recs], dtype=int),
        "status": status,
        "spec": [r.spec or "" for r in recs],
        "metric": _floats([r.int8_metric for r in recs]),
        "metric_lo": _floats([r.int8_interval[0] if r.int8_interval else None for r in recs]),
        "metric_hi": _floats([r.int8_interval[1] if r.int8_interval else None for r in recs]),
        "metric_n": _floats([r.metric_samples for r in recs]),
        "metric_split": [r.metric_split or "" for r in recs],
        "float_metric": _floats([r.float_metric for r in recs]),
        "macs_m": _floats([r.macs for r in recs]) / 1e6,
        "trial_dir": [r.trial_dir for r in recs],
        "model_path": [r.model_path for r in recs],
        "reason": [r.reason or "" for r in recs],
        "train_seconds": _floats([r.train_seconds for r in recs]),
    })
    df["quant_delta"] = df["metric"] - df["float_metric"]
    finals = [loaded.finalized.get(r.number) for r in recs]
    df["final_test"] = _floats([f.test_metric if f else None for f in finals])
    df["final_lo"] = _floats([f.test_interval[0] if f and f.test_interval else None for f in finals])
    df["final_hi"] = _floats([f.test_interval[1] if f and f.test_interval else None for f in finals])
    df["final_n"] = _floats([f.test_samples if f else None for f in finals])
    measured = _floats([r.memory_bytes for r in recs])
    estimated = _floats([r.estimated_memory_bytes for r in recs])
    run_runtime = loaded.runtime or "tflm"
    if target is None:
        memory = np.where(trained & ~np.isnan(measured), measured, estimated)
        basis = np.where(trained & ~np.isnan(measured), "measured", "estimated")
        flash = np.where(trained, _floats([r.tflite_bytes for r in recs]),
                         _floats([r.estimated_flash_bytes for r in recs]))
        df["latency_ms"] = _floats([r.latency_ms for r in recs])
        df["energy_mj"] = _floats([r.energy_mj for r in recs])
        fits = np.array([not r.violations and r.status not in ("running",) and r.macs is not None for r in recs],
                        dtype=bool)
        violations = [", ".join(r.violations) for r in recs]
    else:
        memory, basis, flash, fits, violations = _reevaluate(recs, trained, measured, estimated, run_runtime, target)
        df["latency_ms"] = [np.nan if r.macs is None else target.latency_ms(r.macs, _cost_layers(r.spec, target))
                            for r in recs]
        df["energy_mj"] = [np.nan if r.macs is None else target.energy_mj(r.macs, _cost_layers(r.spec, target))
                           for r in recs]
    df["memory_kb"] = memory / 1024.0
    df["memory_basis"] = basis
    df["flash_kb"] = flash / 1024.0
    df["fits"] = fits
    df["violations"] = violations
    category = np.full(len(recs), "failed", dtype=object)
    category[trained & fits] = "feasible"
    category[trained & ~fits] = "infeasible"
    category[status == "rejected"] = "rejected"
    category[status == "running"] = "running"
    df["category"] = category
    names: list[str] = []
    for r in recs:
        for k in r.params:
            if k not in names:
                names.append(k)
    for k in names:
        df[PARAM_PREFIX + k] = pd.Series([r.params.get(k) for r in recs], dtype=object)
    df["hover"] = hover_texts(df, loaded.metric_name)
    return df


def _reevaluate(recs: Sequence[results.TrialRecord], trained: np.ndarray, measured: np.ndarray,
                estimated: np.ndarray, run_runtime: str, target: Any
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Memory, its basis, flash, fits and violations of every trial on ``target``, from stored figures.

    The memory a target's runtime needs: on a TFLM target the measured TFLM arena of a trained trial (the
    estimate otherwise); on an IMX500 target the measured IMX500 figure when the run itself targeted the IMX500,
    else the analytic on-chip estimate (weights + planned activations). Flash: the real ``.tflite`` size of a
    trained trial, the estimate otherwise.
    """
    n = len(recs)
    memory = np.full(n, np.nan)
    basis = np.full(n, "estimated", dtype=object)
    flash = np.full(n, np.nan)
    fits = np.zeros(n, dtype=bool)
    violations: list[str] = []
    for i, r in enumerate(recs):
        if target.runtime == "imx500":
            if run_runtime == "imx500" and trained[i] and not np.isnan(measured[i]):
                mem, basis[i] = measured[i], "measured"
            elif run_runtime == "imx500" and not np.isnan(estimated[i]):
                mem = estimated[i]
            else:
                mem = float(spec_profile(r.spec).onchip_bytes) if r.spec else np.nan
        else:
            if trained[i] and r.tflm_arena_bytes is not None:
                mem, basis[i] = float(r.tflm_arena_bytes), "measured"
            elif run_runtime == "tflm" and not np.isnan(estimated[i]):
                mem = estimated[i]
            else:
                mem = float(spec_profile(r.spec).peak_sram_bytes) if r.spec else np.nan
        fl = r.tflite_bytes if trained[i] and r.tflite_bytes is not None else r.estimated_flash_bytes
        memory[i] = mem
        flash[i] = np.nan if fl is None else float(fl)
        if r.macs is None or np.isnan(mem) or r.status == "running":
            violations.append("unknown" if r.status != "running" else "")
            continue
        values = {"macs": r.macs, "sram_bytes": mem, "onchip_bytes": mem,
                  "flash_bytes": None if fl is None else fl,
                  "latency_ms": target.latency_ms(r.macs, _cost_layers(r.spec, target)),
                  "energy_mj": target.energy_mj(r.macs, _cost_layers(r.spec, target))}
        try:
            checks = target.check(values)
        except ValueError:
            violations.append("unknown")
            continue
        fits[i] = all(c.ok for c in checks)
        violations.append(", ".join(c.name for c in checks if not c.ok))
    return memory, basis, flash, fits, violations


def _fmt(v: float, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def interval_text(lo: float, hi: float, n: float) -> str:
    """``95% CI 0.5871-0.6150, n = 1,000``, or ``no interval`` for a trial recorded before intervals were kept."""
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return "no interval"
    count = f", n = {int(n):,}" if n is not None and np.isfinite(n) else ""
    return f"95% CI {lo:.4f}-{hi:.4f}{count}"


def front_table(front: pd.DataFrame, metric_name: str) -> pd.DataFrame:
    """The Pareto front as the explorer lists it, best metric first: each INT8 figure with its 95% interval and
    whether it is distinguishable from the best (``tied`` when the intervals overlap: not ranked)."""
    out = front[["number", "metric"]].copy()
    out["95% interval"] = [interval_text(lo, hi, n) for lo, hi, n in
                           zip(front["metric_lo"], front["metric_hi"], front["metric_n"])]
    out["vs best"] = versus_first(front)
    if front["final_test"].notna().any():
        out[f"finalized: test {metric_name}"] = front["final_test"]
        out["finalized: 95% interval"] = [interval_text(lo, hi, n) if np.isfinite(t) else "not finalized" for
                                          t, lo, hi, n in zip(front["final_test"], front["final_lo"],
                                                              front["final_hi"], front["final_n"])]
    for col in ("float_metric", "memory_kb", "flash_kb", "macs_m", "latency_ms", "energy_mj", "spec"):
        out[col] = front[col]
    return out.rename(columns={"metric": f"INT8 {metric_name}", "float_metric": f"float {metric_name}"})


def versus_first(front: pd.DataFrame) -> list[str]:
    """``best`` for the first row, then ``tied`` / ``worse`` by whether each 95% interval overlaps the first's."""
    if front.empty:
        return []
    lo0, hi0 = front["metric_lo"].iloc[0], front["metric_hi"].iloc[0]
    out = ["best"]
    for lo, hi in zip(front["metric_lo"].iloc[1:], front["metric_hi"].iloc[1:]):
        if not all(np.isfinite(v) for v in (lo, hi, lo0, hi0)):
            out.append("unknown")
        else:
            out.append("tied" if intervals_overlap((lo, hi), (lo0, hi0)) else "worse")
    return out


def front_caption(front: pd.DataFrame) -> str:
    """Which split the front's figures come from, and what 'tied' means."""
    splits = sorted({s for s in front["metric_split"] if s})
    where = " and ".join(split_name(s) for s in splits) or "an unrecorded split"
    final = (" Finalized columns: the model nas finalize retrained with a full budget, on the test split (read "
             "only to report it)." if front["final_test"].notna().any() else "")
    return (f"Search-time INT8 figures measured on the {where}. 'tied': the 95% interval overlaps the best's, so "
            f"the two models are not ranked as better and worse.{final}")


def hover_texts(df: pd.DataFrame, metric_name: str) -> list[str]:
    """The text shown when hovering a point: the trial's figures and its spec, one block per line."""
    out = []
    cols = zip(df["number"], df["category"], df["metric"], df["float_metric"], df["memory_kb"], df["memory_basis"],
               df["flash_kb"], df["macs_m"], df["latency_ms"], df["energy_mj"], df["violations"], df["spec"],
               df["status"], df["metric_lo"], df["metric_hi"], df["metric_n"], df["metric_split"])
    for n, cat, m, f, mem, basis, fl, macs, lat, en, viol, spec, status, lo, hi, count, split in cols:
        head = f"<b>trial {n}</b> · {CATEGORY_LABELS.get(cat, cat)}"
        lines = [head]
        if status == "trained":
            lines.append(f"{metric_name} INT8 {_fmt(m, '.4f')} (float {_fmt(f, '.4f')})")
            lines.append(f"{interval_text(lo, hi, count)} on the {split_name(split)}")
        lines.append(f"memory {_fmt(mem, ',.1f')} KB ({basis}) · flash {_fmt(fl, ',.1f')} KB")
        lines.append(f"MACs {_fmt(macs, ',.2f')} M · latency {_fmt(lat, ',.2f')} ms · energy {_fmt(en, '.4g')} mJ")
        if viol:
            lines.append(f"breaks: {viol}")
        if spec:
            lines.append("<span style='font-family:monospace'>" + "<br>".join(spec.split("-")) + "</span>")
        out.append("<br>".join(lines))
    return out


# --------------------------------------------------------------------------------------------- filters, front


def nice_ceil(x: float) -> float:
    """The next 'round' number at or above ``x`` (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten)."""
    if not np.isfinite(x) or x <= 0:
        return 1.0
    exp = math.floor(math.log10(x))
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        v = step * 10 ** exp
        if v >= x * (1 - 1e-12):
            return float(v)
    return float(10 ** (exp + 1))


def slider_bounds(df: pd.DataFrame, column: str, limit: float | None = None) -> tuple[float, float]:
    """Bounds of a filter slider: 0 (or the data's floor for a metric) to a round number above the data and the
    limit, so the bounds rarely move while a search adds trials."""
    values = df[column].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    hi = max([*values.tolist(), limit or 0.0, 0.0]) if len(values) or limit else 1.0
    lo = min(0.0, float(values.min())) if len(values) else 0.0
    if column == "metric" and len(values) and values.min() >= 0 and values.max() <= 1:
        return 0.0, 1.0
    return float(lo), nice_ceil(hi)


def filter_mask(df: pd.DataFrame, ranges: Mapping[str, tuple[float, float] | None]) -> np.ndarray:
    """Rows inside every slider's range; a row with no value in a filtered column (e.g. the metric of a trial
    that was never trained) is kept."""
    keep = np.ones(len(df), dtype=bool)
    for name, rng in ranges.items():
        if rng is None:
            continue
        column = FILTER_COLUMNS[name][0] if name in FILTER_COLUMNS else name
        v = df[column].to_numpy(dtype=float)
        lo, hi = rng
        eps = 1e-9 * max(1.0, abs(hi))
        keep &= np.isnan(v) | ((v >= lo - eps) & (v <= hi + eps))
    return keep


def front_mask(df: pd.DataFrame, keep: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """The Pareto-optimal feasible trained trials among the kept rows: metric (best), memory and energy (lowest).

    The same rule as :func:`nas.results.pareto_front`, through :func:`nas.results.pareto_mask`.
    """
    cand = keep & df["category"].isin(TRAINED_CATEGORIES).to_numpy() & df["fits"].to_numpy(dtype=bool)
    pts = np.column_stack([(-1.0 if higher_is_better else 1.0) * df["metric"].to_numpy(dtype=float),
                           df["memory_kb"].to_numpy(dtype=float), df["energy_mj"].to_numpy(dtype=float)])
    cand &= ~np.isnan(pts).any(axis=1)
    out = np.zeros(len(df), dtype=bool)
    idx = np.flatnonzero(cand)
    if len(idx):
        out[idx[results.pareto_mask(pts[idx])]] = True
    return out


def with_front(df: pd.DataFrame, keep: np.ndarray, higher_is_better: bool) -> pd.DataFrame:
    """The kept rows, with the front's rows re-categorised as ``front``."""
    front = front_mask(df, keep, higher_is_better)
    out = df.loc[keep].copy()
    out.loc[front[keep], "category"] = "front"
    return out


def selected_numbers(points: Sequence[Mapping[str, Any]]) -> tuple[int, ...]:
    """Trial numbers of the points a chart selection holds (each point's ``customdata`` is its trial number)."""
    out = set()
    for p in points or ():
        cd = p.get("customdata") if hasattr(p, "get") else None
        if isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        try:
            if cd is not None:
                out.add(int(cd))
        except (TypeError, ValueError):
            continue
    return tuple(sorted(out))


def colour_options(df: pd.DataFrame) -> dict[str, str]:
    """What the points can be coloured by: status, every parameter that varies, and a few derived figures."""
    opts = {"category": "status"}
    for c in df.columns:
        if c.startswith(PARAM_PREFIX) and df[c].nunique(dropna=True) > 1:
            opts[c] = c[len(PARAM_PREFIX):]
    for c, label in DERIVED_COLOURS.items():
        if c in df and df[c].notna().sum() > 1:
            opts[c] = label
    return opts


def limit_lines(target: Any) -> dict[str, tuple[float, str]]:
    """The limits that can be drawn on the charts' axes: memory (KB) and energy (mJ), with labels."""
    if target is None:
        return {}
    out: dict[str, tuple[float, str]] = {}
    mem = target.memory_limit_bytes
    if mem is not None:
        what = "on-chip" if target.runtime == "imx500" else "SRAM"
        out["memory_kb"] = (mem / 1024.0, f"{what} limit {mem / 1024:,.0f} KB")
    if target.max_energy_mj is not None:
        out["energy_mj"] = (float(target.max_energy_mj), f"energy limit {target.max_energy_mj:g} mJ")
    if target.max_latency_ms is not None:
        out["latency_ms"] = (float(target.max_latency_ms), f"latency limit {target.max_latency_ms:g} ms")
    if target.max_macs is not None:
        out["macs_m"] = (target.max_macs / 1e6, f"MAC limit {target.max_macs / 1e6:g} M")
    return out


# --------------------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class Exported:
    bundle: str
    zip_path: str
    verified: str
    seconds: float


def export_trial(run_dir: str, number: int, out_dir: str | Path, *, storage: str | None = None,
                 constraints: str | None = None) -> Exported:
    """Export one trial with ``nas export``'s own function (a zip next to the bundle) and verify the bundle."""
    from nas import export

    t0 = time.perf_counter()
    try:
        bundles = export.export(run_dir, out_dir, trial=number, storage=storage, constraints=constraints,
                                force=True, zip_bundle=True)
    except UserError as e:
        raise AppError(str(e)) from None
    bundle = bundles[0]
    try:
        v = export.verify_bundle(bundle)
        verified = (f"nas verify: OK, sha256 of {len(v.files_checked)} files match; TFLM with kTensorArenaSize "
                    f"{v.arena_size:,} B reproduced {v.samples}/{v.samples} recorded outputs")
    except export.VerifyError as e:
        verified = f"nas verify: FAILED: {e}"
    return Exported(str(bundle), str(bundle.with_name(bundle.name + ".zip")), verified, time.perf_counter() - t0)
