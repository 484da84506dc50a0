"""Data layer: builtin digits, image folders (decode once, memory-mapped cache), .npz files, and every user error."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from PIL import Image

from evaluators.data import DataError, ImageData, load_data


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_data("builtin:digits", resolution=32, seed=0, val_fraction=0.2)


def _rows(x: np.ndarray) -> list[bytes]:
    """Images as sorted byte strings: compares two sets of images regardless of order."""
    return sorted(img.tobytes() for img in x)


def _rows_list(x: np.ndarray) -> list[bytes]:
    return [img.tobytes() for img in x]


# ---- builtin:digits -----------------------------------------------------------------------------------------------
def test_digits_shapes_dtypes_and_classes(digits):
    d = digits
    assert d.classes == tuple("0123456789") and d.num_classes == 10 and d.resolution == 32
    assert len(d.y_train) + len(d.y_val) == 1797
    assert d.x_train.shape == (len(d.y_train), 32, 32, 3) and d.x_val.shape == (len(d.y_val), 32, 32, 3)
    assert d.x_train.dtype == d.x_val.dtype == np.uint8 and d.y_train.dtype == d.y_val.dtype == np.int64
    assert set(np.unique(d.y_train)) == set(np.unique(d.y_val)) == set(range(10))
    assert len(d.fingerprint) == 16 and int(d.fingerprint, 16) >= 0
    small = load_data("builtin:digits", resolution=16)
    assert small.x_train.shape[1:] == (16, 16, 3) and small.fingerprint != d.fingerprint


def test_digits_arrays_are_read_only(digits):
    with pytest.raises(ValueError):
        digits.x_train[0, 0, 0, 0] = 1


def test_digits_split_is_a_partition_with_labels_attached():
    """At resolution 8 (no resize) train ∪ val is exactly sklearn's images with their labels, nothing lost."""
    from sklearn.datasets import load_digits

    ref = load_digits()
    expected = (ref.images * 255 / 16 + 0.5).astype(np.uint8)
    d = load_data("builtin:digits", resolution=8)
    x = np.concatenate([d.x_train, d.x_val])
    y = np.concatenate([d.y_train, d.y_val])
    assert (x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all()
    got = sorted(zip((img.tobytes() for img in x[..., 0]), y.tolist(), strict=True))
    want = sorted(zip((img.tobytes() for img in expected), ref.target.tolist(), strict=True))
    assert got == want


@pytest.mark.parametrize("val_fraction", [0.2, 0.35])
def test_digits_split_is_stratified(val_fraction):
    d = load_data("builtin:digits", resolution=8, val_fraction=val_fraction)
    for c in range(10):
        n_val, n = (d.y_val == c).sum(), (d.y_val == c).sum() + (d.y_train == c).sum()
        assert abs(n_val / n - val_fraction) <= 0.5 / n + 1e-9, f"class {c}: {n_val}/{n}"


def test_digits_split_deterministic_by_seed_and_differs_across_seeds(digits):
    again = load_data("builtin:digits", resolution=32, seed=0, val_fraction=0.2)
    other = load_data("builtin:digits", resolution=32, seed=1, val_fraction=0.2)
    for name in ("x_train", "y_train", "x_val", "y_val"):
        assert getattr(again, name).tobytes() == getattr(digits, name).tobytes()
    assert again.fingerprint == digits.fingerprint and again.mean == digits.mean and again.std == digits.std
    assert other.fingerprint != digits.fingerprint
    assert _rows(other.x_val) != _rows(digits.x_val)
    assert len(other.y_val) == len(digits.y_val)  # same stratified sizes, different members


def test_digits_mean_std_are_train_statistics(digits):
    x = digits.x_train / 255.0
    np.testing.assert_allclose(digits.mean, x.mean(axis=(0, 1, 2)), rtol=0, atol=1e-9)
    np.testing.assert_allclose(digits.std, x.std(axis=(0, 1, 2)), rtol=0, atol=1e-9)
    val_mean = (digits.x_val / 255.0).mean()
    assert digits.mean[0] != val_mean  # computed on train, not on everything
    assert all(isinstance(v, float) for v in (*digits.mean, *digits.std))


def test_digits_images_are_real_and_resized_not_padded(digits):
    x = digits.x_train[..., 0].astype(float)
    assert (x.reshape(len(x), -1).max(axis=1) > 100).all(), "every image has ink"
    assert (x.reshape(len(x), -1).std(axis=1) > 10).all(), "no blank images"
    # ink reaches the outer quarter of the frame: an 8x8 image padded into 32x32 would leave it empty
    border = np.ones((32, 32), bool)
    border[8:24, 8:24] = False
    assert x[:, border].max() > 100
    # 4x4 block means of the 32 px image reproduce the 8 px original
    d8 = load_data("builtin:digits", resolution=8)
    small = x.reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4))
    corr = np.corrcoef(small.ravel(), d8.x_train[..., 0].astype(float).ravel())[0, 1]
    assert corr > 0.95


