"""``nas search``: a constrained multi-objective Optuna search that trains only candidates that fit.

Shape of a run (see DESIGN.md and :mod:`nas.results` for the run directory)::

    nas search (coordinator: no TensorFlow)            worker processes (python -m nas.search worker ...)
      create or resume the run directory + study  -->    loop: ask Optuna for a point of the space
      start N workers, poll the study for progress         profile it analytically (milliseconds)
      mark trials of dead workers as interrupted           over a limit? set_constraint, PRUNED, next
      report counts and the best of each objective         else claim a budget slot, nas.tf.candidate.evaluate
                                                           (QAT, INT8, measure), store attributes, tell

Decisions, and why:

* **Objectives**: the INT8 task metric (accuracy up or gaze error down), the *measured* peak memory the
  target's runtime needs (TFLM arena, or the IMX500 memory model), and energy per inference from the
  constraint file's model (down).
* **Feasibility first**: each sampled spec is profiled analytically; one that breaks a limit by more than the
  cost model's error (``nas.profile.ESTIMATE_MARGIN``: 1% of the limit, at least 1 KiB) is rejected on paper. Inside that margin the
  untrained INT8 model is converted and measured (seconds; memory does not depend on the weights, trial
  attribute ``borderline``) and that decides. A rejected trial records one
  ``trial.set_constraint`` per limit (``(value - limit) / limit``, feasible when <= 0) and ends PRUNED with
  status ``rejected``: never trained, no files, no training time. PRUNED rather than COMPLETE because there
  is no honest INT8 metric to report, and TPE still learns from it (it ranks infeasible trials by their
  total violation, whatever their state). A trained trial's constraints use the *measured* memory and
  ``.tflite`` size, so one whose real arena breaks the limit although the estimate passed never reaches the
  feasible Pareto front.
* **Budget**: ``--trials N`` counts candidates that use training time (trained or failed). Rejected
  candidates cost milliseconds and do not count; a cap (``max_rejected``) stops a search whose space hardly
  ever fits. Several workers claim a budget slot before training (status ``training``, then a re-read of the
  study): at most N candidates are ever trained, even with workers on many machines.
* **Sampler**: TPE by default (multi-objective, constraint-aware through ``set_constraint``, useful after a
  handful of trials; the rejected trials are free observations for it). NSGA-II needs a population of
  trained trials per generation and ignores pruned ones, so it is only the better choice for large
  budgets; ``random`` is there for comparisons at equal budget.
* **Processes**: the coordinator never imports TensorFlow; every candidate is trained in a worker process
  (also for ``--workers 1``), started with ``subprocess`` and killed with it (``PR_SET_PDEATHSIG``), so a
  killed search leaves no orphan training behind, and a worker's memory is returned when it exits.
* **Kill safety**: Optuna commits each finished trial; a trial cut off by SIGKILL stays RUNNING until
  ``--resume`` (same host: its worker's pid is gone) or Optuna's heartbeat (other hosts) marks it FAIL with
  status ``interrupted``; it does not count against the budget, so resume runs the remaining budget.
* **Lost storage, full disk**: a worker that loses the study's database (PostgreSQL stopped, network gone)
  logs one ERROR line and exits with status 4; the coordinator rides out an outage while polling and, if the
  study is still unreachable when its workers are gone, ends with one line and exit 1 (``StorageUnavailable``):
  committed trials are safe in the database and ``--resume`` continues. A disk that fills during the search:
  before each trial a worker checks there is room for one (else, and on a write that fails with ENOSPC or
  SQLite's "disk is full", it logs one ERROR line and exits with status 5); the cut-off trial is
  ``interrupted``, not failed, and the coordinator ends with one line and exit 1 (``DiskFull``). The run directory is checked before
  anything is read or trained: it must be creatable and writable (a real write) and have room for the study and
  at least one trial (a warning when not for the whole budget); ``--resume`` checks it again.
* **Many machines**: start the run with ``--storage postgresql+psycopg2://...`` and the run directory on a
  shared file system (trained models land in ``RUN_DIR/trials/<n>/``), then on every other machine run
  ``nas search --resume RUN_DIR --workers N``. run.yaml never holds a password: give it with ``--storage``
  again, ``PGPASSWORD`` or ``~/.pgpass``.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import errno
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from nas import results
from nas.errors import UserError, did_you_mean

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "nsga2", "random")
DEFAULT_DATASET = "mnist"
DEFAULT_TRIALS = 20
DEFAULT_EPOCHS = 2
DEFAULT_TRAIN_LIMIT = 2000           # only when the data set is the default one: the ~10-minute demo
MAX_REJECTED_PER_TRIAL = 25
MIN_MAX_REJECTED = 200
FEASIBILITY_PROBES = 500
HEARTBEAT_S = 20
GRACE_S = 90
POLL_S = 1.0
STOP_WAIT_S = 15.0
ENV_STORAGE = "TINYNAS_STORAGE_URL"
EXIT_STORAGE = 4                     # a worker's exit status when it lost the study's storage
EXIT_DISK_FULL = 5                   # a worker's exit status when the run directory's disk is full
RUN_DIR_RESERVE_BYTES = 16 * 1024 ** 2   # study.db, logs and the run's own files
TRIAL_FILE_OVERHEAD_BYTES = 256 * 1024   # per trial: .h5 container, JSON files (measured ~180 KB)
TRIAL_FLASH_FACTOR = 6               # .tflite ~ the flash estimate; the QAT .h5 holds float weights and more
HOST = socket.gethostname()
PACKAGES = ("tinynas", "tensorflow", "tf_keras", "tensorflow-model-optimization", "tflite-micro", "optuna",
            "numpy", "sqlalchemy", "psycopg2-binary")


@dataclass(frozen=True)
class SearchRequest:
    """What the user asked for (``nas search`` flags); ``None`` means the documented default."""

    constraints: str
    space: str | None = None
    dataset: str | None = None
    trials: int = DEFAULT_TRIALS
    epochs: int = DEFAULT_EPOCHS
    train_limit: int | None = None
    learning_rate: float | None = None
    sampler: str = "tpe"
    workers: int = 1
    storage: str | None = None
    run_dir: str | None = None
    seed: int = 0
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """How a search session ended: the run's summary, worker problems, and why it stopped early (if it did)."""

    run_dir: Path
    summary: results.Summary
    worker_errors: tuple[str, ...] = ()
    stopped: str | None = None


