"""Benchmarks keep working: each runs in its quick mode."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_convert_time_quick(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "convert_time.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads((tmp_path / "convert_time_quick.json").read_text())
    row = out["rows"][0]
    assert row["frozen_s"] > 0 and row["keras_s"] > 0
    assert row["speedup"] > 1.5  # the frozen path skips the SavedModel export of every layer
    assert (tmp_path / "convert_time_quick.md").read_text().startswith("INT8 conversion time")


def test_recipe_quick_and_resume(tmp_path):
    """bench/recipe.py: two tiny MNIST runs (legacy, default) with intervals; a second call finds both recorded."""
    cmd = [sys.executable, str(ROOT / "bench" / "recipe.py"), "--quick", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads((tmp_path / "recipe_quick.json").read_text())
    assert sorted(out["runs"]) == ["quick/default/1", "quick/legacy/1"]
    for run in out["runs"].values():
        lo, hi = run["int8_interval"]
        assert lo <= run["int8_test"] <= hi and run["test_samples"] == 1000  # MNIST's 20% test split
        assert run["wall_s"] > 0 and run["attempts"]
    assert "recipe legacy: 0 float + 2 QAT" in out["runs"]["quick/legacy/1"]["plan"]
    assert "recipe default: 1 float + 1 QAT" in out["runs"]["quick/default/1"]["plan"]
    assert "INT8 test [95% CI]" in (tmp_path / "recipe_quick.md").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0 and "0 run(s) to do, 2 recorded" in again.stderr


def test_throughput_quick(tmp_path):
    """bench/throughput.py: one small model at batch 32, float and QAT steps, fed from the real pipeline too."""
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads((tmp_path / "throughput_quick.json").read_text())
    (row,) = out["rows"]
    (cell,) = row["batches"]
    assert row["model"] == "mnv3-small-0.5-32" and cell["batch"] == 32 and out["quick"] is True
    assert cell["float_img_s"] > 0 and cell["qat_img_s"] > 0 and cell["fit_pipeline_img_s"] > 0
    assert all(v > 0 for v in row["quantize_s"]) and (tmp_path / "throughput_quick.md").is_file()  # (wall, CPU) s
