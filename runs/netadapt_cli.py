"""`bneck netadapt`: prune a trained network (a run's trial, or a spec + weights) down to a latency target.

    OUT/netadapt.json        what was asked (settings, start, table); a resume must ask the same
    OUT/iterations/NNN/      each finished iteration: spec.json, weights.pt, metrics.json (000: the start)
    OUT/trajectory.parquet   latency and held-out top-1 per iteration; OUT/trajectory.png
    OUT/proposals.parquet    every proposal of every iteration (move, predicted latency, top-1, chosen)
    OUT/final/               the result after the long-term fine-tune: spec.json, arch.txt, weights.pt, model.onnx
    OUT/result.json          summary: predicted latency start/final, top-1 before/after, iterations

Running the same command again resumes after the last finished iteration (Ctrl-C, kill -9).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

import search_space as ss
from runs.errors import UserError, console_err, console_out
from runs.executors import ExecutorError, WorkerLost, make_executor, stop_on_signals
from search_space.host import usable_cpus

RETRIES = 2  # a job whose worker died is re-submitted this many times


@dataclass
class Start:
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
    from evaluators import load_data
    from searchers.netadapt import state_bytes

    arch = ss.load_arch(spec)
    res = arch.resolution if resolution is None else resolution
    d = load_data(data, resolution=res, seed=seed)
    arch = arch.replace(resolution=res, num_classes=d.num_classes)
    model = ss.build_model(arch)
    ss.load_weights(model, weights)
    return Start(arch, state_bytes(model), None, data, res, seed, device, f"{spec} + {weights}")


def executor_evaluate(executor: Any, progress: Any = None) -> Any:
    """`evaluate(jobs)` over an executor: all jobs at once, a lost worker's job re-submitted, errors as failures."""
    from searchers.netadapt import FineTuneOutcome

    def evaluate(jobs: list[Any]) -> list[Any]:
        pending = {executor.submit(j): j for j in jobs}
        tries = {j.index: 0 for j in jobs}
        done: dict[int, Any] = {}
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
                    done[job.index] = out
                    if task is not None:
                        progress.update(task, advance=1)
        finally:
            if task is not None:
                progress.remove_task(task)
        return [done[j.index] for j in jobs]

    return evaluate


def run_netadapt(start: Start, table_path: Path, out: Path, settings_kw: dict[str, Any], workers: int,
                 threads: int | None, backend: str, address: str | None, show_progress: bool = True) -> dict[str, Any]:
    """Load the table, run (or resume) NetAdapt in `out`, export the result to ONNX; returns the summary."""

    import latency as lat
    from search_space.progress import progress_bar
    from searchers.netadapt import NetAdapt, NetAdaptSettings

    table = lat.LatencyTable.load(table_path)
    num_classes = table.space.num_classes

    def latency(arch: ss.Arch) -> float:
        return table.predict_ms(arch.replace(resolution=table.resolution, num_classes=num_classes))

    threads = threads or max(1, usable_cpus() // workers)
    settings = NetAdaptSettings(**{**settings_kw, "data": start.data, "resolution": start.resolution,
                                   "seed": start.seed, "device": start.device, "threads": threads})
    identity = {"table": str(Path(table_path).resolve())}
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
            console_err.print(f"  -> {info['move']}: {info['latency_ms']:.3f} ms, held-out top-1 "
                              f"{100 * info['top1']:.2f}%", highlight=False)
            if bar is not None and "task" in state:
                span = max(state["first_ms"] - info["target_ms"], 1e-9)
                bar.update(state["task"], completed=min(1.0, (state["first_ms"] - info["latency_ms"]) / span),
                           description=f"NetAdapt {info['latency_ms']:.3f} -> {info['target_ms']:.3f} ms")
        elif kind == "long":
            console_err.print(f"long-term fine-tune: {info['epochs']:g} epochs on the whole training split")
        elif kind == "stopped":
            console_err.print(f"[yellow]stopped[/]: {info['reason']}", highlight=False)

    na = NetAdapt(out, settings, latency, executor_evaluate(executor, bar), on_event, identity)
    try:
        with stop_on_signals(), bar if bar is not None else contextlib.nullcontext():
            summary = na.run(start.arch, start.weights)
    finally:
        executor.close()
    final = ss.Arch.from_json((na.final_dir / "spec.json").read_text())
    onnx = na.final_dir / "model.onnx"
    if not onnx.is_file():
        deployed = final.replace(resolution=table.resolution)
        ss.export_arch(deployed, onnx, "onnx", na.final_dir / "weights.pt")
    summary = {**summary, "out": str(out), "origin": start.origin, "wall_s": round(time.time() - t0, 1)}
    return summary


def print_summary(s: dict[str, Any]) -> None:
    out = Path(s["out"])
    if s.get("noop"):
        console_out.print(f"no-op: {s['start_predicted_ms']:.3f} ms already meets the target {s['target_ms']:.3f} ms")
    else:
        console_out.print(
            f"NetAdapt: {s['start_predicted_ms']:.3f} -> {s['final_predicted_ms']:.3f} ms predicted (target "
            f"{s['target_ms']:.3f}) in {s['iterations']} iterations; top-1 {100 * s['top1_before']:.2f}% -> "
            f"{100 * s['top1_after']:.2f}% after {s['long_epochs']:g} epochs of long-term fine-tune",
            highlight=False)
        if s.get("stopped"):
            console_out.print(f"[yellow]the target was not reached[/]: {s['stopped']}", highlight=False)
    for name in ("final/spec.json", "final/weights.pt", "final/model.onnx", "trajectory.parquet", "trajectory.png",
                 "result.json"):
        if (out / name).exists():
            console_out.print(f"  {out / name}", highlight=False)


@click.command("netadapt")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="Start from a run dir's trial (with its data, resolution, seed and table).")
@click.option("--trial", type=int, default=None, help="With --run: the trial [default: the best].")
@click.option("--arch", "spec", default=None, help="Start from a spec (file, JSON, arch string or preset).")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="With --arch: its trained state dict.")
@click.option("--table", type=click.Path(path_type=Path), default=None,
              help="Latency table (.parquet) [default with --run: the run's].")
