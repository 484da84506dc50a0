"""NetAdapt on a trained network as `bneck netadapt` and `bneck run` use it: the start, the workers, the outputs.

`Start` is what is pruned (a run's trial or a spec + weights); `run_netadapt` loads the latency table, runs (or
resumes) `searchers.netadapt.NetAdapt` with its fine-tunes fanned out to an executor (`executor_evaluate`: each
request a `runs.worker.FineTuneJob`), reports its progress on stderr, draws the trajectory (`runs.outputs`) and
exports the result to ONNX:

    OUT/netadapt.json        what was asked (settings, start, table); a resume must ask the same
    OUT/iterations/NNN/      each finished iteration: spec.json, weights.pt, metrics.json (000: the start)
    OUT/trajectory.parquet   latency and held-out top-1 per iteration; OUT/trajectory.png
    OUT/proposals.parquet    every proposal of every iteration (move, predicted latency, top-1, chosen)
    OUT/final/               the result after the long-term fine-tune: spec.json, arch.txt, weights.pt, model.onnx
    OUT/result.json          summary: predicted latency start/final, top-1 before/after, iterations

Running it again on the same OUT resumes after the last finished iteration (Ctrl-C, kill -9).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import search_space as ss
from runs.errors import console_err
from runs.executors import Executor, WorkerLost, make_executor, stop_on_signals
from runs.outputs import write_trajectory_plot
from runs.worker import FineTuneJob, run_job
from search_space.host import usable_cpus
from searchers.netadapt import (
    Evaluate,
    FineTuneOutcome,
    FineTuneRequest,
    NetAdapt,
    NetAdaptError,
    NetAdaptSettings,
    state_bytes,
)

RETRIES = 2  # a job whose worker died is re-submitted this many times


@dataclass
class Start:
    """The trained network NetAdapt starts from, with the settings it was trained with and where it came from."""

    arch: ss.Arch  # as trained (training resolution, the data's classes)
    weights: bytes
    table: Path | None
    data: str
    resolution: int
    seed: int
    device: str
    origin: str


def start_from_run(run_dir: Path, trial: int | None) -> Start:
    """A run's trial (default: its best) with the weights the run kept."""
    from runs.config import load_saved_config
    from runs.outputs import _frame, _trial_row, trained_arch
    from runs.rundir import RunDir, RunError

    run = RunDir(run_dir).require()
    row = _trial_row(run, _frame(run), trial)
    t = int(row["trial"])
    weights = run.weights_of(t)
    if not weights.is_file():
        raise RunError(f"trial {t} of {run.path} has no kept weights ({weights} missing; a run keeps the best "
                       "keep_weights trials): choose a trial with weights, or pass --arch SPEC --weights W.pt")
    config = load_saved_config(run.config)
    return Start(trained_arch(run, str(row["arch"])), weights.read_bytes(),
                 Path(config.table) if config.table else None, config.data, config.resolution, config.seed,
                 config.device, f"{run.path} trial {t}")


def start_from_spec(spec: str, weights: Path, data: str, resolution: int | None, seed: int, device: str) -> Start:
    """A spec with its trained weights, at `resolution` (default: the spec's) with the data's class count."""
    from evaluators import load_data, trained_arch

    arch = ss.load_arch(spec)
    res = arch.resolution if resolution is None else resolution
    d = load_data(data, resolution=res, seed=seed)
    arch = trained_arch(arch, d)
    model = ss.build_model(arch)
    ss.load_weights(model, weights)
    return Start(arch, state_bytes(model), None, data, res, seed, device, f"{spec} + {weights}")


def executor_evaluate(executor: Executor, settings: NetAdaptSettings, progress: Any = None) -> Evaluate:
    """`evaluate(requests)` over an executor: each request a `runs.worker.FineTuneJob` on the settings' data and
    device, all at once, a lost worker's job re-submitted, errors as failures."""

    def evaluate(requests: Sequence[FineTuneRequest]) -> list[FineTuneOutcome]:
        jobs = [FineTuneJob.of(r, settings) for r in requests]
        pending = {executor.submit(j): j for j in jobs}
        tries = {j.index: 0 for j in jobs}
        done: dict[int, FineTuneOutcome] = {}
        task = progress.add_task("proposals", total=len(jobs)) if progress is not None and len(jobs) > 1 else None
        try:
            while pending:
                for handle, out in executor.wait(list(pending), timeout=0.5):
                    job = pending.pop(handle)
                    if isinstance(out, WorkerLost) and tries[job.index] < RETRIES:
                        tries[job.index] += 1
                        pending[executor.submit(job)] = job
                        continue
                    if isinstance(out, BaseException):
                        reason = f"{type(out).__name__}: {str(out).strip().splitlines()[0] if str(out).strip() else ''}"
                        out = FineTuneOutcome(job.index, 0.0, float("inf"), True, reason, None, 0.0)
                    done[job.index] = out  # a FineTuneJob's outcome
                    if task is not None:
                        progress.update(task, advance=1)
        finally:
            if task is not None:
                progress.remove_task(task)
        return [done[j.index] for j in jobs]

    return evaluate


