"""The run directory, in one place: its file names, ``run.yaml`` as a typed record, a trial's files, the
statuses a trial can have and the Optuna attribute keys tinynas writes.

Layout of a run (``nas search`` writes it, ``nas pareto``, export and the app read it)::

    RUN_DIR/
      run.yaml            what was asked (RunConfig); written last, its presence marks a run
      constraints.yaml    copy of the constraint file the run checks against
      space.yaml          copy of the search space
      dataset.json        the data set's description (shape, task, classes)
      study.db            the Optuna storage, unless the run uses PostgreSQL
      logs/               one log per worker and session
      trials/<n>/         a trained candidate (TrialFiles): model_int8.tflite, model_qat.h5, spec.json, metrics.json

Why one module: before, each reader spelled these names and ``run.yaml``'s keys itself, so a renamed key or a
new file was a hunt through six modules. ``RunConfig.load`` and ``RunConfig.save`` are a pair (the
round trip is tested) and keep the YAML exactly as earlier versions wrote it, so old runs stay readable.
"""
from __future__ import annotations

import dataclasses
import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nas import yamlio
from nas.errors import UserError
from nas.formatting import first_line

RUN_FILE = "run.yaml"
RUN_FORMAT = 1
CONSTRAINTS_FILE = "constraints.yaml"
SPACE_FILE = "space.yaml"
DATASET_FILE = "dataset.json"
STUDY_DB = "study.db"
TRIALS_DIR = "trials"
LOGS_DIR = "logs"
TIMED_TRIALS = 10_000  # the candidate cap of a --time search without --trials: the clock is the budget
FINALIZED_DIR = "finalized"  # nas finalize: finalized/<trial>/seed<k>/, each a TrialFiles folder plus FINAL_FILE
FINAL_FILE = "final.json"    # written last by nas finalize: the model's verdict on the limits

# Files of one trained candidate (nas.tf.candidate.evaluate writes them; export and nas evaluate read them).
MODEL_FILE = "model_int8.tflite"
KERAS_FILE = "model_qat.h5"
SPEC_FILE = "spec.json"
METRICS_FILE = "metrics.json"
FLOAT_WEIGHTS_FILE = "float.weights.h5"  # a multi-fidelity rung's float weights: where a promotion continues

# Trial user attributes (Optuna) that nas.search writes and nas.results reads.
ATTR_STATUS = "status"
ATTR_REASON = "reason"
ATTR_WORKER = "worker"
ATTR_SPEC = "spec"
ATTR_ESTIMATE = "estimate"
ATTR_BORDERLINE = "borderline"
ATTR_TRIAL_DIR = "trial_dir"
ATTR_METRICS = "metrics"
ATTR_RUNG = "rung"            # multi-fidelity: the rung this trial trained (nas.fidelity)
ATTR_CANDIDATE = "candidate"  # ... the candidate's first trial (its rung 0), shared by all its rungs
ATTR_PROMOTES = "promotes"    # ... a promotion's source: the trial of the rung below it continues from
# Study user attributes.
RUN_ID_ATTR = "tinynas_run_id"
BUDGET_ATTR = "budget"
STUDY_RUN_DIR_ATTR = "run_dir"
STUDY_HOST_ATTR = "host"

#: The recorded status of a trial that holds a budget slot while it trains (it becomes trained or failed).
CLAIMED = "training"

DEFAULT_MAX_CONSECUTIVE_FAILURES = 5


class TrialStatus(str, enum.Enum):
    """What a trial is, from its Optuna state and the status the worker recorded (see :mod:`nas.results`).

    A ``str`` enum: members compare equal to the plain strings older runs stored, JSON-encode as them and
    print as them. (``enum.StrEnum`` does the same but needs Python 3.11; the package supports 3.10.)
    """

    TRAINED = "trained"
    REJECTED = "rejected"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    UNUSED = "unused"
    RUNNING = "running"

    def __str__(self) -> str:  # "trained", not "TrialStatus.TRAINED", in messages and f-strings
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @property
    def uses_budget(self) -> bool:
        """A trained or failed candidate cost its training time; rejected ones cost milliseconds, interrupted and
        unused ones are run again."""
        return self in (TrialStatus.TRAINED, TrialStatus.FAILED)


