"""INT8 quantization-aware training of a model built from an :class:`~nas.spec.ArchSpec`.

The trainer knows nothing of Optuna: it takes a spec, data and a :class:`~nas.budget.Budget` and returns a
trained QAT model with its figures. The budget's recipe (:mod:`nas.budget`) says how the epochs are spent;
the default trains in float first (warm-up, cosine decay, AdamW, label smoothing) and then fine-tunes the
same weights quantization-aware at a tenth of the learning rate, so the model that is trained last is the
model that gets converted. The trainer reads the training and validation splits only: the test split is
for reporting a chosen model, and :mod:`nas.tf.candidate` does that.

A run that collapses (uniform output, validation accuracy at chance) is detected after each epoch,
retried once from scratch at a quarter of the learning rate and otherwise raised as
:class:`TrainingError`: a collapsed network is a failed candidate, not a 10% result.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tensorflow as tf
import tf_keras as keras

from nas import data as data_mod
from nas.budget import Budget, Plan, plan as plan_budget
from nas.fidelity import Rung
from nas.metrics import metric_for as task_metric, metric_value
from nas.spec import ArchSpec
from nas.tf import builder, pipeline

log = logging.getLogger(__name__)

RETRY_LR_FACTOR = 0.25         # a collapsed run is retried once at this share of its learning rate
# Collapse is judged at the end of each epoch once this many steps are done (over both phases): sooner, a
# slow but healthy start looks like a dead network (measured: a 2-block MNIST net at 16 px, 845 images, is
# still at chance after 106 steps at lr 1e-3 and learns later). One epoch of CIFAR-10 at batch 128 is 333
# steps, so the collapse the legacy recipe shows there is caught after the first epoch.
MIN_STEPS_FOR_COLLAPSE = 300
#: virtual memory a QAT training step adds per float32 byte of the layers' outputs (measured: check_training_memory)
TRAIN_MEMORY_PER_ACTIVATION_BYTE = 5.5
UNIFORM_LOSS_TOLERANCE = 0.001  # |val loss - ln K| within this share of ln K: the output is uniform


class TrainingError(RuntimeError):
    """Training could not produce a usable model (NaN loss, collapse, out of memory, ...)."""


@dataclass
class Trained:
    model: keras.Model                 # the trained QAT model (fake-quant), ready for INT8 conversion
    metric_name: str
    higher_is_better: bool
    val_metric: float                  # the Keras QAT model on the validation split, in float32
    pretrain_val_metric: float | None  # the float model after its float epochs, on the validation split
    epochs_run: int
    plan: Plan
    history: dict[str, list[float]]
    timings: dict[str, float]
    attempts: list[dict[str, Any]] = field(default_factory=list)  # one per training run: peak lr and outcome
    steps: int = 0                     # training steps taken, over phases and attempts (x batch: images trained)


@dataclass(frozen=True)
class Progress:
    """Where a training run is, for a progress bar: sent every half second and at each epoch's end."""

    phase: str                 # "float" or "qat"
    epoch: int                 # 1-based, within the phase
    phase_epochs: int
    step: int                  # steps done in this attempt, over both phases
    total_steps: int
    loss: float | None
    val_metric: float | None   # at an epoch's end
    metric_name: str
    elapsed_s: float
    attempt: int               # 1, or 2 for the retry after a collapse

    @property
    def eta_s(self) -> float | None:
        return self.elapsed_s / self.step * (self.total_steps - self.step) if self.step else None


ProgressFn = Callable[[Progress], None]


