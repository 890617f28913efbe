"""Runs INSIDE the IMX500 converter's own virtual environment (TensorFlow 2.15 + Sony's MCT), never in ours.

Why a separate script: ``imx500-converter`` 3.19 needs TensorFlow 2.14-2.15, numpy < 2 and
``model-compression-toolkit`` 2.5 (STACK.md), which cannot live next to our TensorFlow 2.21 / ``tf_keras`` /
tfmot. The converter only accepts models exported by MCT, so the trained network is rebuilt here from its
spec with plain Keras 2.15 layers, its float weights are loaded by layer name (``nas.tf.builder`` names layers
by block position, so the names match), MCT quantizes it for the IMX500 with a representative set we pass
in, and exports ``model.keras`` for ``imxconv-tf``.

This file imports only the standard library, numpy, TensorFlow, MCT and ``nas.spec`` (pure Python: it
pulls in nothing but ``nas.errors``). It must not import ``nas.tf.builder``, ``tf_keras`` or tfmot.

Usage (the bridge in :mod:`nas.imx500` calls it)::

    python imx500_worker.py JOB.json

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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from nas.spec import ArchSpec, Block, make_divisible, parse_spec_string  # noqa: E402

WORKER_FILE = "worker.json"


# --------------------------------------------------------------------------------------------- rebuild
# Mirrors nas.tf.builder.build layer for layer and name for name. Our own HardSwish / HardSigmoid / SEMultiply
# / Scale layers become the forms MCT's IMX500 target knows: ReLU(6) between tf.add / tf.multiply
# (exactly how keras.applications.MobileNetV3 writes hard-sigmoid), and Keras Multiply. The head's Dropout
# is left out: it is the identity at inference and holds no weights.


def _layers():
    import tensorflow as tf

    return tf, tf.keras.layers


def _hard_sigmoid(x, name: str):
    """relu6(x + 3) / 6. The constants are numpy arrays, not Python floats: MCT folds an add-constant that
    follows a convolution into its bias and can only read the constant when it is an array."""
    tf, L = _layers()
    x = tf.add(x, np.array(3.0, dtype=np.float32), name=f"{name}_add3")
    x = L.ReLU(6.0, name=f"{name}_relu6")(x)
    return tf.multiply(x, np.array(1.0 / 6.0, dtype=np.float32), name=f"{name}_div6")


def _hard_swish(x, name: str):
    _, L = _layers()
    return L.Multiply(name=f"{name}_mul")([x, _hard_sigmoid(x, f"{name}_gate")])


def _act(x, act: str, name: str):
    _, L = _layers()
    if act == "relu":
        return L.ReLU(name=f"{name}_relu")(x)
    if act == "relu6":
        return L.ReLU(6.0, name=f"{name}_relu6")(x)
    return _hard_swish(x, f"{name}_hswish")


def _conv_bn(x, filters: int, kernel: int, stride: int, act: str | None, name: str):
    _, L = _layers()
    x = L.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = L.BatchNormalization(momentum=0.9, epsilon=1e-3, name=f"{name}_bn")(x)
    return _act(x, act, name) if act else x


def _dw_bn(x, kernel: int, stride: int, act: str, name: str):
    _, L = _layers()
    x = L.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = L.BatchNormalization(momentum=0.9, epsilon=1e-3, name=f"{name}_dwbn")(x)
    return _act(x, act, f"{name}_dw")


def _squeeze_excite(x, channels: int, ratio: float, name: str):
    _, L = _layers()
    squeeze = make_divisible(channels * ratio)
    s = L.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    s = L.Conv2D(squeeze, 1, name=f"{name}_se_reduce")(s)
    s = L.ReLU(name=f"{name}_se_relu")(s)
    s = L.Conv2D(channels, 1, name=f"{name}_se_expand")(s)
    s = _hard_sigmoid(s, f"{name}_se_gate")
    return L.Multiply(name=f"{name}_se_mul")([x, s])


def _block(x, spec: ArchSpec, block: Block, in_ch: int, stride: int, name: str):
    _, L = _layers()
    out = spec.channels_of(block)
    if block.kind == "cn":
        return _conv_bn(x, out, block.kernel, stride, block.act, name)
    if block.kind == "ds":
        x = _dw_bn(x, block.kernel, stride, block.act, name)
        if block.se:
            x = _squeeze_excite(x, in_ch, block.se, name)
        return _conv_bn(x, out, 1, 1, block.act, f"{name}_pw")
    shortcut = x
    expanded = make_divisible(in_ch * block.expansion)
    if expanded != in_ch:
        x = _conv_bn(x, expanded, 1, 1, block.act, f"{name}_expand")
    x = _dw_bn(x, block.kernel, stride, block.act, name)
    if block.se:
        x = _squeeze_excite(x, expanded, block.se, name)
    x = _conv_bn(x, out, 1, 1, None, f"{name}_project")
    if stride == 1 and in_ch == out:
        x = L.Add(name=f"{name}_add")([shortcut, x])
    return x


def build(spec: ArchSpec):
    """The float Keras 2.15 model of ``spec``, with nas.tf.builder's layer names (weights load by name)."""
    tf, L = _layers()
    inputs = tf.keras.Input((spec.resolution, spec.resolution, spec.input_channels), name="input")
    x = inputs
    head = spec.head
    if head.kind == "gaze" and head.grid_channels:
        x = L.Conv2D(spec.channels, 1, name="grid_fuse")(x)
    in_ch = spec.channels
    for i, block in enumerate(spec.blocks):
        for r in range(block.repeats):
            x = _block(x, spec, block, in_ch, block.stride if r == 0 else 1, f"b{i}_{r}")
            in_ch = spec.channels_of(block)
    if head.kind == "classifier":
        x = L.GlobalAveragePooling2D(name="head_pool")(x)
        if head.hidden:
            x = L.Dense(head.hidden, name="head_hidden")(x)
            x = _act(x, head.act, "head_hidden")
        x = L.Dense(head.classes, name="head_logits")(x)
        outputs = L.Softmax(name="head_softmax")(x)
    else:
        x = L.Conv2D(head.conv_channels, 1, name="head_conv")(x)
        x = _act(x, head.act, "head_conv")
        x = L.Flatten(name="head_flatten")(x)
        if head.hidden:
            x = L.Dense(head.hidden, name="head_hidden")(x)
            x = _act(x, head.act, "head_hidden")
        x = L.Dense(2, name="head_gaze")(x)
        x = L.Activation("tanh", name="head_tanh")(x)
        outputs = tf.multiply(x, np.array(head.output_scale, dtype=np.float32), name="head_cm")
    return tf.keras.Model(inputs, outputs, name="tinynas")


