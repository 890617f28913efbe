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
