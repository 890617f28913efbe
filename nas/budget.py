"""How much training a candidate gets, and with which recipe: shared by the search, ``nas train`` and the trainer.

Plain frozen dataclasses with no TensorFlow in them, so the search coordinator and the command line can
build, check, record and explain budgets without importing the trainer.

* :class:`Budget` is what a user states: total epochs (float + QAT), optionally the QAT share, batch size
  and peak learning rate (both chosen from the data when not given), early-stopping patience, a cap on
  training images, and the recipe's name.
* :class:`Recipe` is how a budget is spent: the float/QAT split, warm-up, decay, optimizer, weight decay,
  label smoothing. ``default`` follows QAT practice (float training first, then quantization-aware
  fine-tuning, as the TF Model Optimization guide orders it); ``legacy`` is the recipe before issue 18
  (QAT from the first step, Adam at 5e-3, batch 32), kept so ``bench/recipe.py`` can measure the two side
  by side and old run directories resume as they were trained. The evidence for each choice is in
  ``docs/training.md``.
* :func:`plan` turns a budget, its recipe and the training-set size into the concrete numbers the trainer
  runs (and ``nas train`` prints): batch, peak learning rate, float and QAT epochs, warm-up steps.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """How a budget's epochs are spent. Learning rates are for ``ref_batch``; see :func:`plan` for scaling."""

    name: str
    float_share: float        # share of the epochs trained in float before QAT (the rest is QAT fine-tuning)
    base_lr: float            # peak learning rate at ``ref_batch``
    ref_batch: int            # batch size ``base_lr`` was measured at, and the default batch ceiling
    lr_scaling: str           # "sqrt": peak lr ~ sqrt(batch / ref_batch) (Adam); "none": lr as given
    warmup_share: float       # linear warm-up, as a share of the float phase's steps (0: none)
    qat_lr_scale: float       # the QAT phase's peak lr, as a share of the float phase's
    optimizer: str            # "adamw" (decoupled weight decay) or "adam"
    weight_decay: float       # AdamW's decoupled decay (0: none); never on biases, BN or quantizer ranges
    label_smoothing: float    # classification only
    cosine_floor: float       # cosine decay ends at this share of its peak
    auto_batch: bool          # choose the batch from the training-set size (else ``ref_batch``)
    detect_collapse: bool     # retry / fail a run whose validation figures sit at chance (nas.tf.train)


RECIPES: dict[str, Recipe] = {
    # Measured on CIFAR-10 and the embedded sets: docs/training.md.
    "default": Recipe(name="default", float_share=0.8, base_lr=3e-3, ref_batch=128, lr_scaling="sqrt",
                      warmup_share=0.1, qat_lr_scale=0.1, optimizer="adamw", weight_decay=0.05,
                      label_smoothing=0.1, cosine_floor=0.0, auto_batch=True, detect_collapse=True),
    # Before issue 18: QAT from the first step (float epochs only when asked), Adam, cosine from 5e-3 at
    # batch 32 to 5% of it, half the peak for QAT after float epochs, and no collapse detection.
    "legacy": Recipe(name="legacy", float_share=0.0, base_lr=5e-3, ref_batch=32, lr_scaling="none",
                     warmup_share=0.0, qat_lr_scale=0.5, optimizer="adam", weight_decay=0.0,
                     label_smoothing=0.0, cosine_floor=0.05, auto_batch=False, detect_collapse=False),
}

MIN_BATCH = 16
STEPS_PER_EPOCH_TARGET = 40  # auto batch: no fewer steps per epoch than this while the batch can shrink


