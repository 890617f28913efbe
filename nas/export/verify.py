"""``nas verify``: re-check a bundle on its own (sha256 of the files, the C array against the .tflite, the arena
size, and the .tflite re-run in TensorFlow Lite Micro with the bundle's arena on the stored samples)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from nas.errors import UserError
from nas.export.csource import parse_c_array, parse_header_int
from nas.export.interpreters import run_tflm
from nas.export.layout import (C_HEADER, C_SOURCE, CHECKED_FILES, IMX500_DIR, METADATA, SAMPLES, TFLITE, file_sha256,
                               sha256)
from nas.formatting import first_line


class VerifyError(Exception):
    """A bundle failed verification; the message is the one-line reason."""


@dataclass(frozen=True)
class Verified:
    """What ``nas verify`` checked on a bundle that passed."""

    bundle: Path
    tflite_bytes: int
    sha256: str
    arena_size: int
    samples: int
    files_checked: tuple[str, ...] = field(default=())


def verify_bundle(bundle: Path | str) -> Verified:
    """Re-check a bundle on its own; :class:`VerifyError` with a one-line reason at the first mismatch.

    Checks, in order: the files' sha256 against ``metadata.json``; the C array's bytes and length against the
    .tflite; ``kTensorArenaSize`` against the metadata; then the .tflite is run in the TFLM host interpreter
    with ``kTensorArenaSize`` on the stored sample inputs and every output must equal the recorded one.
    """
    import numpy as np

    path = Path(bundle)
    meta_path = path / METADATA
    if not path.is_dir() or not meta_path.is_file():
        raise UserError(str(bundle), "", f"a bundle folder made by nas export (with {METADATA})")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise VerifyError(f"{METADATA} is not valid JSON ({e})") from None
    files = meta.get("files") or {}
    checked = []
    for rel in (*CHECKED_FILES, *sorted(f for f in files if f.startswith(IMX500_DIR + "/") and f.endswith(".zip"))):
        f = path / rel
        if rel not in files:
            raise VerifyError(f"{METADATA} records no sha256 for {rel}")
        if not f.is_file():
            raise VerifyError(f"{rel} is missing")
        digest = file_sha256(f)
        if digest != files[rel]["sha256"]:
            raise VerifyError(f"{rel}: sha256 {digest[:16]}... differs from {METADATA}'s "
                              f"{files[rel]['sha256'][:16]}...")
        checked.append(rel)
    tflite = (path / TFLITE).read_bytes()
    if sha256(tflite) != meta.get("tflite_sha256"):
        raise VerifyError(f"{TFLITE}: sha256 differs from {METADATA}'s tflite_sha256")
    try:
        c_bytes, c_len = parse_c_array((path / C_SOURCE).read_text())
    except (ValueError, OSError) as e:
        raise VerifyError(f"{C_SOURCE}: cannot read the C array ({e})") from None
    if c_bytes != tflite:
        first = next((i for i, (a, b) in enumerate(zip(c_bytes, tflite)) if a != b), min(len(c_bytes), len(tflite)))
        raise VerifyError(f"{C_SOURCE}: the C array ({len(c_bytes)} bytes) differs from {TFLITE} ({len(tflite)} bytes) "
                          f"at byte {first}")
    if c_len != len(tflite):
        raise VerifyError(f"{C_SOURCE}: g_model_data_len is {c_len}, {TFLITE} has {len(tflite)} bytes")
    arena_size = parse_header_int((path / C_HEADER).read_text(), "kTensorArenaSize")
    recorded = (meta.get("memory") or {}).get("arena", {}).get("kTensorArenaSize")
    if arena_size is None or arena_size != recorded:
        raise VerifyError(f"{C_HEADER}: kTensorArenaSize {arena_size} differs from {METADATA}'s {recorded}")
    with np.load(path / SAMPLES) as npz:
        inputs, expected = npz["inputs"], npz["outputs"]
    try:
        got = run_tflm(tflite, arena_size, inputs)
    except RuntimeError as e:
        raise VerifyError(first_line(e)) from None
    expected = expected.reshape(len(expected), -1)
    if got.shape != expected.shape or not np.array_equal(got, expected):
        bad = [i for i in range(len(expected))
               if got.shape != expected.shape or not np.array_equal(got[i], expected[i])]
        raise VerifyError(f"TFLM outputs differ from the recorded ones on {len(bad)} of {len(expected)} samples "
                          f"(first: sample {bad[0]})")
    return Verified(path, len(tflite), sha256(tflite), arena_size, len(expected), tuple(checked))
