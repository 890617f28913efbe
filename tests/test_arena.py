"""Arena memory: the greedy-planner emulation, the tail model and the real TFLM measurement.

The holdout models are read in place from ``../shared/holdout/models``; small generated models are
built with tf_keras and converted to full-int8 TFLite once per test session (a few seconds). Every
figure is checked against TensorFlow Lite Micro's host interpreter, the ground truth.
"""
from __future__ import annotations

import logging
import os
import statistics
from pathlib import Path

import pytest

import nas  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

from nas.arena import (
    Buffer,
    TailFeatures,
    buffers_from_tflite,
    estimate_arena,
    estimate_tail,
    naive_peak,
    plan_arena,
    plan_offsets,
    read_graph,
)
from nas.tflm import ArenaMeasurement, ArenaProber, fits, measure_tflm
from tests.shared import SHARED, require

log = logging.getLogger(__name__)

HOLDOUT = SHARED / "holdout" / "models"
HOLDOUT_NAMES = [
    "mlperf_vww_96_int8.tflite",
    "tflm_person_detect.tflite",
    "tinytracker_TinyTracker.tflite",
    "tinytracker_TinyTrackerS.tflite",
]
VWW = HOLDOUT / "mlperf_vww_96_int8.tflite"
#: A model on which tflite_micro segfaults for some too-small arenas (shared/bugs/README.md).
SEGFAULT_MODEL = SHARED / "bugs" / "tflm_segfault_small_arena.tflite"


@pytest.fixture
def holdout_present() -> None:
    """Fail (never skip) a test whose holdout models are missing: CI has them (tests/shared.py)."""
    for name in HOLDOUT_NAMES:
        require(HOLDOUT / name)


needs_holdout = pytest.mark.usefixtures("holdout_present")

#: Tail-model tolerance. The brief asks for ~10 %; the calibrated model is within 0.4 % on every
#: model seen, so 2 % still leaves room for a tflite_micro update before the constants need a refit.
TAIL_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def holdout_measurements() -> dict[str, ArenaMeasurement]:
    return {name: measure_tflm(require(HOLDOUT / name)) for name in HOLDOUT_NAMES}


# ---------------------------------------------------------------------------------------------------
# Planner rules on hand-made buffers
# ---------------------------------------------------------------------------------------------------


def test_empty_and_alignment() -> None:
    assert plan_arena([]) == 0
    assert plan_arena([Buffer(size=10, first_use=0, last_use=1, tensor_index=0)]) == 16
    assert plan_arena([Buffer(size=16, first_use=0, last_use=1, tensor_index=0)]) == 16


def test_overlapping_buffers_stack_and_disjoint_ones_share() -> None:
    a = Buffer(100, 0, 1, 0)
    b = Buffer(50, 1, 2, 1)  # alive with a at scope 1
    c = Buffer(50, 2, 3, 2)  # not alive with a
    assert plan_arena([a, b]) == 112 + 64
    assert plan_arena([a, c]) == 112


def test_small_buffer_reuses_gap() -> None:
    a = Buffer(64, 0, 1, 0)
    b = Buffer(64, 1, 2, 1)
    c = Buffer(32, 2, 3, 2)  # overlaps only b, so it fits below b where a was
    offsets = plan_offsets([a, b, c])
    assert offsets[:2] == [0, 64] or offsets[:2] == [64, 0]
    assert plan_arena([a, b, c]) == 128


def test_equal_sizes_highest_tensor_index_first() -> None:
    lo = Buffer(64, 0, 1, tensor_index=3)
    hi = Buffer(64, 0, 1, tensor_index=7)
    assert plan_offsets([lo, hi]) == [64, 0]


# ---------------------------------------------------------------------------------------------------
# Head: exact on the holdout models
# ---------------------------------------------------------------------------------------------------


@needs_holdout
@pytest.mark.parametrize("name", HOLDOUT_NAMES)
def test_holdout_head_is_exact(name: str, holdout_measurements: dict[str, ArenaMeasurement]) -> None:
    buffers = buffers_from_tflite(HOLDOUT / name)
    assert plan_arena(buffers) == holdout_measurements[name].head_bytes


