"""The budget and recipe arithmetic (no TensorFlow): what a budget comes to for a given training set."""
from __future__ import annotations

import dataclasses
import math

import pytest

from nas.budget import MIN_BATCH, RECIPES, Budget, Recipe, plan


def test_default_plan_on_cifar_sized_data() -> None:
    p = plan(Budget(epochs=15), 42_500)
    assert (p.batch_size, p.steps_per_epoch) == (128, 333)
    assert (p.float_epochs, p.qat_epochs) == (12, 3)  # float first, QAT fine-tunes the last 20%
    assert p.peak_lr == pytest.approx(RECIPES["default"].base_lr)
    assert p.qat_peak_lr == pytest.approx(0.1 * p.peak_lr)
    assert p.warmup_steps == round(0.1 * 12 * 333)
    assert "12 float + 3 QAT epochs" in p.describe() and "weight decay" in p.describe()


def test_auto_batch_shrinks_for_small_data_and_scales_the_learning_rate() -> None:
    big, small = plan(Budget(), 42_500), plan(Budget(), 390)
    assert small.batch_size == MIN_BATCH and small.steps_per_epoch == math.ceil(390 / MIN_BATCH)
    assert plan(Budget(), 3250).batch_size == 64  # 50 steps an epoch, not 25
    assert small.peak_lr == pytest.approx(big.peak_lr * math.sqrt(MIN_BATCH / 128))  # square-root rule
    given = plan(Budget(batch_size=32, learning_rate=0.01), 42_500)
    assert (given.batch_size, given.peak_lr) == (32, 0.01)  # what the user states wins


def test_short_budgets_keep_one_qat_epoch() -> None:
    assert [(plan(Budget(epochs=e), 1000).float_epochs, plan(Budget(epochs=e), 1000).qat_epochs)
            for e in (1, 2, 3, 5)] == [(0, 1), (1, 1), (2, 1), (4, 1)]
    assert plan(Budget(epochs=1), 1000).warmup_steps > 0  # a QAT-only run warms up too
    assert (plan(Budget(epochs=5, qat_epochs=3), 1000).float_epochs, 3) == (2, 3)


def test_legacy_recipe_is_the_old_default() -> None:
    p = plan(Budget(epochs=4, recipe="legacy"), 42_500)
    assert (p.float_epochs, p.qat_epochs, p.batch_size, p.peak_lr, p.warmup_steps) == (0, 4, 32, 5e-3, 0)
    assert not p.recipe.detect_collapse and p.recipe.optimizer == "adam"


def test_old_run_budgets_resume_as_trained() -> None:
    """Before issue 18 ``epochs`` were QAT epochs and ``float_epochs`` came on top, with the legacy recipe."""
    old = {"epochs": 2, "float_epochs": 1, "batch_size": 32, "learning_rate": 0.005, "patience": 3,
           "train_limit": None}
    b = Budget.from_dict(old)
    assert (b.epochs, b.qat_epochs, b.recipe) == (3, 2, "legacy")
    assert Budget.from_dict(b.to_dict()) == b


def test_a_custom_recipe_round_trips() -> None:
    mine = dataclasses.replace(RECIPES["default"], name="no-ls", label_smoothing=0.0)
    b = Budget(epochs=4, recipe=mine)
    back = Budget.from_dict(b.to_dict())
    assert isinstance(back.recipe, Recipe) and back == b and back.resolved_recipe.label_smoothing == 0.0


@pytest.mark.parametrize("kwargs, word", [({"epochs": 0}, "epochs"), ({"epochs": 2, "qat_epochs": 3}, "qat_epochs"),
                                          ({"batch_size": 0}, "batch_size"), ({"learning_rate": -1.0}, "learning_rate"),
                                          ({"learning_rate": math.inf}, "learning_rate"),
                                          ({"recipe": "fast"}, "recipe"), ({"patience": 0}, "patience")])
def test_bad_budgets_name_the_field(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        Budget(**kwargs)
