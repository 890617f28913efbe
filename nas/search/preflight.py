"""Checks before a search starts: the request, the storage URL, the run directory and its disk, and whether the
space can fit the target at all. Everything here runs in the coordinator, before any data is trained on, and
reports a mistake as one :class:`nas.errors.UserError` line.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from nas import results, rundir
from nas.errors import UserError, did_you_mean
from nas.fidelity import MODES as FIDELITY_MODES, Fidelity, rungs as fidelity_rungs

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "nsga2", "random")
DEFAULT_DATASET = "mnist"
DEFAULT_TRIALS = 20
TIMED_TRIALS = rundir.TIMED_TRIALS
DEFAULT_EPOCHS = 2
DEFAULT_TRAIN_LIMIT = 2000           # only when the data set is the default one: the ~13-minute demo
FEASIBILITY_PROBES = 500
RUN_DIR_RESERVE_BYTES = 16 * 1024 ** 2   # study.db, logs and the run's own files
TRIAL_FILE_OVERHEAD_BYTES = 256 * 1024   # per trial: .h5 container, JSON files (measured ~180 KB)
TRIAL_FLASH_FACTOR = 6               # .tflite ~ the flash estimate; the QAT .h5 holds float weights and more


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
    max_consecutive_failures: int = rundir.DEFAULT_MAX_CONSECUTIVE_FAILURES
    time_s: float | None = None       # --time: no candidate starts after started_at + time_s (wall clock)
    started_at: float | None = None   # when the command started (time.time()); default: when the run is made
    epoch_images: int | None = None   # --epoch-images: no candidate starts once the session trained this many
    fidelity: str = "none"            # --fidelity: "asha" (rungs, nas.fidelity) or "none" (every candidate fully)
    eta: int = 3                      # --eta: ASHA continues the best 1/eta of each rung
    rungs: int = 3                    # --rungs: fidelity levels, the top one the full candidate budget


def check_request(req: SearchRequest) -> None:
    if req.time_s is not None and req.time_s <= 0:
        raise UserError("--time", "time", f"a positive duration such as 10m or 1h, got {req.time_s:g} s")
    if req.epoch_images is not None and req.epoch_images < 1:
        raise UserError("--epoch-images", "epoch_images", f"a positive number of training images (summed over "
                                                          f"epochs and candidates), got {req.epoch_images}")
    if req.trials < 1:
        raise UserError("--trials", "trials", f"a positive number of candidates to train, got {req.trials}")
    if req.epochs < 1:
        raise UserError("--epochs", "epochs", f"a positive number of training epochs, got {req.epochs}")
    if req.workers < 1:
        raise UserError("--workers", "workers", f"a positive number of worker processes, got {req.workers}")
    if req.train_limit is not None and req.train_limit < 16:
        raise UserError("--train-limit", "train_limit", f"at least 16 training samples, got {req.train_limit}")
    if req.seed < 0:
        raise UserError("--seed", "seed", f"a non-negative integer, got {req.seed}")
    if req.learning_rate is not None and not (0 < req.learning_rate < float("inf")):
        raise UserError("--lr", "learning_rate", f"a positive, finite learning rate, got {req.learning_rate}")
    check_max_failures(req.max_consecutive_failures)
    if req.fidelity not in FIDELITY_MODES:
        raise UserError("--fidelity", "fidelity", f"one of {', '.join(FIDELITY_MODES)}, got '{req.fidelity}'"
                        + did_you_mean(req.fidelity, FIDELITY_MODES))
    if req.eta < 2:
        raise UserError("--eta", "eta", f"at least 2 (the rung above keeps 1/eta of the candidates), got {req.eta}")
    if req.rungs < 2:
        raise UserError("--rungs", "rungs", f"at least 2 fidelity levels, got {req.rungs}")
    if req.sampler not in SAMPLERS:
        raise UserError("--sampler", "sampler", f"one of {', '.join(SAMPLERS)}, got '{req.sampler}'"
                        + did_you_mean(req.sampler, SAMPLERS))


def check_fidelity(req: SearchRequest, n_train: int, train_limit: int | None) -> Fidelity:
    """The request's fidelity, refused in one line when its rungs cannot be cut from the candidate budget."""
    from nas.budget import Budget, plan

    fidelity = Fidelity(mode=req.fidelity, eta=req.eta, rungs=req.rungs)
    if fidelity.enabled:
        n = min(n_train, train_limit) if train_limit else n_train
        p = plan(Budget(epochs=req.epochs, train_limit=train_limit, learning_rate=req.learning_rate), max(1, n))
        try:
            fidelity_rungs(fidelity, p.float_epochs, p.steps_per_epoch)
        except ValueError as e:
            raise UserError("--fidelity", "fidelity", f"rungs that fit the candidate budget ({p.describe()}): {e}"
                            ) from None
    return fidelity


def check_max_failures(n: int) -> None:
    """At least one failed candidate before the search stops (keras-tuner's ``max_consecutive_failed_trials``)."""
    if n < 1:
        raise UserError("--max-consecutive-failures", "max_consecutive_failures",
                        f"a positive number of failed candidates in a row before the search stops, got {n}")


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


def dataset_key(name: str) -> str:
    """Built-in names stay names; paths become absolute so that resume works from any directory."""
    from nas import data

    if name in data.names():
        return name
    return str(Path(name).expanduser().resolve())


def check_run_dir_location(path: Path, flag: str = "--run-dir", *, given: bool = True) -> Path:
    """Refuse, before any data is read, a run directory that cannot be made or written; returns the nearest
    existing folder at or above ``path`` (where free space is measured). ``given``: the user named ``path``
    itself (it must be new or empty), not just the folder runs are made in."""
    if given and path.exists() and not path.is_dir():
        raise UserError(flag, "run_dir", f"a directory, '{path}' is a file")
    if given and (path / rundir.RUN_FILE).exists():
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
    probe_write(base, flag, path)
    return base


def probe_write(base: Path, flag: str, path: Path) -> None:
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
    measured = {"tflm_arena_bytes": metrics.get("tflm_arena_bytes"), "tflite_bytes": metrics.get("tflite_bytes"),
                "imx500_model_bytes": metrics.get("imx500_bytes")}
    values.update({key: value for key, (value, _) in target.memory_basis(measured).items() if value is not None})
    return target.check(values)


def violation(check: Any) -> float:
    """A limit check as an Optuna constraint value: relative excess, feasible when <= 0."""
    return (float(check.value) - float(check.limit)) / float(check.limit)
