"""The wheel works on its own: built from this checkout, installed into a fresh environment, run from elsewhere.

An editable install (``pip install -e .``) finds files next to the source tree whether or not they are in the
package; a wheel carries only what the package declares. So this test builds the wheel, installs it (not
editable) into a new virtual environment and runs ``nas`` from an empty folder: the shipped constraint file
and search space found by bare name, a real one-trial search, and the explorer's script found and run.

Installing TensorFlow & co. again would cost minutes and gigabytes, so the fresh environment reaches the
dependencies of the environment running the tests through one ``.pth`` line naming its site-packages. A path
line in a ``.pth`` file only adds that folder to ``sys.path``; the ``.pth`` files inside it are not processed,
so the editable install's import hook for this checkout never loads there (asserted below: ``nas`` comes from
the fresh environment's site-packages).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("nas/constraints/mcu_vww.yaml", "nas/constraints/imx500.yaml", "nas/constraints/README.md",
           "nas/search_spaces/mobilenetv3.yaml", "nas/search_spaces/tinytracker.yaml", "nas/app/explorer.py",
           "nas/app/core.py", "nas/tf/builder.py", "nas/cli.py")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path
    nas: Path
    site_packages: Path
    workdir: Path  # an empty folder outside the checkout, where every command runs

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.nas), *args], capture_output=True, text=True, timeout=timeout,
                              cwd=self.workdir, env=clean_env())


def clean_env() -> dict[str, str]:
    """This process's environment without anything that would put the checkout on the fresh ``sys.path``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
                                                             "PYTHONSAFEPATH", "VIRTUAL_ENV")}
    return {**env, "PYTHONNOUSERSITE": "1"}


def build_wheel(out: Path) -> Path:
    """The wheel of a copy of the package's sources (setuptools builds in the source tree; not in the checkout)."""
    src = out / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "nas", src / "nas", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = out / "dist"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"pip wheel failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    wheels = sorted(dist.glob("tinynas-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def install(wheel: Path, venv: Path) -> tuple[Path, Path]:
    """A new environment holding the wheel alone; this one's site-packages reached for its dependencies."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # pip of this environment installs into the other one (--python); the .pth comes after, so pip sees a
    # bare environment and neither finds nor touches the tinynas installed here
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                          str(wheel)], capture_output=True, text=True, timeout=300, env=clean_env())
    assert res.returncode == 0, f"pip install failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, env=clean_env()).stdout.strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_tinynas_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    return python, site


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(base / "build")
    python, site = install(wheel, base / "venv")
    work = base / "work"
    work.mkdir()
    return Installed(wheel, python, base / "venv" / "bin" / "nas", site, work)


def test_the_wheel_holds_the_data_and_every_subpackage(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    missing = [n for n in SHIPPED if n not in names]
    assert not missing, f"not in {installed.wheel.name}: {missing}"
    assert not any(n.startswith(("tests/", "bench/", "constraints/", "search_spaces/", "app/")) for n in names)


def test_nas_is_imported_from_the_fresh_environment(installed: Installed) -> None:
    code = ("import nas, nas.hardware, nas.space, nas.app; "
            "print(nas.__file__); print(nas.hardware.constraints_dir()); print(nas.space.spaces_dir()); "
            "print(nas.app.__file__)")
    res = subprocess.run([str(installed.python), "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=installed.workdir, env=clean_env())
    assert res.returncode == 0, res.stderr
    paths = [Path(line) for line in res.stdout.split()]
    assert len(paths) == 4, res.stdout
    for p in paths:
        assert p.is_relative_to(installed.site_packages), (p, installed.site_packages)
        assert not p.is_relative_to(ROOT), p


def test_profile_finds_the_shipped_constraint_file(installed: Installed) -> None:
    out = installed.run("profile", "--spec", "mobilenetv1-vww", "--constraints", "mcu_vww.yaml")
    assert out.returncode == 0, out.stderr
    assert "MACs        7,489,664" in out.stdout
    assert str(installed.site_packages / "nas" / "constraints" / "mcu_vww.yaml") in out.stdout
    for limit in ("sram_bytes", "flash_bytes", "macs"):
        assert limit in out.stdout
    assert "fits" in out.stdout


def test_a_one_trial_search_and_the_explorer(installed: Installed) -> None:
    run_dir = installed.workdir / "run"
    start = time.monotonic()
    out = installed.run("search", "--constraints", "mcu_vww.yaml", "--trials", "1", "--epochs", "1",
                        "--train-limit", "64", "--run-dir", str(run_dir), timeout=600)
    seconds = time.monotonic() - start
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert "space mobilenetv3, target Visual Wake Words MCU" in out.stdout, out.stdout
    assert "  1 trained (" in out.stdout, out.stdout
    assert (run_dir / "run.yaml").is_file() and (run_dir / "study.db").is_file()
    models = list(run_dir.glob("trials/*/model_int8.tflite"))
    assert len(models) == 1 and models[0].stat().st_size > 0, models
    print(f"one-trial search from the wheel: {seconds:.1f} s")

    out = installed.run("app", "--help")
    assert out.returncode == 0, out.stderr
    assert "RUN_DIR_OR_STORAGE_URL" in out.stdout and "--port" in out.stdout
    # the port is checked after the explorer script is looked up: exit 2 on the port means the script was found
    out = installed.run("app", str(run_dir), "--port", "0")
    assert out.returncode == 2 and "--port" in out.stderr and "explorer script" not in out.stderr, out.stderr
    # and the installed script runs on the run just made (Streamlit's AppTest, in the fresh environment)
    code = ("import sys\n"
            "from importlib import resources\n"
            "from streamlit.testing.v1 import AppTest\n"
            "at = AppTest.from_file(str(resources.files('nas.app') / 'explorer.py'), default_timeout=120)\n"
            "at.session_state['source'] = sys.argv[1]\n"
            "at.run()\n"
            "assert not at.exception, [e.value for e in at.exception]\n"
            "assert not at.error, [e.value for e in at.error]\n"
            "print('charts', len(at.get('plotly_chart')))\n")
    res = subprocess.run([str(installed.python), "-c", code, str(run_dir)], capture_output=True, text=True,
                         timeout=300, cwd=installed.workdir, env=clean_env())
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    charts = int(res.stdout.split("charts")[-1])
    assert charts >= 1, res.stdout
