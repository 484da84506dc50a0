"""Proxy training: how good a candidate is after a short, real training run (MnasNet's proxy task).

Deterministic for a seed (fixed threads, seeded init, seeded shuffling and augmentation); a diverging run
ends as a failed `Result` instead of an exception; results are cached on disk by (arch, data, recipe, seed).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bneck_common.paths import atomic_write
from bneck_common.progress import progress_bar
from evaluators.data import trained_arch
from search_space import Arch, build_model, count

OPTIMIZERS = ("sgd", "rmsprop")


class RecipeError(ValueError):
    """A training recipe field is out of range; the message names it."""


# The proxy budget when neither steps nor epochs is given. benchmarks/proxy_fidelity.py (34 archs on fashion):
# Kendall tau vs a long training 0.33 at 300 steps, 0.46 at 600, seed std 0.80 vs 0.33 points; a 600-step trial
# takes 25 s median here in channels-last (69 s for a 90th-percentile-MAdds net; benchmarks/channels_last.py), inside
# the 60 s aim for most of a search. 300 until 2026-12-07.
DEFAULT_STEPS = 600


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a proxy training run besides the architecture, data and seed.

    The budget is counted in optimizer steps, not epochs, so that it means the same on a 1,000-image folder and
    on a 60,000-image set: `steps` (default DEFAULT_STEPS), or `epochs` (passes over the training split, never
    fewer than `min_steps` steps: 3 epochs of a 1,200-image folder are 57 steps, which left V3-Small at chance).
    Warm-up is a fraction of the budget, then cosine decay to zero; `max_steps` caps either budget.
    """

    steps: int | None = None
    epochs: float | None = None
    min_steps: int = 100  # floor of an epoch budget
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 4e-5  # not applied to depthwise convs, BN or biases
    warmup_fraction: float = 0.05  # linear warm-up over this share of the steps
    label_smoothing: float = 0.1
    bn_momentum: float = 0.1  # proxy runs are short: BN statistics must settle in a few hundred steps
    augment_crop: bool = False  # random-resized-crop (scale 0.6-1); off by default for digit-like data
    augment_flip: bool = False
    max_steps: int | None = None  # cap on the steps of either budget (None: no cap)
    threads: int = 2  # part of the recipe hash: reductions differ with the thread count
    # NHWC activations and weights while training: 1.5-2.8x faster steps on 2 CPU cores at 32 px (interleaved
    # timing of 4 nets of the small space, 2026-12-07), other float rounding, hence part of the hash.
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise RecipeError(f"recipe: give steps or epochs, not both (steps={self.steps}, epochs={self.epochs})")
        if self.steps is None and self.epochs is None:
            object.__setattr__(self, "steps", DEFAULT_STEPS)  # so Recipe() and Recipe(steps=DEFAULT_STEPS) hash alike
        checks = [("steps", self.steps is None or (_is_int(self.steps) and self.steps >= 1)),
                  ("epochs", self.epochs is None or self.epochs > 0),
                  ("min_steps", _is_int(self.min_steps) and self.min_steps >= 1),
                  ("batch_size", self.batch_size >= 1),
                  ("optimizer", self.optimizer in OPTIMIZERS), ("lr", self.lr > 0),
                  ("momentum", 0 <= self.momentum < 1), ("weight_decay", self.weight_decay >= 0),
                  ("warmup_fraction", 0 <= self.warmup_fraction < 1),
                  ("label_smoothing", 0 <= self.label_smoothing < 1),
                  ("bn_momentum", 0 < self.bn_momentum <= 1), ("threads", self.threads >= 1),
                  ("max_steps", self.max_steps is None or self.max_steps >= 1)]
        for name, ok in checks:
            if not ok:
                allowed = f" (allowed: {', '.join(OPTIMIZERS)})" if name == "optimizer" else ""
                raise RecipeError(f"recipe field {name}={getattr(self, name)!r} is out of range{allowed}")

    def total_steps(self, n_train: int) -> int:
        """Optimizer steps of a run on `n_train` training images."""
        if self.steps is not None:
            total = self.steps
        else:
            assert self.epochs is not None
            total = max(self.min_steps, round(self.epochs * max(1, math.ceil(n_train / self.batch_size))))
        return total if self.max_steps is None else min(total, self.max_steps)

    def warmup_steps(self, total: int) -> int:
        return round(self.warmup_fraction * total)

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate of step `step` (0-based) of a `total_steps` run: linear warm-up, then cosine to 0."""
        warmup = self.warmup_steps(total_steps)
        if step < warmup:
            return self.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * self.lr * (1 + math.cos(math.pi * progress))

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Recipe:
        """A recipe from its dict, also from the epoch-based format before step budgets (`warmup_epochs`, no
        floor): the same schedule (warm-up share = warmup_epochs / epochs, no floor), so old rows re-run alike."""
        doc = dict(doc)
        if "warmup_epochs" in doc:
            warmup = float(doc.pop("warmup_epochs"))
            epochs = float(doc.get("epochs") or 1.0)
            doc.setdefault("warmup_fraction", min(warmup / epochs, 0.99) if epochs > 0 else 0.0)
            doc.setdefault("min_steps", 1)
        return cls(**doc)

    @property
    def recipe_hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class Result:
    """One evaluation. `failed` runs (diverged) carry a `reason` and top1 = 0."""

    arch_id: str
    top1: float
    loss: float
    train_loss: float
    train_s: float
    epochs: float
    steps: int
    params: int
    madds: int
    failed: bool = False
    reason: str | None = None
    cached: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_WEIGHTS_CAP_BYTES = 2 * 1024**3  # trained weights the eval cache keeps (6-17 MB each at 32 px)
STALE_TEMP_S = 3600.0  # a temp file this old belongs to a writer that died


@dataclass(frozen=True)
class CacheUsage:
    results: int
    weights: int
    weights_bytes: int
    removed: int = 0
    freed_bytes: int = 0


def prune_eval_cache(cache_dir: str | os.PathLike[str], weights_cap_bytes: int = DEFAULT_WEIGHTS_CAP_BYTES,
                     now: float | None = None) -> CacheUsage:
    """Keep the evaluation cache's trained weights under `weights_cap_bytes`, removing the least recently
    written first, and remove temp files of writers that died. Results (small JSON) are always kept: a search
    resumed or repeated still skips every training it did; only a request for weights retrains. Safe while
    other processes use the cache: a weights file removed under a reader is a cache miss, not an error."""
    evals = Path(cache_dir) / "evals"
    if not evals.is_dir():
        return CacheUsage(0, 0, 0)
    now = time.time() if now is None else now
    removed = freed = 0
    weights: list[tuple[float, int, Path]] = []
    results = 0
    for path in evals.iterdir():
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if path.name.endswith(".tmp"):
            if now - st.st_mtime > STALE_TEMP_S:
                path.unlink(missing_ok=True)
                removed, freed = removed + 1, freed + st.st_size
        elif path.suffix == ".pt":
            weights.append((st.st_mtime, st.st_size, path))
        elif path.suffix == ".json":
            results += 1
    weights.sort()
    total = sum(size for _, size, _ in weights)
    kept = len(weights)
    for _, size, path in weights:
        if total <= weights_cap_bytes:
            break
        path.unlink(missing_ok=True)
        total, kept, removed, freed = total - size, kept - 1, removed + 1, freed + size
    return CacheUsage(results, kept, total, removed, freed)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
            if name == "bias" or isinstance(module, nn.BatchNorm2d) or depthwise:
                no_decay.append(p)
            else:
                decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over `model` (no weight decay on depthwise convs, BN or biases)."""
    groups = _param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
    # MnasNet's RMSprop (decay 0.9, momentum 0.9, eps 1e-3 in TF terms)
    return torch.optim.RMSprop(groups, lr=recipe.lr, alpha=0.9, momentum=recipe.momentum, eps=1e-3)


