"""``nas search --time``: a wall-clock budget that the search keeps, from the command's start."""
from __future__ import annotations

import time
from datetime import datetime, timedelta

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from nas import results, search
from nas.errors import UserError
from nas.formatting import parse_count, parse_duration
from tests.test_search import QUICK, TINY, nas, write_space


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400),
                                           ("2.5h", 9000), ("1m30s", 90)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10 min", "-5m", "m"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="a duration such as 10m"):
        parse_duration(text)


def _done(seconds: float, **attrs):
    start = datetime(2026, 1, 1)
    return optuna.trial.FrozenTrial(
        number=0, state=TrialState.COMPLETE, value=None, values=[0.5, 1.0, 1.0], datetime_start=start,
        datetime_complete=start + timedelta(seconds=seconds), params={}, distributions={}, user_attrs=attrs,
        system_attrs={}, intermediate_values={}, trial_id=0)


def test_no_candidate_starts_after_the_deadline_or_when_less_is_left_than_a_median_one():
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    assert search.time_is_up(study, None) is None
    assert search.time_is_up(study, deadline=100.0, now=50.0) is None  # nothing measured yet: go
    assert "used" in search.time_is_up(study, deadline=100.0, now=100.0)
    for s in (10.0, 30.0, 60.0):
        study.add_trial(_done(s))
    assert search.time_is_up(study, deadline=100.0, now=65.0) is None  # 35 s left, the median took 30
    assert "median 30 s" in search.time_is_up(study, deadline=100.0, now=75.0)


def test_a_multi_fidelity_search_compares_the_time_left_with_the_rung_about_to_train():
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for s, rung in ((5.0, 0), (6.0, 0), (7.0, 0), (40.0, 2)):
        study.add_trial(_done(s, rung=rung))
    assert search.time_is_up(study, deadline=100.0, now=80.0, rung=0) is None      # 20 s left, rung 0 takes 6
    assert "median 40 s" in search.time_is_up(study, deadline=100.0, now=80.0, rung=2)
    assert search.time_is_up(study, deadline=100.0, now=80.0, rung=1) is None      # no rung 1 yet: all, median 7


def test_a_timed_search_stops_on_time_and_records_its_deadline(tmp_path):
    space = write_space(tmp_path / "tiny.yaml", TINY)
    run_dir = tmp_path / "run"
    t0 = time.time()
    res = nas("search", "--constraints", "mcu_vww.yaml", "--dataset", "mnist", "--time", "45s", *QUICK,
              "--space", str(space), "--run-dir", str(run_dir))
    took = time.time() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    assert "candidates for 45s" in res.stdout
    assert "time left" in res.stderr and "/10000" not in res.stderr  # the clock is the budget, not a count
    session = yaml.safe_load((run_dir / "run.yaml").read_text())["sessions"][0]
    assert session["time_s"] == 45 and t0 < session["deadline"] - 45 < t0 + 5
    trials = results.open_run(run_dir).trials()
    trained = [r for r in trials if r.status == "trained"]
    assert trained, "no candidate in 45 s"
    last_start = max(datetime.fromisoformat(r.started) for r in trained).timestamp()
    assert last_start <= session["deadline"]  # nothing started after the deadline ...
    longest = max(r.train_seconds for r in trained)
    assert took < 45 + longest + 30  # ... and the one in training at the deadline was the only overrun


def test_a_bad_time_is_one_line_naming_the_flag(tmp_path):
    res = nas("search", "--constraints", "mcu_vww.yaml", "--time", "soon", "--run-dir", str(tmp_path / "r"))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "nas search: error: --time: field 'time': a duration such as 10m, 1h30m or 90s, got 'soon'"]
    assert not (tmp_path / "r").exists()



@pytest.mark.parametrize("text, count", [("2000000", 2_000_000), ("2e6", 2_000_000), ("500k", 500_000),
                                         ("2M", 2_000_000), ("1.5G", 1_500_000_000)])
def test_counts(text, count):
    assert parse_count(text) == count


@pytest.mark.parametrize("text", ["", "abc", "-5", "5 images", "2MB"])
def test_bad_counts(text):
    with pytest.raises(ValueError, match="a count such as"):
        parse_count(text)


def test_an_epoch_images_budget_stops_the_session_and_is_recorded(tmp_path):
    """--epoch-images: no candidate starts once the session's trained images reach the budget (each fake
    candidate reports 1,000); a resumed session gets its own budget, counted from its first trial."""
    run_dir = search.create_run(search.SearchRequest(
        constraints="mcu_vww.yaml", dataset="mnist", space=str(write_space(tmp_path / "tiny.yaml", TINY)),
        run_dir=str(tmp_path / "run"),
        trials=search.TIMED_TRIALS, epochs=1, train_limit=300, epoch_images=2500))
    assert yaml.safe_load((run_dir / "run.yaml").read_text())["sessions"][0]["epoch_images"] == 2500
    outcome = search.execute(run_dir, train_step="tests.train_steps:thousand_images")
    assert outcome.summary.used == 3, outcome.summary  # 0, 1000, 2000 < 2500 start; 3000 does not
    search.resume_run(run_dir, epoch_images=1000)
    assert search.execute(run_dir, train_step="tests.train_steps:thousand_images").summary.used == 4
    with pytest.raises(UserError) as info:
        search.resume_run(run_dir, epoch_images=0)
    assert info.value.source == "--epoch-images"


def test_a_bad_epoch_images_is_one_line_naming_the_flag(tmp_path):
    out = nas("search", "--constraints", "mcu_vww.yaml", "--epoch-images", "lots", "--run-dir", str(tmp_path / "r"))
    assert out.returncode == 2 and "--epoch-images" in out.stderr and "a count such as" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
