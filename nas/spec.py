"""Architecture specs: the one declarative description from which a model is rebuilt exactly.

An :class:`ArchSpec` is what the search samples, the builder builds, the profiler reads and a bundle
records. It is a frozen dataclass that round-trips through JSON (:meth:`ArchSpec.to_dict`) and through a
short string in the spirit of timm's ``arch_def`` (:meth:`ArchSpec.to_string`)::

    in96x3-w0.35-cn_r1_k3_s2_c16_hs-ir_r1_k3_s2_e1_c16_se0.25_re-...-cls_n2_h1024_d0.2_hs

Segments are joined by ``-``:

* ``in{R}x{C}``: square input of R x R pixels and C image channels;
* ``w{W}``: width multiplier, applied to every block's output channels (rounded to a multiple of 8,
  as MobileNet does, never below 8);
* blocks, each ``{kind}_r{repeats}_k{kernel}_s{stride}[_e{expansion}]_c{channels}[_se{ratio}]_{act}``:

  - ``cn``: plain convolution + batch norm + activation (stems, the last 1x1 conv);
  - ``ds``: depthwise-separable block (MobileNetV1): depthwise k x k, pointwise 1x1;
  - ``ir``: MobileNetV3 inverted residual: 1x1 expansion (skipped when it would not widen),
    depthwise k x k, optional squeeze-excite, linear 1x1 projection, residual when shapes allow;
  - ``rb``: ResNet basic block (He et al. 2016, as in the MLPerf Tiny ResNet-8): k x k conv + batch norm +
    activation, k x k conv + batch norm, added to the shortcut, activation. The shortcut is the identity
    when the stride is 1 and the channels stay the same, else a 1x1 conv with the stride (with bias, no
    batch norm: the reference's projection). No expansion, no squeeze-excite;

  the stride applies to the first repeat only; activations are ``re`` (ReLU), ``r6`` (ReLU6) and
  ``hs`` (hard-swish);
* the head, last:

  - ``cls_n{K}[_h{H}]_d{D}_{act}``: global average pooling, an optional dense layer of H units (the
    MobileNetV3 "1x1 conv after pooling"), dropout D, dense K + softmax;
  - ``gaze_g{G}_c{C}_h{H}_o{S}_{act}``: TinyTracker's head (seeds 000_a5de4042943d10bc.txt and
    002_83ccb0649fc242e0.txt): the face-grid embedding enters as G extra input channels that a 1x1 conv
    folds into the image channels; after the backbone a 1x1 conv to C channels, flatten, a dense layer of
    H units, dense 2 and ``S * tanh``: the gaze point (x, y) in cm within +-S.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.errors import UserError, did_you_mean
from nas.formatting import first_line

ACTIVATIONS = {"re": "relu", "r6": "relu6", "hs": "hswish"}
ACT_TOKENS = {v: k for k, v in ACTIVATIONS.items()}
BLOCK_KINDS = ("cn", "ds", "ir", "rb")
#: Block kinds without a depthwise conv, so without squeeze-excite.
PLAIN_CONV_KINDS = ("cn", "rb")
HEAD_KINDS = ("classifier", "gaze")
KERNELS = (1, 3, 5, 7)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels the way MobileNet does: nearest multiple of ``divisor``, never more than 10% down."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def _num(x: float) -> str:
    """Shortest faithful text for a float field (``0.25``, ``4.5``, ``3.6667``)."""
    return f"{round(float(x), 4):g}"


@dataclass(frozen=True)
class Block:
    """One stage: ``repeats`` copies of a ``cn`` / ``ds`` / ``ir`` / ``rb`` block (stride on the first only)."""

    kind: str
    out_channels: int
    kernel: int = 3
    stride: int = 1
    repeats: int = 1
    expansion: float = 1.0
    se: float = 0.0
    act: str = "relu"

    def __post_init__(self) -> None:
        src = "block"
        if self.kind not in BLOCK_KINDS:
            raise UserError(src, "kind",
                            f"one of {BLOCK_KINDS}, got '{self.kind}'" + did_you_mean(self.kind, BLOCK_KINDS))
        if self.act not in ACT_TOKENS:
            raise UserError(src, "act",
                            f"one of {sorted(ACT_TOKENS)}, got '{self.act}'" + did_you_mean(self.act, ACT_TOKENS))
        if self.kernel not in KERNELS:
            raise UserError(src, "kernel", f"one of {KERNELS}, got {self.kernel}")
        if self.stride not in (1, 2):
            raise UserError(src, "stride", f"1 or 2, got {self.stride}")
        if self.repeats < 1 or self.out_channels < 1:
            raise UserError(src, "repeats/out_channels", "positive integers")
        if self.expansion < 1.0:
            raise UserError(src, "expansion", f">= 1, got {self.expansion}")
        if not 0.0 <= self.se <= 1.0:
            raise UserError(src, "se", f"a ratio in [0, 1], got {self.se}")
        if self.kind != "ir" and self.expansion != 1.0:
            raise UserError(src, "expansion", f"only 'ir' blocks expand, '{self.kind}' got {self.expansion}")
        if self.kind in PLAIN_CONV_KINDS and self.se:
            raise UserError(src, "se",
                            f"squeeze-excite needs a depthwise block ('ds' or 'ir'), '{self.kind}' has none")

    def to_string(self) -> str:
        parts = [self.kind, f"r{self.repeats}", f"k{self.kernel}", f"s{self.stride}"]
        if self.kind == "ir":
            parts.append(f"e{_num(self.expansion)}")
        parts.append(f"c{self.out_channels}")
        if self.se:
            parts.append(f"se{_num(self.se)}")
        parts.append(ACT_TOKENS[self.act])
        return "_".join(parts)


@dataclass(frozen=True)
class Head:
    """The network's end: a classifier or TinyTracker's gaze regressor (see the module docstring)."""

    kind: str = "classifier"
    classes: int = 2
    hidden: int = 0
    dropout: float = 0.0
    act: str = "hswish"
    grid_channels: int = 2
    conv_channels: int = 2
    output_scale: float = 20.0

    def __post_init__(self) -> None:
        src = "head"
        if self.kind not in HEAD_KINDS:
            raise UserError(src, "kind",
                            f"one of {HEAD_KINDS}, got '{self.kind}'" + did_you_mean(self.kind, HEAD_KINDS))
        if self.act not in ACT_TOKENS:
            raise UserError(src, "act", f"one of {sorted(ACT_TOKENS)}, got '{self.act}'")
        if self.kind == "classifier" and self.classes < 2:
            raise UserError(src, "classes", f"at least 2, got {self.classes}")
        if self.hidden < 0 or not 0.0 <= self.dropout < 1.0:
            raise UserError(src, "hidden/dropout", "hidden >= 0 and 0 <= dropout < 1")
        if self.kind == "gaze" and (self.grid_channels < 0 or self.conv_channels < 1 or self.output_scale <= 0):
            raise UserError(src, "gaze", "grid_channels >= 0, conv_channels >= 1, output_scale > 0")

    @property
    def outputs(self) -> int:
        return 2 if self.kind == "gaze" else self.classes

    def to_string(self) -> str:
        act = ACT_TOKENS[self.act]
        if self.kind == "gaze":
            return (f"gaze_g{self.grid_channels}_c{self.conv_channels}_h{self.hidden}"
                    f"_o{_num(self.output_scale)}_{act}")
        hidden = f"_h{self.hidden}" if self.hidden else ""
        return f"cls_n{self.classes}{hidden}_d{_num(self.dropout)}_{act}"


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild a model: input, width multiplier, blocks and head."""

    resolution: int
    channels: int
    width: float
    blocks: tuple[Block, ...]
    head: Head = field(default_factory=Head)

    def __post_init__(self) -> None:
        if self.resolution < 8 or self.channels not in (1, 3):
            raise UserError("spec", "input",
                            f"resolution >= 8 and 1 or 3 channels, got {self.resolution}x{self.channels}")
        if not 0.05 <= self.width <= 4.0:
            raise UserError("spec", "width", f"a multiplier in [0.05, 4], got {self.width}")
        if not self.blocks:
            raise UserError("spec", "blocks", "at least one block")
        object.__setattr__(self, "blocks", tuple(self.blocks))
        stride = self.total_stride
        if self.resolution % stride:
            raise UserError("spec", "resolution",
                            f"a multiple of the network's total stride {stride}, got {self.resolution}")

    # -- derived facts --------------------------------------------------------------------------------
    @property
    def total_stride(self) -> int:
        s = 1
        for b in self.blocks:
            s *= b.stride
        return s

    @property
    def input_channels(self) -> int:
        """Channels of the model's input tensor: image channels plus the gaze head's grid embedding."""
        return self.channels + (self.head.grid_channels if self.head.kind == "gaze" else 0)

    def channels_of(self, block: Block) -> int:
        """Output channels of ``block`` after the width multiplier."""
        return make_divisible(block.out_channels * self.width)

    # -- conversions ----------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> "ArchSpec":
        """A copy with some fields changed (``resolution``, ``width``, ``classes`` for the head...)."""
        classes = changes.pop("classes", None)
        spec = dataclasses.replace(self, **changes)
        if classes is not None:
            spec = dataclasses.replace(spec, head=dataclasses.replace(spec.head, classes=int(classes)))
        return spec

    def to_string(self) -> str:
        parts = [f"in{self.resolution}x{self.channels}", f"w{_num(self.width)}"]
        parts += [b.to_string() for b in self.blocks]
        parts.append(self.head.to_string())
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "spec") -> "ArchSpec":
        try:
            blocks = tuple(Block(**b) for b in data["blocks"])
            head = Head(**data.get("head", {}))
            return cls(resolution=int(data["resolution"]), channels=int(data["channels"]),
                       width=float(data["width"]), blocks=blocks, head=head)
        except UserError as e:
            raise UserError(source, e.field, e.expected) from None
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(source, "",
                            f"an ArchSpec mapping with resolution, channels, width, blocks, head ({e})") from None

    @classmethod
    def from_json(cls, text: str, source: str = "spec") -> "ArchSpec":
        return cls.from_dict(json.loads(text), source)

    @classmethod
    def from_string(cls, text: str) -> "ArchSpec":
        return parse_spec_string(text)


