"""Data at scale: the uint8 image cache and the streaming pipeline (issue 14), measured.

1. **CIFAR-10** (``../shared/data/cifar10``, 55,000 JPEGs, read in place): ``nas.data.load`` in a fresh process
   into an empty cache (decode), then again (open); peak resident memory (``VmHWM``) of each.
2. **A short search on it**: ``nas search --constraints mcu_vww.yaml --dataset cifar10 --trials 2 --epochs 1
   --workers 2``; peak resident memory of the coordinator and of each worker, polled from ``/proc``.
3. **Generated folders** of N small images (random 16x16 PNGs in 10 classes, made in a temporary folder and
   removed; never committed), N = 10,000 / 50,000 / 200,000: decode time, and in a fresh worker-like process
   one candidate's real training path (``nas.tf.train.train_qat``, one QAT epoch of a fixed small spec, streamed
   from the cache, then one fit() of 3 more epochs of the same model, graph traced, each epoch timed, the
   median): its peak resident memory and training time per image per epoch.
4. **Pipeline vs step**: images/s of ``nas.tf.pipeline.stream`` alone (CIFAR-10 store, augmentation on) and of
   the training step alone (MobileNetV3-Small 0.5 QAT, batch 128, one batch repeated in memory), at 32 and 96 px.

Goals (issue 14): peak RSS per worker <= 2 GB whatever the size; time per image per epoch within 20% from the
smallest to the largest folder; pipeline >= 3x the step's images/s. Each is reported met or not.

    python bench/data_scale.py [--quick] [--sizes 10000 50000 200000] [--out bench/results]

``--quick`` (the tests): 300 / 600 generated images and the pipeline-vs-step figure at 32 px; no CIFAR-10,
no search (tens of seconds, not minutes). ``--sizes`` changes the generated folders (the 200,000 case is large).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

CIFAR10 = common.SHARED / "data" / "cifar10"
GB = 1 << 30
GOAL_RSS = 2 * GB
GOAL_FLAT = 0.20
GOAL_PIPELINE = 3.0
SMALL_SPEC = "in16x3-w0.5-cn_r1_k3_s2_c16_re-ds_r1_k3_s1_c32_re-ds_r1_k3_s2_c64_re-cls_n10_d0_re"


# ------------------------------------------------------------------------------------------ processes


def _hwm(pid: int) -> int | None:
    """Peak resident memory (VmHWM, bytes) of a live process, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(k) for k in kids]


def run_watched(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``cmd``; poll the peak RSS of it and of its direct children (the workers) every 0.2 s."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    peaks: dict[int, int] = {}
    names: dict[int, str] = {}
    while proc.poll() is None:
        for pid in [proc.pid, *_children(proc.pid)]:
            h = _hwm(pid)
            if h is not None:
                peaks[pid] = max(peaks.get(pid, 0), h)
                if pid not in names:
                    try:
                        names[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
                    except OSError:
                        names[pid] = "?"
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            break
        time.sleep(0.2)
    out = proc.communicate()[0]
    workers = [p for p in peaks if p != proc.pid and " worker " in names.get(p, "")]
    return {"returncode": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
            "coordinator_peak_rss": peaks.get(proc.pid), "worker_peak_rss": [peaks[p] for p in sorted(workers)],
            "other_children_peak_rss": [peaks[p] for p in peaks if p != proc.pid and p not in workers],
            "output_tail": out[-1500:]}


def _python(script: str, env: dict[str, str], *args: str, timeout: float = 3600) -> dict[str, Any]:
    """Run a script in a fresh interpreter; its last stdout line is JSON (it reports its own peak RSS)."""
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=env, capture_output=True,
                         text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"child failed ({res.returncode}): {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


_PEAK = """
def peak_rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""

LOAD_SCRIPT = _PEAK + """
import json, sys, time
t0 = time.perf_counter()
from nas import data
ds = data.load(sys.argv[1], seed=0)
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss": peak_rss(), "counts": ds.description["counts"],
                  "shape": ds.description["native_shape"], "cache": ds.description.get("cache")}))
