"""Where bneck writes by default; one rule shared by every package."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

RUNS_DIR = Path("bneck_runs")  # files a command produces, under the current directory unless --out is given


def cache_dir() -> Path:
    """Caches (latency tables, decoded datasets, evaluation results): $BNECK_CACHE or ~/.cache/bneck."""
    return Path(os.environ.get("BNECK_CACHE") or Path.home() / ".cache" / "bneck")


def atomic_write(path: str | os.PathLike[str], data: bytes | str | Callable[[BinaryIO], object], *,
                 fsync: bool = True) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never a part.

    `data` is the content, or a function that writes it to the open file (a stream too large to hold). The temp
    file is unique per process and call (two workers writing one cache entry never share it), is fsync'ed
    before the rename (a power cut after the rename leaves the new content, not an empty file) and is removed
    when the write fails (a full disk or an interrupt leaves nothing behind).
    """
    import tempfile

    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; a plain write would honour the umask
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_dir(path: str | os.PathLike[str], files: dict[str, bytes]) -> None:
    """Replace the directory `path` by one holding exactly `files` (name -> content), each file fsync'ed.

    The new directory is complete before it takes the name. A crash leaves the old directory, or (between the
    two renames of a replacement, microseconds) none, and at most hidden `.NAME.*.tmp` siblings, which the next
    call for that name removes. NetAdapt writes each iteration once, so there is no old directory to lose.
    """
    import tempfile

    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        for name, data in files.items():
            atomic_write(tmp / name, data)
        if final.exists():  # a directory cannot be renamed over a non-empty one: move the old aside first
            old = final.with_name(f".{final.name}.old.tmp")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
