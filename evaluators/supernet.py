"""Train a weight-sharing supernet once, then score any architecture of its space in a fraction of a second.

Training (`train_supernet`): every optimizer step trains subnets sampled from the space on one batch of the
training split, with one of two rules:

  - `spos`: one subnet drawn uniformly (single-path one-shot, Guo et al. 2020);
  - `sandwich`: the largest and the smallest subnet plus `random_subnets` uniform ones, their gradients summed;
    the largest learns from the labels, the others, with `distill`, from the largest's predictions on the same
    batch (in-place distillation, BigNAS / OFA).

The step's batch, subnets, augmentation and dropout are functions of (seed, step) alone, and the checkpoint
holds weights, optimizer state and the step, so a run resumed after a kill -9 continues bit-for-bit as if it had
never stopped. The checkpoint (`DIR/supernet.pt`) is rewritten atomically every `checkpoint_every` steps.

Scoring (`SupernetScorer`): extract the subnet's standalone weights, recalibrate its BatchNorm statistics on a
fixed sample of training images (the shared statistics belong to no subnet), and score top-1 on the validation
split, which the supernet never trains on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import search_space as ss
from bneck_common.paths import atomic_write
from bneck_common.progress import progress_bar
from evaluators.trainer import Recipe, RecipeError, augment, make_optimizer, to_batch
from search_space.supernet import Supernet

RULES = ("sandwich", "spos")
VAL_TENSOR_BYTES = 512 * 1024**2
CHECKPOINT_FORMAT = "bneck-supernet/1"
CHECKPOINT_NAME = "supernet.pt"


class SupernetError(ValueError):
    """A supernet setting or checkpoint a user gave is unusable; the message names it."""


@dataclass(frozen=True)
class SupernetRecipe:
    """How a supernet is trained: the optimizer and schedule of a proxy `Recipe`, plus the sampling rule.

    `recipe.steps` counts optimizer steps; a sandwich step trains 2 + `random_subnets` subnets, so it costs that
    many forward/backward passes. `checkpoint_every` does not change the result, so it is not part of `identity`.
    """

    # Defaults from benchmarks/supernet.py (results/supernet.json, 2026-12-07): at about equal CPU (SPOS 5,000 steps,
    # 581 s; sandwich 1,500 steps x 4 subnets, 714 s) SPOS ranked the 31 in-space proxy-fidelity archs at Kendall τ
    # 0.36 / 0.29 against the 2,400-step truth averaged over 2 seeds / the 1,200-step one, sandwich at 0.22 / 0.25
    # (whole validation split)
    recipe: Recipe = field(default_factory=lambda: Recipe(steps=5000))
    rule: str = "spos"
    random_subnets: int = 2
    distill: bool = True
    kernel_transform: bool = False
    grad_clip: float = 5.0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise SupernetError(f"rule {self.rule!r} not in {{{', '.join(RULES)}}}")
        checks = [("random_subnets", isinstance(self.random_subnets, int) and self.random_subnets >= 0),
                  ("grad_clip", self.grad_clip > 0),
                  ("checkpoint_every", isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 1)]
        for name, ok in checks:
            if not ok:
                raise SupernetError(f"supernet recipe field {name}={getattr(self, name)!r} is out of range")
        if self.recipe.steps is None:
            raise SupernetError("supernet recipe: the budget is counted in steps (recipe.steps), not epochs")

    @property
    def subnets_per_step(self) -> int:
        return 1 if self.rule == "spos" else 2 + self.random_subnets

    def identity(self) -> dict[str, Any]:
        """Everything that determines the trained weights (a checkpoint resumes only under the same identity)."""
        return {k: v for k, v in asdict(self).items() if k != "checkpoint_every"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SupernetRecipe:
        doc = dict(doc)
        allowed = {f.name for f in fields(cls)}
        unknown = set(doc) - allowed
        if unknown:
            raise SupernetError(f"unknown supernet recipe field {sorted(unknown)[0]!r} "
                                f"(allowed: {', '.join(sorted(allowed))})")
        if "recipe" in doc:
            try:
                doc["recipe"] = Recipe.from_dict(doc["recipe"])
            except (TypeError, RecipeError) as exc:
                raise SupernetError(f"supernet recipe: {exc}") from None
        return cls(**doc)


@dataclass(frozen=True)
class DataParallel:
    """This process's part of a data-parallel training (Ray Train workers): it trains on every `world`-th image
    of each step's batch from `rank` on, `average_grads(params)` averages the gradients over the processes after
    each step's backward passes (an all-reduce), and only rank 0 writes the checkpoint."""

    rank: int
    world: int
    average_grads: Callable[[list[torch.nn.Parameter]], None]


