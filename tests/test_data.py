"""Tests for nas.data: real bundled data, bad folders written into tmp_path, and a GazeCapture fixture."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import nas  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)
from nas import data
from nas.tf import pipeline
from nas.errors import UserError
from tests.shared import SHARED, require

VWW = SHARED / "data" / "vww96"


def _all_y(ds: data.Dataset) -> np.ndarray:
    return np.concatenate([ds.train.y, ds.val.y, ds.test.y])


def _fingerprints(split: data.Split) -> set[bytes]:
    return {row.tobytes() for row in split.x.reshape(len(split.x), -1)}


def _check_dataset(ds: data.Dataset) -> None:
    """Invariants every data set keeps, whatever its source."""
    for s in (ds.train, ds.val, ds.test):
        assert s.x.dtype == np.float32 and s.x.ndim == 4
        assert s.x.shape[1:] == ds.train.x.shape[1:]
        assert 0.0 <= s.x.min() and s.x.max() <= 1.0
        assert len(s.x) == len(s.y)
    json.dumps(ds.description)  # run records store it
    assert ds.description["counts"] == {k: len(s) for k, s in ds.splits.items()}
    assert ds.description["native_shape"] == list(ds.train.x.shape[1:])


# --- registry ------------------------------------------------------------------------------------------


def test_names_and_unknown_name() -> None:
    assert data.names()[0] == "mnist"
    assert set(data.names()) == {"mnist", "faces", "gaze-synthetic"}
    with pytest.raises(UserError) as e:
        data.load("mnsit")
    msg = str(e.value)
    assert "did you mean 'mnist'" in msg and "gaze-synthetic" in msg


@pytest.mark.parametrize("kw", [{"val_fraction": 0.6, "test_fraction": 0.5}, {"limit": 1}, {"seed": -1},
                                {"test_fraction": 1.2}])
def test_bad_arguments(kw: dict) -> None:
    with pytest.raises(UserError):
        data.load("faces", **kw)


# --- mnist / faces -------------------------------------------------------------------------------------


def test_mnist_loads_and_splits_deterministically() -> None:
    ds = data.load("mnist", seed=0)
    _check_dataset(ds)
    assert ds.task == "classification" and ds.grid_channels == 0
    assert ds.class_names == tuple(str(i) for i in range(10))
    assert ds.train.x.shape[1:] == (28, 28, 1) and ds.resolution == 28 and ds.image_channels == 1
    assert len(ds.train) + len(ds.val) + len(ds.test) == 5000
    assert (len(ds.val), len(ds.test)) == (750, 1000)
    assert ds.train.y.dtype == np.int32 and set(np.unique(ds.train.y)) == set(range(10))
    # stratified: 500 per class overall -> exactly 100 per class in the 20% test split
    assert ds.description["class_counts"]["test"] == [100] * 10
    # disjoint splits (no image in two splits)
    tr, va, te = _fingerprints(ds.train), _fingerprints(ds.val), _fingerprints(ds.test)
    assert not (tr & va) and not (tr & te) and not (va & te)

    again = data.load("mnist", seed=0)
    assert np.array_equal(again.test.x, ds.test.x) and np.array_equal(again.train.y, ds.train.y)
    other = data.load("mnist", seed=1)
    assert not np.array_equal(other.test.x, ds.test.x)
    assert sorted(_all_y(other).tolist()) == sorted(_all_y(ds).tolist())


def test_limit_is_stratified_and_deterministic() -> None:
    a = data.load("mnist", seed=3, limit=200)
    b = data.load("mnist", seed=3, limit=200)
    assert len(a.train) + len(a.val) + len(a.test) == 200
    assert np.array_equal(a.train.x, b.train.x)
    assert np.bincount(_all_y(a), minlength=10).tolist() == [20] * 10
    assert a.description["limit"] == 200
    tiny = data.load("mnist", limit=10)  # fewer samples than (classes x splits): still three non-empty splits
    assert min(len(tiny.train), len(tiny.val), len(tiny.test)) >= 1


def test_faces_loads_two_classes() -> None:
    ds = data.load("faces", seed=0)
    _check_dataset(ds)
    assert ds.class_names == ("face", "non_face")
    assert ds.train.x.shape[1:] == (25, 25, 1)
    assert np.bincount(_all_y(ds)).tolist() == [100, 100]
    assert ds.description["class_counts"]["test"] == [20, 20]


# --- image folders -------------------------------------------------------------------------------------


def test_vww96_folder() -> None:
    ds = data.load(str(require(VWW)), seed=0)
    _check_dataset(ds)
    assert ds.class_names == ("non_person", "person")
    assert ds.train.x.shape[1:] == (96, 96, 3)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 600
    assert np.bincount(_all_y(ds)).tolist() == [300, 300]
    assert ds.description["skipped"] == 0 and ds.description["color"] == "rgb"
    assert ds.name == "vww96"


def _write(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)


def _rgb(rng: np.random.Generator, h: int = 16, w: int = 16) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _gray(rng: np.random.Generator, h: int = 16, w: int = 16) -> np.ndarray:
    return rng.integers(0, 256, (h, w), dtype=np.uint8)


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(UserError) as e:
        data.load(str(missing))
    assert str(missing) in str(e.value) and "does not exist" in str(e.value)


def test_file_instead_of_folder(tmp_path: Path) -> None:
    f = tmp_path / "x.png"
    _write(f, _rgb(np.random.default_rng(0)))
    with pytest.raises(UserError) as e:
        data.load(str(f))
    assert str(f) in str(e.value)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        data.load(str(tmp_path))
    assert str(tmp_path) in str(e.value) and "empty" in str(e.value)


def test_images_without_class_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        _write(tmp_path / f"{i}.png", _rgb(rng))
    with pytest.raises(UserError) as e:
        data.load(str(tmp_path))
    assert str(tmp_path) in str(e.value) and "subfolder per class" in str(e.value)


def test_one_class_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(4):
        _write(tmp_path / "cat" / f"{i}.png", _rgb(rng))
    with pytest.raises(UserError) as e:
        data.load(str(tmp_path))
    assert str(tmp_path) in str(e.value) and "two class" in str(e.value)


def test_class_folder_without_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(4):
        _write(tmp_path / "cat" / f"{i}.png", _rgb(rng))
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError) as e:
        data.load(str(tmp_path))
    assert str(tmp_path / "dog") in str(e.value)


def test_corrupt_images_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(10):
            _write(tmp_path / c / f"{i}.png", _rgb(rng))
    (tmp_path / "a" / "garbage.png").write_bytes(b"definitely not a png")
    good = (tmp_path / "b" / "0.png").read_bytes()
    (tmp_path / "b" / "truncated.png").write_bytes(good[: len(good) // 2])  # valid header, broken pixels
    (tmp_path / "manifest.csv").write_text("path,label\n")  # ignored, like vww96's
    with caplog.at_level(logging.WARNING, logger="nas.data"):
        ds = data.load(str(tmp_path))
    assert ds.description["skipped"] == 2
    assert sorted(ds.description["skipped_files"]) == ["a/garbage.png", "b/truncated.png"]
    assert len(ds.train) + len(ds.val) + len(ds.test) == 20
    assert "garbage.png" in caplog.text and "truncated.png" in caplog.text


def test_too_many_corrupt_images_is_an_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(4):
            _write(tmp_path / c / f"{i}.png", _rgb(rng))
        (tmp_path / c / "bad.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    with pytest.raises(UserError) as e:
        data.load(str(tmp_path))
    assert str(tmp_path) in str(e.value) and "2 of 10" in str(e.value)


def test_mixed_gray_rgba_rgb_become_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _write(tmp_path / "a" / "gray.png", _gray(rng))
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[0, 0, 3] = 255
    _write(tmp_path / "a" / "rgba.png", rgba)
    _write(tmp_path / "a" / "rgb.jpg", _rgb(rng))
    _write(tmp_path / "b" / "palette.png", _gray(rng) // 64, mode="P")  # mode P (palette)
    _write(tmp_path / "b" / "small.png", _rgb(rng, 12, 10))  # another size: mixed sizes are stored at the 90th
    _write(tmp_path / "b" / "rgb.png", _rgb(rng))              # percentile of the shorter sides (16 here)
    ds = data.load(str(tmp_path), limit=None)
    _check_dataset(ds)
    assert ds.train.x.shape[1:] == (16, 16, 3)
    assert ds.description["color"] == "rgb" and ds.description["resized_to_native"] == 1
    sizes = ds.description["image_sizes"]
    assert sizes["distinct"] == 2 and sizes["shorter_side"]["min"] == 10 and sizes["most_common"][0][2] == 5
    x = np.concatenate([ds.train.x, ds.val.x, ds.test.x])
    # the RGBA image is transparent except one pixel: flattened over black
    assert any(float(img.sum()) > 0 and np.count_nonzero(img.sum(-1)) == 1 for img in x)
    # the gray image became RGB with equal channels
    assert any(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
               and img.std() > 0.1 for img in x)


def test_all_gray_folder_stays_gray(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(3):
            _write(tmp_path / c / f"{i}.png", _gray(rng))
    ds = data.load(str(tmp_path))
    assert ds.train.x.shape[1:] == (16, 16, 1) and ds.description["color"] == "gray"


# --- prepare -------------------------------------------------------------------------------------------


def test_prepare_resizes_and_converts_channels() -> None:
    ds = data.load("mnist", limit=60)
    rgb = pipeline.prepare(ds.train, 32, 3)
    assert rgb.shape == (len(ds.train), 32, 32, 3) and rgb.dtype == np.float32
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    assert pipeline.prepare(ds.train, 32, 3) is rgb  # cached: resized once per (split, shape)
    assert not rgb.flags.writeable
    gray = pipeline.prepare(ds.train, 16, 1)
    assert gray.shape == (len(ds.train), 16, 16, 1)
    # RGB -> gray is luminance: a gray image converted to RGB and back is unchanged
    back = pipeline.prepare(data.Split(np.ascontiguousarray(rgb), ds.train.y), 32, 1)
    np.testing.assert_allclose(back[..., 0], rgb[..., 0], atol=1e-5)
    # same size and channels: values unchanged
    np.testing.assert_allclose(pipeline.prepare(ds.train, 28, 1), ds.train.x, atol=1e-6)
    with pytest.raises(ValueError):
        pipeline.prepare(ds.train, 32, 2)


def test_prepare_keeps_gaze_grid_channels() -> None:
    ds = data.load("gaze-synthetic", limit=40)
    out = pipeline.prepare(ds.train, 96, 1, grid_channels=ds.grid_channels)
    assert out.shape == (len(ds.train), 96, 96, 1 + 2)
    # the grid is resized, not converted: the face box covers the same share of the frame
    # (a pixel counts as inside when at least half-covered by the box's smallest value, 1/25)
    src_area = (ds.train.x[..., 3] > 0).mean(axis=(1, 2))
    dst_area = (out[..., 1] > 0.5 / 25).mean(axis=(1, 2))
    np.testing.assert_allclose(dst_area, src_area, atol=0.02)
    np.testing.assert_allclose(out[..., 1:].max(axis=(1, 2)), ds.train.x[..., 3:].max(axis=(1, 2)), atol=1e-3)
    rgb = pipeline.prepare(ds.train, 32, 3, grid_channels=2)
    assert rgb.shape == (len(ds.train), 32, 32, 5)


# --- synthetic gaze ------------------------------------------------------------------------------------


def test_gaze_synthetic_shapes_range_determinism() -> None:
    ds = data.load("gaze-synthetic", seed=0, limit=300)
    _check_dataset(ds)
    assert ds.task == "gaze" and ds.class_names == () and ds.grid_channels == 2
    assert ds.train.x.shape[1:] == (64, 64, 5) and ds.image_channels == 3
    y = _all_y(ds)
    assert y.dtype == np.float32 and y.shape == (300, 2)
    assert np.all(np.abs(y) < 12.0) and y.std(axis=0).min() > 2.0  # cm, spread over the screen
    assert ds.description["synthetic"] is True
    grid = ds.train.x[..., 3:]
    assert np.all((grid[..., 0] > 0) == (grid[..., 1] > 0))  # both channels mark the same face box
    again = data.load("gaze-synthetic", seed=0, limit=300)
    assert np.array_equal(again.train.x, ds.train.x) and np.array_equal(again.test.y, ds.test.y)
    other = data.load("gaze-synthetic", seed=1, limit=300)
    assert not np.array_equal(other.test.y, ds.test.y)
    full = data.load("gaze-synthetic")
    assert len(full.train) + len(full.val) + len(full.test) == data.SYNTHETIC_GAZE_SAMPLES


def test_gaze_synthetic_is_learnable() -> None:
    """Ridge regression on 8x8 gray pixels + grid beats predicting the mean on held-out samples.

    A linear model is a weak learner for pupil positions; a tiny CNN does far better (~1.0 cm vs ~4.9 cm for
    the mean, measured when the generator was written), but this keeps the test fast.
    """
    ds = data.load("gaze-synthetic", seed=0, limit=1500)

    def feats(split: data.Split) -> np.ndarray:
        x = pipeline.prepare(split, 8, 1, grid_channels=2)
        return np.concatenate([x.reshape(len(x), -1), np.ones((len(x), 1), np.float32)], axis=1)

    a, b = feats(ds.train), feats(ds.test)
    w = np.linalg.solve(a.T @ a + 0.1 * np.eye(a.shape[1]), a.T @ ds.train.y)
    err = np.linalg.norm(b @ w - ds.test.y, axis=1).mean()
    baseline = np.linalg.norm(ds.train.y.mean(axis=0) - ds.test.y, axis=1).mean()
    assert err < 0.75 * baseline, (err, baseline)


# --- GazeCapture layout --------------------------------------------------------------------------------


def _write_gazecapture(root: Path, subjects: dict[str, str], frames_per_subject: int = 5) -> list[tuple]:
    """A tiny GazeCapture tree; returns (subject, frame, XCam, YCam, face colour) of each *valid* frame.

    The face box of frame j is painted a colour that encodes (subject, j), so the test can check each
    crop came with its own target. Frame 1 of every subject is invalid (no face detected).
    """
    from PIL import Image

    expected = []
    rng = np.random.default_rng(0)
    for s_i, (subj, split) in enumerate(subjects.items()):
        d = root / subj
        (d / "frames").mkdir(parents=True)
        names, face, grid, dot = [], {k: [] for k in "XYWH"} | {"IsValid": []}, \
            {k: [] for k in "XYWH"} | {"IsValid": []}, {"XCam": [], "YCam": [], "DotNum": []}
        for j in range(frames_per_subject):
            frame = np.zeros((120, 90, 3), np.uint8)
            x, y, w = int(rng.integers(-10, 50)), int(rng.integers(0, 60)), 40
            colour = (40 + (40 * s_i) % 200, 30 + (40 * j) % 200, 200)
            frame[max(y, 0):y + w, max(x, 0):x + w] = colour
            name = f"{j:05d}.jpg"
            Image.fromarray(frame).save(d / "frames" / name, quality=95)
            names.append(name)
            valid = int(j != 1)
            for k, v in zip("XYWH", (x, y, w, w)):
                face[k].append(v)
            face["IsValid"].append(valid)
            gx, gy = int(rng.integers(1, 15)), int(rng.integers(1, 15))
            for k, v in zip("XYWH", (gx, gy, 10, 10)):
                grid[k].append(v)
            grid["IsValid"].append(valid)
            xc, yc = float(rng.uniform(-8, 8)), float(rng.uniform(-15, 0))
            dot["XCam"].append(xc)
            dot["YCam"].append(yc)
            dot["DotNum"].append(j)
            if valid:
                expected.append((subj, j, xc, yc, colour, (gx, gy)))
        (d / "frames.json").write_text(json.dumps(names))
        (d / "appleFace.json").write_text(json.dumps(face))
        (d / "faceGrid.json").write_text(json.dumps(grid))
        (d / "dotInfo.json").write_text(json.dumps(dot))
        (d / "info.json").write_text(json.dumps({"TotalFrames": frames_per_subject, "Dataset": split,
                                                 "DeviceName": "iPhone 6"}))
    return expected


def test_gazecapture_fixture(tmp_path: Path) -> None:
    expected = _write_gazecapture(tmp_path, {"00002": "train", "00005": "train"})
    ds = data.load(str(tmp_path), seed=0)
    _check_dataset(ds)
    assert ds.task == "gaze" and ds.grid_channels == 2
    assert ds.train.x.shape[1:] == (data.GAZE_CROP_SIZE, data.GAZE_CROP_SIZE, 5)
    x = np.concatenate([ds.train.x, ds.val.x, ds.test.x])
    y = _all_y(ds)
    assert len(y) == len(expected) == 8  # 2 subjects x 4 valid frames
    assert ds.description["subjects"] == {"00002": 4, "00005": 4}
    assert ds.description["split"].startswith("random")  # 2 subjects: too few for a subject split
    for img, target in zip(x, y):
        match = [e for e in expected if np.allclose(target, (e[2], e[3]), atol=1e-5)]
        assert len(match) == 1, target  # targets equal the dotInfo XCam / YCam of a valid frame
        _, _, _, _, colour, (gx, gy) = match[0]
        inside = img[..., :3][img[..., :3].sum(-1) > 0.3]  # the face box pixels (padding is black)
        np.testing.assert_allclose(inside.mean(0), np.array(colour) / 255.0, atol=0.06)
        # grid: 10x10 cells from (gx, gy) (1-based) -> the box's first covered cell holds gx / 25
        assert np.isclose(img[..., 3][img[..., 3] > 0].min(), gx / 25, atol=1e-6)
        assert np.isclose(img[..., 4][img[..., 4] > 0].min(), gy / 25, atol=1e-6)
        assert np.isclose((img[..., 3] > 0).mean(), 0.16, atol=0.03)  # 10 x 10 of 25 x 25 cells


def test_gazecapture_official_split_and_skipped_frames(tmp_path: Path) -> None:
    subjects = {f"{i:05d}": s for i, s in enumerate(["train"] * 6 + ["val", "test"])}
    _write_gazecapture(tmp_path, subjects, frames_per_subject=4)  # 3 valid frames each: 24 in all
    (tmp_path / "00003" / "frames" / "00002.jpg").unlink()  # a missing frame is skipped, not fatal
    ds = data.load(str(tmp_path), seed=5)
    assert ds.description["split"].startswith("official")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (17, 3, 3)
    assert ds.description["skipped"] == 1 and ds.description["skipped_files"] == ["00003/frames/00002.jpg"]


def test_gazecapture_subject_split_without_official(tmp_path: Path) -> None:
    _write_gazecapture(tmp_path, {f"{i:05d}": "" for i in range(6)}, frames_per_subject=3)
    ds = data.load(str(tmp_path), seed=0)
    assert ds.description["split"].startswith("by subject")
    assert min(len(ds.train), len(ds.val), len(ds.test)) > 0
    assert len(ds.train) + len(ds.val) + len(ds.test) == 12


def test_gazecapture_missing_metadata_names_the_file(tmp_path: Path) -> None:
    _write_gazecapture(tmp_path, {"00001": "train", "00002": "test"})
    (tmp_path / "00002" / "faceGrid.json").unlink()
    with pytest.raises(UserError) as e:
        data.load(str(tmp_path))
    assert str(tmp_path / "00002" / "faceGrid.json") in str(e.value)


# --- tf.data -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("augment", [None, "classification", "classification-noflip"])
def test_to_tf_dataset_classification(augment: str | None) -> None:
    ds = data.load("faces", limit=50)
    x = pipeline.prepare(ds.train, 32, 3)
    batches = list(pipeline.to_tf_dataset(x, ds.train.y, 8, shuffle=True, seed=0, augment=augment))
    assert sum(int(b[0].shape[0]) for b in batches) == len(x)
    xb, yb = batches[0]
    assert tuple(xb.shape) == (8, 32, 32, 3) and tuple(yb.shape) == (8,)
    assert 0.0 <= float(np.min(xb)) and float(np.max(xb)) <= 1.0
    again = next(iter(pipeline.to_tf_dataset(x, ds.train.y, 8, shuffle=True, seed=0, augment=augment)))
    np.testing.assert_allclose(again[0].numpy(), xb.numpy())  # reproducible for a seed


def test_to_tf_dataset_gaze_leaves_grid_alone() -> None:
    ds = data.load("gaze-synthetic", limit=40)
    x = pipeline.prepare(ds.train, 32, 3, grid_channels=2)
    xb, yb = next(iter(pipeline.to_tf_dataset(x, ds.train.y, 16, shuffle=False, seed=0, augment="gaze")))
    assert tuple(xb.shape) == (16, 32, 32, 5) and tuple(yb.shape) == (16, 2)
    np.testing.assert_array_equal(xb.numpy()[..., 3:], x[:16, ..., 3:])  # grid untouched
    np.testing.assert_array_equal(yb.numpy(), ds.train.y[:16])  # no flip: targets unchanged
    assert not np.allclose(xb.numpy()[..., :3], x[:16, ..., :3])  # image augmented
    with pytest.raises(ValueError):
        pipeline.to_tf_dataset(x, ds.train.y, 16, shuffle=False, seed=0, augment="mixup")


def _presplit(root: Path, counts: dict[str, dict[str, int]]) -> dict[bytes, str]:
    """``root/<split>/<class>/i.png`` with distinct random images; {image bytes: split} to find them again."""
    rng = np.random.default_rng(7)
    where = {}
    for split, classes in counts.items():
        for cls, n in classes.items():
            for i in range(n):
                img = _rgb(rng)
                _write(root / split / cls / f"{i}.png", img)
                where[(img.astype(np.float32) / 255.0).tobytes()] = split
    return where


def test_presplit_folder_keeps_test_and_carves_validation_from_train(tmp_path: Path) -> None:
    where = _presplit(tmp_path, {"train": {"cat": 40, "dog": 20}, "test": {"cat": 5, "dog": 5}})
    ds = data.load(str(tmp_path), seed=3, val_fraction=0.25)
    assert ds.class_names == ("cat", "dog")
    assert ds.description["counts"] == {"train": 45, "val": 15, "test": 10}
    assert ds.description["split"].startswith("presplit folders: test = test/")
    origin = {k: {where[x.tobytes()] for x in s.x} for k, s in ds.splits.items()}
    assert origin == {"train": {"train"}, "val": {"train"}, "test": {"test"}}  # test/ is exactly the test split
    assert np.bincount(ds.val.y).tolist() == [10, 5]  # stratified like train/ (2:1)
    again = data.load(str(tmp_path), seed=3, val_fraction=0.25)
    assert _fingerprints(again.val) == _fingerprints(ds.val)
    other = data.load(str(tmp_path), seed=4, val_fraction=0.25)
    assert _fingerprints(other.val) != _fingerprints(ds.val) and _fingerprints(other.test) == _fingerprints(ds.test)


def test_presplit_folder_with_val_uses_all_three(tmp_path: Path) -> None:
    _presplit(tmp_path, {"train": {"a": 6, "b": 6}, "val": {"a": 2, "b": 2}, "test": {"a": 3, "b": 3}})
    ds = data.load(str(tmp_path))
    assert ds.description["counts"] == {"train": 12, "val": 4, "test": 6}
    assert ds.description["split"] == "presplit folders"


def test_presplit_test_class_unknown_to_train_is_an_error(tmp_path: Path) -> None:
    _presplit(tmp_path, {"train": {"a": 3, "b": 3}, "test": {"a": 2, "horse": 2}})
    with pytest.raises(UserError, match=r"test.*only the classes of train/ \(a, b\); found horse"):
        data.load(str(tmp_path))
