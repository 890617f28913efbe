"""A key given twice in a YAML file is refused: constraint files, search spaces and spec files, through the CLI.

``yaml.safe_load`` keeps the last of two equal keys without a word, so ``sram:`` twice in a constraint file
would search against whichever line came second. Each case runs the real ``nas`` command on a real file
(a shipped one with one line repeated) and expects exit 2 and one line naming the file, the key and both lines.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nas import yamlio
from nas.errors import UserError
from nas.hardware import constraints_dir, load_target
from nas.space import load_space, spaces_dir
from nas.spec import load_spec, preset

NAS = str(Path(sys.executable).parent / "nas")


def nas(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([NAS, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def repeat_line(text: str, startswith: str, replacement: str) -> tuple[str, int, int]:
    """``text`` with ``replacement`` inserted right after its first line starting with ``startswith``.

    Returns the new text and the (1-based) numbers of the original line and of the repeated one."""
    lines = text.splitlines(keepends=True)
    i = next(n for n, line in enumerate(lines) if line.startswith(startswith))
    lines.insert(i + 1, replacement + "\n")
    return "".join(lines), i + 1, i + 2


def assert_one_line_naming(out: subprocess.CompletedProcess, path: Path, field: str, first: int, second: int) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    err = out.stderr.strip()
    assert err.count("\n") == 0, err
    assert str(path) in err and f"'{field}'" in err and f"appears twice (lines {first} and {second})" in err, err
    assert "Traceback" not in out.stderr


def test_constraint_file_with_sram_twice(tmp_path: Path) -> None:
    text = (constraints_dir() / "mcu_vww.yaml").read_text(encoding="utf-8")
    bad, first, second = repeat_line(text, "  sram:", "  sram: 2 MB")
    path = tmp_path / "twice.yaml"
    path.write_text(bad, encoding="utf-8")
    assert yaml.safe_load(bad)["limits"]["sram"] == "2 MB"  # what plain PyYAML would have searched against
    out = nas("profile", "--spec", "mobilenetv1-vww", "--constraints", str(path))
    assert_one_line_naming(out, path, "limits.sram", first, second)


def test_constraint_file_found_by_bare_name_in_the_override_folder(tmp_path: Path) -> None:
    # A bare name finds the file in $TINYNAS_CONSTRAINTS_DIR; the check holds for shipped-by-name files too.
    text = (constraints_dir() / "imx500.yaml").read_text(encoding="utf-8")
    bad, first, second = repeat_line(text, "runtime:", "runtime: tflm")
    (tmp_path / "chip.yaml").write_text(bad, encoding="utf-8")
    out = nas("profile", "--spec", "tinytracker", "--constraints", "chip",
              env={"TINYNAS_CONSTRAINTS_DIR": str(tmp_path)})
    assert_one_line_naming(out, tmp_path / "chip.yaml", "runtime", first, second)


def test_search_space_with_a_stage_field_twice(tmp_path: Path) -> None:
    text = (spaces_dir() / "mobilenetv3.yaml").read_text(encoding="utf-8")
    bad, first, second = repeat_line(text, "    kernel: 3", "    kernel: [3, 5, 7]")  # in the first stage
    path = tmp_path / "space.yaml"
    path.write_text(bad, encoding="utf-8")
    run_dir = tmp_path / "run"
    out = nas("search", "--constraints", "mcu_vww.yaml", "--space", str(path), "--run-dir", str(run_dir))
    assert_one_line_naming(out, path, "stages[0].kernel", first, second)
    assert not run_dir.exists()


def test_spec_file_with_a_key_twice(tmp_path: Path) -> None:
    text = yaml.safe_dump(preset("mobilenetv1-vww").to_dict(), sort_keys=False)
    bad, first, second = repeat_line(text, "width:", "width: 1.0")
    path = tmp_path / "spec.yaml"
    path.write_text(bad, encoding="utf-8")
    out = nas("profile", "--spec", str(path))
    assert_one_line_naming(out, path, "width", first, second)


def test_spec_file_with_a_block_field_twice(tmp_path: Path) -> None:
    text = yaml.safe_dump(preset("mobilenetv1-vww").to_dict(), sort_keys=False)
    lines = text.splitlines(keepends=True)
    second_block = [n for n, line in enumerate(lines) if line.startswith("- kind:")][1]
    kernel = next(n for n in range(second_block, len(lines)) if lines[n].startswith("  kernel:"))
    lines.insert(kernel + 1, "  kernel: 5\n")
    path = tmp_path / "spec.yml"
    path.write_text("".join(lines), encoding="utf-8")
    out = nas("profile", "--spec", str(path))
    assert_one_line_naming(out, path, "blocks[1].kernel", kernel + 1, kernel + 2)


@pytest.mark.parametrize("folder, suffix", [(constraints_dir, "yaml"), (spaces_dir, "yaml")])
def test_every_shipped_file_reads_as_safe_load_reads_it(folder, suffix: str) -> None:
    files = sorted(folder().glob(f"*.{suffix}"))
    assert files
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert yamlio.load(text, str(f)) == yaml.safe_load(text), f
    # and the loaders built on it accept them
    for f in files:
        (load_target if folder is constraints_dir else load_space)(f.name)


def test_what_is_not_a_repeated_key_still_loads() -> None:
    # a merge key's values may be overridden; equal keys in different mappings are fine; aliases are fine
    text = "base: &b {sram: 1 KB, flash: 2 KB}\nlimits:\n  <<: *b\n  sram: 3 KB\nother: {sram: 4 KB}\ncopy: *b\n"
    assert yamlio.load(text, "t.yaml") == yaml.safe_load(text)
    assert yamlio.load(text, "t.yaml")["limits"] == {"sram": "3 KB", "flash": "2 KB"}
    assert yamlio.load("", "t.yaml") is None and yamlio.load("# only a comment\n", "t.yaml") is None


def test_keys_equal_as_values_are_the_same_key() -> None:
    # YAML makes 1 and 0x1 the same int key; safe_load would keep "b" alone
    with pytest.raises(UserError, match=r"appears twice \(lines 1 and 2\)"):
        yamlio.load("1: a\n0x1: b\n", "t.yaml")
    with pytest.raises(UserError, match=r"run.yaml: field 'budget.epochs'"):
        yamlio.load("format: 1\nbudget:\n  epochs: 2\n  epochs: 3\n", "run.yaml")


def test_other_yaml_errors_stay_yaml_errors() -> None:
    # callers word those themselves ("valid YAML (... at line L, column C)")
    with pytest.raises(yaml.YAMLError):
        yamlio.load("a: [unclosed\n", "t.yaml")
    with pytest.raises(yaml.YAMLError):
        yamlio.load("a: 1\n---\nb: 2\n", "t.yaml")


def test_load_spec_raises_the_repeated_key_as_is(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("spec: in96x3-w0.25-cn_r1_k3_s2_c8_re-cls_n2_d0_re\nspec: x\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        load_spec(str(path))
    assert e.value.source == str(path) and e.value.field == "spec" and "lines 1 and 2" in e.value.expected


def test_a_json_spec_file_with_a_repeated_key_is_refused(tmp_path) -> None:
    """JSON's own parser keeps the last of two equal keys; a spec file is refused instead."""
    from nas.errors import UserError
    from nas.spec import load_spec, preset

    good = preset("mobilenetv1-vww").to_json()
    path = tmp_path / "spec.json"
    path.write_text(good[:-1] + ', "width": 0.5}')
    with pytest.raises(UserError, match=r"spec.json: field 'width': each key once"):
        load_spec(str(path))
    path.write_text(good)
    assert load_spec(str(path)) == preset("mobilenetv1-vww")
