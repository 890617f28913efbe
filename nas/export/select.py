"""Which trials of a search run to export (``--trial N``, ``--pareto``, ``--best METRIC``), read through
:mod:`nas.results`, and what a bundle records about where each came from."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from nas.errors import UserError

BEST_METRICS = ("int8_metric", "float_metric", "memory_bytes", "energy_mj", "latency_ms", "macs", "tflite_bytes")


def select_trials(run: Any, *, trial: int | None = None, pareto: bool = False, best: str | None = None,
                  records: Sequence[Any] | None = None, finals: Mapping[int, Any] | None = None) -> list[Any]:
    """The trials of ``run`` (a :class:`nas.results.Run`) to export, as :class:`nas.results.TrialRecord`.

    ``finals``: the run's chosen finalized models by trial (:func:`nas.finalize.chosen`). When there are any,
    ``--best <metric>`` picks among the finalized feasible trials by their *validation* INT8 metric: they were
    trained with the full budget, so they are compared with each other, not with short search-time figures.
    """
    records = list(records if records is not None else run.trials())
    trained = [r for r in records if r.status == "trained" and r.trial_dir]
    chosen = sum(x is not None and x is not False for x in (trial, pareto or None, best))
    if chosen != 1:
        raise UserError("nas export", "--trial/--pareto/--best", f"exactly one of them to choose trials from run "
                                                                 f"{run.path}")
    if trial is not None:
        match = [r for r in trained if r.number == trial]
        if not match:
            numbers = ", ".join(str(r.number) for r in trained) or "none yet"
            state = "is not trained" if any(r.number == trial for r in records) else "does not exist"
            raise UserError("--trial", "trial", f"a trained trial of {run.path} ({numbers}); trial {trial} {state}")
        return match
    if pareto:
        front = run.pareto(records)
        if not front:
            raise UserError(str(run.path), "--pareto", "a run with at least one feasible trained trial; it has none")
        return front
    metric_name, higher = run.metric
    key = "int8_metric" if best == metric_name else best
    fitting = {n: f for n, f in (finals or {}).items() if f.feasible}
    if key == "int8_metric" and fitting:
        sign = -1.0 if higher else 1.0
        number = min(fitting.values(), key=lambda f: (sign * f.val_metric, f.trial)).trial
        return [r for r in trained if r.number == number]
    if key not in BEST_METRICS:
        from nas.errors import did_you_mean

        raise UserError("--best", "metric", f"one of {', '.join((*BEST_METRICS, metric_name))}, got '{best}'"
                        + did_you_mean(str(best), (*BEST_METRICS, metric_name)))
    pool = [r for r in trained if r.feasible and getattr(r, key) is not None]
    if not pool:
        raise UserError(str(run.path), "--best", f"a feasible trained trial with a '{key}' value; there is none")
    sign = -1.0 if key in ("int8_metric", "float_metric") and higher else 1.0
    return [min(pool, key=lambda r: (sign * float(getattr(r, key)), r.number))]


def source_info(run: Any, record: Any, selected_by: str, front: set[int], final: Any = None) -> dict[str, Any]:
    """metadata.json's ``source`` for a trial of ``run``: the run, the trial, how it was chosen, its verdict, and
    the finalized model exported in place of the search-time one (``final``), if any."""
    cfg = run.config
    finalized = None if final is None else {
        "seed": final.seed, "folder": str(final.path), "budget": final.budget, "val_metric": final.val_metric,
        "val_interval": final.val_interval, "search_metric": record.int8_metric,
        "search_metric_split": record.metric_split}
    return {"run_dir": str(run.path), "study": run.study_name, "run_id": run.run_id, "trial": record.number,
            "finalized": finalized,
            "selected_by": selected_by, "feasible": record.feasible, "pareto_optimal": record.number in front,
            "violations": list(record.violations), "run_dataset": cfg.dataset, "run_seed": cfg.seed,
            "run_budget": cfg.budget, "constraints_source": (cfg.target or {}).get("source"),
            "versions": cfg.versions}
