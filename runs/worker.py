"""What a worker does for one task: proxy-train a search trial, or fine-tune a NetAdapt proposal, and send back
the result (and weights).

Runs in a worker process (local pool) or a Ray task on any node, which unpickles the task by its module path:
`TrialTask` and `FineTuneJob` live here for that. A task is plain data (an arch string, the run's training
settings), so nothing here depends on the driver's objects; a data set is loaded once per worker process and
reused by every task on it, trials and fine-tunes alike (`_data`).
"""

from __future__ import annotations

import io
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evaluators import ImageData
    from searchers.netadapt import FineTuneOutcome, FineTuneRequest, NetAdaptSettings

# (spec, resolution, seed) -> the data set and its holdout splits by fraction; one data set at a time
_DATA: dict[tuple[str, int, int], tuple[ImageData, dict[float, ImageData]]] = {}


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
    supernet: dict[str, Any] | None = None  # score on this supernet (`SupernetEvalConfig` fields) instead of training


@dataclass
class TrialOutcome:
    trial: int
    accuracy: float
    failed: bool
    reason: str
    worker: str
    info: dict[str, Any] = field(default_factory=dict)
    weights: bytes | None = None


@dataclass(frozen=True)
class FineTuneJob:
    """One NetAdapt fine-tune as a worker runs it: the algorithm's `searchers.netadapt.FineTuneRequest` (what to
    fine-tune and how, with its `holdout` meaning) plus what the run knows and the request does not: the data
    (spec, resolution, the train/val split's seed) and the device."""

    request: FineTuneRequest
    data: str
    resolution: int
    device: str = "cpu"
    data_seed: int = 0  # the train/val split's seed (the one the starting network was trained with)

    @property
    def index(self) -> int:
        """The request's index: outcomes are matched to requests by it."""
        return self.request.index

    @classmethod
    def of(cls, request: FineTuneRequest, settings: NetAdaptSettings) -> FineTuneJob:
        """The job for `request` of a NetAdapt run with `settings` (its data, resolution, seed and device)."""
        return cls(request, settings.data, settings.resolution, settings.device, settings.seed)


def _data(spec: str, resolution: int, seed: int, holdout: float | None = None) -> ImageData:
    """The data set, or with `holdout` its training split cut once more (`evaluators.data.holdout_split`), as
    loaded by an earlier task on this worker when it asked for the same data. A worker keeps one data set (and its
    holdout splits) at a time: runs do not mix them."""
    from evaluators import load_data
    from evaluators.data import holdout_split

    key = (spec, resolution, seed)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = (load_data(spec, resolution=resolution, seed=seed, progress=False), {})
    base, splits = _DATA[key]
    if holdout is None:
        return base
    if holdout not in splits:
        splits[holdout] = holdout_split(base, holdout, seed=seed)
    return splits[holdout]


# (checkpoint, its mtime, calib_images, val_images) -> the scorer; one supernet at a time per worker
_SCORERS: dict[tuple[str, float, int, int | None], Any] = {}


def _scorer(settings: dict[str, Any], threads: int) -> Any:
    """The supernet scorer of `settings`, loaded once per worker process (a rewritten checkpoint reloads)."""
    from evaluators.supernet import SupernetScorer, load_supernet, supernet_data

    path = str(settings["checkpoint"])
    key = (path, os.path.getmtime(path) if os.path.exists(path) else 0.0, int(settings.get("calib_images", 256)),
           settings.get("val_images"))
    if key not in _SCORERS:
        _SCORERS.clear()
        supernet, meta = load_supernet(path)
        data = supernet_data(meta)
        _SCORERS[key] = SupernetScorer(supernet, data, key[2], key[3], threads=threads)
    return _SCORERS[key]


def score_task(task: TrialTask) -> TrialOutcome:
    """Score `task.arch` on the task's supernet (no training): BN recalibrated, top-1 on the validation split."""
    import torch

    import search_space as ss

    t0 = time.perf_counter()
    assert task.supernet is not None
    scorer = _scorer(task.supernet, int(task.recipe.get("threads", 1)))
    arch = ss.Arch.parse(task.arch).replace(resolution=scorer.data.resolution, num_classes=scorer.data.num_classes)
    model = scorer.model(arch)
    top1, loss = scorer.score_model(model)
    weights = None
    if task.keep_weights:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        weights = buf.getvalue()
    elapsed = time.perf_counter() - t0
    info = {"evaluator": "supernet", "loss": loss, "score_s": elapsed, "worker_s": elapsed}
    failed = not math.isfinite(loss)
    return TrialOutcome(task.trial, float(top1), failed, "supernet score is not finite" if failed else "", _worker(),
                        info, weights)


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def evaluate_task(task: TrialTask) -> TrialOutcome:
    """Train `task.arch` with the run's recipe (or score it on the task's supernet); a diverged run is a failed
    outcome, not an exception."""
    if task.supernet is not None:
        return score_task(task)
    import torch

    import search_space as ss
    from bneck_common.paths import cache_dir
    from evaluators import ProxyTrainer, Recipe

    t0 = time.perf_counter()
    data = _data(task.data, task.resolution, task.seed)
    arch = ss.Arch.parse(task.arch)  # the trainer puts it at the data's resolution and classes
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
    return TrialOutcome(task.trial, float(result.top1), bool(result.failed), result.reason or "", _worker(), info,
                        weights)


def run_job(job: FineTuneJob) -> FineTuneOutcome:
    """Fine-tune and score one network (in any process: everything comes in the job); a diverged fine-tune is a
    failed outcome, not an exception."""
    import search_space as ss
    from evaluators import ProxyTrainer, Recipe, trained_arch
    from searchers.netadapt import FineTuneOutcome, load_model, state_bytes

    t0 = time.perf_counter()
    req = job.request
    data = _data(job.data, job.resolution, job.data_seed, req.holdout)
    arch = trained_arch(ss.Arch.parse(req.arch), data)  # the weights were trained at the data's classes
    model = load_model(arch, req.weights)
    trainer = ProxyTrainer(Recipe(**req.recipe), device=job.device)
    before = None
    if req.train:
        if req.holdout is not None:  # a proposal: what the cut alone did, beside what the fine-tune recovers
            before = float(trainer.score(model, data, "val")[0])
        result, model = trainer.fine_tune(arch, model, data, seed=req.seed)  # the recipe's BN momentum, on device
        if result.failed:
            return FineTuneOutcome(req.index, 0.0, math.inf, True, result.reason or "failed", None,
                                   time.perf_counter() - t0, _worker(), before)
        top1, loss = result.top1, result.loss
    else:
        top1, loss = trainer.score(model, data, "val")
    return FineTuneOutcome(req.index, float(top1), float(loss), False, "", state_bytes(model),
                           time.perf_counter() - t0, _worker(), before)


def run_task(task: TrialTask | FineTuneJob) -> TrialOutcome | FineTuneOutcome:
    """What an executor runs: a search trial (`TrialTask`) or a NetAdapt fine-tune (`FineTuneJob`)."""
    if isinstance(task, TrialTask):
        return evaluate_task(task)
    return run_job(task)


def init_worker(threads: int) -> None:
    """Pool initializer: K workers x `threads` torch threads stay within the machine's cores."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
