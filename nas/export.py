"""Export: turn a trained candidate into a bundle a firmware engineer can use as it is, and verify bundles.

A bundle is one folder per exported model::

    model_int8.tflite    full-integer model, int8 in and out
    model_qat.h5         the trained Keras (tf_keras + tfmot QAT) model
    model_data.cc/.h     the .tflite as an aligned C array + its length, kTensorArenaSize, I/O quantization
    samples.npz          real test inputs (int8) and the INT8 outputs the TFLM host interpreter gave for them
    metadata.json        spec, data, float / INT8 metrics, memory (estimated and measured), MACs, latency and
                         energy on the target, every limit and how it was met, quantization, versions, seed,
                         sha256 of the files
    README.md            model card with the numbers and minimal Python / TFLM C++ examples
    constraints.yaml     the constraint file the bundle was checked against (when there is one)
    imx500/              for runtime: imx500 targets: packerOut.zip, the converter's memory report, logs

The core works on a *trial folder* (what ``nas train --out DIR`` writes and what a search writes under
``runs/<study>/trials/<n>/``): :func:`export_trial`. :func:`export` adds choosing trials from a run directory
(``--trial N``, ``--pareto``, ``--best METRIC``) through :mod:`nas.results`, the one reader of run folders.

Safety: a bundle is assembled in a hidden temporary folder next to its destination and renamed into place
at the end, so a crash leaves no half bundle; an existing bundle is only replaced with ``force``; bundle
names must be plain folder names inside the output folder.

:func:`verify_bundle` re-checks a bundle on its own: sha256 of the files, the C array against the .tflite,
and the .tflite re-run in TensorFlow Lite Micro with the bundle's arena size on the stored samples.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from nas.errors import UserError
from nas.spec import ArchSpec

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")

BUNDLE_FORMAT = 1
TFLITE = "model_int8.tflite"
KERAS = "model_qat.h5"
C_SOURCE = "model_data.cc"
C_HEADER = "model_data.h"
METADATA = "metadata.json"
CARD = "README.md"
SAMPLES = "samples.npz"
CONSTRAINTS = "constraints.yaml"
IMX500_DIR = "imx500"
TRIAL_FILES = ("spec.json", "metrics.json", TFLITE, KERAS)
#: Files whose sha256 ``verify`` checks (README / metadata are documentation, free to annotate).
CHECKED_FILES = (TFLITE, KERAS, C_SOURCE, C_HEADER, SAMPLES)

#: Arena margin over the measured minimum: 5 %, at least 1 KB, rounded up to 16 B. Why a margin at all:
#: the measured figure is TFLM's 64-bit host build with reference kernels; optimized kernels (CMSIS-NN)
#: may request scratch buffers the reference kernels do not (see nas/arena.py).
ARENA_MARGIN_FRACTION = 0.05
ARENA_MARGIN_MIN = 1024
DEFAULT_SAMPLES = 8
REPRESENTATIVE_SAMPLES = 100
PACKAGES = ("tinynas", "tensorflow", "tf_keras", "tensorflow-model-optimization", "tflite-micro", "numpy")
IMX500_MODES = ("auto", "on", "off")


class VerifyError(Exception):
    """A bundle failed verification; the message is the one-line reason."""


# --------------------------------------------------------------------------------------------- small parts


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _minus(zero_point: int) -> str:
    """``- zp`` written readably: ``- 3`` or ``+ 128`` (never ``- -128``)."""
    return f"+ {-zero_point}" if zero_point < 0 else f"- {zero_point}"


def _plus(zero_point: int) -> str:
    return f"- {-zero_point}" if zero_point < 0 else f"+ {zero_point}"


def _align16(n: int) -> int:
    return (n + 15) // 16 * 16


def arena_with_margin(minimum: int) -> tuple[int, int]:
    """(arena size for firmware, margin in bytes) for a measured minimum arena; see :data:`ARENA_MARGIN_FRACTION`."""
    margin = max(ARENA_MARGIN_MIN, math.ceil(ARENA_MARGIN_FRACTION * minimum))
    size = _align16(minimum + margin)
    return size, size - minimum


def check_name(name: str, out_dir: Path, flag: str = "--name") -> Path:
    """The bundle folder for ``name``: a plain folder name that stays inside ``out_dir``.

    Rejects separators, ``..``, hidden names (our temporary folders are hidden) and anything that resolves
    outside ``out_dir`` (a symlink, say), so ``--name ../../x`` cannot write elsewhere.
    """
    text = str(name)
    bad = (not text or text in (".", "..") or text.startswith(".") or "/" in text or "\\" in text
           or "\x00" in text or os.sep in text or (os.altsep and os.altsep in text) or text != text.strip())
    if not bad:
        base = Path(out_dir).resolve()
        dest = (base / text).resolve()
        bad = dest.parent != base
    if bad:
        raise UserError(flag, "name", f"a plain folder name inside the output folder (letters, digits, '-', '_', "
                                      f"'.'; no '/', '..' or leading '.'), got {text!r}")
    return Path(out_dir) / text


def op_resolver_method(op: str) -> str:
    """TFLM's ``MicroMutableOpResolver`` method for a builtin op: ``CONV_2D`` -> ``AddConv2D``."""
    special = {"LOGISTIC": "AddLogistic", "RELU": "AddRelu", "RELU6": "AddRelu6", "LEAKY_RELU": "AddLeakyRelu",
               "PRELU": "AddPrelu", "L2_NORMALIZATION": "AddL2Normalization", "HARD_SWISH": "AddHardSwish"}
    if op in special:
        return special[op]
    words = []
    for w in op.split("_"):
        words.append(w if re.fullmatch(r"\d+D", w) else w[:1].upper() + w[1:].lower())
    return "Add" + "".join(words)