def euclidean_error(y_true, y_pred):
    """Mean Euclidean distance between predicted and true gaze points (cm), as the seeds report."""
    return tf.reduce_mean(tf.norm(tf.cast(y_true, tf.float32) - y_pred, axis=-1))


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``floor * peak`` at ``total``.

    Warm-up keeps Adam's first, badly scaled steps from knocking a freshly initialised network (with batch
    norm) into the dead, uniform-output state the legacy recipe fell into on CIFAR-10.
    """

    def __init__(self, peak: float, total: int, warmup: int = 0, floor: float = 0.0) -> None:
        super().__init__()
        self.peak, self.total, self.warmup, self.floor = float(peak), max(1, int(total)), int(warmup), float(floor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(1, self.warmup)
        t = tf.clip_by_value((step - self.warmup) / max(1, self.total - self.warmup), 0.0, 1.0)
        cos = self.peak * (self.floor + (1.0 - self.floor) * 0.5 * (1.0 + tf.cos(math.pi * t)))
        return tf.where(step < self.warmup, warm, cos)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "total": self.total, "warmup": self.warmup, "floor": self.floor}


def smoothed_sparse_crossentropy(classes: int, smoothing: float) -> Callable[[Any, Any], Any]:
    """Sparse categorical cross-entropy with label smoothing (tf_keras' sparse loss has none)."""

    def loss(y_true, y_pred):
        onehot = tf.one_hot(tf.reshape(tf.cast(y_true, tf.int32), [-1]), classes)
        return keras.losses.categorical_crossentropy(onehot, y_pred, label_smoothing=smoothing)

    loss.__name__ = "smoothed_sparse_crossentropy"
    return loss


def _compile(model: keras.Model, task: str, p: Plan, schedule: Any, classes: int) -> None:
    r = p.recipe
    if r.optimizer == "adamw":
        opt = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=r.weight_decay)
        # Decay pulls weights towards 0; biases, batch-norm scales/offsets and quantizer ranges are not weights.
        opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "_min", "_max"])
    else:
        opt = keras.optimizers.Adam(learning_rate=schedule)
    if task == "classification":
        loss: Any = (smoothed_sparse_crossentropy(classes, r.label_smoothing) if r.label_smoothing
                     else "sparse_categorical_crossentropy")
        model.compile(optimizer=opt, loss=loss, metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
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


@dataclass(frozen=True)
class Chance:
    """What a collapsed classifier scores on the validation split, to tell collapse from slow learning."""

    classes: int
    majority_share: float  # a network that always answers the commonest class scores this
    threshold: float       # majority share + 2 binomial standard errors on the validation split

    @classmethod
    def of(cls, y_val: Any, classes: int) -> "Chance":
        counts = np.bincount(np.asarray(y_val, np.int64), minlength=classes)
        n = max(1, int(counts.sum()))
        m = float(counts.max() / n)
        return cls(classes=classes, majority_share=m, threshold=m + 2 * math.sqrt(m * (1 - m) / n))

    def verdict(self, val_loss: float | None, val_acc: float | None, steps: int) -> str | None:
        """Why an epoch's validation figures say "collapsed" after ``steps`` training steps, or None."""
        if steps < MIN_STEPS_FOR_COLLAPSE or self.classes < 2:
            return None
        ln_k = math.log(self.classes)
        if val_loss is not None and abs(val_loss - ln_k) <= UNIFORM_LOSS_TOLERANCE * ln_k:
            return f"validation loss {val_loss:.4f} = ln {self.classes} (uniform output)"
        if val_acc is not None and val_acc <= self.threshold:
            return (f"validation accuracy {val_acc:.1%} at chance (the commonest class is "
                    f"{self.majority_share:.1%} of the split)")
        return None


class _CollapseGuard(keras.callbacks.Callback):
    """Counts an attempt's steps (shared over its phases) and judges each epoch's end by :class:`Chance`."""

    def __init__(self, chance: Chance | None, steps: list[int]) -> None:
        super().__init__()
        self.chance, self.steps, self.reason = chance, steps, ""

    def on_train_batch_end(self, batch, logs=None):
        self.steps[0] += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.chance is None:
            return
        logs = logs or {}
        why = self.chance.verdict(logs.get("val_loss"), logs.get("val_accuracy"), self.steps[0])
        if why:
            self.reason = f"{why} after epoch {epoch + 1}"
            self.model.stop_training = True


class _ProgressCallback(keras.callbacks.Callback):
    """Turns Keras' batch and epoch ends into :class:`Progress` events (every 0.5 s between epochs)."""

    def __init__(self, fn: ProgressFn, base: dict[str, Any], counter: list[int], t0: float, monitor: str) -> None:
        super().__init__()
        self.fn, self.base, self.counter, self.t0, self.monitor = fn, base, counter, t0, monitor
        self.epoch, self.last = 0, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):  # the collapse guard, ahead of this one, counts the step
        now = time.perf_counter()
        if now - self.last >= 0.5:
            self.last = now
            self._send((logs or {}).get("loss"), None)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._send(logs.get("loss"), logs.get(self.monitor))

    def _send(self, loss, val) -> None:
        self.fn(Progress(epoch=self.epoch, step=self.counter[0], loss=None if loss is None else float(loss),
                         val_metric=None if val is None else float(val), elapsed_s=time.perf_counter() - self.t0,
                         **self.base))


