"""The Sony IMX500 converter: its own virtual environment, and the bridge that export calls into it with.

Why a second environment: ``imx500-converter[tf]`` 3.19 needs TensorFlow 2.14-2.15, numpy < 2, protobuf
4.25.5, Python < 3.12 and ``model-compression-toolkit`` 2.5 (STACK.md); we run TensorFlow 2.21 with
``tf_keras``. The two cannot share an environment, so the converter gets a venv of its own
(``nas imx500 setup``), by default ``~/.cache/tinynas/imx500-venv`` or ``$TINYNAS_IMX500_VENV``.

The converter accepts only models that Sony's MCT exported, so a trained candidate crosses over as data:
its float weights (read from the trained QAT model, keyed ``"<layer>/<attr>"``) go into an ``.npz``, its spec
as a string, a representative set and a few check inputs as ``.npy``. :mod:`nas.imx500_worker` runs in the
converter's venv, rebuilds the same architecture with plain Keras 2.15 layers, quantizes it with MCT for
the IMX500 and exports ``model.keras``; ``imxconv-tf`` then compiles that into ``packerOut.zip`` and writes
its memory report ("Fit In Chip").
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import tempfile
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from nas import topology
from nas.errors import UserError

log = logging.getLogger(__name__)

ENV_VENV = "TINYNAS_IMX500_VENV"
#: What ``nas imx500 setup`` installs (STACK.md: the versions the converter 3.19 works with).
REQUIREMENTS = (
    "imx500-converter[tf]==3.19.*",
    "tensorflow==2.15.*",
    "numpy<2",
    "protobuf==4.25.5",
    "model-compression-toolkit==2.5.*",
)
#: Version prefixes ``check`` insists on (distribution name -> accepted prefixes).
EXPECTED_VERSIONS = {
    "imx500-converter": ("3.19.",),
    "tensorflow": ("2.14.", "2.15."),
    "model-compression-toolkit": ("2.5.",),
    "protobuf": ("4.25.5",),
    "numpy": ("1.",),
}
PYTHONS = ("python3.11", "python3.10")
JAVA_MAJOR = 17
#: Our package: the worker and what it imports (``nas.spec``, ``nas.topology``) are pure Python.
PACKAGE = Path(__file__).resolve().parent
#: Ceiling for one worker or converter run; a MobileNetV3-size model takes well under a minute.
STEP_TIMEOUT_S = 1800
SETUP_LOG = "tinynas-setup.log"
MEMORY_REPORT_GLOB = "*_MemoryReport.json"
PACKER = "packerOut.zip"


class Imx500Error(RuntimeError):
    """The converter environment or a conversion failed; the message is one line with the reason."""


# --------------------------------------------------------------------------------------------- the venv


def default_venv() -> Path:
    """``$TINYNAS_IMX500_VENV``, else ``$XDG_CACHE_HOME/tinynas/imx500-venv`` (``~/.cache`` by default)."""
    override = os.environ.get(ENV_VENV)
    if override:
        return Path(override).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tinynas" / "imx500-venv"


def resolve_venv(venv: str | Path | None) -> Path:
    return Path(venv).expanduser() if venv else default_venv()


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def venv_imxconv(venv: Path) -> Path:
    return venv / "bin" / "imxconv-tf"


def is_installed(venv: str | Path | None = None) -> bool:
    """Cheap presence test (no import): the venv's Python and ``imxconv-tf`` exist."""
    v = resolve_venv(venv)
    return venv_python(v).is_file() and venv_imxconv(v).is_file()


def java_version() -> tuple[int | None, str]:
    """(major version, first line of ``java -version``), or (None, why) when there is no usable Java."""
    java = shutil.which("java")
    if not java:
        return None, "no 'java' on PATH"
    try:
        res = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"'java -version' failed ({e})"
    text = (res.stderr or res.stdout).strip()
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not m:
        return None, text.splitlines()[0] if text else "'java -version' printed nothing"
    major = int(m.group(1))
    if major == 1 and m.group(2):  # "1.8.0" style
        major = int(m.group(2))
    return major, text.splitlines()[0]


