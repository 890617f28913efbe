"""tinynas Pareto explorer: ``nas app RUN_DIR_OR_STORAGE_URL`` or ``streamlit run nas/app/explorer.py -- RUN_DIR``.

Reads a run only through :mod:`nas.results` (via :mod:`nas.app.core`); draws the INT8 metric / peak memory / energy
trade-off in 3-D and its three 2-D projections with the Pareto front, the constraint limits, filters, a
re-check against any constraint file, a trial page and the Export button (``nas export``'s own function).

Arguments after ``--``: ``SOURCE`` (run directory, ``study.db`` or storage URL), ``--storage URL`` (the run's
storage URL with its password), ``--refresh SECONDS`` (auto-refresh period). ``$TINYNAS_APP_SOURCE`` is used
when no ``SOURCE`` is given (and ``$TINYNAS_APP_STORAGE`` / ``$TINYNAS_APP_REFRESH`` for the options).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from nas.app import core, figures
from nas.formatting import kb
from nas.metrics import split_name

ENV_SOURCE = "TINYNAS_APP_SOURCE"
ENV_STORAGE = "TINYNAS_APP_STORAGE"
ENV_REFRESH = "TINYNAS_APP_REFRESH"
CACHE_TTL_S = 600          # study reads are cached; auto-refresh asks for a fresh read when it is on
DEFAULT_REFRESH_S = 5.0
FRESH_S = 30               # how old a cached read a newly opened page may get
OWN = "__own__"
CUSTOM = "__custom__"


@dataclass(frozen=True)
class Defaults:
    source: str
    storage: str | None
    refresh: float


def cli_defaults() -> Defaults:
    """Arguments given after ``--`` to ``streamlit run`` (only when this script is the one being run)."""
    source, storage = os.environ.get(ENV_SOURCE, ""), os.environ.get(ENV_STORAGE) or None
    refresh = float(os.environ.get(ENV_REFRESH) or DEFAULT_REFRESH_S)
    argv = sys.argv
    try:
        ours = bool(argv) and Path(argv[0]).resolve() == Path(__file__).resolve()
    except OSError:
        ours = False
    if ours:
        p = argparse.ArgumentParser(prog="explorer.py", add_help=False)
        p.add_argument("source", nargs="?")
        p.add_argument("--storage")
        p.add_argument("--refresh", type=float)
        args, _ = p.parse_known_args(argv[1:])
        source = args.source or source
        storage = args.storage or storage
        refresh = args.refresh or refresh
    return Defaults(source, storage, max(0.5, float(refresh)))


# --------------------------------------------------------------------------------------------- cached reads


@st.cache_data(ttl=CACHE_TTL_S, max_entries=16, show_spinner="Reading the study…")
def load(source: str, study: str | None, storage: str | None, token: float) -> core.Loaded:
    """One read of the study (``token`` changes when a fresh read is wanted)."""
    return core.load_source(source, study, storage)


@st.cache_data(ttl=CACHE_TTL_S, max_entries=32, show_spinner=False)
def table(source: str, study: str | None, storage: str | None, token: float, target_key: str | None,
          target_stamp: float = 0.0) -> pd.DataFrame:
    """The trial table, re-checked against ``target_key`` (``target_stamp``: its mtime, so an edit re-checks)."""
    loaded = load(source, study, storage, token)
    target = core.load_target(target_key) if target_key else None
    return core.trial_frame(loaded, target)


@st.cache_resource(ttl=CACHE_TTL_S, max_entries=64, show_spinner=False)
def chart(kind: str, source: str, study: str | None, storage: str | None, token: float, target_key: str | None,
          target_stamp: float, ranges: tuple, colour: str, show_bad: bool, log_axes: bool) -> Any:
    """One of the four trade-off charts, built once per (data, target, filters, colour, toggles).

    ``cache_resource`` hands back the same Figure object (no copy): Streamlit only reads it. Redraws that change
    none of these (picking a trial, exporting) skip building the figures.
    """
    loaded = load(source, study, storage, token)
    df = table(source, study, storage, token, target_key, target_stamp)
    target_path = target_key or loaded.target_path
    target = core.load_target(target_path) if target_path else None
    limits = core.limit_lines(target)
    keep = core.filter_mask(df, dict(ranges))
    view = core.with_front(df, keep, loaded.higher_is_better)
    shown = view if show_bad else view[view["category"].isin(("front", "feasible"))]
    label = core.colour_options(df).get(colour, colour)
    name = loaded.metric_name
    if kind == "3d":
        return figures.tradeoff_3d(shown, colour, label, name, limits, log_axes)
    x, y = {"memory_metric": ("memory_kb", "metric"), "energy_metric": ("energy_mj", "metric"),
            "memory_energy": ("memory_kb", "energy_mj")}[kind]
    return figures.projection(shown, x, y, colour, label, name, limits, include_untrained=show_bad and kind ==
                              "memory_energy", log_axes=log_axes, height=520 if kind == "memory_metric" else 380)


@st.cache_resource(show_spinner=False)
def shipped_targets() -> dict[str, str]:
    """Shipped target name -> its file, found the way ``--constraints NAME`` finds it."""
    from nas.hardware import resolve_target_path, shipped_targets as names

    return {n: str(resolve_target_path(n)) for n in names()}


# --------------------------------------------------------------------------------------------- pieces


def _mtime(path: str | None) -> float:
    try:
        return os.path.getmtime(path) if path else 0.0
    except OSError:
        return 0.0


def take_selection(key: str, event: Any) -> None:
    """A click (or box / lasso) on a chart picks the trial shown below, once per new selection."""
    points = []
    try:
        points = list(event.selection.points) if event is not None else []
    except (AttributeError, KeyError):
        points = []
    numbers = core.selected_numbers(points)
    seen = f"_seen_{key}"
    if st.session_state.get(seen) != numbers:
        st.session_state[seen] = numbers
        if numbers:
            st.session_state["trial_pick"] = numbers[0]


def sidebar_target(loaded: core.Loaded) -> tuple[str | None, Any, bool]:
    """The constraint file chosen in the sidebar: (key for the table, Target or None, is it the run's own)."""
    shipped = shipped_targets()
    options = [OWN, *shipped, CUSTOM]
    own_label = (f"run's own: {loaded.target_name}" if loaded.target_path else "none (the run's file is not here)")
    labels = {OWN: own_label, CUSTOM: "another file…", **{k: f"{k}.yaml" for k in shipped}}
    choice = st.selectbox("Constraint file", options, key="target_choice", format_func=lambda k: str(labels.get(k)),
                          help="Re-checks every trial against another target from its stored figures (measured "
                               "memory and .tflite size, MACs; latency and energy from that target's model). "
                               "Nothing is retrained.")
    if choice == OWN:
        if not loaded.target_path:
            return None, None, True
        return None, core.load_target(loaded.target_path), True
    path = shipped.get(choice) if choice != CUSTOM else st.text_input("Constraint file path", key="target_path")
    if not path:
        return None, (core.load_target(loaded.target_path) if loaded.target_path else None), True
    try:
        target = core.load_target(path)
    except core.AppError as e:  # a typo in the file: say where, keep the run's own target
        st.error(f"{e}")
        return None, (core.load_target(loaded.target_path) if loaded.target_path else None), True
    return str(Path(path).expanduser().resolve()), target, False


def sidebar_filters(df: pd.DataFrame, limits: dict[str, tuple[float, str]], metric_name: str) -> dict[str, Any]:
    ranges: dict[str, Any] = {}
    specs = [("memory", "Peak memory (KB)", "%.1f"), ("macs", "MACs (M)", "%.2f"), ("latency", "Latency (ms)", "%.2f"),
             ("energy", "Energy (mJ)", "%.3f"), ("metric", f"INT8 {metric_name}", "%.3f")]
    for name, label, fmt in specs:
        column = core.FILTER_COLUMNS[name][0]
        if not df[column].notna().any():
            ranges[name] = None
            continue
        lo, hi = core.slider_bounds(df, column, (limits.get(column) or (None,))[0])
        if hi <= lo:
            ranges[name] = None
            continue
        step = (hi - lo) / 500.0
        ranges[name] = st.slider(label, min_value=float(lo), max_value=float(hi), value=(float(lo), float(hi)),
                                 step=float(step), format=fmt, key=f"filter_{name}_{lo:g}_{hi:g}")
    return ranges


def watcher(source: str, study: str | None, storage: str | None, shown: core.Loaded, every: float) -> None:
    """Every ``every`` seconds a fresh read of the study; when a trial was added or changed status, the whole app
    is redrawn with it. A full redraw (a slider moved) does not read again unless the data shown is older than
    ``every``."""

    @st.fragment(run_every=every)
    def _tick() -> None:
        now = time.time()
        checked = st.session_state.get("_checked", shown.loaded_at)
        if now - max(checked, shown.loaded_at) >= 0.9 * every:
            st.session_state["_checked"] = now
            try:
                fresh = load(source, study, storage, now)
            except core.AppError as e:
                st.caption(f"auto-refresh: {e}")
                return
            if fresh.fingerprint() != shown.fingerprint():
                st.session_state["token"] = now
                st.rerun(scope="app")
        st.caption(f"auto-refresh every {every:g} s · checked {time.strftime('%H:%M:%S')} · "
                   f"{len(shown.records)} trials, {shown.running} running")

    _tick()


def header(loaded: core.Loaded, df: pd.DataFrame, front_n: int, shown: int, target: Any, own: bool) -> None:
    s = loaded.summary()
    where = loaded.run_dir or loaded.url
    tgt = target.name if target is not None else "no constraint file"
    st.markdown(f"#### {loaded.study_name}")
    budget = f" · budget used {s.used} of {s.budget}" if s.budget else ""
    st.caption(f"{where} · data {loaded.dataset or '-'} · target **{tgt}**"
               + ("" if own else " (re-checked from stored figures)")
               + f"{budget} · read {len(loaded.records)} trials in {loaded.seconds:.2f} s")
    cols = st.columns(6)
    feasible = int((df["category"] == "feasible").sum())
    cols[0].metric("trained", s.trained, help="trained, converted to INT8, evaluated and measured")
    cols[1].metric("feasible", feasible, help="trained and every limit of the chosen constraint file met")
    cols[2].metric("Pareto front", front_n, help="of the trials inside the filters")
    cols[3].metric("rejected on paper", s.rejected, help="broke a limit on the analytic profile: never trained")
    cols[4].metric("failed", s.failed + s.interrupted + s.unused)
    cols[5].metric("running", s.running)
    if shown < len(df):
        st.caption(f"filters show {shown} of {len(df)} trials")


def trial_options(view: pd.DataFrame, df: pd.DataFrame, higher: bool) -> list[int]:
    """Trials to pick from: the front first (best metric first), then the other trained ones, then the rest."""
    order = {"front": 0, "feasible": 1, "infeasible": 2, "running": 3, "failed": 4, "rejected": 5}
    cat = df.set_index("number")["category"].to_dict()
    cat.update(view.set_index("number")["category"].to_dict())
    metric = df.set_index("number")["metric"].to_dict()
    sign = -1.0 if higher else 1.0

    def key(n: int) -> tuple:
        m = metric.get(n)
        return order.get(cat.get(n), 9), sign * m if m == m and m is not None else 0.0, n

    return sorted(cat, key=key)


def trial_labels(df: pd.DataFrame, view: pd.DataFrame, metric_name: str) -> dict[int, str]:
    """'trial 12 · Pareto front · accuracy 0.9620 · 50.9 KB' for every trial (the picker's labels)."""
    cats = dict(zip(df["number"], df["category"]))
    cats.update(zip(view["number"], view["category"]))
    out = {}
    for n, m, mem in zip(df["number"], df["metric"], df["memory_kb"]):
        text = f"trial {n} · {core.CATEGORY_LABELS[cats[n]]}"
        if m == m:
            text += f" · {metric_name} {m:.4f}"
        if mem == mem:
            text += f" · {mem:,.1f} KB"
        out[int(n)] = text
    return out


def trial_page(loaded: core.Loaded, df: pd.DataFrame, view: pd.DataFrame, target: Any, own: bool,
               target_key: str | None, storage: str | None) -> None:
    options = trial_options(view, df, loaded.higher_is_better)
    if not options:
        return
    if st.session_state.get("trial_pick") not in options:
        st.session_state["trial_pick"] = options[0]
    rows = df.set_index("number")
    labels = trial_labels(df, view, loaded.metric_name)
    st.subheader("Trial")
    st.caption("Click a point in a 2-D chart to open its trial here, or pick one:")
    n = st.selectbox("Trial", options, key="trial_pick", format_func=lambda k: str(labels.get(k)),
                     label_visibility="collapsed")
    rec = loaded.record(n)
    row = rows.loc[n]
    if rec is None:
        return
    name = loaded.metric_name
    c = st.columns(6)
    if rec.status == "trained":
        int8 = rec.int8_metric
        delta = None if rec.float_metric is None or int8 is None else f"{int8 - rec.float_metric:+.4f} vs float"
        c[0].metric(f"INT8 {name}", "-" if int8 is None else f"{int8:.4f}", delta=delta, delta_color="off",
                    help=f"{core.interval_text(row['metric_lo'], row['metric_hi'], row['metric_n'])} on the "
                         f"{split_name(rec.metric_split)}")
        c[1].metric(f"float {name}", "-" if rec.float_metric is None else f"{rec.float_metric:.4f}")
        final = loaded.finalized.get(n)
        if final is not None:
            lo, hi = final.test_interval or (float("nan"), float("nan"))
            st.caption(f"Finalized (nas finalize, {final.budget.get('epochs')} epochs, seed {final.seed}): INT8 "
                       f"{name} {final.test_metric:.4f} on the test split "
                       f"({core.interval_text(lo, hi, final.test_samples)}); nas export ships this model.")
        est = rec.estimated_memory_bytes
        c[2].metric("peak memory (measured)", kb(row["memory_kb"] * 1024),
                    delta=None if est is None else f"estimated {kb(est)}", delta_color="off",
                    help="TFLM arena of the converted INT8 model (IMX500: its memory model) vs the analytic estimate")
        c[3].metric(".tflite (flash)", kb(rec.tflite_bytes),
                    delta=None if rec.estimated_flash_bytes is None else f"estimated {kb(rec.estimated_flash_bytes)}",
                    delta_color="off")
    else:
        c[0].metric("status", rec.status)
        c[1].metric(f"INT8 {name}", "-")
        c[2].metric("peak memory (estimated)", kb(row["memory_kb"] * 1024))
        c[3].metric("flash (estimated)", kb(rec.estimated_flash_bytes))
    c[4].metric("latency", "-" if np.isnan(row["latency_ms"]) else f"{row['latency_ms']:,.2f} ms",
                delta=None if rec.macs is None else f"{rec.macs / 1e6:,.2f} M MACs", delta_color="off")
    c[5].metric("energy", "-" if np.isnan(row["energy_mj"]) else f"{row['energy_mj']:.4g} mJ",
                help="per inference, from the target's latency / energy model")
    if rec.reason:
        st.warning(f"{rec.status}: {rec.reason}")
    if target is not None and rec.macs is not None and not np.isnan(row["memory_kb"]):
        values = {"macs": rec.macs, "sram_bytes": row["memory_kb"] * 1024, "onchip_bytes": row["memory_kb"] * 1024,
                  "flash_bytes": None if np.isnan(row["flash_kb"]) else row["flash_kb"] * 1024,
                  "latency_ms": row["latency_ms"], "energy_mj": row["energy_mj"]}
        try:
            checks = target.check(values)
        except ValueError:
            checks = []
        if checks:
            st.dataframe(pd.DataFrame([{"limit": ch.name, "value": _human(ch.value, ch.unit),
                                        "limit value": _human(ch.limit, ch.unit),
                                        "headroom": _human(ch.headroom, ch.unit), "met": "yes" if ch.ok else "NO"}
                                       for ch in checks]), hide_index=True, width="content")
    left, right = st.columns([2, 3])
    if rec.spec:
        try:
            from nas.spec import parse_spec_string

            spec = parse_spec_string(rec.spec)
            prof = core.spec_profile(rec.spec)
        except Exception as e:  # noqa: BLE001 - a spec string from an older version
            st.warning(f"cannot draw spec {rec.spec}: {e}")
        else:
            with left:
                st.plotly_chart(figures.spec_stack(spec), key="spec_stack", width="stretch")
            with right:
                st.plotly_chart(figures.layer_memory(prof), key="layer_memory", width="stretch")
        st.code(rec.spec, language=None, wrap_lines=True)
    export_box(loaded, rec, target_key, own, storage)


def _human(v: float, unit: str) -> str:
    if unit == "B":
        return f"{v / 1024:,.1f} KB"
    if unit == "MACs":
        return f"{v / 1e6:,.2f} M"
    return f"{v:,.4g} {unit}"


def export_box(loaded: core.Loaded, rec: Any, target_key: str | None, own: bool, storage: str | None) -> None:
    if rec.status != "trained":
        return
    if not loaded.run_dir or not rec.model_path:
        st.info("Export needs the run directory with the trained model files; they are not on this machine.")
        return
    key = (loaded.run_id, rec.number, target_key)
    tag = hashlib.sha1(repr(key).encode()).hexdigest()[:10]
    out = Path(tempfile.gettempdir()) / "tinynas-explorer" / tag
    exports = st.session_state.setdefault("exports", {})
    against = "the run's constraint file" if own else Path(target_key or "").name
    if st.button(f"Export trial {rec.number}", key="export", type="primary",
                 help=f"nas export --trial {rec.number} (checked against {against}), then nas verify; "
                      f"offers the bundle as a zip"):
        with st.spinner(f"Exporting trial {rec.number} (INT8 model, C array, arena size, samples, model card)…"):
            try:
                exports[key] = core.export_trial(loaded.run_dir, rec.number, out, storage=storage,
                                                 constraints=None if own else target_key)
            except core.AppError as e:
                st.error(f"Export failed: {e}")
            except Exception as e:  # noqa: BLE001 - show it, keep the app alive
                st.error(f"Export failed: {type(e).__name__}: {e}")
    ex = exports.get(key)
    if ex is not None and Path(ex.zip_path).is_file():
        ok = "FAILED" not in ex.verified
        (st.success if ok else st.error)(f"Bundle {ex.bundle} ({ex.seconds:.1f} s). {ex.verified}")
        st.download_button(f"Download {Path(ex.zip_path).name}", data=Path(ex.zip_path).read_bytes(),
                           file_name=Path(ex.zip_path).name, mime="application/zip", key="download")


# --------------------------------------------------------------------------------------------- the page


def main() -> None:
    defaults = cli_defaults()
    ss = st.session_state
    ss.setdefault("source", defaults.source)
    # A new page shares the read of pages opened in the same FRESH_S seconds; its reruns keep that read until
    # auto-refresh (or Reload now) takes a newer one.
    ss.setdefault("token", float(int(time.time() // FRESH_S) * FRESH_S))
    with st.sidebar:
        st.markdown("### tinynas explorer")
        st.text_input("Run directory or storage URL", key="source",
                      help="A folder written by nas search, its study.db, or an Optuna storage URL such as "
                           "postgresql+psycopg2://user@host:5432/db")
    st.title("tinynas Pareto explorer")
    try:
        loaded = load(ss["source"], ss.get("study"), defaults.storage, ss["token"])
    except core.AppError as e:
        st.error(str(e))
        st.info("Start the explorer on a run: `nas app runs/<study>` or `nas app postgresql+psycopg2://…` "
                "(the sidebar field takes the same).")
        return
    with st.sidebar:
        if len(loaded.studies) > 1:
            if ss.get("study") not in loaded.studies:
                ss["study"] = loaded.study_name
            st.selectbox("Study", loaded.studies, key="study", help="the studies in this storage")
        target_key, target, own = sidebar_target(loaded)
        ss.setdefault("auto", loaded.running > 0)
        st.toggle("Auto-refresh while a search runs", key="auto",
                  help=f"re-reads the study every {defaults.refresh:g} s and redraws when trials were added")
        if st.button("Reload now"):
            ss["token"] = time.time()
            st.rerun()
        if ss["auto"]:
            # a large study takes seconds to read: poll no more than a quarter of the time
            every = max(defaults.refresh, round(4 * loaded.seconds, 1))
            watcher(ss["source"], ss.get("study"), defaults.storage, loaded, every)
    if loaded.note:
        st.warning(loaded.note)
    if not loaded.records:
        st.info(f"Study {loaded.study_name} has no trials yet. Turn on auto-refresh (sidebar) to see them arrive.")
        return
    stamp = _mtime(target_key)
    df = table(ss["source"], ss.get("study"), defaults.storage, ss["token"], target_key, stamp)
    limits = core.limit_lines(target)
    with st.sidebar:
        st.markdown("**Show**")
        show_bad = st.toggle("infeasible, rejected and failed trials", value=True, key="show_bad")
        colours = core.colour_options(df)
        colour = st.selectbox("Colour by", list(colours), format_func=lambda k: str(colours.get(k)), key="colour")
        log_axes = st.checkbox("log scale for memory and energy", key="log_axes")
        st.markdown("**Filters** (the front is recomputed on what is left)")
        ranges = sidebar_filters(df, limits, loaded.metric_name)
    keep = core.filter_mask(df, ranges)
    view = core.with_front(df, keep, loaded.higher_is_better)
    front_n = int((view["category"] == "front").sum())
    header(loaded, df, front_n, len(view), target, own)
    name = loaded.metric_name
    key = (ss["source"], ss.get("study"), defaults.storage, ss["token"], target_key, stamp,
           tuple(sorted(ranges.items())), colour, bool(show_bad), bool(log_axes))
    select: dict[str, Any] = dict(on_select="rerun", selection_mode=("points", "box", "lasso"), width="stretch")
    top = st.columns(2)
    with top[0]:
        st.plotly_chart(chart("3d", *key), key="chart_3d", width="stretch")
    with top[1]:
        take_selection("chart_memory_metric", st.plotly_chart(chart("memory_metric", *key),
                                                              key="chart_memory_metric", **select))
    bottom = st.columns(2)
    with bottom[0]:
        take_selection("chart_energy_metric", st.plotly_chart(chart("energy_metric", *key),
                                                              key="chart_energy_metric", **select))
    with bottom[1]:
        take_selection("chart_memory_energy", st.plotly_chart(chart("memory_energy", *key),
                                                              key="chart_memory_energy", **select))
    limit_text = ("Dashed red lines / planes: the chosen constraint file's limits ("
                  + " · ".join(lbl for _, lbl in limits.values()) + "). ") if limits else ""
    st.caption(limit_text + "The front is three-dimensional (metric, memory, energy): in a 2-D view a front point "
               "can sit behind others. Rejected and failed trials have no INT8 metric: they appear in memory vs "
               "energy only, at their estimated memory. Hover a point for its spec; click it (2-D charts) to open it "
               "below.")
    front = view[view["category"] == "front"].sort_values("metric", ascending=not loaded.higher_is_better)
    with st.expander(f"Pareto front: {len(front)} trial(s)", expanded=False):
        st.caption(core.front_caption(front))
        st.dataframe(core.front_table(front, name), hide_index=True, width="stretch")
    trial_page(loaded, df, view, target, own, target_key, defaults.storage)
    with st.expander(f"All {len(df)} trials"):
        cols = ["number", "status", "category", "metric", "memory_kb", "memory_basis", "flash_kb", "macs_m",
                "latency_ms", "energy_mj", "violations", "reason", "spec"]
        st.dataframe(df[cols], hide_index=True, width="stretch")


def run() -> None:
    st.set_page_config(page_title="tinynas explorer", layout="wide")
    try:
        main()
    except core.AppError as e:
        st.error(str(e))
    except Exception as e:  # noqa: BLE001 - never a bare traceback in the page
        st.error(f"The explorer hit an unexpected error: {type(e).__name__}: {e}")
        with st.expander("details"):
            st.code(traceback.format_exc(), language=None)


run()