class _Collapsed(Exception):
    """Raised out of one attempt so :func:`train_qat` can retry it."""


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


@dataclass
class _Run:
    """One training attempt's fixed parts: data, plan, and the state its callbacks share."""

    task: str
    train_ds: Any
    val_ds: Any
    plan: Plan
    classes: int
    chance: Chance | None
    patience: int
    verbose: int
    progress: ProgressFn | None
    metric_name: str
    attempt: int
    t0: float = field(default_factory=time.perf_counter)
    counter: list[int] = field(default_factory=lambda: [0])

    def fit(self, model: keras.Model, phase: str, epochs: int, peak: float, warmup: int) -> dict[str, list[float]]:
        p = self.plan
        schedule = WarmupCosine(peak, epochs * p.steps_per_epoch, warmup, p.recipe.cosine_floor)
        _compile(model, self.task, p, schedule, self.classes)
        monitor = "val_accuracy" if self.task == "classification" else "val_euclidean_error"
        guard, collapse = _NaNGuard(), _CollapseGuard(self.chance, self.counter)
        # Early stopping watches the second half of the phase only: while the cosine schedule is still high the
        # validation metric is noisy, and patience 3 cut a 24-epoch float phase of ResNet-8 on CIFAR-10 at
        # epoch 14 (bench/results/recipe.md, cifar10/resnet8/default/30; docs/training.md).
        callbacks: list[Any] = [guard, collapse, keras.callbacks.EarlyStopping(
            monitor=monitor, patience=self.patience, restore_best_weights=True, start_from_epoch=epochs // 2,
            mode="max" if self.task == "classification" else "min")]
        if self.progress is not None:
            base = {"phase": phase, "phase_epochs": epochs, "metric_name": self.metric_name, "attempt": self.attempt,
                    "total_steps": (p.float_epochs + p.qat_epochs) * p.steps_per_epoch}
            callbacks.append(_ProgressCallback(self.progress, base, self.counter, self.t0, monitor))
        hist = model.fit(self.train_ds, validation_data=self.val_ds, epochs=epochs, callbacks=callbacks,
                         verbose=0 if self.progress is not None else self.verbose)
        if guard.failed_at is not None:
            raise TrainingError(f"loss became NaN/inf at step {guard.failed_at} of the {phase} phase "
                                f"(peak learning rate {peak:.3g}: lower the learning rate with --lr)")
        if collapse.reason:
            raise _Collapsed(f"{collapse.reason} of the {phase} phase")
        return hist.history


@dataclass(frozen=True)
class _Data:
    """What a training run reads: its training split, plan, augmentation and the streamed validation split."""

    train: data_mod.Split
    plan: Plan
    augment: str | None
    grid: int
    val: Any


