"""`bneck supernet`: train a weight-sharing supernet once, score architectures of its space, extract one.

Parses flags, calls `evaluators.supernet` (training, scoring; `runs.supernet_ray` for a Ray cluster) and
prints. `train` run again with the same arguments resumes from OUT/supernet.pt (Ctrl-C, kill -9).
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np

import search_space as ss
from bneck_common.paths import RUNS_DIR, atomic_write
from evaluators import DataError, Recipe, RecipeError, load_data
from evaluators.supernet import (
    RULES,
    SupernetError,
    SupernetRecipe,
    SupernetScorer,
    load_supernet,
    supernet_data,
    train_supernet,
)
from runs.errors import UserError, console_err, console_out

DEFAULT_STEPS = SupernetRecipe().recipe.steps


@click.group("supernet")
def supernet_group() -> None:
    """Weight-sharing supernet: train once, then score any architecture of its space in a fraction of a second."""


@supernet_group.command("train")
@click.option("--space", "space_name", default="mobilenet_v3_small_space", show_default=True,
              help="A search space name or a space .json file.")
@click.option("--width-mult", type=float, default=1.0, show_default=True)
@click.option("--data", "data_spec", default="builtin:fashion", show_default=True,
              help="builtin:fashion[:N], builtin:digits, an image folder or a .npz.")
@click.option("--resolution", type=int, default=32, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=DEFAULT_STEPS, show_default=True,
              help="Optimizer steps (a sandwich step trains 2 + --random-subnets subnets).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--rule", type=click.Choice(RULES), default=SupernetRecipe().rule, show_default=True,
              help="sandwich: largest + smallest + random subnets, in-place distillation; spos: one random subnet.")
@click.option("--random-subnets", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--no-distill", is_flag=True, help="Sandwich: every subnet learns from the labels.")
@click.option("--kernel-transform", is_flag=True, help="OFA's learned kernel transforms instead of centre crops.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the split, the sampling and the init.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: data-parallel over --workers Ray Train workers (DDP).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Ray Train workers.")
@click.option("--address", default=None, help="Ray cluster to join: auto or HOST:PORT [default: start one].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output dir [default: ./bneck_runs/supernet-SPACE]. Re-run to resume.")
@click.option("--json", "as_json", is_flag=True)
def train_cmd(space_name: str, width_mult: float, data_spec: str, resolution: int, steps: int, batch_size: int,
              lr: float, rule: str, random_subnets: int, no_distill: bool, kernel_transform: bool, seed: int,
              threads: int, device: str, checkpoint_every: int, backend: str, workers: int, address: str | None,
              out: Path | None, as_json: bool) -> None:
    """Train (or resume) a supernet of a space on a data set's training split."""
    out = out or RUNS_DIR / f"supernet-{Path(space_name).stem}"
    with graceful_stop() as stop:  # a signal during loading stops after the first step, with a checkpoint
        try:
            recipe = SupernetRecipe(recipe=Recipe(steps=steps, batch_size=batch_size, lr=lr, threads=threads),
                                    rule=rule, random_subnets=random_subnets, distill=not no_distill,
                                    kernel_transform=kernel_transform, checkpoint_every=checkpoint_every)
            with console_err.status(f"loading {data_spec} ..."):
                data = load_data(data_spec, resolution=resolution, seed=seed)
            space = ss.load_space(space_name, width_mult, data.num_classes, resolution)
            if backend == "ray":
                from runs.supernet_ray import train_supernet_ray

                state = train_supernet_ray(space, data, recipe, seed=seed, out_dir=out, workers=workers,
                                           address=address, data_seed=seed)
            else:
                state = train_supernet(space, data, recipe, seed=seed, out_dir=out, device=device,
                                       progress=not as_json, data_seed=seed, stop=stop)
        except (SupernetError, RecipeError, DataError, ss.SpecError) as exc:
            raise UserError(str(exc)) from None
    if not state.complete:
        console_err.print(f"stopped at step {state.step}/{state.total_steps}, checkpoint {state.path}: run the same "
                          "command again to resume", highlight=False)
        raise SystemExit(130)
    summary = {"out": str(out), "checkpoint": str(state.path), "space": space.name, "data": data.source,
               "steps": state.step, "total_steps": state.total_steps, "train_s": round(state.train_s, 1),
               "rule": rule, "subnets_per_step": recipe.subnets_per_step,
               "final_train_loss": state.history[-1]["train_loss"] if state.history else None}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        console_out.print(f"supernet of {space.name} on {data.source}: {state.step}/{state.total_steps} steps "
                          f"({rule}, {recipe.subnets_per_step} subnets per step) in {state.train_s:.0f} s -> "
                          f"{state.path}", highlight=False)


