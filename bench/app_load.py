"""How long the explorer takes to load and redraw a study of 2,000 trials.

The trial records are GENERATED for this measurement (nobody trains 2,000 candidates for a benchmark): a real run
directory is made with ``nas.search.create_run`` (mcu_vww.yaml, the shipped mobilenetv3 space, MNIST's shape),
then 2,000 points of the space are sampled with a seeded RNG, profiled with the search's own
``nas.search.estimate_record`` and written into the run's Optuna SQLite study with the attributes and constraint
values ``nas search`` writes: points over a limit on paper as PRUNED ``rejected`` trials, a few as FAIL ``failed``,
the rest as COMPLETE ``trained`` ones whose INT8 accuracy is a made-up function of MACs and parameters (plus noise)
and whose "measured" arena and .tflite size are the estimate with 1-2 % noise. No model files exist, so export
is not part of the measurement. The study is marked ``synthetic: true``.

Measured (median of ``--repeat`` runs each, on this machine):

* the study read through ``nas.results`` (``open_run`` + ``trials()``) and the explorer's ``core.load_source``;
* the trial table (``core.trial_frame``) for the run's own target, another TFLM target and the IMX500 (which
  re-profiles every spec from its string: a different runtime);
* the Pareto front on all trials and after a filter (``core.front_mask``, sort-based), next to Optuna's
  ``study.best_trials`` (quadratic) on the same study;
* building the four Plotly charts and their JSON (what goes to the browser);
* the whole Streamlit script under ``AppTest``: a cold load (caches cleared), then redraws after a filter slider,
  after a colour change and after switching the constraint file (server side);
* the same in headless Chromium when it is installed (``TINYNAS_BENCH_BROWSER=0`` skips it): ``nas app`` on a
  local port, time until the charts are drawn on a fresh server, on a second page, and after a slider step.

Writes bench/results/app_load.json and app_load.md.

    python bench/app_load.py [--trials 2000] [--repeat 3] [--out bench/results]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import common  # bench/common.py: run as a script, this folder is first on sys.path
from nas import results, search
from nas import space as space_mod
from nas.hardware import load_target
from nas.metrics import wilson_interval
from nas.storage import open_storage

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "bench" / "results"
FAIL_EVERY = 50  # one trial in 50 is a synthetic training failure
VAL_SAMPLES = 750  # MNIST's validation split (15% of 5,000): what a synthetic accuracy is "measured" on


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median seconds of ``repeat`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def generate(run_dir: Path, n: int, seed: int = 0) -> dict[str, Any]:
    """A run directory with ``n`` generated trials in its SQLite study (see the module docstring)."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    t0 = time.perf_counter()
    req = search.SearchRequest(constraints="mcu_vww.yaml", trials=n, epochs=1, run_dir=str(run_dir), seed=seed,
                               command=("bench/app_load.py",))
    run_dir = search.create_run(req)
    run = results.Run(run_dir)
    sp = run.space()
    target = run.target()
    shape = space_mod.DataShape.from_description(run.dataset_description())
    dists = {k: CategoricalDistribution(list(v)) for k, v in sp.parameters().items()}
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    trials = []
    counts = {"trained": 0, "rejected": 0, "failed": 0}
    t_start = time.time()
    for i in range(n):
        params = space_mod.sample(sp, lambda _name, ch: rng.choice(ch))
        spec = space_mod.to_spec(sp, params, shape)
        estimate, checks = search.estimate_record(spec, target)
        attrs: dict[str, Any] = {"worker": {"host": "synthetic", "pid": 0, "index": 0}, "spec": spec.to_string(),
                                 "estimate": estimate}
        if not all(c.ok for c in checks):
            attrs["status"] = "rejected"
            constraints = {c.name: search.violation(c) for c in checks}
            trial = create_trial(state=TrialState.PRUNED, params=params, distributions=dists, user_attrs=attrs,
                                 constraints=constraints)
            counts["rejected"] += 1
        elif i % FAIL_EVERY == FAIL_EVERY - 1:
            attrs.update(status="failed", reason="CandidateError: synthetic failure (bench/app_load.py)",
                         trial_dir=f"trials/{i}")
            trial = create_trial(state=TrialState.FAIL, params=params, distributions=dists, user_attrs=attrs)
            counts["failed"] += 1
        else:
            macs, n_params = estimate["macs"], estimate["params"]
            acc = (0.62 + 0.33 * (1 - math.exp(-macs / 2.5e6)) + 0.012 * math.log2(max(n_params, 1e3) / 1e4)
                   + float(noise.normal(0, 0.012)))
            acc = float(min(0.995, max(0.1, acc)))
            flt = float(min(0.997, acc + abs(noise.normal(0.004, 0.004))))
            arena = int(round(estimate["memory_bytes"] * (1 + noise.normal(0, 0.01))))
            tflite = int(round(estimate["flash_bytes"] * (1 + noise.normal(0, 0.02))))
            metrics = {"spec": spec.to_string(), "dataset": "mnist", "task": "classification",
                       "metric_name": "accuracy", "higher_is_better": True, "float_metric": flt, "int8_metric": acc,
                       "metric_split": "val", "metric_samples": VAL_SAMPLES,
                       "int8_interval": list(wilson_interval(round(acc * VAL_SAMPLES), VAL_SAMPLES)),
                       "quantization_delta": acc - flt, "tflite_bytes": tflite, "tflm_arena_bytes": arena,
                       "imx500_bytes": int(estimate["onchip_bytes"]), "measured_memory_bytes": arena,
                       "estimated_memory_bytes": estimate["memory_bytes"],
                       "estimated_flash_bytes": estimate["flash_bytes"], "macs": macs, "params": n_params,
                       "timings": {"qat_train": 20.0, "convert": 2.5}, "seconds": 30.0, "synthetic": True}
            measured = search.measured_checks(estimate, metrics, target)
            attrs.update(status="trained", trial_dir=f"trials/{i}", metrics=metrics)
            trial = create_trial(state=TrialState.COMPLETE, params=params, distributions=dists, user_attrs=attrs,
                                 values=[acc, float(arena), float(estimate["energy_mj"])],
                                 constraints={c.name: search.violation(c) for c in measured})
            counts["trained"] += 1
        trials.append(trial)
    # Writing 2,000 trials commits 2,000 times: without fsync on each commit (generation only; the database is
    # the same SQLite file the search writes) it takes seconds instead of minutes.
    from sqlalchemy import event

    storage = open_storage(run.url)
    event.listen(storage.engine, "connect", lambda conn, _rec: conn.execute("PRAGMA synchronous=OFF"))
    storage.engine.dispose()
    study = optuna.load_study(study_name=run.study_name, storage=storage)
    study.set_user_attr("synthetic", True)
    study.add_trials(trials)
    storage.engine.dispose()
    return {"run_dir": str(run_dir), "trials": n, **counts, "generate_s": round(time.perf_counter() - t0, 2),
            "started": t_start}


