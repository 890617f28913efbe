"""The run directory's one home (nas.rundir): run.yaml's load/save pair, trial files, statuses."""
from __future__ import annotations

import json

import pytest
import yaml

from nas import results, rundir, search
from nas.errors import UserError
from nas.rundir import RunConfig, TrialFiles, TrialStatus
from tests.test_search import request

# run.yaml exactly as tinynas wrote it before RunConfig existed (no max_consecutive_failures key).
OLD_RUN_YAML = """\
format: 1
run_id: 0123456789abcdef0123456789abcdef
study_name: run-01234567
created: 2026-11-30T10:00:00+0000
command: [nas, search, --constraints, mcu_vww.yaml]
dataset: mnist
task: classification
space: {file: space.yaml, source: /x/tiny.yaml, name: tiny, parameters: 9, size: 512, feasible_fraction: 1.0}
target: {file: constraints.yaml, source: /x/mcu_vww.yaml, name: mcu_vww, runtime: tflm, limits: {sram_bytes: 262144}}
objectives:
- {name: accuracy, direction: maximize}
- {name: memory_bytes, direction: minimize, measured: TFLM arena}
- {name: energy_mj, direction: minimize}
trials: 2
max_rejected: 200
budget: {epochs: 1, train_limit: 300}
seed: 3
sampler: tpe
storage: null
versions: {python: 3.11.7, optuna: 4.0.0}
sessions:
- {started: 2026-11-30T10:00:00+0000, command: [nas, search], host: h, pid: 1, workers: 1, trials: 2}
"""


def test_an_old_run_yaml_loads_and_saves_back_unchanged_but_for_the_new_cap(tmp_path):
    (tmp_path / rundir.RUN_FILE).write_text(OLD_RUN_YAML)
    config = RunConfig.load(tmp_path)
    assert (config.trials, config.seed, config.dataset, config.storage) == (2, 3, "mnist", None)
    assert config.max_consecutive_failures == rundir.DEFAULT_MAX_CONSECUTIVE_FAILURES
    config.save(tmp_path)
    old, new = yaml.safe_load(OLD_RUN_YAML), yaml.safe_load((tmp_path / rundir.RUN_FILE).read_text())
    assert list(new)[:len(old)] == list(old) and {k: new[k] for k in old} == old
    assert set(new) - set(old) == {"max_consecutive_failures"}
    assert RunConfig.load(tmp_path) == config


def test_keys_a_newer_version_wrote_survive_a_save(tmp_path):
    (tmp_path / rundir.RUN_FILE).write_text(OLD_RUN_YAML + "future_key: {a: 1}\n")
    config = RunConfig.load(tmp_path)
    assert config.extra == {"future_key": {"a": 1}}
    config.replace(trials=5).save(tmp_path)
    doc = yaml.safe_load((tmp_path / rundir.RUN_FILE).read_text())
    assert doc["future_key"] == {"a": 1} and doc["trials"] == 5


@pytest.mark.parametrize("text, fragment", [("format: 2\nstudy_name: x\n", "format 1"),
                                            ("format: 1\nstudy_name: x\n", "run_id"),
                                            ("[1, 2\n", "readable run.yaml")])
def test_a_broken_run_yaml_is_one_user_error(tmp_path, text, fragment):
    (tmp_path / rundir.RUN_FILE).write_text(text)
    with pytest.raises(UserError, match=fragment):
        RunConfig.load(tmp_path)


def test_a_new_run_round_trips_and_names_its_files(tmp_path):
    run_dir = search.create_run(request(tmp_path, trials=2, seed=3))
    config = RunConfig.load(run_dir)
    for name in (rundir.RUN_FILE, rundir.CONSTRAINTS_FILE, rundir.SPACE_FILE, rundir.DATASET_FILE, rundir.STUDY_DB):
        assert (run_dir / name).is_file(), name
    assert (run_dir / rundir.TRIALS_DIR).is_dir()
    config.save(run_dir)
    assert RunConfig.load(run_dir) == config
    assert config.storage_url(run_dir) == f"sqlite:///{run_dir / rundir.STUDY_DB}"
    assert results.open_run(run_dir).config == config


def test_trial_files_and_statuses():
    files = TrialFiles.of("/runs/r", 7)
    assert str(files.path) == "/runs/r/trials/7" and rundir.relative_trial_dir(7) == "trials/7"
    assert (files.tflite.name, files.keras.name, files.spec.name, files.metrics.name) == (
        "model_int8.tflite", "model_qat.h5", "spec.json", "metrics.json")
    assert not files.finished()
    assert TrialStatus.TRAINED == "trained" and json.dumps(TrialStatus.FAILED) == '"failed"'
    assert f"{TrialStatus.REJECTED}" == "rejected"
    assert [s for s in TrialStatus if s.uses_budget] == [TrialStatus.TRAINED, TrialStatus.FAILED]
