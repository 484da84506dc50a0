"""`bneck run`: the main job, table -> search -> export -> report, on the embedded defaults or a config file.

The defaults are sized for a laptop-class CPU: a real MobileNetV3-Small-space search on builtin:digits with
this machine's 224 px latency table (built once, then cached), a small budget, in well under 10 minutes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import Field

from runs.config import ConfigError, RunConfig, default_run_dir, read_yaml
from runs.errors import UserError, console_err, console_out
from runs.rundir import RunDir
from search_space.paths import RUNS_DIR

# The main job: evolution with a small population, so that 12 trials are more than random sampling.
MAIN_JOB: dict[str, Any] = {
    "name": "main", "space": "mobilenet_v3_small_space", "data": "builtin:digits", "resolution": 32,
    "epochs": 3.0, "trials": 12, "searcher": "evolution",
    "searcher_options": {"population": 6, "sample_size": 3}, "reward": "mobilenet_v3",
}
EXPORT_FORMATS = ("json", "onnx", "torchscript", "timm")


class PipelineConfig(RunConfig):
    """A run config plus what the pipeline does after the search."""

    exports: list[Literal["json", "onnx", "torchscript", "timm"]] = Field(default_factory=lambda: ["json", "onnx",
                                                                                                   "timm"])

    def run_config(self) -> RunConfig:
        return RunConfig.model_validate(self.model_dump(exclude={"exports"}))


def load_pipeline(path: Path | None) -> PipelineConfig:
    from pydantic import ValidationError

    from runs.config import _first_error

    values = dict(MAIN_JOB) if path is None else read_yaml(path)
    try:
        return PipelineConfig.model_validate(values)
    except ValidationError as exc:
        where = f"config {path}: " if path is not None else ""
        raise ConfigError(where + _first_error(exc)) from None


def run_pipeline(pipeline: PipelineConfig, out: Path | None) -> dict[str, Any]:
    """Every step, with what it produced; each step's files are in the run dir before the next starts."""
    from runs.outputs import export_trial, write_best, write_report
    from runs.search_cli import execute, start_run, summary

    t0 = time.time()
    config = pipeline.run_config()
    run = RunDir(out if out is not None else default_run_dir(config, RUNS_DIR))
    console_err.print(f"[bold]1/4 latency table[/] for {config.space} at {config.latency_resolution} px "
                      "(cached per device; built on first use)")
    run_, setup = start_run(config, run.path, None, {})
    console_err.print(f"    {setup.table_path} · target {setup.target_ms:.3f} ms (the space's preset)")
    console_err.print(f"[bold]2/4 search[/]: {config.trials} trials of {config.searcher} on {config.data}")
    execute(run_, setup)
    summary(run_, setup)
    console_err.print("[bold]3/4 export[/] of the best architecture")
    files: dict[str, Any] = {"run": str(run.path), "trials": str(run.trials), "pareto": str(run.pareto)}
    best = write_best(run)
    files["best"] = str(run.best)
    for fmt in pipeline.exports:
        files[f"export_{fmt}"] = export_trial(run, fmt)["path"]
    console_err.print("[bold]4/4 report[/]")
    png, md = write_report(run)
    files.update(report_png=str(png), report_md=str(md))
    files["wall_s"] = round(time.time() - t0, 1)
    files["best_trial"] = None if best is None else best["trial"]
    return files


@click.command("run")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="A pipeline config (a run config plus `exports`); default: the embedded main job.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run dir [default: ./bneck_runs/NAME-TIMESTAMP].")
def run_cmd(config_file: Path | None, out: Path | None) -> None:
    """The main job: latency table -> search -> export -> report (defaults: digits, V3-Small space)."""
    from runs.search_cli import USER_ERRORS

    try:
        pipeline = load_pipeline(config_file)
        files = run_pipeline(pipeline, out)
    except USER_ERRORS as exc:
        raise UserError(str(exc)) from None
    console_out.print(f"done in {files['wall_s']:.0f} s. Everything is in {files['run']}:")
    for key in ("trials", "pareto", "best", *[k for k in files if k.startswith("export_")], "report_png",
                "report_md"):
        console_out.print(f"  {key:14s} {files[key]}", highlight=False)


__all__ = ["EXPORT_FORMATS", "MAIN_JOB", "PipelineConfig", "load_pipeline", "run_cmd", "run_pipeline"]
