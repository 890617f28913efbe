"""The Sony IMX500 part of a bundle (``imx500/``): the converter's packerOut.zip, its memory report next to our
estimates, and the logs, made by calling :mod:`nas.imx500`'s converter environment; when that environment is
missing, a record of how to add the part."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from nas.export.layout import IMX500_DIR
from nas.export.trial import Trial

#: ``--imx500``: auto (for runtime: imx500 targets when the converter exists), on (required), off.
IMX500_MODES = ("auto", "on", "off")
#: Training inputs MCT quantizes the IMX500 model with.
REPRESENTATIVE_SAMPLES = 100


def imx500_part(trial: Trial, tmp: Path, name: str, ds: Any, x_float: Any, y_tflm: Any, out: dict[str, Any],
                est: Any, measured: Any, venv: str | Path | None) -> dict[str, Any]:
    """Convert for the IMX500 into ``tmp/imx500`` when the converter's venv exists; else say how to add it."""
    from nas import imx500 as imx

    v = imx.resolve_venv(venv)
    estimate = {"estimated_onchip_bytes": est.onchip_bytes, "measured_model_bytes": measured.imx500_bytes}
    if not imx.is_installed(v):
        return {"status": "skipped", **estimate,
                "reason": f"no IMX500 converter environment at {v}",
                "how_to_add": "nas imx500 setup, then export again with --force"}
    import numpy as np

    from nas.tf import pipeline

    weights, float_out = _float_model_weights(trial, x_float)
    rep = pipeline.prepare(ds.train, trial.spec.resolution, trial.spec.channels, ds.grid_channels)
    rep = np.asarray(rep[:REPRESENTATIVE_SAMPLES], dtype=np.float32)
    work = Path(tempfile.mkdtemp(prefix=".imx500-", dir=tmp.parent))
    try:
        try:
            conv = imx.convert(trial.spec.to_string(), weights, rep, x_float, work, v)
        except imx.Imx500Error as e:
            raise imx.Imx500Error(f"{e} (logs: {_keep_logs(work, tmp.parent / f'{name}.imx500-error.log')})") from None
        dest = tmp / IMX500_DIR
        dest.mkdir()
        shutil.copyfile(conv.packer, dest / imx.PACKER)
        shutil.copyfile(conv.memory_report, dest / conv.memory_report.name)
        for extra in ("dnnParams.xml",):
            if (conv.packer.parent / extra).is_file():
                shutil.copyfile(conv.packer.parent / extra, dest / extra)
        shutil.copyfile(work / "work" / "model.keras", dest / "model_mct.keras")
        for logf in ("mct.log", "imxconv.log"):
            shutil.copyfile(work / logf, dest / logf)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"status": "converted", **estimate, **_imx500_comparison(conv, float_out, y_tflm, out, est, measured),
            "files": {"packer": f"{IMX500_DIR}/{imx.PACKER}",
                      "memory_report": f"{IMX500_DIR}/{conv.memory_report.name}",
                      "mct_model": f"{IMX500_DIR}/model_mct.keras"}}


def _keep_logs(work: Path, dest: Path) -> Path:
    """A failed conversion's logs survive the removal of the half-made bundle: one file next to it."""
    with open(dest, "w") as fh:
        for logf in ("mct.log", "imxconv.log"):
            if (work / logf).is_file():
                fh.write(f"===== {logf}\n{(work / logf).read_text(errors='replace')}\n")
    return dest


def _float_model_weights(trial: Trial, x_float: Any) -> tuple[dict[str, Any], Any]:
    """Float weights of the trained QAT model (by layer name) and the float model's outputs on ``x_float``."""
    import nas  # noqa: F401
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    from nas.tf import builder
    from nas import imx500 as imx

    with tfmot.quantization.keras.quantize_scope(builder.CUSTOM_OBJECTS):
        qat = keras.models.load_model(trial.files.keras, compile=False)
    float_model = builder.build(trial.spec)
    weights = imx.float_weights(qat, float_model)
    return weights, float_model.predict(x_float, verbose=0)


def _imx500_comparison(conv: Any, float_out: Any, y_tflm: Any, out: dict[str, Any], est: Any, measured: Any
                       ) -> dict[str, Any]:
    """The converter's memory report next to our estimates, and proof the weights crossed over intact."""
    import numpy as np

    rep = conv.memory
    usage = rep.get("usage_bytes")
    tflm_float = (y_tflm.astype(np.float32) - out["zero_point"]) * out["scale"]
    mct = np.asarray(conv.mct_outputs).reshape(len(tflm_float), -1)
    return {
        "memory_report": rep,
        "fit_in_chip": rep.get("fit_in_chip"),
        "estimate_vs_report": {
            "report_usage_bytes": usage,
            "estimated_onchip_bytes": est.onchip_bytes,
            "estimated_weight_bytes": est.weight_bytes,
            "estimated_activation_bytes": est.activation_bytes,
            "report_model_bytes": rep.get("model_bytes"),
            "report_runtime_bytes": rep.get("runtime_bytes"),
            "measured_model_bytes": measured.imx500_bytes,
            "estimate_over_report": round(est.onchip_bytes / usage, 4) if usage else None,
            "measured_over_report": round(measured.imx500_bytes / usage, 4) if usage else None,
        },
        "dnn_params": conv.dnn_params,
        "rebuild_check": {
            "float_max_abs_diff": float(np.abs(np.asarray(conv.float_outputs) - float_out).max()),
            "mct_vs_tflite_int8_max_abs_diff": float(np.abs(mct - tflm_float).max()),
            "how": "the model rebuilt in the converter's venv vs nas.tf.builder's float model with the same weights "
                   "(should be ~1e-6), and MCT's quantized model vs our INT8 .tflite on the samples",
        },
        "converter": conv.worker.get("versions", {}),
        "timings": {**conv.worker.get("timings", {}), **conv.timings},
    }
