"""Reading a search run: the one module through which ``nas pareto``, export and the app see a run.

A run directory (written by :mod:`nas.search`, laid out in :mod:`nas.rundir`) holds ``run.yaml`` (what was
asked), copies of the constraint and search-space files, the data set's description, the Optuna storage
(``study.db`` unless the run uses PostgreSQL) and ``trials/<n>/`` with each trained candidate's INT8 model and
metrics. This module turns the
study's trials into plain :class:`TrialRecord` rows, so every consumer agrees on what a trial's figures are
(which memory is "the" memory, what counts as feasible) and on which trials are Pareto-optimal.

The Pareto front is computed here, not with Optuna's ``best_trials`` (quadratic in the number of trials): a
lexicographic sort followed by a sweep (:func:`pareto_mask`), O(n log n) for two and three objectives.

What a trial's ``status`` means (``nas.search`` writes it as a user attribute):

==============  ==============================================================================================
``trained``     trained, converted, evaluated as INT8 and measured (Optuna state COMPLETE); ``feasible`` says
                whether the *measured* memory and flash also fit the target
``rejected``    the analytic profile broke a limit; never trained, no files, no training time (PRUNED)
``failed``      training / conversion / evaluation raised; ``reason`` says why (FAIL)
``interrupted`` cut off by a killed or stopped worker; marked FAIL on resume (FAIL)
``unused``      sampled when other workers had already used up the budget; not trained (FAIL)
``running``     in progress (RUNNING)
==============  ==============================================================================================
"""
from __future__ import annotations

import bisect
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from nas import rundir
from nas.errors import UserError
from nas.formatting import first_line
from nas.metrics import intervals_overlap, metric_for, split_name
from nas.rundir import RunConfig, TrialFiles, TrialStatus
from nas.storage import open_storage


# --------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class TrialRecord:
    """One trial as plain data. Sizes in bytes, latency in ms, energy in mJ, times in seconds."""

    number: int
    status: TrialStatus
    state: str                              # Optuna's state name
    spec: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metric_name: str | None = None
    int8_metric: float | None = None
    float_metric: float | None = None
    int8_interval: tuple[float, float] | None = None  # 95%: Wilson (accuracy) or bootstrap (gaze error)
    metric_split: str | None = None         # what the metrics were measured on: "val" in a search, "test" after
    metric_samples: int | None = None       # ... and on how many samples
    memory_bytes: int | None = None         # measured: TFLM arena (tflm) or IMX500 memory model (imx500)
    estimated_memory_bytes: int | None = None
    tflm_arena_bytes: int | None = None
    tflite_bytes: int | None = None
    estimated_flash_bytes: int | None = None
    macs: int | None = None
    params_count: int | None = None
    latency_ms: float | None = None
    energy_mj: float | None = None
    feasible: bool = False                  # trained and every limit met with measured values
    constraints: dict[str, float] = field(default_factory=dict)  # (value - limit) / limit; > 0 is a violation
    violations: list[str] = field(default_factory=list)           # names of limits broken
    reason: str | None = None
    train_seconds: float = 0.0              # time spent on the candidate (0 for rejected ones)
    timings: dict[str, float] = field(default_factory=dict)
    model_path: str | None = None           # the INT8 .tflite, when it exists
    trial_dir: str | None = None
    worker: dict[str, Any] = field(default_factory=dict)
    started: str | None = None
    finished: str | None = None
    rung: int | None = None                 # multi-fidelity: the rung this trial trained (None: single fidelity)
    candidate: int | None = None            # ... the candidate's first trial, shared by all its rungs
    rung_metric: float | None = None        # ... what the rung was judged on (float validation metric below the top)

    @property
    def is_promotion(self) -> bool:
        """A higher rung of a candidate counted at its rung 0 (not a new candidate)."""
        return self.rung is not None and self.rung > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def objectives(self) -> tuple[float | None, int | None, float | None]:
        """The search's objectives: INT8 metric, measured memory, energy per inference."""
        return self.int8_metric, self.memory_bytes, self.energy_mj


def _interval(value: Any) -> tuple[float, float] | None:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    lo, hi = _num(value[0]), _num(value[1])
    return None if lo is None or hi is None else (lo, hi)


def status_of(state: str, attrs: dict[str, Any]) -> TrialStatus:
    """The trial's status from its Optuna state and the status ``nas.search`` recorded.

    A FAIL trial whose recorded status is still ``training`` (or nothing) was cut off before it could say
    otherwise: a worker was killed, and Optuna's heartbeat or ``--resume`` marked it failed.
    """
    said = attrs.get(rundir.ATTR_STATUS)
    if state == "RUNNING":
        return TrialStatus.RUNNING
    if state == "COMPLETE":
        return TrialStatus.TRAINED
    if state == "PRUNED":
        return TrialStatus.REJECTED
    if said in (TrialStatus.FAILED, TrialStatus.UNUSED, TrialStatus.INTERRUPTED):
        return TrialStatus(said)
    return TrialStatus.INTERRUPTED


