"""The package layout is the rule: only ``nas.tf`` imports TensorFlow.

Two checks, one static and one real:

* a lint rule over the source: no module outside ``nas/tf/`` (and the bundle exporter, which runs real
  interpreters) imports TensorFlow, ``tf_keras``, tfmot or ``nas.tf`` at module level, and no module at all
  reaches into another package's private ``_names``;
* every coordinator-side module imported in a fresh interpreter leaves ``tensorflow`` out of
  ``sys.modules`` (what the search coordinator, ``nas pareto`` and the explorer rely on to start quickly).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nas"
TF_MODULES = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "nas.tf")
#: Modules allowed to import TensorFlow at module level: the TF side itself, the worker that runs inside the
#: IMX500 converter's own environment, and the bundle exporter's interpreter wrappers.
TF_SIDE = ("nas.tf", "nas.imx500_worker", "nas.export")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules() -> list[tuple[str, Path]]:
    return sorted((_module_name(p), p) for p in PACKAGE.rglob("*.py"))


def _is_tf_side(name: str) -> bool:
    return any(name == side or name.startswith(side + ".") for side in TF_SIDE)


def _top_level_imports(tree: ast.Module) -> list[str]:
    """Modules imported when the module itself is imported: top level, including ``if``/``try`` blocks."""
    names: list[str] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                names.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.append(node.module)
                names.extend(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(node.body)
                for extra in (getattr(node, "orelse", []), getattr(node, "finalbody", [])):
                    visit(extra)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return names


def _imports_tf(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in TF_MODULES)


def test_only_the_tf_side_imports_tensorflow_at_module_level() -> None:
    offenders = []
    for name, path in _modules():
        if _is_tf_side(name):
            continue
        tree = ast.parse(path.read_text(), str(path))
        offenders += [f"{name} imports {imp}" for imp in _top_level_imports(tree) if _imports_tf(imp)]
    assert not offenders, "; ".join(offenders)


def test_the_lint_rule_catches_a_module_level_tensorflow_import() -> None:
    """The rule above is not vacuous: a module-level import is seen, a function-level one is not."""
    caught = ast.parse("import os\ntry:\n    import tensorflow as tf\nexcept ImportError:\n    pass\n")
    lazy = ast.parse("def f():\n    import tensorflow\n")
    assert any(_imports_tf(n) for n in _top_level_imports(caught))
    assert not any(_imports_tf(n) for n in _top_level_imports(lazy))
    assert _imports_tf("nas.tf.builder") and not _imports_tf("nas.tflm")


def _module_aliases(tree: ast.Module, own: set[str]) -> set[str]:
    """Local names bound to one of our modules: ``from nas import arena``, ``import nas.tflm as tflm``..."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            aliases |= {a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in own}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.asname and a.name in own}
    return aliases


#: Optuna's private attributes and modules: only the adapter (nas.storage) may touch them.
OPTUNA_PRIVATE = ("_storage", "_trial_id", "_study_id", "_n_startup_trials")
ADAPTER = "nas.storage"


def _private_uses(path: Path, name: str, own: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    aliases = _module_aliases(tree, own)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("optuna") and ("._" in node.module or any(
                    a.name.startswith("_") for a in node.names)) and name != ADAPTER:
                found.append(f"{name}: from {node.module} import Optuna internals")
            if node.module.split(".")[0] == "nas":
                found += [f"{name}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if isinstance(node.value, ast.Name) and node.value.id in aliases:
                found.append(f"{name}: {node.value.id}.{node.attr}")
            elif node.attr in OPTUNA_PRIVATE and name != ADAPTER:
                found.append(f"{name}: .{node.attr} (Optuna internals belong in {ADAPTER})")
    return found


def test_no_module_calls_private_names_of_another_module() -> None:
    """``from nas.x import _private``, ``arena._x(...)`` or Optuna's ``study._storage`` outside the adapter is
    how internals leak: the package, its tests and its benchmarks are checked."""
    own = {name for name, _ in _modules()}
    files = [(name, path) for name, path in _modules()]
    files += [(_module_name(p), p) for folder in ("tests", "bench") for p in sorted((ROOT / folder).glob("*.py"))]
    offenders = [use for name, path in files for use in _private_uses(path, name, own)]
    assert not offenders, "; ".join(sorted(set(offenders)))


def test_the_private_name_rule_sees_a_leak(tmp_path: Path) -> None:
    leak = tmp_path / "leak.py"
    leak.write_text("from nas import arena\nfrom nas.tflm import _x\narena._align_up(3)\nstudy._storage\n")
    own = {name for name, _ in _modules()}
    found = _private_uses(leak, "leak", own)
    assert len(found) == 3, found


def test_coordinator_side_modules_import_without_tensorflow() -> None:
    names = [name for name, _ in _modules()
             if not _is_tf_side(name) and name != "nas.app.explorer" and not name.endswith("__main__")]
    code = (
        "import importlib, json, sys\n"
        f"names = {names!r}\n"
        "loaded = {}\n"
        "for n in names:\n"
        "    importlib.import_module(n)\n"
        "    loaded[n] = sorted(m for m in ('tensorflow', 'tf_keras', 'tensorflow_model_optimization') "
        "if m in sys.modules)\n"
        "print(json.dumps(loaded))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    loaded = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(loaded) == len(names) >= 10
    assert {n: v for n, v in loaded.items() if v} == {}


@pytest.mark.parametrize("module", ["nas.tf.builder", "nas.tf.train"])
def test_the_tf_side_really_imports_tensorflow(module: str) -> None:
    """The fresh-interpreter check can see TensorFlow when it is there."""
    code = f"import sys, {module}; print('tensorflow' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "True"
