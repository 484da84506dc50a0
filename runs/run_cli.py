"""`bneck run`: the main job, table -> search -> NetAdapt -> export -> report (the pipeline: `runs.pipeline`)."""

from __future__ import annotations

from pathlib import Path

import click

from runs.config import ConfigError
from runs.errors import console_err, console_out
from runs.pipeline import load_pipeline, run_pipeline
from runs.session import user_facing_errors


@click.command("run")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="A pipeline config (a run config plus `exports`); default: the embedded main job.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run dir [default: ./bneck_runs/NAME-TIMESTAMP].")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Continue a `bneck run` in this dir after Ctrl-C or a kill (search, NetAdapt, export, report).")
def run_cmd(config_file: Path | None, out: Path | None, resume: Path | None) -> None:
    """The main job: latency table -> search -> NetAdapt -> export -> report (defaults: fashion, V3-Small space)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with user_facing_errors(f"`bneck run --resume {resume or out or 'RUN'}`"):
        if resume is not None and (config_file is not None or out is not None):
            raise ConfigError("--resume continues the run as it was started: no --config or --out with it")
        pipeline = None if resume is not None else load_pipeline(config_file)
        if pipeline is not None and config_file is None and pipeline.data == "builtin:digits":
            console_err.print("builtin:fashion is not installed (`sudo apt-get install dataset-fashion-mnist` or "
                              "`make fashion`): the main job searches builtin:digits, which saturates",
                              soft_wrap=True, highlight=False)
        files = run_pipeline(pipeline, out, resume)
    console_out.print(f"done in {files['wall_s']:.0f} s. Everything is in {files['run']}:")
    for key in ("trials", "pareto", "best", *[k for k in files if k.startswith(("export_", "netadapt_"))],
                "report_png", "report_md"):
        console_out.print(f"  {key:14s} {files[key]}", highlight=False)


__all__ = ["run_cmd"]
