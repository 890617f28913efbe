"""Splits to network inputs: resize and channel conversion at a candidate's resolution, and ``tf.data``.

:func:`stream` is the path for training, calibration and evaluation: a batched, prefetched ``tf.data``
pipeline that reads a :class:`nas.data.Split`'s rows from its store (the uint8 image cache of a folder) a
batch at a time and resizes, converts channels, normalises and augments inside the pipeline, so a worker
holds a few batches, never the data set (memory does not grow with the number of images). :func:`arrays`
yields the same batches as NumPy (the INT8 interpreter's input). :func:`prepare` (a whole split as one
float32 array, cached per shape) and :func:`to_tf_dataset` (a pipeline over in-memory arrays) remain for
small data and for callers that need an array. It lives in :mod:`nas.tf` because the resize and the
pipeline are TensorFlow's; :mod:`nas.data` itself reads and splits data without it.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow as tf

from nas.data import AUGMENTS, GRID_CHANNELS, Split


# --------------------------------------------------------------------------------------------------
# prepare(): resize + channel conversion, cached


class _PreparedCache:
    """A small LRU of prepared arrays keyed on (split identity, resolution, channels, grid channels).

    Candidates in a search share a handful of input shapes, so each split is resized once per shape, not
    once per candidate. Bounded by entries and bytes; each entry keeps a reference to its split so
    an ``id`` is never reused while cached. Cached arrays are read-only: a caller that edits them in place
    would silently corrupt every later candidate.
    """

    def __init__(self, max_entries: int = 12, max_bytes: int = 2 << 30) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: collections.OrderedDict[tuple[int, int, int, int], tuple[Any, np.ndarray]] = \
            collections.OrderedDict()

    def get(self, src: Any, key: tuple[int, int, int, int], make: Callable[[], np.ndarray]) -> np.ndarray:
        hit = self._items.get(key)
        if hit is not None and hit[0] is src:
            self._items.move_to_end(key)
            return hit[1]
        value = make()
        value.flags.writeable = False
        self._items[key] = (src, value)
        self._items.move_to_end(key)
        while len(self._items) > 1 and (len(self._items) > self.max_entries
                                        or sum(v.nbytes for _, v in self._items.values()) > self.max_bytes):
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()


_PREPARED = _PreparedCache()


def prepare(split: Split, resolution: int, channels: int, grid_channels: int = 0) -> np.ndarray:
    """``split.x`` resized to ``resolution x resolution`` with ``channels`` image channels (1 or 3).

    Gray -> RGB repeats the channel; RGB -> gray uses the ITU-R BT.601 luminance (what PIL's ``L`` mode
    uses). The last ``grid_channels`` channels (the gaze face-grid embedding) are resized but never
    converted. Returns read-only float32 in ``[0, 1]``, computed once per (split, shape) and cached.
    """
    c_in = split.shape[-1] - grid_channels
    if channels not in (1, 3):
        raise ValueError(f"prepare: channels must be 1 or 3, got {channels}")
    if c_in not in (1, 3) or grid_channels < 0:
        raise ValueError(f"prepare: {split.shape[-1]} channels with {grid_channels} grid channels leaves {c_in} "
                         "image channels; expected 1 or 3")
    if resolution < 1:
        raise ValueError(f"prepare: resolution must be positive, got {resolution}")
    key = (id(split), int(resolution), int(channels), int(grid_channels))
    return _PREPARED.get(split, key, lambda: _prepare(split.x, int(resolution), channels, grid_channels))


def _prepare(x: np.ndarray, resolution: int, channels: int, grid_channels: int) -> np.ndarray:
    c_in = x.shape[-1] - grid_channels
    img, grid = x[..., :c_in], x[..., c_in:]
    if c_in == 3 and channels == 1:  # reduce before resizing: a third of the work
        img = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    both = np.concatenate([img, grid], axis=-1) if grid_channels else img
    if both.shape[1:3] != (resolution, resolution):
        both = _resize_batch(both, resolution)
    img, grid = both[..., :both.shape[-1] - grid_channels], both[..., both.shape[-1] - grid_channels:]
    if img.shape[-1] == 1 and channels == 3:
        img = np.repeat(img, 3, axis=-1)
    out = np.concatenate([img, grid], axis=-1) if grid_channels else img
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def _resize_batch(x: np.ndarray, resolution: int, chunk: int = 1024) -> np.ndarray:
    """Antialiased bilinear resize with TensorFlow, in chunks to bound peak memory."""
    out = np.empty((len(x), resolution, resolution, x.shape[-1]), np.float32)
    for s in range(0, len(x), chunk):
        out[s:s + chunk] = tf.image.resize(x[s:s + chunk], (resolution, resolution), method="bilinear",
                                           antialias=True).numpy()
    return out


# --------------------------------------------------------------------------------------------------
# stream(): batches read from the store, converted inside the pipeline


def stream(split: Split, resolution: int, channels: int, grid_channels: int = 0, *, batch_size: int = 256,
           shuffle: bool = False, seed: int = 0, augment: str | None = None, labels: bool = True) -> Any:
    """A batched, prefetched ``tf.data.Dataset`` of ``split`` at ``resolution`` with ``channels`` image channels.

    Only positions are shuffled (an int64 per image); each batch's rows are read from the split's store
    (``os.pread`` of the uint8 cache, or a slice of an in-memory array) in a ``tf.numpy_function``, then cast
    to float32 in ``[0, 1]``, converted (gray <-> RGB as :func:`prepare`, the grid channels untouched), resized
    (bilinear, antialiased; skipped at the stored size) and augmented as :func:`to_tf_dataset` does, with
    reads and conversion of the next batches overlapping training (parallel map, prefetch). Yields
    ``(x, y)``, or ``x`` alone with ``labels=False``. Deterministic for ``seed``.
    """
    if augment not in (None, *AUGMENTS):
        raise ValueError(f"augment must be one of {AUGMENTS} or None, got {augment!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if channels not in (1, 3):
        raise ValueError(f"stream: channels must be 1 or 3, got {channels}")
    h, w, c_all = split.shape
    c_in = c_all - grid_channels
    if c_in not in (1, 3) or grid_channels < 0:
        raise ValueError(f"stream: {c_all} channels with {grid_channels} grid channels leaves {c_in} image "
                         "channels; expected 1 or 3")
    n = len(split)
    raw_dtype = tf.as_dtype(np.dtype(getattr(split.images, "dtype", np.float32)))
    y_all = np.asarray(split.y)

    def fetch(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return split.read_raw(positions), y_all[positions]

    def load(positions: Any) -> tuple[Any, Any]:
        x, y = tf.numpy_function(fetch, [positions], [raw_dtype, tf.as_dtype(y_all.dtype)], stateful=False)
        x.set_shape([None, h, w, c_all])
        y.set_shape([None, *y_all.shape[1:]])
        return _convert(x, int(resolution), channels, grid_channels), y

    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        g = grid_channels if augment == "gaze" else 0
        fn = _augment_fn(augment, g)
        ds = tf.data.Dataset.zip((ds, seeds)).map(lambda xy, s: (fn(xy[0], s), xy[1]),
                                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if not labels:
        ds = ds.map(lambda x, y: x)
    return ds.prefetch(tf.data.AUTOTUNE)


def arrays(split: Split, resolution: int, channels: int, grid_channels: int = 0, *,
           batch_size: int = 1024) -> Iterator[np.ndarray]:
    """The split's images at ``resolution`` in order, as float32 NumPy batches (for the INT8 interpreter)."""
    for x in stream(split, resolution, channels, grid_channels, batch_size=batch_size, labels=False):
        yield x.numpy()


