"""What a bundle is made of: its format version, its file names, which files ``verify`` checks, and the sha256
that fingerprints them (recorded by :mod:`nas.export.metadata`, re-checked by :mod:`nas.export.verify`)."""
from __future__ import annotations

import hashlib
from pathlib import Path

BUNDLE_FORMAT = 1
TFLITE = "model_int8.tflite"
KERAS = "model_qat.h5"
C_SOURCE = "model_data.cc"
C_HEADER = "model_data.h"
METADATA = "metadata.json"
CARD = "README.md"
SAMPLES = "samples.npz"
CONSTRAINTS = "constraints.yaml"
IMX500_DIR = "imx500"
#: Files whose sha256 ``verify`` checks (README / metadata are documentation, free to annotate).
CHECKED_FILES = (TFLITE, KERAS, C_SOURCE, C_HEADER, SAMPLES)


def sha256(data: bytes) -> str:
    """Hex sha256 of bytes in memory (the .tflite's fingerprint in metadata.json)."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (a bundle's .h5 or zip need not fit in memory twice)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
