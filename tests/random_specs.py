"""Random specs over every option of the space, for tests and benchmarks (seeded, reproducible)."""
from __future__ import annotations

import random

from nas.spec import ArchSpec, Block, Head

ACTS = ("relu", "relu6", "hswish")


def random_spec(rng: random.Random, *, max_resolution: int = 224, gaze: bool | None = None,
                small: bool = False) -> ArchSpec:
    """A valid spec with random blocks of every kind, kernel, SE and activation, and either head."""
    stages = rng.randint(3, 5) if not small else 3
    resolution = rng.choice([r for r in (32, 48, 64, 96, 128, 160, 192, 224) if r <= max_resolution])
    blocks = [Block("cn", rng.choice([8, 16]), kernel=3, stride=2, act=rng.choice(ACTS))]
    for i in range(stages):
        kind = rng.choice(("ds", "ir", "ir"))
        blocks.append(Block(
            kind, out_channels=rng.choice([16, 24, 32, 40, 48, 64, 96]), kernel=rng.choice([3, 5, 7]),
            stride=2 if i < 3 else rng.choice([1, 2]), repeats=rng.randint(1, 2 if small else 3),
            expansion=rng.choice([1.0, 3.0, 4.0, 6.0]) if kind == "ir" else 1.0,
            se=rng.choice([0.0, 0.25]), act=rng.choice(ACTS)))
    if rng.random() < 0.5:
        blocks.append(Block("cn", rng.choice([64, 128]), kernel=1, act=rng.choice(ACTS)))
    stride = 1
    for b in blocks:
        stride *= b.stride
    resolution = max(stride, resolution // stride * stride)
    if gaze is None:
        gaze = rng.random() < 0.3
    if gaze:
        head = Head("gaze", hidden=rng.choice([32, 64, 128]), conv_channels=rng.choice([2, 4]),
                    grid_channels=2, act=rng.choice(ACTS))
    else:
        head = Head("classifier", classes=rng.choice([2, 10]), hidden=rng.choice([0, 0, 64]),
                    dropout=rng.choice([0.0, 0.2]), act=rng.choice(ACTS))
    return ArchSpec(resolution, rng.choice([1, 3]), rng.choice([0.25, 0.35, 0.5, 0.75, 1.0]), tuple(blocks), head)
