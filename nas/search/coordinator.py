"""The search coordinator: creates or resumes a run, starts the worker processes and watches the study.

It never imports TensorFlow: every candidate is trained in a worker process (:mod:`nas.search.worker`), also
for ``--workers 1``, started with ``subprocess`` and killed with it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from nas import results, rundir
from nas.errors import UserError
from nas.formatting import first_line, package_versions
from nas.rundir import RunConfig, TrialStatus
from nas.metrics import metric_for
from nas.search.preflight import (DEFAULT_DATASET, DEFAULT_TRAIN_LIMIT, FEASIBILITY_PROBES, SearchRequest,
                                  check_disk_space, check_fidelity, check_max_failures, check_request,
                                  check_run_dir_location,
                                  check_storage_url, dataset_key, feasible_fraction, probe_write, trial_disk_bytes)
from nas.search.worker import (BUG_MARK, ENV_STORAGE, EXIT_BUG, EXIT_DISK_FULL, EXIT_STORAGE, HOST, DiskFull,
                               StorageUnavailable, Worker, consecutive_failures, disk_full_message,
                               session_first_trial, storage_problem)
from nas.storage import fail_trial, open_storage

log = logging.getLogger(__name__)

MAX_REJECTED_PER_TRIAL = 25
MIN_MAX_REJECTED = 200
POLL_S = 1.0
STOP_WAIT_S = 15.0
WORKER_MODULE = "nas.search"   # workers run as ``python -m nas.search worker ...`` (pid_alive looks for it)


@dataclass(frozen=True)
class Outcome:
    """How a search session ended: the run's summary, worker problems, and why it stopped early (if it did)."""

    run_dir: Path
    summary: results.Summary
    worker_errors: tuple[str, ...] = ()
    stopped: str | None = None
    workers: int = 1
    failed_in_a_row: int = 0   # > 0 when the search stopped on --max-consecutive-failures