# --------------------------------------------------------------------------------------------- C source


def c_array_source(data: bytes, header: str = C_HEADER, per_line: int = 12) -> str:
    """``model_data.cc``: the model as ``alignas(16) const unsigned char g_model_data[]`` and its length.

    16-byte alignment because TFLM reads the flatbuffer in place and some of its tensors need it.
    """
    lines = [
        "// Generated by tinynas (nas export). The INT8 model as a C array for TensorFlow Lite Micro.",
        "// Do not edit: `nas verify` checks these bytes against model_int8.tflite.",
        f'#include "{header}"',
        "",
        "alignas(16) const unsigned char g_model_data[] = {",
    ]
    for start in range(0, len(data), per_line):
        lines.append("    " + ", ".join(f"0x{b:02x}" for b in data[start:start + per_line]) + ",")
    lines += ["};", f"const unsigned int g_model_data_len = {len(data)};", ""]
    return "\n".join(lines)


def parse_c_array(text: str) -> tuple[bytes, int | None]:
    """The bytes of ``g_model_data`` in a generated ``model_data.cc`` and its declared ``g_model_data_len``."""
    m = re.search(r"g_model_data\[\]\s*=\s*\{(.*?)\};", text, re.DOTALL)
    if not m:
        raise ValueError("no 'g_model_data[] = { ... };' array")
    body = re.sub(r"//[^\n]*", "", m.group(1))
    values = [v.strip() for v in body.split(",") if v.strip()]
    data = bytes(int(v, 0) for v in values)
    n = re.search(r"g_model_data_len\s*=\s*(\d+)\s*;", text)
    return data, int(n.group(1)) if n else None


def c_header(*, arena_size: int, arena_min: int, margin: int, inp: dict[str, Any], out: dict[str, Any],
             spec: str, guard: str = "TINYNAS_MODEL_DATA_H_") -> str:
    """``model_data.h``: declarations, the arena size and the I/O quantization firmware needs."""
    shape = inp["shape"]
    h, w, c = (shape[1], shape[2], shape[3]) if len(shape) == 4 else (0, 0, 0)
    n_out = int(math.prod(out["shape"][1:])) if len(out["shape"]) > 1 else int(out["shape"][0])
    return "\n".join([
        "// Generated by tinynas (nas export). Model data and the facts needed to run it with TFLM.",
        f"// Spec: {spec}",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "extern const unsigned char g_model_data[];",
        "extern const unsigned int g_model_data_len;",
        "",
        f"// Tensor arena: measured minimum {arena_min} bytes (TFLM host interpreter, reference kernels)",
        f"// + margin {margin} bytes (5%, at least 1 KB, rounded up to 16 B) for optimized-kernel scratch.",
        f"constexpr int kTensorArenaSize = {arena_size};",
        "",
        "// Input: int8, NHWC. q = clamp(round(x / kInputScale) + kInputZeroPoint, -128, 127), x in [0, 1].",
        f"constexpr int kInputHeight = {h};",
        f"constexpr int kInputWidth = {w};",
        f"constexpr int kInputChannels = {c};",
        f"constexpr float kInputScale = {inp['scale']!r}f;",
        f"constexpr int kInputZeroPoint = {inp['zero_point']};",
        "",
        "// Output: int8. y = (q - kOutputZeroPoint) * kOutputScale.",
        f"constexpr int kNumOutputs = {n_out};",
        f"constexpr float kOutputScale = {out['scale']!r}f;",
        f"constexpr int kOutputZeroPoint = {out['zero_point']};",
        "",
        f"#endif  // {guard}",
        "",
    ])


def parse_header_int(text: str, name: str) -> int | None:
    m = re.search(rf"\b{name}\s*=\s*(-?\d+)\s*;", text)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------------------------- trials


@dataclass(frozen=True)
class Trial:
    """A trained candidate folder, read: the layout :func:`nas.tf.candidate.evaluate` writes."""

    path: Path
    spec: ArchSpec
    metrics: dict[str, Any]
    tflite: bytes