# -- the short string ---------------------------------------------------------------------------------
_TOKEN = re.compile(r"^([a-z]+)([0-9.]*)$")


def _tokens(segment: str, source: str) -> tuple[str, dict[str, str]]:
    words = segment.split("_")
    kind, opts = words[0], {}
    for w in words[1:]:
        if w in ACTIVATIONS:
            opts["act"] = ACTIVATIONS[w]
            continue
        m = _TOKEN.match(w)
        if not m or not m.group(2):
            raise UserError(source, segment, f"tokens like k3, s2, e4, c24, se0.25 or an activation "
                                             f"{sorted(ACTIVATIONS)}, got '{w}'")
        opts[m.group(1)] = m.group(2)
    return kind, opts


def _take(opts: dict[str, str], key: str, conv, default=None, *, source: str, segment: str):
    if key not in opts:
        if default is None:
            raise UserError(source, segment, f"a '{key}' token")
        return default
    try:
        return conv(opts.pop(key))
    except ValueError:
        raise UserError(source, segment, f"a number after '{key}'") from None


def parse_spec_string(text: str, source: str = "spec string") -> ArchSpec:
    """Parse the short form (see the module docstring); errors name the offending segment."""
    segments = [s for s in text.strip().split("-") if s]
    if len(segments) < 4:
        raise UserError(source, "", f"'in{{R}}x{{C}}-w{{W}}-<blocks>-<head>', got '{text}'")
    m = re.fullmatch(r"in(\d+)x(\d+)", segments[0])
    if not m:
        raise UserError(source, segments[0], "an input segment like 'in96x3'")
    wm = re.fullmatch(r"w([0-9.]+)", segments[1])
    if not wm:
        raise UserError(source, segments[1], "a width segment like 'w0.35'")
    blocks = []
    for seg in segments[2:-1]:
        kind, opts = _tokens(seg, source)
        if kind not in BLOCK_KINDS:
            raise UserError(source, seg,
                            f"a block kind in {BLOCK_KINDS}, got '{kind}'" + did_you_mean(kind, BLOCK_KINDS))
        kw = dict(source=source, segment=seg)
        try:
            block = Block(kind=kind, out_channels=_take(opts, "c", int, **kw),
                          kernel=_take(opts, "k", int, 3, **kw), stride=_take(opts, "s", int, 1, **kw),
                          repeats=_take(opts, "r", int, 1, **kw), expansion=_take(opts, "e", float, 1.0, **kw),
                          se=_take(opts, "se", float, 0.0, **kw), act=opts.pop("act", "relu"))
        except UserError as e:
            if e.source == source:
                raise
            raise UserError(source, seg, f"{e.field}: {e.expected}") from None
        if opts:
            raise UserError(source, seg, f"no unknown tokens, got {sorted(opts)}")
        blocks.append(block)
    kind, opts = _tokens(segments[-1], source)
    kw = dict(source=source, segment=segments[-1])
    try:
        if kind == "cls":
            head = Head("classifier", classes=_take(opts, "n", int, **kw), hidden=_take(opts, "h", int, 0, **kw),
                        dropout=_take(opts, "d", float, 0.0, **kw), act=opts.pop("act", "hswish"))
        elif kind == "gaze":
            head = Head("gaze", classes=2, hidden=_take(opts, "h", int, 128, **kw),
                        grid_channels=_take(opts, "g", int, 2, **kw), conv_channels=_take(opts, "c", int, 2, **kw),
                        output_scale=_take(opts, "o", float, 20.0, **kw), act=opts.pop("act", "relu"))
        else:
            raise UserError(source, segments[-1], f"a head 'cls_...' or 'gaze_...', got '{kind}'")
    except UserError as e:
        if e.source == source:
            raise
        raise UserError(source, segments[-1], f"{e.field}: {e.expected}") from None
    if opts:
        raise UserError(source, segments[-1], f"no unknown tokens, got {sorted(opts)}")
    try:
        return ArchSpec(int(m.group(1)), int(m.group(2)), float(wm.group(1)), tuple(blocks), head)
    except UserError as e:
        raise UserError(source, e.field, e.expected) from None