def find_python(explicit: str | None = None) -> str:
    """A Python 3.10 / 3.11 interpreter for the venv (the converter needs Python < 3.12)."""
    candidates = [explicit] if explicit else [*PYTHONS, sys.executable]
    for cand in candidates:
        path = shutil.which(cand) if cand and os.sep not in cand else cand
        if not path or not Path(path).exists():
            continue
        try:
            out = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out in ("3.10", "3.11"):
            return path
        if explicit:
            raise UserError("--python", "python", f"a Python 3.10 or 3.11 interpreter (imx500-converter needs "
                                                  f"Python < 3.12), '{explicit}' is Python {out or '?'}")
    if explicit:
        raise UserError("--python", "python", f"an existing Python 3.10 or 3.11 interpreter, got '{explicit}'")
    raise UserError("nas imx500 setup", "python", "a python3.11 or python3.10 on PATH (imx500-converter needs "
                                                  "Python < 3.12); install one or pass --python")


@dataclass(frozen=True)
class EnvStatus:
    """What ``nas imx500 check`` reports: whether export can call the converter, and if not, why."""

    venv: Path
    problems: tuple[str, ...] = ()
    versions: Mapping[str, str] = field(default_factory=dict)
    java: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"venv": str(self.venv), "ok": self.ok, "problems": list(self.problems),
                "versions": dict(self.versions), "java": self.java}


_VERSIONS_SNIPPET = (
    "import json, importlib.metadata as m\n"
    "out = {}\n"
    "for p in %r:\n"
    "    try:\n"
    "        out[p] = m.version(p)\n"
    "    except m.PackageNotFoundError:\n"
    "        pass\n"
    "print(json.dumps(out))\n"
)


