"""Where a candidate's INT8 conversion time goes, before and after the frozen-graph path.

Side by side in one run, on the same QAT models: TensorFlow's ``from_keras_model`` (which exports the whole
Keras object as a SavedModel first) against ``nas.convert.to_int8``'s default (trace once, freeze variables,
convert). Writes bench/results/convert_time.json and .md.

    python bench/convert_time.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

import nas  # noqa: F401
from nas import builder, convert
from nas.spec import preset

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one small model only (used by the tests)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    specs = {"mnv3-small-0.35-96": preset("mobilenetv3-small").replace(resolution=96, width=0.35, classes=2)}
    if args.quick:
        specs = {"mnv3-small-0.35-32": preset("mobilenetv3-small").replace(resolution=32, width=0.35, classes=2)}
    else:
        specs["mobilenetv1-vww"] = preset("mobilenetv1-vww")
    rows = []
    for name, spec in specs.items():
        model = builder.build_qat(spec)
        x = np.random.default_rng(0).random((16, spec.resolution, spec.resolution, spec.input_channels), dtype=np.float32)
        model(x, training=True)
        row = {"model": name, "spec": spec.to_string()}
        for via in ("keras", "frozen"):
            t0 = time.perf_counter()
            flat = convert.to_int8(model, x, samples=16, via=via)
            row[f"{via}_s"] = round(time.perf_counter() - t0, 2)
            row[f"{via}_bytes"] = len(flat)
        row["speedup"] = round(row["keras_s"] / row["frozen_s"], 1)
        rows.append(row)
        print(row)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = {"benchmark": "convert_time", "commit": commit, "machine": platform.processor() or platform.machine(),
           "quick": args.quick, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "convert_time_quick" if args.quick else "convert_time"
    (args.out / f"{stem}.json").write_text(json.dumps(out, indent=1))
    lines = ["| model | from_keras_model (s) | frozen graph (s) | speed-up |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['keras_s']} | {r['frozen_s']} | {r['speedup']}x |" for r in rows]
    (args.out / f"{stem}.md").write_text(f"INT8 conversion time, commit {commit}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
