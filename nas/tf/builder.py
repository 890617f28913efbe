"""Build a ``tf_keras`` model from an :class:`~nas.spec.ArchSpec`, ready for INT8 quantization-aware training.

Why hand-written and not ``tf_keras.applications``: the stock MobileNetV3 only survives tfmot's
``quantize_model`` in its minimalistic form (STACK.md). Here hard-swish, hard-sigmoid, the
squeeze-excite multiply and the gaze output scaling are small layers of our own, each annotated with a
QuantizeConfig that fake-quantizes only its output. The converter then sees the float pattern
``x * relu6(x + 3) / 6`` between two quantize points and emits TFLite's fused ``HARD_SWISH``.

Layer names are a pure function of the block position, so weights saved from one build load into
another build of the same spec (e.g. in the IMX500 converter's own environment).
"""
from __future__ import annotations

import nas  # noqa: F401  - sets TF_USE_LEGACY_KERAS before TensorFlow loads

import tensorflow as tf
import tf_keras as keras
import tensorflow_model_optimization as tfmot

from nas.spec import ArchSpec, Block, make_divisible

_qk = tfmot.quantization.keras


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


class OutputOnlyQuantizeConfig(_qk.QuantizeConfig):
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


def _act(x, act: str, name: str):
    if act == "relu":
        return keras.layers.ReLU(name=f"{name}_relu")(x)
    if act == "relu6":
        return keras.layers.ReLU(6.0, name=f"{name}_relu6")(x)
    return HardSwish(name=f"{name}_hswish")(x)


def _conv_bn(x, filters: int, kernel: int, stride: int, act: str | None, name: str):
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3, name=f"{name}_bn")(x)
    return _act(x, act, name) if act else x


def _dw_bn(x, kernel: int, stride: int, act: str, name: str):
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3, name=f"{name}_dwbn")(x)
    return _act(x, act, f"{name}_dw")


def _squeeze_excite(x, channels: int, ratio: float, name: str):
    squeeze = make_divisible(channels * ratio)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    s = keras.layers.Conv2D(squeeze, 1, name=f"{name}_se_reduce")(s)
    s = keras.layers.ReLU(name=f"{name}_se_relu")(s)
    s = keras.layers.Conv2D(channels, 1, name=f"{name}_se_expand")(s)
    s = HardSigmoid(name=f"{name}_se_gate")(s)
    return SEMultiply(name=f"{name}_se_mul")([x, s])


def _block(x, spec: ArchSpec, block: Block, in_ch: int, stride: int, name: str):
    out = spec.channels_of(block)
    if block.kind == "cn":
        return _conv_bn(x, out, block.kernel, stride, block.act, name)
    if block.kind == "ds":
        x = _dw_bn(x, block.kernel, stride, block.act, name)
        if block.se:
            x = _squeeze_excite(x, in_ch, block.se, name)
        return _conv_bn(x, out, 1, 1, block.act, f"{name}_pw")
    shortcut = x
    expanded = make_divisible(in_ch * block.expansion)
    if expanded != in_ch:
        x = _conv_bn(x, expanded, 1, 1, block.act, f"{name}_expand")
    x = _dw_bn(x, block.kernel, stride, block.act, name)
    if block.se:
        x = _squeeze_excite(x, expanded, block.se, name)
    x = _conv_bn(x, out, 1, 1, None, f"{name}_project")
    if stride == 1 and in_ch == out:
        x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return x


def build(spec: ArchSpec) -> keras.Model:
    """The float model for ``spec``. Deterministic given the global seed (``keras.utils.set_random_seed``)."""
    inputs = keras.Input((spec.resolution, spec.resolution, spec.input_channels), name="input")
    x = inputs
    head = spec.head
    if head.kind == "gaze" and head.grid_channels:
        # TinyTracker folds the face-grid embedding channels into the image channels with a 1x1 conv.
        x = keras.layers.Conv2D(spec.channels, 1, name="grid_fuse")(x)
    in_ch = spec.channels
    for i, block in enumerate(spec.blocks):
        for r in range(block.repeats):
            x = _block(x, spec, block, in_ch, block.stride if r == 0 else 1, f"b{i}_{r}")
            in_ch = spec.channels_of(block)
    if head.kind == "classifier":
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
        if head.hidden:
            x = keras.layers.Dense(head.hidden, name="head_hidden")(x)
            x = _act(x, head.act, "head_hidden")
        if head.dropout:
            x = keras.layers.Dropout(head.dropout, name="head_dropout")(x)
        x = keras.layers.Dense(head.classes, name="head_logits")(x)
        outputs = keras.layers.Softmax(name="head_softmax")(x)
    else:
        x = keras.layers.Conv2D(head.conv_channels, 1, name="head_conv")(x)
        x = _act(x, head.act, "head_conv")
        x = keras.layers.Flatten(name="head_flatten")(x)
        if head.hidden:
            x = keras.layers.Dense(head.hidden, name="head_hidden")(x)
            x = _act(x, head.act, "head_hidden")
        if head.dropout:
            x = keras.layers.Dropout(head.dropout, name="head_dropout")(x)
        x = keras.layers.Dense(2, name="head_gaze")(x)
        x = keras.layers.Activation("tanh", name="head_tanh")(x)
        outputs = Scale(head.output_scale, name="head_cm")(x)
    return keras.Model(inputs, outputs, name="tinynas")


def quantize(model: keras.Model) -> keras.Model:
    """Wrap a float model for INT8 quantization-aware training (tfmot default 8-bit scheme).

    Our own layers get :class:`OutputOnlyQuantizeConfig`; everything else uses tfmot's registry, which folds
    batch norm into the convolutions and fuses ReLU / ReLU6 as the converter will.
    """

    def annotate(layer):
        if isinstance(layer, _OUTPUT_ONLY):
            return _qk.quantize_annotate_layer(layer, OutputOnlyQuantizeConfig())
        return layer

    with _qk.quantize_scope(CUSTOM_OBJECTS):
        annotated = keras.models.clone_model(model, clone_function=annotate)
        annotated.set_weights(model.get_weights())
        annotated = _qk.quantize_annotate_model(annotated)
        return _qk.quantize_apply(annotated)


def build_qat(spec: ArchSpec) -> keras.Model:
    """Shortcut: the QAT-wrapped model for ``spec``."""
    return quantize(build(spec))
