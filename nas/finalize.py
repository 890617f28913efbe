"""``nas finalize RUN_DIR``: retrain a search's chosen candidates with a full budget, report them on the test split.

A search ranks candidates on the validation split after a short budget: good enough to choose, not what should
ship. Finalize retrains the chosen trials (the Pareto-optimal feasible ones, ``--top K`` by validation metric, or
``--trials``) from scratch with a stated budget and one or more seeds, as INT8 QAT; converts, measures, checks the
limits again with the measured figures and scores the INT8 model on the **test** split, the first and only time
anything reads it. The split is the search's own (its data seed), whatever the training seed.

Each model lands in ``RUN_DIR/finalized/<trial>/seed<k>/`` (the :class:`nas.rundir.TrialFiles` layout written by
:func:`nas.tf.candidate.evaluate`) with ``final.json`` written last, so a kill loses only the model in training
and the same command continues where it stopped. A trial's *chosen* finalized model (what ``nas export`` ships)
is its seed with the best **validation** INT8 metric: test figures are reported, never used to choose.

This module reads run directories and drives the trainer; it imports TensorFlow only inside :func:`finalize`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from nas import rundir
from nas.budget import Budget
from nas.errors import UserError
from nas.rundir import TrialFiles

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = 10  # 5x the search's default candidate budget; bench/results/recipe.md: 2 -> 5 epochs gains 5 points


@dataclass(frozen=True)
class FinalModel:
    """One finalized model as plain data: test figures (reported) and validation figures (what chooses)."""

    trial: int
    seed: int
    path: Path
    spec: str
    metric_name: str
    test_metric: float
    test_interval: tuple[float, float] | None
    test_samples: int
    val_metric: float
    val_interval: tuple[float, float] | None
    memory_bytes: int
    tflite_bytes: int
    macs: int
    feasible: bool
    violations: list[str] = field(default_factory=list)
    budget: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        return d


def read_finalized(run_dir: Path | str) -> list[FinalModel]:
    """Every finished finalized model of a run (``final.json`` present), by trial then seed."""
    root = Path(run_dir) / rundir.FINALIZED_DIR
    out = []
    for final in sorted(root.glob(f"*/seed*/{rundir.FINAL_FILE}")):
        folder = final.parent
        try:
            verdict = json.loads(final.read_text())
            m = json.loads(TrialFiles(folder).metrics.read_text())
        except (OSError, ValueError) as e:
            raise UserError(str(folder), rundir.FINAL_FILE, f"readable JSON written by nas finalize ({e})") from None
        out.append(FinalModel(
            trial=int(verdict["trial"]), seed=int(verdict["seed"]), path=folder, spec=m["spec"],
            metric_name=m["metric_name"], test_metric=float(m["int8_metric"]),
            test_interval=_pair(m.get("int8_interval")), test_samples=int(m["metric_samples"]),
            val_metric=float(m["val_int8_metric"]), val_interval=_pair(m.get("val_int8_interval")),
            memory_bytes=int(m["measured_memory_bytes"]), tflite_bytes=int(m["tflite_bytes"]), macs=int(m["macs"]),
            feasible=bool(verdict["feasible"]), violations=list(verdict.get("violations") or []),
            budget=dict(m.get("budget") or {}), seconds=float(m.get("seconds") or 0.0)))
    return sorted(out, key=lambda f: (f.trial, f.seed))


def _pair(v: Any) -> tuple[float, float] | None:
    return (float(v[0]), float(v[1])) if isinstance(v, (list, tuple)) and len(v) == 2 else None


def chosen(models: Iterable[FinalModel], higher_is_better: bool) -> dict[int, FinalModel]:
    """Per trial, the finalized model to ship: best validation INT8 metric, then the lowest seed."""
    sign = -1.0 if higher_is_better else 1.0
    best: dict[int, FinalModel] = {}
    for m in models:
        cur = best.get(m.trial)
        if cur is None or (sign * m.val_metric, m.seed) < (sign * cur.val_metric, cur.seed):
            best[m.trial] = m
    return best


def select(run: Any, records: Sequence[Any], *, top: int | None = None,
           trials: Sequence[int] | None = None) -> list[Any]:
    """The trials to finalize (:class:`nas.results.TrialRecord`): ``trials`` by number, the ``top`` K feasible
    ones by validation metric, or by default the run's Pareto-optimal feasible trials."""
    if trials:
        trained = {r.number: r for r in records if r.status == "trained"}
        missing = [n for n in trials if n not in trained]
        if missing:
            have = ", ".join(str(n) for n in sorted(trained)) or "none yet"
            raise UserError("--trials", "trials", f"trained trials of {run.path} ({have}); {missing} are not")
        return [trained[n] for n in trials]
    feasible = [r for r in records if r.feasible and r.int8_metric is not None]
    if not feasible:
        raise UserError(str(run.path), "trials", "a run with at least one feasible trained trial; it has none")
    if top is not None:
        if top < 1:
            raise UserError("--top", "top", f"a positive number of trials, got {top}")
        sign = -1.0 if run.metric[1] else 1.0
        return sorted(feasible, key=lambda r: (sign * r.int8_metric, r.number))[:top]
    return run.pareto(records)


