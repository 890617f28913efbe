"""The on-disk image cache at scale's terms: decoded once, reused, rebuilt on change, kill-safe, shared; the
search coordinator never decodes; splits stream from it (small generated folders, seconds each)."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nas import data, datacache

PY = sys.executable


def _folder(root: Path, per_class: int = 12, size: int = 8, classes: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        for i in range(per_class):
            (root / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i:04d}.png")
    return root


def _finished(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir() and (p / "meta.json").is_file()
                  and ".tmp-" not in p.name)


def _run(script: str, env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([PY, "-c", textwrap.dedent(script)], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_cache_is_reused_when_unchanged_and_rebuilt_when_a_file_changes(tmp_path: Path) -> None:
    root, cache = _folder(tmp_path / "d"), tmp_path / "cache"
    first = data.load(str(root), seed=0, cache_dir=cache)
    assert len(_finished(cache)) == 1
    images = Path(first.description["cache"]) / "images.npy"
    stamp = (images.stat().st_ino, images.stat().st_mtime_ns)
    again = data.load(str(root), seed=0, cache_dir=cache)
    assert again.description["cache"] == first.description["cache"] and len(_finished(cache)) == 1
    assert (images.stat().st_ino, images.stat().st_mtime_ns) == stamp  # opened, not written again
    for k in ("train", "val", "test"):  # same split, same pixels, straight from the cache
        assert np.array_equal(first.splits[k].rows, again.splits[k].rows)
        assert np.array_equal(first.splits[k].x, again.splits[k].x)
    changed = root / "c1" / "0003.png"
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))  # a later mtime, whatever the clock's grain
    third = data.load(str(root), seed=0, cache_dir=cache)
    assert third.description["cache"] != first.description["cache"] and len(_finished(cache)) == 2
    store = datacache.ImageStore(Path(third.description["cache"]))
    assert np.all(store.read(np.array([12 + 3])) == 7)  # listing order: c0's 12 files, then c1's, sorted
    assert np.array_equal(first.test.rows, third.test.rows)  # the same listing splits the same way


def test_a_kill_during_cache_writing_leaves_no_cache_a_later_run_uses(tmp_path: Path) -> None:
    root, cache = _folder(tmp_path / "d", per_class=20), tmp_path / "cache"
    slow = """
        import sys, time
        from pathlib import Path
        from nas import data, datacache
        datacache.CHUNK = 2
        real = datacache._decode_chunk
        def slow(*a):
            time.sleep(0.3)
            return real(*a)
        datacache._decode_chunk = slow
        data.load(sys.argv[1], cache_dir=sys.argv[2])
    """
    proc = subprocess.Popen([PY, "-c", textwrap.dedent(slow), str(root), str(cache)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until rows are being written into the temporary cache
        part = list(cache.glob("*.tmp-*/images.npy")) if cache.exists() else []
        if part and part[0].stat().st_size > 128 + 2 * 8 * 8 * 3:
            break
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    else:
        pytest.fail("the child never started writing its cache")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _finished(cache) == [] and list(cache.glob("*.tmp-*"))  # only the half-written temporary is left
    ds = data.load(str(root), seed=0, cache_dir=cache)  # decoded afresh, not from the half cache
    assert len(_finished(cache)) == 1 and not list(cache.glob("*.tmp-*"))
    store = datacache.ImageStore(Path(ds.description["cache"]))
    assert store.ok.all() and sum(len(s) for s in ds.splits.values()) == 40
    assert all(np.any(store.read(np.array([i])) > 0) for i in range(40))  # every row decoded, none zero


def test_two_workers_share_one_cache(tmp_path: Path) -> None:
    root, cache = _folder(tmp_path / "d", per_class=30), tmp_path / "cache"
    script = """
        import json, sys, time
        from nas import data, datacache
        built = []
        real, real_chunk = datacache._build, datacache._decode_chunk
        datacache._build = lambda *a, **k: (built.append(1), real(*a, **k))
        datacache.CHUNK = 10
        datacache._decode_chunk = lambda *a: (time.sleep(0.2), real_chunk(*a))[1]  # slow: the two would overlap
        ds = data.load(sys.argv[1], cache_dir=sys.argv[2])
        print(json.dumps({"cache": ds.description["cache"], "built": len(built),
                          "train": ds.train.rows.tolist()}))
    """
    procs = [subprocess.Popen([PY, "-c", textwrap.dedent(script), str(root), str(cache)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1000:] for o in outs]
    got = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert got[0]["cache"] == got[1]["cache"] and got[0]["train"] == got[1]["train"]
    assert sorted(g["built"] for g in got) == [0, 1]  # one decoded, the other waited and opened it
    assert len(_finished(cache)) == 1


def test_search_coordinator_imports_no_tensorflow_and_decodes_no_image(tmp_path: Path) -> None:
    root, cache = _folder(tmp_path / "d", per_class=30, size=16), tmp_path / "cache"
    script = """
        import json, sys
        import PIL.ImageFile
        decoded = []
        real_load = PIL.ImageFile.ImageFile.load
        def counting(self, *a, **k):
            decoded.append(getattr(self, "filename", "?"))
            return real_load(self, *a, **k)
        PIL.ImageFile.ImageFile.load = counting
        from nas.search.coordinator import create_run
        from nas.search.preflight import SearchRequest
        run = create_run(SearchRequest(constraints="mcu_vww.yaml", dataset=sys.argv[1], trials=1, run_dir=sys.argv[2]))
        desc = json.loads((run / "dataset.json").read_text())
        print(json.dumps({"decoded": len(decoded), "tf": "tensorflow" in sys.modules, "counts": desc["counts"],
                          "cache": desc.get("cache"), "shape": desc["native_shape"]}))
    """
    res = subprocess.run([PY, "-c", textwrap.dedent(script), str(root), str(tmp_path / "run")], capture_output=True,
                         text=True, timeout=180, env={**os.environ, datacache.ENV_CACHE_DIR: str(cache)})
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["tf"] is False
    assert got["decoded"] <= 1, got  # the issue allows one image for the shape; the cache's metadata needs none
    assert got["shape"] == [16, 16, 3] and sum(got["counts"].values()) == 60
    assert got["cache"] and Path(got["cache"]).parent == cache  # decoded once, by the child, into the cache


def test_streamed_batches_equal_prepared_arrays_and_limits_are_index_selections(tmp_path: Path) -> None:
    from nas.tf import pipeline

    ds = data.load(str(_folder(tmp_path / "d", per_class=20, size=12)), seed=1, cache_dir=tmp_path / "cache")
    assert isinstance(ds.train.images, datacache.ImageStore)
    head = ds.train.head(10)
    assert head.images is ds.train.images and np.array_equal(head.rows, ds.train.rows[:10])
    for res, ch in ((12, 3), (20, 3), (8, 1)):
        want = pipeline.prepare(ds.val, res, ch)
        got = np.concatenate(list(pipeline.arrays(ds.val, res, ch, batch_size=3)))
        np.testing.assert_allclose(got, want, atol=1e-6)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in pipeline.stream(head, 16, 3, batch_size=4, shuffle=True,
                                                                      seed=0, augment="classification")])
    assert sum(len(x) for x in xs) == 10 and np.concatenate(xs).shape[1:] == (16, 16, 3)
    assert sorted(np.concatenate(ys).tolist()) == sorted(head.y.tolist())


def test_mixed_sizes_keep_what_large_candidates_can_use(tmp_path: Path) -> None:
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    for c, sides in (("a", (25, 40, 120, 130)), ("b", (30, 110, 140, 266))):
        (root / c).mkdir(parents=True)
        for i, s in enumerate(sides):
            Image.fromarray(rng.integers(0, 256, (s, s + 3, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    ds = data.load(str(root), cache_dir=tmp_path / "cache")
    side = datacache.stored_size([(s + 3, s) for s in (25, 40, 120, 130, 30, 110, 140, 266)])
    assert side == (int(np.percentile([25, 40, 120, 130, 30, 110, 140, 266], 90)),) * 2
    assert ds.resolution == side[0] > 128  # not squeezed to the commonest (smallest) size
    assert ds.description["image_sizes"]["shorter_side"]["max"] == 266


def test_unwritable_cache_dir_is_one_line(tmp_path: Path) -> None:
    from nas.errors import UserError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError) as e:
        data.load(str(_folder(tmp_path / "d")), cache_dir=blocker / "cache")
    assert str(blocker / "cache") in str(e.value) and "--cache-dir" in str(e.value)


def test_the_cache_child_is_silent_on_short_work_and_reports_long_work(tmp_path: Path, monkeypatch, caplog) -> None:
    """The search coordinator's child: a decode of a few seconds prints nothing (a bad folder stays a one-line
    error), a long one a line every 10 s and a last one; the child runs as ``__main__``, so the cache code's own
    logger must be the one it turns up."""
    folder = _folder(tmp_path / "imgs", per_class=5)
    env = {**os.environ, datacache.ENV_CACHE_DIR: str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "nas.datacache", str(folder)]
    for _ in range(2):  # the build, then the open
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stderr == "", out.stderr
    clock = iter([0.0, 4.0, 11.0, 15.0, 23.0, 25.0])
    monkeypatch.setattr(datacache.time, "perf_counter", lambda: next(clock))
    caplog.set_level(logging.INFO, logger="nas.datacache")
    progress = datacache.DecodeProgress("decoding x", 50)
    for _ in range(5):
        progress.add(10)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["decoding x: 20/50 images (40%), 2 img/s, ETA 16 s",
                     "decoding x: 40/50 images (80%), 2 img/s, ETA 6 s",
                     "decoding x: 50/50 images (100%), 2 img/s, ETA 0 s"], lines
