"""The Sony IMX500 part of export, with the real converter when its environment exists.

The converter needs its own venv (`nas imx500 setup`; STACK.md). Tests that need it skip with a reason when
it is missing, and FAIL instead when TINYNAS_REQUIRE_IMX500=1 (CI sets it after building the venv), so a
broken setup can never turn into a silent skip there. The tests for a missing environment run everywhere.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nas import export, imx500
from nas.budget import Budget
from nas.tf.candidate import evaluate
from nas.spec import parse_spec_string

ROOT = Path(__file__).resolve().parent.parent
NAS = str(Path(sys.executable).parent / "nas")
# hard-swish, squeeze-excite, an inverted residual with a skip connection and a dense hidden layer: every
# builder path the converter's rebuild must reproduce for a classifier
SPEC = "in32x1-w1-cn_r1_k3_s2_c8_hs-ir_r1_k3_s2_e2_c16_se0.25_hs-ir_r1_k3_s1_e2_c16_re-cls_n10_h32_d0_hs"
# TinyTracker's head (face-grid channels folded in, flatten, dense, 20 * tanh) and a ds block with SE
GAZE_SPEC = "in32x3-w1-cn_r1_k3_s2_c8_re-ds_r1_k5_s2_c16_se0.25_hs-ir_r2_k3_s1_e3_c16_r6-gaze_g2_c4_h16_o20_hs"


def nas(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([NAS, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def converter_venv() -> Path:
    venv = imx500.default_venv()
    status = imx500.check(venv, deep=False)
    if status.ok:
        return venv
    reason = f"IMX500 converter environment not ready ({'; '.join(status.problems)}); create it with: nas imx500 setup"
    if os.environ.get("TINYNAS_REQUIRE_IMX500") == "1":
        pytest.fail(f"TINYNAS_REQUIRE_IMX500=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "mnist-imx"
    evaluate(parse_spec_string(SPEC), "mnist", Budget(epochs=1, learning_rate=0.01, train_limit=600), out,
             report="test")
    return out


# -- with the real converter ---------------------------------------------------------------------------


def test_imx500_bundle_with_packer_and_a_memory_report_that_fits(converter_venv, trained, tmp_path):
    res = nas("export", str(trained), "--out", str(tmp_path), "--constraints", "imx500.yaml", "--zip")
    assert res.returncode == 0, res.stderr[-3000:]
    bundle = tmp_path / "mnist-imx"
    assert "IMX500: packerOut.zip" in res.stdout and "Fit In Chip: True" in res.stdout
    packer = bundle / "imx500" / "packerOut.zip"
    assert packer.is_file() and packer.stat().st_size > 1000
    reports = list((bundle / "imx500").glob("*_MemoryReport.json"))
    assert len(reports) == 1
    raw = json.loads(reports[0].read_text())["Memory Report"]
    assert raw["Fit In Chip"] is True and raw["Total Memory Available On Chip"] == "8388480B"

    meta = json.loads((bundle / "metadata.json").read_text())
    imx = meta["imx500"]
    assert imx["status"] == "converted" and imx["fit_in_chip"] is True
    rep = imx["memory_report"]
    assert rep["available_bytes"] == 8_388_480
    assert rep["usage_bytes"] == rep["runtime_bytes"] + rep["model_bytes"] + rep["reserved_bytes"]
    cmp_ = imx["estimate_vs_report"]
    assert cmp_["estimated_onchip_bytes"] > 0 and cmp_["measured_model_bytes"] > 0
    assert cmp_["report_usage_bytes"] == rep["usage_bytes"]
    assert meta["memory"]["imx500_converter"] == rep
    # the model was rebuilt layer for layer in the converter's venv from the same weights
    assert imx["rebuild_check"]["float_max_abs_diff"] < 1e-4
    assert imx["converter"]["imx500-converter"].startswith("3.19")
    [limit] = meta["target"]["limits"]
    assert limit["name"] == "onchip_bytes" and limit["value"] == rep["usage_bytes"] and limit["ok"]
    assert "converter memory report" in limit["basis"]
    assert "imx500/packerOut.zip" in meta["files"]
    assert "Fit In Chip | **yes**" in (bundle / "README.md").read_text()
    assert export.verify_bundle(bundle).files_checked[-1] == "imx500/packerOut.zip"


def test_worker_rebuild_matches_the_builder_for_the_gaze_head(converter_venv, tmp_path):
    """MCT side only (no imxconv-tf): the rebuild of TinyTracker's head gives the builder's float outputs."""
    import tf_keras as keras

    from nas.tf import builder

    spec = parse_spec_string(GAZE_SPEC)
    keras.utils.set_random_seed(1)
    model = builder.build(spec)
    x = np.random.default_rng(0).random((4, 32, 32, 5), dtype=np.float32)
    weights = imx500.float_weights(model, builder.build(spec))  # a float model's names carry no quant_ prefix
    work = tmp_path / "work"
    work.mkdir()
    np.savez(work / "w.npz", **weights)
    np.save(work / "x.npy", x)
    job = {"spec": spec.to_string(), "weights": str(work / "w.npz"), "representative": str(work / "x.npy"),
           "check_inputs": str(work / "x.npy"), "out_dir": str(work)}
    (work / "job.json").write_text(json.dumps(job))
    with imx500.worker_command(converter_venv, work / "job.json") as (cmd, env):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    np.testing.assert_allclose(np.load(work / "float_outputs.npy"), model.predict(x, verbose=0), atol=1e-4)
    assert (work / "model.keras").is_file()
    assert json.loads((work / "worker.json").read_text())["weights_loaded"] == len(weights)


def test_worker_gets_our_package_and_the_venvs_tensorflow(converter_venv, tmp_path):
    """The worker's path holds only our package (a link), so the converter venv's TF 2.15 / numpy 1 are what it
    imports, also when our package sits in a site-packages full of TF 2.21 (a wheel install)."""
    probe = ("import nas.topology, numpy, tensorflow; "
             "print(nas.topology.__file__); print(tensorflow.__version__); print(numpy.__version__)")
    with imx500.worker_command(converter_venv, tmp_path / "job.json") as (cmd, env):
        folder = Path(env["PYTHONPATH"])
        assert [p.name for p in folder.iterdir()] == ["nas"]
        assert (folder / "nas").resolve() == Path(imx500.__file__).resolve().parent
        assert cmd[1:3] == ["-m", "nas.imx500_worker"]
        res = subprocess.run([cmd[0], "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path,
                             timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    topology_file, tf_version, np_version = res.stdout.split()
    assert topology_file == str(folder / "nas" / "topology.py")
    assert tf_version.startswith("2.15.") and np_version.startswith("1.")
    assert not folder.exists()  # the link lives only as long as the run


# -- without it ----------------------------------------------------------------------------------------


def test_missing_environment_still_writes_the_bundle_and_says_how(trained, tmp_path):
    missing = tmp_path / "no-venv"
    res = nas("export", str(trained), "--out", str(tmp_path / "out"), "--constraints", "imx500.yaml",
              "--imx500-venv", str(missing))
    assert res.returncode == 0, res.stderr[-3000:]
    hint = [ln for ln in res.stdout.splitlines() if "nas imx500 setup" in ln]
    assert len(hint) == 1 and "IMX500 part not added" in hint[0], res.stdout
    bundle = tmp_path / "out" / "mnist-imx"
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["imx500"]["status"] == "skipped" and "nas imx500 setup" in meta["imx500"]["how_to_add"]
    assert meta["imx500"]["estimated_onchip_bytes"] > 0 and meta["imx500"]["measured_model_bytes"] > 0
    assert not (bundle / "imx500").exists()
    [limit] = meta["target"]["limits"]
    assert limit["value"] == meta["memory"]["measured"]["imx500_model_bytes"]
    assert export.verify_bundle(bundle).samples == 8


def test_imx500_on_without_environment_is_a_usage_error(trained, tmp_path):
    res = nas("export", str(trained), "--out", str(tmp_path), "--imx500", "on", "--imx500-venv", str(tmp_path / "x"))
    assert res.returncode == 2 and "nas imx500 setup" in res.stderr
    assert not any(tmp_path.iterdir())


def test_check_reports_a_missing_environment(tmp_path):
    res = nas("imx500", "check", "--venv", str(tmp_path / "none"))
    assert res.returncode == 1 and "nas imx500 setup" in res.stderr
    res = nas("imx500", "check", "--json", env={imx500.ENV_VENV: str(tmp_path / "none")})
    status = json.loads(res.stdout)
    assert res.returncode == 1 and status["ok"] is False and status["venv"] == str(tmp_path / "none")


def test_setup_refuses_a_folder_that_is_not_a_venv(tmp_path):
    (tmp_path / "stuff.txt").write_text("mine")
    res = nas("imx500", "setup", "--venv", str(tmp_path))
    assert res.returncode == 2 and "--venv" in res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["stuff.txt"]


def test_memory_report_parsing(tmp_path):
    assert imx500.parse_size("79744B") == 79744
    assert imx500.parse_size("77.88KB") == round(77.88 * 1024)
    assert imx500.parse_size("8.00MB") == 8 * 1024 * 1024
    assert imx500.parse_size("n/a") is None
    report = {"Memory Report": {"Name": "model", "Runtime Memory Physical Size": "79744B",
                                "Model Memory Physical Size": "18592B", "Reserved Memory": "1024B",
                                "Memory Usage": "99360B", "Total Memory Available On Chip": "8388480B",
                                "Memory Utilization": "2%", "Fit In Chip": True, "Input Persistent": True,
                                "Networks": [{"Input Persistence Cost": "4992B"}]}}
    path = tmp_path / "model_MemoryReport.json"
    path.write_text(json.dumps(report))
    rep = imx500.read_memory_report(path)
    assert rep == {"runtime_bytes": 79744, "model_bytes": 18592, "reserved_bytes": 1024, "usage_bytes": 99360,
                   "available_bytes": 8388480, "utilization": "2%", "fit_in_chip": True, "input_persistent": True,
                   "input_persistence_bytes": 4992}


def test_worker_imports_nothing_of_ours_but_the_spec_and_topology():
    """The worker runs under TF 2.15 without tf_keras / tfmot: it may only import nas.spec and nas.topology
    (and nas.errors, nas.formatting: standard library only), all pure Python."""
    code = ("import sys; sys.argv = ['x']; import runpy; "
            "sys.modules['tensorflow'] = None; sys.modules['tf_keras'] = None; "
            "sys.modules['tensorflow_model_optimization'] = None; "
            "ns = runpy.run_module('nas.imx500_worker', run_name='not_main'); "
            "print(sorted(m for m in sys.modules if m == 'nas' or m.startswith('nas.')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "['nas', 'nas.errors', 'nas.formatting', 'nas.spec', 'nas.topology']"
