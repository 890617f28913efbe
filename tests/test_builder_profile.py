"""Builder + profiler against the real thing: QAT wrap, full-INT8 conversion, TFLite Micro arena.

Every spec here goes through tfmot's quantize_apply and TFLite's INT8 converter, and its analytic
profile is held against the converted graph and the arena the real TFLM interpreter allocates.
"""
import random
import time

import numpy as np
import pytest

import nas  # noqa: F401
import tensorflow as tf

from nas import profile, tflm
from nas.tf import convert
from nas.spec import preset
from nas.testing import random_spec


def converted_ops(tflite: bytes) -> list[tuple[str, tuple[int, ...]]]:
    it = tf.lite.Interpreter(model_content=tflite)
    details = {t["index"]: t for t in it.get_tensor_details()}
    return [(op["op_name"], tuple(int(v) for v in details[op["outputs"][0]]["shape"][1:]))
            for op in it._get_ops_details()]


def check_against_truth(spec) -> dict:
    est = profile.estimate(spec)
    flat = convert.untrained_int8(spec)
    it = tf.lite.Interpreter(model_content=flat)
    assert it.get_input_details()[0]["dtype"] == np.int8
    assert it.get_output_details()[0]["dtype"] == np.int8
    ops, _, _, _ = profile.graph(spec)
    assert converted_ops(flat) == [(op.kind, op.shape) for op in ops], spec.to_string()
    measured = tflm.measure_tflm(flat).arena_bytes
    sram_err = abs(est.peak_sram_bytes - measured) / measured
    flash_err = abs(est.flash_bytes - len(flat)) / len(flat)
    assert sram_err < 0.10, (spec.to_string(), est.peak_sram_bytes, measured)
    assert flash_err < 0.10, (spec.to_string(), est.flash_bytes, len(flat))
    return {"sram_err": sram_err, "flash_err": flash_err}


@pytest.mark.parametrize("spec", [
    preset("mobilenetv1-vww"),
    preset("tinytracker"),
    preset("mobilenetv3-small").replace(resolution=96, width=0.35, classes=2),
    preset("mobilenetv3-large-minimalistic").replace(resolution=64, width=0.35, classes=10),
], ids=["mobilenetv1-vww", "tinytracker", "mnv3-small-96-0.35", "mnv3-large-min-64-0.35"])
def test_presets_estimate_within_10_percent_of_tflm(spec):
    check_against_truth(spec)


def test_random_specs_build_quantize_convert_and_profile():
    """12 random specs over every option (ds / ir, k3/5/7, SE, relu / relu6 / hard-swish, both heads); the 60-spec
    measurement is bench/fidelity.py (its quick mode is tests/test_bench_fidelity.py)."""
    rng = random.Random(2026)
    errors = []
    for _ in range(12):
        errors.append(check_against_truth(random_spec(rng, max_resolution=64, small=True)))
    worst = max(e["sram_err"] for e in errors)
    assert worst < 0.10


def test_estimate_is_fast():
    spec = preset("mobilenetv3-large")
    t0 = time.perf_counter()
    for _ in range(10):
        profile.estimate(spec)
    assert (time.perf_counter() - t0) / 10 < 0.25


def test_per_layer_memory_marks_the_peak():
    prof = profile.estimate(preset("mobilenetv1-vww"))
    live = [layer.live_bytes for layer in prof.layers]
    assert prof.layers[prof.peak_layer].live_bytes == max(live)
    assert prof.activation_bytes >= max(live)  # the planner can leave gaps, never overlap live tensors
