"""bench/data_scale.py keeps working: its quick mode (generated folders, the pipeline vs the training step)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_data_scale_quick(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "data_scale.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads((tmp_path / "data_scale_quick.json").read_text())
    rows = out["generated"]
    assert [r["images"] for r in rows] == [300, 600]
    for r in rows:  # a real training epoch streamed from the cache, in a process of its own
        assert r["train_images"] == int(0.65 * r["images"]) and r["steady_epoch_s"] > 0
        assert 100 << 20 < r["worker_peak_rss"] < 2 << 30
    tp = out["throughput"]["rows"][0]
    assert tp["resolution"] == 32 and tp["pipeline_img_s"] > 0 and tp["step_img_s"] > 0
    assert set(out["verdicts"]) >= {"rss_met", "flat_met", "pipeline_met"}
    md = (tmp_path / "data_scale_quick.md").read_text()
    assert "worker peak RSS <= 2 GB" in md and "pipeline >= 3x the step" in md
