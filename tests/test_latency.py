"""The per-operator latency model (issue 17): reference layers, the shipped fit against the stored MLPerf Tiny rows,
the linear path unchanged, per-layer latency of public .tflite models, nas calibrate recovering known coefficients,
the bad-input cases of the new fields (one line, exit 2) and the benchmark's quick mode. All in-process but the
benchmark; no TensorFlow."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nas import arena, latency, latency_fit, profile
from nas.cli import main
from nas.errors import UserError
from nas.hardware import load_target
from nas.latency import CostProfile
from nas.search.preflight import estimate_record
from nas.spec import load_spec, preset
from nas.testing import random_spec
from nas.tflite_report import format_tflite_report, tflite_report
from tests.shared import SHARED, require
from tests.test_hardware import GOOD_TFLM

ROOT = Path(__file__).resolve().parent.parent
CSV = SHARED / "hardware" / "mlperf_tiny_latency.csv"
PUBLIC = ("models/mlperf_ic_resnet8_int8.tflite", "holdout/models/mlperf_vww_96_int8.tflite",
          "holdout/models/tflm_person_detect.tflite", "holdout/models/tinytracker_TinyTracker.tflite")
TRUE = {"conv_first": 9.0, "conv": 4.0, "pointwise": 2.5, "depthwise": 7.0, "fc": 3.0, "overhead": 5000.0,
        "elementwise": 1.5}


def shares(layers) -> dict[str, float]:
    totals = latency_fit.class_totals(layers)
    macs = sum(totals[c] for c in latency.OP_CLASSES)
    return {c: totals[c] / macs for c in latency.OP_CLASSES}


# ------------------------------------------------------------------------------------- references and the fit


def test_reference_layers_have_the_readmes_macs_and_splits():
    # ../shared/hardware/README.md: kws 2,656,768 MACs (conv 12%, depthwise 10.8%, pointwise 77.1%), ad 264,192,
    # vww 7,489,664 (standard conv 6.6%, depthwise 10.7%, pointwise 82.7%), ic 12,501,632
    macs = {m: sum(layer.macs for layer in latency_fit.reference_layers(m)) for m in ("vww", "ic", "kws", "ad")}
    assert macs == {"vww": 7_489_664, "ic": 12_501_632, "kws": 2_656_768, "ad": 264_192}
    kws, vww = shares(latency_fit.reference_layers("kws")), shares(latency_fit.reference_layers("vww"))
    assert (round(100 * kws["conv_first"]), round(100 * kws["depthwise"], 1), round(100 * kws["pointwise"], 1)) == \
        (12, 10.8, 77.1)
    assert (round(100 * vww["conv_first"], 1), round(100 * vww["depthwise"], 1), round(100 * vww["pointwise"], 1)) == \
        (6.6, 10.7, 82.7)
    assert shares(latency_fit.reference_layers("ad"))["fc"] == 1.0


def test_shipped_profiles_are_the_fit_of_the_stored_rows():
    rows = latency_fit.read_mlperf_csv(require(CSV))
    shipped = (ROOT / "nas" / "latency_profiles.yaml").read_text()
    assert latency_fit.profiles_yaml(rows) == shipped  # regenerate: python -m nas.latency_fit CSV
    profiles = latency.shipped_profiles()
    assert len(profiles) == len({r.stack for r in rows}) == 11
    for r in rows:
        record = profiles[r.stack]
        prof = CostProfile.from_coefficients(r.stack, record["coefficients"])
        err = 100 * (latency_fit.predict_ms(prof, r.layers, r.clock_hz) / r.latency_ms - 1)
        assert err == pytest.approx(record["residuals_percent"][r.model], abs=0.06)
        if record["rows"] == 1:
            assert abs(err) < 0.06  # one row: the scale is solved from it, no check
        else:
            assert abs(err) < 30  # the fit's in-sample residuals (largest: TFLM 2.3.1 ad +25.4%)
    # the board's active power is energy / latency of its rows: NUCLEO-L4R5ZI TFLM 29,207 uJ / 704.2 ms ...
    assert profiles["cortex-m4f/tflm-2.3.1-cmsis-nn"]["active_power_mw"] == pytest.approx(
        (29207 / 704.2 + 7374 / 181.9 + 416 / 10.05) / 3, abs=0.01)
    assert profiles["cortex-m85-helium/tflm-cmsis-nn"]["active_power_mw"] is None  # no energy run submitted


def test_fit_by_family_differs_from_one_shared_fit_and_moves_the_relative_costs():
    rows = latency_fit.read_mlperf_csv(require(CSV))
    by_family = latency_fit.fit_by_family(rows)
    xcube, tflm = by_family["cortex-m7/x-cube-ai-9.0"], by_family["cortex-m4f/tflm-2.3.1-cmsis-nn"]
    assert xcube is by_family["cortex-m4f/x-cube-ai-10.2"] and xcube is not tflm
    assert xcube.relative != tflm.relative
    # without data a relative cost stays at the linear model's 1; X-CUBE-AI's rows move fc well away from it
    assert abs(xcube.relative["fc"] - 1) > 0.2


# ------------------------------------------------------------------------------------- targets


def test_linear_targets_ignore_the_graph_bit_for_bit():
    prof = profile.estimate(preset("tinytracker"))
    for name in ("imx500", "coral_micro", "spresense"):
        t = load_target(name)
        assert t.latency_model == "linear" and t.cost is None
        assert t.latency_ms(prof.macs, prof.layers) == t.latency_ms(prof.macs) == \
            t.fixed_latency_ms + float(prof.macs) / (t.macs_per_cycle * t.clock_hz) * 1000.0
        assert t.energy_mj(prof.macs, prof.layers) == t.energy_mj(prof.macs)
        assert sum(t.layer_ms(prof.layers)) == pytest.approx(t.inference_ms(prof.macs))


def test_mcu_vww_is_per_op_and_its_search_estimate_uses_the_graph():
    t = load_target("mcu_vww")
    assert t.latency_model == "per_op" and t.cost is not None
    assert t.cost.name == "cortex-m4f/tflm-2.3.1-cmsis-nn" and t.clock_hz == 120e6
    ic = profile.estimate(preset("resnet8-cifar"))
    # the IC ResNet-8 on this board measured 704.2 ms (mlcommons/tiny_results_v0.5, NUCLEO-L4R5ZI)
    assert t.inference_ms(ic.macs, ic.layers) == pytest.approx(704.2, rel=0.01)
    rec, _ = estimate_record(preset("mobilenetv1-vww"), t)
    vww = profile.estimate(preset("mobilenetv1-vww"))
    assert rec["latency_ms"] == t.latency_ms(vww.macs, vww.layers) != t.latency_ms(vww.macs)
    assert rec["energy_mj"] == pytest.approx(41.14 * rec["latency_ms"] / 1000)
    # the energy objective is no longer MACs rescaled: some pair of specs swaps order
    rng = random.Random(0)
    recs = [estimate_record(random_spec(rng, max_resolution=64, small=True), t)[0] for _ in range(30)]
    assert any(a["macs"] < b["macs"] and a["energy_mj"] > b["energy_mj"] for a in recs for b in recs)


def test_spec_graph_and_tflite_graph_give_the_same_latency():
    t = load_target("mcu_vww")
    for name, rel in (("mobilenetv1-vww", "holdout/models/mlperf_vww_96_int8.tflite"),
                      ("resnet8-cifar", "models/mlperf_ic_resnet8_int8.tflite")):
        spec = profile.estimate(preset(name))
        layers = latency.layers_from_tflite_graph(arena.read_graph(require(SHARED / rel).read_bytes()))
        assert t.inference_ms(0, layers) == pytest.approx(t.inference_ms(spec.macs, spec.layers), rel=1e-9)


@pytest.mark.parametrize("rel", PUBLIC)
def test_nas_profile_of_a_public_tflite_has_latency_per_layer(rel):
    data = require(SHARED / rel).read_bytes()
    per_op = tflite_report(data, rel, load_target("mcu_vww"), measure=False)
    rows = per_op["layers"]
    assert per_op["latency_model"] == "per_op"
    assert sum(row["latency_ms"] for row in rows) == pytest.approx(per_op["inference_ms"], rel=1e-9)
    assert all(row["latency_ms"] > 0 for row in rows if row["op"] != "RESHAPE")
    dw = [r for r in rows if r["class"] == "depthwise"]
    assert all(r["latency_ms"] > 0 for r in dw)
    linear = tflite_report(data, rel, load_target("spresense"), measure=False)
    assert [r["latency_ms"] for r in linear["layers"]] == pytest.approx(
        [r["macs"] / (0.20 * 156e6) * 1e3 for r in linear["layers"]])
    table = format_tflite_report(per_op)
    assert "latency" in table.splitlines()[7] and "per_op model" in table


# ------------------------------------------------------------------------------------- nas calibrate


def _generated_csv(tmp_path: Path, coefficients: dict[str, float], n: int = 16) -> Path:
    """Timings a board with known coefficients would give: random specs, the IC ResNet-8 (standard convs) as a
    spec and as a .tflite, at 120 MHz; energy at 30 mW."""
    prof = CostProfile.from_coefficients("true", coefficients)
    rng = random.Random(3)
    models = [random_spec(rng, max_resolution=64, small=True).to_string() for _ in range(n)]
    models += ["resnet8-cifar", str(require(SHARED / "models/mlperf_ic_resnet8_int8.tflite"))]
    lines = ["model,latency_ms,energy_mj"]
    for m in models:
        if m.endswith(".tflite"):
            layers = latency.layers_from_tflite_graph(arena.read_graph(Path(m).read_bytes()))
        else:
            layers = profile.estimate(load_spec(m)).layers  # a preset name or a spec string
        ms = prof.cycles(layers) / 120e6 * 1e3
        lines.append(f"{m},{ms:.9g},{ms * 0.030:.9g}")
    path = tmp_path / "timings.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_calibrate_recovers_the_true_coefficients(tmp_path, capsys):
    csv_path = _generated_csv(tmp_path, TRUE)
    out = tmp_path / "board.yaml"
    assert main(["calibrate", str(csv_path), "--constraints", "mcu_vww.yaml", "--out", str(out), "--fit", "all"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("%") == 18 and "fit         all on 18 row(s)" in printed  # a residual per row
    hardware = yaml.safe_load(out.read_text())["hardware"]
    assert hardware["latency_model"] == "per_op" and hardware["clock_hz"] == 120e6
    for key, value in TRUE.items():
        assert hardware["coefficients"][key] == pytest.approx(value, rel=1e-4), key
    assert hardware["inference_power_mw"] == pytest.approx(30.0)
    t = load_target(str(out))  # works everywhere a constraint file does
    vww = profile.estimate(preset("mobilenetv1-vww"))
    assert t.inference_ms(vww.macs, vww.layers) == pytest.approx(
        CostProfile.from_coefficients("t", TRUE).cycles(vww.layers) / 120e6 * 1e3, rel=1e-4)
    assert t.sram_bytes == 256_000 and t.max_macs == 60_000_000  # the base file's limits kept
    assert main(["profile", "--spec", "mobilenetv1-vww", "--constraints", str(out)]) == 0


def test_calibrate_with_few_rows_fits_one_scale(tmp_path, capsys):
    base = load_target("mcu_vww").cost
    assert base is not None
    scaled = {k: 1.7 * v for k, v in base.coefficients().items()}
    csv_path = _generated_csv(tmp_path, scaled, n=2)  # 4 rows < 7 coefficients + 2: auto -> scale
    out = tmp_path / "board.yaml"
    assert main(["calibrate", str(csv_path), "--constraints", "mcu_vww.yaml", "--out", str(out)]) == 0
    assert "fit         scale on 4 row(s)" in capsys.readouterr().out
    got = yaml.safe_load(out.read_text())["hardware"]["coefficients"]
    assert got == pytest.approx(scaled, rel=1e-5)


# ------------------------------------------------------------------------------------- bad input


PER_OP = GOOD_TFLM.replace("  macs_per_cycle: 0.5\n", "  latency_model: per_op\n  profile: cortex-m4f/x-cube-ai-10.2\n")
COEFFS = "".join(f"    {k}: {v}\n" for k, v in TRUE.items())
PROFILE_LINE = "  profile: cortex-m4f/x-cube-ai-10.2\n"


def with_coefficients(text: str) -> str:
    return PER_OP.replace(PROFILE_LINE, "  coefficients:\n" + text)


@pytest.mark.parametrize("text, field, fragment", [
    (PER_OP.replace("per_op", "perop"), "hardware.latency_model", "did you mean 'per_op'"),
    (PER_OP.replace("x-cube-ai-10.2", "x-cube-ai-10.3"), "hardware.profile",
     "did you mean 'cortex-m4f/x-cube-ai-10.2'"),
    (PER_OP.replace("  profile: cortex-m4f/x-cube-ai-10.2\n", ""), "hardware.profile", "got neither"),
    (PER_OP + "  coefficients:\n" + COEFFS, "hardware.profile", "got both"),
    (GOOD_TFLM + "  profile: cortex-m4f/x-cube-ai-10.2\n", "hardware.profile", "only with 'latency_model: per_op'"),
    (with_coefficients(COEFFS.replace("    fc: 3.0\n", "")), "hardware.coefficients.fc", "missing"),
    (with_coefficients(COEFFS.replace("9.0", "-9")), "hardware.coefficients.conv_first",
     "positive number (cycles per MAC)"),
    (with_coefficients(COEFFS + "    dense: 1\n"), "hardware.coefficients.dense", "unknown"),
    (PER_OP.replace("  profile: cortex-m4f/x-cube-ai-10.2\n", "  coefficients: fast\n"),
     "hardware.coefficients", "a mapping of conv_first"),
])
def test_bad_per_op_fields_are_one_line_naming_file_and_field(tmp_path, capsys, text, field, fragment):
    path = tmp_path / "board.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_target(str(path))
    assert e.value.field == field and fragment in str(e.value)
    assert main(["profile", "--spec", "mobilenetv1-vww", "--constraints", str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"nas profile: error: {path}: field '{field}'") and fragment in line


def test_a_per_op_file_with_coefficients_loads(tmp_path):
    path = tmp_path / "board.yaml"
    path.write_text(with_coefficients(COEFFS))
    t = load_target(str(path))
    assert t.cost is not None and t.cost.coefficients() == TRUE and t.clock_hz == 100e6


@pytest.mark.parametrize("csv_text, fragment", [
    ("name,ms\nx,1\n", "field 'header': the columns model,latency_ms"),
    ("model,latency_ms\nmobilenetv1-vww,fast\n", "field 'line 2: latency_ms': a positive number"),
    ("model,latency_ms\nmobilenetv1-vww,-3\n", "field 'line 2: latency_ms'"),
    ("model,latency_ms,energy_mj\nmobilenetv1-vww,3,0\n", "field 'line 2: energy_mj'"),
    ("model,latency_ms\nmissing.tflite,3\n", "field 'line 2: model': an existing .tflite file"),
    ("model,latency_ms\nmobilenetv1-vvw,3\n", "field 'line 2: model': a .tflite path or a spec"),
    ("model,latency_ms\n", "at least one measured model"),
])
def test_bad_measurements_are_one_line_exit_2(tmp_path, capsys, csv_text, fragment):
    path = tmp_path / "m.csv"
    path.write_text(csv_text)
    rc = main(["calibrate", str(path), "--constraints", "mcu_vww.yaml", "--out", str(tmp_path / "o.yaml")])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and line.startswith(f"nas calibrate: error: {path}") and fragment in line, line
    assert not (tmp_path / "o.yaml").exists()


def test_calibrate_refuses_to_overwrite_and_unknown_constraints(tmp_path, capsys):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("model,latency_ms\nmobilenetv1-vww,300\n")
    out = tmp_path / "o.yaml"
    out.write_text("mine")
    assert main(["calibrate", str(csv_path), "--constraints", "mcu_vww.yaml", "--out", str(out)]) == 2
    assert "--force replaces it" in capsys.readouterr().err and out.read_text() == "mine"
    assert main(["calibrate", str(csv_path), "--constraints", "nope.yaml", "--out", str(out)]) == 2
    assert "nope.yaml" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- the benchmark


def test_latency_benchmark_quick(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "latency_model.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads((tmp_path / "latency_model_quick.json").read_text())
    assert len(out["loo"]) == 9  # three stacks with three models each
    assert {r["stack"] for r in out["loo"]} == {"cortex-m4f/tflm-2.3.1-cmsis-nn", "cortex-m4f/x-cube-ai-10.2",
                                                "cortex-m7/x-cube-ai-9.0"}
    s = out["summary"]
    # linear leave-one-out by hand for one row: TFLM 2.3.1 ad from ic and kws (geometric mean MACs/cycle)
    ad = next(r for r in out["loo"] if r["model"] == "ad" and r["stack"].startswith("cortex-m4f/tflm"))
    mpc = (12_501_632 / (704.2e-3 * 120e6) * 2_656_768 / (181.9e-3 * 120e6)) ** 0.5
    assert ad["predicted_ms"]["linear"] == pytest.approx(264_192 / (mpc * 120e6) * 1e3)
    assert s["family"]["median"] < s["linear"]["median"]
    assert set(s["goals"]["family"]) == {"median_ok", "ratio", "ratio_ok"}
    rank = out["ranking"][0]
    assert rank["n"] == 40 and -1 <= rank["spearman_latency_vs_macs"] <= 1
    pair = rank["pair"]
    assert pair["slower_with_fewer_macs"]["macs"] < pair["faster_with_more_macs"]["macs"]
    assert pair["slower_with_fewer_macs"]["latency_ms"] > pair["faster_with_more_macs"]["latency_ms"]
    assert (tmp_path / "latency_model_quick.md").read_text().startswith("Latency model")
