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
