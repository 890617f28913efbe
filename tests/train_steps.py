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


def rung_step(spec: Any, dataset: str, budget: Any, out_dir: Path, *, seed: int = 0, target: Any = None,
              rung: Any = None, below: Any = None, start_from: Path | None = None) -> dict[str, Any]:
    """A multi-fidelity training step without TensorFlow: the "weights" file records every rung this candidate
    trained, continued from the rung below's file, and the metric grows with the rung and with the spec's width
    (so the promotion order is known). ``TINYNAS_TEST_RUNG_SLEEP`` seconds per rung make it take time."""
    import json
    import os
    import time

    from nas import profile
    from nas.rundir import TrialFiles

    files = TrialFiles(Path(out_dir))
    files.path.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    if start_from is not None:
        history = json.loads(TrialFiles(Path(start_from)).float_weights.read_text())
        assert history[-1]["rung"] == rung.index - 1, (history, rung)
    history.append({"rung": rung.index, "steps": rung.float_steps, "trial_dir": str(out_dir)})
    files.float_weights.write_text(json.dumps(history))
    time.sleep(float(os.environ.get("TINYNAS_TEST_RUNG_SLEEP", "0")))
    est = profile.estimate(spec)
    metric = min(0.99, 0.3 + 0.2 * rung.index + 0.3 * spec.width)
    out: dict[str, Any] = {"metric_name": "accuracy", "higher_is_better": True, "spec": spec.to_string(),
                           "rung": rung.index, "weights_history": history, "seconds": 0.01,
                           "trained_images": 100 * (rung.float_steps - (below.float_steps if below else 0))}
    if rung.final:
        out.update(int8_metric=metric, measured_memory_bytes=est.peak_sram_bytes, tflm_arena_bytes=est.peak_sram_bytes,
                   tflite_bytes=est.flash_bytes, metric_split="val", int8_interval=[metric - 0.05, metric + 0.05])
    else:
        out.update(rung_metric=metric, rung_memory_bytes=est.peak_sram_bytes)
    files.metrics.write_text(json.dumps(out))
    return out


def thousand_images(spec: Any, dataset: str, budget: Any, out_dir: Path, *, seed: int = 0,
                    target: Any = None) -> dict[str, Any]:
    """A whole candidate without TensorFlow that reports 1,000 trained images (for --epoch-images)."""
    from nas import profile

    est = profile.estimate(spec)
    return {"metric_name": "accuracy", "higher_is_better": True, "spec": spec.to_string(), "int8_metric": 0.5,
            "measured_memory_bytes": est.peak_sram_bytes, "tflm_arena_bytes": est.peak_sram_bytes,
            "tflite_bytes": est.flash_bytes, "metric_split": "val", "trained_images": 1000, "seconds": 0.01}
