"""ArchSpec: round trips, presets' published MAC counts, and clear errors for bad specs."""
import json
import random

import pytest

from nas import profile
from nas.errors import UserError
from nas.spec import PRESETS, ArchSpec, load_spec, parse_spec_string, preset
from nas.testing import random_spec


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_string_and_json(name):
    spec = preset(name)
    assert ArchSpec.from_string(spec.to_string()) == spec
    assert ArchSpec.from_json(spec.to_json()) == spec
    assert ArchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_random_specs_round_trip():
    rng = random.Random(7)
    for _ in range(200):
        spec = random_spec(rng)
        assert ArchSpec.from_string(spec.to_string()) == spec
        assert ArchSpec.from_json(spec.to_json()) == spec


def test_mobilenetv3_small_macs_match_paper():
    # Howard et al. 2019, Table 3: MobileNetV3-Small 1.0 at 224x224, 56M MACs.
    macs = profile.estimate(preset("mobilenetv3-small")).macs
    assert abs(macs - 56e6) / 56e6 < 0.10, macs


def test_mobilenetv3_large_macs_match_paper():
    # Howard et al. 2019, Table 3: MobileNetV3-Large 1.0 at 224x224, 219M MACs.
    macs = profile.estimate(preset("mobilenetv3-large")).macs
    assert abs(macs - 219e6) / 219e6 < 0.10, macs


def test_mobilenetv1_vww_macs_match_mlperf_tiny():
    # MLPerf Tiny VWW reference (MobileNetV1 0.25, 96x96x3): 7,489,664 MACs (STACK.md).
    macs = profile.estimate(preset("mobilenetv1-vww")).macs
    assert abs(macs - 7_489_664) / 7_489_664 < 0.05, macs


def test_width_multiplier_rounds_channels_like_mobilenet():
    spec = preset("mobilenetv1-vww")
    assert [spec.channels_of(b) for b in spec.blocks][:3] == [8, 16, 32]


def test_tinytracker_input_carries_the_face_grid():
    spec = preset("tinytracker")
    assert spec.head.kind == "gaze" and spec.input_channels == 5 and spec.resolution == 128


def test_replace_overrides_resolution_width_and_classes():
    spec = preset("mobilenetv3-small").replace(resolution=96, width=0.35, classes=2)
    assert (spec.resolution, spec.width, spec.head.classes) == (96, 0.35, 2)


@pytest.mark.parametrize("text, fragment", [
    ("in96x3-w0.35-xx_r1_k3_s2_c16_hs-cls_n2_d0_re", "block kind"),
    ("in96x3-w0.35-ir_r1_k4_s2_c16_hs-cls_n2_d0_re", "kernel"),
    ("in96x3-w0.35-ir_r1_k3_s2_c16_sw-cls_n2_d0_re", "'sw'"),
    ("in96x3-w0.35-ir_r1_k3_s2_c16_hs-head_n2", "head"),
    ("in90x3-w0.35-cn_k3_s2_c16_re-ir_k3_s2_c16_re-ir_k3_s2_c24_re-cls_n2_d0_re",
     "multiple of the network's total stride 8"),
    ("in96x3-w9-cn_k3_s2_c16_re-cls_n2_d0_re", "width"),
    ("in96x3-cn_k3_s2_c16_re-cls_n2_d0_re", ""),
])
def test_bad_spec_strings_name_the_problem(text, fragment):
    with pytest.raises(UserError) as err:
        parse_spec_string(text)
    assert fragment in str(err.value)


def test_load_spec_from_files(tmp_path):
    spec = preset("mobilenetv1-vww")
    (tmp_path / "s.json").write_text(spec.to_json())
    (tmp_path / "s.yaml").write_text(f"spec: {spec.to_string()}\n")
    assert load_spec(str(tmp_path / "s.json")) == spec
    assert load_spec(str(tmp_path / "s.yaml")) == spec
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        load_spec(str(tmp_path / "bad.json"))
    with pytest.raises(UserError, match="did you mean 'mobilenetv3-small'"):
        load_spec("mobilenetv3-smal")


def test_long_spec_string_is_not_taken_for_a_path():
    text = PRESETS["mobilenetv3-large"]
    assert len(text) > 255  # longer than a file name may be
    assert load_spec(text) == preset("mobilenetv3-large")
