"""How much training a candidate gets: the one budget the search, ``nas train`` and the trainer share.

A plain frozen dataclass with no TensorFlow in it, so the search coordinator and the command line can
build, check and record budgets without importing the trainer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Budget:
    """How much training a candidate gets."""

    epochs: int = 3                 # QAT epochs
    float_epochs: int = 0           # float epochs before QAT (a warm start; 0 = QAT from scratch)
    batch_size: int = 32
    learning_rate: float = 5e-3     # peak of a cosine decay over all epochs
    patience: int = 3               # early stopping on the validation metric
    train_limit: int | None = None  # cap on training samples (tests, quick looks)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.float_epochs < 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError(f"invalid budget {self}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
