"""A search worker process: ``python -m nas.search worker RUN_DIR ...``, one trial at a time until the budget is
used. The only part of a search that trains, through a training step (default :func:`nas.tf.candidate.evaluate`,
imported in the worker process only, so the coordinator never loads TensorFlow).

A candidate's own failure (:class:`nas.errors.CandidateError`: NaN loss, out of memory, a conversion refused)
makes its trial ``failed`` and the search goes on; any other exception is a bug in tinynas and stops the worker
with the traceback in its log (exit status :data:`EXIT_BUG`), instead of spending the budget on it.
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import importlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from nas import results, rundir
from nas.budget import Budget
from nas.errors import CandidateError, UserError
from nas.fidelity import Fidelity, Rung, RungResult, next_promotion, rungs as fidelity_rungs
from nas.formatting import first_line, jsonable
from nas.metrics import metric_for
from nas.rundir import RunConfig, TrialFiles, TrialStatus
from nas.search.preflight import estimate_record, feasible_fraction, measured_checks, trial_disk_bytes, violation
from nas.storage import open_storage

log = logging.getLogger(__name__)

HOST = socket.gethostname()
ENV_STORAGE = "TINYNAS_STORAGE_URL"
EXIT_STORAGE = 4                     # a worker's exit status when it lost the study's storage
EXIT_DISK_FULL = 5                   # a worker's exit status when the run directory's disk is full
EXIT_BUG = 6                         # a worker's exit status when tinynas itself raised (not a candidate)
BUG_MARK = "stopped by an error in tinynas, not in a candidate: "  # the log line the coordinator reports

#: A training step: ``(spec, dataset, budget, out_dir, *, seed, target) -> metrics`` as
#: :func:`nas.tf.candidate.evaluate` returns them. Benchmarks and tests pass another one.
TrainStep = Callable[..., dict[str, Any]]


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


class BudgetUsed(RuntimeError):
    """Other workers used the last budget slot while this trial was being sampled."""


@dataclass
class Worker:
    """One worker process's view of a run: the space, target and budget, and the objective it optimises.

    ``train_step`` trains one candidate; ``None`` is :func:`nas.tf.candidate.evaluate`, imported only when the
    first candidate is trained, so that loading a worker (the coordinator does, to size the disk) needs no
    TensorFlow.
    """

    run_dir: Path
    config: RunConfig
    space: Any
    target: Any
    shape: Any
    index: int = 0
    train_step: TrainStep | None = None

    @classmethod
    def load(cls, run_dir: Path, index: int = 0, train_step: TrainStep | None = None) -> "Worker":
        from nas import space as space_mod
        from nas.hardware import load_target

        config = RunConfig.load(run_dir)
        desc = json.loads((run_dir / rundir.DATASET_FILE).read_text())
        space = space_mod.load_run_space(str(run_dir / rundir.SPACE_FILE), config.space)
        return cls(run_dir=run_dir, config=config, space=space,
                   target=load_target(str(run_dir / rundir.CONSTRAINTS_FILE)),
                   shape=space_mod.DataShape.from_description(desc), index=index, train_step=train_step)

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
            raise DiskFull(disk_full_message(self.run_dir, free, per_trial))

    def objective(self, trial: Any) -> tuple[float, float, float]:
        """Profile, reject or train one sampled candidate. Never trains one that breaks a limit on paper.

        Only a :class:`CandidateError` makes the trial ``failed``; any other exception is tinynas's own, so
        the trial is recorded ``interrupted`` (it used no budget: the candidate is not to blame) and the
        exception goes on to stop the worker.
        """
        from nas import profile
        from nas import space as space_mod

        trial.set_user_attr(rundir.ATTR_WORKER, {"host": HOST, "pid": os.getpid(), "index": self.index})
        spec = space_mod.to_spec(self.space, space_mod.sample(self.space, trial.suggest_categorical), self.shape)
        estimate, checks = estimate_record(spec, self.target)
        trial.set_user_attr(rundir.ATTR_SPEC, spec.to_string())
        trial.set_user_attr(rundir.ATTR_ESTIMATE, estimate)
        if rundir.ATTR_PROMOTES in trial.user_attrs:
            return self._promotion(trial, spec, estimate)
        verdicts = {c.name: profile.paper_verdict(c.name, c.value, c.limit) for c in checks}
        if "exceeds" in verdicts.values():
            self._reject(trial, checks, [c for c in checks if verdicts[c.name] == "exceeds"], "on paper")
        borderline = [name for name, v in verdicts.items() if v == "borderline"]
        if borderline:
            # Within the cost model's error of a limit: the untrained INT8 model's memory decides, in seconds.
            measured = self._measure_untrained(spec)
            trial.set_user_attr(rundir.ATTR_BORDERLINE, {"limits": borderline, "measured": measured})
            checks = measured_checks(estimate, measured, self.target)
            log.info("trial %d: %s within the estimate's margin of the limit; measured before training (%.1f s)",
                     trial.number, ", ".join(borderline), measured["seconds"])
            if not all(c.ok for c in checks):
                self._reject(trial, checks, [c for c in checks if not c.ok], "when measured before training")
        trial.set_user_attr(rundir.ATTR_STATUS, rundir.CLAIMED)
        if not self._claim(trial):
            trial.set_user_attr(rundir.ATTR_STATUS, TrialStatus.UNUSED)
            raise BudgetUsed("the budget was used up by other workers while this trial was sampled")
        if self.fidelity.enabled:
            trial.set_user_attr(rundir.ATTR_RUNG, 0)
            trial.set_user_attr(rundir.ATTR_CANDIDATE, trial.number)
        return self._train_and_record(trial, spec, estimate, None)

    def _promotion(self, trial: Any, spec: Any, estimate: dict[str, Any]) -> tuple[float, float, float]:
        """Continue a candidate one rung up from the rung below's weights (the trial was enqueued by
        :meth:`enqueue_promotion`). Of two workers that enqueued the same promotion, the lower trial number
        trains it and the other steps back (``unused``): the claim is written with the trial, in one insert."""
        attrs = trial.user_attrs
        key = (int(attrs[rundir.ATTR_CANDIDATE]), int(attrs[rundir.ATTR_RUNG]))
        trial.set_user_attr(rundir.ATTR_STATUS, rundir.CLAIMED)
        rivals = [t.number for t in trial.study.get_trials(deepcopy=False) if promotion_key(t) == key
                  and promotion_claims(t)]
        if min(rivals, default=trial.number) < trial.number:
            trial.set_user_attr(rundir.ATTR_STATUS, TrialStatus.UNUSED)
            raise BudgetUsed(f"candidate {key[0]} is promoted to rung {key[1]} by trial {min(rivals)}")
        below = next((t for t in trial.study.get_trials(deepcopy=False)
                      if t.number == int(attrs[rundir.ATTR_PROMOTES])), None)
        if below is None or not below.user_attrs.get(rundir.ATTR_TRIAL_DIR):
            raise RuntimeError(f"trial {trial.number} promotes trial {attrs[rundir.ATTR_PROMOTES]}, which has no files")
        return self._train_and_record(trial, spec, estimate, self.run_dir / below.user_attrs[rundir.ATTR_TRIAL_DIR])

    def _train_and_record(self, trial: Any, spec: Any, estimate: dict[str, Any], start_from: Path | None
                          ) -> tuple[float, float, float]:
        trial_dir = rundir.relative_trial_dir(trial.number)
        trial.set_user_attr(rundir.ATTR_TRIAL_DIR, trial_dir)
        measured = (trial.user_attrs.get(rundir.ATTR_BORDERLINE) or {}).get("measured") or {}
        try:
            metrics = self._train(spec, TrialFiles(self.run_dir / trial_dir), trial, start_from)
            values = self._values(metrics, estimate, measured)
        except CandidateError as e:
            # A full disk is not the candidate's fault: the trial is cut off (run again on resume), not failed.
            full = disk_full(e)
            trial.set_user_attr(rundir.ATTR_STATUS, TrialStatus.INTERRUPTED if full else TrialStatus.FAILED)
            trial.set_user_attr(rundir.ATTR_REASON, ("disk full: " if full else "") + first_line(e, with_type=True))
            raise
        except Exception as e:
            trial.set_user_attr(rundir.ATTR_STATUS, TrialStatus.INTERRUPTED)
            trial.set_user_attr(rundir.ATTR_REASON,
                                ("disk full: " if disk_full(e) else BUG_MARK) + first_line(e, with_type=True))
            raise
        for c in measured_checks(estimate, {**measured, **metrics}, self.target):
            trial.set_constraint(c.name, violation(c))
        trial.set_user_attr(rundir.ATTR_METRICS, metrics)
        trial.set_user_attr(rundir.ATTR_STATUS, TrialStatus.TRAINED)
        return values

    def _reject(self, trial: Any, checks: list[Any], broken: list[Any], how: str) -> None:
        """End a trial that cannot fit: one constraint per limit, status ``rejected``, never trained."""
        import optuna

        for c in checks:
            trial.set_constraint(c.name, violation(c))
        trial.set_user_attr(rundir.ATTR_STATUS, TrialStatus.REJECTED)
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
        return sum(1 for t in trials if uses_budget(t)) <= int(self.config.trials)

    @property
    def fidelity(self) -> Fidelity:
        return Fidelity.from_dict(self.config.fidelity)

    def _train(self, spec: Any, files: TrialFiles, trial: Any, start_from: Path | None) -> dict[str, Any]:
        """Train with the training step; the default one is the only place that reaches TensorFlow.

        A multi-fidelity run trains the trial's rung (``evaluate_rung``, or the given step called with
        ``rung``, ``below`` and ``start_from``)."""
        budget = self.full_budget(trial.study)
        step = self.train_step
        kwargs: dict[str, Any] = {}
        if self.fidelity.enabled:
            ladder = self.rungs(budget)
            k = int(trial.user_attrs[rundir.ATTR_RUNG])
            kwargs = {"rung": ladder[k], "below": ladder[k - 1] if k else None, "start_from": start_from}
            if step is None:
                from nas.tf.candidate import evaluate_rung

                step = evaluate_rung
        elif step is None:
            from nas.tf.candidate import evaluate

            step = evaluate
        metrics = step(spec, self.config.dataset, budget, files.path, seed=int(self.config.seed), target=self.target,
                       **kwargs)
        return json.loads(json.dumps(metrics, default=jsonable))

    def rungs(self, budget: Budget) -> list[Rung]:
        """This run's rungs: the budget's float steps on the recorded training-set size (no data is read)."""
        from nas.budget import plan

        counts = (json.loads((self.run_dir / rundir.DATASET_FILE).read_text()).get("counts") or {})
        n_train = int(counts.get("train") or 0)
        if budget.train_limit:
            n_train = min(n_train, int(budget.train_limit))
        p = plan(budget, max(1, n_train))
        return fidelity_rungs(self.fidelity, p.float_epochs, p.steps_per_epoch)

    def next_promotion(self, study: Any) -> RungResult | None:
        """What ASHA promotes next in this study (None: start a new candidate), from the study's trials alone:
        every worker decides from the same storage, never from its own memory."""
        trials = study.get_trials(deepcopy=False)
        signs = [1.0 if d.name == "MINIMIZE" else -1.0 for d in study.directions]
        done = [RungResult(candidate=int(t.user_attrs[rundir.ATTR_CANDIDATE]), trial=t.number,
                           rung=int(t.user_attrs[rundir.ATTR_RUNG]),
                           values=tuple(s * v for s, v in zip(signs, t.values)))
                for t in trials if t.state.name == "COMPLETE" and rundir.ATTR_RUNG in t.user_attrs
                and all(c <= 0 for c in t.constraints.values())]
        claimed = {k for t in trials if (k := promotion_key(t)) is not None and promotion_claims(t)}
        return next_promotion(done, claimed, self.fidelity)

    def enqueue_promotion(self, study: Any, result: RungResult) -> None:
        """Queue ``result``'s candidate for the rung above: a WAITING trial with the same parameters, whose claim
        (candidate, rung, source) is written with it; whichever worker asks next trains it."""
        source = next(t for t in study.get_trials(deepcopy=False) if t.number == result.trial)
        study.enqueue_trial(dict(source.params), user_attrs={
            rundir.ATTR_PROMOTES: result.trial, rundir.ATTR_RUNG: result.rung + 1,
            rundir.ATTR_CANDIDATE: result.candidate}, skip_if_exists=False)
        log.info("promoting candidate %d (trial %d) to rung %d", result.candidate, result.trial, result.rung + 1)

    def full_budget(self, study: Any) -> Budget:
        """The budget this run trains with: recorded on the study by its first trained trial, so a resumed run
        keeps every field even if the defaults of a later version differ."""
        recorded = study.user_attrs.get(rundir.BUDGET_ATTR)
        if recorded:
            return Budget.from_dict(recorded)
        budget = Budget.from_dict({k: v for k, v in self.config.budget.items() if v is not None})
        study.set_user_attr(rundir.BUDGET_ATTR, budget.to_dict())
        return budget

    def _values(self, metrics: dict[str, Any], estimate: dict[str, Any], measured: dict[str, Any]
                ) -> tuple[float, float, float]:
        """What Optuna is told: the INT8 metric and measured memory of a whole candidate (and of a top rung);
        below the top rung, the float validation metric and the memory measured before training or estimated."""
        name, higher = metric_for(self.shape.task)
        if metrics.get("metric_name") != name or bool(metrics.get("higher_is_better")) != higher:
            raise CandidateError(f"the trainer reported {metrics.get('metric_name')!r}, the study optimises {name!r}")
        if "rung_metric" in metrics:
            memory = measured.get("measured_memory_bytes", metrics["rung_memory_bytes"])
            values = (float(metrics["rung_metric"]), float(memory), float(estimate["energy_mj"]))
        else:
            values = (float(metrics["int8_metric"]), float(metrics["measured_memory_bytes"]),
                      float(estimate["energy_mj"]))
        if not all(v == v and abs(v) != float("inf") for v in values):
            raise CandidateError(f"non-finite objective values {values}")
        return values


def disk_full_message(run_dir: Path, free: int, per_trial: int | None) -> str:
    need = "" if per_trial is None else f"; a trial needs about {per_trial / 1024 ** 2:,.1f} MB"
    return (f"the disk of {run_dir} is full ({free / 1024 ** 2:,.1f} MB free{need}); the search stopped and "
            f"finished trials are kept. Free some space, then continue with: nas search --resume {run_dir}")


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
    if rundir.ATTR_PROMOTES in trial.user_attrs:
        return False  # a promotion continues a candidate already counted: --trials counts candidates
    status = results.status_of(trial.state.name, trial.user_attrs)
    return status.uses_budget or (status == TrialStatus.RUNNING
                                  and trial.user_attrs.get(rundir.ATTR_STATUS) == rundir.CLAIMED)


def promotion_key(trial: Any) -> tuple[int, int] | None:
    """``(candidate, rung)`` a promotion trial continues, or None for a new candidate."""
    attrs = trial.user_attrs
    if rundir.ATTR_PROMOTES not in attrs:
        return None
    return int(attrs[rundir.ATTR_CANDIDATE]), int(attrs[rundir.ATTR_RUNG])


def promotion_claims(trial: Any) -> bool:
    """Does this promotion trial hold its (candidate, rung)? Queued, running, trained and failed ones do;
    one that stepped back (unused) or was cut off (interrupted: done again on resume) does not."""
    state = trial.state.name
    if state in ("WAITING", "RUNNING", "COMPLETE"):
        return state != "RUNNING" or trial.user_attrs.get(rundir.ATTR_STATUS) != TrialStatus.UNUSED
    return state == "FAIL" and trial.user_attrs.get(rundir.ATTR_STATUS) == TrialStatus.FAILED


def budget_counts(study: Any) -> tuple[int, int]:
    """Trials that used (or are using) the budget, and rejected ones."""
    trials = study.get_trials(deepcopy=False)
    return sum(1 for t in trials if uses_budget(t)), sum(1 for t in trials if t.state.name == "PRUNED")


def consecutive_failures(trials: Iterable[Any], since: int = 0) -> list[Any]:
    """The failed candidates since the last trained one, in the order they finished (``FrozenTrial`` s), among
    trials numbered ``since`` or later (the session's own: a resumed search starts a new streak).

    Rejected, interrupted and unused trials neither break nor extend the streak: they say nothing about
    whether candidates can be trained.
    """
    done = [t for t in trials
            if t.number >= since and results.status_of(t.state.name, t.user_attrs).uses_budget]
    done.sort(key=lambda t: (t.datetime_complete is None, t.datetime_complete or 0, t.number))
    streak: list[Any] = []
    for t in reversed(done):
        if results.status_of(t.state.name, t.user_attrs) != TrialStatus.FAILED:
            break
        streak.append(t)
    return streak[::-1]


def session_first_trial(config: RunConfig, session: int) -> int:
    """The first trial number of session ``session`` (0 for runs written before sessions recorded it)."""
    sessions = config.sessions
    return int(sessions[session].get("first_trial", 0)) if 0 <= session < len(sessions) else 0


def resolve_train_step(text: str) -> TrainStep:
    """``module:function`` (importable in the worker process) as a training step."""
    module, _, name = text.partition(":")
    if not module or not name:
        raise UserError("--train-step", "train_step", f"module:function, got '{text}'")
    return getattr(importlib.import_module(module), name)


def run_worker(run_dir: Path, index: int, session: int, storage: str | None = None,
               train_step: TrainStep | None = None) -> int:
    """A worker's loop: one trial at a time until the budget is used, too many candidates were rejected or
    too many failed in a row."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO)
    worker = Worker.load(run_dir, index, train_step)
    config = worker.config
    url = config.storage_url(run_dir, storage)
    sampler = make_sampler(config.sampler, worker_seed(int(config.seed), session, index), int(config.trials))
    try:
        record = config.sessions[session] if 0 <= session < len(config.sessions) else {}
        return _worker_loop(run_dir, worker, url, sampler, session_first_trial(config, session),
                            record.get("deadline"), record.get("epoch_images"))
    except DiskFull:
        raise
    except Exception as e:
        if disk_full(e):
            raise DiskFull(disk_full_message(run_dir, shutil.disk_usage(run_dir).free, None)) from e
        problem = storage_problem(e)
        if problem is None:
            raise
        raise StorageUnavailable(f"lost the study's storage {results.redact(url)} ({problem}): stopping; finished "
                                 f"trials are safe in it, the trial in progress is marked interrupted by "
                                 f"nas search --resume") from e


def images_trained(trials: Iterable[Any], since: int = 0) -> int:
    """Training images (steps x batch, over epochs, rungs and retries) of the finished trials numbered ``since``
    or later: what an ``--epoch-images`` budget counts. Rejected candidates trained none."""
    return sum(int((t.user_attrs.get(rundir.ATTR_METRICS) or {}).get("trained_images") or 0)
               for t in trials if t.number >= since and t.state.name != "RUNNING")


def compute_is_used(study: Any, epoch_images: int | None, since: int = 0) -> str | None:
    """Why no candidate should start under an --epoch-images budget, or None. Candidates in flight finish, so a
    session ends up to one candidate per worker past the budget."""
    if not epoch_images:
        return None
    used = images_trained(study.get_trials(deepcopy=False), since)
    return f"the compute budget is used ({used:,} of {int(epoch_images):,} epoch-images)" if used >= epoch_images \
        else None


def time_is_up(study: Any, deadline: float | None, now: float | None = None, rung: int | None = None) -> str | None:
    """Why no candidate should start now under a --time budget, or None: the deadline has passed, or less time
    is left than the median candidate of this run took (it would end well after the deadline). A multi-fidelity
    run compares with the median of the ``rung`` about to be trained, once one of that rung has finished."""
    if deadline is None:
        return None
    left = deadline - (time.time() if now is None else now)
    if left <= 0:
        return "the time budget is used"
    done = [t for t in study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE" and t.datetime_start and t.datetime_complete]
    same = [t for t in done if t.user_attrs.get(rundir.ATTR_RUNG) == rung]
    took = sorted((t.datetime_complete - t.datetime_start).total_seconds() for t in (same if rung is not None and same
                                                                                       else done))
    if took and left < took[len(took) // 2]:
        return f"{left:.0f} s of the time budget left, less than a candidate's median {took[len(took) // 2]:.0f} s"
    return None


def _worker_loop(run_dir: Path, worker: Worker, url: str, sampler: Any, first_trial: int,
                 deadline: float | None = None, epoch_images: int | None = None) -> int:
    import optuna

    config = worker.config
    trials, max_rejected = int(config.trials), int(config.max_rejected)
    max_failures = int(config.max_consecutive_failures)
    study = optuna.load_study(study_name=config.study_name, storage=open_storage(url, heartbeat=True),
                              sampler=sampler)
    if study.user_attrs.get(rundir.RUN_ID_ATTR) != config.run_id:
        log.error("study %s does not belong to run %s", config.study_name, run_dir)
        return 2
    per_trial = worker.trial_disk_bytes()
    fidelity = worker.fidelity
    while True:
        used, rejected = budget_counts(study)
        promotion = worker.next_promotion(study) if fidelity.enabled else None
        if used >= trials and promotion is None:
            log.info("budget used: %d/%d trials", used, trials)
            return 0
        if rejected >= max_rejected and promotion is None:
            log.warning("%d candidates rejected before training (cap %d): stopping", rejected, max_rejected)
            return 0
        spent = compute_is_used(study, epoch_images, first_trial)
        if spent:
            log.info("%s: stopping", spent)
            return 0
        late = time_is_up(study, deadline, rung=(promotion.rung + 1 if promotion is not None else 0)
                          if fidelity.enabled else None)
        if late:
            log.info("%s: stopping", late)
            return 0
        streak = consecutive_failures(study.get_trials(deepcopy=False), since=first_trial)
        if len(streak) >= max_failures:
            log.warning("%d candidates failed in a row (cap %d): stopping", len(streak), max_failures)
            return 0
        worker.check_room(per_trial)
        if promotion is not None:
            worker.enqueue_promotion(study, promotion)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            # Only a candidate's own failure is caught (the trial becomes failed, the search goes on).
            study.optimize(worker.objective, n_trials=1, catch=(CandidateError, BudgetUsed))
        if last_was_unused(study, os.getpid()):
            time.sleep(random.uniform(0.2, 1.0))  # two workers stepped back from the same slot: de-synchronise


def last_was_unused(study: Any, pid: int) -> bool:
    mine = [t for t in study.get_trials(deepcopy=False)
            if (t.user_attrs.get(rundir.ATTR_WORKER) or {}).get("pid") == pid and t.state.name != "RUNNING"]
    return bool(mine) and mine[-1].user_attrs.get(rundir.ATTR_STATUS) == TrialStatus.UNUSED


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
    w.add_argument("--train-step", help="module:function to train candidates with (default nas.tf.candidate.evaluate)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s worker-{args.index} %(levelname)s %(name)s: %(message)s")
    if args.parent:
        _die_with_parent(args.parent)
    _sigint_on_term()
    try:
        step = resolve_train_step(args.train_step) if args.train_step else None
        return run_worker(Path(args.run_dir).resolve(), args.index, args.session, os.environ.get(ENV_STORAGE), step)
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
    except Exception as e:
        log.exception("unexpected error")
        log.error("%s%s", BUG_MARK, first_line(e, with_type=True))  # last line of the log: what the coordinator reports
        return EXIT_BUG