@dataclass(frozen=True)
class TrialFiles:
    """The files of one trained candidate in ``path`` (``RUN_DIR/trials/<n>`` or a ``nas train --out`` folder)."""

    path: Path

    @classmethod
    def of(cls, run_dir: Path | str, number: int) -> "TrialFiles":
        return cls(Path(run_dir) / relative_trial_dir(number))

    @property
    def tflite(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def keras(self) -> Path:
        return self.path / KERAS_FILE

    @property
    def spec(self) -> Path:
        return self.path / SPEC_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def float_weights(self) -> Path:
        return self.path / FLOAT_WEIGHTS_FILE

    def finished(self) -> bool:
        """``metrics.json`` is written last: its presence marks a candidate whose files are all there."""
        return self.metrics.is_file()


def finalized_dir(run_dir: Path | str, trial: int, seed: int) -> Path:
    """``RUN_DIR/finalized/<trial>/seed<k>``: one retrained model of ``nas finalize``."""
    return Path(run_dir) / FINALIZED_DIR / str(trial) / f"seed{seed}"


def relative_trial_dir(number: int) -> str:
    """``trials/<n>``: what a trial's ``trial_dir`` attribute holds (relative, so a run directory can move)."""
    return str(Path(TRIALS_DIR) / str(number))


@dataclass(frozen=True)
class RunConfig:
    """``run.yaml``: everything ``--resume``, ``nas pareto``, export and the app need to know about a run.

    Field order is the file's key order. ``extra`` keeps keys this version does not know (a newer tinynas
    wrote them), so saving does not drop them.
    """

    run_id: str
    study_name: str
    created: str
    command: list[str]
    dataset: str
    task: str
    space: dict[str, Any]
    target: dict[str, Any]
    objectives: list[dict[str, Any]]
    trials: int
    max_rejected: int
    budget: dict[str, Any]
    seed: int
    sampler: str
    storage: str | None
    versions: dict[str, str]
    sessions: list[dict[str, Any]] = field(default_factory=list)
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES
    fidelity: dict[str, Any] | None = None  # nas.fidelity.Fidelity.to_dict(); absent: single fidelity
    format: int = RUN_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path | str) -> "RunConfig":
        """``run.yaml`` of a run directory; a :class:`UserError` when ``run_dir`` is not one."""
        path = Path(run_dir)
        if not path.is_dir():
            raise UserError(str(run_dir), "", "an existing run directory (made by nas search); no such directory")
        file = path / RUN_FILE
        if not file.is_file():
            raise UserError(str(run_dir), RUN_FILE, "a run directory made by nas search; it has no run.yaml")
        try:
            doc = yamlio.load(file.read_text(encoding="utf-8"), str(file))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise UserError(str(file), "", f"a readable run.yaml ({first_line(e)})") from None
        if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT or not doc.get("study_name"):
            raise UserError(str(file), "format", f"a tinynas run file (format {RUN_FORMAT} with a study_name)")
        return cls.from_dict(doc, str(file))

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = RUN_FILE) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in doc]
        if missing:
            raise UserError(source, missing[0], "a run file written by nas search; this key is missing")
        known = {k: v for k, v in doc.items() if k in names}
        return cls(**known, extra={k: v for k, v in doc.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        """The YAML document, keys in the order earlier versions wrote them (``format`` first)."""
        out: dict[str, Any] = {"format": self.format}
        for f in dataclasses.fields(self):
            if f.name not in ("format", "extra") and not (f.name == "fidelity" and self.fidelity is None):
                out[f.name] = getattr(self, f.name)
        out.update(self.extra)
        return out

    def save(self, run_dir: Path | str) -> None:
        """Write ``run.yaml`` atomically (a reader never sees half a file)."""
        tmp = Path(run_dir) / (RUN_FILE + ".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=120))
        os.replace(tmp, Path(run_dir) / RUN_FILE)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def storage_url(self, run_dir: Path | str, override: str | None = None) -> str:
        """The storage of the run: ``override`` (e.g. with a password), else run.yaml's, else its ``study.db``."""
        return storage_url(run_dir, self.storage, override)


def storage_url(run_dir: Path | str, recorded: str | None = None, override: str | None = None) -> str:
    """``override``, else the recorded URL, else ``sqlite:///RUN_DIR/study.db``."""
    if override:
        return override
    if recorded:
        return str(recorded)
    return f"sqlite:///{(Path(run_dir) / STUDY_DB).resolve()}"