def record_from_trial(trial: Any, run_dir: Path | None = None) -> TrialRecord:
    """A :class:`TrialRecord` from an Optuna ``FrozenTrial`` (the only place that reads trial attributes)."""
    attrs = dict(trial.user_attrs)
    state = trial.state.name
    status = status_of(state, attrs)
    est = attrs.get(rundir.ATTR_ESTIMATE) or {}
    metrics = attrs.get(rundir.ATTR_METRICS) or {}
    constraints = {k: float(v) for k, v in trial.constraints.items()}
    violations = sorted(k for k, v in constraints.items() if v > 0)
    trial_dir = attrs.get(rundir.ATTR_TRIAL_DIR)
    model = None
    if trial_dir and run_dir is not None and status == TrialStatus.TRAINED:
        path = TrialFiles(Path(run_dir) / trial_dir).tflite
        model = str(path) if path.is_file() else None
    timings = metrics.get("timings") or {}
    return TrialRecord(
        number=trial.number, status=status, state=state, spec=attrs.get(rundir.ATTR_SPEC), params=dict(trial.params),
        metric_name=metrics.get("metric_name"), int8_metric=_num(metrics.get("int8_metric")),
        float_metric=_num(metrics.get("float_metric")),
        int8_interval=_interval(metrics.get("int8_interval")),
        # runs recorded before the search scored validation (tinynas <= 0.4) scored the test split
        metric_split=(metrics.get("metric_split") or "test") if metrics else None,
        metric_samples=_int(metrics.get("metric_samples") or (metrics.get("split_counts") or {}).get("test")),
        memory_bytes=_int(metrics.get("measured_memory_bytes")),
        estimated_memory_bytes=_int(est.get("memory_bytes")),
        tflm_arena_bytes=_int(metrics.get("tflm_arena_bytes")), tflite_bytes=_int(metrics.get("tflite_bytes")),
        estimated_flash_bytes=_int(est.get("flash_bytes")), macs=_int(est.get("macs")),
        params_count=_int(est.get("params")), latency_ms=_num(est.get("latency_ms")),
        energy_mj=_num(est.get("energy_mj")),
        # a rung below the top is judged on paper and in float: not a measured INT8 model that fits
        feasible=status == TrialStatus.TRAINED and not violations and metrics.get("int8_metric") is not None,
        constraints=constraints, violations=violations,
        reason=attrs.get(rundir.ATTR_REASON) or (_CUT_OFF if status == TrialStatus.INTERRUPTED else None),
        train_seconds=float(metrics.get("seconds") or 0.0),
        timings={k: float(v) for k, v in timings.items()}, model_path=model, trial_dir=trial_dir,
        worker=dict(attrs.get(rundir.ATTR_WORKER) or {}),
        started=trial.datetime_start.isoformat(timespec="seconds") if trial.datetime_start else None,
        finished=trial.datetime_complete.isoformat(timespec="seconds") if trial.datetime_complete else None,
        rung=_int(attrs.get(rundir.ATTR_RUNG)), candidate=_int(attrs.get(rundir.ATTR_CANDIDATE)),
        rung_metric=_num(metrics.get("rung_metric", metrics.get("int8_metric"))) if rundir.ATTR_RUNG in attrs else None,
    )


_CUT_OFF = "cut off before it finished: its worker was stopped or killed"


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


# --------------------------------------------------------------------------------------------- Pareto


