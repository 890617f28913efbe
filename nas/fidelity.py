"""Multi-fidelity search: a candidate's training cut into rungs, and which candidate to promote next.

Why: Optuna cannot prune multi-objective studies (``trial.report`` raises; optuna/optuna#3450), so without
this every candidate gets the full budget and a search of fixed length tries few of them. Asynchronous
successive halving (ASHA; Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning") gives every
new candidate a small share of the budget first and continues only the best ``1/eta`` of each rung, without
any worker ever waiting for a rung to fill.

The pieces, all pure (no TensorFlow, no Optuna), so the promotion rule is tested on hand-made values:

* :class:`Fidelity` is what the user chose (``--fidelity asha|none``, ``--eta``, ``--rungs``), recorded in
  ``run.yaml``.
* :func:`rungs` turns it and a candidate's float-training steps into :class:`Rung` s: rung ``k`` has trained
  ``eta**-(K-1-k)`` of the float steps when it is judged, on the first ``fraction`` of a fixed permutation of
  the training set (a rung shorter than an epoch sees only that share of the images). The top rung is exactly
  the single-fidelity candidate: all float steps, then the QAT phase, INT8 conversion and measured memory.
  Rungs below it are judged on the float model's validation metric and the memory estimate: no QAT wrap, no
  conversion, which would otherwise cost more than the rung's training.
* :func:`next_promotion` is ASHA's rule with the rung order of a multi-objective search: at each rung, from
  the highest down, the top ``floor(n / eta)`` of the ``n`` results by non-dominated rank (ties: larger
  crowding distance first, then the older trial) are promotable; the first one not yet claimed is returned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

MODES = ("asha", "none")


@dataclass(frozen=True)
class Fidelity:
    """How a search spends a candidate's budget: ``none`` trains each one fully, ``asha`` in rungs."""

    mode: str = "none"
    eta: int = 3
    rungs: int = 3

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"fidelity must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.eta < 2:
            raise ValueError(f"eta must be at least 2, got {self.eta}")
        if self.rungs < 2:
            raise ValueError(f"rungs must be at least 2, got {self.rungs}")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def top(self) -> int:
        """The index of the top rung: the full candidate budget."""
        return self.rungs - 1 if self.enabled else 0

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "eta": self.eta, "rungs": self.rungs}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Fidelity":
        """From ``run.yaml``; runs written before multi-fidelity search have none: single fidelity."""
        data = data or {}
        return cls(mode=str(data.get("mode", "none")), eta=int(data.get("eta", 3)), rungs=int(data.get("rungs", 3)))


@dataclass(frozen=True)
class Rung:
    """One fidelity level of a candidate: where its float training stands when it is judged."""

    index: int
    float_steps: int      # float training steps done, cumulative, when this rung is judged
    fraction: float       # share of the training set (a fixed permutation's head) this rung trains on
    final: bool           # the top rung: then QAT, INT8 conversion and measured memory

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "float_steps": self.float_steps, "fraction": self.fraction,
                "final": self.final}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Rung":
        return cls(index=int(data["index"]), float_steps=int(data["float_steps"]),
                   fraction=float(data["fraction"]), final=bool(data["final"]))


def rungs(fidelity: Fidelity, float_epochs: int, steps_per_epoch: int) -> list[Rung]:
    """The rungs of one candidate whose full budget trains ``float_epochs`` float epochs of ``steps_per_epoch``.

    Rung ``k`` of ``K`` has done ``eta**-(K-1-k)`` of the float steps (at least one step, and strictly more than
    the rung below, so a promotion always trains). A rung with less than an epoch of resource trains on that
    share of the training set; from one epoch on, on all of it.
    """
    if float_epochs < 1:
        raise ValueError("a multi-fidelity search needs float epochs in the candidate's budget "
                         "(the recipe's float phase is what the rungs cut)")
    total = float_epochs * steps_per_epoch
    count = fidelity.rungs if fidelity.enabled else 1
    out: list[Rung] = []
    for k in range(count):
        share = float(fidelity.eta) ** -(count - 1 - k)
        steps = max(1, int(round(total * share)), (out[-1].float_steps + 1) if out else 1)
        fraction = min(1.0, float_epochs * share)
        out.append(Rung(index=k, float_steps=min(steps, total) if k < count - 1 else total,
                        fraction=1.0 if k == count - 1 else fraction, final=k == count - 1))
    if any(b.float_steps <= a.float_steps for a, b in zip(out, out[1:])):
        raise ValueError(f"{total} float steps are too few for {count} rungs at eta {fidelity.eta}: "
                         "give more --epochs or fewer --rungs")
    return out


# --------------------------------------------------------------------------------------------- promotion


@dataclass(frozen=True)
class RungResult:
    """A finished rung of a candidate, as the promotion rule sees it."""

    candidate: int                  # the candidate's first trial (its rung 0): who this is
    trial: int                      # the trial that trained this rung
    rung: int
    values: tuple[float, ...]       # objectives, all minimised (a higher-is-better metric negated)


def nondominated_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Pareto rank of each point (0 = on the front) for minimisation: repeated non-dominated sorting."""
    n = len(points)
    rank = [-1] * n
    left = set(range(n))
    r = 0
    while left:
        front = [i for i in left if not any(_dominates(points[j], points[i]) for j in left if j != i)]
        for i in front:
            rank[i] = r
        left -= set(front)
        r += 1
    return rank


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def crowding(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II crowding distance within one set of points: boundary points infinite, larger = lonelier."""
    n = len(points)
    if n <= 2:
        return [math.inf] * n
    dist = [0.0] * n
    for m in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][m])
        lo, hi = points[order[0]][m], points[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = math.inf
        if hi == lo:
            continue
        for a, i, b in zip(order, order[1:], order[2:]):
            dist[i] += (points[b][m] - points[a][m]) / (hi - lo)
    return dist


def rung_order(results: Sequence[RungResult]) -> list[RungResult]:
    """One rung's results best first: non-dominated rank, then crowding distance (larger first), then age."""
    pts = [r.values for r in results]
    ranks, crowd = nondominated_ranks(pts), [0.0] * len(pts)
    for rank in set(ranks):
        members = [i for i in range(len(pts)) if ranks[i] == rank]
        for i, c in zip(members, crowding([pts[i] for i in members])):
            crowd[i] = c
    order = sorted(range(len(results)), key=lambda i: (ranks[i], -crowd[i], results[i].trial))
    return [results[i] for i in order]


def next_promotion(results: Iterable[RungResult], claimed: set[tuple[int, int]], fidelity: Fidelity
                   ) -> RungResult | None:
    """The result to continue to the rung above it, or None: ASHA's rule, highest rung first.

    ``claimed`` holds ``(candidate, rung)`` for every promotion already made or under way (a candidate is
    promoted at most once per rung). At rung ``k`` with ``n`` results, the best ``floor(n / eta)`` by
    :func:`rung_order` are promotable; the top rung is never promoted.
    """
    by_rung: dict[int, list[RungResult]] = {}
    for r in results:
        by_rung.setdefault(r.rung, []).append(r)
    for k in sorted(by_rung, reverse=True):
        if k >= fidelity.top:
            continue
        at_k = by_rung[k]
        for r in rung_order(at_k)[: len(at_k) // fidelity.eta]:
            if (r.candidate, k + 1) not in claimed:
                return r
    return None