@dataclass
class TrainState:
    """What `train_supernet` returns: the supernet and how far its training got."""

    supernet: Supernet
    step: int
    total_steps: int
    train_s: float
    history: list[dict[str, float]]
    path: Path | None

    @property
    def complete(self) -> bool:
        return self.step >= self.total_steps


# ---- the step's randomness: a function of (seed, step) only ---------------------------------------------------
def step_subnets(supernet: Supernet, recipe: SupernetRecipe, seed: int, step: int) -> list[ss.Arch]:
    """The subnets step `step` trains (the largest first under the sandwich rule: it is the teacher)."""
    rng = np.random.default_rng([seed, step, 1])
    space = supernet.space
    if recipe.rule == "spos":
        return [space.decode(space.sample_encoded(rng, 1)[0])]
    middle = [space.decode(v) for v in space.sample_encoded(rng, recipe.random_subnets)] \
        if recipe.random_subnets else []
    return [supernet.largest(rng), supernet.smallest(rng), *middle]


def step_batch(n_train: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Sorted training indices of step `step`: epoch after epoch, each a seeded permutation of the split."""
    per_epoch = max(1, math.ceil(n_train / batch_size))
    epoch, b = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch, 2]).permutation(n_train)
    return np.sort(order[b * batch_size:(b + 1) * batch_size])


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63 - 1)


def sandwich_loss(supernet: nn.Module, subnets: Sequence[ss.Arch], xb: torch.Tensor, yb: torch.Tensor,
                  recipe: SupernetRecipe) -> float:
    """Run forward + backward for every subnet of a step (gradients accumulate) and return their mean loss.

    The first subnet learns from the labels; with `distill` (sandwich rule) the others learn from its
    predictions (KL to its softmax, detached). Raises FloatingPointError on a non-finite loss.
    """
    teacher: torch.Tensor | None = None
    total = 0.0
    for k, arch in enumerate(subnets):
        logits = supernet(xb, arch)
        if k > 0 and teacher is not None:
            loss = F.kl_div(F.log_softmax(logits, 1), teacher, reduction="batchmean")
        else:
            loss = F.cross_entropy(logits, yb, label_smoothing=recipe.recipe.label_smoothing)
            if recipe.rule == "sandwich" and recipe.distill:
                teacher = F.softmax(logits.detach(), 1)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss diverged ({loss.item()}) on subnet {arch.arch_id}")
        loss.backward()
        total += loss.item()
    return total / len(subnets)


# ---- checkpoints --------------------------------------------------------------------------------------------
def _identity(space: ss.SearchSpace, recipe: SupernetRecipe, data: Any, seed: int) -> dict[str, Any]:
    return {"space": space.to_dict(), "recipe": recipe.identity(), "data": data.fingerprint, "seed": seed}


def save_checkpoint(path: Path, identity: dict[str, Any], supernet: Supernet, opt: torch.optim.Optimizer | None,
                    step: int, total_steps: int, train_s: float, history: list[dict[str, float]],
                    data_args: dict[str, Any]) -> None:
    doc = {"format": CHECKPOINT_FORMAT, "identity": identity, "data_args": data_args, "step": step,
           "total_steps": total_steps, "train_s": train_s, "history": history,
           "model": supernet.state_dict(), "optimizer": opt.state_dict() if opt is not None else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(doc, f))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents; SupernetError naming the file when it is not one."""
    if not path.is_file():
        raise SupernetError(f"supernet: {path} does not exist")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign or truncated file
        raise SupernetError(f"supernet: {path} is not a bneck supernet checkpoint ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise SupernetError(f"supernet: {path} is not a {CHECKPOINT_FORMAT} checkpoint")
    return doc


def load_supernet(path: str | Path, allow_partial: bool = False) -> tuple[Supernet, dict[str, Any]]:
    """The trained supernet of a checkpoint (file, or the directory holding supernet.pt) and its metadata."""
    p = Path(path)
    p = p / CHECKPOINT_NAME if p.is_dir() else p
    doc = read_checkpoint(p)
    if doc["step"] < doc["total_steps"] and not allow_partial:
        raise SupernetError(f"supernet: {p} is trained {doc['step']}/{doc['total_steps']} steps; finish it with "
                            "`bneck supernet train` (same arguments) first")
    ident = doc["identity"]
    space = ss.SearchSpace.from_dict(ident["space"])
    recipe = SupernetRecipe.from_dict(ident["recipe"])
    supernet = Supernet(space, kernel_transform=recipe.kernel_transform)
    supernet.load_state_dict(doc["model"], strict=True)
    meta = {k: doc[k] for k in ("step", "total_steps", "train_s", "history", "data_args")}
    meta.update(identity=ident, recipe=recipe, path=str(p))
    return supernet, meta


def supernet_data(meta: dict[str, Any], progress: bool = False) -> Any:
    """The data split a supernet was trained on (its validation images are the ones it never saw)."""
    from evaluators.data import load_data

    args = meta["data_args"]
    data = load_data(args["spec"], resolution=args["resolution"], seed=args["seed"], progress=progress)
    if data.fingerprint != meta["identity"]["data"]:
        raise SupernetError(f"supernet {meta['path']}: its data {args['spec']!r} changed since it was trained "
                            "(another fingerprint); its validation split may overlap its training images")
    return data


def check_same_split(meta: dict[str, Any], data: Any) -> None:
    """Refuse to score on data other than the supernet's own split: its training images would leak into the
    validation scores."""
    if data.fingerprint != meta["identity"]["data"]:
        args = meta["data_args"]
        raise SupernetError(f"supernet {meta['path']} was trained on {args['spec']} at {args['resolution']} px with "
                            f"split seed {args['seed']}; score it on that data split (got {data.source} at "
                            f"{data.resolution} px, another split): other images would overlap its training set")


def _explain_mismatch(stored: Any, wanted: Any, where: str = "") -> str:
    """The first field (dotted path) where two checkpoint identities differ."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for key in wanted:
            if stored.get(key) != wanted[key]:
                return _explain_mismatch(stored.get(key), wanted[key], f"{where}.{key}" if where else key)
        extra = sorted(set(stored) - set(wanted))
        return f"{where}.{extra[0]}" if extra and where else (extra[0] if extra else where or "settings")
    return where or "settings"


# ---- training -----------------------------------------------------------------------------------------------
def train_supernet(space: ss.SearchSpace, data: Any, recipe: SupernetRecipe | None = None, *, seed: int = 0,
                   out_dir: str | Path | None = None, device: str = "cpu", progress: bool = False,
                   stop_after: int | None = None, data_seed: int | None = None,
                   parallel: DataParallel | None = None,
                   on_step: Callable[[int, float], None] | None = None,
                   stop: Callable[[], bool] | None = None) -> TrainState:
    """Train (or resume) a supernet of `space` on `data`'s training split.

    With `out_dir`, an existing checkpoint there of the same space, data, seed and recipe is resumed; one of
    other settings is refused (SupernetError naming what differs). `stop_after` ends the call after that many
    steps of this call (the checkpoint is written): tests and time-boxed sessions; a later call continues.
    `data_seed` is the seed `data` was split with (default `seed`): stored with `data.source` and its
    resolution, so scoring can load the same split and use validation images the supernet never saw.
    `parallel`: this process is one of several data-parallel workers (`DataParallel`); bit-for-bit resumes then
    hold for the same number of workers (BatchNorm sees each worker's share of the batch). `stop()` is asked
    after every step: when it says so, the checkpoint is written there and the call returns (Ctrl-C / SIGTERM
    in the CLI lose no finished step).
    """
    recipe = recipe or SupernetRecipe()
    r = recipe.recipe
    if data.num_classes != space.num_classes:
        raise SupernetError(f"space {space.name} has {space.num_classes} classes, data {data.source} "
                            f"{data.num_classes}")
    path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    identity = _identity(space, recipe, data, seed)
    supernet = Supernet(space, kernel_transform=recipe.kernel_transform, seed=seed)
    for m in supernet.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = r.bn_momentum
    dev = torch.device(device)
    supernet.to(dev)
    opt = make_optimizer(supernet, r)
    n = len(data.y_train)
    total_steps = r.total_steps(n)
    step, train_s, history = 0, 0.0, []
    if path is not None:
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a write a kill -9 cut short
            stale.unlink(missing_ok=True)
    if path is not None and path.is_file():
        doc = read_checkpoint(path)
        if doc["identity"] != identity:
            raise SupernetError(f"supernet: {path} was trained with other settings "
                                f"({_explain_mismatch(doc['identity'], identity)} differs); use another --out "
                                "or remove it to start over")
        supernet.load_state_dict(doc["model"], strict=True)
        if doc["optimizer"] is not None:
            opt.load_state_dict(doc["optimizer"])
        step, train_s, history = int(doc["step"]), float(doc["train_s"]), list(doc["history"])
    data_args = {"spec": data.source, "resolution": data.resolution, "seed": seed if data_seed is None else data_seed}
    y_train = np.asarray(data.y_train, dtype=np.int64)
    end = total_steps if stop_after is None else min(total_steps, step + stop_after)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(r.threads)
    started = time.perf_counter()
    base_s = train_s
    running, seen = 0.0, 0

    writer = parallel is None or parallel.rank == 0
    params = [p for p in supernet.parameters() if p.requires_grad]

    def checkpoint() -> None:
        if path is not None and writer:
            save_checkpoint(path, identity, supernet, opt, step, total_steps,
                            base_s + time.perf_counter() - started, history, data_args)

    bar = progress_bar(transient=True) if progress else None
    try:
        if bar is not None:
            bar.start()
            task = bar.add_task("training supernet", total=total_steps, completed=step)
        supernet.train()
        while step < end:
            subnets = step_subnets(supernet, recipe, seed, step)
            idx = step_batch(n, r.batch_size, seed, step)
            if parallel is not None:
                idx = idx[parallel.rank::parallel.world]
            s = _step_seed(seed, step)
            gen = torch.Generator().manual_seed(s)
            torch.manual_seed(s)  # dropout
            xb = augment(to_batch(data.x_train[idx], data, dev), r, gen)
            yb = torch.from_numpy(y_train[idx]).to(dev)
            for g in opt.param_groups:
                g["lr"] = r.lr_at(step, total_steps)
            opt.zero_grad(set_to_none=True)
            try:
                loss = sandwich_loss(supernet, subnets, xb, yb, recipe)
            except FloatingPointError as exc:
                raise SupernetError(f"supernet training diverged at step {step}: {exc}; lower the lr") from None
            if parallel is not None:
                parallel.average_grads(params)
            nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            opt.step()
            step += 1
            running, seen = running + loss, seen + 1
            if on_step is not None:
                on_step(step, loss)
            stopping = stop is not None and stop()
            if step % recipe.checkpoint_every == 0 or step == end or stopping:
                history.append({"step": step, "train_loss": running / max(1, seen),
                                "train_s": base_s + time.perf_counter() - started})
                running, seen = 0.0, 0
                checkpoint()
            if bar is not None:
                bar.update(task, completed=step, description=f"training supernet loss {loss:.3f}")
            if stopping:
                break
    finally:
        if bar is not None:
            bar.stop()
        torch.set_num_threads(prev_threads)
    return TrainState(supernet, step, total_steps, base_s + time.perf_counter() - started, history, path)


# ---- scoring ------------------------------------------------------------------------------------------------
@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Reset every BatchNorm's statistics and re-estimate them as the plain average over `batches`."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts alike
    model.train()
    for xb in batches:
        model(xb)
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.eval()


class SupernetScorer:
    """Score architectures of a trained supernet's space on `data`'s validation split.

    `calib_images` training images (a fixed seeded sample) recalibrate each subnet's BN; `val_images` limits the
    validation images scored (None: all; the same images for every architecture, so rankings are paired).
    """

    def __init__(self, supernet: Supernet, data: Any, calib_images: int = 256, val_images: int | None = None,
                 batch_size: int = 256, seed: int = 0, threads: int = 2, device: str = "cpu") -> None:
        if calib_images < 1:
            raise SupernetError(f"calib_images must be >= 1, got {calib_images}")
        if val_images is not None and val_images < 1:
            raise SupernetError(f"val_images must be >= 1, got {val_images}")
        self.supernet, self.data, self.threads = supernet.eval(), data, threads
        self.device = torch.device(device)
        rng = np.random.default_rng([seed, 3])
        n_train = len(data.y_train)
        calib = np.sort(rng.choice(n_train, size=min(calib_images, n_train), replace=False))
        self.calib = [to_batch(data.x_train[calib[i:i + batch_size]], data, self.device)
                      for i in range(0, len(calib), batch_size)]
        n_val = len(data.y_val)
        self.val_index = np.arange(n_val) if val_images is None or val_images >= n_val else \
            np.sort(rng.choice(n_val, size=val_images, replace=False))
        self.batch_size = batch_size
        # Converted once when that fits in VAL_TENSOR_BYTES (12,000 images at 32 px are 147 MB): converting per
        # score was a quarter of its time here; a larger split is converted batch by batch instead.
        self._val_batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if len(self.val_index) * 3 * data.resolution**2 * 4 <= VAL_TENSOR_BYTES:
            self._val_batches = list(self._convert_val())

    def _convert_val(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        y_all = np.asarray(self.data.y_val, dtype=np.int64)
        for i in range(0, len(self.val_index), self.batch_size):
            idx = self.val_index[i:i + self.batch_size]
            yield (to_batch(self.data.x_val[idx], self.data, self.device),
                   torch.from_numpy(y_all[idx]).to(self.device))

    def model(self, arch: ss.Arch) -> nn.Module:
        """`arch`'s standalone module with the supernet's weights and recalibrated BN (what `score` scores)."""
        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            model = self.supernet.standalone(arch.replace(resolution=self.data.resolution)).to(self.device)
            # channels-last weights (the batches already are, from NHWC images): 2.1x faster scoring here
            model = model.to(memory_format=torch.channels_last)
            recalibrate_bn(model, self.calib)
            return model
        finally:
            torch.set_num_threads(prev)

    def score(self, arch: ss.Arch) -> tuple[float, float]:
        """(top-1, mean cross-entropy) of `arch` on the validation images."""
        return self.score_model(self.model(arch))

    def score_model(self, model: nn.Module) -> tuple[float, float]:
        """(top-1, mean cross-entropy) of a module (from `model`) on the validation images, converted batch by
        batch (a large split at a large resolution is never held as floats)."""
        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            model.eval()
            correct, loss_sum = 0, 0.0
            with torch.inference_mode():
                for xb, yb in self._val_batches if self._val_batches is not None else self._convert_val():
                    logits = model(xb)
                    loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
                    correct += int((logits.argmax(1) == yb).sum())
            n = max(1, len(self.val_index))
            return correct / n, loss_sum / n
        finally:
            torch.set_num_threads(prev)

    def score_many(self, archs: Sequence[ss.Arch]) -> list[tuple[float, float]]:
        """`score` of each architecture (predictor fitting, evolution populations)."""
        return [self.score(a) for a in archs]


__all__ = ["CHECKPOINT_NAME", "RULES", "DataParallel", "SupernetError", "SupernetRecipe", "SupernetScorer",
           "TrainState", "check_same_split", "load_supernet", "recalibrate_bn", "sandwich_loss", "step_batch",
           "step_subnets", "supernet_data", "train_supernet"]
