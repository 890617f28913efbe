"""Search-space files: the shipped spaces, the pure point -> ArchSpec mapping, and one-line errors for bad files."""
import random
from pathlib import Path

import pytest
import yaml

from nas import profile
from nas.errors import UserError
from nas.hardware import load_target
from nas.space import (DataShape, default_space_for, enumerate_points, load_space, resolutions_for,
                       resolve_space_path, sample, space_from_dict, to_spec, with_resolutions)
from nas.spec import ArchSpec

MNIST = DataShape("classification", classes=10, channels=1)
VWW = DataShape("classification", classes=2, channels=3)
GAZE = DataShape("gaze", classes=0, channels=3, grid_channels=2)
SPACES = Path(__file__).resolve().parent.parent / "nas" / "search_spaces"

SMALL = {
    "name": "small",
    "resolution": [32, 64],
    "width": [0.25, 0.5],
    "stages": [
        {"name": "stem", "kind": "cn", "channels": 8, "stride": 2, "act": ["hs", "relu"]},
        {"name": "a", "kind": "ir", "channels": 16, "stride": 2, "depth": [1, 2], "kernel": [3, 5],
         "expansion": [1, 4], "se": [0, 0.25]},
        {"name": "b", "kind": "ds", "channels": 24, "stride": 2, "depth": [0, 1]},
        {"name": "last", "kind": "cn", "channels": [64, 128], "kernel": 1, "depth": [0, 1]},
    ],
    "head": {"kind": "classifier", "hidden": [0, 32], "dropout": 0.1},
}


def small(**changes):
    data = yaml.safe_load(yaml.safe_dump(SMALL))
    data.update(changes)
    return data


def rnd_points(space, n, seed=0):
    rng = random.Random(seed)
    return [sample(space, lambda _name, choices: rng.choice(choices)) for _ in range(n)]


# -- shipped spaces ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, task", [("mobilenetv3", "classification"), ("tinytracker", "gaze")])
def test_shipped_spaces_load_by_bare_name_and_path(name, task):
    for ref in (name, f"{name}.yaml", str(SPACES / f"{name}.yaml")):
        space = load_space(ref)
        assert space.task == task
        assert space.size() > 1000
        assert default_space_for(task) == f"{name}.yaml"


@pytest.mark.parametrize("name, shape", [("mobilenetv3", MNIST), ("mobilenetv3", VWW), ("tinytracker", GAZE)])
def test_every_sampled_point_is_a_valid_spec_with_the_data_sets_shape(name, shape):
    space = load_space(name)
    for params in rnd_points(space, 200):
        spec = to_spec(space, params, shape)
        assert spec.channels == shape.channels
        assert spec.resolution in space.resolution.values
        if shape.task == "classification":
            assert spec.head.kind == "classifier" and spec.head.classes == shape.classes
        else:
            assert spec.head.kind == "gaze" and spec.head.grid_channels == shape.grid_channels
        assert ArchSpec.from_string(spec.to_string()) == spec


@pytest.mark.parametrize("shape", [MNIST, VWW])
def test_default_space_holds_both_mcu_feasible_and_infeasible_candidates(shape):
    # mcu_vww: 250 KB SRAM incl. TFLM runtime, 250 KB flash, 60M MACs.
    space, target = load_space("mobilenetv3"), load_target("mcu_vww")
    fits = []
    broken = set()
    for params in rnd_points(space, 400, seed=1):
        prof = profile.estimate(to_spec(space, params, shape))
        checks = target.check({**prof.limit_values("tflm"), "latency_ms": 0, "energy_mj": 0})
        fits.append(all(c.ok for c in checks))
        broken |= {c.name for c in checks if not c.ok}
    share = sum(fits) / len(fits)
    assert 0.3 < share < 0.95, share
    assert {"flash_bytes", "sram_bytes"} <= broken  # both memories bind somewhere in the space


def test_gaze_space_reproduces_tinytracker_at_its_corner():
    space = load_space("tinytracker")
    spec = to_spec(space, {**{k: v[0] for k, v in space.parameters().items()}, "resolution": 128, "width": 1.0,
                           "head.hidden": 128, "head.conv_channels": 2}, GAZE)
    assert spec.head.to_string() == "gaze_g2_c2_h128_o20_re"
    assert spec.input_channels == 5


