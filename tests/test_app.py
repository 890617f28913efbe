"""The Pareto explorer (nas/app/explorer.py) driven by Streamlit's AppTest on a small *real* run.

The run is made once per test session by a real ``nas search`` (3 tiny candidates of a 32x32 space, 1 QAT epoch
on 128 MNIST digits: about a minute on 2 cores) and shared with tests/test_app_browser.py. Everything the app
shows is compared with what :mod:`nas.results` says about the same run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from streamlit.testing.v1 import AppTest

from nas import results
from nas.app import core, figures

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "nas" / "app" / "explorer.py"

TIMEOUT = 60
TINY_SPACE = """\
# A tiny space for the explorer's tests: 32x32 inputs, three small stages, 12 points.
name: tiny-test
resolution: 32
width: [0.25, 0.5, 1.0]
stages:
  - {name: stem, kind: cn, channels: 8, stride: 2, act: relu}
  - {name: s1, kind: ds, channels: [16, 32], stride: 2, act: relu}
  - {name: s2, kind: ir, channels: 32, stride: 2, expansion: [2, 4], act: relu}
head: {kind: classifier, dropout: 0}
"""


def make_small_run(base: Path) -> Path:
    """A real run directory: ``nas search`` with 3 tiny candidates (reused when ``base`` already holds it)."""
    run = base / "run"
    done = base / "search.ok"
    if done.is_file():
        return run
    base.mkdir(parents=True, exist_ok=True)
    space = base / "space.yaml"
    space.write_text(TINY_SPACE)
    cmd = [sys.executable, "-m", "nas.cli", "search", "--constraints", "mcu_vww.yaml", "--space", str(space),
           "--dataset", "mnist", "--trials", "3", "--epochs", "1", "--train-limit", "128", "--seed", "1",
           "--run-dir", str(run)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=str(ROOT))
    assert res.returncode == 0, f"nas search failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    done.write_text("ok\n")
    return run


def shared_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small run per test session, in the session's base temp folder."""
    return make_small_run(tmp_path_factory.getbasetemp() / "tinynas-app-run")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_run(tmp_path_factory)


def app_on(source: str | Path, **state) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["source"] = str(source)
    for k, v in state.items():
        at.session_state[k] = v
    return at.run()


def charts(at: AppTest) -> dict[str, dict]:
    """The Plotly figures on the page, by chart key (their JSON specs)."""
    out = {}
    for i, el in enumerate(at.get("plotly_chart")):
        spec = json.loads(el.proto.spec)
        key = el.proto.id or str(i)
        out[key] = spec
    return out