def pareto_mask(points: Any) -> np.ndarray:
    """Which rows of ``points`` (n x k, every column minimised) no other row dominates.

    Row a dominates row b when a <= b in every column and a < b in one. Identical rows do not dominate each
    other, so duplicates of a front point are all on the front. Rows with NaN are never on it.

    Sort-based: after a lexicographic sort no row can be dominated by a later one, so one sweep decides each
    row against the front found so far. k = 1: the minima; k = 2: a running minimum (O(n log n));
    k = 3: a staircase of the front's (2nd, 3rd) coordinates searched with bisection (O(n log n) plus list
    edits); k > 3: each row checked against the current front with one vectorised comparison.
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2:
        raise ValueError(f"pareto_mask expects an n x k array, got shape {pts.shape}")
    n, k = pts.shape
    mask = np.zeros(n, dtype=bool)
    if n == 0 or k == 0:
        return mask if k else np.ones(n, dtype=bool)
    valid = ~np.isnan(pts).any(axis=1)
    if not valid.any():
        return mask
    sub = pts[valid]
    uniq, inverse = np.unique(sub, axis=0, return_inverse=True)  # lexicographically sorted unique rows
    inverse = np.asarray(inverse).reshape(-1)
    if k == 1:
        front = uniq[:, 0] == uniq[0, 0]
    elif k == 2:
        front = _front_2d(uniq)
    elif k == 3:
        front = _front_3d(uniq)
    else:
        front = _front_kd(uniq)
    mask[np.flatnonzero(valid)] = front[inverse]
    return mask


def _front_2d(u: np.ndarray) -> np.ndarray:
    """Unique rows sorted by (a, b): a row is on the front iff its b is below every earlier row's b."""
    prev_min = np.minimum.accumulate(np.concatenate([[np.inf], u[:-1, 1]]))
    return u[:, 1] < prev_min


def _front_3d(u: np.ndarray) -> np.ndarray:
    """Unique rows sorted by (a, b, c). Every earlier row has a <= this a, so this row is dominated iff an
    earlier front row has b <= this b and c <= this c. The front's (b, c) pairs are kept as a staircase
    (b increasing, c decreasing); the entry with the largest b <= this b has the smallest such c."""
    bs: list[float] = []
    cs: list[float] = []
    out = np.zeros(len(u), dtype=bool)
    for i, (_, b, c) in enumerate(u):
        j = bisect.bisect_right(bs, b) - 1
        if j >= 0 and cs[j] <= c:
            continue
        out[i] = True
        lo = bisect.bisect_left(bs, b)
        hi = lo
        while hi < len(bs) and cs[hi] >= c:
            hi += 1
        bs[lo:hi] = [b]
        cs[lo:hi] = [c]
    return out


def _front_kd(u: np.ndarray) -> np.ndarray:
    """Unique rows in lexicographic order, each compared (vectorised) with the front so far."""
    out = np.zeros(len(u), dtype=bool)
    front = np.empty((0, u.shape[1]))
    for i, row in enumerate(u):
        if len(front) and np.any(np.all(front <= row, axis=1)):
            continue  # rows are unique, so <= everywhere means < somewhere
        out[i] = True
        front = np.vstack([front, row])
    return out


# --------------------------------------------------------------------------------------------- a run


@dataclass(frozen=True)
class Summary:
    """Counts and bests of a run (what the progress bar and the end-of-run report show)."""

    budget: int
    trained: int
    feasible: int
    rejected: int
    failed: int
    interrupted: int
    unused: int
    running: int
    metric_name: str
    higher_is_better: bool
    best_metric: float | None
    best_memory_bytes: int | None
    best_energy_mj: float | None
    train_seconds: float
    pareto: int
    rungs: dict[int, int] = field(default_factory=dict)  # multi-fidelity: trained results per rung

    @property
    def used(self) -> int:
        """Trials that used up budget: trained plus failed."""
        return self.trained + self.failed

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["used"] = self.used
        return d


def summarize(records: Sequence[TrialRecord], budget: int, metric_name: str, higher_is_better: bool) -> Summary:
    """Counts by status, the best value of each objective among feasible trials, and the front's size."""
    count = {s: 0 for s in TrialStatus}
    rungs: dict[int, int] = {}
    for r in records:
        if r.rung is not None and r.status == TrialStatus.TRAINED:
            rungs[r.rung] = rungs.get(r.rung, 0) + 1
        if not r.is_promotion:  # the counts are of candidates; a candidate's higher rungs are in ``rungs``
            count[TrialStatus(r.status)] += 1
    feasible = [r for r in records if r.feasible]
    metrics = [r.int8_metric for r in feasible if r.int8_metric is not None]
    best = (max(metrics) if higher_is_better else min(metrics)) if metrics else None
    mems = [r.memory_bytes for r in feasible if r.memory_bytes is not None]
    energies = [r.energy_mj for r in feasible if r.energy_mj is not None]
    return Summary(
        budget=budget, trained=count[TrialStatus.TRAINED], feasible=len(feasible),
        rejected=count[TrialStatus.REJECTED], failed=count[TrialStatus.FAILED],
        interrupted=count[TrialStatus.INTERRUPTED], unused=count[TrialStatus.UNUSED],
        running=count[TrialStatus.RUNNING],
        metric_name=metric_name, higher_is_better=higher_is_better, best_metric=best,
        best_memory_bytes=min(mems) if mems else None, best_energy_mj=min(energies) if energies else None,
        train_seconds=sum(r.train_seconds for r in records),
        pareto=len(pareto_front(records, higher_is_better)), rungs=dict(sorted(rungs.items())),
    )


