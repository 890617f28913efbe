"""`nas profile` as a user runs it: the console script, real processes, exit codes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

NAS = [str(Path(sys.executable).parent / "nas")]


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*NAS, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_subcommands():
    out = run("--help")
    assert out.returncode == 0
    assert "profile" in out.stdout


def test_tinytracker_on_imx500_reproduces_the_paper():
    # Seeds 000/001/002: 0.86 ms inference, 19 ms end to end, 0.06 mJ inference, 4.9 mJ total.
    out = run("profile", "--spec", "tinytracker", "--constraints", "imx500.yaml", "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["fits"] is True
    assert abs(rep["inference_ms"] - 0.86) / 0.86 < 0.10
    assert abs(rep["latency_ms"] - 19.0) / 19.0 < 0.10
    assert abs(rep["energy_mj"] - 4.9) / 4.9 < 0.10
    for key in ("macs", "params", "flash_bytes", "peak_sram_bytes", "latency_ms", "energy_mj", "fits"):
        assert key in rep


def test_coral_micro_reproduces_the_paper():
    out = run("profile", "--spec", "tinytracker", "--constraints", "coral_micro", "--json")
    rep = json.loads(out.stdout)
    assert abs(rep["latency_ms"] - 34.4) / 34.4 < 0.10
    assert abs(rep["energy_mj"] - 34.2) / 34.2 < 0.10


def test_measure_reports_real_tflm_arena_close_to_estimate():
    out = run("profile", "--spec", "mobilenetv1-vww", "--constraints", "nas/constraints/mcu_vww.yaml",
              "--measure", "--json", cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    measured = rep["measured"]
    assert abs(rep["peak_sram_bytes"] - measured["tflm_arena_bytes"]) / measured["tflm_arena_bytes"] < 0.10
    assert abs(rep["flash_bytes"] - measured["tflite_bytes"]) / measured["tflite_bytes"] < 0.10
    assert {c["name"] for c in rep["limits"]} == {"sram_bytes", "flash_bytes", "macs"}


def test_table_output_shows_limits_and_verdict():
    out = run("profile", "--spec", "mobilenetv3-small", "--resolution", "96", "--width", "0.35",
              "--classes", "2", "--constraints", "mcu_vww.yaml")
    assert out.returncode == 0, out.stderr
    assert "sram_bytes" in out.stdout and "fits" in out.stdout and "latency" in out.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--spec", "mobilenetv3-smal"], "did you mean 'mobilenetv3-small'"),
    (["--spec", "tinytracker", "--classes", "3"], "--classes"),
    (["--spec", "mobilenetv1-vww", "--resolution", "100"], "resolution"),
    (["--spec", "mobilenetv1-vww", "--constraints", "nope.yaml"], "nope.yaml"),
])
def test_bad_input_is_one_line_exit_2(args, fragment):
    out = run("profile", *args)
    assert out.returncode == 2
    assert fragment in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_bad_constraint_file_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("runtime: tflm\nlimits:\n  sram: 250 KBB\nhardware:\n  clock_hz: 1\n  macs_per_cycle: 1\n"
                   "  inference_power_mw: 1\n")
    out = run("profile", "--spec", "mobilenetv1-vww", "--constraints", str(bad))
    assert out.returncode == 2
    assert "bad.yaml" in out.stderr and "sram" in out.stderr


# -- nas profile MODEL.tflite: any converted model, the public references as the test cases -----------------

# measured here (../shared/models/README.md and earlier sessions' TFLM runs): exact MACs and the host TFLM arena
PUBLIC = {"models/mlperf_ic_resnet8_int8.tflite": (12_501_632, 55_984, 98_496),
          "holdout/models/mlperf_vww_96_int8.tflite": (7_489_664, 103_680, 333_288),
          "holdout/models/tflm_person_detect.tflite": (7_157_888, 85_264, 300_568)}


@pytest.mark.parametrize("rel", sorted(PUBLIC))
def test_profile_of_a_public_tflite_matches_its_known_figures(rel):
    from tests.shared import SHARED, require

    macs, arena, flash = PUBLIC[rel]
    out = run("profile", str(require(SHARED / rel)), "--constraints", "mcu_vww.yaml", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    rep = json.loads(out.stdout)
    assert rep["macs"] == macs and sum(rep["macs_by_class"].values()) == macs
    assert rep["tflm_arena_bytes"] == arena and rep["tflite_bytes"] == flash
    assert abs(rep["estimated_arena_bytes"] - arena) / arena < 0.01
    assert max(row["live_bytes"] for row in rep["layers"]) <= rep["estimated_arena_bytes"]
    limits = {c["name"]: c for c in rep["limits"]}
    assert limits["sram_bytes"]["value"] == arena and limits["flash_bytes"]["value"] == flash
    assert rep["fits"] is (flash <= 250 * 1024 and arena <= 250 * 1024)  # the person detector's 300 KB breaks flash
    # latency per layer on mcu_vww.yaml's per-op profile: every operator priced, summing to the inference time
    assert rep["latency_model"] == "per_op"
    assert sum(row["latency_ms"] for row in rep["layers"]) == pytest.approx(rep["inference_ms"], rel=1e-9)
    assert all(row["latency_ms"] > 0 for row in rep["layers"] if row["op"] != "RESHAPE")


def test_profile_of_a_tflite_as_a_table_and_the_first_layer_apart():
    from tests.shared import SHARED, require

    out = run("profile", str(require(SHARED / "models/mlperf_ic_resnet8_int8.tflite")))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "MACs        12,501,632 (conv 11.80 M, conv_first 0.44 M" in out.stdout  # 3-channel input conv apart
    assert "measured 55,984 B (host TFLM interpreter)" in out.stdout and "<- peak" in out.stdout


def test_profile_of_a_bad_tflite_is_one_line(tmp_path):
    not_tflite = tmp_path / "model.tflite"
    not_tflite.write_bytes(b"\x00" * 64)
    cases = [([str(not_tflite)], "a TensorFlow Lite flatbuffer"), ([str(tmp_path / "missing.tflite")], "an existing"),
             ([str(not_tflite), "--spec", "tinytracker"], "--spec")]
    for args, text in cases:
        out = run("profile", *args)
        assert out.returncode == 2, out.stderr
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith("nas profile: error:") and text in line, line


def test_a_model_with_float_weights_is_refused_naming_the_operator(tmp_path):
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.Input((8, 8, 1)), tf.keras.layers.Conv2D(4, 3)])
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()  # float32 weights
    path = tmp_path / "float.tflite"
    path.write_bytes(tflite)
    out = run("profile", str(path))
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert "an INT8 model; operator 0 (CONV_2D) has FLOAT32 weights" in line, line