# ---- image folders ------------------------------------------------------------------------------------------------
LEVELS = {"zebra": 220, "ant": 30, "mole": 128}  # class -> gray level, so labels can be checked from pixels


def _image(mode: str, size: tuple[int, int], level: int) -> Image.Image:
    color = {"L": level, "RGB": (level, level, level), "RGBA": (level, level, level, 255)}[mode]
    return Image.new(mode, size, color)


def make_folder(root: Path, per_class: int = 5) -> Path:
    """3 classes × `per_class` images: PNG and JPEG, modes L/RGBA/RGB, all of different sizes, plus noise files."""
    variants = [("L", (20, 14), "png"), ("RGBA", (9, 33), "PNG"), ("RGB", (40, 40), "jpg"), ("L", (12, 12), "jpeg"),
                ("RGB", (17, 25), "png"), ("RGB", (64, 48), "bmp"), ("RGB", (8, 8), "webp")]
    for cls, level in LEVELS.items():
        folder = root / cls
        folder.mkdir(parents=True)
        for i in range(per_class):
            mode, size, ext = variants[i % len(variants)]
            _image(mode, size, level).save(folder / f"img{i}.{ext}")
        (folder / "notes.txt").write_text("not an image")
        (folder / ".hidden.png").write_bytes(b"ignored even though it is not a png")
    (root / ".git").mkdir()  # hidden folder: not a class
    return root


def test_folder_loads_classes_sorted_labels_right(tmp_path):
    root = make_folder(tmp_path / "imgs")
    d = load_data(str(root), resolution=16, cache_dir=tmp_path / "cache")
    assert d.source == str(root)
    assert d.classes == ("ant", "mole", "zebra")
    assert len(d.y_train) == 12 and len(d.y_val) == 3  # 5 per class, 1 per class to val
    assert sorted(d.y_val.tolist()) == [0, 1, 2]
    assert d.x_train.shape == (12, 16, 16, 3) and d.x_train.dtype == np.uint8 and d.y_train.dtype == np.int64
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val)):
        levels = x.reshape(len(x), -1).mean(axis=1)
        expected = np.array([LEVELS[d.classes[c]] for c in y])
        assert np.abs(levels - expected).max() < 6, "each image's pixels match its label's class"
    np.testing.assert_allclose(d.mean, (d.x_train / 255.0).mean(axis=(0, 1, 2)), atol=1e-9)
    np.testing.assert_allclose(d.std, (d.x_train / 255.0).std(axis=(0, 1, 2)), atol=1e-9)


def test_folder_is_decoded_once_then_memory_mapped(tmp_path, monkeypatch, capsys):
    root = make_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    first = load_data(str(root), resolution=16, cache_dir=cache, progress=True)
    files = sorted(p.name for p in (cache / "data").iterdir())
    assert files == [f"{first.fingerprint}.{ext}" for ext in ("json", "labels.npy", "npy")], "no temp files left"
    assert "decoding" in capsys.readouterr().err  # the rich progress bar ran
    assert isinstance(first.x_train, np.memmap) and not first.x_train.flags.writeable
    npy = cache / "data" / f"{first.fingerprint}.npy"
    mtime = npy.stat().st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("image decoded although the cache holds it")

    monkeypatch.setattr(PIL.Image, "open", no_decoding)
    second = load_data(str(root), resolution=16, cache_dir=cache)
    assert npy.stat().st_mtime_ns == mtime
    assert second.fingerprint == first.fingerprint and second.classes == first.classes
    for name in ("x_train", "y_train", "x_val", "y_val"):
        assert getattr(second, name).tobytes() == getattr(first, name).tobytes()
    assert second.mean == first.mean and second.std == first.std


