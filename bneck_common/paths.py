"""Where bneck writes by default; one rule shared by every package."""

from __future__ import annotations

import os
from pathlib import Path

RUNS_DIR = Path("bneck_runs")  # files a command produces, under the current directory unless --out is given


def cache_dir() -> Path:
    """Caches (latency tables, decoded datasets, evaluation results): $BNECK_CACHE or ~/.cache/bneck."""
    return Path(os.environ.get("BNECK_CACHE") or Path.home() / ".cache" / "bneck")


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, fsync: bool = True) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never a part.

    The temp file is unique per process and call (two workers writing one cache entry never share it), is
    fsync'ed before the rename (a power cut after the rename leaves the new content, not an empty file) and is
    removed when the write fails (a full disk leaves nothing behind).
    """
    import tempfile

    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; a plain write would honour the umask
            f.write(payload)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