def _clean_env(venv: Path) -> dict[str, str]:
    """Our environment minus what would leak our packages or our Keras choice into the converter's venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_USE_LEGACY_KERAS", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@contextmanager
def worker_command(venv: Path, job: Path) -> Iterator[tuple[list[str], dict[str, str]]]:
    """(command, environment) that runs :mod:`nas.imx500_worker` on ``job`` in the converter's venv; valid
    for the duration of the block.

    The worker imports ``nas.spec`` and ``nas.topology`` from our package. Putting the package's parent on
    its path would do in a checkout, but in a wheel install that parent is our venv's site-packages, whose
    TensorFlow 2.21 and numpy 2 would shadow the converter venv's TF 2.15. So ``PYTHONPATH`` is a temporary
    folder that holds nothing but a link ``nas`` -> :data:`PACKAGE`, and the worker runs as a module
    (``-m``): run as a script, its own folder (``nas/``, with modules like ``profile`` and ``data``) would
    come first on its path.
    """
    with tempfile.TemporaryDirectory(prefix="tinynas-imx500-path-") as tmp:
        (Path(tmp) / "nas").symlink_to(PACKAGE, target_is_directory=True)
        env = _clean_env(venv)
        env["PYTHONPATH"] = tmp
        yield [str(venv_python(venv)), "-m", "nas.imx500_worker", str(job)], env


def check(venv: str | Path | None = None, *, deep: bool = True) -> EnvStatus:
    """Check the converter venv: files present, package versions as STACK.md requires, Java 17, and (deep)
    that MCT really imports and ``imxconv-tf --version`` runs. Never raises; problems are listed."""
    v = resolve_venv(venv)
    problems: list[str] = []
    major, java_line = java_version()
    if major is None:
        problems.append(f"Java {JAVA_MAJOR} is needed by imxconv-tf: {java_line} "
                        f"(Debian/Ubuntu: apt-get install openjdk-{JAVA_MAJOR}-jre-headless)")
    elif major < JAVA_MAJOR:
        problems.append(f"Java {JAVA_MAJOR} or newer is needed by imxconv-tf, found: {java_line}")
    if not venv_python(v).is_file():
        problems.append(f"no converter environment at {v} (create it with: nas imx500 setup)")
        return EnvStatus(v, tuple(problems), {}, java_line)
    if not venv_imxconv(v).is_file():
        problems.append(f"{v} has no imxconv-tf (re-run: nas imx500 setup --venv {v})")
    versions: dict[str, str] = {}
    env = _clean_env(v)
    try:
        res = subprocess.run([str(venv_python(v)), "-c", _VERSIONS_SNIPPET % (tuple(EXPECTED_VERSIONS),)],
                             capture_output=True, text=True, timeout=120, env=env)
        versions = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as e:
        problems.append(f"cannot query packages in {v} ({e})")
    for pkg, prefixes in EXPECTED_VERSIONS.items():
        have = versions.get(pkg)
        if have is None:
            problems.append(f"{pkg} is not installed in {v} (re-run: nas imx500 setup --venv {v})")
        elif not have.startswith(prefixes):
            problems.append(f"{pkg} {have} in {v}; the converter needs {' or '.join(p + '*' for p in prefixes)}")
    if deep and not problems:
        problems += _deep_check(v, env, versions)
    return EnvStatus(v, tuple(problems), versions, java_line)


def _deep_check(venv: Path, env: dict[str, str], versions: dict[str, str]) -> list[str]:
    """Import MCT and get the IMX500 target (what the worker does first), and run ``imxconv-tf --version``."""
    problems = []
    snippet = ("import model_compression_toolkit as mct; "
               "mct.get_target_platform_capabilities('tensorflow', 'imx500'); print('ok')")
    try:
        res = subprocess.run([str(venv_python(venv)), "-c", snippet], capture_output=True, text=True,
                             timeout=300, env=env)
        if res.returncode != 0 or "ok" not in res.stdout:
            problems.append(f"MCT does not import in {venv}: {_last_error_line(res.stderr)}")
    except (OSError, subprocess.TimeoutExpired) as e:
        problems.append(f"MCT import check failed in {venv} ({e})")
    try:
        res = subprocess.run([str(venv_imxconv(venv)), "--version"], capture_output=True, text=True,
                             timeout=300, env=env)
        if res.returncode != 0:
            problems.append(f"imxconv-tf --version failed: {_last_error_line(res.stderr or res.stdout)}")
        else:
            versions["imxconv-tf"] = (res.stdout.strip() or res.stderr.strip()).split()[-1]
    except (OSError, subprocess.TimeoutExpired) as e:
        problems.append(f"imxconv-tf --version failed ({e})")
    return problems


def setup(venv: str | Path | None = None, *, python: str | None = None,
          progress: Callable[[str], None] | None = None) -> EnvStatus:
    """Create (or complete) the converter venv and install :data:`REQUIREMENTS` into it, then :func:`check`.

    pip's output goes to ``<venv>/tinynas-setup.log``; a failed install raises :class:`Imx500Error` naming
    the log. Java is not installed here (it needs the system's package manager): ``check`` reports it.
    """
    say = progress or (lambda _msg: None)
    v = resolve_venv(venv)
    if v.exists() and not venv_python(v).is_file():
        if any(v.iterdir()):
            raise UserError("--venv", "venv", f"a new folder or an existing virtual environment; '{v}' is neither")
    if not venv_python(v).is_file():
        py = find_python(python)
        say(f"creating {v} with {py}")
        v.parent.mkdir(parents=True, exist_ok=True)
        res = subprocess.run([py, "-m", "venv", str(v)], capture_output=True, text=True)
        if res.returncode != 0:
            raise Imx500Error(f"'{py} -m venv {v}' failed: {_last_error_line(res.stderr)}")
    log_path = v / SETUP_LOG
    pip = [str(venv_python(v)), "-m", "pip", "install", "--disable-pip-version-check", *REQUIREMENTS]
    say(f"installing {' '.join(REQUIREMENTS)} (about 2.5 GB; a few minutes); log: {log_path}")
    t0 = time.perf_counter()
    with open(log_path, "w") as fh:
        fh.write("$ " + " ".join(pip) + "\n")
        fh.flush()
        installed = subprocess.run(pip, stdout=fh, stderr=subprocess.STDOUT, env=_clean_env(v))
    if installed.returncode != 0:
        raise Imx500Error(f"pip install into {v} failed ({_last_error_line(log_path.read_text())}); see {log_path}")
    say(f"installed in {time.perf_counter() - t0:.0f} s; checking")
    return check(v)


def _last_error_line(text: str) -> str:
    """The most telling line of a tool's output: the last one mentioning an error, else the last line."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"error|exception|failed", ln, re.IGNORECASE) and "Unable to register" not in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


# --------------------------------------------------------------------------------------------- weights


def float_weights(qat_model: Any, float_model: Any) -> dict[str, Any]:
    """The float weights of a trained tfmot QAT model, keyed ``"<layer>/<attr>"`` as ``float_model`` names them.

    tfmot wraps each layer ``L`` as ``quant_L`` and keeps its kernel / bias / batch-norm variables (plus
    quantizer min / max variables that a float model has no use for). ``float_model`` is
    ``nas.tf.builder.build(spec)``: every one of its weights must be found, with the same shape; the values are
    also set on ``float_model`` so the caller can compare it with the rebuilt model in the converter's venv.
    """
    found: dict[str, Any] = {}
    for layer in qat_model.layers:
        for var in layer.weights:
            parts = var.name.split(":")[0].split("/")
            if len(parts) < 2:
                continue
            owner = parts[-2][len("quant_"):] if parts[-2].startswith("quant_") else parts[-2]
            found[f"{owner}/{parts[-1]}"] = var.numpy()
    try:
        return topology.set_weights(float_model, found, "the trained model")
    except ValueError as e:
        raise Imx500Error(str(e)) from None


# --------------------------------------------------------------------------------------------- convert


@dataclass(frozen=True)
class Conversion:
    """One finished IMX500 conversion: files in ``out_dir`` and the figures export records."""

    out_dir: Path
    packer: Path
    memory_report: Path
    memory: dict[str, Any]          # the report's figures, in bytes
    dnn_params: dict[str, Any]      # input / output tensors and the l2memory line of dnnParams.xml
    worker: dict[str, Any]          # versions, timings of the MCT side
    timings: dict[str, float]
    float_outputs: Any              # the rebuilt float model on the check inputs
    mct_outputs: Any                # MCT's quantized model (simulated) on the check inputs


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMG]?B)\s*$", re.IGNORECASE)
_UNIT = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}


