"""One candidate, end to end: the only bridge between the search and TensorFlow.

``evaluate(spec, ...)`` trains with INT8 QAT, converts to a full-integer TFLite model, evaluates that
INT8 model, measures its real memory and writes everything a bundle needs into ``out_dir``. It returns
plain JSON-ready data; no Optuna object comes in and no TensorFlow object goes out.

Which split it reports on is the caller's choice and is written into the metrics (``metric_split``): the search
asks for ``val`` (what it optimises; the test split is never read), ``nas train`` and ``nas finalize`` report a
chosen model on ``test``. Training itself only ever sees train (weights) and val (early stopping).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import tensorflow_model_optimization as tfmot

from nas import data, profile
from nas.budget import Budget
from nas.errors import CandidateError
from nas.fidelity import Rung
from nas.formatting import first_line
from nas.metrics import metric_interval, metric_value
from nas.rundir import TrialFiles
from nas.spec import ArchSpec
from nas.tf import builder, convert, pipeline, train
from nas.tf.train import TrainingError

__all__ = ["CandidateError", "REPORT_SPLITS", "evaluate", "evaluate_rung", "load_dataset", "measure_untrained"]

REPORT_SPLITS = ("val", "test")

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def load_dataset(name_or_path: str, seed: int):
    """Data sets are loaded once per worker process, not once per candidate."""
    return data.load(name_or_path, seed=seed)


@functools.lru_cache(maxsize=256)
def _measure_spec(spec: ArchSpec):
    """A sampler may propose the same spec again: it is converted once per worker."""
    return convert.measure_spec(spec)


def measure_untrained(spec: ArchSpec, runtime: str) -> dict[str, Any]:
    """The exact memory of ``spec`` before any training: its untrained INT8 model, converted and measured.

    Memory depends on the graph, not on the weights (``nas.tf.convert.untrained_int8`` gives the same bytes as a
    trained candidate), so for a candidate whose estimate is within the cost model's error of a limit a few
    seconds of conversion decide what minutes of training would otherwise find out.
    """
    t0 = time.perf_counter()
    try:
        m = _measure_spec(spec)
    except Exception as e:
        raise CandidateError(f"INT8 conversion of the untrained model failed: {first_line(e, with_type=True)}") from e
    return {"measured_memory_bytes": m.memory_bytes(runtime), "tflite_bytes": m.tflite_bytes,
            "tflm_arena_bytes": m.tflm_arena_bytes, "imx500_bytes": m.imx500_bytes,
            "seconds": round(time.perf_counter() - t0, 3)}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def evaluate(spec: ArchSpec, dataset: str, budget: Budget, out_dir: Path, *, seed: int = 0,
             target=None, verbose: int = 0, progress: train.ProgressFn | None = None,
             report: str = "val", data_seed: int | None = None) -> dict[str, Any]:
    """Train, convert, evaluate as INT8 on the ``report`` split and measure one candidate; write its files to
    ``out_dir``. ``report="val"`` (the search's default) never touches the test split's labels.

    ``seed`` seeds the weights and the batch order; ``data_seed`` (default: ``seed``) the train/val/test split,
    so ``nas finalize`` can retrain with several seeds on exactly the split its search used.

    Files (:class:`nas.rundir.TrialFiles`): ``model_int8.tflite``, ``model_qat.h5`` (the trained Keras QAT
    model), ``spec.json`` and ``metrics.json`` (written last: its presence marks a finished candidate).
    """
    if report not in REPORT_SPLITS:
        raise ValueError(f"report must be one of {REPORT_SPLITS}, not {report!r}")
    t_start = time.perf_counter()
    files = TrialFiles(Path(out_dir))
    files.path.mkdir(parents=True, exist_ok=True)
    data_seed = seed if data_seed is None else data_seed
    ds = load_dataset(str(dataset), data_seed)
    scored = ds.val if report == "val" else ds.test
    if len(scored.y) == 0:
        raise CandidateError(f"the {report} split of {dataset} is empty: nothing to score the candidate on")
    spec = train.adapt(spec, ds)
    files.spec.write_text(json.dumps({"spec": spec.to_string(), "arch": spec.to_dict()}, indent=1))
    with _training_errors():
        trained = train.train_qat(spec, ds, budget, seed=seed, verbose=verbose, progress=progress)
    return _finish(spec, ds, trained, files, dataset=dataset, budget=budget, report=report, seed=seed,
                   data_seed=data_seed, target=target, t_start=t_start)


@contextlib.contextmanager
def _training_errors() -> Iterator[None]:
    """Any failure of training is the candidate's (:class:`CandidateError`), with the trainer's reason."""
    try:
        yield
    except TrainingError as e:
        raise CandidateError(str(e)) from e
    except Exception as e:
        raise CandidateError(f"training failed: {first_line(e, with_type=True)}") from e


def evaluate_rung(spec: ArchSpec, dataset: str, budget: Budget, out_dir: Path, *, rung: Rung, below: Rung | None,
                  start_from: Path | None = None, seed: int = 0, target=None,
                  progress: train.ProgressFn | None = None) -> dict[str, Any]:
    """One rung of a multi-fidelity search (:mod:`nas.fidelity`), scored on the validation split.

    ``start_from`` is the trial folder of the rung below (its float weights continue here). Below the top the
    result is the float model's validation metric with the memory estimate (``rung_metric``, ``rung_memory_bytes``;
    no conversion: it would cost more than the rung's training); the top rung is a whole candidate, converted,
    measured and scored as INT8, with the same metrics as :func:`evaluate`. Either way the float weights are
    saved for a promotion (``TrialFiles.float_weights``).
    """
    t_start = time.perf_counter()
    files = TrialFiles(Path(out_dir))
    files.path.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(str(dataset), seed)
    spec = train.adapt(spec, ds)
    files.spec.write_text(json.dumps({"spec": spec.to_string(), "arch": spec.to_dict()}, indent=1))
    start = None if start_from is None else TrialFiles(Path(start_from)).float_weights
    if start is not None and not start.is_file():
        raise CandidateError(f"the rung below left no float weights at {start}: cannot continue it")
    with _training_errors():
        trained = train.train_rung(spec, ds, budget, rung, below, seed=seed, start_weights=start,
                                   weights_out=files.float_weights, progress=progress)
    fields = {"rung": rung.index, "rung_plan": rung.to_dict(), "promoted_from": None if start_from is None
              else str(start_from)}
    if rung.final:
        metrics = _finish(spec, ds, trained, files, dataset=dataset, budget=budget, report="val", seed=seed,
                          data_seed=seed, target=target, t_start=t_start, extra=fields)
        return metrics
    est = profile.estimate(spec)
    runtime = target.runtime if target is not None else "tflm"
    metrics = {
        "spec": spec.to_string(), "dataset": str(dataset), "task": ds.task, "metric_name": trained.metric_name,
        "higher_is_better": trained.higher_is_better, **fields,
        "rung_metric": trained.val_metric, "rung_metric_kind": "float", "metric_split": "val",
        "metric_samples": int(len(ds.val.y)),
        "rung_memory_bytes": est.onchip_bytes if runtime == "imx500" else est.peak_sram_bytes,
        "estimated_flash_bytes": est.flash_bytes, "macs": est.macs, "params": est.params,
        "plan_text": trained.plan.describe(), "plan": dataclasses.asdict(trained.plan), "budget": budget.to_dict(),
        "trained_images": trained.steps * trained.plan.batch_size,
        "seed": seed, "train_seed": seed, "history": trained.history,
        "timings": {k: round(v, 3) for k, v in trained.timings.items()},
    }
    metrics["seconds"] = round(time.perf_counter() - t_start, 3)
    _write_atomic(files.metrics, json.dumps(metrics, indent=1).encode())
    log.info("%s: rung %d float %s %.4f on val, %.1f s", spec.to_string()[:60], rung.index, trained.metric_name,
             trained.val_metric, metrics["seconds"])
    return metrics


def _finish(spec: ArchSpec, ds: Any, trained: train.Trained, files: TrialFiles, *, dataset: str, budget: Budget,
            report: str, seed: int, data_seed: int, target: Any, t_start: float,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert a trained candidate to INT8, score it on ``report``, measure it, write its files and metrics."""
    scored = ds.val if report == "val" else ds.test
    timings = dict(trained.timings)

    grid = ds.grid_channels
    res, ch = spec.resolution, spec.channels
    # streamed from the store, never the whole split in memory: calibration reads its 100 images, evaluation
    # goes through in batches
    calibration = pipeline.prepare(ds.train.head(100), res, ch, grid)
    t0 = time.perf_counter()
    try:
        tflite = convert.to_int8(trained.model, calibration, samples=100)
    except Exception as e:
        raise CandidateError(f"INT8 conversion failed: {first_line(e, with_type=True)}") from e
    timings["convert"] = time.perf_counter() - t0
    _write_atomic(files.tflite, tflite)
    with tfmot.quantization.keras.quantize_scope(builder.CUSTOM_OBJECTS):
        trained.model.save(files.keras, include_optimizer=False)

    t0 = time.perf_counter()
    int8_pred = convert.predict_int8(tflite, pipeline.arrays(scored, res, ch, grid))
    float_pred = trained.model.predict(pipeline.stream(scored, res, ch, grid, labels=False), verbose=0)
    int8_metric = metric_value(ds.task, scored.y, int8_pred)
    float_metric = metric_value(ds.task, scored.y, float_pred)
    # the validation INT8 figure always: it is what picks among finalized models, never the test one
    val_pred = int8_pred if report == "val" else convert.predict_int8(tflite, pipeline.arrays(ds.val, res, ch, grid))
    timings["evaluate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    measured = profile.measure(tflite)
    est = profile.estimate(spec)
    timings["measure"] = time.perf_counter() - t0

    runtime = target.runtime if target is not None else "tflm"
    metrics: dict[str, Any] = {
        "spec": spec.to_string(),
        "dataset": str(dataset),
        "task": ds.task,
        "class_names": list(ds.class_names),
        "metric_name": trained.metric_name,
        "higher_is_better": trained.higher_is_better,
        "float_metric": float_metric,
        "val_float_metric": trained.val_metric,
        "val_int8_metric": metric_value(ds.task, ds.val.y, val_pred),
        "val_int8_interval": list(metric_interval(ds.task, ds.val.y, val_pred)),
        "val_samples": int(len(ds.val.y)),
        "pretrain_val_metric": trained.pretrain_val_metric,
        "metric_split": report,             # what int8_metric / float_metric were measured on
        "metric_samples": int(len(scored.y)),
        "int8_metric": int8_metric,
        "int8_interval": list(metric_interval(ds.task, scored.y, int8_pred)),
        "float_interval": list(metric_interval(ds.task, scored.y, float_pred)),
        "split": ds.description.get("split"),
        "split_counts": ds.description.get("counts"),
        "plan_text": trained.plan.describe(),
        "quantization_delta": int8_metric - float_metric,
        "epochs_run": trained.epochs_run,
        "trained_images": trained.steps * trained.plan.batch_size,  # steps x batch: what --epoch-images counts
        "plan": dataclasses.asdict(trained.plan),
        "attempts": trained.attempts,
        "tflite_bytes": measured.tflite_bytes,
        "tflite_sha256": hashlib.sha256(tflite).hexdigest(),  # what a trial's record says its .tflite holds
        "tflm_arena_bytes": measured.tflm_arena_bytes,
        "imx500_bytes": measured.imx500_bytes,
        "measured_memory_bytes": measured.memory_bytes(runtime),
        "estimated_memory_bytes": est.onchip_bytes if runtime == "imx500" else est.peak_sram_bytes,
        "estimated_flash_bytes": est.flash_bytes,
        "macs": est.macs,
        "params": est.params,
        "input_quantization": convert.input_quantization(tflite),
        "budget": budget.to_dict(),
        "seed": data_seed,                  # the split's seed: what nas evaluate / nas export load the data with
        "train_seed": seed,
        "history": trained.history,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        **(extra or {}),
    }
    if target is not None:
        metrics.update(target=target.name, runtime=runtime, latency_ms=target.latency_ms(est.macs, est.layers),
                       inference_ms=target.inference_ms(est.macs, est.layers),
                       energy_mj=target.energy_mj(est.macs, est.layers))
    metrics["seconds"] = round(time.perf_counter() - t_start, 3)
    _write_atomic(files.metrics, json.dumps(metrics, indent=1).encode())
    log.info("%s: %s INT8 %.4f (float %.4f) on %s, arena %d B, %.1f s", spec.to_string()[:60],
             trained.metric_name, int8_metric, float_metric, report, measured.tflm_arena_bytes, metrics["seconds"])
    return metrics