class WorkerBug(RuntimeError):
    """A worker stopped on an exception of tinynas itself (not a candidate's failure); the search was stopped
    rather than spending the budget on it. The message is one line; the traceback is in the worker's log."""

    def __init__(self, message: str, worker_errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.worker_errors = tuple(worker_errors)


@dataclass(frozen=True)
class WorkerPlan:
    """How many worker processes a session starts, and why that may differ from what was asked."""

    requested: int
    workers: int
    trials_left: int
    cpus: int

    def notes(self) -> list[str]:
        """One line each: the cap to the trials left, and more workers than CPU cores."""
        out = []
        if self.workers < self.requested:
            out.append(f"--workers {self.requested} capped to {self.workers}: only {self.trials_left} "
                       f"candidate(s) left to train")
        if self.workers > self.cpus:
            out.append(f"{self.workers} workers on {self.cpus} CPU cores: they will compete for the cores "
                       f"(each trains one candidate at a time)")
        return out


def plan_workers(requested: int, trials_left: int, cpus: int | None = None) -> WorkerPlan:
    """At most one worker per candidate still to train (and at least one, which finds the budget used and
    exits); ``cpus`` defaults to ``os.cpu_count()``."""
    cpus = cpus or os.cpu_count() or 1
    return WorkerPlan(requested=requested, workers=max(1, min(requested, trials_left)),
                      trials_left=max(0, trials_left), cpus=cpus)


Progress = Callable[[results.Summary], None]


def _new_run_dir(req: SearchRequest, space_name: str, target_path: Path, dataset_name: str) -> Path:
    if req.run_dir:
        return Path(req.run_dir).expanduser()  # checked by check_run_dir_location before the data was read
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{space_name}-{target_path.stem}-{Path(dataset_name).name}-{stamp}"
    path, i = base, 2
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def create_run(req: SearchRequest) -> Path:
    """Validate a request and make its run directory and study; returns the run directory.

    Everything a later ``--resume``, ``nas pareto`` or export needs is written here: copies of the constraint
    and space files, the data set's description and ``run.yaml`` (written last: its presence marks a run).
    """
    from nas import data
    from nas import space as space_mod
    from nas.hardware import load_target, resolve_target_path

    check_request(req)
    where = check_run_dir_location(Path(req.run_dir).expanduser() if req.run_dir else Path("runs"),
                                    given=bool(req.run_dir))
    target_path = resolve_target_path(req.constraints)
    target = load_target(req.constraints)
    if req.space:  # a typo in the space file is reported before the data set is read
        space_mod.load_space(req.space)
    if req.storage:
        check_storage_url(req.storage)
    dataset_name = req.dataset or DEFAULT_DATASET
    # an image folder is decoded (once, into its uint8 cache) by a child process with a progress bar: this
    # process reads the listing and the cache's metadata, never a pixel, and holds only the split indices
    data.cache_in_child(dataset_name)
    ds = data.load(dataset_name, seed=req.seed)
    space_path = space_mod.resolve_space_path(req.space or space_mod.default_space_for(ds.task))
    sp = space_mod.load_space(str(space_path))
    if sp.task != ds.task:
        other = space_mod.default_space_for(ds.task)
        raise UserError("--space", "head.kind", f"a space for {ds.task} data: '{space_path}' has a {sp.head.kind} "
                                                f"head and data set '{ds.name}' is a {ds.task} set "
                                                f"(try --space {other})")
    native = native_resolution(ds.description)
    resolutions = space_mod.resolutions_for(sp, native)
    left_out = [int(r) for r in sp.resolution.values if r not in resolutions]
    sp = space_mod.with_resolutions(sp, resolutions)
    shape = space_mod.DataShape.of(ds)
    flash: list[float] = []
    fraction, smallest = feasible_fraction(sp, shape, target, seed=req.seed, flash=flash)
    if fraction == 0:
        limits = target.limits()
        worst = ", ".join(f"{k} {smallest[k]:,.0f} > {limits[k]:,.0f}" for k in limits
                          if smallest.get(k, 0) > limits[k])
        raise UserError(str(target_path), "limits", f"limits that some candidate of space '{sp.name}' meets; none of "
                                                    f"{FEASIBILITY_PROBES} sampled fits (smallest seen: {worst})")
    storage = check_storage_url(req.storage) if req.storage else None
    train_limit = req.train_limit
    if train_limit is None and req.dataset is None:
        train_limit = DEFAULT_TRAIN_LIMIT
    fidelity = check_fidelity(req, int((ds.description.get("counts") or {}).get("train") or 0), train_limit)
    check_disk_space(where, min(req.trials, TIMED_DISK_TRIALS) if req.time_s else req.trials,
                     trial_disk_bytes(flash))
    run_dir = _new_run_dir(req, sp.name, target_path, ds.name)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir = run_dir.resolve()
    try:
        shutil.copyfile(target_path, run_dir / rundir.CONSTRAINTS_FILE)
        shutil.copyfile(space_path, run_dir / rundir.SPACE_FILE)
        (run_dir / rundir.DATASET_FILE).write_text(json.dumps(ds.description, indent=1, default=str))
        (run_dir / rundir.TRIALS_DIR).mkdir(exist_ok=True)
        run_id = uuid.uuid4().hex
        study_name = f"{run_dir.name}-{run_id[:8]}"
        url = rundir.storage_url(run_dir, storage)
        metric, higher = metric_for(ds.task)
        _create_study(url, study_name, run_id, run_dir, ["maximize" if higher else "minimize", "minimize", "minimize"])
        config = RunConfig(
            run_id=run_id,
            study_name=study_name,
            created=results.now_iso(),
            command=list(req.command),
            dataset=dataset_key(dataset_name),
            task=ds.task,
            space={"file": rundir.SPACE_FILE, "source": str(space_path.resolve()), "name": sp.name,
                   "parameters": len(sp.parameters()), "size": sp.size(), "feasible_fraction": round(fraction, 3),
                   "resolutions": list(resolutions), "resolutions_left_out": left_out, "native_resolution": native},
            target={"file": rundir.CONSTRAINTS_FILE, "source": str(target_path.resolve()), "name": target.name,
                    "runtime": target.runtime, "limits": target.limits()},
            objectives=[{"name": metric, "direction": "maximize" if higher else "minimize"},
                        {"name": "memory_bytes", "direction": "minimize",
                         "measured": "TFLM arena" if target.runtime == "tflm" else "IMX500 memory model"},
                        {"name": "energy_mj", "direction": "minimize"}],
            trials=req.trials,
            max_rejected=max(MIN_MAX_REJECTED, MAX_REJECTED_PER_TRIAL * req.trials),
            budget={"epochs": req.epochs, "train_limit": train_limit,
                    **({"learning_rate": req.learning_rate} if req.learning_rate is not None else {})},
            seed=req.seed,
            sampler=req.sampler,
            storage=results.redact(storage) if storage else None,
            versions=package_versions(),
            sessions=[_session(req.command, req.workers, req.trials, first_trial=0,
                               deadline=deadline_of(req.time_s, req.started_at), epoch_images=req.epoch_images)],
            max_consecutive_failures=req.max_consecutive_failures,
            fidelity=fidelity.to_dict() if fidelity.enabled else None,
        )
        config.save(run_dir)
    except BaseException:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    log.info("run %s: study %s in %s", run_dir, study_name, results.redact(url))
    return run_dir


TIMED_DISK_TRIALS = 100  # a --time run's disk check: room for this many candidates (it stops on a full disk)


def native_resolution(description: dict[str, Any]) -> int | None:
    """The shorter side of the data's images as stored (``native_shape`` in its description), if it has one."""
    shape = description.get("native_shape")
    return int(min(shape[0], shape[1])) if shape and len(shape) >= 2 else None


def _session(command: Sequence[str], workers: int, trials: int, first_trial: int,
             deadline: dict[str, float] | None = None, epoch_images: int | None = None) -> dict[str, Any]:
    """A session's record in run.yaml. ``first_trial``: the trials before it do not count towards its
    --max-consecutive-failures (a resumed search starts a new streak). ``deadline``: its --time budget
    (:func:`deadline_of`), ``epoch_images`` its compute budget, which every worker of the session reads."""
    return {"started": results.now_iso(), "command": list(command), "host": HOST, "pid": os.getpid(),
            "workers": workers, "trials": trials, "first_trial": first_trial, **(deadline or {}),
            **({"epoch_images": int(epoch_images)} if epoch_images else {})}


def deadline_of(time_s: float | None, started_at: float | None) -> dict[str, float] | None:
    """``{"time_s", "deadline"}`` for a session with a --time budget counted from ``started_at`` (the command's
    start, so loading the data counts too), or None."""
    if time_s is None:
        return None
    start = time.time() if started_at is None else started_at
    return {"time_s": float(time_s), "deadline": round(start + float(time_s), 3)}


def _create_study(url: str, name: str, run_id: str, run_dir: Path,
                  directions: Sequence[Literal["minimize", "maximize"]]) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=open_storage(url), study_name=name, directions=directions)
    except Exception as e:  # noqa: BLE001 - connection / permission errors of the user's database
        raise UserError("--storage", "storage", f"a storage Optuna can create a study in: {results.redact(url)} "
                                                f"({first_line(e, with_type=True)})") from None
    study.set_user_attr(rundir.RUN_ID_ATTR, run_id)
    study.set_user_attr(rundir.STUDY_RUN_DIR_ATTR, str(run_dir))
    study.set_user_attr(rundir.STUDY_HOST_ATTR, HOST)


