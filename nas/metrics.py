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
