"""The network an :class:`~nas.spec.ArchSpec` describes, written once, for every Keras that builds it.

Why a walker that takes its layers as arguments (the pattern of timm's ``EfficientNetBuilder(act_layer=...,
se_layer=...)``): the same network is built in two environments that cannot share code that imports
TensorFlow. :mod:`nas.tf.builder` builds it with ``tf_keras`` and our own hard-swish / squeeze-excite layers
that tfmot can quantize; :mod:`nas.imx500_worker` rebuilds it in the IMX500 converter's venv (TensorFlow
2.15, Keras 2 built in) with the forms Sony's MCT knows, and loads the trained weights BY LAYER NAME. So
the topology and the layer names live here, in pure Python, and each builder supplies only a
:class:`Layers`: how to make each kind of layer.

Layer names are a pure function of the block position (``b{stage}_{repeat}_...``, ``head_...``,
``grid_fuse``), so weights saved from one build load into any other build of the same spec.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from nas.spec import ArchSpec, Block, make_divisible

#: What flows between layers: a Keras tensor of whichever Keras the :class:`Layers` come from.
Tensor = Any


@dataclass(frozen=True)
class Layers:
    """How one builder makes each kind of layer the topology uses; each callable gets the layer's name.

    :func:`keras_layers` fills the standard ones from a Keras ``layers`` module; the rest is where the two
    builders differ (quantizable custom layers vs the forms MCT recognizes).
    """

    input: Callable[[tuple[int, int, int], str], Tensor]  #: (shape HWC, name)
    model: Callable[[Tensor, Tensor, str], Any]  #: (inputs, outputs, name) -> the model
    #: (x, filters, kernel, stride, padding, use_bias, name): a 2-D convolution
    conv: Callable[[Tensor, int, int, int, str, bool, str], Tensor]
    depthwise: Callable[[Tensor, int, int, str], Tensor]  #: (x, kernel, stride, name): "same", no bias
    batch_norm: Callable[[Tensor, str], Tensor]
    relu: Callable[[Tensor, float | None, str], Tensor]  #: (x, max value or None, name)
    hard_swish: Callable[[Tensor, str], Tensor]  #: x * relu6(x + 3) / 6
    hard_sigmoid: Callable[[Tensor, str], Tensor]  #: relu6(x + 3) / 6, the squeeze-excite gate
    multiply: Callable[[Tensor, Tensor, str], Tensor]  #: (x, per-channel gate, name): the SE rescale
    add: Callable[[Tensor, Tensor, str], Tensor]  #: the residual sum
    global_pool: Callable[[Tensor, bool, str], Tensor]  #: (x, keepdims, name): global average pooling
    dense: Callable[[Tensor, int, str], Tensor]
    dropout: Callable[[Tensor, float, str], Tensor]  #: (x, rate, name)
    softmax: Callable[[Tensor, str], Tensor]
    flatten: Callable[[Tensor, str], Tensor]
    tanh: Callable[[Tensor, str], Tensor]
    scale: Callable[[Tensor, float, str], Tensor]  #: (x, constant factor, name): the gaze head's cm


def keras_layers(k: Any, *, hard_swish: Callable[[Tensor, str], Tensor],
                 hard_sigmoid: Callable[[Tensor, str], Tensor], multiply: Callable[[Tensor, Tensor, str], Tensor],
                 dropout: Callable[[Tensor, float, str], Tensor], scale: Callable[[Tensor, float, str], Tensor],
                 ) -> Layers:
    """:class:`Layers` whose standard layers come from the Keras package ``k`` (``tf_keras`` or TF 2.15's
    ``tf.keras``: the same Keras 2 API), with the builder's own hard-swish, gate, SE multiply, dropout and
    output scale. Batch norm is MobileNet's (momentum 0.9, epsilon 1e-3)."""
    L = k.layers
    return Layers(
        input=lambda shape, name: k.Input(shape, name=name),
        model=lambda inputs, outputs, name: k.Model(inputs, outputs, name=name),
        conv=lambda x, filters, kernel, stride, padding, use_bias, name: L.Conv2D(
            filters, kernel, strides=stride, padding=padding, use_bias=use_bias, name=name)(x),
        depthwise=lambda x, kernel, stride, name: L.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False, name=name)(x),
        batch_norm=lambda x, name: L.BatchNormalization(momentum=0.9, epsilon=1e-3, name=name)(x),
        relu=lambda x, max_value, name: L.ReLU(max_value, name=name)(x),
        hard_swish=hard_swish,
        hard_sigmoid=hard_sigmoid,
        multiply=multiply,
        add=lambda a, b, name: L.Add(name=name)([a, b]),
        global_pool=lambda x, keepdims, name: L.GlobalAveragePooling2D(keepdims=keepdims, name=name)(x),
        dense=lambda x, units, name: L.Dense(units, name=name)(x),
        dropout=dropout,
        softmax=lambda x, name: L.Softmax(name=name)(x),
        flatten=lambda x, name: L.Flatten(name=name)(x),
        tanh=lambda x, name: L.Activation("tanh", name=name)(x),
        scale=scale,
    )


