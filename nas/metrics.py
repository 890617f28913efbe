"""The task metrics: one table of names and directions, and their values from predictions (numpy only)."""
from __future__ import annotations

import numpy as np

#: task -> (metric name, higher is better)
METRICS = {"classification": ("accuracy", True), "gaze": ("gaze_error_cm", False)}


def metric_for(task: str) -> tuple[str, bool]:
    """The task metric and whether higher is better (``accuracy`` up, ``gaze_error_cm`` down)."""
    return METRICS[task]


def metric_value(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The task metric from predictions: accuracy for classes, mean Euclidean error (cm) for gaze."""
    if task == "classification":
        return float(np.mean(np.argmax(y_pred, axis=-1) == y_true))
    return float(np.mean(np.linalg.norm(y_true.astype(np.float32) - y_pred, axis=-1)))


#: what a reported figure was measured on: the search scores ``val`` (and selects on it), a chosen model is
#: reported on ``test`` (``nas train``, ``nas finalize``); the two never share data
SPLIT_NAMES = {"val": "validation split (what the search selected on)", "test": "test split"}


def split_name(split: str | None) -> str:
    """``validation split (...)`` / ``test split``: the words every report puts beside a figure."""
    return SPLIT_NAMES.get(split or "", f"{split} split")


Z95 = 1.959964  # two-sided 95% normal quantile


def wilson_interval(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of an accuracy of ``correct`` hits out of ``n`` (95% by default).

    Wilson rather than the normal approximation: it stays inside [0, 1] and keeps its coverage near 0% and
    100% and at the few hundred samples a tiny data set's test split holds.
    """
    if n <= 0:
        raise ValueError(f"an interval needs at least one sample, got n={n}")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_interval(errors: np.ndarray, *, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of per-sample ``errors`` (the gaze error in cm)."""
    errors = np.asarray(errors, np.float64)
    if len(errors) == 0:
        raise ValueError("an interval needs at least one sample")
    rng = np.random.default_rng(seed)
    means = errors[rng.integers(0, len(errors), (resamples, len(errors)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def metric_interval(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """The 95% interval of :func:`metric_value` on these samples: Wilson for accuracy, bootstrap for gaze."""
    if task == "classification":
        correct = int(np.sum(np.argmax(y_pred, axis=-1) == y_true))
        return wilson_interval(correct, len(y_true))
    return bootstrap_interval(np.linalg.norm(y_true.astype(np.float32) - y_pred, axis=-1))


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two models whose intervals overlap are not ranked as better and worse."""
    return a[0] <= b[1] and b[0] <= a[1]
