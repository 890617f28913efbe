"""Training steps the search tests give ``nas.search.execute(train_step="tests.train_steps:NAME")``: the worker
processes import them in place of ``nas.tf.candidate.evaluate`` (same signature), so a test can make the
training step itself raise without touching the rest of the search."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nas.errors import CandidateError


def divide_by_zero(spec: Any, dataset: str, budget: Any, out_dir: Path, *, seed: int = 0,
                   target: Any = None) -> dict[str, Any]:
    """A bug in the training code (not the candidate's fault): the search must stop, not record a failure."""
    return {"int8_metric": 1 / 0}


def candidate_fails(spec: Any, dataset: str, budget: Any, out_dir: Path, *, seed: int = 0,
                    target: Any = None) -> dict[str, Any]:
    """Every candidate fails on its own (as a NaN loss would): each trial is a failed candidate."""
    raise CandidateError(f"loss became NaN/inf at step 1 (spec {spec.to_string()[:20]})")