def parse_size(text: Any) -> int | None:
    """``"79744B"`` / ``"77.88KB"`` / ``"8.00MB"`` (binary units, as the converter prints) to bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    m = _SIZE.match(str(text))
    if not m:
        return None
    return int(round(float(m.group(1)) * _UNIT[m.group(2).upper()]))


def read_memory_report(path: Path) -> dict[str, Any]:
    """The converter's ``*_MemoryReport.json`` as plain figures in bytes, plus ``fit_in_chip``."""
    raw = json.loads(path.read_text())
    rep = raw.get("Memory Report", raw)
    keys = {"runtime_bytes": "Runtime Memory Physical Size", "model_bytes": "Model Memory Physical Size",
            "reserved_bytes": "Reserved Memory", "usage_bytes": "Memory Usage",
            "available_bytes": "Total Memory Available On Chip"}
    out: dict[str, Any] = {k: parse_size(rep.get(v)) for k, v in keys.items()}
    out["utilization"] = rep.get("Memory Utilization")
    out["fit_in_chip"] = bool(rep.get("Fit In Chip"))
    out["input_persistent"] = rep.get("Input Persistent")
    nets = rep.get("Networks") or []
    if nets:
        out["input_persistence_bytes"] = parse_size(nets[0].get("Input Persistence Cost"))
    return out


def read_dnn_params(path: Path) -> dict[str, Any]:
    """Input / output tensors (shape, scale, format) and the l2memory sizes of ``dnnParams.xml``."""
    if not path.is_file():
        return {}
    root = ET.parse(path).getroot()

    def tensors(tag: str) -> list[dict[str, Any]]:
        out = []
        for t in root.iter(tag):
            dims = [int(d.get("size", 0)) for d in t.iter("dimension")]
            out.append({"name": t.get("name"), "shape": dims, "bits": int(t.get("bitsPerElement", 8)),
                        "scale": float(t.get("scale", 0) or 0), "format": t.get("format")})
        return out

    l2 = root.find(".//l2memory")
    return {"inputs": tensors("inputTensor"), "outputs": tensors("outputTensor"),
            "l2memory": {k: int(v) for k, v in (l2.attrib.items() if l2 is not None else []) if v.isdigit()}}