#: ``(index, total, trial, seed) -> progress callback for that model's training`` (the CLI's bars), or None.
ModelProgress = Callable[[int, int, int, int], Any]


def finalize(run: Any, picked: Sequence[Any], budget: Budget, seeds: Sequence[int], *, force: bool = False,
             progress: ModelProgress | None = None) -> list[FinalModel]:
    """Retrain ``picked`` trials of ``run`` with ``budget`` for every seed; return every finalized model of the run.

    A model already finalized with the same budget is kept (so a second call continues); one finalized with
    another budget is an error unless ``force`` (then it is retrained). A folder without ``final.json`` is an
    interrupted model and is trained again.
    """
    from nas.search.preflight import estimate_record, measured_checks
    from nas.spec import ArchSpec
    from nas.tf.candidate import evaluate

    target = run.target()
    jobs = [(r, s) for r in picked for s in seeds]
    wanted = budget.to_dict()
    for i, (record, seed) in enumerate(jobs):
        folder = rundir.finalized_dir(run.path, record.number, seed)
        if (folder / rundir.FINAL_FILE).is_file():
            had = json.loads(TrialFiles(folder).metrics.read_text()).get("budget") or {}
            if Budget.from_dict(had).to_dict() == wanted:
                log.info("trial %d seed %d: already finalized with this budget", record.number, seed)
                continue
            if not force:
                raise UserError(str(folder), "budget", f"the budget it was finalized with ({had}); this call asks "
                                                       f"for {wanted}: add --force to retrain it")
        if folder.exists():
            shutil.rmtree(folder)
        spec = ArchSpec.from_string(record.spec)
        on_progress = progress(i, len(jobs), record.number, seed) if progress else None
        metrics = evaluate(spec, run.config.dataset, budget, folder, seed=seed, data_seed=int(run.config.seed),
                           target=target, report="test", progress=on_progress)
        if on_progress is not None and hasattr(on_progress, "close"):
            on_progress.close()
        estimate, _ = estimate_record(ArchSpec.from_string(metrics["spec"]), target)
        broken = sorted(c.name for c in measured_checks(estimate, metrics, target) if not c.ok)
        verdict = {"trial": record.number, "seed": seed, "feasible": not broken, "violations": broken,
                   "target": target.name, "search_metric": record.int8_metric,
                   "search_metric_split": record.metric_split}
        tmp = folder / (rundir.FINAL_FILE + ".tmp")
        tmp.write_text(json.dumps(verdict, indent=1))
        os.replace(tmp, folder / rundir.FINAL_FILE)
    return read_finalized(run.path)