def _convert(x: Any, resolution: int, channels: int, grid_channels: int) -> Any:
    """Stored pixels to the network's input: float32 in [0, 1], channels converted, resized (as :func:`prepare`)."""
    x = tf.cast(x, tf.float32) / 255.0 if x.dtype == tf.uint8 else tf.cast(x, tf.float32)
    c_in = x.shape[-1] - grid_channels
    img, grid = x[..., :c_in], x[..., c_in:]
    if c_in == 3 and channels == 1:  # reduce before resizing: a third of the work
        img = tf.tensordot(img, tf.constant([0.299, 0.587, 0.114], tf.float32), axes=[[3], [0]])[..., None]
    both = tf.concat([img, grid], axis=-1) if grid_channels else img
    if tuple(x.shape[1:3]) != (resolution, resolution):
        both = tf.image.resize(both, (resolution, resolution), method="bilinear", antialias=True)
    k = both.shape[-1] - grid_channels
    img, grid = both[..., :k], both[..., k:]
    if k == 1 and channels == 3:
        img = tf.repeat(img, 3, axis=-1)
    out = tf.concat([img, grid], axis=-1) if grid_channels else img
    return tf.clip_by_value(out, 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# tf.data


def to_tf_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool, seed: int,
                  augment: str | None = None, grid_channels: int | None = None) -> Any:
    """A batched, prefetched ``tf.data.Dataset`` over in-memory ``x, y``.

    The arrays are already decoded, resized (and cached by :func:`prepare`), so the pipeline only
    shuffles, batches and augments; a ``.cache()`` stage would just copy them again. Augmentation runs
    per batch with stateless ops seeded from ``seed``, so a run is reproducible; it changes every epoch.

    ``augment``: ``None``; ``"classification"``: random horizontal flip, translation up to 10% (reflect
    padding) and brightness +-0.1; ``"classification-noflip"``: the same without the flip (digits);
    ``"gaze"``: brightness and contrast of the image channels only, never a flip or shift (a flip would
    mirror the gaze target, a shift would move the face against its face grid). ``grid_channels`` (gaze
    only, default 2) are the trailing channels left untouched.
    """
    if augment not in (None, *AUGMENTS):
        raise ValueError(f"augment must be one of {AUGMENTS} or None, got {augment!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    g = (GRID_CHANNELS if grid_channels is None else grid_channels) if augment == "gaze" else 0
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(x, np.float32), np.asarray(y)))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        fn = _augment_fn(augment, g)
        ds = tf.data.Dataset.zip((ds, seeds)).map(lambda xy, s: (fn(xy[0], s), xy[1]),
                                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _augment_fn(kind: str, grid_channels: int) -> Callable[[Any, Any], Any]:
    def classification(x: Any, seed: Any) -> Any:
        seed = tf.cast(seed, tf.int32)
        n = tf.shape(x)[0]
        h, w = tf.cast(tf.shape(x)[1], tf.float32), tf.cast(tf.shape(x)[2], tf.float32)
        if kind == "classification":
            x = tf.image.stateless_random_flip_left_right(x, seed=seed)
        shift = tf.random.stateless_uniform((n, 2), seed=seed + [1, 0], minval=-0.1, maxval=0.1)
        zeros, ones = tf.zeros((n, 1)), tf.ones((n, 1))
        transforms = tf.concat([ones, zeros, -shift[:, :1] * w, zeros, ones, -shift[:, 1:] * h, zeros, zeros], 1)
        x = tf.raw_ops.ImageProjectiveTransformV3(images=x, transforms=transforms, output_shape=tf.shape(x)[1:3],
                                                  fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
        delta = tf.random.stateless_uniform((n, 1, 1, 1), seed=seed + [2, 0], minval=-0.1, maxval=0.1)
        return tf.clip_by_value(x + delta, 0.0, 1.0)

    def gaze(x: Any, seed: Any) -> Any:
        seed = tf.cast(seed, tf.int32)
        c = tf.shape(x)[-1] - grid_channels
        img, grid = x[..., :c], x[..., c:]
        n = tf.shape(x)[0]
        delta = tf.random.stateless_uniform((n, 1, 1, 1), seed=seed, minval=-0.1, maxval=0.1)
        factor = tf.random.stateless_uniform((n, 1, 1, 1), seed=seed + [1, 0], minval=0.8, maxval=1.2)
        mean = tf.reduce_mean(img, axis=[1, 2, 3], keepdims=True)
        img = tf.clip_by_value((img - mean) * factor + mean + delta, 0.0, 1.0)
        return tf.concat([img, grid], axis=-1)

    return gaze if kind == "gaze" else classification
