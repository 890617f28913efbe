"""Build a ``tf_keras`` model from an :class:`~nas.spec.ArchSpec`, ready for INT8 quantization-aware training.

Why hand-written and not ``tf_keras.applications``: the stock MobileNetV3 only survives tfmot's
``quantize_model`` in its minimalistic form (STACK.md). Here hard-swish, hard-sigmoid, the
squeeze-excite multiply and the gaze output scaling are small layers of our own, each annotated with a
QuantizeConfig that fake-quantizes only its output. The converter then sees the float pattern
``x * relu6(x + 3) / 6`` between two quantize points and emits TFLite's fused ``HARD_SWISH``.

The network itself (blocks, heads, layer names) is :mod:`nas.topology`, shared with the IMX500 converter's
rebuild (:mod:`nas.imx500_worker`); this module supplies the layers. Layer names are a pure function of the
block position, so weights saved from one build load into another build of the same spec.
"""
from __future__ import annotations

from typing import Any

import nas  # noqa: F401  - sets TF_USE_LEGACY_KERAS before TensorFlow loads

import tensorflow as tf
import tf_keras as keras
import tensorflow_model_optimization as tfmot

from nas import topology
from nas.spec import ArchSpec

_qk = tfmot.quantization.keras
# A name mypy can take as a base class (an attribute of the ``_qk`` variable it cannot; tfmot has no stubs).
_QuantizeConfig: Any = _qk.QuantizeConfig
#: ``f`` called with autograph conversion off for everything it runs (the decorator sets a disabled
#: autograph context for the call, and Keras converts a layer's ``call`` only under an enabled one).
_without_autograph = tf.autograph.experimental.do_not_convert


class HardSigmoid(keras.layers.Layer):
    """relu6(x + 3) / 6: MobileNetV3's gate, as TFLite can fuse it."""

    def call(self, x):
        return tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


class HardSwish(keras.layers.Layer):
    """x * relu6(x + 3) / 6, written so the TFLite converter emits one HARD_SWISH op."""

    def call(self, x):
        return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


class SEMultiply(keras.layers.Layer):
    """Squeeze-excite rescale: feature map times per-channel gate (broadcast over H and W)."""

    def call(self, inputs):
        x, gate = inputs
        return x * gate


class Scale(keras.layers.Layer):
    """Multiplies by a constant: the gaze head's tanh output becomes centimetres."""

    def __init__(self, scale: float, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, x):
        return x * self.scale

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


class OutputOnlyQuantizeConfig(_QuantizeConfig):
    """Fake-quantize the layer's output only: the layers above hold no weights and their inner float ops
    are fused by the converter."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [_qk.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {}


CUSTOM_OBJECTS = {
    "HardSigmoid": HardSigmoid,
    "HardSwish": HardSwish,
    "SEMultiply": SEMultiply,
    "Scale": Scale,
    "OutputOnlyQuantizeConfig": OutputOnlyQuantizeConfig,
}
_OUTPUT_ONLY = (HardSigmoid, HardSwish, SEMultiply, Scale)


#: The topology's layers as tfmot can quantize them (see the module docstring).
LAYERS = topology.keras_layers(
    keras,
    hard_swish=lambda x, name: HardSwish(name=name)(x),
    hard_sigmoid=lambda x, name: HardSigmoid(name=name)(x),
    multiply=lambda x, gate, name: SEMultiply(name=name)([x, gate]),
    dropout=lambda x, rate, name: keras.layers.Dropout(rate, name=name)(x),
    scale=lambda x, factor, name: Scale(factor, name=name)(x),
)


def build(spec: ArchSpec) -> keras.Model:
    """The float model for ``spec`` (:func:`nas.topology.build`). Deterministic given the global seed
    (``keras.utils.set_random_seed``). Built with autograph off, as :func:`quantize` explains."""
    return _without_autograph(topology.build)(spec, LAYERS)


def quantize(model: keras.Model) -> keras.Model:
    """Wrap a float model for INT8 quantization-aware training (tfmot default 8-bit scheme).

    Our own layers get :class:`OutputOnlyQuantizeConfig`; everything else uses tfmot's registry, which folds
    batch norm into the convolutions and fuses ReLU / ReLU6 as the converter will. The result holds copies
    of ``model``'s weights (``model`` itself is left as it was).

    The same model as ``quantize_apply(quantize_annotate_model(...))``, built faster (tests/test_builder_qat.py
    checks layers, weights, outputs and the INT8 file): every layer is annotated in one ``clone_model`` pass
    instead of two, and the whole wrap runs with autograph off. ``quantize_apply`` clones the model three
    more times, and each clone calls every layer on symbolic inputs; Keras autograph-converts the ``call``
    of every layer not defined in Keras itself (tfmot's wrappers, ours), which was about two thirds of the
    wrap's time. None of these calls has data-dependent control flow, so conversion changes nothing but
    the time. Training is unaffected: Keras converts the layers again when ``fit`` traces its step.
    """
    return _without_autograph(_quantize)(model)


def _quantize(model: keras.Model) -> keras.Model:
    def annotate(layer):
        config = OutputOnlyQuantizeConfig() if isinstance(layer, _OUTPUT_ONLY) else None
        return _qk.quantize_annotate_layer(layer, config)

    with _qk.quantize_scope(CUSTOM_OBJECTS):
        # The annotated model shares ``model``'s layers (and so its weights); quantize_apply copies them.
        annotated = keras.models.clone_model(model, clone_function=annotate)
        return _qk.quantize_apply(annotated)


def build_qat(spec: ArchSpec) -> keras.Model:
    """Shortcut: the QAT-wrapped model for ``spec``."""
    return quantize(build(spec))
