"""metadata.json: everything known about a bundle in one record (spec, data, metrics, memory estimated and
measured, every limit of the target and how it was met, quantization, samples, versions, sha256 of the files),
and the readable descriptions of the model's input and output it and the model card share."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nas.export.csource import ARENA_MARGIN_FRACTION, ARENA_MARGIN_MIN
from nas.export.layout import BUNDLE_FORMAT, CONSTRAINTS, SAMPLES, TFLITE, file_sha256
from nas.export.trial import Trial
from nas.formatting import package_versions
from nas.metrics import split_name
from nas.spec import ArchSpec

def minus_zero_point(zero_point: int) -> str:
    """``- zp`` written readably: ``- 3`` or ``+ 128`` (never ``- -128``)."""
    return f"+ {-zero_point}" if zero_point < 0 else f"- {zero_point}"


def plus_zero_point(zero_point: int) -> str:
    """``+ zp`` written readably: ``+ 3`` or ``- 128`` (never ``+ -128``)."""
    return f"- {-zero_point}" if zero_point < 0 else f"+ {zero_point}"


def limit_rows(target: Any, values: dict[str, Any], basis: dict[str, str]) -> list[dict[str, Any]]:
    """Every limit of ``target`` against ``values``, with what each value is (measured or estimated)."""
    rows = []
    for c in target.check(values):
        rows.append({"name": c.name, "value": c.value, "limit": c.limit, "unit": c.unit, "ok": c.ok,
                     "headroom": c.headroom, "basis": basis.get(c.name, "")})
    return rows


def output_description(spec: ArchSpec, metrics: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """What the output numbers mean: class names, or the gaze point in cm within +-S."""
    if spec.head.kind == "gaze":
        s = float(spec.head.output_scale)
        return {"kind": "gaze", "values": ["x_cm", "y_cm"], "units": "cm", "range_cm": [-s, s],
                "output_scale_cm": s,
                "how": f"dequantize: cm = (q {minus_zero_point(out['zero_point'])}) * {out['scale']!r}; the model's "
                       f"last op is {s:g} * tanh, so each coordinate lies within +-{s:g} cm"}
    names = [str(n) for n in metrics.get("class_names") or []]
    return {"kind": "classification", "classes": spec.head.classes, "class_names": names,
            "how": f"dequantize: p = (q {minus_zero_point(out['zero_point'])}) * {out['scale']!r} "
                   "(softmax probabilities); the predicted class is the argmax"}


def input_description(spec: ArchSpec, inp: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """The input's details plus its layout and the preprocessing firmware must apply before quantizing."""
    grid = spec.head.grid_channels if spec.head.kind == "gaze" else 0
    layout = f"{spec.channels} image channel(s)" + (f" + {grid} face-grid embedding channel(s)" if grid else "")
    return {**inp, "layout": f"NHWC; {layout}",
            "preprocessing": "pixels scaled to float [0, 1] (x = pixel / 255), resized to "
                             f"{spec.resolution}x{spec.resolution}, then quantized: "
                             f"q = clamp(round(x / {inp['scale']!r}) {plus_zero_point(inp['zero_point'])}, -128, 127)"}


