"""The model card (a bundle's README.md): its numbers, the limits and how each was met, and minimal examples in
Python and for TFLM in C++, written from the metadata.json record."""
from __future__ import annotations

from typing import Any

from nas.export.csource import op_resolver_method
from nas.export.metadata import minus_zero_point, plus_zero_point
from nas.formatting import bytes_and_kb
from nas.metrics import split_name
from nas.spec import ArchSpec


def _num(v: float, unit: str) -> str:
    """A limit value: whole bytes / MACs with thousands separators, times and energies to 4 digits."""
    return f"{int(round(v)):,} {unit}" if unit in ("B", "MACs") else f"{v:.4g} {unit}"


def model_card(meta: dict[str, Any], spec: ArchSpec) -> str:
    """README.md of a bundle: the numbers, and minimal examples in Python and for TFLM in C++."""
    m, mem, inp, out = meta["metrics"], meta["memory"], meta["input"], meta["output"]
    arena = mem["arena"]
    lsb = meta["samples"]["tflite_reference_max_diff_lsb"]
    lines = [f"# {meta['bundle']}: {spec.head.kind} model for {meta['dataset']['name']}", "",
             f"Spec: `{meta['spec']}`", "",
             "Exported by tinynas (`nas export`). Check this bundle at any time with `nas verify .`: it re-runs the",
             "model in TensorFlow Lite Micro with the arena size below on the stored samples.", "",
             "## Numbers", "", "| | |", "|---|---|"]
    metric = m.get("name") or "metric"

    def fmt(v: float | None, interval: list[float] | None = None) -> str:
        if v is None:
            return "-"
        n = f", n = {m['samples']:,}" if m.get("samples") else ""
        return f"{v:.4f}" + (f" (95% CI {interval[0]:.4f}-{interval[1]:.4f}{n})" if interval else "")

    int8 = fmt(m.get("int8"), m.get("int8_interval"))
    src = meta.get("source") or {}
    final = src.get("finalized")
    if final:
        epochs = (final.get("budget") or {}).get("epochs")
        was = final.get("search_metric")
        was_text = "" if was is None else f" ({was:.4f} after its short search budget)"
        lines[-4:-4] = [f"Trial {src.get('trial')} of the search, retrained by `nas finalize` ({epochs} epochs, seed "
                        f"{final['seed']}); the search chose it on the validation split{was_text} and the test "
                        f"split below was read only to report it.", ""]
    elif src.get("trial") is not None:
        lines[-4:-4] = [f"Trial {src.get('trial')} of the search, as trained during the search (short budget). "
                        f"`nas finalize` retrains it with a full budget and reports it on the test split.", ""]
    lines += [f"| {metric} (INT8 .tflite, {split_name(m.get('split'))}) | {int8} |",
              f"| {metric} (float Keras QAT model) | {fmt(m.get('float'), m.get('float_interval'))} |",
              f"| MACs | {meta['macs']:,} |", f"| parameters | {meta['params']:,} |",
              f"| .tflite size | {bytes_and_kb(mem['measured']['tflite_bytes'])} |",
              f"| TFLM arena, measured (host) | {bytes_and_kb(mem['measured']['tflm_arena_bytes'])} (minimum that "
              f"allocates: {mem['measured']['tflm_min_arena_bytes']:,} B) |",
              f"| TFLM arena, estimated before training | {bytes_and_kb(mem['estimated']['peak_sram_bytes'])} |",
              f"| **kTensorArenaSize** | **{arena['kTensorArenaSize']:,} B** = minimum + {arena['margin_bytes']:,} B "
              f"margin ({arena['margin_rule']}) |"]
    tgt = meta.get("target")
    if tgt:
        lines += [f"| target | {tgt['name']} (runtime `{tgt['runtime']}`) |",
                  f"| latency per frame (model) | {tgt['latency_ms']:.3f} ms "
                  f"(inference {tgt['inference_ms']:.3f} ms) |",
                  f"| energy per frame (model) | {tgt['energy_mj']:.4f} mJ |", "",
                  f"### Limits of `{tgt.get('file') or tgt['source']}`", "",
                  "| limit | value | limit | ok | basis |", "|---|---|---|---|---|"]
        for row in tgt["limits"]:
            lines.append(f"| {row['name']} | {_num(row['value'], row['unit'])} | {_num(row['limit'], row['unit'])} | "
                         f"{'yes' if row['ok'] else '**NO**'} | {row['basis']} |")
    lines += ["", "## Input and output", "",
              f"- input `{inp['dtype']}` {inp['shape']} ({inp['layout']}): scale {inp['scale']!r}, zero point "
              f"{inp['zero_point']}. {inp['preprocessing']}.",
              f"- output `{out['dtype']}` {out['shape']}: scale {out['scale']!r}, zero point {out['zero_point']}; "
              f"{out['how']}."]
    if out.get("kind") == "classification" and out.get("class_names"):
        lines.append("- classes, in output order: " + ", ".join(f"`{c}`" for c in out["class_names"]))
    lines += ["", "## Python (TFLite interpreter)", "", "```python", "import numpy as np", "import tensorflow as tf",
              "",
              'it = tf.lite.Interpreter(model_path="model_int8.tflite")', "it.allocate_tensors()",
              'inp, out = it.get_input_details()[0], it.get_output_details()[0]',
              f"x = np.zeros((1, {', '.join(str(s) for s in inp['shape'][1:])}), np.float32)  # your input in [0, 1]",
              f"q = np.clip(np.round(x / {inp['scale']!r}) {plus_zero_point(inp['zero_point'])}, -128, 127)"
              ".astype(np.int8)",
              'it.set_tensor(inp["index"], q)', "it.invoke()",
              f'y = (it.get_tensor(out["index"]).astype(np.float32) {minus_zero_point(out["zero_point"])}) '
              f'* {out["scale"]!r}',
              "", "# samples.npz holds test inputs and TFLM's outputs for them; tf.lite reproduces them to within "
              f"{lsb} LSB", "# (TFLM and TFLite round some kernels differently)" if lsb else "# (exactly)",
              's = np.load("samples.npz")',
              'it.set_tensor(inp["index"], s["inputs"][:1]); it.invoke()',
              f'assert np.abs(it.get_tensor(out["index"]).reshape(-1).astype(int) - s["outputs"][0]).max() <= {lsb}',
              "```", "",
              "## TensorFlow Lite Micro (C++)", "",
              f"Ops used by this model: {', '.join(f'`{o}`' for o in meta['ops'])}.", "", "```cpp",
              '#include <math.h>', '#include <stdint.h>', '#include "model_data.h"',
              '#include "tensorflow/lite/micro/micro_interpreter.h"',
              '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"',
              '#include "tensorflow/lite/schema/schema_generated.h"', "",
              "alignas(16) static uint8_t tensor_arena[kTensorArenaSize];"
              f"  // {arena['kTensorArenaSize']:,} bytes", "",
              "// image: kInputHeight * kInputWidth * kInputChannels floats in [0, 1], NHWC",
              "int run_model(const float* image, float* result /* kNumOutputs */) {",
              "  const tflite::Model* model = tflite::GetModel(g_model_data);",
              f"  static tflite::MicroMutableOpResolver<{len(meta['ops'])}> resolver;"]
    lines += [f"  resolver.{op_resolver_method(op)}();" for op in meta["ops"]]
    lines += ["  static tflite::MicroInterpreter interpreter(model, resolver, tensor_arena, kTensorArenaSize);",
              "  if (interpreter.AllocateTensors() != kTfLiteOk) return -1;",
              "  TfLiteTensor* input = interpreter.input(0);",
              "  for (int i = 0; i < kInputHeight * kInputWidth * kInputChannels; ++i) {",
              "    long q = lroundf(image[i] / kInputScale) + kInputZeroPoint;",
              "    input->data.int8[i] = (int8_t)(q < -128 ? -128 : q > 127 ? 127 : q);", "  }",
              "  if (interpreter.Invoke() != kTfLiteOk) return -2;",
              "  const TfLiteTensor* output = interpreter.output(0);",
              "  for (int i = 0; i < kNumOutputs; ++i)",
              "    result[i] = (output->data.int8[i] - kOutputZeroPoint) * kOutputScale;",
              "  return 0;", "}", "```", ""]
    imx = meta.get("imx500")
    if imx:
        lines += ["## Sony IMX500", ""]
        if imx.get("status") == "converted":
            rep = imx["memory_report"]
            cmp_ = imx["estimate_vs_report"]
            lines += ["`imx500/packerOut.zip` is the converter's output, ready for Sony's packager / the Raspberry Pi "
                      "AI Camera tools (`imx500-package`).", "",
                      "| | |", "|---|---|",
                      f"| Fit In Chip | **{'yes' if rep.get('fit_in_chip') else 'NO'}** |",
                      f"| Memory Usage (converter) | {bytes_and_kb(rep.get('usage_bytes'))} of "
                      f"{bytes_and_kb(rep.get('available_bytes'))} |",
                      f"| runtime / model / reserved | {rep.get('runtime_bytes'):,} / {rep.get('model_bytes'):,} / "
                      f"{rep.get('reserved_bytes'):,} B |",
                      "| our estimate before training (weights + planned activations) | "
                      f"{bytes_and_kb(cmp_['estimated_onchip_bytes'])} |",
                      f"| our model on the converted .tflite graph | {bytes_and_kb(cmp_['measured_model_bytes'])} |",
                      "",
                      "The IMX500 part is quantized by Sony's MCT (post-training, on the training split) from the same "
                      "float weights, so its outputs differ slightly from `model_int8.tflite`.", ""]
        else:
            lines += [f"Not included: {imx.get('reason')}. To add it: `{imx.get('how_to_add')}`.", ""]
    lines += ["## Files", "", "| file | bytes | sha256 |", "|---|---|---|"]
    for rel, info in meta["files"].items():
        lines.append(f"| `{rel}` | {info['bytes']:,} | `{info['sha256'][:16]}...` |")
    lines += ["", f"Trained with seed {meta['seed']}; package versions and the full record are in `metadata.json`.", ""]
    return "\n".join(lines)
