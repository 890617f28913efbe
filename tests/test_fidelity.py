"""Multi-fidelity search (ASHA, ``--fidelity asha``): rungs, promotion by Pareto rank, and the search around it.

The promotion rule is tested on hand-made values; the search on a training step without TensorFlow
(``tests.train_steps:rung_step``: its "weights" file lists every rung a candidate trained, so a test can see
that a promotion continued the right checkpoint); one test trains real rungs.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nas import fidelity, results, search
from nas.errors import CandidateError, UserError
from nas.fidelity import Fidelity, RungResult, next_promotion, nondominated_ranks, rung_order
from nas.testing import postgres as postgres_server
from tests.test_search import TINY as SEARCH_TINY

ROOT = Path(__file__).resolve().parents[1]
STEP = "tests.train_steps:rung_step"
# test_search's tiny space with four widths, so the step's metric (which grows with the width) orders candidates
TINY = {**SEARCH_TINY, "width": [0.25, 0.5, 0.75, 1.0]}


def request(tmp_path: Path, **kw) -> search.SearchRequest:
    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump(TINY))
    kw.setdefault("trials", 9)
    kw.setdefault("fidelity", "asha")
    return search.SearchRequest(constraints="mcu_vww.yaml", space=str(space), dataset="mnist",
                                run_dir=str(tmp_path / "run"), epochs=2, train_limit=300, **kw)


# --------------------------------------------------------------------------------------------- pure parts


def test_rungs_cut_the_float_steps_geometrically_and_the_top_is_the_whole_budget():
    r = fidelity.rungs(Fidelity("asha", eta=3, rungs=3), float_epochs=1, steps_per_epoch=333)
    assert [x.float_steps for x in r] == [37, 111, 333]
    assert [round(x.fraction, 3) for x in r] == [0.111, 0.333, 1.0]
    assert [x.final for x in r] == [False, False, True]
    r = fidelity.rungs(Fidelity("asha", eta=3, rungs=3), float_epochs=12, steps_per_epoch=100)
    assert [x.float_steps for x in r] == [133, 400, 1200] and [x.fraction for x in r] == [1.0, 1.0, 1.0]
    assert [x.float_steps for x in fidelity.rungs(Fidelity("asha", eta=2, rungs=4), 1, 8)] == [1, 2, 4, 8]
    with pytest.raises(ValueError, match="too few"):
        fidelity.rungs(Fidelity("asha", eta=3, rungs=6), float_epochs=1, steps_per_epoch=5)
    with pytest.raises(ValueError, match="float epochs"):
        fidelity.rungs(Fidelity("asha"), float_epochs=0, steps_per_epoch=100)
    assert fidelity.rungs(Fidelity("none"), 2, 10)[0].final  # single fidelity: one rung, the whole budget


def test_nondominated_ranks_on_hand_made_points():
    # minimised (negated accuracy, memory): a, b, c on the front, d behind b, e behind d
    pts = [(-0.9, 300), (-0.8, 200), (-0.5, 100), (-0.7, 250), (-0.6, 260)]
    assert nondominated_ranks(pts) == [0, 0, 0, 1, 2]


def test_promotion_by_pareto_rank_not_by_accuracy_alone():
    def res(trial, acc, mem, rung=0):
        return RungResult(candidate=trial, trial=trial, rung=rung, values=(-acc, float(mem), 1.0))

    # Six results at rung 0, eta 3: two are promotable. The small model 4 is on the front with 60% while
    # the 80% model 2 is dominated by model 1 (better and smaller): rank beats accuracy.
    rung0 = [res(1, 0.85, 200), res(2, 0.80, 300), res(3, 0.50, 400), res(4, 0.60, 50), res(5, 0.55, 500),
             res(6, 0.40, 600)]
    order = rung_order(rung0)
    assert [r.trial for r in order[:2]] == [1, 4] and order[2].trial == 2
    fid = Fidelity("asha", eta=3, rungs=3)
    assert next_promotion(rung0, set(), fid).trial == 1
    assert next_promotion(rung0, {(1, 1)}, fid).trial == 4
    assert next_promotion(rung0, {(1, 1), (4, 1)}, fid) is None  # floor(6 / 3) = 2, both taken
    assert next_promotion(rung0[:2], set(), fid) is None           # floor(2 / 3) = 0: nothing yet
    # the highest rung first: with three results at rung 1, its best goes to the top before rung 0's second
    # (1 and 4 are on rung 1's front, both ends of it: the older trial first; 7 is dominated by 1)
    rung1 = [res(1, 0.9, 200, 1), res(4, 0.7, 50, 1), res(7, 0.5, 300, 1)]
    got = next_promotion(rung0 + rung1, {(1, 1), (4, 1), (7, 1)}, fid)
    assert (got.candidate, got.rung) == (1, 1)
    assert next_promotion(rung0 + rung1, {(1, 1), (4, 1), (7, 1), (1, 2)}, fid) is None
    # the top rung is never promoted
    assert next_promotion([res(n, 0.5, 100 * n, 2) for n in range(1, 10)], set(), fid) is None


def test_ties_on_rank_go_to_the_lonelier_point():
    def res(trial, acc, mem):
        return RungResult(candidate=trial, trial=trial, rung=0, values=(-acc, float(mem)))

    # all on one front: the two ends are infinitely lonely, then the one with the larger gap around it
    front = [res(1, 0.9, 400), res(2, 0.88, 390), res(3, 0.6, 150), res(4, 0.5, 100)]
    assert [r.trial for r in rung_order(front)] == [1, 4, 3, 2]
    assert math.isinf(fidelity.crowding([(0, 1), (1, 0)])[0])


def test_bad_fidelity_flags_are_one_line_naming_the_flag(tmp_path):
    for kw, flag in (({"fidelity": "hyperband"}, "--fidelity"), ({"eta": 1}, "--eta"), ({"rungs": 1}, "--rungs")):
        with pytest.raises(UserError) as info:
            search.create_run(request(tmp_path, **kw))
        assert info.value.source == flag and "\n" not in str(info.value), str(info.value)
    with pytest.raises(UserError) as info:  # one float epoch of 19 steps cannot make 25 rungs
        search.create_run(request(tmp_path, rungs=25))
    assert info.value.source == "--fidelity" and "too few" in str(info.value)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------- the search


def _rung_trials(run_dir: Path):
    return [r for r in results.open_run(run_dir).trials() if r.rung is not None]


def test_asha_search_promotes_the_best_third_and_continues_their_checkpoints(tmp_path):
    run_dir = search.create_run(request(tmp_path, trials=9))
    config = yaml.safe_load((run_dir / "run.yaml").read_text())
    assert config["fidelity"] == {"mode": "asha", "eta": 3, "rungs": 3}
    outcome = search.execute(run_dir, train_step=STEP)
    s = outcome.summary
    assert s.trained == 9 and s.used == 9, s            # --trials counts candidates, not rungs
    assert s.rungs[0] == 9 and 9 > s.rungs[1] >= s.rungs[2] >= 1, s.rungs
    recs = _rung_trials(run_dir)
    promoted = [r for r in recs if r.is_promotion]
    keys = [(r.candidate, r.rung) for r in promoted if r.status == "trained"]
    assert len(keys) == len(set(keys)), keys            # at most once per rung
    study = results.open_run(run_dir).study()
    by_number = {t.number: t for t in study.get_trials()}

    def as_result(n: int) -> RungResult:
        t = by_number[n]
        return RungResult(candidate=t.user_attrs["candidate"], trial=n, rung=t.user_attrs["rung"],
                          values=(-t.values[0], *t.values[1:]))

    for r in promoted:
        t = by_number[r.number]
        below = by_number[t.user_attrs["promotes"]]
        assert t.params == below.params                 # the same candidate
        assert below.user_attrs["rung"] == r.rung - 1 and below.user_attrs["candidate"] == r.candidate
        history = json.loads((run_dir / r.trial_dir / "float.weights.h5").read_text())
        assert [h["rung"] for h in history] == list(range(r.rung + 1))  # continued, not retrained
        assert history[-2]["trial_dir"] == str(run_dir / below.user_attrs["trial_dir"])
        # ASHA's rule, replayed on what the (one) worker saw when it promoted: the rung below's results so far,
        # the source among their best floor(n / eta) by Pareto rank
        seen = [as_result(n) for n, u in by_number.items() if n < r.number and u.user_attrs.get("rung") == r.rung - 1]
        assert below.number in [x.trial for x in rung_order(seen)[: len(seen) // 3]], (r.number, below.number)
    # what Optuna sees: every rung as a trial with the same parameters; below the top, the float rung metric
    top = [r for r in recs if r.rung == 2]
    assert top and all(r.feasible and r.int8_metric is not None for r in top)
    assert all(r.int8_metric is None and r.rung_metric == by_number[r.number].values[0] for r in recs if r.rung < 2)
    front = results.open_run(run_dir).pareto()
    assert front and {r.number for r in front} <= {r.number for r in top}  # the front is of whole candidates only
    text = results.format_pareto(results.pareto_report(results.open_run(run_dir)))
    assert f"multi-fidelity: trained rung 0: 9, rung 1: {s.rungs[1]}, rung 2: {s.rungs[2]}" in text, text
    # the explorer opens a multi-fidelity run (rungs below the top have no INT8 figures)
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "nas" / "app" / "explorer.py"), default_timeout=120)
    at.session_state["source"] = str(run_dir)
    at = at.run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]


def test_two_workers_on_postgresql_never_promote_a_candidate_twice(tmp_path):
    with postgres_server() as url:
        run_dir = search.create_run(request(tmp_path, trials=12, storage=url))
        os.environ["TINYNAS_TEST_RUNG_SLEEP"] = "0.3"
        try:
            outcome = search.execute(run_dir, workers=2, storage=url, train_step=STEP)
        finally:
            del os.environ["TINYNAS_TEST_RUNG_SLEEP"]
        recs = [r for r in results.open_run(run_dir, url).trials() if r.rung is not None]
        workers = {r.worker.get("index") for r in recs if r.status == "trained"}
        assert workers == {0, 1}, workers
        trained = [(r.candidate, r.rung) for r in recs if r.is_promotion and r.status == "trained"]
        assert len(trained) == len(set(trained)), trained
        assert outcome.summary.rungs[0] == 12 and outcome.summary.rungs[1] >= 4, outcome.summary.rungs
        # a promotion that lost the race stepped back without training
        assert all(r.trial_dir is None for r in recs if r.is_promotion and r.status == "unused")


def test_a_kill_mid_rung_then_resume_loses_no_finished_rung(tmp_path):
    run_dir = search.create_run(request(tmp_path, trials=9))
    env = {**os.environ, "TINYNAS_TEST_RUNG_SLEEP": "1.5"}
    code = ("import sys; from nas import search; search.execute(sys.argv[1], train_step=sys.argv[2])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir), STEP], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # kill while a promotion is being trained
            recs = _rung_trials(run_dir) if (run_dir / "study.db").exists() else []
            if any(r.is_promotion and r.status == "running" for r in recs):
                break
            time.sleep(0.2)
        else:
            pytest.fail("no promotion started")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = {r.number: r for r in _rung_trials(run_dir) if r.status == "trained"}
    search.resume_run(run_dir)
    search.execute(run_dir, train_step=STEP)
    after = _rung_trials(run_dir)
    assert all(any(a.number == n and a.status == "trained" for a in after) for n in before)  # nothing lost
    done = [(r.candidate, r.rung) for r in after if r.is_promotion and r.status == "trained"]
    assert len(done) == len(set(done))
    assert any(r.is_promotion and r.status == "interrupted" for r in after)  # the one killed ...
    cut = [r for r in after if r.is_promotion and r.status == "interrupted"][0]
    assert (cut.candidate, cut.rung) in done                                  # ... was trained again
    s = results.open_run(run_dir).summary()
    assert s.used == 9 and s.rungs[0] == 9 and s.rungs[1] >= s.rungs[2] >= 1, s


def test_real_rungs_continue_the_float_weights_and_the_top_rung_is_an_int8_candidate(tmp_path):
    """Real TensorFlow: rung 0 trains and saves float weights; rung 1 (the top of two) loads them, trains on,
    runs QAT, converts and measures, scored on validation."""
    from nas.budget import Budget
    from nas.spec import load_spec
    from nas.tf.candidate import evaluate_rung

    spec = load_spec("mobilenetv3-small").replace(resolution=32, width=0.25, classes=10)
    budget = Budget(epochs=2, train_limit=400)
    ladder = fidelity.rungs(Fidelity("asha", eta=3, rungs=2), float_epochs=1, steps_per_epoch=25)
    r0 = evaluate_rung(spec, "mnist", budget, tmp_path / "r0", rung=ladder[0], below=None)
    assert r0["rung"] == 0 and r0["rung_metric_kind"] == "float" and "int8_metric" not in r0
    assert (tmp_path / "r0" / "float.weights.h5").is_file() and not (tmp_path / "r0" / "model_int8.tflite").exists()
    # the saved float weights are the rung's model: loaded into a fresh build they score what the rung reported
    from nas.metrics import metric_value
    from nas.tf import builder, pipeline
    from nas.tf.candidate import load_dataset

    ds = load_dataset("mnist", 0)
    model = builder.build(spec)
    model.load_weights(str(tmp_path / "r0" / "float.weights.h5"))
    x_val = pipeline.prepare(ds.val, spec.resolution, spec.channels, ds.grid_channels)
    assert metric_value(ds.task, ds.val.y, model.predict(x_val, verbose=0)) == pytest.approx(r0["rung_metric"])
    r1 = evaluate_rung(spec, "mnist", budget, tmp_path / "r1", rung=ladder[1], below=ladder[0],
                       start_from=tmp_path / "r0")
    assert r1["rung"] == 1 and r1["metric_split"] == "val" and r1["tflm_arena_bytes"] > 0
    assert (tmp_path / "r1" / "model_int8.tflite").is_file() and r1["promoted_from"] == str(tmp_path / "r0")
    assert 0.0 <= r1["int8_metric"] <= 1.0
    # what --epoch-images counts: steps x batch, the float steps of this rung only, then the top rung's QAT epoch
    batch, per_epoch = r1["plan"]["batch_size"], r1["plan"]["steps_per_epoch"]
    assert r0["trained_images"] == ladder[0].float_steps * batch
    assert r1["trained_images"] == (ladder[1].float_steps - ladder[0].float_steps + per_epoch) * batch
    with pytest.raises(CandidateError, match="no float weights"):
        evaluate_rung(spec, "mnist", budget, tmp_path / "r2", rung=ladder[1], below=ladder[0],
                      start_from=tmp_path / "missing")