def measure(run_dir: Path, repeat: int) -> dict[str, Any]:
    from nas.app import core, figures

    out: dict[str, Any] = {}
    out["results_read_s"], records = _timed(lambda: results.open_run(run_dir).trials(), repeat)
    out["load_source_s"], loaded = _timed(lambda: core.load_source(str(run_dir)), repeat)
    out["table_own_target_s"], df = _timed(lambda: core.trial_frame(loaded), repeat)
    coral = load_target("coral_micro")
    imx = load_target("imx500")
    out["table_other_tflm_target_s"], _ = _timed(lambda: core.trial_frame(loaded, coral), repeat)

    def imx_table() -> Any:
        core.spec_profile.cache_clear()  # a different runtime: every spec is profiled again from its string
        return core.trial_frame(loaded, imx)

    out["table_imx500_target_s"], _ = _timed(imx_table, repeat)
    keep_all = np.ones(len(df), dtype=bool)
    out["front_all_s"], front = _timed(lambda: core.front_mask(df, keep_all, True), repeat)
    hi = float(np.nanpercentile(df["memory_kb"], 60))
    keep = core.filter_mask(df, {"memory": (0.0, hi)})
    out["filter_and_front_s"], _ = _timed(lambda: core.front_mask(df, core.filter_mask(df, {"memory": (0.0, hi)}),
                                                                  True), repeat)
    run = results.open_run(run_dir)
    assert sorted(df.loc[front, "number"]) == sorted(r.number for r in run.pareto(records)), "front mismatch"
    study = run.study()
    out["optuna_best_trials_s"], best = _timed(lambda: study.best_trials, 1)
    view = core.with_front(df, keep_all, True)
    limits = core.limit_lines(run.target())

    def build() -> list[Any]:
        return [figures.tradeoff_3d(view, "category", "status", "accuracy", limits),
                figures.projection(view, "memory_kb", "metric", "category", "status", "accuracy", limits),
                figures.projection(view, "energy_mj", "metric", "category", "status", "accuracy", limits),
                figures.projection(view, "memory_kb", "energy_mj", "category", "status", "accuracy", limits,
                                   include_untrained=True)]

    out["figures_build_s"], figs = _timed(build, repeat)
    out["figures_json_s"], payload = _timed(lambda: [f.to_json() for f in figs], repeat)
    out["figures_json_bytes"] = sum(len(p) for p in payload)
    out["front_size"] = int(front.sum())
    out["front_size_filtered"] = int(core.front_mask(df, keep, True).sum())
    out["records"] = len(records)
    out["optuna_best_trials"] = len(best)
    out.update(apptest(run_dir, repeat))
    if os.environ.get("TINYNAS_BENCH_BROWSER", "1") != "0":
        out.update(browser(run_dir, repeat))
    return out


