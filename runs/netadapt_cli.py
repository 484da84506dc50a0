"""`bneck netadapt`: prune a trained network (a run's trial, or a spec + weights) down to a latency target.

Parses the flags, calls `runs.netadapt_run.run_netadapt` (which documents OUT's layout) and prints the summary.
Running the same command again resumes after the last finished iteration (Ctrl-C, kill -9).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

import search_space as ss
from runs.errors import UserError, console_err, console_out
from runs.executors import ExecutorError
from runs.netadapt_run import run_netadapt, start_from_run, start_from_spec
from searchers.netadapt import NetAdaptSettings

_DEFAULT = NetAdaptSettings  # the options' defaults are the settings' own (one owner)


def print_summary(s: dict[str, Any]) -> None:
    """What NetAdapt did (predicted latency and top-1, before and after) and the files it wrote."""
    out = Path(s["out"])
    if s.get("noop"):
        console_out.print(f"no-op: {s['start_predicted_ms']:.3f} ms already meets the target {s['target_ms']:.3f} ms")
    else:
        console_out.print(
            f"NetAdapt: {s['start_predicted_ms']:.3f} -> {s['final_predicted_ms']:.3f} ms predicted (target "
            f"{s['target_ms']:.3f}) in {s['iterations']} iterations; top-1 {100 * s['top1_before']:.2f}% -> "
            f"{100 * s['top1_after']:.2f}% after {s['long_epochs']:g} epochs of long-term fine-tune",
            highlight=False)
        if s.get("final_measured_ms") is not None:
            console_out.print(f"  measured on this host: {s['start_measured_ms']:.3f} -> "
                              f"{s['final_measured_ms']:.3f} ms", highlight=False)
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
@click.option("--target-ms", type=float, required=True,
              help="Latency to reach, as the table predicts it (with --measured: as measured).")
@click.option("--step-frac", type=float, default=_DEFAULT.step_frac, show_default=True,
              help="δ per iteration as a fraction of the starting latency (MobileNetV3: 0.01).")
@click.option("--decay", type=float, default=_DEFAULT.decay, show_default=True,
              help="δ_i = δ_0·decay^i (NetAdapt: < 1).")
@click.option("--selection", type=click.Choice(["ratio", "accuracy"]), default=_DEFAULT.selection, show_default=True,
              help="ratio: max ΔAcc/|ΔLat| (MobileNetV3); accuracy: max accuracy (NetAdapt).")
@click.option("--short-steps", type=int, default=_DEFAULT.short_steps, show_default=True,
              help="Short-term fine-tune steps (benchmarks/netadapt.py: 100 ranked every iteration beyond noise).")
@click.option("--short-lr", type=float, default=_DEFAULT.short_lr, show_default=True)
@click.option("--long-epochs", type=float, default=_DEFAULT.long_epochs, show_default=True,
              help="Long-term fine-tune epochs.")
@click.option("--long-lr", type=float, default=_DEFAULT.long_lr, show_default=True)
@click.option("--holdout", type=float, default=_DEFAULT.holdout, show_default=True,
              help="Part of the training split that ranks proposals.")
@click.option("--max-cut", type=float, default=_DEFAULT.max_cut, show_default=True,
              help="Largest fraction of a slot's width one step may cut.")
@click.option("--collapse-gap", type=float, default=_DEFAULT.collapse_gap, show_default=True,
              help="Never select a proposal this much top-1 below its iteration's best.")
@click.option("--collapse-floor", type=float, default=_DEFAULT.collapse_floor, show_default=True,
              help="... or below this fraction of the start's holdout top-1.")
@click.option("--measured", is_flag=True,
              help="Time the start and each selected network on this host (the table's protocol, in its scale) and "
                   "prune until the measurement meets --target-ms: the table over-credits narrow widths (NetAdapt "
                   "to 60%% measured 1.06x its prediction). The table must come from this host.")
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
    from bneck_common.paths import RUNS_DIR
    from evaluators import DataError
    from latency import LatencyError
    from runs.rundir import RunError
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


__all__ = ["netadapt_cmd", "print_summary"]
