"""Shared benchmark plumbing: results go to benchmarks/results/<name>.json, a summary to stdout."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from bneck_common.paths import atomic_write

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import os

    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write(name: str, data: dict[str, Any], out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"benchmark": name, "machine": machine(), **data}, indent=2) + "\n")
    return path
