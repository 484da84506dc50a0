"""builtin:fashion: Debian's Fashion-MNIST files (real when installed), subsets, its own test split, and the
errors a user sees without the package or with damaged files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from requires import unavailable

from evaluators import DataError, load_data
from evaluators.data import FASHION_DIR, FASHION_FILES
from runs.cli import cli


@pytest.fixture(scope="module")
def fashion_installed() -> None:
    if not (FASHION_DIR / FASHION_FILES["test"][1]).is_file():
        unavailable(f"Fashion-MNIST is not installed in {FASHION_DIR} (make fashion: apt-get install "
                    "dataset-fashion-mnist)")


def test_full_fashion_keeps_its_own_test_split(fashion_installed):
    data = load_data("builtin:fashion", resolution=28, seed=0)
    assert len(data.y_train) + len(data.y_val) == 60000 and len(data.y_test) == 10000
    assert data.num_classes == 10 and data.classes[0] == "t-shirt/top"
    assert data.x_train.shape[1:] == (28, 28, 3) and data.x_test.shape == (10000, 28, 28, 3)
    assert np.bincount(data.y_test).tolist() == [1000] * 10
    train_rows = {x.tobytes() for x in data.x_train[:5000]}
    assert sum(x.tobytes() in train_rows for x in data.x_test[:2000]) <= 2  # test images are not training images


def test_subset_is_stratified_seeded_and_deterministic(fashion_installed):
    a = load_data("builtin:fashion:1000", resolution=32, seed=3)
    b = load_data("builtin:fashion:1000", resolution=32, seed=3)
    c = load_data("builtin:fashion:1000", resolution=32, seed=4)
    assert len(a.y_train) == 1000 and len(a.y_test) == 10000
    assert np.bincount(a.y_train, minlength=10).tolist() == [100] * 10  # Fashion-MNIST is balanced: 100 per class
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_val, b.y_val) and a.fingerprint == b.fingerprint
    assert not np.array_equal(a.x_train, c.x_train) and a.fingerprint != c.fingerprint
    assert a.x_train.shape[1:] == (32, 32, 3) and a.x_test.shape[1:] == (32, 32, 3)


def test_a_subset_shrinks_the_training_images_never_the_validation_split(fashion_installed):
    full = load_data("builtin:fashion", resolution=28, seed=0)
    sub = load_data("builtin:fashion:2000", resolution=28, seed=0)
    assert len(full.y_val) == len(sub.y_val) == 12000  # 20% of the 60k training images: scores that rank nets
    assert np.array_equal(full.x_val, sub.x_val) and np.array_equal(full.y_val, sub.y_val)
    val_rows = {x.tobytes() for x in sub.x_val}
    assert not any(x.tobytes() in val_rows for x in sub.x_train[:1000])  # training images are not val images
    full_train = {x.tobytes() for x in full.x_train}
    assert all(x.tobytes() in full_train for x in sub.x_train[:500])  # a subset of the full training split
    with pytest.raises(DataError, match=r"subset size 50000 is more than the 48000 training images"):
        load_data("builtin:fashion:50000", resolution=28)


def test_without_the_package_the_error_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("BNECK_FASHION_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist"):
        load_data("builtin:fashion")
    res = CliRunner().invoke(cli, ["evaluate", "mobilenet_v3_small", "--data", "builtin:fashion"])
    assert res.exit_code == 2 and "dataset-fashion-mnist" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize(("spec", "needle"), [("builtin:fashion:12", "subset size '12'"),
                                              ("builtin:fashion:abc", "subset size 'abc'"),
                                              ("builtin:digits:100", "no subsets"),
                                              ("builtin:cifar", "allowed builtin:digits, builtin:fashion")])
def test_bad_builtin_specs_are_one_line_errors(spec, needle):
    with pytest.raises(DataError, match=needle):
        load_data(spec)


def _idx(path: Path, magic: int, shape: tuple[int, ...], data: bytes) -> None:
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
    path.write_bytes(gzip.compress(head + data))


def test_damaged_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("BNECK_FASHION_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("test", 50)):
        images, labels = FASHION_FILES[split]
        _idx(tmp_path / images, 0x803, (n, 28, 28), rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes())
        _idx(tmp_path / labels, 0x801, (n,), (np.arange(n) % 10).astype(np.uint8).tobytes())
    data = load_data("builtin:fashion", resolution=28)  # a well-formed (tiny) copy loads
    assert len(data.y_test) == 50
    images = tmp_path / FASHION_FILES["train"][0]
    _idx(images, 0x803, (200, 28, 28), b"\0" * 1000)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: 1000 data bytes.*truncated"):
        load_data("builtin:fashion")
    images.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: cannot read"):
        load_data("builtin:fashion")
