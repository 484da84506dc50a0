"""The main job's pipeline, table -> search -> NetAdapt -> export -> report, on the defaults or a config file.

`bneck run` (`runs.run_cli`) parses and prints; this module holds the pipeline config and runs its steps.

The defaults are sized for a laptop-class CPU: a real MobileNetV3-Small-space search on builtin:fashion (or
builtin:digits where Fashion-MNIST is not installed) with this machine's 224 px latency table (built once, then
cached), a small budget, in under 10 minutes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bneck_common.paths import RUNS_DIR, atomic_write
from runs.config import ConfigError, RunConfig, _first_error, default_run_dir, load_saved_config, read_yaml
from runs.errors import console_err
from runs.rundir import RunDir

# The main job: evolution with a small population, so that a dozen trials are more than random sampling. On
# builtin:fashion (Fashion-MNIST's 10k subset) where Debian's dataset-fashion-mnist is installed; builtin:digits
# (always there, but saturating: nearly every net scores 97-98%) where it is not. Both fit 10 minutes from an empty
# cache on a 2-core VM, table build included: that is why the fashion proxy is 100 steps, a sixth of the search
# default (benchmarks/proxy_fidelity.py measures what that costs in ranking fidelity).
MAIN_JOB_FASHION: dict[str, Any] = {
    "name": "main", "space": "mobilenet_v3_small_space", "data": "builtin:fashion:10000", "resolution": 32,
    "steps": 100, "trials": 10, "searcher": "evolution",
    "searcher_options": {"population": 5, "sample_size": 3}, "reward": "mobilenet_v3",
}
MAIN_JOB_DIGITS: dict[str, Any] = {
    "name": "main", "space": "mobilenet_v3_small_space", "data": "builtin:digits", "resolution": 32,
    "steps": 69, "trials": 12, "searcher": "evolution",  # 69 steps: 3 epochs of digits
    "searcher_options": {"population": 6, "sample_size": 3}, "reward": "mobilenet_v3",
}


def main_job() -> dict[str, Any]:
    """The embedded main job for this machine: on fashion when it is installed, else on digits."""
    from evaluators import fashion_installed

    return dict(MAIN_JOB_FASHION if fashion_installed() else MAIN_JOB_DIGITS)


EXPORT_FORMATS = ("json", "onnx", "torchscript", "timm")


class NetAdaptStep(BaseModel):
    """NetAdapt on the best trial after the search (`netadapt: null` skips it). Defaults are the main job's: δ 3%
    (3–4 iterations to 90%), the 100-step short-term fine-tunes and guard rails of benchmarks/netadapt.py, 2 long
    epochs. Why 100 steps: there every iteration's proposals spread beyond twice the holdout's standard error,
    while their top-1 right after the cut (what a 5-step fine-tune sees) ranks them at median τ 0.53 / 0.71 to the
    fine-tuned ranking and picks the same best in 0 / 2 of 9 / 10 iterations (80% / 60% targets). Steered by
    timings on this host whenever the table was measured here (`measured: auto`, ~5-12 s a selected network): in
    benchmarks/netadapt.py --measured its results measured within 4% of their targets in 5 legs of 2 runs, where
    the table alone let them drift to +4.4% at 60% and +22.9% at 40%."""

    model_config = ConfigDict(extra="forbid")
    target_frac: float = Field(0.9, gt=0, lt=1, description="target = this x the best trial's predicted latency")
    target_ms: float | None = Field(None, gt=0, description="an absolute target instead of target_frac")
    step_frac: float = Field(0.03, gt=0, lt=1)
    decay: float = Field(1.0, gt=0, le=1)
    selection: Literal["ratio", "accuracy"] = "ratio"
    short_steps: int = Field(100, ge=0)
    long_epochs: float = Field(2.0, ge=0)
    max_cut: float = Field(0.5, gt=0, le=1, description="largest fraction of a slot's width one step may cut")
    collapse_gap: float = Field(0.05, gt=0, le=1, description="never select a proposal this far below the best")
    collapse_floor: float = Field(0.8, ge=0, lt=1, description="... or below this fraction of the start's top-1")
    workers: int = Field(2, ge=1, description="proposals fine-tuned at once (the result does not depend on it)")
    measured: bool | Literal["auto"] = Field(
        "auto", description="steer by timing each selected network on this host in the table's scale; auto: when "
                            "the table was measured on this host (else by the table, saying why)")


class PipelineConfig(RunConfig):
    """A run config plus what the pipeline does after the search."""

    exports: list[Literal["json", "onnx", "torchscript", "timm"]] = Field(default_factory=lambda: ["json", "onnx",
                                                                                                   "timm"])
    netadapt: NetAdaptStep | None = Field(default_factory=NetAdaptStep)

    def run_config(self) -> RunConfig:
        return RunConfig.model_validate(self.model_dump(exclude={"exports", "netadapt"}))


def load_pipeline(path: Path | None) -> PipelineConfig:
    values = main_job() if path is None else read_yaml(path)
    try:
        return PipelineConfig.model_validate(values)
    except ValidationError as exc:
        where = f"config {path}: " if path is not None else ""
        raise ConfigError(where + _first_error(exc)) from None


def run_pipeline(pipeline: PipelineConfig | None, out: Path | None, resume: Path | None = None) -> dict[str, Any]:
    """Every step, with what it produced; each step's files are in the run dir before the next starts.

    With `resume` (a run dir `bneck run` started), the saved pipeline continues: the search resumes (or is
    already done), NetAdapt resumes from its last finished iteration with the same target, then export and
    report. One process drives the run from the search to the report (the run dir's lock is held throughout)."""
    from runs.session import execute, start_run, summary

    t0 = time.time()
    if resume is not None:
        run = RunDir(resume).require()
        saved = run.pipeline
        if not saved.is_file():
            raise ConfigError(f"{run.path} was not started by `bneck run` (no {saved.name}): resume it with "
                              f"`bneck search --resume {run.path}`")
        try:
            extra = read_yaml(saved)
            pipeline = PipelineConfig.model_validate({**load_saved_config(run.config).model_dump(), **extra})
        except ValidationError as exc:
            raise ConfigError(f"{saved}: " + _first_error(exc)) from None
        config = pipeline.run_config()
    else:
        assert pipeline is not None
        config = pipeline.run_config()
        run = RunDir(out if out is not None else default_run_dir(config, RUNS_DIR))
    steps = 5 if pipeline.netadapt is not None else 4
    console_err.print(f"[bold]1/{steps} latency table[/] for {config.space} at {config.latency_resolution} px "
                      "(cached per device; built on first use)")
    run_, setup = start_run(None if resume is not None else config, run.path, resume, {})
    try:
        if resume is None:
            atomic_write(run.pipeline, yaml.safe_dump(
                pipeline.model_dump(mode="json", include={"exports", "netadapt"}), sort_keys=False))
        console_err.print(f"    {setup.table_path} · target {setup.target_ms:.3f} ms (the space's preset)")
        console_err.print(f"[bold]2/{steps} search[/]: {config.trials} trials of {config.searcher} on {config.data}")
        execute(run_, setup, unlock=False, resume_command="bneck run --resume")
        summary(run_, setup)
        return _after_search(run, pipeline, config, steps, t0)
    except KeyboardInterrupt:
        console_err.print(f"interrupted: everything finished is kept in {run.path}; continue with "
                          f"`bneck run --resume {run.path}`", soft_wrap=True, highlight=False)
        raise SystemExit(130) from None
    finally:
        run_.unlock()


def _after_search(run: RunDir, pipeline: PipelineConfig, config: RunConfig, steps: int, t0: float) -> dict[str, Any]:
    from runs.outputs import export_trial, write_best, write_report

    files: dict[str, Any] = {"run": str(run.path), "trials": str(run.trials), "pareto": str(run.pareto)}
    best = write_best(run)
    files["best"] = str(run.best)
    if pipeline.netadapt is not None and best is not None:
        console_err.print(f"[bold]3/{steps} NetAdapt[/] on the best trial ({best['trial']}, "
                          f"{best['latency_ms']:.3f} ms)")
        files.update(_netadapt(run, pipeline.netadapt, float(best["latency_ms"]), config))
    console_err.print(f"[bold]{steps - 1}/{steps} export[/] of the best architecture")
    for fmt in pipeline.exports:
        files[f"export_{fmt}"] = export_trial(run, fmt)["path"]
    console_err.print(f"[bold]{steps}/{steps} report[/]")
    png, md = write_report(run)
    files.update(report_png=str(png), report_md=str(md))
    files["wall_s"] = round(time.time() - t0, 1)
    files["best_trial"] = None if best is None else best["trial"]
    return files


def _netadapt(run: RunDir, step: NetAdaptStep, best_ms: float, config: RunConfig) -> dict[str, Any]:
    from runs.netadapt_run import run_netadapt, start_from_run

    start = start_from_run(run.path, None)
    assert start.table is not None  # a run's saved config always names its table
    target = step.target_ms if step.target_ms is not None else step.target_frac * best_ms
    settings = {"target_ms": target, "step_frac": step.step_frac, "decay": step.decay, "selection": step.selection,
                "short_steps": step.short_steps, "long_epochs": step.long_epochs, "max_cut": step.max_cut,
                "collapse_gap": step.collapse_gap, "collapse_floor": step.collapse_floor, "measured": step.measured}
    threads = max(1, config.worker_threads() * config.workers // step.workers)
    summary = run_netadapt(start, start.table, run.path / "netadapt", settings, step.workers, threads, "local",
                           None, config.progress)
    console_err.print(f"    {summary['start_predicted_ms']:.3f} -> {summary['final_predicted_ms']:.3f} ms predicted "
                      f"in {summary['iterations']} iterations, top-1 {100 * summary['top1_before']:.2f}% -> "
                      f"{100 * summary['top1_after']:.2f}%", highlight=False)
    final = run.path / "netadapt" / "final"
    return {"netadapt_spec": str(final / "spec.json"), "netadapt_onnx": str(final / "model.onnx"),
            "netadapt_trajectory": str(run.path / "netadapt" / "trajectory.png")}


__all__ = ["EXPORT_FORMATS", "MAIN_JOB_DIGITS", "MAIN_JOB_FASHION", "NetAdaptStep", "PipelineConfig", "load_pipeline",
           "main_job", "run_pipeline"]
