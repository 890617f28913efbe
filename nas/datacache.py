"""The on-disk uint8 image cache: an image folder decoded once, then opened in seconds by every process.

Decoding 55,000 JPEGs takes minutes and holding them as float32 takes gigabytes, so a folder is decoded once
into ``<cache root>/<key>/``: ``images.npy`` (uint8, ``(N, H, W, C)``, one row per listed file in listing
order; a file that could not be decoded keeps a zero row), ``ok.npy`` (which rows were decoded) and
``meta.json`` (colour, stored size, the size distribution, the unreadable files). Rows are read with
``os.pread``, never through a memory map, so a process holds only the batches it is using: a worker's
resident memory does not grow with the number of images.

* **Key**: the sha256 of the cache format version and, for every listed file, its path relative to the
  folder, size and modification time (ns). A file added, removed, rewritten or touched gives another key, so a
  changed folder is decoded again; an unchanged one is opened.
* **Where**: ``cache_root()``: the ``--cache-dir`` of the command, else ``$TINYNAS_CACHE_DIR``, else
  ``~/.cache/tinynas/data``. Entries are never deleted by tinynas (remove old keys by hand).
* **Kill safety**: a cache is written into ``<key>.tmp-<pid>-<random>/`` and renamed to ``<key>/`` when it is
  complete (``meta.json`` is its last file); ``<key>/`` is the only name ever opened, so a half-written cache is
  never trusted. Leftover temporary folders of dead processes are removed by the next build.
* **Sharing**: a build holds ``<key>.lock`` (``flock``, released by the kernel even on SIGKILL), so the second
  of two workers waits for the first and opens its cache instead of decoding again.
* **Stored size**: see :func:`stored_size`: the common size when all images share it, else a square that keeps
  what a candidate can use from the larger images; larger sides are capped at :data:`MAX_STORED_SIDE`.
"""
from __future__ import annotations

import collections
import concurrent.futures
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import secrets
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

ENV_CACHE_DIR = "TINYNAS_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/tinynas/data")
FORMAT_VERSION = 1
MAX_STORED_SIDE = 256       # no search space goes above 224 px; a larger stored side only costs disk and time
MIXED_SIZE_PERCENTILE = 90  # mixed sizes: the square side that 90% of the images' shorter sides reach
PARALLEL_MIN_FILES = 2000   # below this, decoding in this process is quicker than starting a pool
CHUNK = 256                 # files per task handed to a decoding process
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def cache_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where caches live: ``explicit`` (``--cache-dir``), else ``$TINYNAS_CACHE_DIR``, else
    ``~/.cache/tinynas/data``."""
    chosen = explicit or os.environ.get(ENV_CACHE_DIR) or DEFAULT_CACHE_DIR
    return Path(chosen).expanduser()


def content_key(root: Path, files: Sequence[Path]) -> str:
    """The cache key of a listing: format version, then each file's relative path, size and mtime."""
    h = hashlib.sha256(f"tinynas-image-cache-v{FORMAT_VERSION}\n".encode())
    for p in files:
        st = os.stat(p)
        h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------------------------------
# The store


