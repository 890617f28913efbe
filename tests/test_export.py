"""`nas export` / `nas verify` for real: a model trained here, exported, re-run in TFLM, tampered with.

Nothing is mocked: the trained folder comes from nas.tf.candidate.evaluate (MNIST, tiny spec, 1 epoch, 600
samples), the run directory from a real `nas search` (2 tiny trials), and verify runs the TFLM host
interpreter. Quick failures (existing bundle, escaping names) go through the real CLI and never load
TensorFlow.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from nas import export
from nas.budget import Budget
from nas.tf.candidate import evaluate
from nas.errors import UserError
from nas.hardware import load_target
from nas.spec import parse_spec_string

ROOT = Path(__file__).resolve().parent.parent
NAS = str(Path(sys.executable).parent / "nas")
SPEC = "in28x1-w1-cn_r1_k3_s2_c8_re-ds_r1_k3_s2_c16_re-ds_r1_k3_s1_c16_hs-cls_n10_d0_re"


def nas(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([NAS, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "mnist-tiny"
    evaluate(parse_spec_string(SPEC), "mnist", Budget(epochs=1, learning_rate=0.01, train_limit=600), out,
             report="test")
    return out


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory) -> Path:
    """One bundle, exported through the real CLI with --zip (the other tests read or copy it)."""
    out = tmp_path_factory.mktemp("bundles")
    res = nas("export", str(trained), "--out", str(out), "--constraints", "mcu_vww.yaml", "--zip")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "nas verify" in res.stdout
    return out / "mnist-tiny"


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    dest = tmp_path / bundle.name
    shutil.copytree(bundle, dest)
    return dest


def rehash(bundle: Path, rel: str) -> None:
    """Record a changed file's sha256 in metadata.json, so verify's deeper checks are what catch the change."""
    meta = json.loads((bundle / "metadata.json").read_text())
    meta["files"][rel]["sha256"] = export.file_sha256(bundle / rel)
    if rel == export.TFLITE:
        meta["tflite_sha256"] = meta["files"][rel]["sha256"]
    (bundle / "metadata.json").write_text(json.dumps(meta))


# -- the bundle ----------------------------------------------------------------------------------------


def test_export_then_verify_passes(bundle):
    for name in ("model_int8.tflite", "model_qat.h5", "model_data.cc", "model_data.h", "metadata.json",
                 "README.md", "samples.npz", "constraints.yaml"):
        assert (bundle / name).is_file(), name
    res = nas("verify", str(bundle))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("OK ") and "8/8" in res.stdout


def test_c_array_bytes_equal_the_tflite_file(bundle):
    """Compiles nothing: reads the hex bytes of model_data.cc back and compares them with the .tflite."""
    tflite = (bundle / "model_int8.tflite").read_bytes()
    source = (bundle / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_model_data[] = {" in source
    body = source.split("g_model_data[] = {", 1)[1].split("};", 1)[0]
    data = bytes(int(tok, 16) for tok in re.findall(r"0x([0-9a-fA-F]{2})", body))
    assert data == tflite
    assert f"const unsigned int g_model_data_len = {len(tflite)};" in source
    header = (bundle / "model_data.h").read_text()
    meta = json.loads((bundle / "metadata.json").read_text())
    arena = meta["memory"]["arena"]
    assert f"constexpr int kTensorArenaSize = {arena['kTensorArenaSize']};" in header
    assert arena["kTensorArenaSize"] - arena["measured_minimum_bytes"] >= 1024
    assert arena["kTensorArenaSize"] % 16 == 0
    assert f"kInputZeroPoint = {meta['input']['zero_point']};" in header


def test_metadata_and_model_card_hold_the_numbers(bundle, trained):
    meta = json.loads((bundle / "metadata.json").read_text())
    metrics = json.loads((trained / "metrics.json").read_text())
    tflite = (bundle / "model_int8.tflite").read_bytes()
    assert meta["spec"] == metrics["spec"] == parse_spec_string(SPEC).to_string()
    assert meta["tflite_sha256"] == export.sha256(tflite)
    assert meta["metrics"]["int8"] == metrics["int8_metric"] and meta["metrics"]["float"] == metrics["float_metric"]
    assert meta["dataset"]["name"] == "mnist" and meta["seed"] == 0
    assert meta["input"]["dtype"] == meta["output"]["dtype"] == "int8"
    assert meta["input"]["scale"] == pytest.approx(metrics["input_quantization"]["scale"])
    assert meta["output"]["class_names"] == [str(i) for i in range(10)]
    mem = meta["memory"]
    assert mem["measured"]["tflite_bytes"] == len(tflite)
    assert mem["measured"]["tflm_min_arena_bytes"] <= mem["measured"]["tflm_arena_bytes"]
    assert mem["estimated"]["peak_sram_bytes"] > 0 and meta["macs"] > 0
    target = meta["target"]
    assert target["runtime"] == "tflm" and target["file"] == "constraints.yaml" and target["fits"] is True
    limits = {row["name"]: row for row in target["limits"]}
    assert set(limits) == {"sram_bytes", "flash_bytes", "macs"}
    assert limits["sram_bytes"]["value"] == mem["measured"]["tflm_arena_bytes"] and limits["sram_bytes"]["ok"]
    assert target["energy_mj"] > 0 and target["latency_ms"] > 0
    assert {"tensorflow", "tflite-micro", "numpy"} <= set(meta["versions"]["export"])
    assert 0 <= meta["samples"]["tflite_reference_max_diff_lsb"] <= 8  # HARD_SWISH rounds differently in TFLM
    assert meta["ops"][0] == "CONV_2D" and "HARD_SWISH" in meta["ops"]
    assert meta["imx500"] is None  # a tflm target gets no IMX500 part
    card = (bundle / "README.md").read_text()
    for text in ("tf.lite.Interpreter", "MicroMutableOpResolver<%d>" % len(meta["ops"]), "resolver.AddConv2D();",
                 "resolver.AddHardSwish();", f"{mem['arena']['kTensorArenaSize']:,}", "kInputScale",
                 f"{meta['metrics']['int8']:.4f}"):
        assert text in card, text
    lo, hi = meta["metrics"]["int8_interval"]
    assert lo <= meta["metrics"]["int8"] <= hi and meta["metrics"]["samples"] == 1000
    assert f"(95% CI {lo:.4f}-{hi:.4f}, n = 1,000)" in card  # every accuracy shown carries its interval
    with np.load(bundle / "samples.npz") as s:
        assert s["inputs"].dtype == np.int8 and s["outputs"].dtype == np.int8
        assert s["inputs"].shape == (8, 28, 28, 1) and s["outputs"].shape == (8, 10)


def test_zip_holds_the_bundle(bundle):
    zpath = bundle.with_name(bundle.name + ".zip")
    with zipfile.ZipFile(zpath) as zf:
        names = set(zf.namelist())
        assert zf.read(f"{bundle.name}/model_int8.tflite") == (bundle / "model_int8.tflite").read_bytes()
    assert names == {f"{bundle.name}/{p.relative_to(bundle).as_posix()}" for p in bundle.rglob("*") if p.is_file()}


# -- verify catches tampering --------------------------------------------------------------------------


def test_tampered_tflite_fails_verify_with_one_line(bundle, tmp_path):
    b = copy_of(bundle, tmp_path)
    data = bytearray((b / "model_int8.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "model_int8.tflite").write_bytes(bytes(data))
    res = nas("verify", str(b))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "model_int8.tflite" in lines[0] and "sha256" in lines[0], res.stderr


def test_verify_checks_the_c_array_itself(bundle, tmp_path):
    b = copy_of(bundle, tmp_path)
    source = (b / "model_data.cc").read_text()
    first = re.search(r"0x[0-9a-f]{2}", source.split("{", 1)[1]).group(0)
    source = source.replace("{\n    " + first, "{\n    " + ("0x00" if first != "0x00" else "0x01"), 1)
    (b / "model_data.cc").write_text(source)
    rehash(b, "model_data.cc")
    with pytest.raises(export.VerifyError, match="C array .* differs from model_int8.tflite .* at byte 0"):
        export.verify_bundle(b)


def test_verify_reruns_tflm_on_the_samples(bundle, tmp_path):
    b = copy_of(bundle, tmp_path)
    with np.load(b / "samples.npz") as s:
        arrays = {k: s[k] for k in s.files}
    arrays["outputs"] = arrays["outputs"].copy()
    arrays["outputs"][3, 0] ^= 1
    np.savez(b / "samples.npz", **arrays)
    rehash(b, "samples.npz")
    with pytest.raises(export.VerifyError, match="differ from the recorded ones on 1 of 8 samples .first: sample 3"):
        export.verify_bundle(b)


def test_verify_uses_the_bundles_arena_size(bundle, tmp_path):
    b = copy_of(bundle, tmp_path)
    header = (b / "model_data.h").read_text()
    (b / "model_data.h").write_text(re.sub(r"kTensorArenaSize = \d+;", "kTensorArenaSize = 2048;", header))
    rehash(b, "model_data.h")
    with pytest.raises(export.VerifyError, match="kTensorArenaSize 2048 differs"):
        export.verify_bundle(b)
    meta = json.loads((b / "metadata.json").read_text())
    meta["memory"]["arena"]["kTensorArenaSize"] = 2048
    (b / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(export.VerifyError, match="could not allocate the model in an arena of 2048 bytes"):
        export.verify_bundle(b)


def test_verify_of_a_folder_that_is_no_bundle_is_a_usage_error(tmp_path):
    res = nas("verify", str(tmp_path))
    assert res.returncode == 2 and "metadata.json" in res.stderr


# -- safety --------------------------------------------------------------------------------------------


def test_existing_bundle_needs_force(bundle, trained):
    before = (bundle / "metadata.json").read_bytes()
    res = nas("export", str(trained), "--out", str(bundle.parent))
    assert res.returncode == 2 and "--force" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert (bundle / "metadata.json").read_bytes() == before
    (bundle.parent / "fresh.zip").write_bytes(b"someone else's zip")
    res = nas("export", str(trained), "--out", str(bundle.parent), "--name", "fresh", "--zip")
    assert res.returncode == 2 and "fresh.zip" in res.stderr and "--force" in res.stderr
    assert not (bundle.parent / "fresh").exists()
    (bundle.parent / "fresh.zip").unlink()


@pytest.mark.parametrize("name", ["../../escaped", "../escaped", "a/b", "..", ".hidden", "/tmp/abs", ""])
def test_names_that_escape_the_output_folder_are_refused(trained, tmp_path, name):
    out = tmp_path / "out" / "deeper"
    res = nas("export", str(trained), "--out", str(out), "--name", name)
    assert res.returncode == 2, res.stderr
    assert "--name" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out" / "escaped").exists()
    assert not out.exists() or not any(out.iterdir())


def test_force_replaces_and_a_failure_leaves_no_half_bundle(trained, tmp_path, monkeypatch):
    target = load_target("mcu_vww.yaml")
    first = export.export_trial(trained, tmp_path, name="b", target=target, samples=2)
    sha = json.loads((first / "metadata.json").read_text())["tflite_sha256"]
    with pytest.raises(UserError, match="--force"):
        export.export_trial(trained, tmp_path, name="b", target=target)
    again = export.export_trial(trained, tmp_path, name="b", target=target, force=True, samples=3)
    assert json.loads((again / "metadata.json").read_text())["samples"]["count"] == 3
    assert json.loads((again / "metadata.json").read_text())["tflite_sha256"] == sha
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no .partial / .old folders left

    def boom(*_a, **_k):
        raise RuntimeError("disk full, say")

    monkeypatch.setattr("nas.export.bundle.model_card", boom)  # the card is written last, after every file
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_trial(trained, tmp_path, name="c", target=target, samples=2)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_trial(trained, tmp_path, name="b", target=target, samples=2, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # the old bundle is intact
    assert export.verify_bundle(tmp_path / "b").samples == 3


def test_not_a_trained_folder_is_a_usage_error(tmp_path):
    res = nas("export", str(tmp_path), "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "metrics.json" in res.stderr


def test_out_that_is_a_file_is_a_usage_error(trained, tmp_path):
    """`--out FILE` (or a folder under a file) is one line naming --out and what it is, exit 2, the file untouched."""
    taken = tmp_path / "bundles.txt"
    taken.write_text("not a folder")
    for out, what in ((taken, "this is an existing file"), (taken / "deeper", f"{taken} is an existing file")):
        res = nas("export", str(trained), "--out", str(out))
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        assert f"{out}: field '--out': a folder to write bundles into; {what}" in lines[0], lines[0]
    assert taken.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["bundles.txt"]


def test_selection_flags_need_a_run_directory(trained, tmp_path):
    res = nas("export", str(trained), "--best", "int8_metric", "--out", str(tmp_path))
    assert res.returncode == 2 and "run directory" in res.stderr


def test_c_helpers_round_trip():
    data = bytes(range(256)) * 3 + b"\x00\x7f"
    parsed, length = export.parse_c_array(export.c_array_source(data))
    assert parsed == data and length == len(data)
    assert export.op_resolver_method("CONV_2D") == "AddConv2D"
    assert export.op_resolver_method("DEPTHWISE_CONV_2D") == "AddDepthwiseConv2D"
    assert export.op_resolver_method("FULLY_CONNECTED") == "AddFullyConnected"
    assert export.op_resolver_method("HARD_SWISH") == "AddHardSwish"
    assert export.op_resolver_method("AVERAGE_POOL_2D") == "AddAveragePool2D"
    assert export.op_resolver_method("LOGISTIC") == "AddLogistic"
    assert export.arena_with_margin(10_000) == (11_024, 1_024)
    assert export.arena_with_margin(100_000) == (105_008, 5_008)


def test_importing_export_loads_no_tensorflow():
    """The package is cheap to import (nas verify's usage errors, the app's pages): TensorFlow loads with a bundle."""
    code = ("import sys, nas.export, nas.export.bundle, nas.export.verify; "
            "print([m for m in ('tensorflow', 'tf_keras', 'tflite_micro', 'nas.tf') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


def test_which_measured_figure_checks_which_memory_limit():
    """One table (nas.hardware.MEMORY_BASIS) for both runtimes; the IMX500 converter's report beats our model."""
    measured = {"tflm_arena_bytes": 60_000, "tflite_bytes": 90_000, "imx500_model_bytes": 700_000}
    tflm = load_target("mcu_vww.yaml").memory_basis(measured)
    assert tflm == {"sram_bytes": (60_000, "measured: TFLM arena (host interpreter)"),
                    "flash_bytes": (90_000, "measured: .tflite file size")}
    imx = load_target("imx500.yaml")
    assert imx.memory_basis(measured) == {
        "onchip_bytes": (700_000, "measured: IMX500 memory model on the converted graph")}
    assert imx.memory_basis({**measured, "imx500_usage_bytes": 710_000}) == {
        "onchip_bytes": (710_000, "IMX500 converter memory report: Memory Usage")}
    with pytest.raises(ValueError, match="no 'onchip_bytes' value"):  # no figure: the check refuses, never passes
        imx.check({"macs": 1, "latency_ms": 0, "energy_mj": 0,
                   **{k: v for k, (v, _) in imx.memory_basis({}).items()}})


