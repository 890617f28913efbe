"""The ResNet basic block (``rb``) and the ``resnet8-cifar`` preset, held against the MLPerf Tiny reference.

The reference is ``shared/models/mlperf_ic_resnet8_int8.tflite`` (mlcommons/tiny, image classification;
``shared/models/README.md``): 12,501,632 MACs, 98,496 B flash, TFLM arena 55,984 B (head 49,152 + tail 6,832,
host build). Our preset must be that network: same MACs, same convolutions, the same activation memory.
"""
from __future__ import annotations

import dataclasses

import pytest

import nas  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from nas import arena, profile, space, tflm, topology
from nas.errors import UserError
from nas.spec import ArchSpec, Block, parse_spec_string, preset
from tests.shared import SHARED, require

REFERENCE = SHARED / "models" / "mlperf_ic_resnet8_int8.tflite"
# shared/models/README.md, "measured here" (TFLM host build)
REFERENCE_MACS = 12_501_632
REFERENCE_FLASH = 98_496
REFERENCE_ARENA = 55_984

#: rb blocks beyond the preset: hard-swish (its own op after the ADD), ReLU6, a stride-1 projection
#: (8 -> 16 channels at width 0.5), an identity repeat, a stride-2 projection with unchanged channels, k5.
VARIANTS = "in32x3-w0.5-cn_r1_k3_s2_c16_hs-rb_r2_k3_s1_c24_hs-rb_r1_k5_s2_c32_r6-cls_n2_d0_re"


def reference_graph() -> arena.GraphInfo:
    return arena.read_graph(require(REFERENCE).read_bytes(), str(REFERENCE))


def test_preset_macs_equal_the_reference() -> None:
    assert profile.estimate(preset("resnet8-cifar")).macs == REFERENCE_MACS


def test_reference_tflite_macs_counted_on_its_graph() -> None:
    assert profile.graph_macs(reference_graph()) == REFERENCE_MACS


def test_preset_has_the_reference_convolutions_in_its_order() -> None:
    """Every op up to the pooling: kind, output shape and weight shape, in the converted graph's order (the
    order decides which tensors TFLM keeps alive together). The head differs only in form: MEAN for the
    reference's AVERAGE_POOL_2D(8) + RESHAPE."""
    sg = reference_graph().main
    ref = [(op.kind, sg.tensors[op.outputs[0]].shape[1:]) for op in sg.ops]
    ops, _, _, _ = profile.graph(preset("resnet8-cifar"))
    ours = [(op.kind, op.shape) for op in ops]
    assert ours[:12] == ref[:12]
    assert [k for k, _ in ref[12:]] == ["AVERAGE_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"]
    assert [k for k, _ in ours[12:]] == ["MEAN", "FULLY_CONNECTED", "SOFTMAX"]
    ref_weights = sum(sg.tensors[op.inputs[1]].elements for op in sg.ops if op.kind in ("CONV_2D", "FULLY_CONNECTED"))
    assert sum(op.weights for op in ops) == ref_weights == 77_360  # conv + dense weights


def test_basic_block_round_trips_and_defaults() -> None:
    spec = parse_spec_string(VARIANTS)
    assert spec.to_string() == VARIANTS
    assert ArchSpec.from_json(spec.to_json()) == spec
    assert spec.blocks[1] == Block("rb", 24, kernel=3, stride=1, repeats=2, act="hswish")


@pytest.mark.parametrize("text, fragment", [
    ("in32x3-w1-rb_r1_k3_s1_e4_c16_re-cls_n2_d0_re", "only 'ir' blocks expand"),
    ("in32x3-w1-rb_r1_k3_s1_c16_se0.25_re-cls_n2_d0_re", "'rb' has none"),
    ("in32x3-w1-rb_r1_k4_s1_c16_re-cls_n2_d0_re", "kernel"),
    ("in32x3-w1-rb_r1_k3_s3_c16_re-cls_n2_d0_re", "stride"),
])
def test_bad_basic_block_names_the_field(text: str, fragment: str) -> None:
    with pytest.raises(UserError) as err:
        parse_spec_string(text)
    assert fragment in str(err.value) and "rb_r1" in err.value.field


def test_walk_names_the_basic_block_layers() -> None:
    """Identity shortcut when the shape stays, 1x1 projection (with bias, no BN) when it changes."""
    names: list[str] = []

    def layer(*args: object) -> object:
        names.append(str(args[-1]))
        return args[-1]

    makers = {f.name: layer for f in dataclasses.fields(topology.Layers) if f.name != "model"}
    topology.build(preset("resnet8-cifar"), topology.Layers(model=lambda i, o, n: None, **makers))
    b1 = [n for n in names if n.startswith("b1_")]
    assert b1 == ["b1_0_a_conv", "b1_0_a_bn", "b1_0_a_relu", "b1_0_b_conv", "b1_0_b_bn", "b1_0_add",
                  "b1_0_add_relu"]
    assert "b2_0_proj" in names and "b3_0_proj" in names and not any(n.endswith("_proj_bn") for n in names)