@click.option("--target-ms", type=float, required=True, help="Latency to reach, as the table predicts it.")
@click.option("--step-frac", type=float, default=0.01, show_default=True,
              help="δ per iteration as a fraction of the starting latency (MobileNetV3: 0.01).")
@click.option("--decay", type=float, default=1.0, show_default=True, help="δ_i = δ_0·decay^i (NetAdapt: < 1).")
@click.option("--selection", type=click.Choice(["ratio", "accuracy"]), default="ratio", show_default=True,
              help="ratio: max ΔAcc/|ΔLat| (MobileNetV3); accuracy: max accuracy (NetAdapt).")
@click.option("--short-steps", type=int, default=10, show_default=True, help="Short-term fine-tune steps.")
@click.option("--short-lr", type=float, default=0.01, show_default=True)
@click.option("--long-epochs", type=float, default=2.0, show_default=True, help="Long-term fine-tune epochs.")
@click.option("--long-lr", type=float, default=0.05, show_default=True)
@click.option("--holdout", type=float, default=0.2, show_default=True,
              help="Part of the training split that ranks proposals.")
@click.option("--max-cut", type=float, default=0.5, show_default=True,
              help="Largest fraction of a slot's width one step may cut.")
@click.option("--collapse-gap", type=float, default=0.05, show_default=True,
              help="Never select a proposal this much top-1 below its iteration's best.")
@click.option("--collapse-floor", type=float, default=0.8, show_default=True,
              help="... or below this fraction of the start's holdout top-1.")
@click.option("--data", default=None, help="With --arch: the data [default: builtin:digits].")
@click.option("--resolution", type=int, default=None, help="With --arch: training resolution [default: the spec's].")
@click.option("--seed", type=int, default=None, help="[default: the run's, or 0]")
@click.option("--device", default=None, help="cpu | cuda | cuda:N [default: the run's, or cpu]")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Proposals at once.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Torch threads per worker.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster to join: auto or HOST:PORT [default: start one].")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output dir [default: RUN/netadapt, or ./bneck_runs/netadapt-ARCHID]. Re-run to resume.")
@click.option("--no-progress", is_flag=True)
def netadapt_cmd(run_dir: Path | None, trial: int | None, spec: str | None, weights: Path | None, table: Path | None,
                 target_ms: float, data: str | None, resolution: int | None, seed: int | None, device: str | None,
                 workers: int, threads: int | None, backend: str, address: str | None, out: Path | None,
                 no_progress: bool, **settings_kw: Any) -> None:
    """Prune a trained network layer by layer (NetAdapt, as in MobileNetV3) until the table predicts --target-ms."""
    from evaluators import DataError
    from latency import LatencyError
    from runs.rundir import RunError
    from search_space.paths import RUNS_DIR
    from searchers.netadapt import NetAdaptError

    try:
        if (run_dir is None) == (spec is None):
            raise UserError("give --run DIR (a search's trial) or --arch SPEC --weights W.pt, not both or neither")
        if table is not None and not table.is_file():
            raise UserError(f"--table {table}: no such file")
        if run_dir is not None:
            for flag, v in (("--weights", weights), ("--data", data), ("--resolution", resolution)):
                if v is not None:
                    raise UserError(f"{flag} goes with --arch; with --run the run's is used")
            start = start_from_run(run_dir, trial)
            if seed is not None:
                start.seed = seed
            if device is not None:
                start.device = device
        else:
            if trial is not None:
                raise UserError("--trial goes with --run")
            if weights is None:
                raise UserError("--arch needs --weights W.pt (NetAdapt prunes a trained network)")
            start = start_from_spec(spec, weights, data or "builtin:digits", resolution, seed or 0,  # type: ignore[arg-type]
                                    device or "cpu")
        table_path = table or start.table
        if table_path is None:
            raise UserError("--table: give the latency table (.parquet) of the target device")
        if not Path(table_path).is_file():
            raise UserError(f"--table {table_path}: no such file")
        if out is None:
            out = run_dir / "netadapt" if run_dir is not None else RUNS_DIR / f"netadapt-{start.arch.arch_id}"
        summary = run_netadapt(start, Path(table_path), out, {"target_ms": target_ms, **settings_kw}, workers,
                               threads, backend, address, not no_progress)
    except KeyboardInterrupt:
        console_err.print(f"interrupted: finished iterations are saved in {out}; run the same command to resume")
        raise SystemExit(130) from None
    except (NetAdaptError, LatencyError, ss.SpecError, ss.ExportError, DataError, RunError, ExecutorError,
            ValueError) as exc:
        raise UserError(str(exc).strip().splitlines()[0]) from None
    print_summary(summary)


__all__ = ["executor_evaluate", "netadapt_cmd", "run_netadapt", "start_from_run", "start_from_spec"]
