"""Optuna storage: the one factory that opens a storage from a URL, and the one adapter for Optuna internals.

Why here: the search's workers, ``nas pareto`` and the app each opened ``RDBStorage`` with their own engine
settings, and a few places reached into private Optuna attributes (``study._storage``, ``trial._trial_id``,
``summary._study_id``, ``optuna.storages._rdb.models``, ``TPESampler._n_startup_trials``). Those are not
Optuna's public API and change between releases, so every such use lives in this module and nowhere else; an
Optuna upgrade is checked here.
"""
from __future__ import annotations

import datetime
import json
import time
import warnings
from typing import Any, Sequence

HEARTBEAT_S = 20
GRACE_S = 90


def engine_kwargs(url: str, *, quick: bool = False) -> dict[str, Any]:
    """SQLAlchemy engine settings. SQLite: wait for locks instead of failing when several workers write at once.
    ``quick``: a reader that must not hang on a dead host (the app): a short PostgreSQL connect timeout."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30 if quick else 60}}
    if quick and url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 5}, "pool_pre_ping": True}
    return {"pool_pre_ping": True}


def open_storage(url: str, *, heartbeat: bool = False, read_only: bool = False) -> Any:
    """An Optuna ``RDBStorage`` for ``url``.

    ``heartbeat``: a worker's storage (Optuna marks trials of workers that stop beating as failed).
    ``read_only``: never create tables (looking must not write) and give up on a dead host quickly.
    """
    import optuna

    kwargs: dict[str, Any] = {"engine_kwargs": engine_kwargs(url, quick=read_only)}
    if heartbeat:
        kwargs.update(heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    if read_only:
        kwargs["skip_table_creation"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
        return optuna.storages.RDBStorage(url, **kwargs)


def dispose(storage: Any) -> None:
    """Close the storage's database connections (an app that switches studies must not keep them open)."""
    import optuna

    if isinstance(storage, optuna.storages.RDBStorage):
        storage.engine.dispose()


# --------------------------------------------------------------------------------------------- Optuna internals


def trial_id(trial: Any) -> int:
    """The storage's id of a ``FrozenTrial`` (unique across studies; ``number`` is per study)."""
    return int(trial._trial_id)


def study_order(summary: Any) -> int:
    """The storage's id of a ``StudySummary``: studies in creation order."""
    return int(summary._study_id)


def startup_trials(sampler: Any) -> int:
    """How many random start-up trials a ``TPESampler`` runs before it models the space (not public in Optuna)."""
    return int(sampler._n_startup_trials)


def fail_trial(study: Any, trial: Any, attrs: dict[str, Any]) -> None:
    """Set user attributes on, then FAIL, a RUNNING trial of another process (a dead worker's): Optuna's public
    API only finishes trials of this process. Raises ``optuna.exceptions.UpdateFinishedTrialError`` when the
    trial finished meanwhile."""
    from optuna.trial import TrialState

    storage, tid = study._storage, trial_id(trial)
    for key, value in attrs.items():
        storage.set_trial_user_attr(tid, key, value)
    storage.set_trial_state_values(tid, TrialState.FAIL)


def insert_trials(url: str, study_name: str, trials: Sequence[Any]) -> None:
    """Insert ``FrozenTrial`` s into Optuna's RDB schema in one transaction (SQLAlchemy Core, Optuna's own table
    definitions). ``Study.add_trials`` writes the same rows one trial and one commit at a time: tens of
    milliseconds per trial, i.e. minutes for the thousands of records a benchmark needs."""
    import sqlalchemy as sa
    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            sid = conn.execute(sa.select(models.StudyModel.study_id).where(
                models.StudyModel.study_name == study_name)).scalar_one()
            next_id = (conn.execute(sa.select(sa.func.max(models.TrialModel.trial_id))).scalar() or 0) + 1
            number = conn.execute(sa.select(sa.func.count()).select_from(models.TrialModel).where(
                models.TrialModel.study_id == sid)).scalar_one()
            rows: dict[str, list[dict[str, Any]]] = {"trials": [], "values": [], "params": [], "user": [], "system": []}
            now = time.time()
            for i, t in enumerate(trials):
                tid = next_id + i
                start = datetime.datetime.fromtimestamp(now - 60.0 * (len(trials) - i))
                rows["trials"].append({"trial_id": tid, "number": number + i, "study_id": sid, "state": t.state,
                                       "datetime_start": start,
                                       "datetime_complete": start + datetime.timedelta(seconds=30)})
                for k, v in enumerate(t.values or []):
                    rows["values"].append({"trial_id": tid, "objective": k, "value": v,
                                           "value_type": models.TrialValueModel.TrialValueType.FINITE})
                for name, value in t.params.items():
                    dist = t.distributions[name]
                    rows["params"].append({"trial_id": tid, "param_name": name,
                                           "param_value": dist.to_internal_repr(value),
                                           "distribution_json": distribution_to_json(dist)})
                for key, value in t.user_attrs.items():
                    rows["user"].append({"trial_id": tid, "key": key, "value_json": json.dumps(value)})
                for key, value in t.system_attrs.items():
                    rows["system"].append({"trial_id": tid, "key": key, "value_json": json.dumps(value)})
            for key, model in (("trials", models.TrialModel), ("values", models.TrialValueModel),
                               ("params", models.TrialParamModel), ("user", models.TrialUserAttributeModel),
                               ("system", models.TrialSystemAttributeModel)):
                if rows[key]:
                    conn.execute(model.__table__.insert(), rows[key])
    finally:
        engine.dispose()