def _act(layers: Layers, x: Tensor, act: str, name: str) -> Tensor:
    if act == "relu":
        return layers.relu(x, None, f"{name}_relu")
    if act == "relu6":
        return layers.relu(x, 6.0, f"{name}_relu6")
    return layers.hard_swish(x, f"{name}_hswish")


def _conv_bn(layers: Layers, x: Tensor, filters: int, kernel: int, stride: int, act: str | None,
             name: str) -> Tensor:
    x = layers.conv(x, filters, kernel, stride, "same", False, f"{name}_conv")
    x = layers.batch_norm(x, f"{name}_bn")
    return _act(layers, x, act, name) if act else x


def _dw_bn(layers: Layers, x: Tensor, kernel: int, stride: int, act: str, name: str) -> Tensor:
    x = layers.depthwise(x, kernel, stride, f"{name}_dw")
    x = layers.batch_norm(x, f"{name}_dwbn")
    return _act(layers, x, act, f"{name}_dw")


def _squeeze_excite(layers: Layers, x: Tensor, channels: int, ratio: float, name: str) -> Tensor:
    s = layers.global_pool(x, True, f"{name}_se_pool")
    s = layers.conv(s, make_divisible(channels * ratio), 1, 1, "valid", True, f"{name}_se_reduce")
    s = layers.relu(s, None, f"{name}_se_relu")
    s = layers.conv(s, channels, 1, 1, "valid", True, f"{name}_se_expand")
    s = layers.hard_sigmoid(s, f"{name}_se_gate")
    return layers.multiply(x, s, f"{name}_se_mul")


def _basic_residual(layers: Layers, x: Tensor, block: Block, in_ch: int, out: int, stride: int,
                    name: str) -> Tensor:
    """ResNet's basic block in the MLPerf Tiny ResNet-8's layer order (mlcommons/tiny, image_classification/
    keras_model.py): both k x k convs, then the projection shortcut if the shape changes, add, activation.
    The order is the converted graph's op order, which decides which tensors TFLM keeps alive together."""
    y = _conv_bn(layers, x, out, block.kernel, stride, block.act, f"{name}_a")
    y = _conv_bn(layers, y, out, block.kernel, 1, None, f"{name}_b")
    shortcut = x
    if stride != 1 or in_ch != out:
        # the reference's projection: a plain 1x1 conv with bias, no batch norm
        shortcut = layers.conv(x, out, 1, stride, "same", True, f"{name}_proj")
    x = layers.add(shortcut, y, f"{name}_add")
    return _act(layers, x, block.act, f"{name}_add")


