"""INT8 quantization-aware training of a model built from an :class:`~nas.spec.ArchSpec`.

The trainer knows nothing of Optuna: it takes a spec, data and a :class:`Budget` and returns a trained QAT
model with its figures. Training goes straight to QAT (optionally after a few float epochs): the model that
is trained is the model that gets converted, so nothing is lost between the numbers and the chip.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import tensorflow as tf
import tf_keras as keras

from nas import data as data_mod
from nas.budget import Budget
from nas.metrics import metric_for as task_metric, metric_value
from nas.spec import ArchSpec
from nas.tf import builder, pipeline

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training could not produce a usable model (NaN loss, out of memory, ...)."""


@dataclass
class Trained:
    model: keras.Model              # the trained QAT model (fake-quant), ready for INT8 conversion
    metric_name: str
    higher_is_better: bool
    float_metric: float             # the Keras QAT model on the test split, in float32
    pretrain_float_metric: float | None  # the pure float model after the float epochs, when there were any
    epochs_run: int
    history: dict[str, list[float]]
    timings: dict[str, float]


def euclidean_error(y_true, y_pred):
    """Mean Euclidean distance between predicted and true gaze points (cm), as the seeds report."""
    return tf.reduce_mean(tf.norm(tf.cast(y_true, tf.float32) - y_pred, axis=-1))


def _compile(model: keras.Model, task: str, lr_schedule) -> None:
    opt = keras.optimizers.Adam(learning_rate=lr_schedule)
    if task == "classification":
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    else:
        model.compile(optimizer=opt, loss=keras.losses.Huber(delta=1.0), metrics=[euclidean_error])


class _NaNGuard(keras.callbacks.Callback):
    """Stop at the first non-finite loss and remember it, so the candidate fails with a reason."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_at: int | None = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.failed_at = batch
            self.model.stop_training = True


def _fit(model, task, train_ds, val_ds, epochs: int, lr: float, steps: int, patience: int, verbose: int):
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, epochs * steps), alpha=0.05)
    _compile(model, task, schedule)
    monitor = "val_accuracy" if task == "classification" else "val_euclidean_error"
    guard = _NaNGuard()
    callbacks = [guard, keras.callbacks.EarlyStopping(monitor=monitor, patience=patience, restore_best_weights=True,
                                                      mode="max" if task == "classification" else "min")]
    hist = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, verbose=verbose)
    if guard.failed_at is not None:
        raise TrainingError(f"loss became NaN/inf at step {guard.failed_at} (lower the learning rate)")
    return hist.history


def adapt(spec: ArchSpec, dataset: data_mod.Dataset) -> ArchSpec:
    """The spec with its classifier sized to the data set's classes (the space does not know them)."""
    if dataset.task == "classification" and spec.head.kind == "classifier":
        return spec.replace(classes=dataset.num_classes)
    return spec


def check_compatible(spec: ArchSpec, dataset: data_mod.Dataset) -> None:
    """Refuse a spec whose head cannot learn this data set, before any time is spent."""
    want = "gaze" if dataset.task == "gaze" else "classifier"
    if spec.head.kind != want:
        raise TrainingError(f"data set '{dataset.name}' ({dataset.task}) needs a {want} head, "
                            f"the spec has a {spec.head.kind} head")
    if want == "classifier" and spec.head.classes != dataset.num_classes:
        raise TrainingError(f"the spec has {spec.head.classes} classes, data set '{dataset.name}' has "
                            f"{dataset.num_classes}")
    if want == "gaze" and spec.head.grid_channels != dataset.grid_channels:
        raise TrainingError(f"the spec's gaze head expects {spec.head.grid_channels} grid channels, "
                            f"data set '{dataset.name}' has {dataset.grid_channels}")


def train_qat(spec: ArchSpec, dataset: data_mod.Dataset, budget: Budget, *, seed: int = 0,
              verbose: int = 0) -> Trained:
    """Train ``spec`` on ``dataset`` with INT8 QAT under ``budget``; deterministic for ``seed``."""
    timings: dict[str, float] = {}
    keras.utils.set_random_seed(seed)
    task = dataset.task
    name, higher = task_metric(task)
    grid = dataset.grid_channels
    check_compatible(spec, dataset)
    t0 = time.perf_counter()
    x_train = pipeline.prepare(dataset.train, spec.resolution, spec.channels, grid)
    y_train = dataset.train.y
    if budget.train_limit and len(x_train) > budget.train_limit:
        x_train, y_train = x_train[: budget.train_limit], y_train[: budget.train_limit]
    x_val = pipeline.prepare(dataset.val, spec.resolution, spec.channels, grid)
    x_test = pipeline.prepare(dataset.test, spec.resolution, spec.channels, grid)
    augment = dataset.description.get("augment")
    train_ds = pipeline.to_tf_dataset(x_train, y_train, budget.batch_size, shuffle=True, seed=seed, augment=augment,
                                      grid_channels=grid if task == "gaze" else None)
    val_ds = pipeline.to_tf_dataset(x_val, dataset.val.y, budget.batch_size, shuffle=False, seed=seed)
    steps = math.ceil(len(x_train) / budget.batch_size)
    timings["data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    float_model = builder.build(spec)
    timings["build"] = time.perf_counter() - t0
    history: dict[str, list[float]] = {}
    pretrain = None
    if budget.float_epochs:
        t0 = time.perf_counter()
        h = _fit(float_model, task, train_ds, val_ds, budget.float_epochs, budget.learning_rate, steps,
                 budget.patience, verbose)
        history.update({f"float_{k}": v for k, v in h.items()})
        pretrain = metric_value(task, dataset.test.y, float_model.predict(x_test, verbose=0))
        timings["float_train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = builder.quantize(float_model)
    timings["build"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    lr = budget.learning_rate * (0.5 if budget.float_epochs else 1.0)
    h = _fit(model, task, train_ds, val_ds, budget.epochs, lr, steps, budget.patience, verbose)
    history.update(h)
    timings["qat_train"] = time.perf_counter() - t0
    float_metric = metric_value(task, dataset.test.y, model.predict(x_test, verbose=0, batch_size=256))
    if not math.isfinite(float_metric):
        raise TrainingError("the trained model predicts NaN")
    return Trained(model=model, metric_name=name, higher_is_better=higher, float_metric=float_metric,
                   pretrain_float_metric=pretrain, epochs_run=len(h.get("loss", [])),
                   history={k: [float(v) for v in vs] for k, vs in history.items()}, timings=timings)