def test_folder_decoding_in_small_chunks_gives_the_same_arrays_and_train_stats(tmp_path, monkeypatch):
    """Decoding is chunked to bound memory; chunk edges (one falls inside the train rows) must not change anything."""
    import evaluators.data as data

    root = make_folder(tmp_path / "imgs", per_class=7)
    for i in range(3):  # unbalanced classes: train statistics differ from those of all images
        _image("RGB", (30, 20), 250).save(root / "zebra" / f"extra{i}.png")
    whole = load_data(str(root), resolution=16, cache_dir=tmp_path / "a")
    monkeypatch.setattr(data, "_CHUNK_BYTES", 5 * 16 * 16 * 3)  # 5 images per chunk: 24 images in 5 chunks
    chunked = load_data(str(root), resolution=16, cache_dir=tmp_path / "b")
    for name in ("x_train", "y_train", "x_val", "y_val"):
        assert getattr(chunked, name).tobytes() == getattr(whole, name).tobytes()
    assert chunked.mean == whole.mean and chunked.std == whole.std
    np.testing.assert_allclose(chunked.mean, (chunked.x_train / 255.0).mean(axis=(0, 1, 2)), atol=1e-9)


def test_folder_fingerprint_follows_content_and_arguments(tmp_path):
    root = make_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    base = load_data(str(root), resolution=16, cache_dir=cache)
    assert load_data(str(root), resolution=16, seed=1, cache_dir=cache).fingerprint != base.fingerprint
    assert load_data(str(root), resolution=24, cache_dir=cache).fingerprint != base.fingerprint
    _image("RGB", (10, 10), LEVELS["ant"]).save(root / "ant" / "new.png")
    grown = load_data(str(root), resolution=16, cache_dir=cache)
    assert grown.fingerprint != base.fingerprint
    assert len(grown.y_train) + len(grown.y_val) == 16


