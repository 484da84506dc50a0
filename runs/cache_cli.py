"""`bneck cache`: what the caches under ~/.cache/bneck hold, and pruning the evaluation cache's weights."""

from __future__ import annotations

import json

import click

from bneck_common.paths import cache_dir
from evaluators.trainer import DEFAULT_WEIGHTS_CAP_BYTES, prune_eval_cache
from runs.errors import console_out


@click.group("cache")
def cache_group() -> None:
    """The evaluation cache (~/.cache/bneck/evals, or $BNECK_CACHE/evals)."""


@cache_group.command("prune")
@click.option("--max-gb", type=click.FloatRange(min=0), default=DEFAULT_WEIGHTS_CAP_BYTES / 1024**3,
              show_default=True, help="Trained weights to keep, least recently written removed first.")
@click.option("--json", "as_json", is_flag=True)
def prune_cmd(max_gb: float, as_json: bool) -> None:
    """Remove cached trained weights beyond --max-gb and temp files of dead writers; results are kept."""
    usage = prune_eval_cache(cache_dir(), int(max_gb * 1024**3))
    doc = {"dir": str(cache_dir() / "evals"), "results": usage.results, "weights": usage.weights,
           "weights_mb": usage.weights_bytes / 1e6, "removed": usage.removed, "freed_mb": usage.freed_bytes / 1e6}
    if as_json:
        click.echo(json.dumps(doc))
    else:
        console_out.print(f"{doc['dir']}: removed {usage.removed} file(s), {doc['freed_mb']:.1f} MB; kept "
                          f"{usage.results} results and {usage.weights} weights ({doc['weights_mb']:.1f} MB)",
                          highlight=False)