def check_training_memory(spec: ArchSpec, batch: int) -> int:
    """Refuse, before any training, a candidate whose training step cannot get the memory it needs; returns the
    bytes it was checked for.

    A QAT training step holds every layer's float32 output and its gradient (and fake-quantised copies): measured
    on this machine (2026-12-02, tf_keras 2.21, batch 32 vs 128; a fit on two specs, not validated on others),
    the virtual memory a step adds per float32 byte of the layers' outputs is 4.0 (MobileNetV3-Small 0.5 @ 128 px)
    and 5.4 (ResNet-8 @ 32 px); :data:`TRAIN_MEMORY_PER_ACTIVATION_BYTE` takes the larger. The check reserves that
    much address space and frees it at once (nothing is touched, so nothing is committed): under an address-space
    limit or past what the kernel would ever grant, that raises ``MemoryError`` here, as a candidate's failure,
    instead of a ``std::bad_alloc`` abort inside TensorFlow that would kill the worker.
    """
    from nas import profile

    elements = sum(math.prod(layer.shape) for layer in profile.estimate(spec).layers)
    need = int(TRAIN_MEMORY_PER_ACTIVATION_BYTE * batch * elements * 4)
    try:
        probe = np.empty(need, np.uint8)
    except MemoryError as e:
        raise TrainingError(f"MemoryError: training needs about {need / 2 ** 30:.1f} GiB for a batch of {batch} "
                            f"({elements:,} activations per sample); not available: {e}") from None
    del probe
    return need


def _data(spec: ArchSpec, dataset: data_mod.Dataset, budget: Budget, seed: int) -> _Data:
    """Streamed from the split's store (resize, normalisation, augmentation inside tf.data): memory does not grow
    with the data set; --train-limit (and a rung's share) is an index selection of the same store."""
    check_compatible(spec, dataset)
    train = dataset.train.head(budget.train_limit or None)
    p = plan_budget(budget, len(train))
    check_training_memory(spec, p.batch_size)
    grid = dataset.grid_channels
    val = pipeline.stream(dataset.val, spec.resolution, spec.channels, grid, batch_size=max(p.batch_size, 256),
                          seed=seed)
    return _Data(train=train, plan=p, augment=dataset.description.get("augment"), grid=grid, val=val)


def train_qat(spec: ArchSpec, dataset: data_mod.Dataset, budget: Budget, *, seed: int = 0,
              verbose: int = 0, progress: ProgressFn | None = None) -> Trained:
    """Train ``spec`` on ``dataset`` with INT8 QAT under ``budget``; deterministic for ``seed``.

    Raises :class:`TrainingError` for a NaN loss, a model that predicts NaN, or a collapse that the retry
    at :data:`RETRY_LR_FACTOR` times the learning rate did not cure.
    """
    timings: dict[str, float] = {}
    task = dataset.task
    name, higher = task_metric(task)
    t0 = time.perf_counter()
    d = _data(spec, dataset, budget, seed)
    p, augment, grid = d.plan, d.augment, d.grid
    train_ds = pipeline.stream(d.train, spec.resolution, spec.channels, grid, batch_size=p.batch_size,
                               shuffle=True, seed=seed, augment=augment)
    val_ds = x_val = d.val  # what predict() reads for the validation figures (its labels are ignored)
    timings["data"] = time.perf_counter() - t0
    classes = dataset.num_classes if task == "classification" else 0
    chance = Chance.of(dataset.val.y, classes) if task == "classification" and p.recipe.detect_collapse else None
    log.info("%s", p.describe())

    attempts: list[dict[str, Any]] = []
    steps = 0
    for attempt, scale in ((1, 1.0), (2, RETRY_LR_FACTOR)):
        run_plan = p if scale == 1.0 else dataclasses.replace(p, peak_lr=p.peak_lr * scale)
        run = _Run(task=task, train_ds=train_ds, val_ds=val_ds, plan=run_plan, classes=classes, chance=chance,
                   patience=budget.patience, verbose=verbose, progress=progress, metric_name=name, attempt=attempt)
        try:
            model, val_metric, pretrain, epochs_run, history = _attempt(spec, run, seed, timings, x_val,
                                                                        dataset.val.y)
        except _Collapsed as c:
            steps += run.counter[0]
            attempts.append({"peak_lr": run_plan.peak_lr, "outcome": f"collapsed: {c}"})
            if attempt == 1:
                log.warning("training collapsed (%s) at peak learning rate %.3g; retrying at %.3g", c,
                            run_plan.peak_lr, run_plan.peak_lr * RETRY_LR_FACTOR)
            continue
        attempts.append({"peak_lr": run_plan.peak_lr, "outcome": "trained"})
        return Trained(model=model, metric_name=name, higher_is_better=higher, val_metric=val_metric,
                       pretrain_val_metric=pretrain, epochs_run=epochs_run, plan=run_plan, history=history,
                       timings=timings, attempts=attempts, steps=steps + run.counter[0])
    raise TrainingError("training collapsed twice: " + "; then ".join(
        f"at peak learning rate {a['peak_lr']:.3g}, {a['outcome'].removeprefix('collapsed: ')}" for a in attempts))


