"""Where bneck writes by default; one rule shared by every package."""

from __future__ import annotations

import os
from pathlib import Path

RUNS_DIR = Path("bneck_runs")  # files a command produces, under the current directory unless --out is given


def cache_dir() -> Path:
    """Caches (latency tables, decoded datasets, evaluation results): $BNECK_CACHE or ~/.cache/bneck."""
    return Path(os.environ.get("BNECK_CACHE") or Path.home() / ".cache" / "bneck")
