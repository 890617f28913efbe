"""Search spaces: YAML files of architecture choices, and the pure mapping from sampled choices to an ArchSpec.

A space file (schema in ``nas/search_spaces/README.md``) lists, for the input resolution, the width multiplier,
every stage of the network and the head, either one fixed value or a list of choices. Each list becomes one
categorical parameter named by its place in the file (``resolution``, ``width``, ``s3.kernel``,
``head.hidden``...). Two functions do all the work, and neither knows about Optuna:

* :func:`sample` asks a ``suggest(name, choices)`` callable for every parameter. Optuna's
  ``trial.suggest_categorical`` is such a callable, and so is ``random.Random().choice`` wrapped in a lambda.
* :func:`to_spec` maps a parameter dict to an :class:`~nas.spec.ArchSpec`. It is pure: the same space,
  parameters and data shape always give the same spec, which is what lets a trial be rebuilt from the study.

What the data set decides is *not* in the space: the number of classes, the image channels and the gaze
head's face-grid channels come from the data set (:class:`DataShape`), so one space serves MNIST (1 channel,
10 classes) and Visual Wake Words (3 channels, 2 classes) alike.

Every mistake in a space file is a :class:`~nas.errors.UserError` that names the file and the field
(``stages[2].kernel``), found when the file is loaded, not hours into a search.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from nas import shipped, yamlio
from nas.errors import UserError, did_you_mean
from nas.spec import ACT_TOKENS, ACTIVATIONS, BLOCK_KINDS, KERNELS, PLAIN_CONV_KINDS, ArchSpec, Block, Head

ENV_SPACES_DIR = "TINYNAS_SPACES_DIR"
TOP_FIELDS = ("name", "description", "resolution", "upsample", "width", "stages", "head")
STAGE_FIELDS = ("name", "kind", "channels", "depth", "kernel", "stride", "expansion", "se", "act")
HEAD_FIELDS = {
    "classifier": ("kind", "hidden", "dropout", "act"),
    "gaze": ("kind", "hidden", "dropout", "act", "conv_channels", "output_scale"),
}
HEAD_TASK = {"classifier": "classification", "gaze": "gaze"}
# Fields that the data set decides; a space that sets them gets told why it may not.
_FROM_DATA = {"classes": "the number of classes", "grid_channels": "the face-grid channels",
              "channels": "the image channels"}
DEFAULT_SPACE = {"classification": "mobilenetv3.yaml", "gaze": "tinytracker.yaml"}

Suggest = Callable[[str, list], Any]


@dataclass(frozen=True)
class Choice:
    """One field of a space: the values it may take (a single value when it is fixed)."""

    name: str                      # the parameter name, e.g. "s3.kernel"
    values: tuple[Any, ...]

    @property
    def fixed(self) -> bool:
        return len(self.values) == 1


@dataclass(frozen=True)
class StageSpace:
    """One stage: a block kind and the choices of its repeats (depth 0 drops the stage), kernel, etc."""

    name: str
    kind: str
    channels: Choice
    depth: Choice
    kernel: Choice
    stride: Choice
    expansion: Choice
    se: Choice
    act: Choice

    def choices(self) -> tuple[Choice, ...]:
        return (self.channels, self.depth, self.kernel, self.stride, self.expansion, self.se, self.act)


@dataclass(frozen=True)
class HeadSpace:
    """The head's kind (which decides the task) and the choices of its fields."""

    kind: str
    hidden: Choice
    dropout: Choice
    act: Choice
    conv_channels: Choice
    output_scale: Choice

    def choices(self) -> tuple[Choice, ...]:
        extra = (self.conv_channels, self.output_scale) if self.kind == "gaze" else ()
        return (self.hidden, self.dropout, self.act, *extra)