def values(v) -> list:
    """A Plotly JSON array: a plain list, or plotly's typed array {"dtype": "i8", "bdata": base64}."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)


def metric_value(at: AppTest, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return str(m.value)
    raise AssertionError(f"no metric {label!r}: {[m.label for m in at.metric]}")


def front_table(at: AppTest) -> list[int]:
    for df in at.dataframe:
        value = df.value
        if "number" in value.columns and any(str(c).startswith("INT8") for c in value.columns):
            return sorted(int(n) for n in value["number"])
    raise AssertionError("no Pareto front table")


def no_problems(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


# --------------------------------------------------------------------------------------------- the real run


def test_charts_present_and_front_matches_results(small_run: Path) -> None:
    at = app_on(small_run)
    no_problems(at)
    run = results.open_run(small_run)
    records = run.trials()
    front = sorted(r.number for r in run.pareto(records))
    assert front, "the tiny run has no feasible trained trial"
    figs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    assert len(figs) == 6, "3-D + three 2-D projections + spec stack + layer memory"
    types = [{t.get("type", "scatter") for t in f["data"]} for f in figs]
    assert "scatter3d" in types[0]
    for f in figs[1:4]:
        assert {t.get("type", "scatter") for t in f["data"]} <= {"scatter", "scattergl"}
    # the SRAM limit: a plane and dashed lines when points come near it, else named at the chart's edge
    memory_kb = [r.memory_bytes / 1024 for r in records if r.status == "trained"]
    if figures.limit_in_view(memory_kb, 250.0):
        assert "mesh3d" in types[0]
    for f in (figs[1], figs[3]):  # memory on x
        dashed = any(s.get("line", {}).get("dash") == "dash" for s in f["layout"].get("shapes", []))
        named = any("SRAM limit 250 KB" in a.get("text", "") for a in f["layout"].get("annotations", []))
        assert dashed or named
    # every trained trial is drawn in the 3-D chart, hover text carries the spec
    plotted = sorted({int(n) for t in figs[0]["data"] if t["type"] == "scatter3d" for n in values(t["customdata"])})
    assert plotted == sorted(r.number for r in records if r.status == "trained")
    hover = " ".join(t for tr in figs[0]["data"] if tr["type"] == "scatter3d" for t in tr.get("text", []))
    assert "in32x1" in hover and "memory" in hover and "energy" in hover
    # the front: same trials as nas pareto, drawn in red, counted in the header
    assert front_table(at) == front
    assert metric_value(at, "Pareto front") == str(len(front))
    red = [t for t in figs[1]["data"] if t.get("name") == "Pareto front"]
    assert red and sorted(int(n) for n in values(red[0]["customdata"])) == front
    # the trial page: spec stack and per-layer memory with the peak marked
    assert "architecture" in figs[4]["layout"]["title"]["text"]
    assert any("peak" in a.get("text", "") for a in figs[5]["layout"]["annotations"])
    assert [b.label for b in at.button if b.label.startswith("Export trial")]


def test_filters_change_the_front(small_run: Path) -> None:
    at = app_on(small_run)
    run = results.open_run(small_run)
    records = run.trials()
    front = run.pareto(records)
    mem_kb = sorted({r.memory_bytes / 1024 for r in front})
    # keep only what lies below the front's largest memory: that trial leaves, the front is recomputed
    cut = (mem_kb[-2] + mem_kb[-1]) / 2 if len(mem_kb) > 1 else mem_kb[0] * 0.5
    slider = next(s for s in at.slider if s.label == "Peak memory (KB)")
    lo, _ = slider.value
    slider.set_value((lo, cut)).run()
    no_problems(at)
    kept = [r for r in records if r.memory_bytes is None or r.memory_bytes / 1024 <= cut]
    expected = sorted(r.number for r in results.pareto_front(kept, run.metric[1]))
    assert front_table(at) == expected
    assert expected != sorted(r.number for r in front)
    assert metric_value(at, "Pareto front") == str(len(expected))
    assert any("filters show" in c.value for c in at.caption)


def test_another_constraint_file_rechecks_fits(small_run: Path, tmp_path: Path) -> None:
    """A stricter SRAM limit, chosen in the sidebar, makes the larger trials infeasible without retraining."""
    run = results.open_run(small_run)
    trained = [r for r in run.trials() if r.status == "trained"]
    arenas = sorted(r.tflm_arena_bytes for r in trained)
    limit = arenas[0] + 1 if len(set(arenas)) > 1 else arenas[0] - 1
    strict = tmp_path / "strict.yaml"
    text = (ROOT / "nas" / "constraints" / "mcu_vww.yaml").read_text().replace("sram: 250 KB", f"sram: {limit}")
    assert f"sram: {limit}" in text
    strict.write_text(text)
    at = app_on(small_run, target_choice="__custom__", target_path=str(strict))
    no_problems(at)
    fits = [r.number for r in trained if r.tflm_arena_bytes <= limit and r.tflite_bytes <= 256000]
    assert metric_value(at, "feasible") == str(len(fits))
    assert any("re-checked from stored figures" in c.value for c in at.caption)
    # the same trial table from nas.app.core: one check per trial, from the stored measured arena
    df = core.trial_frame(core.load_source(str(small_run)), core.load_target(str(strict)))
    assert sorted(df.loc[df["category"] == "feasible", "number"]) == sorted(fits)
    # a broken file: one message naming it, the page stays on the run's own target
    bad = tmp_path / "bad.yaml"
    bad.write_text("runtime: tflm\nlimits: {sram: 250 KBB}\nhardware: {clock_hz: 1 MHz}\n")
    broken = app_on(small_run, target_choice="__custom__", target_path=str(bad))
    assert not broken.exception
    assert len(broken.error) == 1 and "bad.yaml" in broken.error[0].value, [e.value for e in broken.error]
    assert len(broken.get("plotly_chart")) == 6
    # a shipped target with another model: energy changes, no retraining
    other = app_on(small_run, target_choice="coral_micro")
    no_problems(other)
    base = core.trial_frame(core.load_source(str(small_run)))
    coral = core.trial_frame(core.load_source(str(small_run)), core.load_target("coral_micro"))
    assert not np.allclose(base["energy_mj"], coral["energy_mj"])


def test_export_button_gives_a_verified_bundle(small_run: Path) -> None:
    at = app_on(small_run)
    pick = next(s for s in at.selectbox if s.label == "Trial")
    number = pick.value
    at.button(key="export").click().run(timeout=300)
    no_problems(at)
    downloads = at.get("download_button")
    assert downloads, [s.value for s in at.success] + [e.value for e in at.error]
    assert any("nas verify: OK" in s.value for s in at.success)
    exported = next(iter(at.session_state["exports"].values()))
    zpath = Path(exported.zip_path)
    assert zpath.name == f"trial-{number}.zip"
    with zipfile.ZipFile(zpath) as zf:
        names = set(zf.namelist())
    assert {f"trial-{number}/model_int8.tflite", f"trial-{number}/metadata.json",
            f"trial-{number}/model_data.cc"} <= names
    res = subprocess.run([sys.executable, "-m", "nas.cli", "verify", exported.bundle], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("OK")


def test_auto_refresh_and_core_agree_with_results(small_run: Path) -> None:
    at = app_on(small_run, auto=True)
    no_problems(at)
    assert any("auto-refresh every" in c.value for c in at.caption)
    loaded = core.load_source(str(small_run))
    df = core.trial_frame(loaded)
    keep = np.ones(len(df), dtype=bool)
    front = core.front_mask(df, keep, loaded.higher_is_better)
    run = results.open_run(small_run)
    assert sorted(df.loc[front, "number"]) == sorted(r.number for r in run.pareto())
    # a study.db path and a sqlite URL open the same run
    db = core.load_source(str(small_run / "study.db"))
    url = core.load_source(f"sqlite:///{small_run / 'study.db'}")
    assert db.run_dir == url.run_dir == str(small_run.resolve())
    assert db.fingerprint() == loaded.fingerprint()


def test_auto_refresh_shows_new_trials(small_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With auto-refresh on, a trial added to the study while the page is open appears at the next tick; with it
    off, the page keeps its cached read."""
    import shutil
    import time

    from optuna.trial import TrialState, create_trial

    monkeypatch.setenv("TINYNAS_APP_REFRESH", "0.5")
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    live = app_on(run, auto=True)
    still = app_on(run, auto=False)
    no_problems(live)
    assert metric_value(live, "failed") == "0"
    study = results.open_run(run).study()
    study.add_trial(create_trial(state=TrialState.FAIL,
                                 user_attrs={"status": "failed", "reason": "RuntimeError: test"}))
    time.sleep(0.6)
    live.run()
    still.run()
    no_problems(live)
    assert metric_value(live, "failed") == "1"
    assert metric_value(still, "failed") == "0"