@dataclass(frozen=True)
class Budget:
    """How much training a candidate gets. ``epochs`` is the total: float epochs plus QAT epochs."""

    epochs: int = 3
    qat_epochs: int | None = None        # QAT epochs within ``epochs`` (None: the recipe's share)
    batch_size: int | None = None        # None: chosen from the training-set size (see :func:`plan`)
    learning_rate: float | None = None   # peak learning rate (None: the recipe's, scaled to the batch)
    patience: int = 3                    # early stopping on the validation metric, per phase
    train_limit: int | None = None       # cap on training samples (tests, quick looks)
    recipe: str | Recipe = "default"    # a name in RECIPES, or a Recipe of one's own (ablations)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.qat_epochs is not None and not 1 <= self.qat_epochs <= self.epochs:
            raise ValueError(f"qat_epochs must be between 1 and epochs ({self.epochs}), got {self.qat_epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.learning_rate is not None and not 0 < self.learning_rate < math.inf:
            raise ValueError(f"learning_rate must be positive and finite, got {self.learning_rate}")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")
        if not isinstance(self.recipe, Recipe) and self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")

    @property
    def resolved_recipe(self) -> Recipe:
        return self.recipe if isinstance(self.recipe, Recipe) else RECIPES[self.recipe]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Budget":
        """A budget from :meth:`to_dict`, or from a run directory written before issue 18 (``epochs`` were the
        QAT epochs and ``float_epochs`` came on top, trained with the legacy recipe)."""
        data = dict(data)
        if "float_epochs" in data:
            float_epochs = int(data.pop("float_epochs") or 0)
            qat = int(data.get("epochs", cls.epochs))
            data.update(epochs=qat + float_epochs, qat_epochs=qat, recipe=data.get("recipe", "legacy"))
        if isinstance(data.get("recipe"), dict):
            data["recipe"] = Recipe(**data["recipe"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Plan:
    """The concrete numbers a budget comes to for one training set: what the trainer runs."""

    recipe: Recipe
    batch_size: int
    steps_per_epoch: int
    peak_lr: float
    float_epochs: int
    qat_epochs: int
    warmup_steps: int

    @property
    def qat_peak_lr(self) -> float:
        return self.peak_lr * (self.recipe.qat_lr_scale if self.float_epochs else 1.0)

    def describe(self) -> str:
        """One line for ``nas train`` and the logs."""
        r = self.recipe
        parts = [f"recipe {r.name}: {self.float_epochs} float + {self.qat_epochs} QAT epochs",
                 f"batch {self.batch_size} ({self.steps_per_epoch} steps/epoch)",
                 f"{r.optimizer} peak lr {self.peak_lr:.3g}" + (f" (QAT {self.qat_peak_lr:.3g})" if self.float_epochs
                                                                 else "")]
        if self.warmup_steps:
            parts.append(f"warm-up {self.warmup_steps} steps")
        if r.weight_decay:
            parts.append(f"weight decay {r.weight_decay:g}")
        if r.label_smoothing:
            parts.append(f"label smoothing {r.label_smoothing:g}")
        return ", ".join(parts)


def plan(budget: Budget, n_train: int) -> Plan:
    """The batch, learning rate and phase lengths for ``budget`` on ``n_train`` training samples.

    Auto batch (recipes with ``auto_batch``, no ``batch_size`` given): the largest power of two up to the
    recipe's ``ref_batch`` that still gives :data:`STEPS_PER_EPOCH_TARGET` steps an epoch, never below
    :data:`MIN_BATCH`: big batches are 3-4x faster per image on CPU (``bench/results/throughput.md``), but a
    200-image set needs steps, not throughput. The peak learning rate scales with ``sqrt(batch / ref_batch)``
    (the square-root rule suits Adam) unless given. The float phase gets ``round(float_share * epochs)``
    epochs, leaving at least one QAT epoch; an explicit ``qat_epochs`` wins.
    """
    if n_train < 1:
        raise ValueError(f"no training samples (n_train={n_train})")
    r = budget.resolved_recipe
    if budget.batch_size is not None:
        batch = budget.batch_size
    elif r.auto_batch:
        batch = r.ref_batch
        while batch > MIN_BATCH and n_train / batch < STEPS_PER_EPOCH_TARGET:
            batch //= 2
    else:
        batch = r.ref_batch
    if budget.learning_rate is not None:
        lr = budget.learning_rate
    else:
        lr = r.base_lr * (math.sqrt(batch / r.ref_batch) if r.lr_scaling == "sqrt" else 1.0)
    if budget.qat_epochs is not None:
        qat = budget.qat_epochs
    else:
        qat = max(1, budget.epochs - int(round(r.float_share * budget.epochs)))
    float_epochs = budget.epochs - qat
    steps = math.ceil(n_train / batch)
    warmup = int(round(r.warmup_share * (float_epochs or qat) * steps))  # warms up the first phase
    return Plan(recipe=r, batch_size=batch, steps_per_epoch=steps, peak_lr=lr, float_epochs=float_epochs,
                qat_epochs=qat, warmup_steps=warmup)