# -- presets ------------------------------------------------------------------------------------------
# MobileNetV3 tables: Howard et al., "Searching for MobileNetV3" (ICCV 2019), Tables 1 and 2; expansion
# ratios are the paper's expansion sizes divided by the input channels (e.g. 88 / 24).
_MNV3_SMALL = [
    "cn_r1_k3_s2_c16_hs",
    "ir_r1_k3_s2_e1_c16_se0.25_re",
    "ir_r1_k3_s2_e4.5_c24_re",
    "ir_r1_k3_s1_e3.6667_c24_re",
    "ir_r1_k5_s2_e4_c40_se0.25_hs",
    "ir_r2_k5_s1_e6_c40_se0.25_hs",
    "ir_r2_k5_s1_e3_c48_se0.25_hs",
    "ir_r1_k5_s2_e6_c96_se0.25_hs",
    "ir_r2_k5_s1_e6_c96_se0.25_hs",
    "cn_r1_k1_s1_c576_hs",
]
_MNV3_LARGE = [
    "cn_r1_k3_s2_c16_hs",
    "ir_r1_k3_s1_e1_c16_re",
    "ir_r1_k3_s2_e4_c24_re",
    "ir_r1_k3_s1_e3_c24_re",
    "ir_r1_k5_s2_e3_c40_se0.25_re",
    "ir_r2_k5_s1_e3_c40_se0.25_re",
    "ir_r1_k3_s2_e6_c80_hs",
    "ir_r1_k3_s1_e2.5_c80_hs",
    "ir_r2_k3_s1_e2.3_c80_hs",
    "ir_r2_k3_s1_e6_c112_se0.25_hs",
    "ir_r1_k5_s2_e6_c160_se0.25_hs",
    "ir_r2_k5_s1_e6_c160_se0.25_hs",
    "cn_r1_k1_s1_c960_hs",
]
# MLPerf Tiny Visual Wake Words reference: MobileNetV1, width 0.25, 96x96x3, 2 classes (seed
# 003_1cef999e24769b5d.txt for the task; layer table from Howard et al. 2017, Table 1).
_MNV1 = [
    "cn_r1_k3_s2_c32_r6",
    "ds_r1_k3_s1_c64_r6",
    "ds_r1_k3_s2_c128_r6",
    "ds_r1_k3_s1_c128_r6",
    "ds_r1_k3_s2_c256_r6",
    "ds_r1_k3_s1_c256_r6",
    "ds_r1_k3_s2_c512_r6",
    "ds_r5_k3_s1_c512_r6",
    "ds_r1_k3_s2_c1024_r6",
    "ds_r1_k3_s1_c1024_r6",
]