# -- the mapping is a pure function ----------------------------------------------------------------------


def test_to_spec_is_pure_and_deterministic():
    space = space_from_dict(small(), "small.yaml")
    for params in enumerate_points(space):
        frozen = dict(params)
        a, b = to_spec(space, params, VWW), to_spec(space, params, VWW)
        assert a == b and a.to_string() == b.to_string()
        assert params == frozen  # the parameter dict is not touched


def test_every_point_of_a_small_space_maps_and_distinct_live_choices_give_distinct_specs():
    space = space_from_dict(small(), "small.yaml")
    points = enumerate_points(space)
    assert len(points) == space.size() == 2 * 2 * 2 * 2 * 2 * 2 * 2 * 2 * 2 * 2 * 2
    specs = {to_spec(space, p, VWW).to_string() for p in points}
    # dropped stages make some parameters moot, so fewer specs than points, but many more than one
    assert 100 < len(specs) < len(points)


def test_depth_zero_drops_the_stage_and_data_shape_sets_classes_and_channels():
    space = space_from_dict(small(), "small.yaml")
    base = {k: v[0] for k, v in space.parameters().items()}
    with_b = to_spec(space, {**base, "b.depth": 1, "last.depth": 1}, MNIST)
    without = to_spec(space, {**base, "b.depth": 0, "last.depth": 0}, MNIST)
    assert [b.kind for b in with_b.blocks] == ["cn", "ir", "ds", "cn"]
    assert [b.kind for b in without.blocks] == ["cn", "ir"]
    assert with_b.channels == 1 and with_b.head.classes == 10
    assert to_spec(space, base, VWW).head.classes == 2


def test_sample_asks_each_parameter_once_with_its_choices():
    space = space_from_dict(small(), "small.yaml")
    asked = {}

    def suggest(name, choices):
        assert name not in asked
        asked[name] = list(choices)
        return choices[-1]

    params = sample(space, suggest)
    assert asked == {k: list(v) for k, v in space.parameters().items()}
    assert "stem.channels" not in params  # fixed fields are not parameters
    assert params["s1.kernel" if "s1.kernel" in params else "a.kernel"] == 5


def test_sample_works_with_optuna_trials():
    import optuna

    space = load_space("mobilenetv3")
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    spec = to_spec(space, sample(space, trial.suggest_categorical), MNIST)
    assert set(trial.params) == set(space.parameters())
    assert spec.resolution == trial.params["resolution"]


def test_to_spec_rejects_foreign_parameters():
    space = space_from_dict(small(), "small.yaml")
    params = {k: v[0] for k, v in space.parameters().items()}
    with pytest.raises(ValueError):
        to_spec(space, {**params, "width": 0.75}, VWW)
    params.pop("width")
    with pytest.raises(KeyError):
        to_spec(space, params, VWW)
    with pytest.raises(ValueError):
        to_spec(space, {k: v[0] for k, v in space.parameters().items()}, GAZE)  # classifier space, gaze data


# -- errors name the file and the field -------------------------------------------------------------------


def bad(data, field, *words):
    with pytest.raises(UserError) as err:
        space_from_dict(data, "my_space.yaml")
    e = err.value
    assert e.source == "my_space.yaml"
    assert e.field == field, str(e)
    for w in words:
        assert w in str(e), str(e)
    assert "\n" not in str(e)


def stage(i, **changes):
    data = small()
    data["stages"][i].update(changes)
    return data


def test_empty_choices():
    bad(small(width=[]), "width", "empty")
    bad(stage(1, kernel=[]), "stages[1].kernel", "empty")


def test_unknown_names_get_did_you_mean():
    bad(stage(1, kind="irr"), "stages[1].kind", "did you mean 'ir'")
    bad(stage(1, act=["relu", "hswsh"]), "stages[1].act", "did you mean 'hswish'")
    bad(small(widht=[1.0]), "widht", "did you mean 'width'")
    bad(stage(1, kernal=3), "stages[1].kernal", "did you mean 'kernel'")
    data = small()
    data["head"]["kind"] = "classifer"
    bad(data, "head.kind", "did you mean 'classifier'")


