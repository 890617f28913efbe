"""Reading what export starts from: a trained trial folder (what ``nas train --out DIR`` and a search's
``runs/<study>/trials/<n>/`` hold), its data set, and whether a source folder is a run directory instead.

The trial folder's layout is :class:`nas.rundir.TrialFiles`: the same one the search writes."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas import rundir
from nas.errors import UserError
from nas.rundir import TrialFiles
from nas.spec import ArchSpec

#: The files :func:`nas.tf.candidate.evaluate` writes into a trained folder, all needed for a bundle.
TRIAL_FILES = (rundir.SPEC_FILE, rundir.METRICS_FILE, rundir.MODEL_FILE, rundir.KERAS_FILE)


@dataclass(frozen=True)
class Trial:
    """A trained candidate folder, read: the layout :func:`nas.tf.candidate.evaluate` writes."""

    path: Path
    spec: ArchSpec
    metrics: dict[str, Any]
    tflite: bytes

    @property
    def files(self) -> TrialFiles:
        return TrialFiles(self.path)


def read_trial(trial_dir: Path | str) -> Trial:
    """Read a trained candidate folder; a :class:`UserError` naming the missing file otherwise."""
    path = Path(trial_dir)
    if not path.is_dir():
        raise UserError(str(trial_dir), "", "an existing trained folder (nas train --out DIR) or a run directory")
    missing = [f for f in TRIAL_FILES if not (path / f).is_file()]
    if missing:
        raise UserError(str(path), missing[0], f"a finished trained folder with {', '.join(TRIAL_FILES)} "
                                               f"(nas train --out DIR or runs/<study>/trials/<n>); it is missing")
    files = TrialFiles(path)
    try:
        metrics = json.loads(files.metrics.read_text())
        spec_doc = json.loads(files.spec.read_text())
    except (OSError, ValueError) as e:
        raise UserError(str(path), f"{rundir.METRICS_FILE}/{rundir.SPEC_FILE}", f"readable JSON ({e})") from None
    if isinstance(spec_doc, dict) and isinstance(spec_doc.get("arch"), dict):
        spec = ArchSpec.from_dict(spec_doc["arch"], source=str(files.spec))
    else:
        spec = ArchSpec.from_string(str(spec_doc.get("spec") if isinstance(spec_doc, dict) else metrics["spec"]))
    return Trial(path, spec, metrics, files.tflite.read_bytes())


def default_name(trial_dir: Path) -> str:
    """The trained folder's name; ``trial-<n>`` for a run's ``trials/<n>`` folder (a bare number says little)."""
    path = Path(trial_dir).resolve()
    return f"trial-{path.name}" if path.parent.name == "trials" and path.name.isdigit() else path.name


def load_data(trial: Trial) -> Any:
    """The data set the trial was trained on (same name and seed, so the same test split)."""
    from nas.tf.candidate import load_dataset

    name, seed = trial.metrics.get("dataset"), int(trial.metrics.get("seed", 0))
    if not name:
        raise UserError(str(trial.files.metrics), "dataset", "the data set the model was trained on")
    try:
        return load_dataset(str(name), seed)
    except UserError as e:
        raise UserError(str(trial.files.metrics), "dataset",
                        f"a loadable data set to draw sample inputs from: {e}") from None


def is_run_dir(path: Path | str) -> bool:
    """Whether ``path`` is a search's run directory (it has run.yaml) rather than one trained folder."""
    return (Path(path) / rundir.RUN_FILE).is_file()