def to_batch(x: np.ndarray, data: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC images (a slice of a split) as the normalized float NCHW batch the models take, on `device`."""
    mean = torch.tensor(data.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(data.std, dtype=torch.float32).view(1, 3, 1, 1)
    t = torch.from_numpy(np.array(x, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)  # copy: read-only
    return ((t - mean) / std).to(device)


def augment(x: torch.Tensor, recipe: Recipe, gen: torch.Generator) -> torch.Tensor:
    """Batch-wise random-resized-crop and horizontal flip, seeded."""
    if recipe.augment_crop:
        h, w = x.shape[2], x.shape[3]
        scale = 0.6 + 0.4 * torch.rand(1, generator=gen).item()
        ch, cw = max(1, int(h * math.sqrt(scale))), max(1, int(w * math.sqrt(scale)))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=gen).item())
        left = int(torch.randint(0, w - cw + 1, (1,), generator=gen).item())
        x = nn.functional.interpolate(x[:, :, top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                                      align_corners=False)
    if recipe.augment_flip:
        flip = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


class ProxyTrainer:
    """Train an architecture briefly on `ImageData` and report validation top-1."""

    def __init__(self, recipe: Recipe | None = None, device: str = "cpu",
                 cache_dir: str | os.PathLike[str] | None = None, progress: bool = False) -> None:
        self.recipe = recipe or Recipe()
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RecipeError(f"device {device!r} requested but no CUDA device is available (use --device cpu)")
        if not (device == "cpu" or device.startswith("cuda")):
            raise RecipeError(f"device {device!r} not in {{cpu, cuda, cuda:N}}")
        self.device = torch.device(device)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.progress = progress

    # ---- cache ------------------------------------------------------------------------------------------
    def cache_key(self, arch: Arch, data: Any, seed: int) -> str:
        text = f"{arch.arch_id}|{data.fingerprint}|{self.recipe.recipe_hash}|{seed}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def _cache_paths(self, key: str) -> tuple[Path, Path] | None:
        if self.cache_dir is None:
            return None
        d = self.cache_dir / "evals"
        return d / f"{key}.json", d / f"{key}.pt"

    # ---- evaluation ---------------------------------------------------------------------------------
    def evaluate(self, arch: Arch, data: Any, seed: int = 0, return_model: bool = False) -> Result:
        """Train `arch` (at the data's resolution) and return its validation result.

        With `return_model`, the trained module is attached as `result.model` (and cached with the result).
        """
        arch = trained_arch(arch, data)
        key = self.cache_key(arch, data, seed)
        paths = self._cache_paths(key)
        if paths is not None and paths[0].is_file() and (not return_model or paths[1].is_file()):
            result = Result(**{**json.loads(paths[0].read_text()), "cached": True})
            if not return_model:
                return result
            model = build_model(arch)
            try:
                model.load_state_dict(torch.load(paths[1], map_location="cpu", weights_only=True))
            except FileNotFoundError:  # pruned since the check (`bneck cache prune`): train again
                pass
            else:
                result.model = model  # type: ignore[attr-defined]
                return result
        result, model = self._train(arch, data, seed)
        if paths is not None:
            paths[0].parent.mkdir(parents=True, exist_ok=True)
            if return_model and not result.failed:  # weights first: a result file promises them when asked for
                buf = io.BytesIO()
                torch.save(model.state_dict(), buf)
                atomic_write(paths[1], buf.getvalue(), fsync=False)  # a cache: losing it costs a re-train
            atomic_write(paths[0], json.dumps(result.to_dict()), fsync=False)
        if return_model:
            result.model = model  # type: ignore[attr-defined]
        return result

    def fine_tune(self, arch: Arch, model: nn.Module, data: Any, seed: int = 0) -> tuple[Result, nn.Module]:
        """Continue training `model` (built for `arch`, e.g. after weight surgery) with this recipe and report
        validation top-1; the recipe's `max_steps` caps it (NetAdapt's short-term fine-tune). `model` itself is
        trained in place and returned; nothing is cached (the result depends on the starting weights)."""
        return self._train(trained_arch(arch, data), data, seed, model)

    def _train(self, arch: Arch, data: Any, seed: int, model: nn.Module | None = None) -> tuple[Result, nn.Module]:
        r = self.recipe
        n_params, n_madds = count(arch)
        torch.manual_seed(seed)
        if model is None:
            model = build_model(arch, seed=seed)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = r.bn_momentum
        fmt = torch.channels_last if r.channels_last else torch.contiguous_format
        model.to(self.device, memory_format=fmt)
        prev_threads = torch.get_num_threads()
        torch.set_num_threads(r.threads)
        try:
            return self._run(arch, data, seed, n_params, n_madds, model, fmt)
        finally:  # the threads restored, the model handed back (cached, exported, pruned) in the default layout
            torch.set_num_threads(prev_threads)
            model.to(memory_format=torch.contiguous_format)

    def images(self, x: np.ndarray, data: Any) -> torch.Tensor:
        """uint8 NHWC images (a slice of a split, or a whole small one) as the normalized float NCHW batch the
        models take, on this trainer's device. Splits are converted batch by batch, never whole: a 100k-image
        folder stays on disk (memory-mapped) and peak memory does not grow with the dataset."""
        return to_batch(x, data, self.device)

    def score(self, model: nn.Module, data: Any, split: str = "val") -> tuple[float, float]:
        """(top-1, mean cross-entropy) of `model` on a split of `data` ("val" or "test"), streamed in batches."""
        x, y = (data.x_val, data.y_val) if split == "val" else (data.x_test, data.y_test)
        if x is None or y is None:
            raise RecipeError(f"data {data.source} has no {split} split")
        prev = torch.get_num_threads()
        torch.set_num_threads(self.recipe.threads)
        try:
            return _score(model.to(self.device), self._batches(x, y, data, self.recipe.batch_size * 4))
        finally:
            torch.set_num_threads(prev)

    def _batches(self, x: np.ndarray, y: np.ndarray, data: Any,
                 size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(y), size):
            labels = torch.from_numpy(np.array(y[i:i + size], dtype=np.int64))
            yield self.images(x[i:i + size], data), labels.to(self.device)

    def _run(self, arch: Arch, data: Any, seed: int, n_params: int, n_madds: int, model: nn.Module,
             fmt: torch.memory_format) -> tuple[Result, nn.Module]:
        r = self.recipe
        y_train = np.asarray(data.y_train, dtype=np.int64)
        n = len(y_train)
        steps_per_epoch = max(1, math.ceil(n / r.batch_size))
        total_steps = r.total_steps(n)
        opt = make_optimizer(model, r)
        criterion = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)
        gen = torch.Generator().manual_seed(seed)
        history: list[dict[str, float]] = []
        start = time.perf_counter()
        step = 0
        train_loss = math.nan
        failed_reason: str | None = None
        bar = _progress(self.progress, math.ceil(total_steps / steps_per_epoch))
        with bar as prog:
            task = prog.add_task(f"training {arch.arch_id}", total=math.ceil(total_steps / steps_per_epoch)) \
                if prog is not None else None
            while step < total_steps and failed_reason is None:
                model.train()
                order = torch.randperm(n, generator=gen)
                running, seen = 0.0, 0
                for b in range(steps_per_epoch):
                    if step >= total_steps:
                        break
                    idx = np.sort(order[b * r.batch_size:(b + 1) * r.batch_size].numpy())  # sorted: memmap reads
                    xb = augment(self.images(data.x_train[idx], data), r, gen).contiguous(memory_format=fmt)
                    yb = torch.from_numpy(y_train[idx]).to(self.device)
                    for g in opt.param_groups:
                        g["lr"] = r.lr_at(step, total_steps)
                    loss = criterion(model(xb), yb)
                    if not torch.isfinite(loss):
                        failed_reason = f"loss diverged ({loss.item()}) at step {step}"
                        break
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    running += loss.item() * len(idx)
                    seen += len(idx)
                    step += 1
                train_loss = running / max(1, seen)
                history.append({"step": step, "train_loss": train_loss})
                if prog is not None:
                    prog.update(task, advance=1, description=f"training {arch.arch_id} loss {train_loss:.3f}")
        train_s = time.perf_counter() - start
        epochs_done = step / steps_per_epoch
        if failed_reason is None and not all(torch.isfinite(p).all() for p in model.parameters()):
            failed_reason = "weights became non-finite"
        if failed_reason is not None:
            return Result(arch.arch_id, 0.0, math.inf, train_loss, train_s, epochs_done, step, n_params, n_madds,
                          failed=True, reason=failed_reason, history=history), model
        top1, val_loss = _score(model, self._batches(data.x_val, data.y_val, data, r.batch_size * 4))
        if not math.isfinite(val_loss):
            return Result(arch.arch_id, 0.0, math.inf, train_loss, train_s, epochs_done, step, n_params, n_madds,
                          failed=True, reason="validation loss is not finite", history=history), model
        return Result(arch.arch_id, top1, val_loss, train_loss, train_s, epochs_done, step, n_params, n_madds,
                      history=history), model


def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> tuple[float, float]:
    """(top-1, mean cross-entropy) of `model` in eval mode on prepared tensors."""
    return _score(model, ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)))


@torch.no_grad()
def _score(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for xb, yb in batches:
        logits = model(xb)
        loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        correct += int((logits.argmax(1) == yb).sum())
        n += len(yb)
    return correct / max(1, n), loss_sum / max(1, n)


class _NoProgress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(enabled: bool, total: int) -> Any:
    return progress_bar(transient=True) if enabled else _NoProgress()


def with_overrides(recipe: Recipe, **changes: Any) -> Recipe:
    """A copy of `recipe` with non-None fields changed (CLI flags); a new budget replaces the old one."""
    given = {k: v for k, v in changes.items() if v is not None}
    if "epochs" in given and "steps" not in given:
        given["steps"] = None
    if "steps" in given and "epochs" not in given:
        given["epochs"] = None
    return replace(recipe, **given)