def load_weights(model, weights: dict[str, np.ndarray]) -> int:
    """Set every weight of ``model`` from ``weights`` keyed ``"<layer>/<attr>"``; returns how many were set.

    Fails loudly on a missing key or a shape mismatch: a silently half-loaded model would convert fine and
    give garbage on the chip.
    """
    n = 0
    for layer in model.layers:
        if not layer.weights:
            continue
        values = []
        for w in layer.weights:
            key = f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}"
            if key not in weights:
                raise KeyError(f"no weight '{key}' in the weights file")
            if tuple(weights[key].shape) != tuple(w.shape):
                raise ValueError(f"weight '{key}' has shape {weights[key].shape}, the rebuilt layer wants {tuple(w.shape)}")
            values.append(weights[key])
        layer.set_weights(values)
        n += len(values)
    unused = set(weights) - {f"{l.name}/{w.name.split('/')[-1].split(':')[0]}" for l in model.layers for w in l.weights}
    if unused:
        raise ValueError(f"weights not used by the rebuilt model: {sorted(unused)[:5]}")
    return n


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
        print("usage: imx500_worker.py JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    try:
        result = run(job)
    except Exception as e:  # noqa: BLE001 - the bridge shows one line; the traceback goes to the log file
        import traceback

        traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"imx500 worker failed: {type(e).__name__}: {first}", file=sys.stderr)
        return 1
    (Path(job["out_dir"]) / WORKER_FILE).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
