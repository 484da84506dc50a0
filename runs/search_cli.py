"""`bneck search`: start or resume a run (one machine or a Ray cluster), with live progress (`runs.session`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

import searchers as se
from evaluators.trainer import DEFAULT_STEPS
from runs.config import ConfigError, load_config
from runs.session import execute, start_run, summary, user_facing_errors

SEARCH_FLAGS = ("space", "table", "target_ms", "searcher", "trials", "data", "steps", "epochs", "workers", "backend",
                "address", "seed", "storage", "study", "threads", "resolution", "mode", "reward", "max_latency_ms",
                "name")


@click.command("search")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="YAML run config; flags override it.")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Continue the run in this dir (after Ctrl-C or a kill); --trials may raise its budget.")
@click.option("--space", default=None, help="Search space [default: mobilenet_v3_small_space].")
@click.option("--table", type=click.Path(path_type=Path), default=None,
              help="Latency table [default: this device's cached table, built if missing].")
@click.option("--build-table/--no-build-table", default=None, help="Build the table when missing [default: on].")
@click.option("--target-ms", type=float, default=None, help="Reward target [default: the space's preset].")
@click.option("--max-latency-ms", type=float, default=None, help="Hard ceiling: slower nets are not trained.")
@click.option("--reward", default=None, help="mnasnet | mobilenet_v3 | hard | tunas [default: mobilenet_v3].")
@click.option("--mode", default=None, help="reward | pareto [default: reward].")
@click.option("--searcher", default=None, help=f"{' | '.join(se.STRATEGIES)} [default: tpe].")
@click.option("--trials", type=int, default=None, help="Budget of finished trials [default: 20].")
@click.option("--data", default=None, help="builtin:digits, an image folder or a .npz [default: builtin:digits].")
@click.option("--resolution", type=int, default=None, help="Proxy-training resolution [default: 32].")
@click.option("--steps", type=int, default=None,
              help=f"Proxy-training optimizer steps per candidate [default: {DEFAULT_STEPS}].")
@click.option("--epochs", type=float, default=None, help="Proxy-training budget in epochs instead of steps.")
@click.option("--workers", type=int, default=None, help="Trials at once [default: 1].")
@click.option("--threads", type=int, default=None, help="Torch threads per trial [default: cores/workers].")
@click.option("--device", default=None, help="Training device: cpu, cuda or cuda:N [default: cpu].")
@click.option("--backend", default=None, help="local | ray [default: local].")
@click.option("--address", default=None, help="Ray cluster to join: auto or HOST:PORT [default: start one].")
@click.option("--storage", default=None, help="Optuna storage URL [default: RUN/study.db].")
@click.option("--study", default=None, help="Optuna study name [default: the run dir's name + a random suffix].")
@click.option("--name", default=None, help="Run name, the run dir prefix [default: search].")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run dir [default: ./bneck_runs/NAME-TIMESTAMP].")
@click.option("--seed", type=int, default=None, help="Seeds the searcher and the training [default: 0].")
@click.option("--no-progress", is_flag=True, help="No live table (logs and files only).")
def search_cmd(config_file: Path | None, resume: Path | None, build_table: bool | None, out: Path | None,
               no_progress: bool, **flags: Any) -> None:
    """Search architectures under a latency target; every finished trial is saved, so it resumes."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    overrides = {k: v for k, v in flags.items() if v is not None}
    if build_table is not None:
        overrides["build_table"] = build_table
    if no_progress:
        overrides["progress"] = False
    with user_facing_errors(f"`bneck search --resume {resume or out or 'RUN'}`"):
        if resume is not None and config_file is not None:
            raise ConfigError("--config and --resume: a resumed run uses its saved config.yaml")
        config = None if resume is not None else load_config(config_file, overrides)
        run, setup = start_run(config, out, resume, overrides)
        execute(run, setup)
        from runs.outputs import write_best

        write_best(run)
    summary(run, setup)
