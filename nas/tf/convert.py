"""Full-integer TFLite conversion and evaluation *as INT8*.

Every figure a user sees for a candidate is the figure of the INT8 model the chip will run, so the
converted model is evaluated with TFLite's reference kernels (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``),
which match microcontroller runtimes (STACK.md), not the float Keras model.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import tensorflow as tf
import tf_keras as keras

from nas import data as data_mod
from nas import profile
from nas.errors import UserError
from nas.formatting import first_line
from nas.metrics import metric_for, metric_interval, metric_value
from nas.spec import ArchSpec
from nas.tf import builder, pipeline

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected.*")


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """The converter's C++ side prints to file descriptor 1; keep stdout clean for ``--json`` output."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def to_int8(model, representative: np.ndarray, *, samples: int = 100, via: str = "frozen") -> bytes:
    """Convert a (QAT or float) Keras model to a full-integer TFLite flatbuffer, int8 in and out.

    ``representative`` holds inputs as the model sees them (float, [0, 1]); only ``samples`` of them are
    used: a QAT model already carries its ranges, the set only calibrates what QAT left open.

    ``via="frozen"`` (default) traces the model once, folds its variables into constants and converts that
    graph. ``via="keras"`` is TensorFlow's ``from_keras_model``, which first exports the whole Keras object
    as a SavedModel, tracing every layer's call function: about 30 s of a 32 s conversion of a
    MobileNetV3-Small 0.35 (bench/convert_time.py measures both). Both give the same operators.
    """
    rep = np.asarray(representative[:samples], dtype=np.float32)

    def gen() -> Iterable[list[np.ndarray]]:
        for i in range(len(rep)):
            yield [rep[i : i + 1]]

    if via == "frozen":
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        shape = [1, *model.input_shape[1:]]
        fn = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec(shape, tf.float32)])
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [convert_variables_to_constants_v2(fn.get_concrete_function())])
    elif via == "keras":
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    else:
        raise ValueError(f"via must be 'frozen' or 'keras', got {via!r}")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = gen
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    t0 = time.perf_counter()
    with _stdout_to_stderr():
        flat = converter.convert()
    flat = strip_names(flat)
    log.info("INT8 conversion (%s): %.1f s, %d bytes", via, time.perf_counter() - t0, len(flat))
    return flat