@needs_holdout
def test_vww_figures_from_stack_notes(holdout_measurements: dict[str, ArenaMeasurement]) -> None:
    m = holdout_measurements["mlperf_vww_96_int8.tflite"]
    assert (m.arena_bytes, m.head_bytes, m.tail_bytes) == (103_680, 73_728, 29_952)
    buffers = buffers_from_tflite(VWW.read_bytes())
    assert naive_peak(buffers) == 55_296  # the naive estimate undershoots: the planner leaves gaps
    # The tie-break matters: taking equal sizes lowest tensor index first gives 64,512 B.
    flipped = [Buffer(b.size, b.first_use, b.last_use, -b.tensor_index) for b in buffers]
    assert plan_arena(flipped) == 64_512


@needs_holdout
def test_vww_lifetimes_follow_tflm_scopes() -> None:
    graph = read_graph(VWW.read_bytes())
    buffers = {b.tensor_index: b for b in buffers_from_tflite(VWW)}
    n_ops = len(graph.main.ops)
    (inp,), (out,) = graph.main.inputs, graph.main.outputs
    assert (buffers[inp].first_use, buffers[inp].last_use) == (0, 1)  # read by op 0 (scope 1)
    assert (buffers[out].first_use, buffers[out].last_use) == (n_ops, n_ops)
    first_out = graph.main.ops[0].outputs[0]
    assert (buffers[first_out].first_use, buffers[first_out].last_use) == (1, 2)
    assert len(buffers) == 32  # 89 tensors, 57 of them constants


@needs_holdout
@pytest.mark.parametrize("name", HOLDOUT_NAMES)
def test_offsets_never_collide(name: str) -> None:
    buffers = buffers_from_tflite(HOLDOUT / name)
    offsets = plan_offsets(buffers)
    for i, (a, oa) in enumerate(zip(buffers, offsets)):
        for b, ob in zip(buffers[i + 1:], offsets[i + 1:]):
            if a.first_use <= b.last_use and b.first_use <= a.last_use:
                assert oa + a.aligned_size <= ob or ob + b.aligned_size <= oa
    assert max(o + b.aligned_size for o, b in zip(offsets, buffers)) == plan_arena(buffers)


# ---------------------------------------------------------------------------------------------------
# Tail and total on the holdout models
# ---------------------------------------------------------------------------------------------------


@needs_holdout
@pytest.mark.parametrize("name", HOLDOUT_NAMES)
def test_holdout_tail_and_total(name: str, holdout_measurements: dict[str, ArenaMeasurement]) -> None:
    m = holdout_measurements[name]
    tail = estimate_tail(HOLDOUT / name)
    total = estimate_arena(HOLDOUT / name)
    log.info("%s: tail %d vs %d, total %d vs %d", name, tail, m.tail_bytes, total, m.arena_bytes)
    assert abs(tail - m.tail_bytes) <= TAIL_TOLERANCE * m.tail_bytes
    assert abs(total - m.arena_bytes) <= 0.10 * m.arena_bytes
    assert abs(total - m.arena_bytes) <= 0.01 * m.arena_bytes


@needs_holdout
def test_tail_from_spec_like_features() -> None:
    """A profiler that only knows counts (no .tflite) gets the same tail as the model itself."""
    graph = read_graph(VWW.read_bytes())
    exact = TailFeatures.from_graph(graph)
    spec_like = TailFeatures(
        n_tensors=exact.n_tensors,
        n_ops=exact.n_ops,
        op_counts=dict(exact.op_counts),
        n_conv_channels=sum(exact.channels),  # a total only
        n_io=2,
        n_quantized_io=2,
    )
    assert spec_like.n_conv_channels == 2736
    assert estimate_tail(spec_like) == estimate_tail(graph) == estimate_tail(exact)


# ---------------------------------------------------------------------------------------------------
# Measurement: minimum arena and broken files
# ---------------------------------------------------------------------------------------------------


