"""Export: turn a trained candidate into a bundle a firmware engineer can use as it is, and verify bundles.

A bundle is one folder per exported model::

    model_int8.tflite    full-integer model, int8 in and out
    model_qat.h5         the trained Keras (tf_keras + tfmot QAT) model
    model_data.cc/.h     the .tflite as an aligned C array + its length, kTensorArenaSize, I/O quantization
    samples.npz          real test inputs (int8) and the INT8 outputs the TFLM host interpreter gave for them
    metadata.json        spec, data, float / INT8 metrics, memory (estimated and measured), MACs, latency and
                         energy on the target, every limit and how it was met, quantization, versions, seed,
                         sha256 of the files
    README.md            model card with the numbers and minimal Python / TFLM C++ examples
    constraints.yaml     the constraint file the bundle was checked against (when there is one)
    imx500/              for runtime: imx500 targets: packerOut.zip, the converter's memory report, logs

The core works on a *trial folder* (what ``nas train --out DIR`` writes and what a search writes under
``runs/<study>/trials/<n>/``): :func:`export_trial`. :func:`export` adds choosing trials from a run directory
(``--trial N``, ``--pareto``, ``--best METRIC``) through :mod:`nas.results`, the one reader of run folders.

Safety: a bundle is assembled in a hidden temporary folder next to its destination and renamed into place
at the end, so a crash leaves no half bundle; an existing bundle is only replaced with ``force``; bundle
names must be plain folder names inside the output folder.

:func:`verify_bundle` re-checks a bundle on its own: sha256 of the files, the C array against the .tflite,
and the .tflite re-run in TensorFlow Lite Micro with the bundle's arena size on the stored samples.

One module per job:

* :mod:`~nas.export.layout` the bundle's file names, format version and sha256 fingerprints
* :mod:`~nas.export.csource` model_data.cc / .h (C array, ``kTensorArenaSize`` and its margin), op resolver names
* :mod:`~nas.export.trial` reading a trained trial folder (its file names live there alone)
* :mod:`~nas.export.interpreters` I/O details, the TFLM run with an arena, the tf.lite reference run
* :mod:`~nas.export.staging` destination checks, the hidden temporary folder renamed into place, the zip
* :mod:`~nas.export.metadata` metadata.json: memory, limits, quantization, versions
* :mod:`~nas.export.imx500_part` the IMX500 converter's part of a bundle
* :mod:`~nas.export.select` choosing trials from a run (``--trial``, ``--pareto``, ``--best``)
* :mod:`~nas.export.verify` ``nas verify``
* :mod:`~nas.export.card` the model card (README.md)
* :mod:`~nas.export.bundle` export itself: :func:`export_trial` and :func:`export`

None of them imports TensorFlow at module level: ``import nas.export`` is cheap, TensorFlow loads when a
bundle is made or verified.
"""
from __future__ import annotations

from nas.export.bundle import DEFAULT_SAMPLES, export, export_trial
from nas.export.card import model_card
from nas.export.csource import (ARENA_MARGIN_FRACTION, ARENA_MARGIN_MIN, arena_with_margin, c_array_source, c_header,
                                op_resolver_method, parse_c_array, parse_header_int)
from nas.export.imx500_part import IMX500_MODES, REPRESENTATIVE_SAMPLES
from nas.export.interpreters import run_tflm
from nas.export.layout import (BUNDLE_FORMAT, C_HEADER, C_SOURCE, CARD, CHECKED_FILES, CONSTRAINTS, IMX500_DIR, KERAS,
                               METADATA, SAMPLES, TFLITE, file_sha256, sha256)
from nas.export.select import BEST_METRICS, select_trials
from nas.export.staging import check_name, check_out_dir, write_zip
from nas.export.trial import TRIAL_FILES, Trial, default_name, is_run_dir, read_trial
from nas.export.verify import Verified, VerifyError, verify_bundle

__all__ = [
    "ARENA_MARGIN_FRACTION", "ARENA_MARGIN_MIN", "BEST_METRICS", "BUNDLE_FORMAT", "CARD", "CHECKED_FILES",
    "CONSTRAINTS", "C_HEADER", "C_SOURCE", "DEFAULT_SAMPLES", "IMX500_DIR", "IMX500_MODES", "KERAS", "METADATA",
    "REPRESENTATIVE_SAMPLES", "SAMPLES", "TFLITE", "TRIAL_FILES", "Trial", "Verified", "VerifyError",
    "arena_with_margin", "c_array_source", "c_header", "check_name", "check_out_dir", "default_name", "export",
    "export_trial", "file_sha256", "is_run_dir", "model_card", "op_resolver_method", "parse_c_array",
    "parse_header_int", "read_trial", "run_tflm", "select_trials", "sha256", "verify_bundle", "write_zip",
]