Progress = Callable[[results.Summary], None]


# --------------------------------------------------------------------------------------------- creating a run


def _check_request(req: SearchRequest) -> None:
    if req.trials < 1:
        raise UserError("--trials", "trials", f"a positive number of candidates to train, got {req.trials}")
    if req.epochs < 1:
        raise UserError("--epochs", "epochs", f"a positive number of QAT epochs, got {req.epochs}")
    if req.workers < 1:
        raise UserError("--workers", "workers", f"a positive number of worker processes, got {req.workers}")
    if req.train_limit is not None and req.train_limit < 16:
        raise UserError("--train-limit", "train_limit", f"at least 16 training samples, got {req.train_limit}")
    if req.seed < 0:
        raise UserError("--seed", "seed", f"a non-negative integer, got {req.seed}")
    if req.learning_rate is not None and not (0 < req.learning_rate < float("inf")):
        raise UserError("--lr", "learning_rate", f"a positive, finite learning rate, got {req.learning_rate}")
    if req.sampler not in SAMPLERS:
        raise UserError("--sampler", "sampler", f"one of {', '.join(SAMPLERS)}, got '{req.sampler}'"
                        + did_you_mean(req.sampler, SAMPLERS))


def check_storage_url(url: str, flag: str = "--storage") -> str:
    """A storage URL Optuna's RDB storage can open: ``sqlite:///FILE`` or ``postgresql+psycopg2://...``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except ArgumentError:
        raise UserError(flag, "storage", f"a database URL such as postgresql+psycopg2://user@host:5432/db or "
                                         f"sqlite:///study.db, got '{results.redact(url)}'") from None
    if u.get_backend_name() not in ("sqlite", "postgresql", "mysql"):
        raise UserError(flag, "storage", f"a PostgreSQL (postgresql+psycopg2://...), MySQL or SQLite URL, got "
                                         f"'{u.get_backend_name()}'")
    if u.get_backend_name() == "postgresql" and u.get_driver_name() not in ("psycopg2", None):
        log.warning("storage driver %s: only psycopg2 is installed with tinynas", u.get_driver_name())
    return url


def _dataset_key(name: str) -> str:
    """Built-in names stay names; paths become absolute so that resume works from any directory."""
    from nas import data

    if name in data.names():
        return name
    return str(Path(name).expanduser().resolve())


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


class StorageUnavailable(RuntimeError):
    """The study's database cannot be reached (server stopped, network); finished trials are safe in it."""

    def __init__(self, message: str, worker_errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.worker_errors = tuple(worker_errors)


class DiskFull(StorageUnavailable):
    """The run directory's file system filled up during the search; finished trials are kept."""


def disk_full(e: BaseException | None) -> bool:
    """Is ``e`` (or an error behind it) a full disk: ENOSPC / EDQUOT, or SQLite's "database or disk is full"?"""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(getattr(e, "orig", None) or e)
        if "disk is full" in text or "No space left on device" in text or "errno = 28" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def storage_problem(e: BaseException | None) -> str | None:
    """'Type: first line' of the database error behind ``e`` (its cause / context chain), or None if there is none."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    for kinds in (SQLAlchemyError, StorageInternalError):
        for err in chain:
            if isinstance(err, kinds):
                orig = getattr(err, "orig", None) or err
                text = str(orig).strip().splitlines()
                return f"{type(orig).__name__}: {text[0].strip() if text else ''}"[:300]
    return None


def _check_run_dir_location(path: Path, flag: str = "--run-dir", *, given: bool = True) -> Path:
    """Refuse, before any data is read, a run directory that cannot be made or written; returns the nearest
    existing folder at or above ``path`` (where free space is measured). ``given``: the user named ``path``
    itself (it must be new or empty), not just the folder runs are made in."""
    if given and path.exists() and not path.is_dir():
        raise UserError(flag, "run_dir", f"a directory, '{path}' is a file")
    if given and (path / results.RUN_FILE).exists():
        raise UserError(flag, "run_dir", f"a new or empty directory; '{path}' already holds a run "
                                         f"(continue it with: nas search --resume {path})")
    if given and path.is_dir() and any(path.iterdir()):
        raise UserError(flag, "run_dir", f"a new or empty directory; '{path}' is not empty")
    base = path.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UserError(flag, "run_dir", f"a directory that can be created; '{base}' is a file, so '{path}' "
                                         f"cannot be made")
    _probe_write(base, flag, path)
    return base


def _probe_write(base: Path, flag: str, path: Path) -> None:
    """Create and delete a file in ``base``: as root, permission bits say nothing, and a read-only mount or a
    full disk only shows when something is written."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".tinynas-write-test-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(flag, "run_dir", f"a writable location for '{path}'; cannot create files in '{base}' "
                                         f"({e.strerror or e})") from None


def trial_disk_bytes(flash_estimates: Sequence[float]) -> int:
    """Disk space one trained trial needs (its .tflite, QAT .h5 and JSON files), from the flash estimates of
    feasible candidates of the space."""
    mean = sum(flash_estimates) / len(flash_estimates) if flash_estimates else 0.0
    return int(TRIAL_FLASH_FACTOR * mean + TRIAL_FILE_OVERHEAD_BYTES)


def check_disk_space(where: Path, trials: int, per_trial: int, flag: str = "--run-dir") -> None:
    """A clear error when ``where`` cannot hold even one trial (plus the study and logs), before anything is
    trained; a warning when it cannot hold the whole budget."""
    free = shutil.disk_usage(where).free
    need_one = RUN_DIR_RESERVE_BYTES + per_trial
    if free < need_one:
        raise UserError(flag, "run_dir", f"a file system with room for the study and at least one trial "
                                         f"(about {need_one / 1024 ** 2:,.1f} MB); '{where}' has "
                                         f"{free / 1024 ** 2:,.1f} MB free")
    need_all = RUN_DIR_RESERVE_BYTES + trials * per_trial
    if free < need_all:
        log.warning("%s has %.1f MB free, about %.1f MB are needed for %d trials (%.0f KB each): the disk may "
                    "fill after about %d trials", where, free / 1024 ** 2, need_all / 1024 ** 2, trials,
                    per_trial / 1024, (free - RUN_DIR_RESERVE_BYTES) // per_trial)


def _new_run_dir(req: SearchRequest, space_name: str, target_path: Path, dataset_name: str) -> Path:
    if req.run_dir:
        return Path(req.run_dir).expanduser()  # checked by _check_run_dir_location before the data was read
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{space_name}-{target_path.stem}-{Path(dataset_name).name}-{stamp}"
    path, i = base, 2
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def feasible_fraction(space: Any, shape: Any, target: Any, n: int = FEASIBILITY_PROBES, seed: int = 0,
                      flash: list[float] | None = None) -> tuple[float, dict[str, float]]:
    """Share of ``n`` random points of the space that fit the target, and the smallest value seen per limit.

    A few hundred milliseconds; it stops a search whose space can never fit before any worker starts.
    ``flash`` (a list) collects the flash estimates of the points that fit (to size the disk a run needs).
    """
    from nas import profile
    from nas import space as space_mod

    rng = random.Random(seed)
    ok = 0
    smallest: dict[str, float] = {}
    for _ in range(n):
        spec = space_mod.to_spec(space, space_mod.sample(space, lambda _name, ch: rng.choice(ch)), shape)
        rec, checks = estimate_record(spec, target)
        fits = profile.checks_verdict(checks) != "exceeds"
        ok += fits
        if fits and flash is not None:
            flash.append(float(rec["flash_bytes"]))
        for c in checks:
            smallest[c.name] = min(smallest.get(c.name, float("inf")), float(c.value))
    return ok / n, smallest


def create_run(req: SearchRequest) -> Path:
    """Validate a request and make its run directory and study; returns the run directory.

    Everything a later ``--resume``, ``nas pareto`` or export needs is written here: copies of the constraint
    and space files, the data set's description and ``run.yaml`` (written last: its presence marks a run).
    """
    from nas import data
    from nas import space as space_mod
    from nas.hardware import load_target, resolve_target_path

    _check_request(req)
    where = _check_run_dir_location(Path(req.run_dir).expanduser() if req.run_dir else Path("runs"),
                                    given=bool(req.run_dir))
    target_path = resolve_target_path(req.constraints)
    target = load_target(req.constraints)
    if req.space:  # a typo in the space file is reported before the data set is read
        space_mod.load_space(req.space)
    if req.storage:
        check_storage_url(req.storage)
    dataset_name = req.dataset or DEFAULT_DATASET
    ds = data.load(dataset_name, seed=req.seed)
    space_path = space_mod.resolve_space_path(req.space or space_mod.default_space_for(ds.task))
    sp = space_mod.load_space(str(space_path))
    if sp.task != ds.task:
        other = space_mod.default_space_for(ds.task)
        raise UserError("--space", "head.kind", f"a space for {ds.task} data: '{space_path}' has a {sp.head.kind} "
                                                f"head and data set '{ds.name}' is a {ds.task} set (try --space {other})")
    shape = space_mod.DataShape.of(ds)
    flash: list[float] = []
    fraction, smallest = feasible_fraction(sp, shape, target, seed=req.seed, flash=flash)
    if fraction == 0:
        limits = target.limits()
        worst = ", ".join(f"{k} {smallest[k]:,.0f} > {limits[k]:,.0f}" for k in limits if smallest.get(k, 0) > limits[k])
        raise UserError(str(target_path), "limits", f"limits that some candidate of space '{sp.name}' meets; none of "
                                                    f"{FEASIBILITY_PROBES} sampled fits (smallest seen: {worst})")
    storage = check_storage_url(req.storage) if req.storage else None
    train_limit = req.train_limit
    if train_limit is None and req.dataset is None:
        train_limit = DEFAULT_TRAIN_LIMIT
    check_disk_space(where, req.trials, trial_disk_bytes(flash))
    run_dir = _new_run_dir(req, sp.name, target_path, ds.name)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir = run_dir.resolve()
    try:
        shutil.copyfile(target_path, run_dir / "constraints.yaml")
        shutil.copyfile(space_path, run_dir / "space.yaml")
        (run_dir / "dataset.json").write_text(json.dumps(ds.description, indent=1, default=str))
        (run_dir / results.TRIALS_DIR).mkdir(exist_ok=True)
        run_id = uuid.uuid4().hex
        study_name = f"{run_dir.name}-{run_id[:8]}"
        url = storage or results.storage_url(run_dir, {})
        metric, higher = results.metric_for(ds.task)
        _create_study(url, study_name, run_id, run_dir, ["maximize" if higher else "minimize", "minimize", "minimize"])
        config = {
            "format": results.RUN_FORMAT,
            "run_id": run_id,
            "study_name": study_name,
            "created": results.now_iso(),
            "command": list(req.command),
            "dataset": _dataset_key(dataset_name),
            "task": ds.task,
            "space": {"file": "space.yaml", "source": str(space_path.resolve()), "name": sp.name,
                      "parameters": len(sp.parameters()), "size": sp.size(),
                      "feasible_fraction": round(fraction, 3)},
            "target": {"file": "constraints.yaml", "source": str(target_path.resolve()), "name": target.name,
                       "runtime": target.runtime, "limits": target.limits()},
            "objectives": [{"name": metric, "direction": "maximize" if higher else "minimize"},
                           {"name": "memory_bytes", "direction": "minimize",
                            "measured": "TFLM arena" if target.runtime == "tflm" else "IMX500 memory model"},
                           {"name": "energy_mj", "direction": "minimize"}],
            "trials": req.trials,
            "max_rejected": max(MIN_MAX_REJECTED, MAX_REJECTED_PER_TRIAL * req.trials),
            "budget": {"epochs": req.epochs, "train_limit": train_limit,
                       **({"learning_rate": req.learning_rate} if req.learning_rate is not None else {})},
            "seed": req.seed,
            "sampler": req.sampler,
            "storage": results.redact(storage) if storage else None,
            "versions": _versions(),
            "sessions": [_session(req.command, req.workers, req.trials)],
        }
        _write_config(run_dir, config)
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    log.info("run %s: study %s in %s", run_dir, study_name, results.redact(url))
    return run_dir


def _session(command: Sequence[str], workers: int, trials: int) -> dict[str, Any]:
    return {"started": results.now_iso(), "command": list(command), "host": HOST, "pid": os.getpid(),
            "workers": workers, "trials": trials}


def _write_config(run_dir: Path, config: dict[str, Any]) -> None:
    tmp = run_dir / (results.RUN_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=120))
    os.replace(tmp, run_dir / results.RUN_FILE)


def _storage(url: str, heartbeat: bool = False) -> Any:
    import optuna

    kwargs: dict[str, Any] = {"engine_kwargs": results._engine_kwargs(url)}
    if heartbeat:
        kwargs.update(heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
        return optuna.storages.RDBStorage(url, **kwargs)


def _create_study(url: str, name: str, run_id: str, run_dir: Path, directions: list[str]) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=_storage(url), study_name=name, directions=directions)
    except Exception as e:  # noqa: BLE001 - connection / permission errors of the user's database
        raise UserError("--storage", "storage", f"a storage Optuna can create a study in: {results.redact(url)} "
                                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    study.set_user_attr(results.RUN_ID_ATTR, run_id)
    study.set_user_attr("run_dir", str(run_dir))
    study.set_user_attr("host", HOST)


# --------------------------------------------------------------------------------------------- resuming


def resume_run(run_dir: str | Path, *, trials: int | None = None, workers: int = 1, storage: str | None = None,
               command: Sequence[str] = ()) -> Path:
    """Prepare a run directory to continue: check it is a run and its study, fail cut-off trials, record the
    session. ``trials`` raises (or lowers) the total budget; everything else comes from the run directory."""
    if trials is not None and trials < 1:
        raise UserError("--trials", "trials", f"a positive number of candidates to train, got {trials}")
    if workers < 1:
        raise UserError("--workers", "workers", f"a positive number of worker processes, got {workers}")
    if storage:
        check_storage_url(storage)
    run = results.open_run(run_dir, storage)
    if storage and run.config.get("storage") and results.redact(storage) != run.config["storage"]:
        raise UserError("--storage", "storage", f"the run's own storage {run.config['storage']} (with a password "
                                                f"if it needs one), got {results.redact(storage)}")
    _check_resume_disk(run, trials if trials is not None else int(run.config["trials"]))
    marked = fail_orphans(run.study(), _pid_alive)
    _fail_stale(run.url, run.study_name)
    if marked:
        log.info("marked %d cut-off trial(s) as interrupted: %s", len(marked), marked)
    config = dict(run.config)
    if trials is not None:
        config["trials"] = trials
        config["max_rejected"] = max(int(config.get("max_rejected", 0)),
                                     max(MIN_MAX_REJECTED, MAX_REJECTED_PER_TRIAL * trials))
    config["sessions"] = [*config.get("sessions", []), _session(command, workers, int(config["trials"]))]
    _write_config(run.path, config)
    return run.path


def _check_resume_disk(run: results.Run, budget: int) -> None:
    """The run directory must still have room for the trials left to train (a clear error before any start)."""
    trials_dir = run.path / results.TRIALS_DIR
    _probe_write(trials_dir if trials_dir.is_dir() else run.path, "--resume", run.path)
    left = max(1, budget - run.summary().used)
    check_disk_space(run.path, left, Worker.load(run.path).trial_disk_bytes(), flag="--resume")


def _fail_stale(url: str, name: str) -> None:
    """Optuna's heartbeat check: RUNNING trials of workers on other hosts that stopped beating become FAIL."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(optuna.load_study(study_name=name, storage=_storage(url, heartbeat=True)))


def _pid_alive(pid: Any) -> bool:
    """Is ``pid`` a live tinynas worker on this host? (A zombie or a reused pid is not.)"""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust kill(0)
    return b"nas.search" in cmdline


def fail_orphans(study: Any, alive: Callable[[Any], bool], pids: set[int] | None = None) -> list[int]:
    """Mark RUNNING trials whose worker (on this host) is gone as FAIL, status ``interrupted``.

    ``pids`` limits it to those workers (the coordinator's own, when one exits); otherwise any dead worker
    on this host. Trials of other hosts are left to Optuna's heartbeat.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    marked = []
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker") or {}
        if w.get("host") != HOST or (pids is not None and w.get("pid") not in pids) or alive(w.get("pid")):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "status", "interrupted")
            storage.set_trial_user_attr(t._trial_id, "reason", f"worker {w.get('pid')} on {HOST} stopped "
                                                               f"(killed or interrupted) during the trial")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            marked.append(t.number)
        except UpdateFinishedTrialError:
            continue
    return marked


# --------------------------------------------------------------------------------------------- coordinator


def execute(run_dir: str | Path, *, workers: int = 1, storage: str | None = None,
            progress: Progress | None = None, poll_s: float = POLL_S) -> Outcome:
    """Run ``workers`` worker processes on the run until its budget is used; report progress while waiting.

    Ctrl-C stops the workers (their trials become ``interrupted``) and re-raises KeyboardInterrupt.
    """
    run = results.open_run(run_dir, storage)
    session = len(run.config.get("sessions", [])) - 1
    logs = run.path / "logs"
    logs.mkdir(exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [_spawn(run, k, session, threads, storage) for k in range(workers)]
    errors: list[str] = []
    full = False  # a worker stopped on a full disk
    done: set[int] = set()
    lost: list[str] = []  # storage problems seen while polling: workers may outlast a short outage

    def tolerate(step: Callable[[], Any]) -> None:
        try:
            step()
        except Exception as e:  # noqa: BLE001 - only database errors are tolerated, anything else is raised
            problem = storage_problem(e)
            if problem is None:
                raise
            if not lost:
                log.warning("storage %s unreachable (%s): waiting for the workers", results.redact(run.url), problem)
            lost.append(problem)

    try:
        while True:
            running = [p for p in procs if p.poll() is None]
            for k, p in enumerate(procs):
                if p.returncode is not None and k not in done:
                    done.add(k)
                    tolerate(lambda p=p: fail_orphans(run.study(), _pid_alive, {p.pid}))
                    log_file = logs / f"worker-{session}-{k}.log"
                    if p.returncode == EXIT_DISK_FULL:
                        errors.append(f"worker {k} stopped: the disk of {run.path} is full (exit status "
                                      f"{p.returncode}); see {log_file}")
                        full = True
                    elif p.returncode == EXIT_STORAGE:
                        errors.append(f"worker {k} lost the study's storage and stopped (exit status "
                                      f"{p.returncode}); see {log_file}")
                    elif p.returncode != 0:
                        errors.append(f"worker {k} exited with status {p.returncode}; see {log_file}")
            if progress is not None:
                tolerate(lambda: progress(run.summary()))
            if not running:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        _stop(procs)
        fail_orphans(run.study(), _pid_alive, {p.pid for p in procs})
        raise
    finally:
        _stop(procs)
    try:
        summary = run.summary()
    except Exception as e:  # noqa: BLE001
        problem = storage_problem(e)
        if problem is None:
            raise
        raise StorageUnavailable(f"the study's storage {results.redact(run.url)} is unreachable ({problem}); "
                                 f"finished trials are kept in it. When it is back, continue with: "
                                 f"nas search --resume {run.path}", errors) from None
    if full and summary.used < summary.budget:
        raise DiskFull(_disk_full_message(run.path, shutil.disk_usage(run.path).free, None), errors)
    max_rejected = int(run.config.get("max_rejected", 0))
    stopped = None
    if summary.used < summary.budget and summary.rejected >= max_rejected:
        stopped = (f"stopped after {summary.rejected} candidates were rejected before training: the space "
                   f"rarely fits this target (tighten the space or relax the limits)")
    return Outcome(run_dir=run.path, summary=summary, worker_errors=tuple(errors), stopped=stopped)


def _spawn(run: results.Run, index: int, session: int, threads: int, storage: str | None) -> subprocess.Popen:
    env = dict(os.environ)
    if storage:
        env[ENV_STORAGE] = storage  # may hold a password: passed in the environment, never on the command line
    env.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
    env.setdefault("TF_NUM_INTEROP_THREADS", str(min(2, threads)))
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env["PYTHONUNBUFFERED"] = "1"
    log_file = run.path / "logs" / f"worker-{session}-{index}.log"
    cmd = [sys.executable, "-m", "nas.search", "worker", str(run.path), "--index", str(index),
           "--session", str(session), "--parent", str(os.getpid())]
    with open(log_file, "ab") as out:
        # A new session: a Ctrl-C in the terminal reaches the coordinator only, which stops the workers itself.
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    """SIGINT (the trial is told FAIL by Optuna), then SIGKILL for a worker that does not exit in time."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        try:
            p.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_WAIT_S
    for p in live:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# --------------------------------------------------------------------------------------------- the trial


def estimate_record(spec: Any, target: Any) -> tuple[dict[str, Any], list[Any]]:
    """The analytic profile of ``spec`` on ``target`` as plain data, and the target's limit checks."""
    from nas import profile

    prof = profile.estimate(spec)
    rep = profile.report(prof, target)
    rec = {k: rep[k] for k in ("macs", "params", "flash_bytes", "peak_sram_bytes", "activation_bytes",
                               "runtime_overhead_bytes", "onchip_bytes", "latency_ms", "inference_ms", "energy_mj")}
    rec["memory_bytes"] = prof.onchip_bytes if target.runtime == "imx500" else prof.peak_sram_bytes
    values = {**prof.limit_values(target.runtime), "latency_ms": rep["latency_ms"], "energy_mj": rep["energy_mj"]}
    return rec, target.check(values)


def measured_checks(estimate: dict[str, Any], metrics: dict[str, Any], target: Any) -> list[Any]:
    """The limits checked again with what was measured on the converted model (memory and file size)."""
    values = {"macs": estimate["macs"], "sram_bytes": estimate["peak_sram_bytes"],
              "flash_bytes": estimate["flash_bytes"], "onchip_bytes": estimate["onchip_bytes"],
              "latency_ms": estimate["latency_ms"], "energy_mj": estimate["energy_mj"]}
    if target.runtime == "imx500":
        values["onchip_bytes"] = metrics["measured_memory_bytes"]
    else:
        values["sram_bytes"] = metrics["measured_memory_bytes"]
        values["flash_bytes"] = metrics["tflite_bytes"]
    return target.check(values)


def violation(check: Any) -> float:
    """A limit check as an Optuna constraint value: relative excess, feasible when <= 0."""
    return (float(check.value) - float(check.limit)) / float(check.limit)


class BudgetUsed(RuntimeError):
    """Other workers used the last budget slot while this trial was being sampled."""


class CandidateFailed(RuntimeError):
    """The candidate could not be trained / converted / evaluated (the trial is FAIL, the search goes on)."""


@dataclass
class Worker:
    """One worker process's view of a run: the space, target and budget, and the objective it optimises."""

    run_dir: Path
    config: dict[str, Any]
    space: Any
    target: Any
    shape: Any
    budget: dict[str, Any]
    index: int = 0

    @classmethod
    def load(cls, run_dir: Path, index: int = 0) -> "Worker":
        from nas import space as space_mod
        from nas.hardware import load_target

        config = results.read_config(run_dir)
        desc = json.loads((run_dir / "dataset.json").read_text())
        return cls(run_dir=run_dir, config=config, space=space_mod.load_space(str(run_dir / "space.yaml")),
                   target=load_target(str(run_dir / "constraints.yaml")),
                   shape=space_mod.DataShape.from_description(desc), budget=dict(config["budget"]), index=index)

    def trial_disk_bytes(self) -> int:
        """Disk space one trial of this run needs (:func:`trial_disk_bytes` over 100 points of the space)."""
        flash: list[float] = []
        feasible_fraction(self.space, self.shape, self.target, n=100, seed=0, flash=flash)
        return trial_disk_bytes(flash)

    def check_room(self, per_trial: int) -> None:
        """Raise :class:`DiskFull` when the run directory cannot hold one more trial: a worker stops before
        training a candidate whose files could not be written."""
        free = shutil.disk_usage(self.run_dir).free
        if free < per_trial:
            raise DiskFull(_disk_full_message(self.run_dir, free, per_trial))

    def objective(self, trial: Any) -> tuple[float, float, float]:
        """Profile, reject or train one sampled candidate. Never trains one that breaks a limit on paper."""

        from nas import profile
        from nas import space as space_mod

        trial.set_user_attr("worker", {"host": HOST, "pid": os.getpid(), "index": self.index})
        spec = space_mod.to_spec(self.space, space_mod.sample(self.space, trial.suggest_categorical), self.shape)
        estimate, checks = estimate_record(spec, self.target)
        trial.set_user_attr("spec", spec.to_string())
        trial.set_user_attr("estimate", estimate)
        verdicts = {c.name: profile.paper_verdict(c.name, c.value, c.limit) for c in checks}
        if "exceeds" in verdicts.values():
            self._reject(trial, checks, [c for c in checks if verdicts[c.name] == "exceeds"], "on paper")
        borderline = [name for name, v in verdicts.items() if v == "borderline"]
        if borderline:
            # Within the cost model's error of a limit: the untrained INT8 model's memory decides, in seconds.
            measured = self._measure_untrained(spec)
            trial.set_user_attr("borderline", {"limits": borderline, "measured": measured})
            checks = measured_checks(estimate, measured, self.target)
            log.info("trial %d: %s within the estimate's margin of the limit; measured before training (%.1f s)",
                     trial.number, ", ".join(borderline), measured["seconds"])
            if not all(c.ok for c in checks):
                self._reject(trial, checks, [c for c in checks if not c.ok], "when measured before training")
        trial.set_user_attr("status", "training")
        if not self._claim(trial):
            trial.set_user_attr("status", "unused")
            raise BudgetUsed("the budget was used up by other workers while this trial was sampled")
        trial_dir = Path(results.TRIALS_DIR) / str(trial.number)
        trial.set_user_attr("trial_dir", str(trial_dir))
        try:
            metrics = self._train(spec, self.run_dir / trial_dir, trial)
            values = self._values(metrics, estimate)
        except Exception as e:
            # A full disk is not the candidate's fault: the trial is cut off (run again on resume), not failed.
            trial.set_user_attr("status", "interrupted" if disk_full(e) else "failed")
            trial.set_user_attr("reason", ("disk full: " if disk_full(e) else "") + _reason(e))
            raise
        for c in measured_checks(estimate, metrics, self.target):
            trial.set_constraint(c.name, violation(c))
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("status", "trained")
        return values

    def _reject(self, trial: Any, checks: list[Any], broken: list[Any], how: str) -> None:
        """End a trial that cannot fit: one constraint per limit, status ``rejected``, never trained."""
        import optuna

        for c in checks:
            trial.set_constraint(c.name, violation(c))
        trial.set_user_attr("status", "rejected")
        text = ", ".join(f"{c.name} {c.value:,.4g} > {c.limit:,.4g}" for c in broken)
        raise optuna.TrialPruned(f"infeasible {how}: {text}")

    def _measure_untrained(self, spec: Any) -> dict[str, Any]:
        from nas.tf.candidate import measure_untrained

        return measure_untrained(spec, self.target.runtime)

    def _claim(self, trial: Any) -> bool:
        """Take a budget slot: this trial already says ``training``; re-read the study and count the claims.

        Storage writes are committed before the read, so of two workers racing for the last slot at least one
        sees both claims; both may step back (then both try again), but never both train over budget.
        """
        from optuna.trial import TrialState

        trials = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE,
                                                               TrialState.FAIL))
        return sum(1 for t in trials if uses_budget(t)) <= int(self.config["trials"])

    def _train(self, spec: Any, out_dir: Path, trial: Any) -> dict[str, Any]:
        """The only place that reaches TensorFlow, through nas.tf.candidate (imported here, in the worker)."""
        from nas.budget import Budget
        from nas.tf.candidate import evaluate

        budget = self._full_budget(trial.study, Budget)
        metrics = evaluate(spec, self.config["dataset"], budget, out_dir, seed=int(self.config["seed"]),
                           target=self.target)
        return json.loads(json.dumps(metrics, default=_jsonable))

    def _full_budget(self, study: Any, budget_cls: type) -> Any:
        """The budget this run trains with: recorded on the study by its first trained trial, so a resumed run
        keeps every field even if the defaults of a later version differ."""
        recorded = study.user_attrs.get(results.BUDGET_ATTR)
        if recorded:
            fields = {f.name for f in dataclasses.fields(budget_cls)}
            return budget_cls(**{k: v for k, v in recorded.items() if k in fields})
        budget = budget_cls(**{k: v for k, v in self.budget.items() if v is not None})
        study.set_user_attr(results.BUDGET_ATTR, budget.to_dict())
        return budget

    def _values(self, metrics: dict[str, Any], estimate: dict[str, Any]) -> tuple[float, float, float]:
        name, higher = results.metric_for(self.shape.task)
        if metrics.get("metric_name") != name or bool(metrics.get("higher_is_better")) != higher:
            raise CandidateFailed(f"the trainer reported {metrics.get('metric_name')!r}, the study optimises {name!r}")
        values = (float(metrics["int8_metric"]), float(metrics["measured_memory_bytes"]), float(estimate["energy_mj"]))
        if not all(v == v and abs(v) != float("inf") for v in values):
            raise CandidateFailed(f"non-finite objective values {values}")
        return values


def _disk_full_message(run_dir: Path, free: int, per_trial: int | None) -> str:
    need = "" if per_trial is None else f"; a trial needs about {per_trial / 1024 ** 2:,.1f} MB"
    return (f"the disk of {run_dir} is full ({free / 1024 ** 2:,.1f} MB free{need}); the search stopped and "
            f"finished trials are kept. Free some space, then continue with: nas search --resume {run_dir}")


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


# --------------------------------------------------------------------------------------------- worker process


def make_sampler(name: str, seed: int, trials: int) -> Any:
    """The Optuna sampler for ``--sampler`` (see the module docstring for why TPE is the default)."""
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=max(4, min(50, trials // 3)), seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is marked experimental
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=max(4, min(10, trials // 2)))


def worker_seed(seed: int, session: int, index: int) -> int:
    """Different samplers per worker and per session: a resumed random search must not repeat its first points."""
    return (seed * 1_000_003 + session * 10_007 + index * 101) % (2**31 - 1)


def _die_with_parent(parent: int) -> None:
    """Exit when the coordinator dies, SIGKILL included: the kernel signals us (Linux), a thread checks too."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(3)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def uses_budget(trial: Any) -> bool:
    """Does this trial use a slot of the budget? Trained and failed ones do, and those being trained now."""
    status = results.status_of(trial.state.name, trial.user_attrs)
    return status in results.BUDGET_STATUSES or (status == "running" and trial.user_attrs.get("status") == "training")


def _counts(study: Any) -> tuple[int, int]:
    """Trials that used (or are using) the budget, and rejected ones."""
    trials = study.get_trials(deepcopy=False)
    return sum(1 for t in trials if uses_budget(t)), sum(1 for t in trials if t.state.name == "PRUNED")


def run_worker(run_dir: Path, index: int, session: int, storage: str | None = None) -> int:
    """A worker's loop: one trial at a time until the budget is used (or too many candidates were rejected)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO)
    worker = Worker.load(run_dir, index)
    config = worker.config
    url = results.storage_url(run_dir, config, storage)
    trials, max_rejected = int(config["trials"]), int(config["max_rejected"])
    sampler = make_sampler(config["sampler"], worker_seed(int(config["seed"]), session, index), trials)
    try:
        return _worker_loop(run_dir, worker, url, sampler, trials, max_rejected)
    except DiskFull:
        raise
    except Exception as e:
        if disk_full(e):
            raise DiskFull(_disk_full_message(run_dir, shutil.disk_usage(run_dir).free, None)) from e
        problem = storage_problem(e)
        if problem is None:
            raise
        raise StorageUnavailable(f"lost the study's storage {results.redact(url)} ({problem}): stopping; finished "
                                 f"trials are safe in it, the trial in progress is marked interrupted by "
                                 f"nas search --resume") from e


def _worker_loop(run_dir: Path, worker: "Worker", url: str, sampler: Any, trials: int, max_rejected: int) -> int:
    import optuna

    config = worker.config
    study = optuna.load_study(study_name=config["study_name"], storage=_storage(url, heartbeat=True), sampler=sampler)
    if study.user_attrs.get(results.RUN_ID_ATTR) != config["run_id"]:
        log.error("study %s does not belong to run %s", config["study_name"], run_dir)
        return 2
    per_trial = worker.trial_disk_bytes()
    while True:
        used, rejected = _counts(study)
        if used >= trials:
            log.info("budget used: %d/%d trials", used, trials)
            return 0
        if rejected >= max_rejected:
            log.warning("%d candidates rejected before training (cap %d): stopping", rejected, max_rejected)
            return 0
        worker.check_room(per_trial)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            study.optimize(worker.objective, n_trials=1, catch=(Exception,))
        if _last_was_unused(study, os.getpid()):
            time.sleep(random.uniform(0.2, 1.0))  # two workers stepped back from the same slot: de-synchronise


def _last_was_unused(study: Any, pid: int) -> bool:
    mine = [t for t in study.get_trials(deepcopy=False)
            if (t.user_attrs.get("worker") or {}).get("pid") == pid and t.state.name != "RUNNING"]
    return bool(mine) and mine[-1].user_attrs.get("status") == "unused"


def _sigint_on_term() -> None:
    """SIGTERM behaves like Ctrl-C: Optuna then records the running trial as FAIL before the worker exits."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Hidden entry point: ``python -m nas.search worker RUN_DIR --index K --session S --parent PID``."""
    p = argparse.ArgumentParser(prog="python -m nas.search", description="tinynas search worker (internal)")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker")
    w.add_argument("run_dir")
    w.add_argument("--index", type=int, default=0)
    w.add_argument("--session", type=int, default=0)
    w.add_argument("--parent", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker-{args.index} %(levelname)s %(name)s: %(message)s")
    if args.parent:
        _die_with_parent(args.parent)
    _sigint_on_term()
    try:
        return run_worker(Path(args.run_dir).resolve(), args.index, args.session, os.environ.get(ENV_STORAGE))
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130
    except UserError as e:
        log.error("%s", e)
        return 2
    except DiskFull as e:
        log.error("%s", e)
        return EXIT_DISK_FULL
    except StorageUnavailable as e:
        log.error("%s", e)
        return EXIT_STORAGE


if __name__ == "__main__":
    sys.exit(worker_main())