def inline_evaluate(settings: NetAdaptSettings) -> Evaluate:
    """`evaluate(requests)` in this process, one after another (library use and tests; no executor)."""

    def evaluate(requests: Sequence[FineTuneRequest]) -> list[FineTuneOutcome]:
        return [run_job(FineTuneJob.of(r, settings)) for r in requests]

    return evaluate


def run_netadapt(start: Start, table_path: Path, out: Path, settings_kw: dict[str, Any], workers: int,
                 threads: int | None, backend: str, address: str | None, show_progress: bool = True) -> dict[str, Any]:
    """Load the table, run (or resume) NetAdapt in `out`, export the result to ONNX; returns the summary.
    `settings_kw["measured"]` may be "auto": timed when the table can be timed here, else by the table, saying why."""

    import latency as lat
    from bneck_common.progress import progress_bar

    table = lat.LatencyTable.load(table_path)
    model = lat.LatencyModel(table)

    why_not = table.not_measurable_here()
    if settings_kw.get("measured") == "auto":  # bneck run's default: timed wherever this table can be
        settings_kw = {**settings_kw, "measured": not why_not}
        if why_not:
            console_err.print(f"    NetAdapt steers by the table's predictions, not by timings: the table "
                              f"{Path(table_path).name} {why_not.removeprefix('it ')}", highlight=False)
    threads = threads or max(1, usable_cpus() // workers)
    settings = NetAdaptSettings(**{**settings_kw, "data": start.data, "resolution": start.resolution,
                                   "seed": start.seed, "device": start.device, "threads": threads})
    identity = {"table": str(Path(table_path).resolve())}
    measure = None
    if settings.measured:
        if why_not:
            raise NetAdaptError(f"measured NetAdapt times networks on this host in the scale of the table "
                                f"{Path(table_path).name}, but {why_not}: build one here (bneck latency build), "
                                "or run without --measured")

        def measure(arch: ss.Arch) -> float:  # whole, deployed, beside the table's anchors, in its scale
            return float(lat.measure_in_table_scale(table, [model.deployed(arch)]).us[0]) / 1000.0
    executor = make_executor(backend, workers, threads, address, start.device)
    bar = progress_bar(transient=True) if show_progress else None
    t0 = time.time()
    state: dict[str, Any] = {}

    def on_event(kind: str, info: dict[str, Any]) -> None:
        if kind == "noop":
            console_err.print(f"the start is already at {info['start_ms']:.3f} ms <= target {info['target_ms']:.3f} "
                              "ms: nothing to prune (no-op); scoring it as is")
        elif kind == "resumed":
            console_err.print(f"resuming {out} after iteration {info['iteration']}")
        elif kind == "finished_before":
            console_err.print(f"{out} is already finished (result.json); remove it or use another --out to redo")
        elif kind == "iteration":
            state.setdefault("first_ms", info["current_ms"])
            if bar is not None and "task" not in state:
                state["task"] = bar.add_task("NetAdapt", total=1.0)
            console_err.print(f"iteration {info['iteration']}: {info['current_ms']:.3f} ms, δ {info['delta_ms']:.3f} "
                              f"ms, {info['proposals']} proposals", highlight=False)
        elif kind == "selected":
            timed = "" if info["measured_ms"] is None else \
                f" (measured {info['measured_ms']:.3f}, predicted {info['predicted_ms']:.3f})"
            console_err.print(f"  -> {info['move']}: {info['latency_ms']:.3f} ms{timed}, held-out top-1 "
                              f"{100 * info['top1']:.2f}%", highlight=False)
            if bar is not None and "task" in state:
                span = max(state["first_ms"] - info["target_ms"], 1e-9)
                bar.update(state["task"], completed=min(1.0, (state["first_ms"] - info["latency_ms"]) / span),
                           description=f"NetAdapt {info['latency_ms']:.3f} -> {info['target_ms']:.3f} ms")
        elif kind == "long":
            console_err.print(f"long-term fine-tune: {info['epochs']:g} epochs on the whole training split")
        elif kind == "stopped":
            console_err.print(f"[yellow]stopped[/]: {info['reason']}", highlight=False)

    na = NetAdapt(out, settings, model.ms, executor_evaluate(executor, settings, bar), on_event, identity, measure)
    try:
        with stop_on_signals(), bar if bar is not None else contextlib.nullcontext():
            summary = na.run(start.arch, start.weights)
    finally:
        executor.close()
    write_trajectory_plot(out, settings.target_ms)
    final = ss.Arch.from_json((na.final_dir / "spec.json").read_text())
    onnx = na.final_dir / "model.onnx"
    if not onnx.is_file():
        # at the table's resolution, with the trained weights' classes (the table's count is for latency only)
        ss.export_arch(final.replace(resolution=model.resolution), onnx, "onnx", na.final_dir / "weights.pt")
    summary = {**summary, "out": str(out), "origin": start.origin, "wall_s": round(time.time() - t0, 1)}
    return summary


__all__ = ["RETRIES", "Start", "executor_evaluate", "inline_evaluate", "run_netadapt", "start_from_run",
           "start_from_spec"]