"""

TRAIN_SCRIPT = _PEAK + """
import json, sys, time
from nas import data
from nas.budget import Budget
from nas.spec import parse_spec_string
from nas.tf import pipeline, train
ds = data.load(sys.argv[1], seed=0)
spec = train.adapt(parse_spec_string(sys.argv[2]), ds)
t = train.train_qat(spec, ds, Budget(epochs=1, recipe="legacy", batch_size=128), seed=0)
# more epochs of the same QAT model on the same stream, graph already traced: the steady cost per image
again = pipeline.stream(ds.train, spec.resolution, spec.channels, batch_size=128, shuffle=True, seed=1,
                        augment=ds.description["augment"])
import tf_keras as keras
class EpochClock(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []
    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.t0)
clock = EpochClock()
# one fit() of a few epochs, each timed from its start to its end (the stream's per-epoch restart included, the
# fit() call's own set-up not); the median: the machine is shared, one epoch can be unlucky
t.model.fit(again, epochs=int(sys.argv[3]), verbose=0, callbacks=[clock])
epochs = clock.seconds
steady = sorted(epochs)[len(epochs) // 2]
print(json.dumps({"train_images": len(ds.train), "val_images": len(ds.val), "qat_train_s": t.timings["qat_train"],
                  "steady_epoch_s": steady, "epochs_s": epochs, "s_per_image_epoch": steady / len(ds.train),
                  "peak_rss": peak_rss(), "plan": t.plan.describe()}))
"""

THROUGHPUT_SCRIPT = _PEAK + """
import json, sys, time
import numpy as np
import tensorflow as tf
from nas import data
from nas.spec import load_spec
from nas.tf import builder, pipeline, train
ds = data.load(sys.argv[1], seed=0)
batches, batch = int(sys.argv[2]), 128
out = []
for res in [int(r) for r in sys.argv[3].split(",")]:
    s = pipeline.stream(ds.train, res, 3, batch_size=batch, shuffle=True, seed=0, augment="classification")
    it = iter(s.repeat())
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    pipe = batches * batch / (time.perf_counter() - t0)
    del it  # a live tf.data iterator (numpy_function inside) must not outlive the interpreter's shutdown
    spec = train.adapt(load_spec("mobilenetv3-small").replace(resolution=res, width=0.5), ds)
    model = builder.quantize(builder.build(spec))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((batch, res, res, 3), dtype=np.float32)
    y = np.zeros(batch, np.int32)
    fixed = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(fixed, steps_per_epoch=3, epochs=1, verbose=0)
    t0 = time.perf_counter()
    model.fit(fixed, steps_per_epoch=batches, epochs=1, verbose=0)
    step = batches * batch / (time.perf_counter() - t0)
    out.append({"resolution": res, "pipeline_img_s": pipe, "step_img_s": step, "ratio": pipe / step})
print(json.dumps({"rows": out, "peak_rss": peak_rss()}))
"""


# ------------------------------------------------------------------------------------------ parts


def generate(root: Path, n: int, side: int = 16, classes: int = 10) -> float:
    """``n`` random ``side`` px PNGs in ``classes`` class folders (seeded); returns the seconds it took."""
    from PIL import Image

    t0 = time.perf_counter()
    rng = np.random.default_rng(n)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % classes
        img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        img[..., c % 3] //= 2  # a weak class signal, so training is ordinary training
        Image.fromarray(img).save(root / f"class{c}" / f"{i:07d}.png", compress_level=1)
    return time.perf_counter() - t0


def cifar_part(env: dict[str, str], cache: Path, out: dict[str, Any]) -> None:
    first = _python(LOAD_SCRIPT, env, str(CIFAR10))
    second = _python(LOAD_SCRIPT, env, str(CIFAR10))
    out["cifar10"] = {"decode_s": round(first["seconds"], 1), "decode_peak_rss": first["peak_rss"],
                      "open_s": round(second["seconds"], 2), "open_peak_rss": second["peak_rss"],
                      "counts": first["counts"], "stored_shape": first["shape"],
                      "cache_bytes": sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())}
    print(f"cifar10: decode {first['seconds']:.1f} s, open {second['seconds']:.2f} s", file=sys.stderr)


def search_part(dataset: Path, env: dict[str, str], scratch: Path, trials: int, workers: int) -> dict[str, Any]:
    nas = str(Path(sys.executable).parent / "nas")
    cmd = [nas, "search", "--constraints", common.CONSTRAINTS, "--dataset", str(dataset), "--trials", str(trials),
           "--epochs", "1", "--workers", str(workers), "--run-dir", str(scratch / f"search-{dataset.name}")]
    r = run_watched(cmd, env, timeout=3600)
    r["command"] = " ".join(["nas", *cmd[1:-2]])
    if r["returncode"] != 0:
        raise RuntimeError(f"nas search failed ({r['returncode']}): {r['output_tail']}")
    print(f"search: {r['wall_s']} s, coordinator {r['coordinator_peak_rss']}, workers {r['worker_peak_rss']}",
          file=sys.stderr)
    return r


def generated_part(sizes: list[int], env: dict[str, str], scratch: Path, out: dict[str, Any], repeats: int
                   ) -> Path:
    rows = []
    folder = scratch
    for n in sizes:
        folder = scratch / f"gen{n}"
        gen_s = generate(folder, n)
        load = _python(LOAD_SCRIPT, env, str(folder))
        tr = _python(TRAIN_SCRIPT, env, str(folder), SMALL_SPEC, str(repeats))
        rows.append({"images": n, "generate_s": round(gen_s, 1), "decode_s": round(load["seconds"], 1),
                     "train_images": tr["train_images"], "qat_train_s": round(tr["qat_train_s"], 2),
                     "steady_epoch_s": round(tr["steady_epoch_s"], 2),
                     "us_per_image_epoch": round(tr["s_per_image_epoch"] * 1e6, 1),
                     "worker_peak_rss": tr["peak_rss"], "plan": tr["plan"]})
        print(f"generated {n}: {rows[-1]}", file=sys.stderr)
        if n != sizes[-1]:
            shutil.rmtree(folder, ignore_errors=True)
    out["generated"] = rows
    return folder


# ------------------------------------------------------------------------------------------ report


def verdicts(out: dict[str, Any]) -> dict[str, Any]:
    rss = [r["worker_peak_rss"] for r in out.get("generated", [])]
    for s in out.get("searches", []):
        rss += s["worker_peak_rss"]
    per = [r["us_per_image_epoch"] for r in out.get("generated", [])]
    spread = (max(per) / min(per) - 1.0) if per else None
    ratios = [r["ratio"] for r in out.get("throughput", {}).get("rows", [])]
    return {"max_worker_rss": max(rss) if rss else None, "rss_met": bool(rss) and max(rss) <= GOAL_RSS,
            "time_per_image_spread": spread, "flat_met": spread is not None and spread <= GOAL_FLAT,
            "min_pipeline_ratio": min(ratios) if ratios else None,
            "pipeline_met": bool(ratios) and min(ratios) >= GOAL_PIPELINE}


def mb(v: int | None) -> str:
    return "-" if v is None else f"{v / (1 << 20):,.0f} MB"


def markdown(out: dict[str, Any]) -> str:
    v = out["verdicts"]
    lines = [f"Data at scale (bench/data_scale.py{' --quick' if out['quick'] else ''}), commit {out['commit']}; "
             + common.loadavg_note(out["clock"]), ""]
    if "cifar10" in out:
        c = out["cifar10"]
        lines += [common.table(["CIFAR-10 (55,000 JPEGs)", "seconds", "peak RSS"],
                               [["first load: decode into the cache", c["decode_s"], mb(c["decode_peak_rss"])],
                                ["second load: open the cache", c["open_s"], mb(c["open_peak_rss"])]]),
                  f"\ncache {mb(c['cache_bytes'])} on disk, stored {c['stored_shape']}", ""]
    for s in out.get("searches", []):
        lines += [f"`{s['command']}`: {s['wall_s']:.0f} s; coordinator peak RSS {mb(s['coordinator_peak_rss'])}, "
                  f"workers {', '.join(mb(w) for w in s['worker_peak_rss'])}", ""]
    if out.get("generated"):
        lines += [common.table(["generated images", "decode s", "train images", "first QAT epoch s (with tracing, "
                                "validation)", "later epoch s (median)", "us / image / epoch (later)",
                                "worker peak RSS"],
                               [[f"{r['images']:,}", r["decode_s"], f"{r['train_images']:,}", r["qat_train_s"],
                                 r["steady_epoch_s"], r["us_per_image_epoch"], mb(r["worker_peak_rss"])]
                                for r in out["generated"]]), ""]
    if out.get("throughput"):
        lines += [common.table(["resolution", "pipeline img/s", "training step img/s", "pipeline / step"],
                               [[r["resolution"], f"{r['pipeline_img_s']:,.0f}", f"{r['step_img_s']:,.0f}",
                                 f"{r['ratio']:.1f}x"] for r in out["throughput"]["rows"]]), ""]
    spread = v["time_per_image_spread"]
    ratio = v["min_pipeline_ratio"]
    lines += [f"* worker peak RSS <= 2 GB: **{'met' if v['rss_met'] else 'NOT met'}** (max {mb(v['max_worker_rss'])})",
              f"* time per image per epoch within 20% over the sizes: **{'met' if v['flat_met'] else 'NOT met'}** "
              f"(spread {'-' if spread is None else f'{spread:+.0%}'})",
              f"* pipeline >= 3x the step: **{'met' if v['pipeline_met'] else 'NOT met'}** "
              f"(lowest ratio {'-' if ratio is None else f'{ratio:.1f}x'})"]
    lines += [f"* note: {n}" for n in out.get("notes", [])]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="300 / 600 generated images, no CIFAR-10, no search (tests)")
    ap.add_argument("--sizes", type=int, nargs="+", help="generated folder sizes (default 10000 50000 200000)")
    ap.add_argument("--skip-cifar", action="store_true", help="leave out the CIFAR-10 parts")
    ap.add_argument("--out", type=Path, default=common.RESULTS)
    args = ap.parse_args()
    common.search_env()
    clock = common.Clock()
    out = common.header("data_scale", args.quick)
    out["notes"] = []
    sizes = args.sizes or ([300, 600] if args.quick else [10_000, 50_000, 200_000])
    with tempfile.TemporaryDirectory(prefix="tinynas-data-scale-") as tmp:
        scratch = Path(tmp)
        cache = scratch / "cache"
        env = {**os.environ, "TINYNAS_CACHE_DIR": str(cache), "TF_CPP_MIN_LOG_LEVEL": "2"}
        if not args.quick and not args.skip_cifar:
            cifar_part(env, cache, out)
        last = generated_part(sizes, env, scratch, out, repeats=1 if args.quick else 3)
        out["searches"] = []
        if args.quick:  # the search is left out: its worker alone costs 20 s
            out["throughput"] = _python(THROUGHPUT_SCRIPT, env, str(last), "3", "32")
        elif not args.skip_cifar:
            out["searches"].append(search_part(CIFAR10, env, scratch, trials=2, workers=2))
            out["throughput"] = _python(THROUGHPUT_SCRIPT, env, str(CIFAR10), "60", "32,96")
    out["clock"] = clock.record()
    out["verdicts"] = verdicts(out)
    stem = "data_scale_quick" if args.quick else "data_scale"
    md = markdown(out)
    common.write(args.out, stem, out, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
