"""Where a candidate's INT8 conversion time goes, before and after the frozen-graph path.

Side by side in one run, on the same QAT models: TensorFlow's ``from_keras_model`` (which exports the whole
Keras object as a SavedModel first) against ``nas.tf.convert.to_int8``'s default (trace once, freeze variables,
convert). Each model is converted ``--repeat`` times both ways, in alternating order (keras first, then frozen
first), so both paths see the same machine load; the table gives min / median / max and the ratio of the
medians. Writes bench/results/convert_time.json and .md.

    python bench/convert_time.py [--repeat 3] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import common  # bench/common.py: run as a script, this folder is first on sys.path
from nas.tf import builder, convert
from nas.spec import preset

RESULTS = Path(__file__).resolve().parent / "results"
PATHS = ("keras", "frozen")


def time_model(name: str, spec, repeat: int) -> dict:
    """Convert one QAT model ``repeat`` times each way, alternating which path goes first."""
    model = builder.build_qat(spec)
    x = np.random.default_rng(0).random((16, spec.resolution, spec.resolution, spec.input_channels), dtype=np.float32)
    model(x, training=True)
    seconds: dict[str, list[float]] = {p: [] for p in PATHS}
    size: dict[str, int] = {}
    for r in range(repeat):
        for via in (PATHS if r % 2 == 0 else PATHS[::-1]):
            t0 = time.perf_counter()
            flat = convert.to_int8(model, x, samples=16, via=via)
            seconds[via].append(round(time.perf_counter() - t0, 2))
            size[via] = len(flat)
    row = {"model": name, "spec": spec.to_string(), "repeat": repeat}
    for via in PATHS:
        row[f"{via}_runs_s"] = seconds[via]
        row[f"{via}_s"] = statistics.median(seconds[via])
        row[f"{via}_bytes"] = size[via]
    row["speedup"] = round(row["keras_s"] / row["frozen_s"], 1)
    return row


def markdown(out: dict) -> str:
    rows = [[r["model"], _spread(r["keras_runs_s"]), _spread(r["frozen_runs_s"]), f"{r['speedup']}x",
             f"{r['keras_bytes']:,} / {r['frozen_bytes']:,}"] for r in out["rows"]]
    return "\n".join([
        f"INT8 conversion time, commit {out['commit']}", "",
        common.table(["model", "from_keras_model, s (min / median / max)", "frozen graph, s (min / median / max)",
                      "speed-up (medians)", ".tflite bytes (keras / frozen)"], rows), "",
        f"{out['rows'][0]['repeat']} conversions per path and model, alternating which path goes first; "
        + common.loadavg_note(out["clock"]) + ".",
    ])


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="conversions per path and model (default 3)")
    ap.add_argument("--quick", action="store_true", help="one small model, one conversion each way (the tests)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    clock = common.Clock()
    specs = {"mnv3-small-0.35-96": preset("mobilenetv3-small").replace(resolution=96, width=0.35, classes=2),
             "mobilenetv1-vww": preset("mobilenetv1-vww")}
    repeat = args.repeat
    if args.quick:
        specs = {"mnv3-small-0.35-32": preset("mobilenetv3-small").replace(resolution=32, width=0.35, classes=2)}
        repeat = 1
    rows = [time_model(name, spec, repeat) for name, spec in specs.items()]
    out = {**common.header("convert_time", args.quick), "rows": rows, "clock": clock.record()}
    stem = "convert_time_quick" if args.quick else "convert_time"
    js, md = common.write(args.out, stem, out, markdown(out))
    print(md.read_text())


if __name__ == "__main__":
    main()