def _attempt(spec: ArchSpec, run: _Run, seed: int, timings: dict[str, float], x_val: Any, y_val: Any
             ) -> tuple[keras.Model, float, float | None, int, dict[str, list[float]]]:
    """One training run from a fresh initialisation: the float phase (if any), then QAT."""
    keras.utils.set_random_seed(seed)
    p = run.plan
    t0 = time.perf_counter()
    float_model = builder.build(spec)
    timings["build"] = time.perf_counter() - t0
    history: dict[str, list[float]] = {}
    pretrain = None
    epochs_run = 0
    if p.float_epochs:
        t0 = time.perf_counter()
        h = run.fit(float_model, "float", p.float_epochs, p.peak_lr, p.warmup_steps)
        history.update({f"float_{k}": v for k, v in h.items()})
        epochs_run += len(h.get("loss", []))
        pretrain = metric_value(run.task, y_val, float_model.predict(x_val, verbose=0, batch_size=256))
        timings["float_train"] = time.perf_counter() - t0
    model, val_metric, h = _qat_phase(run, float_model, 0 if p.float_epochs else p.warmup_steps, timings, x_val,
                                      y_val)
    history.update(h)
    epochs_run += len(h.get("loss", []))
    return model, val_metric, pretrain, epochs_run, {k: [float(v) for v in vs] for k, vs in history.items()}