def resume_run(run_dir: str | Path, *, trials: int | None = None, workers: int = 1, storage: str | None = None,
               command: Sequence[str] = (), max_consecutive_failures: int | None = None,
               time_s: float | None = None, started_at: float | None = None,
               epoch_images: int | None = None) -> Path:
    """Prepare a run directory to continue: check it is a run and its study, fail cut-off trials, record the
    session. ``trials`` raises (or lowers) the total budget and ``max_consecutive_failures`` replaces the
    run's cap; everything else comes from the run directory."""
    if trials is not None and trials < 1:
        raise UserError("--trials", "trials", f"a positive number of candidates to train, got {trials}")
    if workers < 1:
        raise UserError("--workers", "workers", f"a positive number of worker processes, got {workers}")
    if max_consecutive_failures is not None:
        check_max_failures(max_consecutive_failures)
    if storage:
        check_storage_url(storage)
    run = results.open_run(run_dir, storage)
    if storage and run.config.storage and results.redact(storage) != run.config.storage:
        raise UserError("--storage", "storage", f"the run's own storage {run.config.storage} (with a password "
                                                f"if it needs one), got {results.redact(storage)}")
    _check_resume_disk(run, trials if trials is not None else int(run.config.trials))
    marked = fail_orphans(run.study(), pid_alive)
    _fail_stale(run.url, run.study_name)
    if marked:
        log.info("marked %d cut-off trial(s) as interrupted: %s", len(marked), marked)
    config = run.config
    if trials is not None:
        cap = max(int(config.max_rejected), MIN_MAX_REJECTED, MAX_REJECTED_PER_TRIAL * trials)
        config = config.replace(trials=trials, max_rejected=cap)
    if max_consecutive_failures is not None:
        config = config.replace(max_consecutive_failures=max_consecutive_failures)
    if time_s is not None and time_s <= 0:
        raise UserError("--time", "time", f"a positive duration such as 10m or 1h, got {time_s:g} s")
    if epoch_images is not None and epoch_images < 1:
        raise UserError("--epoch-images", "epoch_images", f"a positive number of training images, got {epoch_images}")
    session = _session(command, workers, int(config.trials), first_trial=len(run.frozen_trials()),
                       deadline=deadline_of(time_s, started_at), epoch_images=epoch_images)
    config.replace(sessions=[*config.sessions, session]).save(run.path)
    return run.path


