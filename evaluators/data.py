"""Image classification data for proxy training: built-in digits, image folders and .npz files.

Every source becomes the same `ImageData`: uint8 NHWC arrays at one square resolution, a deterministic stratified
train/val split and the train set's channel statistics. An image folder is decoded once into a .npy under the cache
(ordered train rows first, then val) and memory-mapped afterwards, so reopening a 100k-image folder costs no decode and
no RAM. Mistakes raise `DataError` with one line naming the file or field and what is allowed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bneck_common.paths import atomic_write
from bneck_common.paths import cache_dir as default_cache_dir
from bneck_common.progress import progress_bar

if TYPE_CHECKING:
    from search_space import Arch

BUILTINS: tuple[str, ...] = ("digits", "fashion")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist (MIT); BNECK_FASHION_DIR
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MIN_RESOLUTION = 8
MAX_RESOLUTION = 1024
CACHE_FORMAT = "bneck-data/1"
ALLOWED_FORMS = ("builtin:digits, builtin:fashion[:N], an image folder PATH/<class>/*.png|jpg|jpeg|bmp|webp, "
                 "or a .npz file with arrays x and y")
_CHUNK_BYTES = 64 << 20  # decode buffer: bounds memory whatever the folder size


class DataError(ValueError):
    """A user-facing data problem (bad spec, file, array or argument); the one-line message names it."""


def trained_arch(arch: Arch, data: Any) -> Arch:
    """`arch` as it is trained and scored on `data`: at the data's resolution and class count. The one place
    training sets them (the trainer, the zero-cost proxies and the workers all come here); what a network costs
    deployed is the latency model's (`latency.LatencyModel.deployed`)."""
    return arch.replace(resolution=data.resolution, num_classes=data.num_classes)


@dataclass(frozen=True, eq=False, repr=False)
class ImageData:
    """A classification dataset ready for training: uint8 (N, R, R, 3) images, int64 labels, train/val split.

    `x_train`/`x_val` may be read-only memory maps (image folders); every array is read-only, so code that would
    modify them fails on the built-in data in tests as it would on a folder. `mean`/`std` are per-channel over
    `x_train / 255`, for normalization. `eq=False`: comparing arrays elementwise is never what `==` should mean.
    `x_test`/`y_test`: a test split the dataset ships (Fashion-MNIST's 10k), which train/val never touch: the
    final numbers come from it; None for sources without one.
    """

    source: str
    fingerprint: str
    classes: tuple[str, ...]
    resolution: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        test = f", test={len(self.y_test)}" if self.y_test is not None else ""
        return (f"ImageData(source={self.source!r}, fingerprint={self.fingerprint!r}, classes={self.num_classes}, "
                f"resolution={self.resolution}, train={len(self.y_train)}, val={len(self.y_val)}{test})")


def load_data(spec: str | os.PathLike[str], resolution: int = 32, seed: int = 0, val_fraction: float = 0.2,
              cache_dir: str | os.PathLike[str] | None = None, progress: bool = False) -> ImageData:
    """Load `builtin:digits`, an image folder `PATH/<class>/*.png|jpg|...` or a `.npz` file (arrays x, y).

    The split is stratified and depends only on `seed` and `val_fraction`; the same arguments give byte-identical
    arrays. Image folders are cached under `cache_dir` (default `$BNECK_CACHE` or `~/.cache/bneck`) in `data/`.
    """
    resolution, seed, val_fraction = _check_args(resolution, seed, val_fraction)
    text = os.fspath(spec) if isinstance(spec, str | os.PathLike) else spec
    if not isinstance(text, str):
        raise DataError(f"data spec must be a string or path, got {spec!r}: use {ALLOWED_FORMS}")
    if not text:
        raise DataError(f"data spec is empty: use {ALLOWED_FORMS}")
    if text.startswith("builtin:"):
        name, _, limit = text.removeprefix("builtin:").partition(":")
        if name not in BUILTINS:
            allowed = ", ".join(f"builtin:{b}" for b in BUILTINS)
            raise DataError(f"unknown builtin dataset {text!r}: allowed {allowed} (builtin:fashion:N for a subset)")
        if name == "fashion":
            return _load_fashion(text, _parse_limit(text, limit), resolution, seed, val_fraction)
        if limit:
            raise DataError(f"{text!r}: builtin:digits has no subsets (1,797 images); a size is for builtin:fashion")
        return _load_digits(text, resolution, seed, val_fraction)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_folder(text, path, resolution, seed, val_fraction, _cache_root(cache_dir), progress)
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return _load_npz(text, path, resolution, seed, val_fraction)
        raise DataError(f"data {text!r} is a file but not a .npz: use {ALLOWED_FORMS}")
    hint = f" (did you mean builtin:{text}?)" if text in BUILTINS else ""
    raise DataError(f"data {text!r}: no such file or directory{hint}; use {ALLOWED_FORMS}")