def test_space_files_take_basic_blocks() -> None:
    data = {"name": "res", "resolution": [32], "width": [1.0],
            "stages": [{"name": "stem", "kind": "cn", "channels": 16, "stride": 1},
                       {"name": "s1", "kind": "rb", "channels": [16, 32], "stride": 2, "depth": [1, 2]}],
            "head": {"kind": "classifier"}}
    sp = space.space_from_dict(data, "res.yaml")
    shape = space.DataShape("classification", classes=10, channels=3)
    specs = [space.to_spec(sp, point, shape) for point in space.enumerate_points(sp)]
    assert {b.kind for s in specs for b in s.blocks} == {"cn", "rb"} and len(specs) == 4
    data["stages"][1]["se"] = 0.25
    with pytest.raises(UserError) as err:
        space.space_from_dict(data, "res.yaml")
    assert err.value.field == "stages[1].se"


# -- converted: the real INT8 model and the real TFLM arena (tf_keras + tfmot + converter, ~10 s each) ------


def test_converted_preset_matches_the_reference_memory() -> None:
    from nas.tf import convert

    spec = preset("resnet8-cifar")
    flat = convert.untrained_int8(spec)
    ops, _, _, _ = profile.graph(spec)
    graph = arena.read_graph(flat)
    assert [(op.kind, graph.main.tensors[op.outputs[0]].shape[1:]) for op in graph.main.ops] == \
        [(op.kind, op.shape) for op in ops]
    assert profile.graph_macs(graph) == REFERENCE_MACS
    measured = tflm.measure_tflm(flat)
    # the same activation head as the reference; the tail is smaller by one op (MEAN for AVERAGE_POOL_2D + RESHAPE)
    assert measured.head_bytes == 49_152
    assert abs(measured.arena_bytes - REFERENCE_ARENA) <= 0.01 * REFERENCE_ARENA, measured
    # The constant data (int8 weights, int32 biases) is byte for byte the reference's size; the reference
    # file is ~7% larger only because it keeps tensor names (3,097 B) and per-channel min/max floats (706),
    # which our converter strips (nas.tf.convert.strip_names) or never writes.
    constants = sum(t.nbytes for t in graph.main.tensors if t.is_constant)
    ref_constants = sum(t.nbytes for t in reference_graph().main.tensors if t.is_constant)
    assert constants == ref_constants == 78_752
    assert 0.90 * REFERENCE_FLASH < len(flat) < REFERENCE_FLASH
    est = profile.estimate(spec)
    assert est.activation_bytes == measured.head_bytes
    margin = profile.ESTIMATE_MARGIN
    assert abs(est.peak_sram_bytes - measured.arena_bytes) <= margin["sram_bytes"] * measured.arena_bytes
    assert abs(est.flash_bytes - len(flat)) <= margin["flash_bytes"] * len(flat)


def test_converted_basic_block_variants_match_the_profile() -> None:
    """Hard-swish after the add, ReLU6, projections at stride 1 and 2: the profile's graph is the converter's."""
    from nas.tf import convert

    spec = parse_spec_string(VARIANTS)
    flat = convert.untrained_int8(spec)
    graph = arena.read_graph(flat)
    ops, _, _, _ = profile.graph(spec)
    assert [(op.kind, graph.main.tensors[op.outputs[0]].shape[1:]) for op in graph.main.ops] == \
        [(op.kind, op.shape) for op in ops]
    assert profile.graph_macs(graph) == profile.estimate(spec).macs
    est = profile.estimate(spec)
    measured = tflm.measure_tflm(flat).arena_bytes
    assert abs(est.peak_sram_bytes - measured) <= max(0.01 * measured, profile.ESTIMATE_MARGIN_MIN_BYTES)
    assert abs(est.flash_bytes - len(flat)) <= max(0.01 * len(flat), profile.ESTIMATE_MARGIN_MIN_BYTES)


def test_expected_input_range_from_the_quantization() -> None:
    from nas.tf.convert import expected_input_range

    assert expected_input_range(1.0, -128) == "0-255"          # the MLPerf reference: raw pixels
    assert expected_input_range(1 / 255, -128) == "0-1"        # ours
    assert expected_input_range(2 / 255, 0) == "-1-1"          # MobileNet-style


def test_nas_evaluate_scores_the_reference_on_cifar10_images(tmp_path) -> None:
    """The reference is fed raw pixels (its input scale 1.0, zero point -128), as it was trained: 30 test images
    per class score near its 76.1% (shared/models/README.md); fed [0, 1] it would be at chance."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    test = require(SHARED / "data" / "cifar10" / "test")
    for cls in sorted(d for d in test.iterdir() if d.is_dir()):
        (tmp_path / "c" / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:30]:
            (tmp_path / "c" / cls.name / f.name).symlink_to(f)
    nas_cli = str(Path(sys.executable).with_name("nas"))

    def accuracy(*extra: str) -> dict:
        res = subprocess.run([nas_cli, "evaluate", str(require(REFERENCE)), "--dataset", str(tmp_path / "c"),
                              "--split", "all", "--json", *extra], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout)

    auto = accuracy()
    assert auto["input_range"] == "0-255" and auto["samples"] == 300
    assert auto["int8_metric"] > 0.6 and auto["int8_interval"][0] < 0.761 < auto["int8_interval"][1]
    assert accuracy("--input-range", "0-1")["int8_metric"] < 0.25