def _check_resume_disk(run: results.Run, budget: int) -> None:
    """The run directory must still have room for the trials left to train (a clear error before any start)."""
    trials_dir = run.path / rundir.TRIALS_DIR
    probe_write(trials_dir if trials_dir.is_dir() else run.path, "--resume", run.path)
    left = max(1, budget - run.summary().used)
    check_disk_space(run.path, left, Worker.load(run.path).trial_disk_bytes(), flag="--resume")


def _fail_stale(url: str, name: str) -> None:
    """Optuna's heartbeat check: RUNNING trials of workers on other hosts that stopped beating become FAIL."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=True)))


def pid_alive(pid: Any) -> bool:
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
    return WORKER_MODULE.encode() in cmdline


def fail_orphans(study: Any, alive: Callable[[Any], bool], pids: set[int] | None = None) -> list[int]:
    """Mark RUNNING trials whose worker (on this host) is gone as FAIL, status ``interrupted``.

    ``pids`` limits it to those workers (the coordinator's own, when one exits); otherwise any dead worker
    on this host. Trials of other hosts are left to Optuna's heartbeat.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    marked = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get(rundir.ATTR_WORKER) or {}
        if w.get("host") != HOST or (pids is not None and w.get("pid") not in pids) or alive(w.get("pid")):
            continue
        try:
            fail_trial(study, t, {rundir.ATTR_STATUS: TrialStatus.INTERRUPTED,
                                  rundir.ATTR_REASON: f"worker {w.get('pid')} on {HOST} stopped (killed or "
                                                      f"interrupted) during the trial"})
            marked.append(t.number)
        except UpdateFinishedTrialError:
            continue
    return marked


def execute(run_dir: str | Path, *, workers: int = 1, storage: str | None = None,
            progress: Progress | None = None, poll_s: float = POLL_S, train_step: str | None = None) -> Outcome:
    """Run worker processes on the run until its budget is used; report progress while waiting.

    ``workers`` is capped at the candidates still to train (:func:`plan_workers`). ``train_step``
    (``module:function``, importable by the workers) replaces :func:`nas.tf.candidate.evaluate` for benchmarks
    and tests. Ctrl-C stops the workers (their trials become ``interrupted``) and re-raises KeyboardInterrupt;
    a worker that stops on a bug of tinynas stops the others and raises :class:`WorkerBug`.
    """
    run = results.open_run(run_dir, storage)
    session = len(run.config.sessions) - 1
    logs = run.path / rundir.LOGS_DIR
    logs.mkdir(exist_ok=True)
    plan = plan_workers(workers, run.budget - run.summary().used)
    for note in plan.notes():
        log.info("%s", note)
    threads = max(1, plan.cpus // plan.workers)
    procs = [_spawn(run, k, session, threads, storage, train_step) for k in range(plan.workers)]
    errors: list[str] = []
    full = False  # a worker stopped on a full disk
    bug: str | None = None  # a worker stopped on an error of tinynas: the search stops
    done: set[int] = set()
    lost: list[str] = []  # storage problems seen while polling: workers may outlast a short outage

    def tolerate(step: Callable[[], Any]) -> None:
        try:
            step()
        except Exception as e:
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

                    def fail_its_trials(pid: int = p.pid) -> None:
                        fail_orphans(run.study(), pid_alive, {pid})

                    tolerate(fail_its_trials)
                    log_file = logs / f"worker-{session}-{k}.log"
                    if p.returncode == EXIT_DISK_FULL:
                        errors.append(f"worker {k} stopped: the disk of {run.path} is full (exit status "
                                      f"{p.returncode}); see {log_file}")
                        full = True
                    elif p.returncode == EXIT_BUG:
                        bug = bug or (f"worker {k} {_bug_line(log_file)} (the traceback is in {log_file}); "
                                      f"no candidate was blamed. Continue with: nas search --resume {run.path}")
                    elif p.returncode == EXIT_STORAGE:
                        errors.append(f"worker {k} lost the study's storage and stopped (exit status "
                                      f"{p.returncode}); see {log_file}")
                    elif p.returncode != 0:
                        errors.append(f"worker {k} exited with status {p.returncode}; see {log_file}")
            if progress is not None:
                tolerate(lambda: progress(run.summary()))
            if not running or bug:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        _stop(procs)
        fail_orphans(run.study(), pid_alive, {p.pid for p in procs})
        raise
    finally:
        _stop(procs)
    try:
        summary = run.summary()
    except Exception as e:
        problem = storage_problem(e)
        if problem is None:
            raise
        raise StorageUnavailable(f"the study's storage {results.redact(run.url)} is unreachable ({problem}); "
                                 f"finished trials are kept in it. When it is back, continue with: "
                                 f"nas search --resume {run.path}", errors) from None
    if bug:
        fail_orphans(run.study(), pid_alive, {p.pid for p in procs})
        raise WorkerBug(bug, errors)
    if full and summary.used < summary.budget:
        raise DiskFull(disk_full_message(run.path, shutil.disk_usage(run.path).free, None), errors)
    stopped, failed = None, 0
    if summary.used < summary.budget:
        streak = consecutive_failures(run.frozen_trials(), since=session_first_trial(run.config, session))
        if len(streak) >= run.config.max_consecutive_failures:
            failed = len(streak)
            last = streak[-1].user_attrs.get(rundir.ATTR_REASON) or "no reason recorded"
            stopped = (f"stopped after {failed} candidates failed in a row (--max-consecutive-failures "
                       f"{run.config.max_consecutive_failures}); the last one: {last}")
        elif summary.rejected >= run.config.max_rejected:
            stopped = (f"stopped after {summary.rejected} candidates were rejected before training: the space "
                       f"rarely fits this target (tighten the space or relax the limits)")
    return Outcome(run_dir=run.path, summary=summary, worker_errors=tuple(errors), stopped=stopped,
                   workers=plan.workers, failed_in_a_row=failed)


def _bug_line(log_file: Path) -> str:
    """What a worker that stopped on a bug said last (``stopped by an error in tinynas...: Type: message``)."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    said = next((line[line.index(BUG_MARK):] for line in reversed(lines) if BUG_MARK in line), None)
    return said or f"exited with status {EXIT_BUG} (an error in tinynas)"


def _spawn(run: results.Run, index: int, session: int, threads: int, storage: str | None,
           train_step: str | None) -> subprocess.Popen:
    env = dict(os.environ)
    if storage:
        env[ENV_STORAGE] = storage  # may hold a password: passed in the environment, never on the command line
    env.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
    env.setdefault("TF_NUM_INTEROP_THREADS", str(min(2, threads)))
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env["PYTHONUNBUFFERED"] = "1"
    log_file = run.path / rundir.LOGS_DIR / f"worker-{session}-{index}.log"
    cmd = [sys.executable, "-m", WORKER_MODULE, "worker", str(run.path), "--index", str(index),
           "--session", str(session), "--parent", str(os.getpid())]
    if train_step:
        cmd += ["--train-step", train_step]
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
