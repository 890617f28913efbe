"""``builder.quantize`` is tfmot's plain wrap, only faster (issue 18): same layers, weights, outputs and INT8 file.

The reference is the wrap as it was written before: our layers annotated in one ``clone_model``, the rest by
``quantize_annotate_model`` in a second, then ``quantize_apply``, all with Keras' default autograph
conversion of each layer call. The float model gets random weights first, as a trained one would have, so
the test also shows that ``quantize`` carries a trained model's weights over.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

import nas  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from nas.spec import preset



def _no_dropout(spec: Any) -> Any:
    """Dropout off: two models draw different dropout masks, and a training call would differ by them."""
    return dataclasses.replace(spec, head=dataclasses.replace(spec.head, dropout=0.0))


SPECS = {
    "mnv3-small-0.5-32": _no_dropout(preset("mobilenetv3-small").replace(resolution=32, width=0.5, classes=10)),
    "tinytracker-32": _no_dropout(preset("tinytracker").replace(resolution=32)),
}


def _reference_quantize(model: Any) -> Any:
    import tf_keras as keras
    import tensorflow_model_optimization as tfmot

    from nas.tf import builder

    qk = tfmot.quantization.keras
    own = (builder.HardSigmoid, builder.HardSwish, builder.SEMultiply, builder.Scale)

    def annotate(layer: Any) -> Any:
        return qk.quantize_annotate_layer(layer, builder.OutputOnlyQuantizeConfig()) if isinstance(layer, own) \
            else layer

    with qk.quantize_scope(builder.CUSTOM_OBJECTS):
        annotated = keras.models.clone_model(model, clone_function=annotate)
        annotated.set_weights(model.get_weights())
        return qk.quantize_apply(qk.quantize_annotate_model(annotated))


def _trained_float(spec: Any) -> Any:
    """A fresh float model (layer names restart: clear_session) with random, 'trained' weights."""
    import tf_keras as keras

    from nas.tf import builder

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = builder.build(spec)
    rng = np.random.default_rng(3)
    for v in model.weights:
        if "moving_variance" in v.name or "gamma" in v.name:
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
        else:
            v.assign(rng.normal(0.0, 0.2, v.shape).astype(np.float32))
    return model


def _rows(model: Any) -> list[str]:
    return [f"{layer.name} {type(layer).__name__} "
            + " ".join(f"{w.name}{tuple(w.shape)}" for w in layer.weights) for layer in model.layers]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_quantize_is_the_reference_wrap(name: str) -> None:
    from nas.tf import builder, convert

    spec = SPECS[name]
    float_model = _trained_float(spec)
    float_weights = [w.copy() for w in float_model.get_weights()]
    fast = builder.quantize(float_model)
    reference = _reference_quantize(_trained_float(spec))

    assert _rows(fast) == _rows(reference)
    for a, b in zip(fast.weights, reference.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    # the float model keeps its own weights; the QAT copy starts from them
    for a, b in zip(float_model.get_weights(), float_weights, strict=True):
        np.testing.assert_array_equal(a, b)

    x = np.random.default_rng(1).random((8, *fast.input_shape[1:]), dtype=np.float32)
    np.testing.assert_array_equal(fast(x, training=True).numpy(), reference(x, training=True).numpy())
    for a, b in zip(fast.weights, reference.weights, strict=True):  # the quantizers' ranges moved alike
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    np.testing.assert_array_equal(fast(x, training=False).numpy(), reference(x, training=False).numpy())
    assert convert.to_int8(fast, x, samples=8) == convert.to_int8(reference, x, samples=8)
