"""The one topology both builders walk (nas.topology): same model as before it existed, names by position.

``tests/data/builder_golden.json`` / ``builder_golden_outputs.npz`` were written by ``nas.tf.builder.build``
as it was before the topology moved to :mod:`nas.topology` (issue 16): every layer's name, class and weight
shapes, and the outputs with seed 0 on fixed inputs, for the four presets and six random specs
(``tests.random_specs.random_spec(random.Random(16), max_resolution=96)``). The IMX500 export loads
weights by layer name, so a changed name would break it; the converter-side rebuild is checked against
the builder in tests/test_imx500.py.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nas  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from nas import topology
from nas.spec import parse_spec_string

DATA = Path(__file__).resolve().parent / "data"
GOLDEN: dict[str, dict[str, Any]] = json.loads((DATA / "builder_golden.json").read_text())


def _layer_rows(model: Any) -> list[str]:
    """One line per layer, as the golden file has them: name, class, each weight with its shape."""
    return [f"{layer.name} {type(layer).__name__} "
            + " ".join(f"{w.name}{tuple(w.shape)}".replace(" ", "") for w in layer.weights)
            for layer in model.layers]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_builder_is_the_model_it_was(name: str) -> None:
    import tf_keras as keras

    from nas.tf import builder

    keras.utils.set_random_seed(0)
    model = builder.build(parse_spec_string(GOLDEN[name]["spec"]))
    assert _layer_rows(model) == GOLDEN[name]["layers"]
    x = np.random.default_rng(1).uniform(-1, 1, (2, *model.input_shape[1:])).astype(np.float32)
    with np.load(DATA / "builder_golden_outputs.npz") as golden:
        # bit-identical on the machine that wrote the file; the tolerance only absorbs another CPU's rounding
        np.testing.assert_allclose(model(x, training=False).numpy(), golden[name], rtol=1e-5, atol=1e-7)


class _Recorder:
    """A stand-in for Keras: every layer is its name, so the walk can be checked without TensorFlow."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def layer(self, *args: Any) -> str:
        self.names.append(args[-1])
        return args[-1]

    def layers(self) -> topology.Layers:
        makers = {f.name: self.layer for f in dataclasses.fields(topology.Layers) if f.name != "model"}
        return topology.Layers(model=lambda inputs, outputs, name: self.names, **makers)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_the_walk_names_every_layer_of_the_model(name: str) -> None:
    """Each Layers call makes exactly one layer of the builder's model, with the name the walk gives it."""
    recorder = _Recorder()
    names = topology.build(parse_spec_string(GOLDEN[name]["spec"]), recorder.layers())
    assert sorted(names) == sorted(row.split()[0] for row in GOLDEN[name]["layers"])


def test_topology_imports_no_tensorflow() -> None:
    """The IMX500 worker imports it in TensorFlow 2.15's venv: it must not pull in TF, tf_keras or tfmot."""
    code = ("import sys; sys.modules['tensorflow'] = None; sys.modules['tf_keras'] = None; "
            "import nas.topology; print(sorted(m for m in sys.modules if m.startswith('nas')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "['nas', 'nas.errors', 'nas.formatting', 'nas.spec', 'nas.topology']"  # stdlib only


def test_weight_key_is_layer_and_attribute() -> None:
    assert topology.weight_key("b0_0_conv", "b0_0_conv/kernel:0") == "b0_0_conv/kernel"
    assert topology.weight_key("b0_0_bn", "quant_b0_0_bn/b0_0_bn/moving_mean:0") == "b0_0_bn/moving_mean"
