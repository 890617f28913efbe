"""Deployment targets: calibration against the TinyTracker paper, size parsing, validation, resolution, checks."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nas.errors import UserError
from nas.hardware import (
    LimitCheck,
    Target,
    constraints_dir,
    load_target,
    parse_macs,
    parse_size,
    shipped_targets,
)

TINYTRACKER_MACS = 16_815_360  # the TinyTracker preset in our profiler

SHIPPED = Path(__file__).resolve().parent.parent / "nas" / "constraints"

GOOD_TFLM = """\
name: test mcu
runtime: tflm
limits:
  sram: 250 KB
  flash: 1 MB
  macs: 60M
hardware:
  clock_hz: 100 MHz
  macs_per_cycle: 0.5
  inference_power_mw: 10
"""


def write(tmp_path: Path, text: str, name: str = "target.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def rel(actual: float, expected: float) -> float:
    return abs(actual - expected) / expected


# ------------------------------------------------------------------------------------- calibration


def test_imx500_reproduces_tinytracker_paper_within_1_percent():
    t = load_target("imx500")
    assert t.runtime == "imx500"
    assert t.onchip_bytes == 8_388_480
    assert rel(t.inference_ms(TINYTRACKER_MACS), 0.86) < 0.01
    assert rel(t.latency_ms(TINYTRACKER_MACS), 19.0) < 0.01
    assert rel(t.inference_energy_mj(TINYTRACKER_MACS), 0.06) < 0.01
    assert rel(t.energy_mj(TINYTRACKER_MACS), 4.9) < 0.01
    # the fixed part is the paper's 17.9 ms read/process/transmit + 0.24 ms result retrieval
    assert t.fixed_latency_ms == pytest.approx(17.9 + 0.24)
    assert t.macs_per_cycle == pytest.approx(73.23)


def test_coral_micro_reproduces_end_to_end_within_1_percent():
    t = load_target("coral_micro")
    assert t.runtime == "tflm"
    assert t.macs_per_cycle == pytest.approx(8.69)
    assert rel(t.latency_ms(TINYTRACKER_MACS), 34.4) < 0.01
    assert rel(t.energy_mj(TINYTRACKER_MACS), 34.2) < 0.01
    # the inference part scales with MACs at 8.69 MACs/cycle
    assert t.inference_ms(TINYTRACKER_MACS) == pytest.approx(TINYTRACKER_MACS / (8.69 * t.clock_hz) * 1e3)


def test_spresense_and_vww_models():
    s = load_target("spresense")
    assert s.macs_per_cycle == pytest.approx(0.20)
    assert s.clock_hz == pytest.approx(156e6)
    assert s.inference_ms(TINYTRACKER_MACS) == pytest.approx(TINYTRACKER_MACS / (0.20 * 156e6) * 1e3)
    assert s.fixed_latency_ms == 0 and s.fixed_energy_mj == 0
    v = load_target("mcu_vww")
    assert v.sram_bytes == 250 * 1024 == 256_000
    assert v.flash_bytes == 256_000
    assert v.max_macs == 60_000_000
    assert v.memory_limit_bytes == 256_000


def test_latency_and_energy_grow_with_macs():
    for name in shipped_targets():
        t = load_target(name)
        assert t.latency_ms(2 * TINYTRACKER_MACS) > t.latency_ms(TINYTRACKER_MACS) > t.fixed_latency_ms
        assert t.energy_mj(2 * TINYTRACKER_MACS) > t.energy_mj(TINYTRACKER_MACS) >= t.fixed_energy_mj
        assert t.latency_ms(0) == pytest.approx(t.fixed_latency_ms)


def test_every_shipped_target_loads():
    assert set(shipped_targets()) >= {"imx500", "coral_micro", "spresense", "mcu_vww"}
    for name in shipped_targets():
        t = load_target(name)
        assert isinstance(t, Target)
        assert t.memory_limit_bytes is not None and t.memory_limit_bytes > 0


def test_target_is_frozen_plain_data():
    t = load_target("imx500")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.onchip_bytes = 1  # type: ignore[misc]
    assert dataclasses.asdict(t)["onchip_bytes"] == 8_388_480


# ------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, expected", [
    ("250 KB", 256_000),
    ("250KB", 256_000),
    ("512 KiB", 524_288),
    ("8 MB", 8 * 1024 * 1024),
    ("8 MiB", 8_388_608),
    ("1.5 MB", 1_572_864),
    ("1 GB", 1024 ** 3),
    ("250 kb", 256_000),
    ("100 B", 100),
    (8_388_480, 8_388_480),
    ("8388480", 8_388_480),
    (1024.0, 1024),
])
def test_parse_size(text, expected):
    assert parse_size(text, "f.yaml", "limits.sram") == expected


def test_imx500_is_just_under_8_mb():
    assert parse_size("8 MB") - 8_388_480 == 128


@pytest.mark.parametrize("text", ["250 KBB", "-1 MB", "0", 0, "0 KB", "", "KB", "1.5", 1.5, "lots", True, None,
                                  "nan", "1e999 MB", [250]])
def test_parse_size_rejects(text):
    with pytest.raises(UserError) as e:
        parse_size(text, "my.yaml", "limits.sram")
    msg = str(e.value)
    assert "my.yaml" in msg and "limits.sram" in msg and "KB" in msg


@pytest.mark.parametrize("text, expected", [
    ("60M", 60_000_000), ("60e6", 60_000_000), ("1.2G", 1_200_000_000), (60_000_000, 60_000_000),
    ("500k", 500_000), ("60 M", 60_000_000), (6e7, 60_000_000),
])
def test_parse_macs(text, expected):
    assert parse_macs(text, "f.yaml", "limits.macs") == expected


@pytest.mark.parametrize("text", ["60 MB", "-60M", "0", "60X", "sixty"])
def test_parse_macs_rejects(text):
    with pytest.raises(UserError) as e:
        parse_macs(text, "my.yaml", "limits.macs")
    assert "my.yaml" in str(e.value) and "limits.macs" in str(e.value)


# ------------------------------------------------------------------------------------- resolution


def test_bare_names_resolve_to_shipped_files():
    by_stem = load_target("imx500")
    by_file = load_target("imx500.yaml")
    assert by_stem == by_file
    assert Path(by_stem.path) == (SHIPPED / "imx500.yaml").resolve()
    assert constraints_dir() == SHIPPED


def test_user_path_is_loaded(tmp_path):
    path = write(tmp_path, GOOD_TFLM, "mine.yaml")
    t = load_target(str(path))
    assert t.name == "test mcu"
    assert t.path == str(path)
    assert t.sram_bytes == 256_000 and t.flash_bytes == 1024 ** 2 and t.max_macs == 60_000_000
    assert t.clock_hz == 100e6 and t.fixed_latency_ms == 0.0 and t.fixed_energy_mj == 0.0
    assert t.max_latency_ms is None and t.max_energy_mj is None and t.onchip_bytes is None


def test_user_file_in_cwd_shadows_nothing_but_is_found(tmp_path, monkeypatch):
    write(tmp_path, GOOD_TFLM, "custom.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_target("custom.yaml").name == "test mcu"


def test_env_override_of_constraints_dir(tmp_path, monkeypatch):
    write(tmp_path, GOOD_TFLM, "board.yaml")
    monkeypatch.setenv("TINYNAS_CONSTRAINTS_DIR", str(tmp_path))
    assert shipped_targets() == ["board"]
    assert load_target("board").name == "test mcu"


def test_name_defaults_to_file_stem(tmp_path):
    path = write(tmp_path, GOOD_TFLM.replace("name: test mcu\n", ""), "stem_name.yaml")
    assert load_target(str(path)).name == "stem_name"


def test_missing_file_lists_shipped_names(tmp_path):
    with pytest.raises(UserError) as e:
        load_target("imx5000")
    msg = str(e.value)
    assert "imx5000" in msg and "imx500" in msg and "coral_micro" in msg and "did you mean" in msg
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UserError) as e:
        load_target(str(missing))
    assert str(missing) in str(e.value) and "mcu_vww" in str(e.value)


def test_directory_is_not_a_target(tmp_path):
    with pytest.raises(UserError) as e:
        load_target(str(tmp_path))
    assert str(tmp_path) in str(e.value)


# ------------------------------------------------------------------------------------- validation


def error_for(tmp_path: Path, text: str) -> tuple[str, UserError]:
    path = write(tmp_path, text)
    with pytest.raises(UserError) as e:
        load_target(str(path))
    assert str(path) in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    return str(path), e.value


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("   \n\n", "empty"),
    ("# only a comment\n", "comments"),
    ("runtime: tflm\nlimits: [unclosed\n", "valid YAML"),
    ("- runtime: tflm\n- limits: {}\n", "got a list"),
    ("just a string\n", "got a str"),
])
def test_file_level_errors(tmp_path, text, fragment):
    _, err = error_for(tmp_path, text)
    assert fragment in str(err)


@pytest.mark.parametrize("edit, field, fragment", [
    # unknown fields, with did-you-mean
    (("runtime: tflm", "runtime: tflm\nruntme: tflm"), "runtme", "did you mean 'runtime'"),
    (("  sram: 250 KB", "  sramm: 250 KB"), "limits.sramm", "did you mean 'sram'"),
    (("  clock_hz: 100 MHz", "  clock: 100 MHz"), "hardware.clock", "did you mean 'clock_hz'"),
    # missing required fields
    (("runtime: tflm\n", ""), "runtime", "required"),
    (("  macs_per_cycle: 0.5\n", ""), "hardware.macs_per_cycle", "required"),
    (("  inference_power_mw: 10\n", ""), "hardware.inference_power_mw", "required"),
    # wrong runtime
    (("runtime: tflm", "runtime: tflite"), "runtime", "tflm"),
    # tflm without sram; onchip on tflm
    (("  sram: 250 KB\n", ""), "limits.sram", "required"),
    (("  sram: 250 KB", "  sram: 250 KB\n  onchip: 8 MB"), "limits.onchip", "sram"),
    # bad sizes / counts
    (("  sram: 250 KB", "  sram: 250 KBB"), "limits.sram", "KB"),
    (("  sram: 250 KB", "  sram: -1 MB"), "limits.sram", "positive"),
    (("  sram: 250 KB", "  sram: 0"), "limits.sram", "positive"),
    (("  flash: 1 MB", "  flash: big"), "limits.flash", "KB"),
    (("  macs: 60M", "  macs: 60 MB"), "limits.macs", "M = 1e6"),
    (("  macs: 60M", "  macs: 0"), "limits.macs", "positive"),
    (("  macs: 60M", "  macs: 60M\n  latency_ms: -5"), "limits.latency_ms", "positive"),
    (("  macs: 60M", "  macs: 60M\n  energy_mj: fast"), "limits.energy_mj", "positive"),
    # non-positive / non-numeric hardware figures
    (("  clock_hz: 100 MHz", "  clock_hz: 0"), "hardware.clock_hz", "positive"),
    (("  clock_hz: 100 MHz", "  clock_hz: 100 MHz/s"), "hardware.clock_hz", "Hz"),
    (("  macs_per_cycle: 0.5", "  macs_per_cycle: -0.5"), "hardware.macs_per_cycle", "positive"),
    (("  macs_per_cycle: 0.5", "  macs_per_cycle: true"), "hardware.macs_per_cycle", "positive"),
    (("  inference_power_mw: 10", "  inference_power_mw: 0"), "hardware.inference_power_mw", "positive"),
    (("  inference_power_mw: 10", "  inference_power_mw: 10\n  fixed_latency_ms: -1"),
     "hardware.fixed_latency_ms", "non-negative"),
    (("  inference_power_mw: 10", "  inference_power_mw: 10\n  fixed_energy_mj: x"),
     "hardware.fixed_energy_mj", "non-negative"),
    # sections of the wrong shape
    (("limits:\n  sram: 250 KB\n  flash: 1 MB\n  macs: 60M\n", "limits: [250 KB]\n"), "limits", "mapping"),
    (("hardware:\n  clock_hz: 100 MHz\n  macs_per_cycle: 0.5\n  inference_power_mw: 10\n", "hardware: fast\n"),
     "hardware", "mapping"),
    (("name: test mcu", "name: ''"), "name", "non-empty"),
])
def test_field_errors_name_file_and_field(tmp_path, edit, field, fragment):
    old, new = edit
    assert old in GOOD_TFLM, old
    _, err = error_for(tmp_path, GOOD_TFLM.replace(old, new, 1))
    assert err.field == field, str(err)
    assert f"'{field}'" in str(err)
    assert fragment in str(err), str(err)


def test_imx500_needs_onchip_and_rejects_sram(tmp_path):
    base = ("runtime: imx500\nlimits:\n  onchip: 8388480\nhardware:\n  clock_hz: 267e6\n"
            "  macs_per_cycle: 73.23\n  inference_power_mw: 69.77\n")
    path = write(tmp_path, base, "ok.yaml")
    t = load_target(str(path))
    assert t.clock_hz == 267e6  # YAML 1.1 reads '267e6' as a string; it is still a number here
    assert t.memory_limit_bytes == 8_388_480
    _, err = error_for(tmp_path, base.replace("  onchip: 8388480\n", "  macs: 100M\n"))
    assert err.field == "limits.onchip" and "required" in str(err)
    _, err = error_for(tmp_path, base.replace("  onchip: 8388480\n", "  onchip: 8388480\n  sram: 1 MB\n"))
    assert err.field == "limits.sram" and "onchip" in str(err)


def test_user_error_is_one_line_with_file_field_and_expectation(tmp_path):
    path, err = error_for(tmp_path, GOOD_TFLM.replace("  sram: 250 KB", "  sram: 250 KBB"))
    assert str(err).startswith(f"{path}: field 'limits.sram': ")
    assert err.source == path and err.field == "limits.sram" and "250 KBB" in err.expected


# ------------------------------------------------------------------------------------- checks


def test_check_pass_fail_and_headroom(tmp_path):
    t = load_target("mcu_vww")
    values = {"macs": 50_000_000, "sram_bytes": 300_000, "flash_bytes": 200_000, "latency_ms": 9e9}
    checks = t.check(values)
    assert [c.name for c in checks] == ["sram_bytes", "flash_bytes", "macs"]  # latency: no limit, ignored
    by = {c.name: c for c in checks}
    assert by["sram_bytes"] == LimitCheck("sram_bytes", 300_000, 256_000, "B", False)
    assert by["sram_bytes"].headroom == -44_000
    assert by["flash_bytes"].ok and by["flash_bytes"].headroom == 56_000
    assert by["macs"].ok and by["macs"].headroom == 10_000_000 and by["macs"].unit == "MACs"
    # exactly at the limit fits
    assert all(c.ok for c in t.check({"macs": 60_000_000, "sram_bytes": 256_000, "flash_bytes": 256_000}))


def test_check_latency_and_energy_limits(tmp_path):
    text = GOOD_TFLM.replace("  macs: 60M", "  macs: 60M\n  latency_ms: 100\n  energy_mj: 0.5")
    t = load_target(str(write(tmp_path, text)))
    macs = 4_000_000
    values = {"macs": macs, "sram_bytes": 1, "flash_bytes": 1,
              "latency_ms": t.latency_ms(macs), "energy_mj": t.energy_mj(macs)}
    by = {c.name: c for c in t.check(values)}
    assert by["latency_ms"].ok and by["latency_ms"].headroom == pytest.approx(100 - 80.0)  # 4e6/(0.5*100e6) s
    assert not by["energy_mj"].ok and by["energy_mj"].headroom == pytest.approx(0.5 - 0.8)  # 10 mW * 80 ms


def test_check_imx500_uses_onchip():
    t = load_target("imx500")
    (only,) = t.check({"onchip_bytes": 600_000, "macs": TINYTRACKER_MACS})
    assert only.name == "onchip_bytes" and only.ok and only.headroom == 8_388_480 - 600_000


def test_check_missing_value_is_a_programming_error():
    t = load_target("mcu_vww")
    with pytest.raises(ValueError, match="flash_bytes"):
        t.check({"macs": 1, "sram_bytes": 1})