def _run_logged(cmd: Sequence[str], log_path: Path, env: dict[str, str], cwd: Path, what: str) -> float:
    """Run ``cmd`` with its output in ``log_path``; an :class:`Imx500Error` with the telling line on failure."""
    t0 = time.perf_counter()
    with open(log_path, "w") as fh:
        fh.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        fh.flush()
        try:
            res = subprocess.run([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                 timeout=STEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise Imx500Error(f"{what} took more than {STEP_TIMEOUT_S} s; see {log_path}") from None
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise Imx500Error(f"{what} failed: {_last_error_line(log_path.read_text(errors='replace'))}")
    return seconds


def convert(spec_string: str, weights: Mapping[str, Any], representative: Any, check_inputs: Any,
            out_dir: Path, venv: str | Path | None = None) -> Conversion:
    """Quantize with MCT and compile with ``imxconv-tf`` in the converter's venv; files go to ``out_dir``.

    ``weights``: :func:`float_weights`; ``representative``: float inputs as the model sees them (MCT's PTQ
    calibration set); ``check_inputs``: a few inputs the rebuilt float and MCT models are run on, so the caller
    can prove the weights crossed over intact.
    """
    import numpy as np

    v = resolve_venv(venv)
    if not is_installed(v):
        raise Imx500Error(f"no IMX500 converter environment at {v} (create it with: nas imx500 setup)")
    out_dir = Path(out_dir)
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    # Any: mypy would also match a ``**dict[str, ndarray]`` against savez's ``allow_pickle: bool``.
    arrays: dict[str, Any] = {k: np.asarray(a) for k, a in weights.items()}
    np.savez(work / "weights.npz", **arrays)
    np.save(work / "representative.npy", np.asarray(representative, dtype=np.float32))
    np.save(work / "check.npy", np.asarray(check_inputs, dtype=np.float32))
    job = {"spec": spec_string, "weights": str(work / "weights.npz"),
           "representative": str(work / "representative.npy"), "check_inputs": str(work / "check.npy"),
           "out_dir": str(work)}
    (work / "job.json").write_text(json.dumps(job, indent=1))
    with worker_command(v, work / "job.json") as (cmd, env):
        timings = {"mct": _run_logged(cmd, out_dir / "mct.log", env, work, "MCT quantization (nas/imx500_worker.py)")}
    conv_dir = out_dir / "converter"
    timings["imxconv"] = _run_logged([str(venv_imxconv(v)), "-i", str(work / "model.keras"), "-o", str(conv_dir),
                                      "--overwrite-output", "--report-size-unit", "B"],
                                     out_dir / "imxconv.log", _clean_env(v), work, "imxconv-tf")
    packer = conv_dir / PACKER
    reports = sorted(conv_dir.glob(MEMORY_REPORT_GLOB))
    if not packer.is_file() or not reports:
        raise Imx500Error(f"imxconv-tf wrote no {PACKER} / memory report in {conv_dir}; see {out_dir / 'imxconv.log'}")
    worker = json.loads((work / "worker.json").read_text())
    conv = Conversion(out_dir=out_dir, packer=packer, memory_report=reports[0],
                      memory=read_memory_report(reports[0]), dnn_params=read_dnn_params(conv_dir / "dnnParams.xml"),
                      worker=worker, timings={k: round(t, 3) for k, t in timings.items()},
                      float_outputs=np.load(work / "float_outputs.npy"), mct_outputs=np.load(work / "mct_outputs.npy"))
    log.info("IMX500: %s, memory usage %s B (fit in chip: %s), %.1f s", packer, conv.memory.get("usage_bytes"),
             conv.memory.get("fit_in_chip"), sum(timings.values()))
    return conv