# ---- arguments, split, statistics -------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _check_args(resolution: Any, seed: Any, val_fraction: Any) -> tuple[int, int, float]:
    if not _is_int(resolution):
        raise DataError(f"resolution must be an integer in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution!r}")
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise DataError(f"resolution {resolution} not in [{MIN_RESOLUTION}, {MAX_RESOLUTION}]")
    if not _is_int(seed) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    real = isinstance(val_fraction, int | float | np.integer | np.floating)
    if not real or isinstance(val_fraction, bool | np.bool_):
        raise DataError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise DataError(f"val_fraction {val_fraction!r} not in (0, 1)")
    return int(resolution), int(seed), float(val_fraction)


def _check_class_sizes(y: np.ndarray, classes: Sequence[str], where: str) -> None:
    """Every class needs a train and a val image, else the val accuracy of that class is undefined."""
    counts = np.bincount(y, minlength=len(classes))
    for c in np.flatnonzero(counts < 2):
        raise DataError(f"{where}: class {classes[c]!r} has {counts[c]} image(s), need >= 2 for a train/val split")


def _split(y: np.ndarray, num_classes: int, seed: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: per class, round(n·val_fraction) clamped to [1, n-1] go to val; indices sorted."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = min(max(math.floor(len(idx) * val_fraction + 0.5), 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


class _ChannelStats:
    """Exact per-channel sums of uint8 pixels (Python ints), so chunked and whole-array stats agree bit for bit."""

    def __init__(self) -> None:
        self.n = 0
        self.s = [0, 0, 0]
        self.q = [0, 0, 0]

    def add(self, x: np.ndarray) -> None:
        """x: (n, R, R, 3) uint8. Rows of R·3 values keep numpy's reduction loops long (an (M, 3) sum is 10x slower)."""
        x = np.asarray(x)
        if not len(x):
            return
        rows = x.reshape(-1, x.shape[-2] * 3)
        step = max(1, _CHUNK_BYTES // (rows.shape[1] * 4))  # uint32 squares: bounded temporary memory
        for start in range(0, len(rows), step):
            part = rows[start:start + step]
            s = part.sum(axis=0, dtype=np.int64).reshape(-1, 3).sum(axis=0)
            q = np.square(part, dtype=np.uint32).sum(axis=0, dtype=np.int64).reshape(-1, 3).sum(axis=0)
            self.s = [a + int(b) for a, b in zip(self.s, s, strict=True)]
            self.q = [a + int(b) for a, b in zip(self.q, q, strict=True)]
        self.n += x.size // 3

    def result(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        n = self.n
        mean = [s / (n * 255) for s in self.s]
        std = [max(math.sqrt((n * q - s * s) / (n * n * 255 * 255)), 1e-3) for s, q in zip(self.s, self.q, strict=True)]
        return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])


def _fingerprint(kind: str, content: str, resolution: int, seed: int, val_fraction: float) -> str:
    text = "\n".join([CACHE_FORMAT, kind, content, str(resolution), str(seed), repr(val_fraction)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _in_memory(source: str, fingerprint: str, classes: tuple[str, ...], resolution: int, x: np.ndarray,
               y: np.ndarray, seed: int, val_fraction: float) -> ImageData:
    train, val = _split(y, len(classes), seed, val_fraction)
    x_train = _readonly(x[train])
    stats = _ChannelStats()
    stats.add(x_train)
    mean, std = stats.result()
    return ImageData(source, fingerprint, classes, resolution, x_train, _readonly(y[train].astype(np.int64)),
                     _readonly(x[val]), _readonly(y[val].astype(np.int64)), mean, std)


def _resize(x: np.ndarray, resolution: int) -> np.ndarray:
    """(N, H, W) or (N, H, W, 3) uint8 -> (N, R, R, 3), Pillow bilinear per image; gray is resized once, then
    replicated to 3 channels."""
    from PIL import Image

    gray = x.ndim == 3
    if x.shape[1:3] == (resolution, resolution):
        out = x
    else:
        out = np.empty((len(x), resolution, resolution, *(() if gray else (3,))), np.uint8)
        for i in range(len(x)):
            out[i] = np.asarray(Image.fromarray(np.ascontiguousarray(x[i])).resize(
                (resolution, resolution), Image.Resampling.BILINEAR))
    if gray:
        rgb = np.empty((*out.shape, 3), np.uint8)
        for c in range(3):  # 6x faster than a broadcast assignment or np.repeat (long inner loops)
            rgb[..., c] = out
        return rgb
    return np.ascontiguousarray(out)


# ---- builtin:digits -----------------------------------------------------------------------------------------------
def _load_digits(source: str, resolution: int, seed: int, val_fraction: float) -> ImageData:
    """scikit-learn's 1,797 8x8 digits (shipped with sklearn, no download): a real dataset that trains in seconds."""
    import sklearn
    from sklearn.datasets import load_digits

    digits = load_digits()
    x8 = (digits.images * (255 / 16) + 0.5).astype(np.uint8)  # values are the integers 0..16
    y = digits.target.astype(np.int64)
    fp = _fingerprint("digits", f"sklearn-digits:{sklearn.__version__}", resolution, seed, val_fraction)
    classes = tuple(str(i) for i in range(10))
    return _in_memory(source, fp, classes, resolution, _resize(x8, resolution), y, seed, val_fraction)


# ---- builtin:fashion ----------------------------------------------------------------------------------------------
def _parse_limit(text: str, limit: str) -> int | None:
    if not limit:
        return None
    if not limit.isdigit() or not 20 <= int(limit) <= 60000:
        raise DataError(f"{text!r}: subset size {limit!r} must be an integer in [20, 60000] (training images)")
    return int(limit)


def fashion_dir() -> Path:
    return Path(os.environ.get("BNECK_FASHION_DIR", FASHION_DIR))


def fashion_installed() -> bool:
    """True when builtin:fashion can load (the four IDX files are where `fashion_dir()` says)."""
    root = fashion_dir()
    return all((root / name).is_file() for pair in FASHION_FILES.values() for name in pair)


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    """An IDX file (gzip): big-endian magic, then `dims` sizes, then uint8 data."""
    import gzip

    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({_one_line(exc)}); reinstall dataset-fashion-mnist") from None
    head = 4 + 4 * dims
    if len(raw) < head or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path}: not an IDX file of the expected kind (magic {magic:#x}); reinstall the package")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    if len(raw) - head != math.prod(shape):
        raise DataError(f"{path}: {len(raw) - head} data bytes, header says {shape}: file is truncated")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(shape)


def load_fashion_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's own `train` (60,000) or `test` (10,000) split: uint8 (N, 28, 28) images and labels."""
    root = fashion_dir()
    images, labels = (root / name for name in FASHION_FILES[split])
    if not images.is_file() or not labels.is_file():
        raise DataError(f"builtin:fashion needs Fashion-MNIST in {root} (missing {images.name}): install Debian's "
                        "package: `sudo apt-get install dataset-fashion-mnist` (or `make fashion`), or set "
                        "BNECK_FASHION_DIR to a folder with the four IDX .gz files")
    x, y = _read_idx(images, 0x803, 3), _read_idx(labels, 0x801, 1)
    if len(x) != len(y) or x.shape[1:] != (28, 28) or (len(y) and int(y.max()) > 9):
        raise DataError(f"{root}: {split} images {x.shape} and labels {y.shape} do not match Fashion-MNIST's")
    return x, y.astype(np.int64)


def _subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A stratified, seeded subset of n indices (per class in proportion; sorted)."""
    rng = np.random.default_rng([seed, n])
    classes = np.unique(y)
    per = np.floor(n * np.bincount(y)[classes] / len(y)).astype(int)
    per[: n - per.sum()] += 1  # the remainder, one each to the first classes
    picks = [rng.choice(np.flatnonzero(y == c), k, replace=False) for c, k in zip(classes, per, strict=True)]
    return np.sort(np.concatenate(picks))


def _load_fashion(source: str, limit: int | None, resolution: int, seed: int, val_fraction: float) -> ImageData:
    """Fashion-MNIST (70k real 28x28 clothing images, 10 classes): its 60k training images split into train and
    val (stratified, seeded, `val_fraction` of them: 12,000 at the default 0.2), its own 10k test split kept apart
    as x_test/y_test. `limit` (builtin:fashion:N) keeps N of the training images, a stratified seeded subset, and
    the SAME validation split as the full set: a subset makes training data smaller, never the measurement.

    Why the validation split does not shrink with the subset: two nets of this space differ by ~0.5 points of
    top-1 on fashion, while 2,000 images (20% of a 10k subset) score one net with a sampling error of about as
    much. Measured (benchmarks/results/proxy_fidelity_val2000.json): one long training per arch, scored on its
    2,000 validation images and on the 10,000 test images, ranked 15 archs with Kendall τ 0.38 between the two:
    the measurement, not the proxy, was the ceiling."""
    x, y = load_fashion_split("train")
    x_test, y_test = load_fashion_split("test")
    train, val = _split(y, len(FASHION_CLASSES), seed, val_fraction)
    if limit is not None:
        if limit > len(train):
            raise DataError(f"{source!r}: subset size {limit} is more than the {len(train)} training images left "
                            f"after the validation split (val_fraction {val_fraction:g})")
        train = train[_subset(y[train], limit, seed)]
    listing = "|".join(f"{n}:{(fashion_dir() / n).stat().st_size}" for pair in FASHION_FILES.values() for n in pair)
    # the full set keeps the fingerprint it had (same arrays); a subset's is new (its val split grew in v0.2)
    detail = f"{listing}|limit=None" if limit is None else f"{listing}|train={limit}|val=of-full-set"
    fp = _fingerprint("fashion", detail, resolution, seed, val_fraction)
    x_train = _readonly(_resize(x[train], resolution))
    stats = _ChannelStats()
    stats.add(x_train)
    mean, std = stats.result()
    return ImageData(source, fp, FASHION_CLASSES, resolution, x_train, _readonly(y[train]),
                     _readonly(_resize(x[val], resolution)), _readonly(y[val]), mean, std,
                     x_test=_readonly(_resize(x_test, resolution)), y_test=_readonly(y_test))


# ---- .npz -----------------------------------------------------------------------------------------------------------
def _load_npz(source: str, path: Path, resolution: int, seed: int, val_fraction: float) -> ImageData:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # zip, pickle and format errors all mean the same thing to the user
        raise DataError(f"{source}: not a readable .npz file ({_one_line(exc)})") from None
    if not hasattr(archive, "files"):
        raise DataError(f"{source}: holds a single array, expected an .npz archive with arrays x and y")
    with archive:
        for key in ("x", "y"):
            if key not in archive.files:
                found = ", ".join(sorted(archive.files)) or "none"
                raise DataError(f"{source}: missing array {key!r} (found: {found}); expected x (images) and y (labels)")
        try:
            x, y = archive["x"], archive["y"]
        except Exception as exc:
            raise DataError(f"{source}: cannot read x/y ({_one_line(exc)})") from None
    if x.dtype != np.uint8:
        raise DataError(f"{source}: x dtype {x.dtype}, expected uint8")
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[3] in (1, 3))) or min(x.shape[1:3], default=0) < 1:
        raise DataError(f"{source}: x shape {x.shape}, expected N×H×W or N×H×W×C with C in {{1,3}}")
    if y.ndim != 1:
        raise DataError(f"{source}: y shape {y.shape}, expected (N,) integer labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: y dtype {y.dtype}, expected integers")
    if len(y) != len(x):
        raise DataError(f"{source}: y has {len(y)} labels but x has {len(x)} images")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{source}: y has negative label {int(y.min())}; labels must be 0..K-1")
    k = int(y.max()) + 1 if len(y) else 0
    if k < 2:
        raise DataError(f"{source}: y has {k} class(es), need >= 2")
    if k > len(y):
        raise DataError(f"{source}: y label {k - 1} out of range: {len(y)} images cannot cover classes 0..{k - 1}")
    y = y.astype(np.int64)
    missing = np.flatnonzero(np.bincount(y, minlength=k) == 0)
    if missing.size:
        raise DataError(f"{source}: y labels out of range: max label is {k - 1} but class {missing[0]} has no "
                        f"images; labels must be 0..K-1 with every class present")
    classes = tuple(str(i) for i in range(k))
    _check_class_sizes(y, classes, source)
    if x.ndim == 4 and x.shape[3] == 1:
        x = x[..., 0]
    fp = _fingerprint("npz", digest.hexdigest(), resolution, seed, val_fraction)
    return _in_memory(source, fp, classes, resolution, _resize(x, resolution), y, seed, val_fraction)


# ---- image folders --------------------------------------------------------------------------------------------------
def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()



def _scan_folder(source: str, root: Path) -> tuple[tuple[str, ...], list[Path], np.ndarray, str]:
    """Classes (sorted subfolders), image paths (class-major, sorted by name), labels, and a hash of the listing
    (relative paths, sizes, mtimes): the folder's content identity without reading any image."""
    try:
        classes = tuple(sorted(e.name for e in os.scandir(root) if not e.name.startswith(".") and e.is_dir()))
    except OSError as exc:
        raise DataError(f"image folder {source}: cannot list ({_one_line(exc)})") from None
    if len(classes) < 2:
        raise DataError(f"image folder {source}: {len(classes)} class subfolder(s), need >= 2 "
                        "(PATH/<class>/*.png|jpg|jpeg|bmp|webp)")
    digest = hashlib.sha256()
    paths: list[Path] = []
    counts: list[int] = []
    for cls in classes:
        folder = root / cls
        try:
            entries = sorted((e for e in os.scandir(folder) if not e.name.startswith(".")
                              and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()),
                             key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"class folder {folder}: cannot list ({_one_line(exc)})") from None
        if not entries:
            raise DataError(f"class folder {folder} has no images (*.png, *.jpg, *.jpeg, *.bmp, *.webp)")
        for e in entries:
            st = e.stat()
            digest.update(f"{cls}/{e.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(errors="surrogateescape"))
            paths.append(folder / e.name)
        counts.append(len(entries))
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    return classes, paths, labels, digest.hexdigest()


def _decode(path: Path, resolution: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            # JPEG only: decode at the smallest 1/2, 1/4 or 1/8 scale still >= the target; several times faster
            # on photos, and the bilinear resize below sees the same (or more) pixels than it keeps
            im.draft(None, (resolution, resolution))
            rgb = im.convert("RGB")
        return np.asarray(rgb.resize((resolution, resolution), Image.Resampling.BILINEAR))
    except Exception as exc:  # any decoder failure on a user's file is that file's problem
        raise DataError(f"image {path}: cannot decode ({_one_line(exc)})") from None


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, description: str) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda _: None
        return
    with progress_bar(description) as prog:
        task = prog.add_task(description, total=total)
        yield lambda k: prog.advance(task, k)



def _cache_paths(base: Path) -> tuple[Path, Path, Path]:
    return base.with_name(base.name + ".npy"), base.with_name(base.name + ".labels.npy"), \
        base.with_name(base.name + ".json")


def _open_cache(base: Path, y: np.ndarray, resolution: int) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The cached images if all three files are there and agree with the scan; None means (re)build."""
    x_path, y_path, meta_path = _cache_paths(base)
    try:
        meta = json.loads(meta_path.read_text())
        x = np.load(x_path, mmap_mode="r")
        labels = np.load(y_path)
    except (OSError, ValueError):
        return None
    if (meta.get("format") != CACHE_FORMAT or x.dtype != np.uint8 or x.shape != (len(y), resolution, resolution, 3)
            or not np.array_equal(labels, y)):
        return None
    return x, meta


def _build_cache(base: Path, source: str, paths: Sequence[Path], y: np.ndarray, n_train: int, resolution: int,
                 classes: tuple[str, ...], progress: bool) -> None:
    """Decode every image once, in chunks, into `<base>.npy` (train rows first), plus labels and metadata.

    The .npy is written sequentially rather than through a memory map: on a full disk a write then fails with an
    OSError instead of killing the process with SIGBUS. Each file appears atomically; the metadata last.
    """
    x_path, y_path, meta_path = _cache_paths(base)
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cache dir {base.parent}: cannot create ({_one_line(exc)})") from None
    n, image_bytes = len(paths), resolution * resolution * 3
    free = shutil.disk_usage(base.parent).free
    if free < n * image_bytes + (64 << 20):
        raise DataError(f"cache dir {base.parent}: decoding {source} needs {n * image_bytes / 1e9:.2f} GB, "
                        f"{free / 1e9:.2f} GB free; pass another cache_dir or set BNECK_CACHE")
    chunk = max(1, min(n, _CHUNK_BYTES // image_bytes))
    stats = _ChannelStats()

    def write_images(f: Any) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": (n, resolution, resolution, 3)}
        np.lib.format.write_array_header_1_0(f, header)
        buf = np.empty((chunk, resolution, resolution, 3), np.uint8)
        with _progress_bar(progress, n, f"decoding {Path(source).name or source}") as advance:
            for start in range(0, n, chunk):
                k = min(chunk, n - start)
                for i in range(k):
                    buf[i] = _decode(paths[start + i], resolution)
                stats.add(buf[:max(0, min(k, n_train - start))])
                f.write(buf[:k].data)
                advance(k)

    atomic_write(x_path, write_images)
    atomic_write(y_path, lambda f: np.save(f, y))
    mean, std = stats.result()
    meta = {"format": CACHE_FORMAT, "source": source, "classes": list(classes), "resolution": resolution,
            "n_train": n_train, "n_val": n - n_train, "mean": mean, "std": std}
    atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))


def _load_folder(source: str, root: Path, resolution: int, seed: int, val_fraction: float, cache_root: Path,
                 progress: bool) -> ImageData:
    classes, paths, labels, listing = _scan_folder(source, root)
    _check_class_sizes(labels, classes, f"image folder {source}")
    fp = _fingerprint("folder", listing, resolution, seed, val_fraction)
    train, val = _split(labels, len(classes), seed, val_fraction)
    order = np.concatenate([train, val])
    y = labels[order]
    base = cache_root / "data" / fp
    cached = _open_cache(base, y, resolution)
    if cached is None:
        _build_cache(base, source, [paths[i] for i in order], y, len(train), resolution, classes, progress)
        cached = _open_cache(base, y, resolution)
        if cached is None:
            raise DataError(f"cache {base}.npy: written but not readable back; remove it and retry")
    x, meta = cached
    n_train = len(train)
    mean, std = meta["mean"], meta["std"]
    return ImageData(source, fp, classes, resolution, x[:n_train], _readonly(y[:n_train]), x[n_train:],
                     _readonly(y[n_train:]), (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]))


def holdout_split(data: ImageData, fraction: float = 0.2, seed: int = 0) -> ImageData:
    """The training split cut once more: `x_train` keeps 1 - fraction, `x_val` becomes the held-out rest.

    NetAdapt ranks its proposals on data that neither trained them nor reports the final accuracy: the run's own
    validation split stays untouched for that. mean/std stay the parent's (weights trained with them are reused).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise DataError(f"holdout fraction must be in (0, 1), got {fraction!r}")
    _check_class_sizes(data.y_train, data.classes, f"{data.source} (training split)")
    train, hold = _split(np.asarray(data.y_train), data.num_classes, seed, float(fraction))
    fingerprint = hashlib.sha256(f"{data.fingerprint}|holdout|{fraction!r}|{seed}".encode()).hexdigest()[:16]
    return ImageData(data.source, fingerprint, data.classes, data.resolution,
                     _readonly(np.asarray(data.x_train[train])), _readonly(np.asarray(data.y_train[train])),
                     _readonly(np.asarray(data.x_train[hold])), _readonly(np.asarray(data.y_train[hold])),
                     data.mean, data.std, data.x_test, data.y_test)