def test_switch_between_studies_in_a_storage(small_run: Path, tmp_path: Path) -> None:
    """A storage with two studies: the newest opens first (here: empty), the sidebar switches to the other."""
    import shutil

    import optuna

    db = tmp_path / "two.db"
    shutil.copyfile(small_run / "study.db", db)
    url = f"sqlite:///{db}"
    optuna.create_study(storage=url, study_name="zz-newer", directions=["maximize", "minimize", "minimize"])
    at = app_on(url)
    assert not at.exception and not at.error
    assert any("no trials yet" in i.value for i in at.info)
    pick = at.selectbox(key="study")
    assert len(pick.options) == 2
    name = results.open_run(small_run).study_name
    pick.set_value(name).run()
    no_problems(at)
    assert metric_value(at, "trained") == str(sum(r.status == "trained" for r in results.open_run(small_run).trials()))
    assert len(at.get("plotly_chart")) == 6


def test_study_without_its_run_directory(small_run: Path, tmp_path: Path) -> None:
    """A study whose run directory is on another machine: its trials are shown with a note, without export."""
    import shutil

    import optuna

    db = tmp_path / "elsewhere.db"
    shutil.copyfile(small_run / "study.db", db)
    url = f"sqlite:///{db}"
    name = results.open_run(small_run).study_name
    optuna.load_study(study_name=name, storage=url).set_user_attr("run_dir", "/nonexistent/run")
    at = app_on(url)
    assert not at.exception and not at.error
    assert any("not on this machine" in w.value for w in at.warning)
    assert len(at.get("plotly_chart")) == 6
    assert not [b for b in at.button if b.label.startswith("Export")]


