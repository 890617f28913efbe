"""The hypervolume of a Pareto front: one number for "how good is this set of trade-offs".

The search benchmarks compare samplers by the hypervolume their feasible fronts dominate (all objectives
minimised, normalised to a reference point); exact for 2 and 3 objectives, which is all the search has.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def hypervolume(points: Any, ref: Sequence[float]) -> float:
    """Exact hypervolume dominated by ``points`` (n x 3 or n x 2, every column minimised) up to ``ref``.

    Points that do not strictly dominate ``ref`` in every column add nothing and are dropped. Three
    objectives: slices along the first column, each slice's 2-D area computed by a staircase sweep
    (O(n^2 log n): fronts here have tens of points).
    """
    pts = np.asarray(points, dtype=float).reshape(-1, len(ref))
    ref_arr = np.asarray(ref, dtype=float)
    pts = pts[np.all(pts < ref_arr, axis=1)] if len(pts) else pts
    if len(pts) == 0:
        return 0.0
    if len(ref_arr) == 2:
        return _area_2d(pts, ref_arr)
    if len(ref_arr) != 3:
        raise ValueError("hypervolume: 2 or 3 objectives")
    pts = pts[np.argsort(pts[:, 0], kind="stable")]
    total = 0.0
    for i in range(len(pts)):
        x_next = pts[i + 1, 0] if i + 1 < len(pts) else ref_arr[0]
        width = x_next - pts[i, 0]
        if width > 0:
            total += width * _area_2d(pts[: i + 1, 1:], ref_arr[1:])
    return float(total)


def _area_2d(pts: np.ndarray, ref: np.ndarray) -> float:
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
    area, best = 0.0, ref[1]
    for i, (a, b) in enumerate(pts):
        if b >= best:
            continue
        area += (ref[0] - a) * (best - b)
        best = b
    return float(area)
