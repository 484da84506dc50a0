"""What a worker does for one trial: proxy-train an architecture and send back its accuracy (and weights).

Runs in a worker process (local pool) or a Ray task on any node. It receives plain data (an arch string and
the run's training settings), so nothing here depends on the driver's objects; data sets are loaded once per
worker process and reused.
"""

from __future__ import annotations

import io
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

_DATA: dict[tuple[str, int, int], Any] = {}


@dataclass(frozen=True)
class TrialTask:
    """One evaluation request: everything a worker needs, as plain values (picklable, small)."""

    trial: int
    arch: str
    data: str
    resolution: int
    recipe: dict[str, Any]
    seed: int
    device: str = "cpu"
    eval_cache: bool = True
    keep_weights: bool = False
    train_seed: int | None = None  # another training seed on the same data split (confirmation); None: seed


@dataclass
class TrialOutcome:
    trial: int
    accuracy: float
    failed: bool
    reason: str
    worker: str
    info: dict[str, Any] = field(default_factory=dict)
    weights: bytes | None = None


def _data(spec: str, resolution: int, seed: int) -> Any:
    from evaluators import load_data

    key = (spec, resolution, seed)
    if key not in _DATA:
        _DATA.clear()  # one data set per worker at a time: runs do not mix them
        _DATA[key] = load_data(spec, resolution=resolution, seed=seed, progress=False)
    return _DATA[key]


def evaluate_task(task: TrialTask) -> TrialOutcome:
    """Train `task.arch` with the run's recipe; a diverged run is a failed outcome, not an exception."""
    import torch

    import search_space as ss
    from evaluators import ProxyTrainer, Recipe
    from search_space.paths import cache_dir

    t0 = time.perf_counter()
    data = _data(task.data, task.resolution, task.seed)
    arch = ss.Arch.parse(task.arch).replace(resolution=data.resolution, num_classes=data.num_classes)
    trainer = ProxyTrainer(Recipe(**task.recipe), device=task.device,
                           cache_dir=cache_dir() if task.eval_cache else None)
    train_seed = task.seed if task.train_seed is None else task.train_seed
    result = trainer.evaluate(arch, data, seed=train_seed, return_model=task.keep_weights)
    weights = None
    if task.keep_weights and not result.failed:
        buf = io.BytesIO()
        torch.save(result.model.state_dict(), buf)  # type: ignore[attr-defined]
        weights = buf.getvalue()
    info = {"train_s": result.train_s, "loss": result.loss, "cached": result.cached, "epochs": result.epochs,
            "worker_s": time.perf_counter() - t0}
    return TrialOutcome(task.trial, float(result.top1), bool(result.failed), result.reason or "",
                        f"{socket.gethostname()}:{os.getpid()}", info, weights)


def run_task(task: Any) -> Any:
    """What an executor runs: a search trial (`TrialTask`) or a NetAdapt fine-tune (`searchers.FineTuneJob`)."""
    if isinstance(task, TrialTask):
        return evaluate_task(task)
    from searchers.netadapt import run_job

    return run_job(task)


def init_worker(threads: int) -> None:
    """Pool initializer: K workers x `threads` torch threads stay within the machine's cores."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