class ImageStore:
    """A finished cache, opened read-only: rows come from ``os.pread`` (thread-safe, no memory map).

    ``shape`` is ``(N, H, W, C)`` over every listed file; ``ok[i]`` says row ``i`` was decoded.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.meta: dict[str, Any] = json.loads((self.path / "meta.json").read_text())
        with open(self.path / "images.npy", "rb") as f:
            if np.lib.format.read_magic(f) != (1, 0):
                raise ValueError(f"{self.path}/images.npy: not a cache written by tinynas (npy format 1.0)")
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            self._offset = f.tell()
        if np.dtype(dtype) != self.dtype or len(shape) != 4:
            raise ValueError(f"{self.path}/images.npy: expected uint8 (N, H, W, C), got {dtype} {shape}")
        self.shape: tuple[int, int, int, int] = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self._row = int(np.prod(self.shape[1:]))
        self.ok = np.load(self.path / "ok.npy")
        self._fd = os.open(self.path / "images.npy", os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The images of ``rows`` (any order, repeats allowed) as a new uint8 array ``(len(rows), H, W, C)``."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape[1:]), np.uint8)
        flat = out.reshape(len(rows), -1)
        n = self.shape[0]
        for i, r in enumerate(rows):
            if not 0 <= r < n:
                raise IndexError(f"row {r} of a {n}-image cache")
            got = os.preadv(self._fd, [flat[i]], self._offset + int(r) * self._row)
            if got != self._row:
                raise OSError(f"{self.path}/images.npy: short read at row {r} (truncated cache?)")
        return out


# --------------------------------------------------------------------------------------------------
# Open or build


def open_or_build(root: Path, files: Sequence[Path], cache_dir: str | os.PathLike[str] | None = None,
                  *, processes: int | None = None) -> ImageStore:
    """The cache of ``files`` (listed under ``root``), decoding them first if no finished cache has their key."""
    base = cache_root(cache_dir)
    key = content_key(root, files)
    final = base / key
    if (final / "meta.json").is_file():
        log.debug("%s: opened the image cache %s", root, final)
        return ImageStore(final)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from nas.errors import UserError
        raise UserError(str(base), "cache dir", f"a writable folder for the image cache ({e.strerror}); set "
                                                f"--cache-dir or ${ENV_CACHE_DIR}") from None
    with _locked(base / f"{key}.lock"):
        if (final / "meta.json").is_file():  # another process built it while we waited
            log.debug("%s: opened the image cache %s (built by another process)", root, final)
            return ImageStore(final)
        _remove_dead_temporaries(base, key)
        tmp = base / f"{key}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            _build(root, files, tmp, processes)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return ImageStore(final)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock; so does the kernel when the process dies


def _remove_dead_temporaries(base: Path, key: str) -> None:
    """A killed build leaves ``<key>.tmp-<pid>-...``; we hold the lock, so any such folder is dead."""
    for stale in base.glob(f"{key}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Building


@dataclass(frozen=True)
class Header:
    mode: str
    size: tuple[int, int]  # PIL order: (width, height)


def stored_size(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """``(height, width)`` every image is stored at, from the decodable images' ``(width, height)``.

    All one size: that size (shorter side capped at :data:`MAX_STORED_SIDE`, aspect kept), so a uniform folder
    (CIFAR-10, vww96) is stored exactly as it is. Mixed sizes: a square whose side is the
    :data:`MIXED_SIZE_PERCENTILE` th percentile of the shorter sides (capped), at least the commonest size's
    shorter side, so a 96 or 128 px candidate sees real pixels wherever most images have them; each image is
    stretched to it (aspect not kept, as before).
    """
    counts = collections.Counter(sizes)
    (w, h), _ = counts.most_common(1)[0]
    if len(counts) == 1:
        short = min(w, h)
        if short <= MAX_STORED_SIDE:
            return h, w
        k = MAX_STORED_SIDE / short
        return max(1, round(h * k)), max(1, round(w * k))
    shorter = np.array([min(s) for s in sizes])
    side = int(min(MAX_STORED_SIDE, max(min(w, h), np.percentile(shorter, MIXED_SIZE_PERCENTILE))))
    return side, side


def size_distribution(sizes: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """What ``dataset.json`` records of the images' own sizes (``[width, height]``)."""
    if not sizes:
        return {}
    counts = collections.Counter(sizes)
    shorter = np.array([min(s) for s in sizes])
    return {"distinct": len(counts), "most_common": [[w, h, n] for (w, h), n in counts.most_common(5)],
            "shorter_side": {"min": int(shorter.min()), "median": float(np.median(shorter)),
                             "p90": float(np.percentile(shorter, 90)), "max": int(shorter.max())}}


def _read_header(path: str) -> Header | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return Header(im.mode, im.size)
    except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable file"
        log.debug("cannot open %s: %s", path, e)
        return None


def _headers(paths: list[str]) -> list[Header | None]:
    return [_read_header(p) for p in paths]