def test_folder_cache_defaults_to_bneck_cache_env(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs", per_class=2)
    monkeypatch.setenv("BNECK_CACHE", str(tmp_path / "envcache"))
    d = load_data(str(root), resolution=8)
    assert (tmp_path / "envcache" / "data" / f"{d.fingerprint}.npy").exists()


def test_folder_corrupt_image_names_the_file_and_leaves_no_cache(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "mole" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(DataError, match=r"broken\.png") as err:
        load_data(str(root), resolution=16, cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value)
    assert not any((tmp_path / "cache" / "data").iterdir()), "failed decode leaves no partial or temp file"


def test_folder_with_fewer_than_two_classes(tmp_path):
    root = tmp_path / "one"
    (root / "only").mkdir(parents=True)
    _image("RGB", (8, 8), 10).save(root / "only" / "a.png")
    with pytest.raises(DataError, match=r"one.*1 class subfolder.*need >= 2"):
        load_data(str(root), cache_dir=tmp_path / "cache")


def test_folder_empty_class_is_named(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "yak").mkdir()
    (root / "yak" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"yak has no images"):
        load_data(str(root), cache_dir=tmp_path / "cache")


def test_folder_class_with_one_image(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "yak").mkdir()
    _image("RGB", (8, 8), 10).save(root / "yak" / "a.png")
    with pytest.raises(DataError, match=r"class 'yak' has 1 image.*need >= 2"):
        load_data(str(root), cache_dir=tmp_path / "cache")


# ---- .npz ---------------------------------------------------------------------------------------------------------
def _npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


def _labels(n: int, k: int) -> np.ndarray:
    return np.arange(n) % k


def test_npz_gray_nhw_is_resized_and_replicated(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 10, 14), dtype=np.uint8)
    path = _npz(tmp_path / "gray.npz", x=x, y=_labels(30, 3))
    d = load_data(path, resolution=16, val_fraction=0.3)
    assert d.classes == ("0", "1", "2") and d.source == path
    assert d.x_train.shape == (21, 16, 16, 3) and d.x_val.shape == (9, 16, 16, 3)
    assert (d.x_train[..., 0] == d.x_train[..., 2]).all()
    assert d.x_train.std() > 20  # real content, not a constant
    again = load_data(path, resolution=16, val_fraction=0.3)
    assert again.x_train.tobytes() == d.x_train.tobytes() and again.fingerprint == d.fingerprint


def test_npz_rgb_at_target_resolution_passes_through(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    y = _labels(20, 4)
    d = load_data(_npz(tmp_path / "rgb.npz", x=x, y=y), resolution=8)
    assert d.num_classes == 4
    got = sorted(zip(_rows_list(np.concatenate([d.x_train, d.x_val])), np.concatenate([d.y_train, d.y_val]).tolist(),
                     strict=True))
    assert got == sorted(zip(_rows_list(x), y.tolist(), strict=True))


def test_npz_single_channel_and_fingerprint_is_content(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, (12, 9, 9, 1), dtype=np.uint8)
    a = load_data(_npz(tmp_path / "a.npz", x=x, y=_labels(12, 2)), resolution=8)
    assert a.x_train.shape[1:] == (8, 8, 3)
    b = load_data(_npz(tmp_path / "b.npz", x=x, y=_labels(12, 2)), resolution=8)
    assert b.fingerprint == a.fingerprint  # same bytes, same identity, whatever the name
    c = load_data(_npz(tmp_path / "c.npz", x=255 - x, y=_labels(12, 2)), resolution=8)
    assert c.fingerprint != a.fingerprint


GOOD_X = np.zeros((12, 8, 8), np.uint8)
GOOD_Y = _labels(12, 3)


@pytest.mark.parametrize(("arrays", "message"), [
    ({"y": GOOD_Y}, r"missing array 'x'"),
    ({"x": GOOD_X}, r"missing array 'y'"),
    ({"x": GOOD_X.astype(np.float32), "y": GOOD_Y}, r"x dtype float32, expected uint8"),
    ({"x": np.zeros((12, 64), np.uint8), "y": GOOD_Y}, r"x shape \(12, 64\)"),
    ({"x": np.zeros((12, 8, 8, 2), np.uint8), "y": GOOD_Y}, r"x shape \(12, 8, 8, 2\).*C in \{1,3\}"),
    ({"x": GOOD_X, "y": GOOD_Y.astype(np.float64)}, r"y dtype float64, expected integers"),
    ({"x": GOOD_X, "y": GOOD_Y.reshape(12, 1)}, r"y shape \(12, 1\)"),
    ({"x": GOOD_X, "y": GOOD_Y[:-1]}, r"y has 11 labels but x has 12 images"),
    ({"x": GOOD_X, "y": GOOD_Y - 1}, r"negative label -1"),
    ({"x": GOOD_X, "y": np.where(GOOD_Y == 1, 3, GOOD_Y)}, r"out of range.*class 1 has no images"),
    ({"x": GOOD_X, "y": np.full(12, 1000)}, r"label 1000 out of range"),
    ({"x": GOOD_X, "y": np.zeros(12, np.int64)}, r"1 class\(es\), need >= 2"),
    ({"x": GOOD_X, "y": np.r_[np.zeros(11, np.int64), 1]}, r"class '1' has 1 image.*need >= 2"),
])
def test_npz_errors_name_the_file_and_the_problem(tmp_path, arrays, message):
    path = _npz(tmp_path / "bad_data.npz", **arrays)
    with pytest.raises(DataError, match=message) as err:
        load_data(path)
    assert "bad_data.npz" in str(err.value) and "\n" not in str(err.value)


def test_npz_unreadable_file(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"definitely not a zip archive")
    with pytest.raises(DataError, match=r"junk\.npz: not a readable \.npz"):
        load_data(str(tmp_path / "junk.npz"))
    np.save(tmp_path / "single.npy", GOOD_X)
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    with pytest.raises(DataError, match=r"single\.npz: holds a single array"):
        load_data(str(tmp_path / "single.npz"))


# ---- specs and arguments ------------------------------------------------------------------------------------------
def test_unknown_builtin_lists_allowed():
    with pytest.raises(DataError, match=r"unknown builtin dataset 'builtin:mnist': allowed builtin:digits"):
        load_data("builtin:mnist")


def test_missing_path_names_it_and_lists_allowed_forms(tmp_path):
    missing = tmp_path / "nowhere" / "data.npz"
    with pytest.raises(DataError, match=r"nowhere.*no such file or directory.*builtin:digits.*image folder.*\.npz"):
        load_data(str(missing))
    with pytest.raises(DataError, match=r"did you mean builtin:digits"):
        load_data("digits")
    with pytest.raises(DataError, match=r"empty"):
        load_data("")


def test_existing_file_that_is_not_npz(tmp_path):
    (tmp_path / "labels.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"labels\.csv.*not a \.npz.*builtin:digits"):
        load_data(str(tmp_path / "labels.csv"))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"resolution": 7}, r"resolution 7 not in \[8, 1024\]"),
    ({"resolution": 1025}, r"resolution 1025 not in \[8, 1024\]"),
    ({"resolution": 32.0}, r"resolution must be an integer"),
    ({"val_fraction": 0.0}, r"val_fraction 0.0 not in \(0, 1\)"),
    ({"val_fraction": 1}, r"val_fraction 1 not in \(0, 1\)"),
    ({"val_fraction": 1.5}, r"val_fraction 1.5 not in \(0, 1\)"),
    ({"val_fraction": float("nan")}, r"val_fraction nan not in \(0, 1\)"),
    ({"seed": -1}, r"seed must be a non-negative integer"),
])
def test_argument_errors(kwargs, message):
    with pytest.raises(DataError, match=message):
        load_data("builtin:digits", **kwargs)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)
