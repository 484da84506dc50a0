"""`bneck evaluate`: how good one architecture is (proxy training or a zero-cost proxy)."""

from __future__ import annotations

import json
from pathlib import Path

import click

import search_space as ss
from bneck_common.paths import cache_dir
from evaluators import PROXIES, DataError, ProxyTrainer, Recipe, RecipeError, load_data, proxy_score, trained_arch
from evaluators.trainer import DEFAULT_STEPS, with_overrides
from runs.errors import UserError, console_err, console_out


@click.command("evaluate")
@click.argument("spec_or_preset")
@click.option("--data", "data_spec", default="builtin:digits", show_default=True,
              help="builtin:digits, an image folder PATH/<class>/*.png, or a .npz with x and y.")
@click.option("--resolution", type=int, default=32, show_default=True, help="Training resolution (px).")
@click.option("--steps", type=int, default=None, help=f"Training budget in optimizer steps [default: {DEFAULT_STEPS}].")
@click.option("--epochs", type=float, default=None, help="Training budget in epochs instead of steps.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--optimizer", type=click.Choice(["sgd", "rmsprop"]), default=None)
@click.option("--threads", type=int, default=None, help=f"torch threads [default: {Recipe().threads}].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--proxy", type=click.Choice(PROXIES), default=None, help="A zero-cost proxy instead of training.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-cache", is_flag=True, help="Do not read or write ~/.cache/bneck/evals.")
@click.option("--save-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the trained state dict here (loadable with `bneck export --weights`).")
@click.option("--json", "as_json", is_flag=True)
def evaluate_cmd(spec_or_preset: str, data_spec: str, resolution: int, steps: int | None, epochs: float | None,
                 batch_size: int | None,
                 lr: float | None, optimizer: str | None, threads: int | None, device: str, proxy: str | None,
                 seed: int, no_cache: bool, save_weights: Path | None, as_json: bool) -> None:
    """Train SPEC_OR_PRESET briefly on real images and report validation top-1 (or a zero-cost score)."""
    try:
        recipe = with_overrides(Recipe(), steps=steps, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                                threads=threads)
        with console_err.status(f"loading {data_spec} ..."):
            data = load_data(data_spec, resolution=resolution, seed=seed, progress=False)
        arch = ss.load_arch(spec_or_preset, None, resolution, data.num_classes) if spec_or_preset in ss.PRESETS \
            else trained_arch(ss.load_arch(spec_or_preset), data)
        if proxy is not None:
            score = proxy_score(proxy, arch, data, seed=seed, threads=recipe.threads)
            result = {"arch_id": arch.arch_id, "proxy": proxy, "score": score, "data": data.source, "seed": seed}
        else:
            trainer = ProxyTrainer(recipe, device=device, cache_dir=None if no_cache else cache_dir(),
                                   progress=not as_json)
            res = trainer.evaluate(arch, data, seed=seed, return_model=save_weights is not None)
            if save_weights is not None and not res.failed:
                import torch

                save_weights.parent.mkdir(parents=True, exist_ok=True)
                torch.save(res.model.state_dict(), save_weights)  # type: ignore[attr-defined]
            result = {k: v for k, v in res.to_dict().items() if k not in ("history", "model")}
            result.update(data=data.source, resolution=resolution, seed=seed, recipe_hash=recipe.recipe_hash)
    except (ss.SpecError, DataError, RecipeError) as exc:
        raise UserError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result))
    elif proxy is not None:
        console_out.print(f"{proxy} score of {arch.arch_id}: {result['score']:.4g}")
    elif result["failed"]:
        console_out.print(f"[red]failed[/]: {result['reason']}")
    else:
        cached = " (cached)" if result["cached"] else ""
        console_out.print(f"{arch.arch_id}: top-1 {100 * result['top1']:.2f}% on {data.source} val "
                          f"({len(data.y_val)} images), loss {result['loss']:.3f}, {result['steps']} steps "
                          f"({result['epochs']:.3g} epochs) in "
                          f"{result['train_s']:.1f} s{cached}")