@needs_holdout
def test_find_minimum_allocates_and_one_byte_less_does_not() -> None:
    m = measure_tflm(VWW, find_minimum=True)
    assert m.min_arena_bytes is not None
    assert m.head_bytes < m.min_arena_bytes <= m.arena_bytes
    assert fits(VWW, m.min_arena_bytes)
    assert not fits(VWW, m.min_arena_bytes - 1)


def test_arena_search_survives_tflm_segfault() -> None:
    """tflite_micro dies with SIGSEGV (no exception) on some too-small arenas of this model, e.g. 30,000 B
    (shared/bugs/README.md); ``nas export`` used to die with it. Probing in a child turns the crash into
    "does not fit": the search ends, in this process, on the true minimum."""
    require(SEGFAULT_MODEL)
    plain = measure_tflm(SEGFAULT_MODEL)  # the generous arena, in-process: must not crash either
    m = measure_tflm(SEGFAULT_MODEL, find_minimum=True)
    log.info("%s: minimum arena %d B (head %d, total %d)", SEGFAULT_MODEL.name, m.min_arena_bytes,
             m.head_bytes, m.arena_bytes)
    assert (m.arena_bytes, m.head_bytes, m.tail_bytes) == (plain.arena_bytes, plain.head_bytes, plain.tail_bytes)
    assert m.min_arena_bytes == 40_936, m.min_arena_bytes  # tflite-micro 0.dev20261023: total 40,944 B, head 9,216 B
    assert fits(SEGFAULT_MODEL, m.min_arena_bytes)
    assert not fits(SEGFAULT_MODEL, m.min_arena_bytes - 1)
    with ArenaProber(SEGFAULT_MODEL.read_bytes(), n_inputs=1) as prober:
        # 30,000 B kills the interpreter (if a tflite-micro update fixes that, crashes is 0: drop this line)
        assert not prober.fits(30_000) and prober.crashes == 1
        assert prober.fits(m.min_arena_bytes)  # a fresh child answers after the crash


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.tflite"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="garbage.tflite"):
        measure_tflm(bad)
    with pytest.raises(ValueError, match="missing.tflite"):
        measure_tflm(tmp_path / "missing.tflite")


@needs_holdout
def test_truncated_and_tampered_files_are_clear_errors(tmp_path: Path) -> None:
    data = VWW.read_bytes()
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.tflite"):
        measure_tflm(truncated)

    # A structurally valid file TFLM refuses: the softmax output retyped to float32.
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))
    sg = model.subgraphs[0]
    sg.tensors[sg.outputs[0]].type = fb.TensorType.FLOAT32
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    tampered = tmp_path / "tampered.tflite"
    tampered.write_bytes(bytes(builder.Output()))
    with pytest.raises(RuntimeError, match="tampered.tflite.*SOFTMAX"):
        measure_tflm(tampered)


# ---------------------------------------------------------------------------------------------------
# Small generated models (not used to fit the tail constants)
# ---------------------------------------------------------------------------------------------------


