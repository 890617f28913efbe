"""Training-step throughput on this machine's CPUs: images per second, float vs QAT, by batch size.

For each model the float model and its QAT wrap (``builder.build`` / ``builder.quantize``, as the trainer makes
them) are compiled as ``nas.tf.train`` compiles them (Adam; sparse cross-entropy and accuracy, or Huber and
the Euclidean error for the gaze head) and fed random inputs (10 classes). One *raw step* is Keras' own
train function on a constant batch already in memory: what ``fit`` runs per step, without its callbacks,
progress bookkeeping or input pipeline. After ``--warmup`` steps (the first one traces the step), steps run
in rounds of at least ``--round-s`` seconds, float and QAT alternating, ``--rounds`` rounds each; the table
gives the median round's images / s.

For the models of ``--pipeline`` (QAT) two more feeds are timed at each batch size, each as one
``model.fit`` epoch of the same number of steps after a warm-up epoch:
``fit, constant batch`` (a cached batch repeated: what ``fit`` adds to the raw step) and
``fit, pipeline`` (``nas.tf.pipeline.to_tf_dataset`` over random arrays with the "classification"
augmentation, shuffled: what the real input pipeline costs on top). Also recorded per model: the float
build, the QAT wrap and the first (tracing) step. Writes bench/results/throughput.json and .md.

    python bench/throughput.py [--quick] [--batches 32 64 128 256] [--models NAME ...]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

import common  # bench/common.py: run as a script, this folder is first on sys.path
from nas.spec import ArchSpec, preset

RESULTS = Path(__file__).resolve().parent / "results"
CLASSES = 10


def models() -> dict[str, ArchSpec]:
    """The presets at their resolutions (10 classes) and the small model of the issue's 16.6 s build,
    smallest first (a run cut short has the small ones)."""
    mnv3 = preset("mobilenetv3-small").replace(classes=CLASSES)
    return {
        "mnv3-small-0.5-32": mnv3.replace(resolution=32, width=0.5),
        "mnv1-vww-96": preset("mobilenetv1-vww").replace(classes=CLASSES),
        "mnv3-small-96": mnv3.replace(resolution=96),
        "tinytracker-128": preset("tinytracker"),
        "mnv3-small-224": mnv3,
    }


def _compile(model: Any, spec: ArchSpec) -> None:
    import tf_keras as keras

    from nas.tf import train

    opt = keras.optimizers.Adam(learning_rate=1e-3)
    if spec.head.kind == "classifier":
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    else:
        model.compile(optimizer=opt, loss=keras.losses.Huber(delta=1.0), metrics=[train.euclidean_error])


def _data(spec: ArchSpec, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, spec.resolution, spec.resolution, spec.input_channels), dtype=np.float32)
    if spec.head.kind == "classifier":
        return x, rng.integers(0, CLASSES, n).astype(np.int64)
    return x, rng.uniform(-10, 10, (n, 2)).astype(np.float32)


class Stepper:
    """Keras' train function of one compiled model (made once per model, shared by every feed), stepping
    over ``it``."""

    def __init__(self, model: Any, it: Any, batch: int) -> None:
        self.model, self.batch, self.it = model, batch, it
        self.fn = model.make_train_function()

    @classmethod
    def constant(cls, model: Any, x: np.ndarray, y: np.ndarray) -> "Stepper":
        import tensorflow as tf

        # batched from slices, so the batch dimension is unknown (None) as in fit's input: the step is
        # traced once per model and serves every batch size
        batch = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x)).take(1).cache()
        return cls(model, iter(batch.repeat()), len(x))

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            logs = self.fn(self.it)
        float(logs["loss"])  # wait for the last step
        return time.perf_counter() - t0


def _cpu() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(c: tuple[float, float]) -> tuple[float, float]:
    """(wall s, process CPU s) since ``c``."""
    return round(time.perf_counter() - c[0], 2), round(time.process_time() - c[1], 2)


def raw_steps(pair: dict[str, Stepper], warmup: int, rounds: int, round_s: float, max_steps: int) -> dict[str, Any]:
    """Images / s of each stepper of ``pair`` at one batch size, in alternating rounds."""
    out: dict[str, Any] = {}
    steps = {}
    for mode, st in pair.items():
        c = _cpu()
        st.run(1)
        out[f"{mode}_first_step_s"] = _since(c)  # (wall, CPU): traces when this batch shape is new
        rest = st.run(warmup - 1) / (warmup - 1) if warmup > 1 else out[f"{mode}_first_step_s"][0]
        # steps per round: enough for round_s, from the warm-up's pace
        steps[mode] = max(1, min(max_steps, math.ceil(round_s / max(rest, 1e-3))))
    rates: dict[str, list[float]] = {m: [] for m in pair}
    cpu: dict[str, list[float]] = {m: [] for m in pair}
    for r in range(rounds):
        for mode in (list(pair) if r % 2 == 0 else list(pair)[::-1]):
            st = pair[mode]
            c0 = time.process_time()
            wall = st.run(steps[mode])
            rates[mode].append(steps[mode] * st.batch / wall)
            cpu[mode].append((time.process_time() - c0) / wall)
    for mode in pair:
        out[f"{mode}_img_s"] = round(statistics.median(rates[mode]), 1)
        out[f"{mode}_rounds_img_s"] = [round(v, 1) for v in rates[mode]]
        out[f"{mode}_step_ms"] = round(1000 * pair[mode].batch / out[f"{mode}_img_s"], 1)
        out[f"{mode}_steps_per_round"] = steps[mode]
        out[f"{mode}_cpu_busy"] = round(statistics.median(cpu[mode]), 2)  # process CPU s per wall s
    return out


def feeds(model: Any, spec: ArchSpec, batch: int, steps: int, raw_ms: float) -> dict[str, Any]:
    """The QAT step fed by the augmented pipeline, and ``fit`` epochs of ``steps`` steps on both feeds."""
    import tensorflow as tf

    from nas.tf import pipeline

    x, y = _data(spec, batch * steps, seed=1)
    const = tf.data.Dataset.from_tensor_slices((x[:batch], y[:batch])).batch(batch).take(1).cache().repeat(steps)
    ds = pipeline.to_tf_dataset(x, y, batch, shuffle=True, seed=0, augment="classification")
    out: dict[str, Any] = {}
    # the pipeline alone: how fast it makes batches with nothing consuming them
    it = iter(ds.repeat())
    next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    out["pipeline_alone_img_s"] = round(batch * steps / (time.perf_counter() - t0), 1)
    # the raw step fed by the pipeline (steady state: the epoch boundary is not in it)
    st = Stepper(model, it, batch)
    st.run(2)
    out["raw_pipeline_img_s"] = round(batch * steps / st.run(steps), 1)
    for name, feed in (("fit_constant", const), ("fit_pipeline", ds)):
        model.fit(feed, epochs=1, verbose=0)  # warm-up epoch
        t0 = time.perf_counter()
        model.fit(feed, epochs=1, verbose=0)
        wall = time.perf_counter() - t0
        out[f"{name}_img_s"] = round(batch * steps / wall, 1)
        out[f"{name}_step_ms"] = round(1000 * wall / steps, 1)
    out["fit_overhead_vs_raw"] = round(out["fit_constant_step_ms"] / raw_ms, 2)
    out["fit_steps"] = steps
    return out


def bench_model(name: str, spec: ArchSpec, batches: list[int], args: argparse.Namespace) -> dict[str, Any]:
    import tf_keras as keras

    from nas.tf import builder

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    c = _cpu()
    float_model = builder.build(spec)
    float_build = _since(c)
    c = _cpu()
    qat_model = builder.quantize(float_model)
    row: dict[str, Any] = {"model": name, "spec": spec.to_string(), "resolution": spec.resolution,
                           "params": int(float_model.count_params()), "float_build_s": float_build,
                           "quantize_s": _since(c), "batches": []}
    for m in (float_model, qat_model):
        _compile(m, spec)
    for batch in batches:
        x, y = _data(spec, batch)
        pair = {"float": Stepper.constant(float_model, x, y), "qat": Stepper.constant(qat_model, x, y)}
        cell: dict[str, Any] = {"batch": batch, **raw_steps(pair, args.warmup, args.rounds, args.round_s,
                                                              args.max_steps)}
        cell["qat_slowdown"] = round(cell["float_img_s"] / cell["qat_img_s"], 2)
        if name in args.pipeline:
            cell.update(feeds(qat_model, spec, batch, args.fit_steps, cell["qat_step_ms"]))
        row["batches"].append(cell)
        print(f"{name} batch {batch}: float {cell['float_img_s']} img/s, qat {cell['qat_img_s']} img/s"
              + (f", qat on pipeline {cell['raw_pipeline_img_s']}, fit {cell['fit_constant_img_s']}, "
                 f"fit on pipeline {cell['fit_pipeline_img_s']}"
                 if "fit_constant_img_s" in cell else ""), flush=True)
    return row


def _wc(pair: list[float]) -> str:
    return f"{pair[0]:.1f} ({pair[1]:.1f})"


def markdown(out: dict[str, Any]) -> str:
    batches = sorted({c["batch"] for r in out["rows"] for c in r["batches"]})
    head = ["model", "params", "mode"] + [f"batch {b}" for b in batches]
    rows = []
    for r in out["rows"]:
        cells = {c["batch"]: c for c in r["batches"]}
        for mode in ("float", "qat"):
            rows.append([r["model"], f"{r['params']:,}", mode.upper() if mode == "qat" else mode]
                        + [f"{cells[b][f'{mode}_img_s']:.0f}" if b in cells else "-" for b in batches])
    build = [[r["model"], _wc(r["float_build_s"]), _wc(r["quantize_s"]),
              " / ".join(_wc(c["float_first_step_s"]) for c in r["batches"]),
              " / ".join(_wc(c["qat_first_step_s"]) for c in r["batches"])] for r in out["rows"]]
    lines = [f"Training-step throughput, commit {out['commit']}", "",
             "Images / s of a raw train step (Keras' train function on a constant batch in memory; median of "
             f"{out['settings']['rounds']} rounds of >= {out['settings']['round_s']} s, float and QAT alternating, "
             f"after {out['settings']['warmup']} warm-up steps), 10 classes, random inputs:", "",
             common.table(head, rows), ""]
    feeds = [(r["model"], c) for r in out["rows"] for c in r["batches"] if "fit_constant_img_s" in c]
    if feeds:
        lines += ["QAT, what `fit` and the input pipeline add (images / s; `fit` epochs of "
                  f"{feeds[0][1]['fit_steps']} steps after a warm-up epoch):", "",
                  common.table(["model", "batch", "raw step, constant batch", "raw step, augmented pipeline",
                                "fit, constant batch", "fit, augmented pipeline", "pipeline alone"],
                               [[m, c["batch"], f"{c['qat_img_s']:.0f}", f"{c['raw_pipeline_img_s']:.0f}",
                                 f"{c['fit_constant_img_s']:.0f}", f"{c['fit_pipeline_img_s']:.0f}",
                                 f"{c['pipeline_alone_img_s']:.0f}"] for m, c in feeds]), ""]
    lines += ["Build, wall s (process CPU s): float model, QAT wrap; first step by batch size (the first one "
              "traces the step; the float model's also pays the process's one-time TensorFlow costs):", "",
              common.table(["model", "float build", "QAT wrap", "float first step", "QAT first step"], build), "",
              common.loadavg_note(out["clock"]) + "."]
    if out["quick"]:
        lines.insert(1, "(quick mode: one small model, one batch size, a few steps)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one small model, batch 32, a few steps (the tests)")
    ap.add_argument("--models", nargs="*", default=None, help=f"subset of {sorted(models())}")
    ap.add_argument("--batches", type=int, nargs="*", default=[32, 64, 128, 256])
    ap.add_argument("--warmup", type=int, default=2, help="warm-up steps per model and batch (default 2)")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds per mode (default 2)")
    ap.add_argument("--round-s", type=float, default=1.5, help="least seconds per round (default 1.5)")
    ap.add_argument("--max-steps", type=int, default=20, help="most steps per round (default 20)")
    ap.add_argument("--pipeline", nargs="*", default=["mnv3-small-0.5-32", "mnv1-vww-96"],
                    help="models whose fit / pipeline feeds are timed too")
    ap.add_argument("--fit-steps", type=int, default=6, help="steps of each timed fit epoch (default 6)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    clock = common.Clock()
    specs = models()
    if args.quick:
        args.models, args.batches, args.pipeline = ["mnv3-small-0.5-32"], [32], ["mnv3-small-0.5-32"]
        args.warmup, args.rounds, args.round_s, args.max_steps, args.fit_steps = 2, 2, 0.2, 3, 2
    names = args.models or list(specs)
    settings = {k: getattr(args, k) for k in ("batches", "warmup", "rounds", "round_s", "max_steps", "pipeline",
                                              "fit_steps")}
    stem = "throughput_quick" if args.quick else "throughput"
    rows: list[dict[str, Any]] = []
    for n in names:  # the files are rewritten after each model: a run cut short keeps what it measured
        rows.append(bench_model(n, specs[n], args.batches, args))
        out = {**common.header("throughput", args.quick, settings=settings), "rows": rows, "clock": clock.record()}
        js, md = common.write(args.out, stem, out, markdown(out))
    print(md.read_text())


if __name__ == "__main__":
    main()