@dataclass(frozen=True)
class Space:
    """A validated search space (see the module docstring)."""

    name: str
    source: str
    description: str
    resolution: Choice
    width: Choice
    stages: tuple[StageSpace, ...]
    head: HeadSpace
    upsample: bool = False  # may a candidate's input exceed the data's native resolution?

    @property
    def task(self) -> str:
        """The data set task this space's head serves: ``classification`` or ``gaze``."""
        return HEAD_TASK[self.head.kind]

    def choices(self) -> tuple[Choice, ...]:
        """Every field, fixed or not, in file order."""
        out = [self.resolution, self.width]
        for st in self.stages:
            out.extend(st.choices())
        out.extend(self.head.choices())
        return tuple(out)

    def parameters(self) -> dict[str, tuple[Any, ...]]:
        """The fields with more than one value: the search's categorical parameters, in file order."""
        return {c.name: c.values for c in self.choices() if not c.fixed}

    def size(self) -> int:
        """How many parameter combinations the space holds (before de-duplication of skipped stages)."""
        return math.prod(len(v) for v in self.parameters().values())

    @property
    def max_stride(self) -> int:
        """The largest total stride any sampled network can have; every resolution must be a multiple."""
        stride = 1
        for st in self.stages:
            if max(st.depth.values) > 0:
                stride *= max(st.stride.values)
        return stride


@dataclass(frozen=True)
class DataShape:
    """What a data set decides about a network: classes, image channels and the gaze grid channels."""

    task: str
    classes: int
    channels: int
    grid_channels: int = 0

    @classmethod
    def of(cls, dataset: Any) -> "DataShape":
        """From a :class:`nas.data.Dataset` (or anything with the same attributes)."""
        return cls(task=dataset.task, classes=int(dataset.num_classes), channels=int(dataset.image_channels),
                   grid_channels=int(dataset.grid_channels))

    @classmethod
    def from_description(cls, desc: Mapping[str, Any]) -> "DataShape":
        """From a data set's ``description`` dict (what a run directory keeps)."""
        return cls(task=desc["task"], classes=len(desc.get("classes") or ()),
                   channels=int(desc["image_channels"]), grid_channels=int(desc.get("grid_channels") or 0))


# --------------------------------------------------------------------------------------------- sampling


def sample(space: Space, suggest: Suggest) -> dict[str, Any]:
    """Ask ``suggest(name, choices)`` for every parameter of ``space`` (Optuna: ``trial.suggest_categorical``).

    Every parameter is asked on every trial, even when a dropped stage (depth 0) makes it moot: a fixed
    parameter set keeps multivariate samplers and resumed studies consistent.
    """
    return {name: suggest(name, list(values)) for name, values in space.parameters().items()}


def _value(choice: Choice, params: Mapping[str, Any]) -> Any:
    if choice.fixed:
        return choice.values[0]
    if choice.name not in params:
        raise KeyError(f"parameter '{choice.name}' missing from {sorted(params)}")
    value = params[choice.name]
    if value not in choice.values:
        raise ValueError(f"parameter '{choice.name}' = {value!r} is not one of {list(choice.values)}")
    return value


def to_spec(space: Space, params: Mapping[str, Any], data: DataShape) -> ArchSpec:
    """The :class:`ArchSpec` for one point of ``space``; a pure function of its arguments.

    ``params`` maps parameter names (:meth:`Space.parameters`) to chosen values; fixed fields need no entry.
    Stages whose depth is 0 are left out. Raises ``KeyError`` / ``ValueError`` for a parameter dict that does
    not belong to this space (a programming error, not a user one).
    """
    if data.task != space.task:
        raise ValueError(f"space '{space.name}' serves {space.task}, the data set is {data.task}")
    blocks = []
    for st in space.stages:
        depth = int(_value(st.depth, params))
        if depth == 0:
            continue
        blocks.append(Block(kind=st.kind, out_channels=int(_value(st.channels, params)),
                            kernel=int(_value(st.kernel, params)), stride=int(_value(st.stride, params)),
                            repeats=depth, expansion=float(_value(st.expansion, params)),
                            se=float(_value(st.se, params)), act=_value(st.act, params)))
    h = space.head
    if h.kind == "classifier":
        head = Head("classifier", classes=data.classes, hidden=int(_value(h.hidden, params)),
                    dropout=float(_value(h.dropout, params)), act=_value(h.act, params))
    else:
        head = Head("gaze", classes=2, hidden=int(_value(h.hidden, params)), dropout=float(_value(h.dropout, params)),
                    act=_value(h.act, params), grid_channels=data.grid_channels,
                    conv_channels=int(_value(h.conv_channels, params)),
                    output_scale=float(_value(h.output_scale, params)))
    return ArchSpec(resolution=int(_value(space.resolution, params)), channels=data.channels,
                    width=float(_value(space.width, params)), blocks=tuple(blocks), head=head)


