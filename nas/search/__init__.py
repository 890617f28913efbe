"""``nas search``: a constrained multi-objective Optuna search that trains only candidates that fit.

Shape of a run (see DESIGN.md, :mod:`nas.rundir` for the run directory and :mod:`nas.results` for reading it)::

    nas search (coordinator: no TensorFlow)            worker processes (python -m nas.search worker ...)
      create or resume the run directory + study  -->    loop: ask Optuna for a point of the space
      start N workers, poll the study for progress         profile it analytically (milliseconds)
      mark trials of dead workers as interrupted           over a limit? set_constraint, PRUNED, next
      report counts and the best of each objective         else claim a budget slot, nas.tf.candidate.evaluate
                                                           (QAT, INT8, measure), store attributes, tell

Modules: :mod:`nas.search.preflight` (the request, storage URL, run directory, disk and feasibility checks),
:mod:`nas.search.coordinator` (create / resume a run, start and watch the workers, orphaned trials) and
:mod:`nas.search.worker` (the objective and the worker process). This package re-exports their public names.

Decisions, and why:

* **Objectives**: the INT8 task metric on the **validation** split (accuracy up or gaze error down; the
  search never reads the test split, ``tests/test_protocol.py`` proves it), the *measured* peak memory the
  target's runtime needs (TFLM arena, or the IMX500 memory model), and energy per inference from the
  constraint file's model (down).
* **Feasibility first**: each sampled spec is profiled analytically; one that breaks a limit by more than the
  cost model's error (``nas.profile.ESTIMATE_MARGIN``: 1% of the limit, at least 1 KiB) is rejected on paper.
  Inside that margin the untrained INT8 model is converted and measured (seconds; memory does not depend on
  the weights, trial attribute ``borderline``) and that decides. A rejected trial records one
  ``trial.set_constraint`` per limit (``(value - limit) / limit``, feasible when <= 0) and ends PRUNED with
  status ``rejected``: never trained, no files, no training time. PRUNED rather than COMPLETE because there
  is no honest INT8 metric to report, and TPE still learns from it (it ranks infeasible trials by their
  total violation, whatever their state). A trained trial's constraints use the *measured* memory and
  ``.tflite`` size, so one whose real arena breaks the limit although the estimate passed never reaches the
  feasible Pareto front.
* **Time**: ``--time 10m`` is a wall-clock budget per session, counted from the command's start and recorded
  in run.yaml's session (``deadline``); a worker starts no candidate after it, nor when less time is left than
  the run's median candidate took, and the one in training finishes. Without ``--trials`` the clock alone
  limits the search.
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
* **A bug is not a failed candidate**: only :class:`nas.errors.CandidateError` (NaN loss, out of memory, a
  conversion refused) makes a trial ``failed``; any other exception stops its worker with the traceback in the
  worker's log, the coordinator stops the other workers and ``nas search`` ends with one line (``WorkerBug``).
  After ``--max-consecutive-failures`` (default 5) failed candidates in a row the search stops too: a data set
  or budget that no candidate can train on should not use up the whole budget.
* **Workers**: at most one per candidate still to train; more workers than CPU cores get a warning.
* **Kill safety**: Optuna commits each finished trial; a trial cut off by SIGKILL stays RUNNING until
  ``--resume`` (same host: its worker's pid is gone) or Optuna's heartbeat (other hosts) marks it FAIL with
  status ``interrupted``; it does not count against the budget, so resume runs the remaining budget.
* **Lost storage, full disk**: a worker that loses the study's database (PostgreSQL stopped, network gone)
  logs one ERROR line and exits with status 4; the coordinator rides out an outage while polling and, if the
  study is still unreachable when its workers are gone, ends with one line and exit 1 (``StorageUnavailable``):
  committed trials are safe in the database and ``--resume`` continues. A disk that fills during the search:
  before each trial a worker checks there is room for one (else, and on a write that fails with ENOSPC or
  SQLite's "disk is full", it logs one ERROR line and exits with status 5); the cut-off trial is
  ``interrupted``, not failed, and the coordinator ends with one line and exit 1 (``DiskFull``). The run directory is
  checked before anything is read or trained: it must be creatable and writable (a real write) and have room
  for the study and at least one trial (a warning when not for the whole budget); ``--resume`` checks it again.
* **Many machines**: start the run with ``--storage postgresql+psycopg2://...`` and the run directory on a
  shared file system (trained models land in ``RUN_DIR/trials/<n>/``), then on every other machine run
  ``nas search --resume RUN_DIR --workers N``. run.yaml never holds a password: give it with ``--storage``
  again, ``PGPASSWORD`` or ``~/.pgpass``.
"""
from nas.rundir import DEFAULT_MAX_CONSECUTIVE_FAILURES
from nas.search.coordinator import (MAX_REJECTED_PER_TRIAL, MIN_MAX_REJECTED, POLL_S, STOP_WAIT_S, WORKER_MODULE,
                                    Outcome, Progress, WorkerBug, WorkerPlan, create_run, execute, fail_orphans,
                                    pid_alive, plan_workers, resume_run)
from nas.search.preflight import (DEFAULT_DATASET, DEFAULT_EPOCHS, DEFAULT_TRAIN_LIMIT, DEFAULT_TRIALS,
                                  FEASIBILITY_PROBES, SAMPLERS, TIMED_TRIALS, SearchRequest, check_disk_space,
                                  check_storage_url, estimate_record, feasible_fraction, measured_checks,
                                  trial_disk_bytes, violation)
from nas.search.worker import (EXIT_BUG, EXIT_DISK_FULL, EXIT_STORAGE, HOST, BudgetUsed, DiskFull,
                               StorageUnavailable, TrainStep, Worker, budget_counts, consecutive_failures, disk_full,
                               last_was_unused, make_sampler, run_worker, storage_problem, time_is_up, uses_budget,
                               worker_seed)

__all__ = [
    "DEFAULT_DATASET", "DEFAULT_EPOCHS", "DEFAULT_MAX_CONSECUTIVE_FAILURES", "DEFAULT_TRAIN_LIMIT", "DEFAULT_TRIALS",
    "EXIT_BUG", "EXIT_DISK_FULL",
    "EXIT_STORAGE", "FEASIBILITY_PROBES", "HOST", "MAX_REJECTED_PER_TRIAL", "MIN_MAX_REJECTED", "POLL_S",
    "SAMPLERS", "STOP_WAIT_S", "TIMED_TRIALS", "WORKER_MODULE", "BudgetUsed", "DiskFull", "Outcome", "Progress",
    "SearchRequest",
    "StorageUnavailable", "TrainStep", "Worker", "WorkerBug", "WorkerPlan", "budget_counts", "check_disk_space",
    "check_storage_url", "consecutive_failures", "create_run", "disk_full", "estimate_record", "execute",
    "fail_orphans", "feasible_fraction", "last_was_unused", "make_sampler", "measured_checks", "pid_alive",
    "plan_workers", "resume_run", "run_worker", "storage_problem", "time_is_up", "trial_disk_bytes", "uses_budget",
    "violation",
    "worker_seed",
]