def _to_int8(model, shape: tuple[int, ...], float_io: bool = False) -> bytes:
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def representative():
        for _ in range(4):
            yield [rng.uniform(-1, 1, (1, *shape)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if not float_io:
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


@pytest.fixture(scope="module")
def generated_models() -> dict[str, bytes]:
    """Four tiny nets covering the ops a search space produces; converted once (~1 s each)."""
    import tensorflow as tf  # a hard dependency: missing means a broken install, which must fail
    import tf_keras as keras
    L = keras.layers
    out: dict[str, bytes] = {}

    # MobileNetV1-like: separable blocks, global average pooling, softmax; int8 I/O.
    x = inp = keras.Input((40, 40, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    for c, s in ((16, 1), (24, 2), (24, 1)):
        x = L.DepthwiseConv2D(3, strides=s, padding="same", activation="relu")(x)
        x = L.Conv2D(c, 1, activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Softmax()(L.Dense(3)(x))
    out["mobilenet_v1"] = _to_int8(keras.Model(inp, x), (40, 40, 3))

    # MobileNetV3-like: inverted residual, hard-swish, squeeze-excite, float I/O.
    def hswish(t):
        return t * tf.nn.relu6(t + 3.0) / 6.0

    x = inp = keras.Input((32, 32, 1))
    x = L.Lambda(hswish)(L.Conv2D(16, 3, strides=2, padding="same")(x))
    y = L.Lambda(hswish)(L.Conv2D(48, 1)(x))
    y = L.DepthwiseConv2D(5, padding="same")(y)
    s = L.GlobalAveragePooling2D(keepdims=True)(y)
    s = L.Conv2D(12, 1, activation="relu")(s)
    s = L.Conv2D(48, 1, activation="hard_sigmoid")(s)
    y = L.Conv2D(16, 1)(L.Multiply()([y, s]))
    x = L.Add()([x, y])
    x = L.Flatten()(L.AveragePooling2D(4)(x))
    x = L.Dense(2, activation="tanh")(L.Dense(20, activation="relu")(x))
    out["mobilenet_v3_se"] = _to_int8(keras.Model(inp, x), (32, 32, 1), float_io=True)

    # Pooling and concatenation with odd channel counts (per-channel arrays not multiples of 16 B).
    x = inp = keras.Input((24, 24, 2))
    x = L.Conv2D(10, 3, padding="same", activation="relu")(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Concatenate()([x, L.Conv2D(7, 1)(x), L.Conv2D(5, 3, padding="same")(x)])
    x = L.DepthwiseConv2D(3, strides=2, padding="valid", activation="relu")(L.ZeroPadding2D(1)(x))
    x = L.Dense(5)(L.Flatten()(x))
    out["pool_concat"] = _to_int8(keras.Model(inp, x), (24, 24, 2))

    # MEAN at the memory peak: its scratch buffers decide the head.
    x = inp = keras.Input((32, 32, 16))
    x = L.Lambda(lambda t: tf.reduce_mean(t, axis=1))(x)
    x = L.Dense(2)(L.Flatten()(x))
    out["mean_peak"] = _to_int8(keras.Model(inp, x), (32, 32, 16))
    return out


def test_generated_models(generated_models: dict[str, bytes]) -> None:
    tail_errors, total_errors = [], []
    for name, data in generated_models.items():
        m = measure_tflm(data)
        buffers = buffers_from_tflite(data)
        assert plan_arena(buffers) == m.head_bytes, name
        tail = estimate_tail(data)
        total = estimate_arena(data)
        tail_errors.append(abs(tail - m.tail_bytes) / m.tail_bytes)
        total_errors.append(abs(total - m.arena_bytes) / m.arena_bytes)
        log.info("%s: head %d, tail %d vs %d, total %d vs %d", name, m.head_bytes, tail, m.tail_bytes,
                 total, m.arena_bytes)
    log.info("tail error: median %.3f%%, max %.3f%%", 100 * statistics.median(tail_errors),
             100 * max(tail_errors))
    assert max(tail_errors) <= TAIL_TOLERANCE, tail_errors
    assert max(total_errors) <= 0.10, total_errors


def test_mean_scratch_buffers_are_part_of_the_head(generated_models: dict[str, bytes]) -> None:
    data = generated_models["mean_peak"]
    buffers = buffers_from_tflite(data)
    scratch = [b for b in buffers if b.name.startswith("scratch")]
    assert [b.size for b in scratch] == [32 * 16 * 4, 4 * 4, 4 * 1]
    without = plan_arena([b for b in buffers if not b.name.startswith("scratch")])
    assert without < plan_arena(buffers) == measure_tflm(data).head_bytes


def test_missing_shared_file_is_a_failure_that_says_where(tmp_path: Path) -> None:
    """Data from shared/ is never skipped over: its absence fails the test and names the file."""
    with pytest.raises(pytest.fail.Exception, match=f"missing {tmp_path / 'absent.tflite'}.*shared/ folder"):
        require(tmp_path / "absent.tflite")