def read_trial(trial_dir: Path | str) -> Trial:
    """Read a trained candidate folder; a :class:`UserError` naming the missing file otherwise."""
    path = Path(trial_dir)
    if not path.is_dir():
        raise UserError(str(trial_dir), "", "an existing trained folder (nas train --out DIR) or a run directory")
    missing = [f for f in TRIAL_FILES if not (path / f).is_file()]
    if missing:
        raise UserError(str(path), missing[0], f"a finished trained folder with {', '.join(TRIAL_FILES)} "
                                               f"(nas train --out DIR or runs/<study>/trials/<n>); it is missing")
    try:
        metrics = json.loads((path / "metrics.json").read_text())
        spec_doc = json.loads((path / "spec.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(str(path), "metrics.json/spec.json", f"readable JSON ({e})") from None
    if isinstance(spec_doc, dict) and isinstance(spec_doc.get("arch"), dict):
        spec = ArchSpec.from_dict(spec_doc["arch"], source=str(path / "spec.json"))
    else:
        spec = ArchSpec.from_string(str(spec_doc.get("spec") if isinstance(spec_doc, dict) else metrics["spec"]))
    return Trial(path, spec, metrics, (path / TFLITE).read_bytes())


def _io_details(tflite: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Input and output: shape, dtype, scale, zero point (what firmware needs to feed and read the model)."""
    import nas  # noqa: F401
    import numpy as np
    import tensorflow as tf

    it = tf.lite.Interpreter(model_content=tflite)

    def one(d: dict[str, Any]) -> dict[str, Any]:
        return {"shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                "scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1])}

    return one(it.get_input_details()[0]), one(it.get_output_details()[0])


def _quantize(x: Any, scale: float, zero_point: int) -> Any:
    import numpy as np

    return np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)


def run_tflm(tflite: bytes, arena_size: int, inputs: Any) -> Any:
    """Raw int8 outputs of the TFLM host interpreter (``tflite_micro``) for each input, one at a time.

    Raises RuntimeError when the model does not allocate in ``arena_size`` bytes.
    """
    import numpy as np
    from tflite_micro import runtime

    from nas.tflm import CaptureStderr  # TFLM logs to C stderr; keep it off the user's terminal

    with CaptureStderr() as cap:
        try:
            interp = runtime.Interpreter.from_bytes(tflite, arena_size=int(arena_size))
        except RuntimeError:
            interp = None
    if interp is None:
        raise RuntimeError(f"TFLM could not allocate the model in an arena of {arena_size} bytes: "
                           + " | ".join(ln.strip() for ln in cap.text.splitlines() if ln.strip())[:300])
    outs = []
    with CaptureStderr():
        for x in inputs:
            interp.set_input(np.asarray(x)[None, ...], 0)
            interp.invoke()
            outs.append(np.array(interp.get_output(0)).reshape(-1))
    return np.stack(outs)


def _tflite_reference(tflite: bytes, inputs: Any) -> Any:
    """Raw int8 outputs of tf.lite with the reference kernels, to cross-check TFLM (STACK.md: bit-identical)."""
    import numpy as np
    import tensorflow as tf

    it = tf.lite.Interpreter(model_content=tflite,
                             experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for x in inputs:
        it.set_tensor(inp["index"], np.asarray(x)[None, ...])
        it.invoke()
        outs.append(np.array(it.get_tensor(out["index"])).reshape(-1))
    return np.stack(outs)


def _load_data(trial: Trial) -> Any:
    """The data set the trial was trained on (same name and seed, so the same test split)."""
    from nas.tf.candidate import load_dataset

    name, seed = trial.metrics.get("dataset"), int(trial.metrics.get("seed", 0))
    if not name:
        raise UserError(str(trial.path / "metrics.json"), "dataset", "the data set the model was trained on")
    try:
        return load_dataset(str(name), seed)
    except UserError as e:
        raise UserError(str(trial.path / "metrics.json"), "dataset",
                        f"a loadable data set to draw sample inputs from: {e}") from None


def _sample_indices(n_total: int, n: int) -> list[int]:
    """Evenly spread, deterministic picks from the test split (not just its first rows)."""
    import numpy as np

    n = max(1, min(n, n_total))
    return sorted({int(i) for i in np.linspace(0, n_total - 1, n).round()})


# --------------------------------------------------------------------------------------------- staging


@contextlib.contextmanager
def _staged(dest: Path, force: bool) -> Iterator[Path]:
    """A hidden temporary folder next to ``dest`` that becomes ``dest`` only if the block finishes.

    With ``force`` an existing ``dest`` is moved aside first and deleted after the swap, so at every moment
    either the old or the new bundle is complete on disk.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield tmp
        old = None
        if dest.exists() or dest.is_symlink():
            if not force:
                raise UserError(str(dest), "--force", "a new bundle name: it appeared while exporting "
                                                      "(add --force to replace it)")
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / "bundle")
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a bundle is meant to be shared
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_destination(dest: Path, force: bool, zip_bundle: bool) -> None:
    """Refuse to overwrite a bundle (or its zip) without ``force``: checked before any work is done."""
    if (dest.exists() or dest.is_symlink()) and not force:
        raise UserError(str(dest), "--force", "a new bundle folder; it already exists (add --force to replace it)")
    if dest.exists() and not dest.is_dir():
        raise UserError(str(dest), "", "a folder for the bundle; a file has that name")
    zpath = dest.with_name(dest.name + ".zip")
    if zip_bundle and zpath.exists() and not force:
        raise UserError(str(zpath), "--force", "a new zip file; it already exists (add --force to replace it)")


def write_zip(bundle: Path) -> Path:
    """``BUNDLE.zip`` next to the bundle (files under ``BUNDLE/``), written to a temporary name then renamed."""
    zpath = bundle.with_name(bundle.name + ".zip")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{bundle.name}.zip.partial-", dir=bundle.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp_name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(bundle.rglob("*")):
                if path.is_file():
                    zf.write(path, f"{bundle.name}/{path.relative_to(bundle).as_posix()}")
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, zpath)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return zpath


# --------------------------------------------------------------------------------------------- export


def _versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _limits(target: Any, values: dict[str, Any], basis: dict[str, str]) -> list[dict[str, Any]]:
    """Every limit of ``target`` against ``values``, with what each value is (measured or estimated)."""
    rows = []
    for c in target.check(values):
        rows.append({"name": c.name, "value": c.value, "limit": c.limit, "unit": c.unit, "ok": c.ok,
                     "headroom": c.headroom, "basis": basis.get(c.name, "")})
    return rows


def _output_description(spec: ArchSpec, metrics: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """What the output numbers mean: class names, or the gaze point in cm within +-S."""
    if spec.head.kind == "gaze":
        s = float(spec.head.output_scale)
        return {"kind": "gaze", "values": ["x_cm", "y_cm"], "units": "cm", "range_cm": [-s, s],
                "output_scale_cm": s,
                "how": f"dequantize: cm = (q {_minus(out['zero_point'])}) * {out['scale']!r}; the model's last op is "
                       f"{s:g} * tanh, so each coordinate lies within +-{s:g} cm"}
    names = [str(n) for n in metrics.get("class_names") or []]
    return {"kind": "classification", "classes": spec.head.classes, "class_names": names,
            "how": f"dequantize: p = (q {_minus(out['zero_point'])}) * {out['scale']!r} (softmax probabilities); "
                   "the predicted class is the argmax"}


def _input_description(spec: ArchSpec, inp: dict[str, Any], dataset: Any) -> dict[str, Any]:
    grid = spec.head.grid_channels if spec.head.kind == "gaze" else 0
    layout = f"{spec.channels} image channel(s)" + (f" + {grid} face-grid embedding channel(s)" if grid else "")
    return {**inp, "layout": f"NHWC; {layout}",
            "preprocessing": "pixels scaled to float [0, 1] (x = pixel / 255), resized to "
                             f"{spec.resolution}x{spec.resolution}, then quantized: "
                             f"q = clamp(round(x / {inp['scale']!r}) {_plus(inp['zero_point'])}, -128, 127)"}


def default_name(trial_dir: Path) -> str:
    """The trained folder's name; ``trial-<n>`` for a run's ``trials/<n>`` folder (a bare number says little)."""
    path = Path(trial_dir).resolve()
    return f"trial-{path.name}" if path.parent.name == "trials" and path.name.isdigit() else path.name


def export_trial(trial_dir: Path | str, out_dir: Path | str, *, name: str | None = None, target: Any = None,
                 run_info: dict[str, Any] | None = None, force: bool = False, zip_bundle: bool = False,
                 imx500: str = "auto", imx500_venv: str | Path | None = None,
                 samples: int = DEFAULT_SAMPLES) -> Path:
    """Export one trained folder as a bundle ``out_dir/name`` (default name: the folder's name); returns it.

    ``target``: a :class:`nas.hardware.Target` for latency, energy and the limit checks (None: no target).
    ``run_info``: where the trial came from (run directory, study, trial number, selection...), recorded
    as is. ``imx500``: ``auto`` adds the IMX500 converter's output for ``runtime: imx500`` targets when its
    environment exists (and records how to add it when not), ``on`` requires it, ``off`` skips it.
    """
    if imx500 not in IMX500_MODES:
        raise UserError("--imx500", "imx500", f"one of {IMX500_MODES}, got {imx500!r}")
    if samples < 1:
        raise UserError("--samples", "samples", f"a positive number of sample inputs, got {samples}")
    trial = read_trial(trial_dir)
    out_dir = Path(out_dir)
    dest = check_name(name or default_name(trial.path), out_dir)
    _check_destination(dest, force, zip_bundle)
    want_imx = imx500 == "on" or (imx500 == "auto" and target is not None and target.runtime == "imx500")
    if imx500 == "on":
        from nas import imx500 as imx

        if not imx.is_installed(imx500_venv):
            raise UserError("--imx500", "imx500", f"the IMX500 converter environment at "
                                                  f"{imx.resolve_venv(imx500_venv)}; it is missing (nas imx500 setup)")
    t0 = time.perf_counter()
    with _staged(dest, force) as tmp:
        _write_bundle(trial, tmp, dest.name, target=target, run_info=run_info or {}, want_imx=want_imx,
                      imx500_venv=imx500_venv, n_samples=samples)
    log.info("exported %s in %.1f s", dest, time.perf_counter() - t0)
    if zip_bundle:
        write_zip(dest)
    return dest


def _write_bundle(trial: Trial, tmp: Path, name: str, *, target: Any, run_info: dict[str, Any], want_imx: bool,
                  imx500_venv: str | Path | None, n_samples: int) -> None:
    """Write every file of the bundle into ``tmp`` (metadata.json and README.md last)."""
    import numpy as np

    from nas import arena, profile, tflm
    from nas.tf import pipeline

    timings: dict[str, float] = {}
    spec, tflite = trial.spec, trial.tflite
    inp, out = _io_details(tflite)
    if inp["dtype"] != "int8" or out["dtype"] != "int8":
        raise UserError(str(trial.path / TFLITE), "input/output", f"a full-integer model with int8 input and "
                                                                  f"output, got {inp['dtype']} / {out['dtype']}")
    t = time.perf_counter()
    meas = tflm.measure_tflm(tflite, find_minimum=True)
    minimum = int(meas.min_arena_bytes or meas.arena_bytes)
    arena_size, margin = arena_with_margin(minimum)
    measured = profile.measure(tflite)
    est = profile.estimate(spec)
    timings["measure"] = time.perf_counter() - t

    t = time.perf_counter()
    ds = _load_data(trial)
    grid = ds.grid_channels
    x_test = pipeline.prepare(ds.test, spec.resolution, spec.channels, grid)
    idx = _sample_indices(len(x_test), n_samples)
    x_float = np.asarray(x_test[idx], dtype=np.float32)
    x_q = _quantize(x_float, inp["scale"], inp["zero_point"])
    y_tflm = run_tflm(tflite, arena_size, x_q)
    y_ref = _tflite_reference(tflite, x_q)
    reference_diff = int(np.abs(y_tflm.astype(np.int32) - y_ref.astype(np.int32)).max())
    if reference_diff:  # TFLM's and TFLite's kernels round some ops (HARD_SWISH, the SE MUL) differently
        log.info("TFLM and tf.lite (reference kernels) differ on the samples by up to %d LSB", reference_diff)
    labels = np.asarray(ds.test.y)[idx]
    np.savez(tmp / SAMPLES, inputs=x_q, outputs=y_tflm.astype(np.int8), labels=labels,
             indices=np.asarray(idx, dtype=np.int64))
    timings["samples"] = time.perf_counter() - t

    (tmp / TFLITE).write_bytes(tflite)
    shutil.copyfile(trial.path / KERAS, tmp / KERAS)
    (tmp / C_SOURCE).write_text(c_array_source(tflite))
    (tmp / C_HEADER).write_text(c_header(arena_size=arena_size, arena_min=minimum, margin=margin, inp=inp, out=out,
                                         spec=spec.to_string()))
    if target is not None and Path(target.path).is_file():
        shutil.copyfile(target.path, tmp / CONSTRAINTS)

    ops = list(dict.fromkeys(op.kind for op in arena.read_graph(tflite).main.ops))
    imx_meta = None
    if want_imx:
        t = time.perf_counter()
        imx_meta = _imx500_part(trial, tmp, name, ds, x_float, y_tflm, out, est, measured, imx500_venv)
        timings["imx500"] = time.perf_counter() - t

    meta = _metadata(trial, name, target=target, run_info=run_info, inp=inp, out=out, meas=meas, minimum=minimum,
                     arena_size=arena_size, margin=margin, measured=measured, est=est, ops=ops, idx=idx,
                     reference_diff=reference_diff, imx=imx_meta, dataset=ds, tmp=tmp, timings=timings)
    (tmp / CARD).write_text(model_card(meta, spec))
    (tmp / METADATA).write_text(json.dumps(meta, indent=1, default=_jsonable) + "\n")


def _jsonable(v: Any) -> Any:
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


def _metadata(trial: Trial, name: str, *, target: Any, run_info: dict[str, Any], inp: dict[str, Any],
              out: dict[str, Any], meas: Any, minimum: int, arena_size: int, margin: int, measured: Any, est: Any,
              ops: list[str], idx: list[int], reference_diff: int, imx: dict[str, Any] | None, dataset: Any,
              tmp: Path, timings: dict[str, float]) -> dict[str, Any]:
    spec, metrics = trial.spec, trial.metrics
    files = {}
    for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
        rel = f.relative_to(tmp).as_posix()
        files[rel] = {"bytes": f.stat().st_size, "sha256": _file_sha256(f)}
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
        values = {"macs": est.macs, "sram_bytes": meas.arena_bytes, "flash_bytes": measured.tflite_bytes,
                  "onchip_bytes": measured.imx500_bytes, "latency_ms": target.latency_ms(est.macs),
                  "energy_mj": target.energy_mj(est.macs)}
        basis = {"macs": "analytic count of the spec", "sram_bytes": "measured: TFLM arena (host interpreter)",
                 "flash_bytes": "measured: .tflite file size",
                 "onchip_bytes": "measured: IMX500 memory model on the converted graph",
                 "latency_ms": "target's latency model at the spec's MACs",
                 "energy_mj": "target's energy model at the spec's MACs"}
        report = (imx or {}).get("memory_report") or {}
        if report.get("usage_bytes") is not None:
            values["onchip_bytes"] = report["usage_bytes"]
            basis["onchip_bytes"] = "IMX500 converter memory report: Memory Usage"
        limits = _limits(target, values, basis)
        tgt = {"name": target.name, "runtime": target.runtime, "file": CONSTRAINTS if (tmp / CONSTRAINTS).is_file()
               else None, "source": target.path, "latency_ms": target.latency_ms(est.macs),
               "inference_ms": target.inference_ms(est.macs), "energy_mj": target.energy_mj(est.macs),
               "limits": limits, "fits": all(row["ok"] for row in limits)}
    task = metrics.get("task", dataset.task)
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
                    "quantization_delta": metrics.get("quantization_delta"),
                    "evaluated_on": "test split; INT8 figure from the converted model with TFLite reference kernels"},
        "macs": est.macs,
        "params": est.params,
        "memory": memory,
        "target": tgt,
        "input": _input_description(spec, inp, dataset),
        "output": {**out, **_output_description(spec, metrics, out)},
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
        "versions": {"export": _versions(), **({"run": run_info["versions"]} if run_info.get("versions") else {})},
        "export_timings": {k: round(v, 3) for k, v in timings.items()},
    }