def resolutions_for(space: Space, native: int | None) -> tuple[int, ...]:
    """The input resolutions a search of ``space`` on data of ``native`` pixels (the shorter side) samples.

    Resolutions above the native one only upsample: up to (128 / 28)^2 = 20x the compute of a 28 px MNIST digit
    for no new information. So they are left out, keeping the smallest resolution if every one is above (it is
    the least the network's stride allows), unless the space says ``upsample: true``.
    """
    values = tuple(int(v) for v in space.resolution.values)
    if space.upsample or native is None:
        return values
    return tuple(v for v in values if v <= native) or (min(values),)


def with_resolutions(space: Space, values: Sequence[int]) -> Space:
    """``space`` sampling only ``values`` (a subset of its resolutions, as :func:`resolutions_for` gives)."""
    unknown = [v for v in values if v not in space.resolution.values]
    if unknown or not values:
        raise ValueError(f"resolutions {list(values)} are not a non-empty subset of {list(space.resolution.values)}")
    return replace(space, resolution=Choice(space.resolution.name, tuple(int(v) for v in values)))


def load_run_space(path: str, recorded: Mapping[str, Any]) -> Space:
    """A run directory's space as that run samples it: the copied file, narrowed to the resolutions its
    ``run.yaml`` records (runs made before resolutions were recorded sample every one in the file)."""
    space = load_space(path)
    values = recorded.get("resolutions")
    return with_resolutions(space, values) if values else space


def corners(space: Space) -> list[dict[str, Any]]:
    """The all-smallest and all-largest parameter points (handy for checks and the README's size table)."""
    params = space.parameters()
    return [{k: min(v, key=_order) for k, v in params.items()}, {k: max(v, key=_order) for k, v in params.items()}]


def _order(v: Any) -> Any:
    return (0, v) if isinstance(v, (int, float)) else (1, str(v))


def enumerate_points(space: Space, limit: int | None = None) -> list[dict[str, Any]]:
    """Every parameter combination (or the first ``limit``), in a fixed order: for small test spaces."""
    params = space.parameters()
    names = list(params)
    combos: Iterable[tuple[Any, ...]] = itertools.product(*(params[n] for n in names))
    if limit is not None:
        combos = itertools.islice(combos, limit)
    return [dict(zip(names, c)) for c in combos]


# --------------------------------------------------------------------------------------------- loading


def spaces_dir() -> Path:
    """Where shipped spaces live: ``$TINYNAS_SPACES_DIR`` if set, else the package's ``nas/search_spaces/``."""
    return shipped.folder("search_spaces", ENV_SPACES_DIR)


def resolve_space_path(name_or_path: str) -> Path:
    """An existing file for ``name_or_path``: the path itself, else a shipped space by bare name."""
    return shipped.resolve(name_or_path, spaces_dir(), "search-space")


def default_space_for(task: str) -> str:
    """The shipped space for a data set task: ``mobilenetv3.yaml`` for classification, ``tinytracker.yaml`` for gaze."""
    return DEFAULT_SPACE[task]