# ResNet-8 of the MLPerf Tiny Image Classification reference (see PRESETS): a 16-channel 3x3 stem, then
# three basic blocks of 16, 32 and 64 channels, the last two with stride 2 and a 1x1 projection shortcut.
_RESNET8 = [
    "cn_r1_k3_s1_c16_re",
    "rb_r1_k3_s1_c16_re",
    "rb_r1_k3_s2_c32_re",
    "rb_r1_k3_s2_c64_re",
]


def _minimalistic(stages: list[str]) -> list[str]:
    """MobileNetV3 'minimalistic': 3x3 kernels, no squeeze-excite, ReLU everywhere."""
    out = []
    for s in stages:
        s = re.sub(r"_se[0-9.]+", "", s).replace("_hs", "_re")
        out.append(re.sub(r"_k[57]_", "_k3_", s))
    return out


def _preset(resolution: int, channels: int, width: float, stages: list[str], head: str) -> str:
    return "-".join([f"in{resolution}x{channels}", f"w{_num(width)}", *stages, head])


PRESETS: dict[str, str] = {
    "mobilenetv3-small": _preset(224, 3, 1.0, _MNV3_SMALL, "cls_n1000_h1024_d0.2_hs"),
    "mobilenetv3-small-minimalistic": _preset(224, 3, 1.0, _minimalistic(_MNV3_SMALL), "cls_n1000_h1024_d0.2_re"),
    "mobilenetv3-large": _preset(224, 3, 1.0, _MNV3_LARGE, "cls_n1000_h1280_d0.2_hs"),
    "mobilenetv3-large-minimalistic": _preset(224, 3, 1.0, _minimalistic(_MNV3_LARGE), "cls_n1000_h1280_d0.2_re"),
    "mobilenetv1-vww": _preset(96, 3, 0.25, _MNV1, "cls_n2_d0_re"),
    # TinyTracker (seeds 000/002): MobileNetV3-Small backbone, 1x1 conv, flatten, two dense layers, tanh.
    # The released model (128x128x5 input: face RGB + 2 face-grid channels, minimalistic blocks) is the
    # layout followed here; +-20 cm covers GazeCapture's screen coordinates.
    "tinytracker": _preset(128, 3, 1.0, _minimalistic(_MNV3_SMALL), "gaze_g2_c2_h128_o20_re"),
    # MLPerf Tiny Image Classification reference (mlcommons/tiny, benchmark/training/image_classification/
    # keras_model.py, resnet_v1_eembc): ResNet-8 on CIFAR-10, 32x32x3, 10 classes. Global average pooling
    # stands for its AveragePooling2D(8) + Flatten on the 8x8 map (the same numbers; MEAN instead of
    # AVERAGE_POOL_2D + RESHAPE in the converted graph).
    "resnet8-cifar": _preset(32, 3, 1.0, _RESNET8, "cls_n10_d0_re"),
}


