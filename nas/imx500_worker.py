"""Runs INSIDE the IMX500 converter's own virtual environment (TensorFlow 2.15 + Sony's MCT), never in ours.

Why a separate script: ``imx500-converter`` 3.19 needs TensorFlow 2.14-2.15, numpy < 2 and
``model-compression-toolkit`` 2.5 (STACK.md), which cannot live next to our TensorFlow 2.21 / ``tf_keras`` /
tfmot. The converter only accepts models exported by MCT, so the trained network is rebuilt here from its
spec with plain Keras 2.15 layers, its float weights are loaded by layer name (``nas.tf.builder`` names layers
by block position, so the names match), MCT quantizes it for the IMX500 with a representative set we pass
in, and exports ``model.keras`` for ``imxconv-tf``.

This file imports only the standard library, numpy, TensorFlow, MCT and the pure-Python ``nas.topology`` and
``nas.spec`` (they pull in nothing but ``nas.errors``). It must not import ``nas.tf.builder``, ``tf_keras`` or
tfmot. It finds them through ``PYTHONPATH``, which :func:`nas.imx500.worker_command` points at a folder holding
only our ``nas`` package: our own site-packages (TensorFlow 2.21, numpy 2) must never shadow the venv's.

Usage (the bridge in :mod:`nas.imx500` calls it, see :func:`nas.imx500.worker_command`)::

    PYTHONPATH=<a folder holding only nas> python -m nas.imx500_worker JOB.json

``JOB.json``: ``{"spec": "<spec string>", "weights": "weights.npz", "representative": "rep.npy",
"check_inputs": "check.npy", "out_dir": "DIR"}``. Writes ``DIR/model.keras``, ``DIR/float_outputs.npy``,
``DIR/mct_outputs.npy`` and, last, ``DIR/worker.json`` (versions, timings, layer counts). Exit 0 on success;
on failure a one-line reason on stderr and exit 1.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

# Our package sets TF_USE_LEGACY_KERAS=1 for tf_keras; TF 2.15 has Keras 2 built in and no tf_keras here.
os.environ["TF_USE_LEGACY_KERAS"] = "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from nas import topology
from nas.formatting import first_line
from nas.spec import ArchSpec, parse_spec_string

WORKER_FILE = "worker.json"


# --------------------------------------------------------------------------------------------- rebuild
# nas.topology walks the spec (layer for layer, name for name, as nas.tf.builder); these are its layers here.
# Our own HardSwish / HardSigmoid / SEMultiply / Scale layers become the forms MCT's IMX500 target knows:
# ReLU(6) between tf.add / tf.multiply (exactly how keras.applications.MobileNetV3 writes hard-sigmoid), and
# Keras Multiply. The head's Dropout is left out: it is the identity at inference and holds no weights.


def _hard_sigmoid(x, name: str):
    """relu6(x + 3) / 6. The constants are numpy arrays, not Python floats: MCT folds an add-constant that
    follows a convolution into its bias and can only read the constant when it is an array."""
    import tensorflow as tf

    x = tf.add(x, np.array(3.0, dtype=np.float32), name=f"{name}_add3")
    x = tf.keras.layers.ReLU(6.0, name=f"{name}_relu6")(x)
    return tf.multiply(x, np.array(1.0 / 6.0, dtype=np.float32), name=f"{name}_div6")


def _hard_swish(x, name: str):
    import tensorflow as tf

    return tf.keras.layers.Multiply(name=f"{name}_mul")([x, _hard_sigmoid(x, f"{name}_gate")])


def _multiply(x, gate, name: str):
    import tensorflow as tf

    return tf.keras.layers.Multiply(name=name)([x, gate])


def _scale(x, factor: float, name: str):
    import tensorflow as tf

    return tf.multiply(x, np.array(factor, dtype=np.float32), name=name)


def build(spec: ArchSpec):
    """The float Keras 2.15 model of ``spec``, with nas.tf.builder's layer names (weights load by name)."""
    import tensorflow as tf  # here, not at the top: the module imports without TensorFlow (tests check that)

    layers = topology.keras_layers(tf.keras, hard_swish=_hard_swish, hard_sigmoid=_hard_sigmoid,
                                   multiply=_multiply, dropout=lambda x, _rate, _name: x, scale=_scale)
    return topology.build(spec, layers)


def load_weights(model, weights: dict[str, np.ndarray]) -> int:
    """Set every weight of ``model`` from ``weights`` keyed ``"<layer>/<attr>"``; returns how many were set.

    Every weight must be set (:func:`nas.topology.set_weights`) and every one in the file used: either gap
    means the file is not this spec's, and a half-loaded model would convert fine and give garbage on the chip.
    """
    used = topology.set_weights(model, weights, "the weights file")
    unused = set(weights) - set(used)
    if unused:
        raise ValueError(f"weights not used by the rebuilt model: {sorted(unused)[:5]}")
    return len(used)


# --------------------------------------------------------------------------------------------- MCT


def _representative(data: np.ndarray, batch: int = 16) -> Callable[[], Iterator[list[np.ndarray]]]:
    """MCT's representative-data callable: yields lists of input batches."""

    def gen() -> Iterator[list[np.ndarray]]:
        for start in range(0, len(data), batch):
            yield [data[start:start + batch].astype(np.float32)]

    return gen


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for pkg in ("tensorflow", "model-compression-toolkit", "mct-quantizers", "imx500-converter", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Rebuild, load weights, quantize with MCT for the IMX500 and export ``model.keras``."""
    out = Path(job["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    import model_compression_toolkit as mct

    timings["import"] = time.perf_counter() - t0
    spec = parse_spec_string(job["spec"])
    t0 = time.perf_counter()
    model = build(spec)
    with np.load(job["weights"]) as npz:
        n_weights = load_weights(model, {k: npz[k] for k in npz.files})
    check = np.load(job["check_inputs"]).astype(np.float32)
    np.save(out / "float_outputs.npy", model.predict(check, verbose=0))
    timings["rebuild"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tpc = mct.get_target_platform_capabilities("tensorflow", "imx500")
    rep = np.load(job["representative"]).astype(np.float32)
    quantized, _ = mct.ptq.keras_post_training_quantization(model, _representative(rep),
                                                             target_platform_capabilities=tpc)
    timings["mct_ptq"] = time.perf_counter() - t0
    np.save(out / "mct_outputs.npy", quantized.predict(check, verbose=0))
    t0 = time.perf_counter()
    path = out / "model.keras"
    mct.exporter.keras_export_model(model=quantized, save_model_path=str(path))
    timings["mct_export"] = time.perf_counter() - t0
    return {"model": str(path), "layers": len(model.layers), "weights_loaded": n_weights,
            "representative_samples": int(len(rep)), "versions": _versions(),
            "timings": {k: round(v, 3) for k, v in timings.items()}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m nas.imx500_worker JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    try:
        result = run(job)
    except Exception as e:  # noqa: BLE001 - the bridge shows one line; the traceback goes to the log file
        import traceback

        traceback.print_exc()
        print(f"imx500 worker failed: {first_line(e, with_type=True)}", file=sys.stderr)
        return 1
    (Path(job["out_dir"]) / WORKER_FILE).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
