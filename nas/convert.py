"""Full-integer TFLite conversion and evaluation *as INT8*.

Every figure a user sees for a candidate is the figure of the INT8 model the chip will run, so the
converted model is evaluated with TFLite's reference kernels (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``),
which match microcontroller runtimes (STACK.md), not the float Keras model.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable

import nas  # noqa: F401

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)


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
    flat = converter.convert()
    log.info("INT8 conversion (%s): %.1f s, %d bytes", via, time.perf_counter() - t0, len(flat))
    return flat


def interpreter(tflite: bytes) -> tf.lite.Interpreter:
    """A TFLite interpreter with reference kernels, as a microcontroller runs the model."""
    it = tf.lite.Interpreter(
        model_content=tflite,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    it.allocate_tensors()
    return it


def quantize_input(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)


def predict_int8(tflite: bytes, x: np.ndarray) -> np.ndarray:
    """Run the INT8 model on float inputs ``x`` (quantized with the model's own input parameters) and
    return de-quantized float outputs."""
    it = interpreter(tflite)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    in_scale, in_zp = inp["quantization"]
    out_scale, out_zp = out["quantization"]
    results = []
    for i in range(len(x)):
        it.set_tensor(inp["index"], quantize_input(x[i : i + 1], in_scale, in_zp))
        it.invoke()
        raw = it.get_tensor(out["index"]).astype(np.float32)
        results.append((raw - out_zp) * out_scale if out_scale else raw)
    return np.concatenate(results, axis=0)