def preset(name: str) -> ArchSpec:
    if name not in PRESETS:
        raise UserError("--spec", "preset", f"one of {sorted(PRESETS)}, got '{name}'" + did_you_mean(name, PRESETS))
    return parse_spec_string(PRESETS[name], source=f"preset {name}")


def load_spec(text: str) -> ArchSpec:
    """Resolve what a user typed for ``--spec``: a preset name, a spec string, or a JSON / YAML file."""
    text = text.strip()
    if text in PRESETS:
        return preset(text)
    if re.match(r"in\d+x\d+-", text):  # a spec string; checked before the file system, which rejects long names
        return parse_spec_string(text)
    path = Path(text)
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise UserError(text, "", "an existing JSON or YAML spec file")
        raw = path.read_text()
        from nas import yamlio  # PyYAML: not needed where only spec strings are parsed (the IMX500 worker)

        try:
            data = yamlio.load_json(raw, text) if path.suffix.lower() == ".json" else yamlio.load(raw, text)
        except UserError:
            raise  # a repeated key, already named with its file (and, for YAML, its lines)
        except Exception as e:  # noqa: BLE001 - any parse error is the user's file
            raise UserError(text, "", f"valid {path.suffix[1:].upper()} ({first_line(e)})") from None
        if isinstance(data, str):
            return parse_spec_string(data, source=text)
        if isinstance(data, dict) and "spec" in data and isinstance(data["spec"], str):
            return parse_spec_string(data["spec"], source=text)
        if not isinstance(data, dict):
            raise UserError(text, "", "a mapping (an ArchSpec dict) or a spec string")
        return ArchSpec.from_dict(data, source=text)
    if not re.match(r"in\d", text):
        raise UserError("--spec", "", f"a preset {sorted(PRESETS)}, a spec string or a spec file, got '{text}'"
                        + did_you_mean(text, PRESETS))
    return parse_spec_string(text)