def test_resolution_must_be_a_multiple_of_the_total_stride():
    bad(small(resolution=[32, 36]), "resolution", "stride 8", "36")
    bad(small(resolution=[4]), "resolution", ">= 8")


def test_values_out_of_range_and_misplaced_fields():
    bad(stage(1, kernel=[3, 4]), "stages[1].kernel", "kernel size")
    bad(stage(1, stride=3), "stages[1].stride", "1 or 2")
    bad(stage(1, expansion=[0.5, 4]), "stages[1].expansion")
    bad(stage(1, se=[0, 1.5]), "stages[1].se")
    bad(stage(0, expansion=4), "stages[0].expansion", "only 'ir'")
    bad(stage(0, se=0.25), "stages[0].se", "depthwise")
    bad(stage(1, depth=[1, 1]), "stages[1].depth", "listed twice")
    bad(small(width=[0.25, "wide"]), "width")
    bad(stage(1, channels=None), "stages[1].channels")


def test_data_set_fields_are_refused_with_the_reason():
    data = small()
    data["head"]["classes"] = 10
    bad(data, "head.classes", "data set")


def test_structure_errors():
    bad(None, "", "empty")
    bad([1, 2], "", "mapping")
    bad({k: v for k, v in small().items() if k != "stages"}, "stages", "required")
    bad(small(stages=[]), "stages", "non-empty")
    data = small()
    for st in data["stages"]:
        st["depth"] = [0, 1]
    bad(data, "stages", "never dropped")
    data = small()
    data["stages"][1]["name"] = "stem"
    bad(data, "stages[1].name", "unique")


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match="did you mean 'tinytracker'"):
        resolve_space_path("tinytraker.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("resolution: [32\n")
    with pytest.raises(UserError, match="valid YAML"):
        load_space(str(broken))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(UserError, match="empty"):
        load_space(str(empty))


def test_cli_reports_a_bad_space_on_one_line(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(stage(1, act="relu7")))
    nas = str(Path(sys.executable).parent / "nas")
    out = subprocess.run([nas, "search", "--constraints", "mcu_vww.yaml", "--space", str(path), "--run-dir",
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert str(path) in out.stderr and "stages[1].act" in out.stderr and "relu6" in out.stderr
    assert not (tmp_path / "run").exists()


def test_resolutions_above_the_datas_native_one_are_left_out_unless_the_space_upsamples():
    sp = load_space("mobilenetv3")  # resolution: [32, 64, 96, 128]
    assert resolutions_for(sp, 96) == (32, 64, 96)      # vww96
    assert resolutions_for(sp, 32) == (32,)             # CIFAR-10
    assert resolutions_for(sp, 28) == (32,)             # MNIST: every one is above; the smallest stays
    assert resolutions_for(sp, None) == (32, 64, 96, 128)
    up = space_from_dict({**yaml.safe_load(Path(sp.source).read_text()), "upsample": True}, "up.yaml")
    assert resolutions_for(up, 28) == (32, 64, 96, 128)
    narrowed = with_resolutions(sp, (32, 64))
    assert narrowed.resolution.values == (32, 64) and narrowed.stages == sp.stages
    assert "resolution" in narrowed.parameters()
    assert "resolution" not in with_resolutions(sp, (32,)).parameters()  # one value: fixed, not searched
    with pytest.raises(ValueError):
        with_resolutions(sp, (48,))
    with pytest.raises(UserError, match="upsample"):
        space_from_dict({**yaml.safe_load(Path(sp.source).read_text()), "upsample": "yes"}, "bad.yaml")


def test_a_new_run_records_its_resolutions_and_its_workers_sample_only_those(tmp_path):
    from nas import results, search
    from nas.search.worker import Worker

    req = search.SearchRequest(constraints="mcu_vww.yaml", space="mobilenetv3", dataset="mnist", trials=2,
                               run_dir=str(tmp_path / "run"), command=("nas", "search"))
    run_dir = search.create_run(req)
    recorded = results.open_run(run_dir).config.space
    assert recorded["resolutions"] == [32] and recorded["resolutions_left_out"] == [64, 96, 128]
    assert recorded["native_resolution"] == 28
    assert Worker.load(run_dir).space.resolution.values == (32,)
    assert results.open_run(run_dir).space().resolution.values == (32,)