def _qat_phase(run: _Run, float_model: keras.Model, warmup: int, timings: dict[str, float], x_val: Any, y_val: Any
               ) -> tuple[keras.Model, float, dict[str, list[float]]]:
    """The QAT phase (after the float one, or alone): wrap the model, fine-tune it, score it on validation."""
    p = run.plan
    t0 = time.perf_counter()
    model = builder.quantize(float_model)
    timings["quantize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    h = run.fit(model, "qat", p.qat_epochs, p.qat_peak_lr, warmup)
    timings["qat_train"] = time.perf_counter() - t0
    val_metric = metric_value(run.task, y_val, model.predict(x_val, verbose=0, batch_size=256))
    if not math.isfinite(val_metric):
        raise TrainingError("the trained model predicts NaN")
    return model, val_metric, h


def train_rung(spec: ArchSpec, dataset: data_mod.Dataset, budget: Budget, rung: Rung, below: Rung | None, *,
               seed: int = 0, start_weights: Path | None = None, weights_out: Path | None = None,
               progress: ProgressFn | None = None) -> Trained:
    """Train one rung of a multi-fidelity search (:mod:`nas.fidelity`): float training continued from
    ``start_weights`` (the rung ``below``'s float weights) up to ``rung.float_steps``, on the rung's share of
    the training set; the float weights are saved to ``weights_out`` for the rung above. The top rung then
    runs the budget's QAT phase on the whole training set, exactly as :func:`train_qat` does after its float
    epochs, so a candidate promoted to the top has had the single-fidelity budget.

    A rung's learning rate follows its own cosine from the peak (a warm restart; warm-up only on rung 0):
    each rung is judged at the end of a decay, not in the middle of a high learning rate. ``Trained.model``
    is the float model below the top rung (``val_metric`` is then float) and the QAT model at the top.
    """
    timings: dict[str, float] = {}
    task = dataset.task
    name, higher = task_metric(task)
    t0 = time.perf_counter()
    d = _data(spec, dataset, budget, seed)
    train_split, p, augment, grid = d.train, d.plan, d.augment, d.grid
    # The same permutation for every rung of a candidate, so a rung's images include the rung below's.
    order = np.random.default_rng(seed).permutation(len(train_split))
    head = np.sort(order[: max(p.batch_size, int(math.ceil(rung.fraction * len(train_split))))])
    rung_ds = pipeline.stream(train_split.subset(head), spec.resolution, spec.channels, grid,
                              batch_size=p.batch_size, shuffle=True, seed=seed + rung.index, augment=augment)
    val_ds = x_val = d.val  # what predict() reads for the validation figures (its labels are ignored)
    timings["data"] = time.perf_counter() - t0

    keras.utils.set_random_seed(seed + rung.index)
    t0 = time.perf_counter()
    model = builder.build(spec)
    if start_weights is not None:
        model.load_weights(str(start_weights))
    timings["build"] = time.perf_counter() - t0
    steps = rung.float_steps - (below.float_steps if below is not None else 0)
    if steps < 1:
        raise ValueError(f"rung {rung.index} has no float steps beyond rung {below.index if below else '-'}")
    t0 = time.perf_counter()
    classes = dataset.num_classes if task == "classification" else 0
    warmup = min(p.warmup_steps, steps // 2) if below is None else 0
    _compile(model, task, p, WarmupCosine(p.peak_lr, steps, warmup, p.recipe.cosine_floor), classes)
    guard = _NaNGuard()
    hist = model.fit(rung_ds.repeat(), steps_per_epoch=steps, epochs=1, callbacks=[guard], verbose=0)
    if guard.failed_at is not None:
        raise TrainingError(f"loss became NaN/inf at step {guard.failed_at} of rung {rung.index}'s float training "
                            f"(peak learning rate {p.peak_lr:.3g}: lower the learning rate with --lr)")
    timings["float_train"] = time.perf_counter() - t0
    if weights_out is not None:
        model.save_weights(str(weights_out))
    float_val = metric_value(task, dataset.val.y, model.predict(x_val, verbose=0, batch_size=256))
    if not math.isfinite(float_val):
        raise TrainingError("the trained model predicts NaN")
    history = {f"float_{k}": [float(v) for v in vs] for k, vs in hist.history.items()}
    attempts = [{"peak_lr": p.peak_lr, "outcome": "trained"}]
    if not rung.final:
        return Trained(model=model, metric_name=name, higher_is_better=higher, val_metric=float_val,
                       pretrain_val_metric=float_val, epochs_run=0, plan=p, history=history, timings=timings,
                       attempts=attempts, steps=steps)
    train_ds = pipeline.stream(train_split, spec.resolution, spec.channels, grid, batch_size=p.batch_size,
                               shuffle=True, seed=seed, augment=augment)
    chance = Chance.of(dataset.val.y, classes) if task == "classification" and p.recipe.detect_collapse else None
    run = _Run(task=task, train_ds=train_ds, val_ds=val_ds, plan=p, classes=classes, chance=chance,
               patience=budget.patience, verbose=0, progress=progress, metric_name=name, attempt=1)
    run.counter[0] = rung.float_steps
    try:
        qat_model, val_metric, h = _qat_phase(run, model, 0, timings, x_val, dataset.val.y)
    except _Collapsed as c:
        raise TrainingError(f"training collapsed: {c}") from c
    history.update({k: [float(v) for v in vs] for k, vs in h.items()})
    return Trained(model=qat_model, metric_name=name, higher_is_better=higher, val_metric=val_metric,
                   pretrain_val_metric=float_val, epochs_run=len(h.get("loss", [])), plan=p, history=history,
                   timings=timings, attempts=attempts, steps=steps + run.counter[0] - rung.float_steps)
