"""Reliability, bad input: every mistake in a constraint file, a search space, a data set or the command line
reaches the user through the real `nas` command as ONE line naming the file / field / value, exit status 2, no
traceback, and nothing is created or trained. The library-level tests that check the same validation in depth
are named in docs/reliability.md; here each case goes through the CLI (a subprocess, nothing mocked).

Almost every case fails before TensorFlow is imported (a fraction of a second); the few that must read a data set
or sample the space first take a few seconds. One end-to-end search checks the data policy that is *not* an
error: a folder mixing gray, RGBA, palette and RGB images with one corrupt file trains, and the skip is counted.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from nas import search
from tests.test_hardware import GOOD_TFLM
from tests.test_search import QUICK, TINY, nas, write_space


def one_line_error(out, *fragments: str) -> str:
    """The CLI contract for a usage mistake: status 2, exactly one line on stderr, no traceback, nothing on stdout."""
    err = out.stderr.strip()
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr
    assert len(err.splitlines()) == 1, f"expected one line, got:\n{out.stderr}"
    assert err.startswith("nas"), err
    assert out.stdout.strip() == "", out.stdout
    for f in fragments:
        assert f in err, f"{f!r} not in: {err}"
    return err


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    return write_space(tmp_path / "tiny.yaml", TINY)


def search_with(tmp_path: Path, *args: str) -> tuple:
    """`nas search` into a fresh --run-dir; returns (result, run_dir). The run directory must not appear."""
    run_dir = tmp_path / "run"
    out = nas("search", *args, "--run-dir", str(run_dir), timeout=300)
    return out, run_dir


# -- constraint files ---------------------------------------------------------------------------------------

CONSTRAINT_CASES = {
    # name: (file text, or None for "no such file"; fragments of the one-line error)
    "missing file": (None, ["no such file", "mcu_vww"]),
    "empty file": ("", ["empty"]),
    "only comments": ("# nothing here\n", ["only comments"]),
    "not YAML": ("runtime: tflm\nlimits: [unclosed\n", ["valid YAML", "line"]),
    "a list instead of a mapping": ("- runtime: tflm\n- limits: {}\n", ["mapping", "got a list"]),
    "unknown field, did-you-mean": (GOOD_TFLM.replace("  sram: 250 KB", "  sramm: 250 KB"),
                                    ["'limits.sramm'", "did you mean 'sram'"]),
    "unknown top-level field": (GOOD_TFLM.replace("runtime: tflm", "runtime: tflm\nruntme: tflm"),
                                ["'runtme'", "did you mean 'runtime'"]),
    "missing required field": (GOOD_TFLM.replace("runtime: tflm\n", ""), ["'runtime'", "required"]),
    "missing required hardware figure": (GOOD_TFLM.replace("  macs_per_cycle: 0.5\n", ""),
                                         ["'hardware.macs_per_cycle'", "required"]),
    "unparsable size 250 KBB": (GOOD_TFLM.replace("  sram: 250 KB", "  sram: 250 KBB"),
                                ["'limits.sram'", "250 KBB", "KB"]),
    "negative size -1 MB": (GOOD_TFLM.replace("  flash: 1 MB", "  flash: -1 MB"),
                            ["'limits.flash'", "-1 MB", "positive"]),
    "zero size": (GOOD_TFLM.replace("  sram: 250 KB", "  sram: 0"), ["'limits.sram'", "positive"]),
    "zero MACs": (GOOD_TFLM.replace("  macs: 60M", "  macs: 0"), ["'limits.macs'", "positive"]),
    "unknown runtime": (GOOD_TFLM.replace("runtime: tflm", "runtime: tflmm"), ["'runtime'", "did you mean 'tflm'"]),
}


@pytest.mark.parametrize("case", list(CONSTRAINT_CASES))
def test_bad_constraint_file_is_one_line_exit_2(tmp_path, tiny_space, case):
    text, fragments = CONSTRAINT_CASES[case]
    path = tmp_path / "board.yaml"
    if text is not None:
        path.write_text(text)
    out, run_dir = search_with(tmp_path, "--constraints", str(path), "--space", str(tiny_space))
    one_line_error(out, str(path), *fragments)
    assert not run_dir.exists()


def test_misspelt_shipped_target_gets_a_did_you_mean(tmp_path, tiny_space):
    out, run_dir = search_with(tmp_path, "--constraints", "mcu_vw.yaml", "--space", str(tiny_space))
    one_line_error(out, "mcu_vw.yaml", "did you mean 'mcu_vww'")
    assert not run_dir.exists()


def test_a_limit_no_spec_of_the_space_can_meet_is_refused_before_searching(tmp_path, tiny_space):
    path = tmp_path / "too_small.yaml"
    path.write_text(GOOD_TFLM.replace("  sram: 250 KB", "  sram: 1 KB"))
    out, run_dir = search_with(tmp_path, "--constraints", str(path), "--space", str(tiny_space), "--dataset", "mnist")
    err = one_line_error(out, str(path), "'limits'", "space 'tiny'",
                         f"none of {search.FEASIBILITY_PROBES} sampled fits", "sram_bytes")
    assert "1,024" in err  # the limit it could not meet, and the smallest value seen
    assert not run_dir.exists()  # no run directory, no study, no worker: nothing was searched


# -- search spaces --------------------------------------------------------------------------------------------


def tiny_with(**changes) -> dict:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    for key, value in changes.items():
        if key.startswith("s1."):
            data["stages"][1][key[3:]] = value
        else:
            data[key] = value
    return data


SPACE_CASES = {
    "empty choices": (tiny_with(width=[]), ["'width'", "empty"]),
    "empty choices in a stage": (tiny_with(**{"s1.kernel": []}), ["'stages[1].kernel'", "empty"]),
    "unknown block kind": (tiny_with(**{"s1.kind": "irr"}), ["'stages[1].kind'", "did you mean 'ir'"]),
    "unknown activation": (tiny_with(**{"s1.act": ["relu", "hswsh"]}), ["'stages[1].act'", "did you mean 'hswish'"]),
    "resolution not divisible by the stride": (tiny_with(resolution=[16, 30]), ["'resolution'", "stride 4", "30"]),
    "unknown field": (tiny_with(widht=[0.5]), ["'widht'", "did you mean 'width'"]),
    "not a mapping": (["resolution", 32], ["mapping", "got a list"]),
}


@pytest.mark.parametrize("case", list(SPACE_CASES))
def test_bad_search_space_is_one_line_exit_2(tmp_path, case):
    data, fragments = SPACE_CASES[case]
    path = write_space(tmp_path / "space.yaml", data)
    out, run_dir = search_with(tmp_path, "--constraints", "mcu_vww.yaml", "--space", str(path))
    one_line_error(out, str(path), *fragments)
    assert not run_dir.exists()


def test_empty_and_broken_space_files(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    out, _ = search_with(tmp_path, "--constraints", "mcu_vww.yaml", "--space", str(empty))
    one_line_error(out, str(empty), "empty")
    broken = tmp_path / "broken.yaml"
    broken.write_text("resolution: [32\n")
    out, _ = search_with(tmp_path, "--constraints", "mcu_vww.yaml", "--space", str(broken))
    one_line_error(out, str(broken), "valid YAML")
    out, run_dir = search_with(tmp_path, "--constraints", "mcu_vww.yaml", "--space", "mobilenetv33")
    one_line_error(out, "mobilenetv33", "did you mean 'mobilenetv3'")
    assert not run_dir.exists()


# -- data ------------------------------------------------------------------------------------------------------


def write_image(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)).save(path)


def rgb(rng, h=16, w=16):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def folder(tmp_path: Path, case: str) -> Path:
    """A data folder for one bad-data case (written with PIL, like a user's)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    if case == "missing path":
        return root
    root.mkdir()
    if case == "empty folder":
        return root
    if case == "a file, not a folder":
        write_image(tmp_path / "x.png", rgb(rng))
        return tmp_path / "x.png"
    if case == "images but no class folders":
        for i in range(4):
            write_image(root / f"{i}.png", rgb(rng))
    if case == "one class only":
        for i in range(6):
            write_image(root / "cat" / f"{i}.png", rgb(rng))
    if case == "a class folder without images":
        for i in range(6):
            write_image(root / "cat" / f"{i}.png", rgb(rng))
        (root / "dog").mkdir()
        (root / "dog" / "notes.txt").write_text("no images here")
    if case == "too many corrupt images":
        for c in ("cat", "dog"):
            for i in range(4):
                write_image(root / c / f"{i}.png", rgb(rng))
            (root / c / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    if case == "every image of a class corrupt":
        for i in range(30):
            write_image(root / "cat" / f"{i}.png", rgb(rng))
        (root / "dog").mkdir()
        (root / "dog" / "only.png").write_bytes(b"garbage")
    return root


DATA_CASES = {
    "missing path": ["does not exist"],
    "empty folder": ["empty"],
    "a file, not a folder": ["this is a file"],
    "images but no class folders": ["subfolder per class", "4 image(s)"],
    "one class only": ["two class", "'cat'"],
    "a class folder without images": ["dog", "has none"],
    "too many corrupt images": ["unreadable", "2 of 10"],
    "every image of a class corrupt": ["dog", "none could be decoded"],
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_is_one_line_exit_2(tmp_path, tiny_space, case):
    path = folder(tmp_path, case)
    out, run_dir = search_with(tmp_path, "--constraints", "mcu_vww.yaml", "--space", str(tiny_space),
                               "--dataset", str(path))
    one_line_error(out, *DATA_CASES[case])
    assert not run_dir.exists()


def test_unknown_data_set_name_gets_a_did_you_mean(tmp_path, tiny_space):
    out, run_dir = search_with(tmp_path, "--constraints", "mcu_vww.yaml", "--space", str(tiny_space),
                               "--dataset", "mnst")
    one_line_error(out, "'mnst'", "did you mean 'mnist'")
    assert not run_dir.exists()


def test_mixed_colour_folder_with_one_corrupt_file_trains_and_counts_the_skip(tmp_path, tiny_space):
    """Documented policy (nas/data.py): corrupt files are skipped and counted (an error above 10%); gray, RGBA,
    palette and RGB images mixed become RGB, alpha flattened over black. A real one-trial search on such a folder."""
    rng = np.random.default_rng(1)
    root = tmp_path / "mixed"
    for c in ("cat", "dog"):
        for i in range(12):
            kind = i % 4
            if kind == 0:
                write_image(root / c / f"{i}.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))  # gray (L)
            elif kind == 1:
                write_image(root / c / f"{i}.png", rng.integers(0, 256, (16, 16, 4), dtype=np.uint8))  # RGBA
            elif kind == 2:
                write_image(root / c / f"{i}.png", rng.integers(0, 4, (16, 16), dtype=np.uint8), mode="P")
            else:
                write_image(root / c / f"{i}.jpg", rgb(rng))
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # 1 of 25: 4%, skipped
    out, run_dir = search_with(tmp_path, "--constraints", "mcu_vww.yaml", "--space", str(tiny_space),
                               "--dataset", str(root), "--trials", "1", *QUICK)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped 1 unreadable image file(s) of 25" in out.stderr and "broken.png" in out.stderr
    desc = json.loads((run_dir / "dataset.json").read_text())
    assert desc["skipped"] == 1 and desc["skipped_files"] == ["dog/broken.png"]
    assert desc["color"] == "rgb" and desc["image_channels"] == 3 and desc["classes"] == ["cat", "dog"]
    assert sum(desc["counts"].values()) == 24
    report = json.loads(nas("pareto", str(run_dir), "--json").stdout)
    assert report["summary"]["trained"] == 1 and report["pareto"][0]["spec"].startswith(("in16x3", "in32x3"))


# -- command line ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, fragments", [
    (["serch"], ["invalid choice: 'serch'", "did you mean 'search'", "nas --help"]),
    (["search", "--trails", "3"],
     ["unrecognized arguments: --trails 3", "did you mean '--trials'", "nas search --help"]),
    (["search", "--trials", "three"], ["--trials", "invalid int value: 'three'"]),
    (["search", "--sampler", "tp"], ["--sampler", "did you mean 'tpe'"]),
    (["pareto"], ["required: run_dir"]),
    (["profile", "--spec", "mobilenetv1-vww", "--mesure"], ["--mesure", "did you mean '--measure'"]),
    ([], ["required: COMMAND"]),
])
def test_argparse_mistakes_are_one_line_exit_2(args, fragments):
    one_line_error(nas(*args), *fragments)


@pytest.mark.parametrize("flag, value, fragment", [
    ("--trials", "0", "positive number of candidates"),
    ("--trials", "-3", "positive number of candidates"),
    ("--epochs", "0", "positive number of training epochs"),
    ("--workers", "0", "positive number of worker processes"),
    ("--train-limit", "5", "at least 16 training samples"),
    ("--seed", "-1", "non-negative"),
    ("--lr", "0", "positive, finite learning rate"),
    ("--lr", "inf", "positive, finite learning rate"),
    ("--max-consecutive-failures", "0", "positive number of failed candidates in a row"),
])
def test_bad_search_numbers_are_one_line_exit_2(tmp_path, tiny_space, flag, value, fragment):
    out, run_dir = search_with(tmp_path, "--constraints", "mcu_vww.yaml", "--space", str(tiny_space), flag, value)
    one_line_error(out, flag, fragment)
    assert not run_dir.exists()


@pytest.mark.parametrize("url, fragment", [
    ("bogus", "a database URL"),
    ("redis://localhost/0", "PostgreSQL"),
    ("postgresql+psycopg2://nobody:secret@127.0.0.1:1/none", "a storage Optuna can create a study in"),
])
def test_bad_storage_url_is_one_line_exit_2(tmp_path, tiny_space, url, fragment):
    out, run_dir = search_with(tmp_path, "--constraints", "mcu_vww.yaml", "--space", str(tiny_space),
                               "--dataset", "mnist", "--storage", url)
    err = one_line_error(out, "--storage", fragment)
    assert "secret" not in err  # a password never reaches the terminal
    assert not run_dir.exists()


@pytest.fixture(scope="module")
def a_run(tmp_path_factory) -> Path:
    """A real run directory and study (made by the library, nothing trained)."""
    tmp = tmp_path_factory.mktemp("a_run")
    space = write_space(tmp / "tiny.yaml", TINY)
    return search.create_run(search.SearchRequest(constraints="mcu_vww.yaml", space=str(space), dataset="mnist",
                                                  trials=1, epochs=1, train_limit=300, run_dir=str(tmp / "run")))


def test_run_dir_that_already_holds_a_run_is_refused(a_run, tiny_space):
    before = sorted(p.name for p in a_run.iterdir())
    out = nas("search", "--constraints", "mcu_vww.yaml", "--space", str(tiny_space), "--run-dir", str(a_run))
    one_line_error(out, "already holds a run", f"nas search --resume {a_run}")
    assert sorted(p.name for p in a_run.iterdir()) == before


def test_run_dir_that_is_not_empty_is_refused(tmp_path, tiny_space):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    out, run_dir = search_with(tmp_path, "--constraints", "mcu_vww.yaml", "--space", str(tiny_space))
    one_line_error(out, "not empty")
    assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]


def test_run_dir_of_another_study_is_refused_by_resume_and_pareto(a_run, tmp_path):
    """run.yaml and study.db that do not belong together: another run's id, or a study the database lacks."""
    other = tmp_path / "other"
    shutil.copytree(a_run, other)
    config = yaml.safe_load((other / "run.yaml").read_text())
    config["run_id"] = "f" * 32
    (other / "run.yaml").write_text(yaml.safe_dump(config))
    for cmd in (["search", "--resume", str(other)], ["pareto", str(other)]):
        one_line_error(nas(*cmd), str(other), "belongs to another run")
    config["study_name"] = "someone-elses-study"
    (other / "run.yaml").write_text(yaml.safe_dump(config))
    for cmd in (["search", "--resume", str(other)], ["pareto", str(other)]):
        one_line_error(nas(*cmd), "'someone-elses-study'", "there is none")
    (other / "study.db").unlink()
    one_line_error(nas("search", "--resume", str(other)), "study.db", "missing")


def test_resume_of_something_that_is_not_a_run(tmp_path):
    one_line_error(nas("search", "--resume", str(tmp_path)), "no run.yaml")
    one_line_error(nas("search", "--resume", str(tmp_path / "nowhere")), "no such directory")
    (tmp_path / "run.yaml").write_text("just: text\n")
    one_line_error(nas("search", "--resume", str(tmp_path)), "a tinynas run file")


@pytest.mark.parametrize("flag, value", [("--dataset", "faces"), ("--lr", "0.1"), ("--epochs", "3"),
                                         ("--space", "tinytracker")])
def test_resume_refuses_flags_that_the_run_directory_decides(a_run, flag, value):
    one_line_error(nas("search", "--resume", str(a_run), flag, value), flag, "left out")