def strip_names(tflite: bytes) -> bytes:
    """Drop tensor and signature name strings from a flatbuffer.

    TFLite Micro never reads them, yet the converter's names (chains of fused TensorFlow op names, 30-160
    bytes per tensor) are 3-17% of a small model's flash. Inputs and outputs are addressed by index, the
    graph, weights and quantization are untouched, and outputs and the TFLM arena stay identical
    (tests/test_train.py checks this).
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    flatbuffer_utils.strip_strings(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def quantize_input(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)


def predict_int8(tflite: bytes, x: np.ndarray | Iterable[np.ndarray], *, batch: int = 64) -> np.ndarray:
    """Run the INT8 model on float inputs ``x`` (quantized with the model's own input parameters) and
    return de-quantized float outputs. Inputs go through in batches (the interpreter is resized once per
    batch size), which keeps evaluation of a few thousand images to seconds. ``x`` is one array, or an
    iterable of arrays (:func:`nas.tf.pipeline.arrays`: a split streamed from its store, one interpreter)."""
    it = tf.lite.Interpreter(
        model_content=tflite,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    in_scale, in_zp = inp["quantization"]
    out_scale, out_zp = out["quantization"]
    results = []
    size = None
    parts = (x,) if isinstance(x, np.ndarray) else x
    for chunk in (part[s : s + batch] for part in parts for s in range(0, len(part), batch)):
        if len(chunk) != size:
            size = len(chunk)
            it.resize_tensor_input(inp["index"], [size, *inp["shape"][1:]])
            it.allocate_tensors()
        it.set_tensor(inp["index"], quantize_input(chunk, in_scale, in_zp))
        it.invoke()
        raw = it.get_tensor(out["index"]).astype(np.float32)
        results.append((raw - out_zp) * out_scale if out_scale else raw)
    return np.concatenate(results, axis=0)


def input_quantization(tflite: bytes) -> dict[str, Any]:
    """Scale, zero point, shape and dtype of the model's input: what firmware needs to feed it."""
    it = tf.lite.Interpreter(model_content=tflite)
    d = it.get_input_details()[0]
    return {"scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1]),
            "shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name}


#: Input conventions of image models, as float pixel ranges: ours ([0, 1]), MobileNet-style ([-1, 1]) and raw
#: pixels ([0, 255], e.g. the MLPerf Tiny IC ResNet-8: scale 1.0, zero point -128, shared/models/README.md).
INPUT_RANGES: dict[str, tuple[float, float]] = {"0-1": (0.0, 1.0), "-1-1": (-1.0, 1.0), "0-255": (0.0, 255.0)}


def expected_input_range(scale: float, zero_point: int) -> str:
    """The convention whose float range is nearest to what the int8 input can represent,
    ``[(-128 - zp) * scale, (127 - zp) * scale]``: a model quantized for raw pixels cannot be fed [0, 1]."""
    lo, hi = (-128 - zero_point) * scale, (127 - zero_point) * scale
    return min(INPUT_RANGES, key=lambda k: abs(INPUT_RANGES[k][0] - lo) + abs(INPUT_RANGES[k][1] - hi))


def evaluate_file(model: str, dataset: str, *, split: str = "test", seed: int = 0,
                  input_range: str = "auto") -> dict:
    """Evaluate an INT8 ``.tflite`` (or a folder holding ``model_int8.tflite``) on a data set.

    The input tensor tells the resolution and channel count; for gaze data the last channels are the
    data set's face-grid embedding. Images are [0, 1] floats mapped to the model's pixel convention
    (``input_range``: one of :data:`INPUT_RANGES`, or ``auto`` from its input quantization).
    """
    path = Path(model)
    if path.is_dir():
        path = path / "model_int8.tflite"
    if not path.is_file():
        raise UserError(model, "", "an INT8 .tflite file or a folder holding model_int8.tflite")
    flat = path.read_bytes()
    try:
        q = input_quantization(flat)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        raise UserError(str(path), "", f"a valid .tflite model ({first_line(e)})") from None
    if q["dtype"] != "int8":
        raise UserError(str(path), "input", f"a full-integer model with int8 input, got {q['dtype']}")
    if input_range != "auto" and input_range not in INPUT_RANGES:
        raise UserError("--input-range", "", f"auto or one of {', '.join(INPUT_RANGES)}, got '{input_range}'")
    rng = expected_input_range(q["scale"], q["zero_point"]) if input_range == "auto" else input_range
    _, h, w, c = q["shape"]
    ds = data_mod.load(dataset, seed=seed)
    grid = ds.grid_channels
    splits = ds.splits if split == "all" else {split: ds.splits[split]}
    y = np.concatenate([s.y for s in splits.values()])
    lo, hi = INPUT_RANGES[rng]

    def batches() -> Iterator[np.ndarray]:
        """Each split streamed from its store, in the model's input range (image channels only, never the grid)."""
        for s in splits.values():
            for xb in pipeline.arrays(s, h, c - grid, grid):
                if (lo, hi) != (0.0, 1.0):
                    xb[..., : c - grid] = lo + xb[..., : c - grid] * (hi - lo)
                yield xb

    pred = predict_int8(flat, batches())
    if ds.task == "classification" and pred.shape[-1] != ds.num_classes:
        raise UserError(str(path), "output", f"{ds.num_classes} classes for data set '{ds.name}', the model has "
                        f"{pred.shape[-1]} outputs")
    name, higher = metric_for(ds.task)
    return {"model": str(path), "dataset": dataset, "split": split, "samples": int(len(y)), "metric_name": name,
            "higher_is_better": higher, "int8_metric": metric_value(ds.task, y, pred),
            "int8_interval": list(metric_interval(ds.task, y, pred)), "input_range": rng}


def untrained_int8(spec: ArchSpec, seed: int = 0, samples: int = 8) -> bytes:
    """INT8 conversion of an untrained QAT model, enough for memory: memory depends on the graph, not on
    the weights' values. Biases and batch-norm statistics are randomised first: at initialisation they are
    all zero, and the converter drops zero dense biases and shares identical zero buffers, which would make
    the file smaller than a trained candidate's (by 0.1-9.4% over 60 random specs, bench/fidelity.py). With
    random values the file matches one after real training steps, byte for byte."""
    keras.utils.set_random_seed(seed)
    model = builder.build_qat(spec)
    rng = np.random.default_rng(seed)
    for v in model.weights:
        leaf = v.name.rsplit("/", 1)[-1]
        if leaf in ("bias:0", "beta:0", "moving_mean:0"):
            v.assign(rng.normal(0.0, 0.1, v.shape).astype(np.float32))
        elif leaf in ("gamma:0", "moving_variance:0"):
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
    x = rng.random((samples, spec.resolution, spec.resolution, spec.input_channels), dtype=np.float32)
    model(x, training=True)  # one step so the activation quantizers hold real ranges
    return to_int8(model, x, samples=samples)


def measure_spec(spec: ArchSpec, seed: int = 0) -> profile.Measured:
    """The exact memory of ``spec``'s untrained INT8 model (see :func:`untrained_int8`)."""
    return profile.measure(untrained_int8(spec, seed))