def load_space(name_or_path: str) -> Space:
    """Load and validate a space: a shipped name (``tinytracker``, ``tinytracker.yaml``) or a path."""
    path = resolve_space_path(name_or_path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(source, "", f"a readable UTF-8 YAML file ({e})") from None
    try:
        data = yamlio.load(text, source)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserError(source, "", f"valid YAML ({getattr(e, 'problem', None) or type(e).__name__}{where})") from None
    return space_from_dict(data, source)


def space_from_dict(data: Any, source: str) -> Space:
    """Validate a parsed space mapping (``source`` names it in errors) and build the :class:`Space`."""
    if not isinstance(data, dict):
        kind = "nothing (the file is empty)" if data is None else f"a {type(data).__name__}"
        raise UserError(source, "", f"a mapping with {', '.join(TOP_FIELDS)}, got {kind}")
    _known(data, TOP_FIELDS, source, "")
    for required in ("resolution", "width", "stages", "head"):
        if required not in data:
            raise UserError(source, required, "a required field; it is missing (see nas/search_spaces/README.md)")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name.strip():
        raise UserError(source, "name", f"a non-empty string, got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise UserError(source, "description", "text")

    resolution = _choice(data["resolution"], source, "resolution", "resolution", _int_at_least(8))
    width = _choice(data["width"], source, "width", "width", _float_between(0.05, 4.0))
    stages_raw = data["stages"]
    if not isinstance(stages_raw, list) or not stages_raw:
        raise UserError(source, "stages", "a non-empty list of stages")
    stages, names = [], set()
    for i, raw in enumerate(stages_raw):
        st = _stage(raw, source, i)
        if st.name in names:
            raise UserError(source, f"stages[{i}].name", f"a unique stage name, '{st.name}' is used twice")
        names.add(st.name)
        stages.append(st)
    head = _head(data["head"], source)
    upsample = data.get("upsample", False)
    if not isinstance(upsample, bool):
        raise UserError(source, "upsample", f"true or false, got {upsample!r}")
    space = Space(name=name.strip(), source=source, description=description.strip(), resolution=resolution,
                  width=width, stages=tuple(stages), head=head, upsample=upsample)
    _check_whole(space, source)
    return space


def _known(data: dict, allowed: Sequence[str], source: str, prefix: str) -> None:
    for key in data:
        k = str(key)
        if k in allowed:
            continue
        where = f"{prefix}{k}"
        if k in _FROM_DATA:
            raise UserError(source, where, f"not a space field: {_FROM_DATA[k]} come(s) from the data set")
        raise UserError(source, where, f"a known field ({', '.join(allowed)}); unknown field"
                        + did_you_mean(k, allowed))


def _int_at_least(low: int) -> Callable[[Any], tuple[Any, str | None]]:
    def check(v: Any) -> tuple[Any, str | None]:
        if isinstance(v, bool) or not isinstance(v, int):
            return v, f"an integer >= {low}"
        return v, None if v >= low else f"an integer >= {low}"
    return check


def _float_between(low: float, high: float, *, low_open: bool = False, high_open: bool = False
                   ) -> Callable[[Any], tuple[Any, str | None]]:
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    form = f"a number in {lo}{low:g}, {high:g}{hi}"

    def check(v: Any) -> tuple[Any, str | None]:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return v, form
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        return float(v), None if ok else form
    return check


def _one_of(options: Sequence[Any], form: str) -> Callable[[Any], tuple[Any, str | None]]:
    def check(v: Any) -> tuple[Any, str | None]:
        if isinstance(v, bool) or v not in options:
            return v, form
        return v, None
    return check


def _activation(v: Any) -> tuple[Any, str | None]:
    """Accept the spec-string tokens (``re``, ``r6``, ``hs``) and the full names (``relu``, ``relu6``, ``hswish``)."""
    names = sorted(ACT_TOKENS)
    if isinstance(v, str) and v in ACTIVATIONS:
        return ACTIVATIONS[v], None
    if isinstance(v, str) and v in ACT_TOKENS:
        return v, None
    hint = did_you_mean(str(v), [*names, *ACTIVATIONS]) if isinstance(v, str) else ""
    return v, f"an activation ({', '.join(names)}; or {', '.join(ACTIVATIONS)}), got {v!r}{hint}"


def _choice(raw: Any, source: str, field: str, name: str, check: Callable[[Any], tuple[Any, str | None]]) -> Choice:
    """A fixed value or a non-empty list of distinct values, each passing ``check``."""
    values = raw if isinstance(raw, list) else [raw]
    if isinstance(raw, list) and not raw:
        raise UserError(source, field, "a value or a non-empty list of choices; the list is empty")
    if isinstance(raw, dict) or raw is None:
        raise UserError(source, field, f"a value or a list of choices, got {'nothing' if raw is None else 'a mapping'}")
    out = []
    for v in values:
        if isinstance(v, (list, dict)):
            raise UserError(source, field, f"plain values in the list of choices, got {v!r}")
        value, problem = check(v)
        if problem:
            shown = problem if ", got " in problem else f"{problem}, got {v!r}"
            raise UserError(source, field, ("every choice " if len(values) > 1 else "") + shown)
        out.append(value)
    if len(set(out)) != len(out):
        dup = next(v for v in out if out.count(v) > 1)
        raise UserError(source, field, f"distinct choices; {dup!r} is listed twice")
    return Choice(name, tuple(out))


def _stage(raw: Any, source: str, i: int) -> StageSpace:
    where = f"stages[{i}]"
    if not isinstance(raw, dict):
        raise UserError(source, where, f"a mapping with {', '.join(STAGE_FIELDS)}")
    _known(raw, STAGE_FIELDS, source, f"{where}.")
    name = raw.get("name", f"s{i}")
    if not isinstance(name, str) or not name.strip() or any(c in name for c in " .,"):
        raise UserError(source, f"{where}.name", f"a short name without spaces or dots, got {name!r}")
    kind = raw.get("kind")
    if kind is None:
        raise UserError(source, f"{where}.kind", f"a required field: one of {', '.join(BLOCK_KINDS)}")
    if not isinstance(kind, str) or kind not in BLOCK_KINDS:
        raise UserError(source, f"{where}.kind", f"one block kind of {', '.join(BLOCK_KINDS)}, got {kind!r}"
                        + (did_you_mean(kind, BLOCK_KINDS) if isinstance(kind, str) else ""))
    if "channels" not in raw:
        raise UserError(source, f"{where}.channels", "a required field: output channels before the width multiplier")

    def field(key: str, default: Any, check: Callable[[Any], tuple[Any, str | None]]) -> Choice:
        return _choice(raw.get(key, default), source, f"{where}.{key}", f"{name}.{key}", check)

    if kind != "ir" and raw.get("expansion", 1) not in (1, 1.0, [1], [1.0]):
        raise UserError(source, f"{where}.expansion", f"only 'ir' stages expand; leave it out for '{kind}'")
    if kind in PLAIN_CONV_KINDS and raw.get("se", 0) not in (0, 0.0, [0], [0.0]):
        raise UserError(source, f"{where}.se", f"squeeze-excite needs a depthwise stage ('ds' or 'ir'), not '{kind}'")
    return StageSpace(
        name=name, kind=kind,
        channels=field("channels", None, _int_at_least(1)),
        depth=field("depth", 1, _int_at_least(0)),
        kernel=field("kernel", 3, _one_of(KERNELS, f"a kernel size in {list(KERNELS)}")),
        stride=field("stride", 1, _one_of((1, 2), "a stride of 1 or 2")),
        expansion=field("expansion", 1.0, _float_between(1.0, 16.0)),
        se=field("se", 0.0, _float_between(0.0, 1.0)),
        act=field("act", "relu", _activation),
    )


def _head(raw: Any, source: str) -> HeadSpace:
    if not isinstance(raw, dict):
        raise UserError(source, "head", "a mapping with kind (classifier or gaze) and its fields")
    kind = raw.get("kind")
    if not isinstance(kind, str) or kind not in HEAD_FIELDS:
        raise UserError(source, "head.kind", f"one of {', '.join(HEAD_FIELDS)}, got {kind!r}"
                        + (did_you_mean(kind, HEAD_FIELDS) if isinstance(kind, str) else ""))
    _known(raw, HEAD_FIELDS[kind], source, "head.")

    def field(key: str, default: Any, check: Callable[[Any], tuple[Any, str | None]]) -> Choice:
        return _choice(raw.get(key, default), source, f"head.{key}", f"head.{key}", check)

    gaze = kind == "gaze"
    return HeadSpace(
        kind=kind,
        hidden=field("hidden", 128 if gaze else 0, _int_at_least(0)),
        dropout=field("dropout", 0.0, _float_between(0.0, 1.0, high_open=True)),
        act=field("act", "relu" if gaze else "hswish", _activation),
        conv_channels=field("conv_channels", 2, _int_at_least(1)),
        output_scale=field("output_scale", 20.0, _float_between(0.0, 1000.0, low_open=True)),
    )


def _check_whole(space: Space, source: str) -> None:
    """Checks across fields: something always remains, resolutions fit the stride, the corners build."""
    if all(min(st.depth.values) == 0 for st in space.stages):
        raise UserError(source, "stages", "at least one stage that is never dropped (a depth without 0)")
    stride = space.max_stride
    bad = [r for r in space.resolution.values if r % stride]
    if bad:
        raise UserError(source, "resolution", f"multiples of the network's total stride {stride} "
                                              f"(the product of the stages' strides), got {bad}")
    small = [r for r in space.resolution.values if r < stride]
    if small:
        raise UserError(source, "resolution", f"at least the total stride {stride}, got {small}")
    shape = DataShape(task=space.task, classes=2, channels=3, grid_channels=2 if space.head.kind == "gaze" else 0)
    for point in corners(space):
        try:
            to_spec(space, point, shape)
        except UserError as e:
            raise UserError(source, e.field, f"{e.expected} (for the choices {point})") from None
