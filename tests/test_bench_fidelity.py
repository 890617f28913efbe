"""bench/fidelity.py keeps working: its quick mode runs end to end and the SRAM estimate holds on small specs."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_fidelity_quick(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "fidelity.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads((tmp_path / "fidelity_quick.json").read_text())
    summary = out["summary"]
    assert out["n"] == 4 and len(out["rows"]) == 4
    assert set(out["coverage"]["head"]) == {"classifier", "gaze"}
    assert all(r["resolution"] <= 64 for r in out["rows"])
    assert set(summary["errors"]) == {"sram", "flash", "macs", "imx500"}
    assert summary["errors"]["sram"]["max"] < 0.05
    assert summary["errors"]["macs"]["max"] == 0.0  # both count the same conv / depthwise / dense taps
    assert summary["verdicts"]["mcu_vww.sram"]["wrong"] == 0
    assert (tmp_path / "fidelity_quick.md").read_text().startswith("Cost-model fidelity")
    assert (tmp_path / "fidelity_quick.png").stat().st_size > 0