def bundle_metadata(trial: Trial, name: str, *, target: Any, run_info: dict[str, Any], inp: dict[str, Any],
                    out: dict[str, Any], meas: Any, minimum: int, arena_size: int, margin: int, measured: Any,
                    est: Any, ops: list[str], idx: list[int], reference_diff: int, imx: dict[str, Any] | None,
                    dataset: Any, tmp: Path, timings: dict[str, float]) -> dict[str, Any]:
    """The metadata.json record of a bundle whose files are already in ``tmp`` (their sha256 are taken here)."""
    spec, metrics = trial.spec, trial.metrics
    files = {}
    for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
        rel = f.relative_to(tmp).as_posix()
        files[rel] = {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
    memory = {
        "estimated": {"activation_bytes": est.activation_bytes, "runtime_overhead_bytes": est.runtime_overhead_bytes,
                      "peak_sram_bytes": est.peak_sram_bytes, "flash_bytes": est.flash_bytes,
                      "weight_bytes": est.weight_bytes, "imx500_onchip_bytes": est.onchip_bytes,
                      "how": "analytic profile of the spec (nas.profile.estimate)"},
        "measured": {"tflite_bytes": measured.tflite_bytes, "tflm_arena_bytes": meas.arena_bytes,
                     "tflm_arena_head_bytes": meas.head_bytes, "tflm_arena_tail_bytes": meas.tail_bytes,
                     "tflm_min_arena_bytes": minimum, "imx500_model_bytes": measured.imx500_bytes,
                     "how": "TFLM host interpreter (tflite_micro, 64-bit, reference kernels) on the .tflite; "
                            "imx500_model_bytes: constants + planned activations of the converted graph"},
        "arena": {"kTensorArenaSize": arena_size, "measured_minimum_bytes": minimum, "margin_bytes": margin,
                  "margin_rule": f"{ARENA_MARGIN_FRACTION:.0%} of the measured minimum, at least "
                                 f"{ARENA_MARGIN_MIN} B, rounded up to 16 B"},
    }
    if imx is not None and imx.get("memory_report"):
        memory["imx500_converter"] = imx["memory_report"]
    tgt = None
    if target is not None:
        report = (imx or {}).get("memory_report") or {}
        memory_basis = target.memory_basis({"tflm_arena_bytes": meas.arena_bytes,
                                            "tflite_bytes": measured.tflite_bytes,
                                            "imx500_model_bytes": measured.imx500_bytes,
                                            "imx500_usage_bytes": report.get("usage_bytes")})
        values = {"macs": est.macs, "latency_ms": target.latency_ms(est.macs, est.layers),
                  "energy_mj": target.energy_mj(est.macs, est.layers),
                  **{key: value for key, (value, _) in memory_basis.items()}}
        basis = {"macs": "analytic count of the spec",
                 "latency_ms": f"target's {target.latency_model} latency model on the spec's operator graph",
                 "energy_mj": f"target's {target.latency_model} energy model on the spec's operator graph",
                 **{key: what for key, (_, what) in memory_basis.items()}}
        limits = limit_rows(target, values, basis)
        tgt = {"name": target.name, "runtime": target.runtime, "file": CONSTRAINTS if (tmp / CONSTRAINTS).is_file()
               else None, "source": target.path, "latency_ms": target.latency_ms(est.macs, est.layers),
               "inference_ms": target.inference_ms(est.macs, est.layers),
               "energy_mj": target.energy_mj(est.macs, est.layers),
               "limits": limits, "fits": all(row["ok"] for row in limits)}
    task = metrics.get("task", dataset.task)
    split = metrics.get("metric_split") or "test"  # trials recorded before tinynas 0.5 scored the test split
    samples = metrics.get("metric_samples") or (metrics.get("split_counts") or {}).get(split)
    return {
        "format": BUNDLE_FORMAT,
        "bundle": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "spec": spec.to_string(),
        "arch": spec.to_dict(),
        "source": {"trial_dir": str(trial.path.resolve()), **run_info},
        "dataset": {"name": metrics.get("dataset"), "task": task, "seed": metrics.get("seed"),
                    "description": dataset.description},
        "metrics": {"name": metrics.get("metric_name"), "higher_is_better": metrics.get("higher_is_better"),
                    "float": metrics.get("float_metric"), "int8": metrics.get("int8_metric"),
                    "int8_interval": metrics.get("int8_interval"), "float_interval": metrics.get("float_interval"),
                    "split": split, "samples": samples,
                    "quantization_delta": metrics.get("quantization_delta"),
                    "evaluated_on": f"{split_name(split)}; INT8 figure from the converted model with "
                                    f"TFLite reference kernels"},
        "macs": est.macs,
        "params": est.params,
        "memory": memory,
        "target": tgt,
        "input": input_description(spec, inp, dataset),
        "output": {**out, **output_description(spec, metrics, out)},
        "ops": ops,
        "tflite_sha256": files[TFLITE]["sha256"],
        "files": files,
        "samples": {"file": SAMPLES, "count": len(idx), "split": "test", "indices": idx,
                    "arrays": {"inputs": "int8 model inputs", "outputs": "int8 outputs of the TFLM host interpreter "
                               "with kTensorArenaSize", "labels": "ground truth", "indices": "rows of the test split"},
                    "tflite_reference_max_diff_lsb": reference_diff,
                    "tflite_reference": "largest difference, in output LSBs, between the recorded TFLM outputs and "
                                        "tf.lite's reference kernels on the same inputs (0 or 1 is rounding)"},
        "imx500": imx,
        "training": {"budget": metrics.get("budget"), "epochs_run": metrics.get("epochs_run"),
                     "seed": metrics.get("seed"), "seconds": metrics.get("seconds")},
        "seed": metrics.get("seed"),
        "versions": {"export": package_versions(),
                     **({"run": run_info["versions"]} if run_info.get("versions") else {})},
        "export_timings": {k: round(v, 3) for k, v in timings.items()},
    }