def test_bench_app_load_quick(tmp_path: Path) -> None:
    """bench/app_load.py keeps working (60 generated trials, one repeat)."""
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "app_load.py"), "--trials", "60", "--repeat", "1",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=str(ROOT),
                         env={**os.environ, "TINYNAS_BENCH_BROWSER": "0"})
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "app_load_60.json").read_text())
    assert out["generated_trials"] is True and out["trials"] == 60
    assert out["results"]["front_size"] >= 1 and out["results"]["app_cold_load_s"] > 0
    assert "generated for this measurement" in (tmp_path / "app_load_60.md").read_text()


# --------------------------------------------------------------------------------------------- bad sources


@pytest.mark.parametrize("kind", ["missing", "empty", "broken", "unreachable", "no-db"])
def test_bad_source_is_a_clear_message(kind: str, tmp_path: Path) -> None:
    if kind == "missing":
        source, expect = str(tmp_path / "nowhere"), "no such run directory"
    elif kind == "empty":
        source, expect = str(tmp_path), "no run.yaml"
    elif kind == "broken":
        (tmp_path / "run.yaml").write_text("format: [unclosed\n")
        source, expect = str(tmp_path), "readable run.yaml"
    elif kind == "unreachable":
        source, expect = "postgresql+psycopg2://nobody@127.0.0.1:1/nothing", "Cannot"
    else:
        source, expect = f"sqlite:///{tmp_path / 'missing.db'}", "does not exist"
    at = app_on(source)
    assert not at.exception, [e.value for e in at.exception]
    assert at.error, "expected an error message"
    assert expect in at.error[0].value, at.error[0].value
    assert "Traceback" not in at.error[0].value
    assert not at.get("plotly_chart")
    if kind == "no-db":
        assert not (tmp_path / "missing.db").exists(), "looking at a storage must not create it"


def test_empty_study_says_no_trials_yet(tmp_path: Path) -> None:
    import optuna

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.create_study(storage=url, study_name="nothing-yet", directions=["maximize", "minimize", "minimize"])
    at = app_on(url)
    assert not at.exception and not at.error
    assert any("no trials yet" in i.value for i in at.info)


def test_limits_drawn_near_the_points_named_far_from_them(small_run: Path) -> None:
    loaded = core.load_source(str(small_run))
    df = core.trial_frame(loaded)
    view = core.with_front(df, np.ones(len(df), dtype=bool), True)
    top = float(view["memory_kb"].max())
    near = {"memory_kb": (top * 1.2, "SRAM limit near")}
    far = {"memory_kb": (top * 10, "SRAM limit far")}
    fig = figures.projection(view, "memory_kb", "metric", "category", "status", "accuracy", near).to_plotly_json()
    assert any(s["type"] == "line" and s["line"]["dash"] == "dash" for s in fig["layout"]["shapes"])
    assert fig["layout"]["xaxis"]["range"][1] >= top * 1.2
    fig = figures.projection(view, "memory_kb", "metric", "category", "status", "accuracy", far).to_plotly_json()
    assert not fig["layout"].get("shapes") and any("SRAM limit far" in a["text"] for a in fig["layout"]["annotations"])
    three = figures.tradeoff_3d(view, "category", "status", "accuracy", near).to_plotly_json()
    assert any(t["type"] == "mesh3d" for t in three["data"])
    three = figures.tradeoff_3d(view, "p:width", "width", "accuracy", far).to_plotly_json()
    assert not any(t["type"] == "mesh3d" for t in three["data"])


def test_selected_numbers_reads_chart_points() -> None:
    points = [{"customdata": 7, "x": 1}, {"customdata": [3]}, {"x": 2}, {"customdata": "bad"}]
    assert core.selected_numbers(points) == (3, 7)
    assert core.selected_numbers([]) == ()


def test_nas_app_command_line() -> None:
    from nas.cli import build_parser

    args = build_parser().parse_args(["app", "runs/x", "--port", "8600", "--headless"])
    assert (args.source, args.port, args.headless, args.address) == ("runs/x", 8600, True, "127.0.0.1")
    res = subprocess.run([sys.executable, "-m", "nas.cli", "app", "runs/x", "--port", "0"], capture_output=True,
                         text=True, timeout=60, env={**os.environ})
    assert res.returncode == 2 and "--port" in res.stderr