# -- from a search run ---------------------------------------------------------------------------------

from tests.test_search import TINY as TINY_SPACE  # noqa: E402  - the same tiny space the search tests use


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("search")
    space = tmp / "tiny.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    run = tmp / "run"
    res = nas("search", "--constraints", "mcu_vww.yaml", "--dataset", "mnist", "--trials", "2", "--epochs", "1",
              "--train-limit", "300", "--space", str(space), "--run-dir", str(run), "--sampler", "random")
    assert res.returncode == 0, res.stderr[-3000:]
    return run


def test_export_best_from_a_search_run_then_verify(run_dir, tmp_path):
    """The issue's must-show: nas export RUN --best int8_metric --out DIR, then nas verify DIR/... passes."""
    from nas import results

    out = tmp_path / "bundles"
    res = nas("export", str(run_dir), "--best", "int8_metric", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    run = results.open_run(run_dir)
    feasible = [r for r in run.trials() if r.feasible]
    best = max(feasible, key=lambda r: (r.int8_metric, -r.number))
    bundle = out / f"trial-{best.number}"
    assert bundle.is_dir() and [p.name for p in out.iterdir()] == [bundle.name]
    verify = nas("verify", str(bundle))
    assert verify.returncode == 0, verify.stderr
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["source"]["trial"] == best.number and meta["source"]["selected_by"] == "--best int8_metric"
    assert meta["source"]["run_dir"] == str(run.path) and meta["spec"] == best.spec
    assert meta["metrics"]["int8"] == pytest.approx(best.int8_metric)
    assert meta["target"]["file"] == "constraints.yaml" and meta["target"]["fits"] is True
    assert meta["versions"]["run"]["tensorflow"]


def test_export_pareto_and_trial_from_a_run(run_dir, tmp_path):
    from nas import results

    run = results.open_run(run_dir)
    front = run.pareto()
    bundles = export.export(run_dir, tmp_path, pareto=True, name="front", samples=2)
    # one bundle per front member, named after its trial; a front of one keeps the name as given
    assert front and [b.name for b in bundles] == (["front"] if len(front) == 1 else
                                                   [f"front-trial-{r.number}" for r in front])
    assert all(json.loads((b / "metadata.json").read_text())["source"]["pareto_optimal"] for b in bundles)
    number = run.trials()[0].number
    [one] = export.export(run_dir, tmp_path, trial=number, samples=2, zip_bundle=True)
    assert one.name == f"trial-{number}" and one.with_name(one.name + ".zip").is_file()
    assert export.verify_bundle(one).samples == 2


def test_out_that_is_a_file_is_a_usage_error_for_a_run_too(run_dir, tmp_path):
    """The issue's case: nas export RUN --out FILE used to end in a FileExistsError traceback."""
    taken = tmp_path / "bundles"
    taken.write_bytes(b"")
    res = nas("export", str(run_dir), "--best", "int8_metric", "--out", str(taken))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"{taken}: field '--out': a folder to write bundles into; this is an existing file" in res.stderr
    assert taken.is_file() and [p.name for p in tmp_path.iterdir()] == ["bundles"]


def test_run_selection_errors_are_one_line(run_dir, tmp_path):
    for args, text in ((["--trial", "99"], "trial 99 does not exist"), ([], "--trial/--pareto/--best"),
                       (["--best", "accurcy"], "did you mean 'accuracy'")):
        res = nas("export", str(run_dir), *args, "--out", str(tmp_path))
        assert res.returncode == 2, (args, res.stderr)
        assert text in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
