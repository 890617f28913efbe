"""Helpers the tests and the benchmarks share: random specs over every option, a throw-away PostgreSQL server.

They live in the package (not in ``tests/`` or ``bench/``) so that neither folder imports the other and no
script edits ``sys.path``: both import ``nas.testing``. Nothing here is used by the search itself.
"""
from __future__ import annotations

import glob
import os
import random
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nas.spec import ArchSpec, Block, Head

# ------------------------------------------------------------------------------------------ random specs

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


# ------------------------------------------------------------------------------------------ PostgreSQL


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_available() -> bool:
    return bool(pg_bin("initdb") and pg_bin("pg_ctl"))


@contextmanager
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL server on a free local port (the tests' fixture too); its URL.

    Debian's ``postgresql`` server binaries (initdb, pg_ctl); as root the server runs as user postgres.
    Trust authentication on 127.0.0.1 only, fsync off (the data is thrown away); stopped and removed at the end.
    """
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's 'postgresql' "
                           "package (apt-get install -y postgresql)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    tmp = Path(tempfile.mkdtemp(prefix="tinynas-pg-"))
    if as_postgres:
        shutil.chown(tmp, "postgres", "postgres")
    data, port = tmp / "data", free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_postgres, *cmd], check=True, capture_output=True, text=True, timeout=120)

    started = False
    try:
        run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        run(pg_ctl, "-D", str(data), "-l", str(tmp / "log.txt"), "-w", "-t", "60", "start",
            "-o", f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off")
        started = True
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE tinynas")
        conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/tinynas"
    finally:
        if started:
            subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True,
                           timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


def postgres_version() -> str | None:
    pg = pg_bin("postgres")
    if not pg:
        return None
    try:
        return subprocess.run([pg, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