def pareto_front(records: Iterable[TrialRecord], higher_is_better: bool) -> list[TrialRecord]:
    """The Pareto-optimal *feasible* trained trials (metric, measured memory, energy), best metric first."""
    sign = -1.0 if higher_is_better else 1.0

    def point(r: TrialRecord) -> tuple[float, int, float]:
        """The minimised objectives of one of ``rows``, every one known."""
        metric, memory, energy = r.objectives()
        assert metric is not None and memory is not None and energy is not None
        return sign * metric, memory, energy

    rows = [r for r in records if r.feasible and None not in r.objectives()]
    if not rows:
        return []
    pts = np.array([point(r) for r in rows], dtype=float)
    mask = pareto_mask(pts)
    front = [r for r, keep in zip(rows, mask) if keep]
    return sorted(front, key=lambda r: (*point(r), r.number))


def _load_study(url: str, name: str, source: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if not db.is_file():
            raise UserError(source, rundir.STUDY_DB, f"the run's study database {db}; it is missing")
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        raise UserError(source, "study_name", f"a study named '{name}' in {redact(url)}; there is none") from None
    except Exception as e:
        if isinstance(e, UserError):
            raise
        raise UserError(source, "storage",
                        f"a reachable storage at {redact(url)} ({first_line(e, with_type=True)})") from None


def redact(url: str) -> str:
    """A storage URL without its password (safe to print and to keep in run.yaml)."""
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
        if u.password is None:
            return url
        return u._replace(password=None).render_as_string(hide_password=False)  # set(password=None) keeps it
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as is (it has no password we can find)
        return url


class Run:
    """A run directory opened for reading. ``storage`` overrides run.yaml's URL (e.g. one with a password)."""

    def __init__(self, run_dir: Path | str, storage: str | None = None) -> None:
        self.path = Path(run_dir).resolve()
        self.config = RunConfig.load(self.path)
        self.url = self.config.storage_url(self.path, storage)
        self._study: Any = None

    # -- what was asked ---------------------------------------------------------------------------
    @property
    def study_name(self) -> str:
        return self.config.study_name

    @property
    def run_id(self) -> str:
        return self.config.run_id

    @property
    def budget(self) -> int:
        return int(self.config.trials)

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def metric(self) -> tuple[str, bool]:
        return metric_for(self.task)

    def target(self) -> Any:
        """The target the run was checked against (its copy of the constraint file)."""
        from nas.hardware import load_target

        return load_target(str(self.path / rundir.CONSTRAINTS_FILE))

    def space(self) -> Any:
        from nas.space import load_run_space

        return load_run_space(str(self.path / rundir.SPACE_FILE), self.config.space)

    def dataset_description(self) -> dict[str, Any]:
        return json.loads((self.path / rundir.DATASET_FILE).read_text())

    # -- the study ----------------------------------------------------------------------------------
    def study(self) -> Any:
        """The Optuna study, checked to belong to this run directory."""
        if self._study is None:
            study = _load_study(self.url, self.study_name, str(self.path))
            owner = study.user_attrs.get(rundir.RUN_ID_ATTR)
            if owner != self.run_id:
                raise UserError(str(self.path), rundir.RUN_FILE,
                                f"the study '{self.study_name}' of this run; the study with that name in "
                                f"{redact(self.url)} belongs to another run (run id {owner})")
            self._study = study
        return self._study

    def frozen_trials(self) -> list[Any]:
        return self.study().get_trials(deepcopy=False)

    def trials(self) -> list[TrialRecord]:
        """Every trial, in trial-number order."""
        return [record_from_trial(t, self.path) for t in sorted(self.frozen_trials(), key=lambda t: t.number)]

    def table(self, records: Sequence[TrialRecord] | None = None) -> list[dict[str, Any]]:
        """Trials as rows of plain values (a list of dicts: ``pandas.DataFrame(run.table())`` works)."""
        rows = []
        for r in records if records is not None else self.trials():
            d = r.to_dict()
            d.update({f"param_{k}": v for k, v in d.pop("params").items()})
            d["constraints"] = json.dumps(d["constraints"], sort_keys=True)
            d["violations"] = ",".join(d["violations"])
            d.pop("timings")
            d.pop("worker")
            rows.append(d)
        return rows

    def pareto(self, records: Sequence[TrialRecord] | None = None) -> list[TrialRecord]:
        return pareto_front(records if records is not None else self.trials(), self.metric[1])

    def summary(self, records: Sequence[TrialRecord] | None = None) -> Summary:
        name, higher = self.metric
        return summarize(records if records is not None else self.trials(), self.budget, name, higher)


def open_run(run_dir: Path | str, storage: str | None = None) -> Run:
    """Open a run directory and its study (a :class:`UserError` when it is not a run or not this run's study)."""
    run = Run(run_dir, storage)
    run.study()
    return run


def pareto_report(run: Run) -> dict[str, Any]:
    """What ``nas pareto --json`` prints: the run, its summary and its Pareto-optimal feasible trials."""
    records = run.trials()
    front = run.pareto(records)
    name, higher = run.metric
    return {
        "run_dir": str(run.path),
        "study": run.study_name,
        "target": run.config.target.get("name"),
        "dataset": run.config.dataset,
        "metric_name": name,
        "higher_is_better": higher,
        "summary": run.summary(records).to_dict(),
        "pareto": pareto_rows(front),
    }


def pareto_rows(front: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    """The front's rows for ``nas pareto --json``, best metric first, each with ``vs_best``."""
    return [_pareto_row(r, front[0]) for r in front]


def _pareto_row(r: TrialRecord, best: TrialRecord) -> dict[str, Any]:
    return {"number": r.number, "spec": r.spec, "metric_name": r.metric_name, "int8_metric": r.int8_metric,
            "int8_interval": r.int8_interval, "metric_split": r.metric_split, "metric_samples": r.metric_samples,
            "vs_best": versus_best(r, best),
            "float_metric": r.float_metric, "memory_bytes": r.memory_bytes,
            "estimated_memory_bytes": r.estimated_memory_bytes, "tflite_bytes": r.tflite_bytes, "macs": r.macs,
            "latency_ms": r.latency_ms, "energy_mj": r.energy_mj, "model_path": r.model_path}


def format_pareto(report: dict[str, Any]) -> str:
    """A readable table of :func:`pareto_report`."""
    s = report["summary"]
    metric = report["metric_name"]
    lines = [f"run {report['run_dir']} (study {report['study']}, target {report['target']}, "
             f"data {report['dataset']})",
             f"trials: {s['trained']} trained ({s['feasible']} feasible), {s['rejected']} rejected before "
             f"training, {s['failed']} failed, {s['interrupted']} interrupted; "
             + (f"{s['used']} candidates in the time or compute budget" if s["budget"] >= rundir.TIMED_TRIALS
                else f"budget {s['used']}/{s['budget']}")]
    if s.get("rungs"):
        top = max(int(k) for k in s["rungs"])
        lines.append("multi-fidelity: trained " + ", ".join(f"rung {k}: {n}" for k, n in s["rungs"].items())
                     + f"; the front holds candidates that reached the top rung ({top}) only, judged like a "
                       "single-fidelity candidate")
    lines.append("")
    if not report["pareto"]:
        lines.append("no feasible trained trial yet")
        return "\n".join(lines)
    first = report["pareto"][0]
    n = f", n = {first['metric_samples']:,}" if first["metric_samples"] else ""
    lines.append(f"INT8 {metric} on the {split_name(first['metric_split'])}{n}, with its 95% interval; 'tied': "
                 f"the interval overlaps the best's, so the two are not ranked")
    header = (f"{'#':>4}  {metric:>13}  {'95% interval':>15}  {'vs best':>7}  {'memory':>10}  {'MACs':>9}  "
              f"{'latency':>11}  {'energy':>10}  spec")
    lines.append(header)
    for p in report["pareto"]:
        ci = p["int8_interval"]
        ci_text = f"{ci[0]:.4f}-{ci[1]:.4f}" if ci else "-"
        lines.append(f"{p['number']:>4}  {p['int8_metric']:>13.4f}  {ci_text:>15}  {p['vs_best']:>7}  "
                     f"{p['memory_bytes'] / 1024:>7.1f} KB  {p['macs'] / 1e6:>7.2f} M  {p['latency_ms']:>8.2f} ms  "
                     f"{p['energy_mj']:>7.3f} mJ  {p['spec']}")
    return "\n".join(lines)


def versus_best(r: TrialRecord, best: TrialRecord) -> str:
    """``best``, ``tied`` (the 95% intervals overlap: not ranked) or ``worse`` than the best-metric trial
    ``best``; ``unknown`` when either has no interval (a record from before intervals were kept)."""
    if r.number == best.number:
        return "best"
    if r.int8_interval is None or best.int8_interval is None:
        return "unknown"
    return "tied" if intervals_overlap(r.int8_interval, best.int8_interval) else "worse"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