def apptest(run_dir: Path, repeat: int) -> dict[str, Any]:
    """The whole script under Streamlit's AppTest: cold load, then three kinds of redraw."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    def fresh() -> Any:
        st.cache_data.clear()
        at = AppTest.from_file(str(ROOT / "nas" / "app" / "explorer.py"), default_timeout=600)
        at.session_state["source"] = str(run_dir)
        return at

    cold, warm, slider_s, colour_s, target_s = [], [], [], [], []
    for _ in range(repeat):
        at = fresh()
        t0 = time.perf_counter()
        at.run()
        cold.append(time.perf_counter() - t0)
        assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
        t0 = time.perf_counter()
        at.run()
        warm.append(time.perf_counter() - t0)
        s = next(x for x in at.slider if x.label == "Peak memory (KB)")
        lo, hi = s.value
        t0 = time.perf_counter()
        s.set_value((lo, hi * 0.4)).run()
        slider_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        at.selectbox(key="colour").set_value("p:width").run()
        colour_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        at.selectbox(key="target_choice").set_value("coral_micro").run()
        target_s.append(time.perf_counter() - t0)
        assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    med = statistics.median
    return {"app_cold_load_s": med(cold), "app_rerun_s": med(warm), "app_filter_redraw_s": med(slider_s),
            "app_colour_redraw_s": med(colour_s), "app_target_switch_s": med(target_s)}


SLIDER_VALUE = """(() => { const s = document.querySelector('input[type="range"][aria-label$="end"]');
  return s ? s.value : null; })()"""
# the upper thumb of the first range slider (peak memory): focused, ArrowLeft moves it down one step
SLIDER_PROBE = """(() => { const s = document.querySelector('input[type="range"][aria-label$="end"]');
  if (!s) return false; s.focus(); return document.activeElement === s; })()"""


def browser(run_dir: Path, repeat: int) -> dict[str, Any]:
    """The same study in headless Chromium (``nas app`` on a local port, DevTools protocol): seconds from opening
    the page until the four trade-off charts are drawn and Streamlit is idle, on a fresh server (the study read
    included) and on a second page (cached read); then after a filter slider moves one step (keyboard)."""
    from nas.app import screenshot

    if not screenshot.find_chromium():
        return {}
    idle = 1.0
    cold, warm, redraw = [], [], []
    for _ in range(repeat):
        with screenshot.serve(str(run_dir), timeout=120) as url:
            for i in range(2):
                with screenshot.DevTools(size=(1600, 1400)) as dt:
                    t0 = time.perf_counter()
                    dt.navigate(url)
                    dt.wait_ready(4, timeout_s=300, idle_s=idle)
                    (cold if i == 0 else warm).append(time.perf_counter() - t0 - idle)
                    if i == 1 and dt.evaluate(SLIDER_PROBE):
                        before = dt.evaluate(SLIDER_VALUE)
                        t0 = time.perf_counter()
                        dt.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": "ArrowLeft", "code": "ArrowLeft",
                                                           "windowsVirtualKeyCode": 37})
                        dt.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": "ArrowLeft", "code": "ArrowLeft",
                                                           "windowsVirtualKeyCode": 37})
                        time.sleep(0.3)  # the rerun starts
                        dt.wait_ready(4, timeout_s=300, idle_s=idle)
                        seconds = time.perf_counter() - t0 - idle
                        if dt.evaluate(SLIDER_VALUE) != before:  # the slider did move: a rerun happened
                            redraw.append(seconds)
    med = statistics.median
    out = {"browser_first_page_s": med(cold), "browser_second_page_s": med(warm)}
    if redraw:
        out["browser_filter_redraw_s"] = med(redraw)
    return out


ROWS = [
    ("results_read_s", "study read: `nas.results.open_run(...).trials()` (SQLite)"),
    ("load_source_s", "explorer's read (`core.load_source`: the above + studies list)"),
    ("table_own_target_s", "trial table, the run's own target"),
    ("table_other_tflm_target_s", "trial table re-checked against coral_micro.yaml (TFLM)"),
    ("table_imx500_target_s", "trial table re-checked against imx500.yaml (every spec re-profiled)"),
    ("front_all_s", "Pareto front of all trials (`pareto_mask`, sort-based)"),
    ("filter_and_front_s", "filter (memory <= 60th percentile) + front again"),
    ("optuna_best_trials_s", "for comparison: Optuna's `study.best_trials` (quadratic)"),
    ("figures_build_s", "build the 4 Plotly charts"),
    ("figures_json_s", "their JSON for the browser"),
    ("app_cold_load_s", "**app, cold load** (AppTest, caches cleared): read + table + front + charts + trial page"),
    ("app_rerun_s", "**app, rerun with nothing changed** (cached read)"),
    ("app_filter_redraw_s", "**app, redraw after moving the memory slider**"),
    ("app_colour_redraw_s", "**app, redraw after changing colour-by**"),
    ("app_target_switch_s", "**app, redraw after switching the constraint file** (table rebuilt)"),
    ("browser_first_page_s",
     "**browser: open the page on a fresh server** until the 4 charts are drawn (read included)"),
    ("browser_second_page_s", "**browser: open a second page** (cached read) until the charts are drawn"),
    ("browser_filter_redraw_s", "**browser: move the memory slider one step** until the charts are redrawn"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep", type=Path, help="write the generated run here (kept) instead of a temporary folder")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="tinynas-app-load-") as tmp:
        run_dir = args.keep or Path(tmp) / "run"
        gen = generate(run_dir, args.trials)
        print(f"generated {gen['trials']} trials ({gen['trained']} trained, {gen['rejected']} rejected, "
              f"{gen['failed']} failed) in {gen['generate_s']} s", flush=True)
        load_before = os.getloadavg()[0]
        m = measure(Path(gen["run_dir"]), args.repeat)
        load_after = os.getloadavg()[0]
    for k, v in m.items():
        print(f"{k:28s} {v}")
    import optuna
    import plotly
    import streamlit

    out = {"benchmark": "app_load", "commit": common.commit(), "generated_trials": True, "trials": gen["trials"],
           "trained": gen["trained"], "rejected": gen["rejected"], "failed": gen["failed"],
           "generate_s": gen["generate_s"], "repeat": args.repeat,
           "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                       "python": platform.python_version(),
                       "load_average_1min": [round(load_before, 2), round(load_after, 2)]},
           "versions": {"streamlit": streamlit.__version__, "plotly": plotly.__version__, "optuna": optuna.__version__},
           "results": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "app_load" if args.trials == 2000 else f"app_load_{args.trials}"
    (args.out / f"{stem}.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [f"# Explorer load / redraw time, {gen['trials']:,} trials, commit {out['commit']}", "",
             f"The {gen['trials']:,} trial records were **generated for this measurement** by `bench/app_load.py`: "
             f"points of the shipped mobilenetv3 space sampled with a fixed seed, profiled with the search's own "
             f"`estimate_record` against mcu_vww.yaml and written into a real run directory's Optuna SQLite study "
             f"with the attributes `nas search` writes ({gen['trained']:,} trained with made-up accuracies and "
             f"1-2 % noise on the measured memory, {gen['rejected']:,} rejected on paper, {gen['failed']} failed). "
             f"No model was trained. Median of {args.repeat} runs; {os.cpu_count()} CPU cores (1-minute load average "
             f"{load_before:.1f} before and {load_after:.1f} after the measurement; above {os.cpu_count()}, other "
             f"work was sharing the cores); Streamlit "
             f"{streamlit.__version__}, Plotly {plotly.__version__}, Optuna {optuna.__version__}. App timings are the "
             f"Streamlit script's server-side run under `AppTest`; the browser rows are headless Chromium "
             f"(software WebGL: no GPU here, `--disable-gpu`) driven through its DevTools protocol, timed until "
             f"Streamlit is idle and the charts are in the page.", "",
             "| step | seconds |", "|---|---:|"]
    for key, label in ROWS:
        if key in m:
            lines.append(f"| {label} | {m[key]:.3f} |")
    lines += ["", f"Pareto front: {m['front_size']} of {m['records']:,} trials ({m['front_size_filtered']} after the "
                  f"filter); the four charts' JSON is {m['figures_json_bytes'] / 1e6:.2f} MB. Generating the study "
                  f"took {gen['generate_s']:.1f} s (not part of the app's time)."]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / (stem + '.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