@contextlib.contextmanager
def graceful_stop() -> Iterator[Callable[[], bool]]:
    """SIGINT / SIGTERM ask training to stop after the current step (it then writes its checkpoint); a second
    signal stops at once (the last periodic checkpoint stays). Previous handlers come back afterwards."""
    requested: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def on_signal(signum: int, frame: Any) -> None:
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        yield lambda: bool(requested)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _scorer(supernet_path: Path, calib_images: int, val_images: int | None,
            threads: int) -> tuple[SupernetScorer, dict[str, Any]]:
    supernet, meta = load_supernet(supernet_path)
    with console_err.status(f"loading {meta['data_args']['spec']} ..."):
        data = supernet_data(meta)
    return SupernetScorer(supernet, data, calib_images, val_images, threads=threads), meta


def _archs(specs: tuple[str, ...], sample: int, seed: int, space: ss.SearchSpace) -> list[ss.Arch]:
    archs = [ss.load_arch(s, None, space.resolution, space.num_classes) if s in ss.PRESETS
             else ss.load_arch(s).replace(resolution=space.resolution, num_classes=space.num_classes) for s in specs]
    rng = np.random.default_rng(seed)
    return archs + [space.sample(rng) for _ in range(sample)]


_scoring_options = [
    click.option("--calib-images", type=click.IntRange(min=1), default=256, show_default=True,
                 help="Training images that recalibrate each subnet's BatchNorm."),
    click.option("--val-images", type=click.IntRange(min=1), default=None,
                 help="Validation images scored [default: the whole validation split]."),
    click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True),
]


def _with_scoring(f: Any) -> Any:
    for option in reversed(_scoring_options):
        f = option(f)
    return f


@supernet_group.command("score")
@click.argument("supernet_path", type=click.Path(path_type=Path))
@click.argument("specs", nargs=-1)
@click.option("--sample", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also score this many architectures sampled from the space.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@_with_scoring
@click.option("--json", "as_json", is_flag=True, help="One JSON object per architecture.")
def score_cmd(supernet_path: Path, specs: tuple[str, ...], sample: int, seed: int, calib_images: int,
              val_images: int | None, threads: int, as_json: bool) -> None:
    """Score SPECS (presets, arch strings, spec files) and --sample N random architectures on the supernet's
    validation split (images it never trained on)."""
    import time

    try:
        scorer, _ = _scorer(supernet_path, calib_images, val_images, threads)
        archs = _archs(specs, sample, seed, scorer.supernet.space)
        if not archs:
            raise UserError("nothing to score: give SPECS or --sample N")
        for arch in archs:
            t0 = time.perf_counter()
            top1, loss = scorer.score(arch)
            row = {"arch_id": arch.arch_id, "top1": top1, "loss": loss, "score_s": time.perf_counter() - t0,
                   "arch": arch.to_string()}
            if as_json:
                click.echo(json.dumps(row))
            else:
                console_out.print(f"{arch.arch_id}  top-1 {100 * top1:.2f}%  loss {loss:.3f}  "
                                  f"({row['score_s']:.2f} s)", highlight=False)
    except (SupernetError, DataError, ss.SpecError) as exc:
        raise UserError(str(exc)) from None


@supernet_group.command("extract")
@click.argument("supernet_path", type=click.Path(path_type=Path))
@click.argument("spec")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="State dict (.pt) for `bneck export --weights` or fine-tuning; the spec is written beside it.")
@_with_scoring
def extract_cmd(supernet_path: Path, spec: str, out: Path, calib_images: int, val_images: int | None,
                threads: int) -> None:
    """Write SPEC's weights from the supernet (BatchNorm recalibrated) as a standalone state dict."""
    import io

    import torch

    try:
        scorer, _ = _scorer(supernet_path, calib_images, val_images, threads)
        arch = _archs((spec,), 0, 0, scorer.supernet.space)[0]
        model = scorer.model(arch)
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, buf.getvalue())
        spec_path = out.with_suffix(".json")
        atomic_write(spec_path, arch.to_json())
    except (SupernetError, DataError, ss.SpecError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    console_out.print(f"wrote {out} and {spec_path} ({arch.arch_id})", highlight=False)