def decode_uint8(path: str, height: int, width: int, gray: bool) -> np.ndarray | None:
    """One file as uint8 ``(height, width, 1 or 3)``, or None when it cannot be decoded.

    Alpha is flattened over black (premultiplied); 16-bit and float images are scaled to 8 bits; gray is
    repeated to RGB unless the whole folder is gray; a different size is resized (bilinear, antialiased).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode.startswith("I") or mode == "F":
                f = np.asarray(im, np.float32)
                f = f / (65535.0 if mode != "F" and f.max(initial=0) > 255 or mode.startswith("I;16") else 255.0)
                a = np.round(np.clip(f, 0.0, 1.0) * 255.0).astype(np.uint8)[..., None]
            elif mode in GRAY_MODES:
                la = np.asarray(im.convert("LA"), np.uint16)
                a = ((la[..., 0] * la[..., 1] + 127) // 255).astype(np.uint8)[..., None]
            else:
                rgba = np.asarray(im.convert("RGBA"), np.uint16)
                a = ((rgba[..., :3] * rgba[..., 3:4] + 127) // 255).astype(np.uint8)
    except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable file"
        log.debug("cannot decode %s: %s", path, e)
        return None
    if a.shape[:2] != (height, width):
        chans = [np.asarray(Image.fromarray(a[..., c]).resize((width, height), Image.Resampling.BILINEAR))
                 for c in range(a.shape[-1])]
        a = np.stack(chans, axis=-1)
    if not gray and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a


def _decode_chunk(paths: list[str], height: int, width: int, gray: bool) -> tuple[bytes, list[bool]]:
    """A chunk of files as concatenated rows (zeros for an unreadable file) and which rows decoded."""
    c = 1 if gray else 3
    out = np.zeros((len(paths), height, width, c), np.uint8)
    ok = []
    for i, p in enumerate(paths):
        a = decode_uint8(p, height, width, gray)
        ok.append(a is not None)
        if a is not None:
            out[i] = a
    return out.tobytes(), ok


class DecodeProgress:
    """Images done, rate and ETA: a tqdm bar on a terminal, else a log line every 10 s (and a last one at the end
    of work that took that long). Work shorter than that prints nothing: a bad folder stays a one-line error."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total, self.done, self.t0 = what, total, 0, time.perf_counter()
        self.last, self.printed = self.t0, False
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=what, unit="img", leave=False)

    def add(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= 10.0 or (self.done == self.total and self.printed):
            self.last, self.printed = now, True
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0.0
            log.info("%s: %d/%d images (%.0f%%), %.0f img/s, ETA %.0f s", self.what, self.done, self.total,
                     100.0 * self.done / max(self.total, 1), rate, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _pool(n_files: int, processes: int | None) -> concurrent.futures.Executor | None:
    n = processes if processes is not None else min(os.cpu_count() or 1, 8)
    if n <= 1 or n_files < PARALLEL_MIN_FILES and processes is None:
        return None
    # spawn, not fork: the caller may be a worker with TensorFlow's threads running
    return concurrent.futures.ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"))


def _build(root: Path, files: Sequence[Path], out: Path, processes: int | None) -> None:
    """Decode ``files`` into ``out`` (a temporary folder): headers first (size and colour policy), then pixels."""
    t0 = time.perf_counter()
    paths = [str(p) for p in files]
    chunks = [paths[s:s + CHUNK] for s in range(0, len(paths), CHUNK)]
    pool = _pool(len(paths), processes)
    try:
        progress = DecodeProgress(f"reading headers of {root.name}", len(paths))
        heads: list[Header | None] = []
        for got in (pool.map(_headers, chunks) if pool else map(_headers, chunks)):
            heads += got
            progress.add(len(got))
        progress.close()
        good = [h for h in heads if h is not None]
        gray = bool(good) and all(h.mode in GRAY_MODES for h in good)
        sizes = [h.size for h in good]
        height, width = stored_size(sizes) if sizes else (1, 1)
        c = 1 if gray else 3
        ok: list[bool] = []
        progress = DecodeProgress(f"decoding {root.name}", len(paths))
        with open(out / "images.npy", "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (len(paths), height, width, c)})
            args = [(ch, height, width, gray) for ch in chunks]
            results = (pool.map(_decode_chunk, *zip(*args)) if pool and args
                       else (_decode_chunk(*a) for a in args))
            for i, (raw, chunk_ok) in enumerate(results):
                for j, (p, good_) in enumerate(zip(chunks[i], chunk_ok)):
                    if not good_ or heads[i * CHUNK + j] is None:
                        chunk_ok[j] = False
                f.write(raw)
                ok += chunk_ok
                progress.add(len(chunk_ok))
            f.flush()
            os.fsync(f.fileno())
        progress.close()
    finally:
        if pool is not None:
            pool.shutdown()
    np.save(out / "ok.npy", np.asarray(ok, bool))
    bad = [os.path.relpath(p, root) for p, k in zip(paths, ok) if not k]
    resized = sum(1 for h in good if (h.size[1], h.size[0]) != (height, width))
    took = round(time.perf_counter() - t0, 2)
    meta = {"version": FORMAT_VERSION, "source": str(root.resolve()), "count": len(paths),
            "stored_shape": [height, width, c], "color": "gray" if gray else "rgb",
            "unreadable": bad, "resized_to_stored": resized, "image_sizes": size_distribution(sizes),
            "decode_seconds": took, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp_meta = out / "meta.json.part"
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, out / "meta.json")  # the last file: a folder without it is not a cache
    # said where a long decode was reported as it went; a short one says nothing (a bad folder stays one line)
    log.log(logging.INFO if took >= 10.0 else logging.DEBUG,
            "%s: decoded %d images into the image cache under %s in %.1f s (%d unreadable)", root, len(paths),
            out.parent, took, len(bad))


# --------------------------------------------------------------------------------------------------
# Building in a child process (the search coordinator never decodes)


def build_in_child(path: str, cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Build (or just check) the cache of folder ``path`` in a child process, its progress on our stderr.

    The search coordinator calls this so that it never holds decoded images itself; the child exits when the
    cache is complete, and its one-line error (a bad folder) is raised here as a :class:`~nas.errors.UserError`.
    """
    import subprocess

    from nas.errors import UserError

    env = dict(os.environ)
    if cache_dir is not None:
        env[ENV_CACHE_DIR] = str(cache_dir)
    proc = subprocess.run([sys.executable, "-m", "nas.datacache", str(path)], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        if last.startswith("USER "):
            parts = json.loads(last[5:])
            raise UserError(*parts)
        raise RuntimeError(f"building the image cache of {path} failed (exit {proc.returncode}): {last}")


def _main(argv: list[str]) -> int:
    from nas import data
    from nas.errors import UserError

    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    # run with -m this module is __main__; the cache code that data.load reaches logs as nas.datacache: its progress
    # and the summary of a long build reach the user
    logging.getLogger("nas.datacache").setLevel(logging.INFO)
    try:
        data.load(argv[0], seed=0)
    except UserError as e:
        print("USER " + json.dumps([e.source, e.field, e.expected]), flush=True)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