def _block(layers: Layers, x: Tensor, spec: ArchSpec, block: Block, in_ch: int, stride: int, name: str) -> Tensor:
    """One repeat of ``block`` (``cn`` / ``ds`` / ``ir`` / ``rb``, see :mod:`nas.spec`)."""
    out = spec.channels_of(block)
    if block.kind == "cn":
        return _conv_bn(layers, x, out, block.kernel, stride, block.act, name)
    if block.kind == "rb":
        return _basic_residual(layers, x, block, in_ch, out, stride, name)
    if block.kind == "ds":
        x = _dw_bn(layers, x, block.kernel, stride, block.act, name)
        if block.se:
            x = _squeeze_excite(layers, x, in_ch, block.se, name)
        return _conv_bn(layers, x, out, 1, 1, block.act, f"{name}_pw")
    shortcut = x
    expanded = make_divisible(in_ch * block.expansion)
    if expanded != in_ch:
        x = _conv_bn(layers, x, expanded, 1, 1, block.act, f"{name}_expand")
    x = _dw_bn(layers, x, block.kernel, stride, block.act, name)
    if block.se:
        x = _squeeze_excite(layers, x, expanded, block.se, name)
    x = _conv_bn(layers, x, out, 1, 1, None, f"{name}_project")
    if stride == 1 and in_ch == out:
        x = layers.add(shortcut, x, f"{name}_add")
    return x


def _hidden(layers: Layers, x: Tensor, head_hidden: int, act: str) -> Tensor:
    """The head's optional dense layer and its activation."""
    if head_hidden:
        x = layers.dense(x, head_hidden, "head_hidden")
        x = _act(layers, x, act, "head_hidden")
    return x


def build(spec: ArchSpec, layers: Layers) -> Any:
    """The model of ``spec`` made of ``layers``: the input, the blocks in order, the classifier or gaze head.

    Layers are created in a fixed order, so with the same global seed a builder's initial weights repeat.
    """
    inputs = layers.input((spec.resolution, spec.resolution, spec.input_channels), "input")
    x = inputs
    head = spec.head
    if head.kind == "gaze" and head.grid_channels:
        # TinyTracker folds the face-grid embedding channels into the image channels with a 1x1 conv.
        x = layers.conv(x, spec.channels, 1, 1, "valid", True, "grid_fuse")
    in_ch = spec.channels
    for i, block in enumerate(spec.blocks):
        for r in range(block.repeats):
            x = _block(layers, x, spec, block, in_ch, block.stride if r == 0 else 1, f"b{i}_{r}")
            in_ch = spec.channels_of(block)
    if head.kind == "classifier":
        x = layers.global_pool(x, False, "head_pool")
        x = _hidden(layers, x, head.hidden, head.act)
        if head.dropout:
            x = layers.dropout(x, head.dropout, "head_dropout")
        outputs = layers.softmax(layers.dense(x, head.classes, "head_logits"), "head_softmax")
    else:
        x = layers.conv(x, head.conv_channels, 1, 1, "valid", True, "head_conv")
        x = _act(layers, x, head.act, "head_conv")
        x = _hidden(layers, layers.flatten(x, "head_flatten"), head.hidden, head.act)
        if head.dropout:
            x = layers.dropout(x, head.dropout, "head_dropout")
        x = layers.tanh(layers.dense(x, 2, "head_gaze"), "head_tanh")
        outputs = layers.scale(x, head.output_scale, "head_cm")
    return layers.model(inputs, outputs, "tinynas")


def weight_key(layer_name: str, variable_name: str) -> str:
    """``"<layer>/<attr>"``, the key a weight crosses environments under (``"b0_0_conv/kernel"``).

    Keras names a variable ``"<scope>/.../<attr>:0"``; only the layer (named by this module, the same in
    every build) and the attribute are stable across builds.
    """
    return f"{layer_name}/{variable_name.split('/')[-1].split(':')[0]}"


def set_weights(model: Any, weights: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Set every weight of the Keras ``model`` from ``weights`` keyed by :func:`weight_key`; return those used.

    Fails loudly (``ValueError`` naming ``source``) on a missing key or a shape mismatch: a silently
    half-loaded model would convert fine and give garbage on the chip.
    """
    used: dict[str, Any] = {}
    for layer in model.layers:
        values = []
        for var in layer.weights:
            key = weight_key(layer.name, var.name)
            if key not in weights:
                raise ValueError(f"{source} has no weight '{key}' (was it built from this spec?)")
            if tuple(weights[key].shape) != tuple(var.shape):
                raise ValueError(f"weight '{key}' has shape {tuple(weights[key].shape)} in {source}, "
                                 f"{tuple(var.shape)} in the rebuilt model")
            values.append(weights[key])
            used[key] = weights[key]
        if values:
            layer.set_weights(values)
    return used