# --------------------------------------------------------------------------------------------- IMX500 part


def _imx500_part(trial: Trial, tmp: Path, name: str, ds: Any, x_float: Any, y_tflm: Any, out: dict[str, Any],
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
            "files": {"packer": f"{IMX500_DIR}/{imx.PACKER}", "memory_report": f"{IMX500_DIR}/{conv.memory_report.name}",
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
        qat = keras.models.load_model(trial.path / KERAS, compile=False)
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


# --------------------------------------------------------------------------------------------- runs


BEST_METRICS = ("int8_metric", "float_metric", "memory_bytes", "energy_mj", "latency_ms", "macs", "tflite_bytes")


def select_trials(run: Any, *, trial: int | None = None, pareto: bool = False, best: str | None = None,
                  records: Sequence[Any] | None = None) -> list[Any]:
    """The trials of ``run`` (a :class:`nas.results.Run`) to export, as :class:`nas.results.TrialRecord`."""
    records = list(records if records is not None else run.trials())
    trained = [r for r in records if r.status == "trained" and r.trial_dir]
    chosen = sum(x is not None and x is not False for x in (trial, pareto or None, best))
    if chosen != 1:
        raise UserError("nas export", "--trial/--pareto/--best", f"exactly one of them to choose trials from run "
                                                                 f"{run.path}")
    if trial is not None:
        match = [r for r in trained if r.number == trial]
        if not match:
            numbers = ", ".join(str(r.number) for r in trained) or "none yet"
            raise UserError("--trial", "trial", f"a trained trial of {run.path} ({numbers}); trial {trial} "
                                                f"{'is not trained' if any(r.number == trial for r in records) else 'does not exist'}")
        return match
    if pareto:
        front = run.pareto(records)
        if not front:
            raise UserError(str(run.path), "--pareto", "a run with at least one feasible trained trial; it has none")
        return front
    metric_name, higher = run.metric
    key = "int8_metric" if best == metric_name else best
    if key not in BEST_METRICS:
        from nas.errors import did_you_mean

        raise UserError("--best", "metric", f"one of {', '.join((*BEST_METRICS, metric_name))}, got '{best}'"
                        + did_you_mean(str(best), (*BEST_METRICS, metric_name)))
    pool = [r for r in trained if r.feasible and getattr(r, key) is not None]
    if not pool:
        raise UserError(str(run.path), "--best", f"a feasible trained trial with a '{key}' value; there is none")
    sign = -1.0 if key in ("int8_metric", "float_metric") and higher else 1.0
    return [min(pool, key=lambda r: (sign * float(getattr(r, key)), r.number))]


def _run_info(run: Any, record: Any, selected_by: str, front: set[int]) -> dict[str, Any]:
    cfg = run.config
    return {"run_dir": str(run.path), "study": run.study_name, "run_id": run.run_id, "trial": record.number,
            "selected_by": selected_by, "feasible": record.feasible, "pareto_optimal": record.number in front,
            "violations": list(record.violations), "run_dataset": cfg.get("dataset"), "run_seed": cfg.get("seed"),
            "run_budget": cfg.get("budget"), "constraints_source": (cfg.get("target") or {}).get("source"),
            "versions": cfg.get("versions")}


def is_run_dir(path: Path | str) -> bool:
    from nas import results

    return (Path(path) / results.RUN_FILE).is_file()


def export(source: Path | str, out_dir: Path | str, *, trial: int | None = None, pareto: bool = False,
           best: str | None = None, name: str | None = None, constraints: str | None = None,
           storage: str | None = None, force: bool = False, zip_bundle: bool = False, imx500: str = "auto",
           imx500_venv: str | Path | None = None, samples: int = DEFAULT_SAMPLES) -> list[Path]:
    """Export from a run directory (choosing trials) or from one trained folder; returns the bundle folders.

    For a run, the target defaults to the run's own copy of its constraint file (``constraints`` overrides).
    Every destination is checked before the first bundle is written, so ``--pareto`` never stops halfway
    over an existing bundle.
    """
    from nas.hardware import load_target

    src = Path(source)
    tgt = load_target(constraints) if constraints else None
    out = Path(out_dir)
    if not is_run_dir(src):
        if trial is not None or pareto or best:
            raise UserError(str(src), "--trial/--pareto/--best", "a run directory (with run.yaml) to choose trials "
                                                                 "from; this is a single trained folder: leave them out")
        if name is not None:
            check_name(name, out)
        return [export_trial(src, out, name=name, target=tgt, run_info={"selected_by": "trained folder"},
                             force=force, zip_bundle=zip_bundle, imx500=imx500, imx500_venv=imx500_venv,
                             samples=samples)]
    from nas import results

    run = results.open_run(src, storage)
    records = run.trials()
    picked = select_trials(run, trial=trial, pareto=pareto, best=best, records=records)
    front = {r.number for r in run.pareto(records)}
    selected_by = (f"--trial {trial}" if trial is not None else "--pareto" if pareto else f"--best {best}")
    target = tgt or run.target()
    names = [name if name and len(picked) == 1 else f"{name}-trial-{r.number}" if name else f"trial-{r.number}"
             for r in picked]
    dests = [check_name(n, out) for n in names]
    for d in dests:
        _check_destination(d, force, zip_bundle)
    bundles = []
    for r, n in zip(picked, names):
        if r.violations:
            log.warning("trial %d breaks the limits %s of %s", r.number, ", ".join(r.violations), target.name)
        bundles.append(export_trial(run.path / r.trial_dir, out, name=n, target=target,
                                    run_info=_run_info(run, r, selected_by, front), force=force, zip_bundle=zip_bundle,
                                    imx500=imx500, imx500_venv=imx500_venv, samples=samples))
    return bundles


# --------------------------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class Verified:
    """What ``nas verify`` checked on a bundle that passed."""

    bundle: Path
    tflite_bytes: int
    sha256: str
    arena_size: int
    samples: int
    files_checked: tuple[str, ...] = field(default=())


def verify_bundle(bundle: Path | str) -> Verified:
    """Re-check a bundle on its own; :class:`VerifyError` with a one-line reason at the first mismatch.

    Checks, in order: the files' sha256 against ``metadata.json``; the C array's bytes and length against the
    .tflite; ``kTensorArenaSize`` against the metadata; then the .tflite is run in the TFLM host interpreter
    with ``kTensorArenaSize`` on the stored sample inputs and every output must equal the recorded one.
    """
    import numpy as np

    path = Path(bundle)
    meta_path = path / METADATA
    if not path.is_dir() or not meta_path.is_file():
        raise UserError(str(bundle), "", f"a bundle folder made by nas export (with {METADATA})")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise VerifyError(f"{METADATA} is not valid JSON ({e})") from None
    files = meta.get("files") or {}
    checked = []
    for rel in (*CHECKED_FILES, *sorted(f for f in files if f.startswith(IMX500_DIR + "/") and f.endswith(".zip"))):
        f = path / rel
        if rel not in files:
            raise VerifyError(f"{METADATA} records no sha256 for {rel}")
        if not f.is_file():
            raise VerifyError(f"{rel} is missing")
        digest = _file_sha256(f)
        if digest != files[rel]["sha256"]:
            raise VerifyError(f"{rel}: sha256 {digest[:16]}... differs from {METADATA}'s {files[rel]['sha256'][:16]}...")
        checked.append(rel)
    tflite = (path / TFLITE).read_bytes()
    if sha256(tflite) != meta.get("tflite_sha256"):
        raise VerifyError(f"{TFLITE}: sha256 differs from {METADATA}'s tflite_sha256")
    try:
        c_bytes, c_len = parse_c_array((path / C_SOURCE).read_text())
    except (ValueError, OSError) as e:
        raise VerifyError(f"{C_SOURCE}: cannot read the C array ({e})") from None
    if c_bytes != tflite:
        first = next((i for i, (a, b) in enumerate(zip(c_bytes, tflite)) if a != b), min(len(c_bytes), len(tflite)))
        raise VerifyError(f"{C_SOURCE}: the C array ({len(c_bytes)} bytes) differs from {TFLITE} ({len(tflite)} bytes) "
                          f"at byte {first}")
    if c_len != len(tflite):
        raise VerifyError(f"{C_SOURCE}: g_model_data_len is {c_len}, {TFLITE} has {len(tflite)} bytes")
    arena_size = parse_header_int((path / C_HEADER).read_text(), "kTensorArenaSize")
    recorded = (meta.get("memory") or {}).get("arena", {}).get("kTensorArenaSize")
    if arena_size is None or arena_size != recorded:
        raise VerifyError(f"{C_HEADER}: kTensorArenaSize {arena_size} differs from {METADATA}'s {recorded}")
    with np.load(path / SAMPLES) as npz:
        inputs, expected = npz["inputs"], npz["outputs"]
    try:
        got = run_tflm(tflite, arena_size, inputs)
    except RuntimeError as e:
        raise VerifyError(str(e).splitlines()[0]) from None
    expected = expected.reshape(len(expected), -1)
    if got.shape != expected.shape or not np.array_equal(got, expected):
        bad = [i for i in range(len(expected)) if got.shape != expected.shape or not np.array_equal(got[i], expected[i])]
        raise VerifyError(f"TFLM outputs differ from the recorded ones on {len(bad)} of {len(expected)} samples "
                          f"(first: sample {bad[0]})")
    return Verified(path, len(tflite), sha256(tflite), arena_size, len(expected), tuple(checked))


# --------------------------------------------------------------------------------------------- model card


def _num(v: float, unit: str) -> str:
    """A limit value: whole bytes / MACs with thousands separators, times and energies to 4 digits."""
    return f"{int(round(v)):,} {unit}" if unit in ("B", "MACs") else f"{v:.4g} {unit}"


def _kb(n: Any) -> str:
    return "-" if n is None else f"{n:,} B ({n / 1024:,.1f} KB)"


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
    fmt = (lambda v: "-" if v is None else f"{v:.4f}")
    lines += [f"| {metric} (INT8 .tflite, test split) | {fmt(m.get('int8'))} |",
              f"| {metric} (float Keras QAT model) | {fmt(m.get('float'))} |",
              f"| MACs | {meta['macs']:,} |", f"| parameters | {meta['params']:,} |",
              f"| .tflite size | {_kb(mem['measured']['tflite_bytes'])} |",
              f"| TFLM arena, measured (host) | {_kb(mem['measured']['tflm_arena_bytes'])} (minimum that "
              f"allocates: {mem['measured']['tflm_min_arena_bytes']:,} B) |",
              f"| TFLM arena, estimated before training | {_kb(mem['estimated']['peak_sram_bytes'])} |",
              f"| **kTensorArenaSize** | **{arena['kTensorArenaSize']:,} B** = minimum + {arena['margin_bytes']:,} B "
              f"margin ({arena['margin_rule']}) |"]
    tgt = meta.get("target")
    if tgt:
        lines += [f"| target | {tgt['name']} (runtime `{tgt['runtime']}`) |",
                  f"| latency per frame (model) | {tgt['latency_ms']:.3f} ms (inference {tgt['inference_ms']:.3f} ms) |",
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
    lines += ["", "## Python (TFLite interpreter)", "", "```python", "import numpy as np", "import tensorflow as tf", "",
              'it = tf.lite.Interpreter(model_path="model_int8.tflite")', "it.allocate_tensors()",
              'inp, out = it.get_input_details()[0], it.get_output_details()[0]',
              f"x = np.zeros((1, {', '.join(str(s) for s in inp['shape'][1:])}), np.float32)  # your input in [0, 1]",
              f"q = np.clip(np.round(x / {inp['scale']!r}) {_plus(inp['zero_point'])}, -128, 127).astype(np.int8)",
              'it.set_tensor(inp["index"], q)', "it.invoke()",
              f'y = (it.get_tensor(out["index"]).astype(np.float32) {_minus(out["zero_point"])}) * {out["scale"]!r}',
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
                      f"| Memory Usage (converter) | {_kb(rep.get('usage_bytes'))} of {_kb(rep.get('available_bytes'))} |",
                      f"| runtime / model / reserved | {rep.get('runtime_bytes'):,} / {rep.get('model_bytes'):,} / "
                      f"{rep.get('reserved_bytes'):,} B |",
                      f"| our estimate before training (weights + planned activations) | {_kb(cmp_['estimated_onchip_bytes'])} |",
                      f"| our model on the converted .tflite graph | {_kb(cmp_['measured_model_bytes'])} |", "",
                      "The IMX500 part is quantized by Sony's MCT (post-training, on the training split) from the same "
                      "float weights, so its outputs differ slightly from `model_int8.tflite`.", ""]
        else:
            lines += [f"Not included: {imx.get('reason')}. To add it: `{imx.get('how_to_add')}`.", ""]
    lines += ["## Files", "", "| file | bytes | sha256 |", "|---|---|---|"]
    for rel, info in meta["files"].items():
        lines.append(f"| `{rel}` | {info['bytes']:,} | `{info['sha256'][:16]}...` |")
    lines += ["", f"Trained with seed {meta['seed']}; package versions and the full record are in `metadata.json`.", ""]
    return "\n".join(lines)
