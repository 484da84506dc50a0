"""`bneck report DIR` and the run-dir form of `bneck export`: what a finished (or interrupted) run shows and ships."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

import search_space as ss
from runs.errors import UserError
from runs.errors import console_err as _err
from runs.outputs import export_trial, write_report
from runs.rundir import RunDir, RunError


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")
def report_cmd(run_dir: Path, as_json: bool) -> None:
    """Write RUN/report.png (top-1 vs latency, Pareto front, reference) and RUN/report.md (the summary)."""
    try:
        png, md = write_report(RunDir(run_dir))
    except RunError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"png": str(png), "md": str(md)}))
    else:
        click.echo(f"wrote {png}")
        click.echo(f"wrote {md}")


def is_run_dir(arg: str) -> bool:
    """`bneck export` takes a run dir where it would take a spec: any existing directory is meant as one. An
    argument too long to be a path (a large-space arch string is 400+ characters) is not one."""
    try:
        return Path(arg).is_dir()
    except OSError:  # ENAMETOOLONG: pathlib only swallows "does not exist"
        return False


def export_run(run_dir: str, fmt: str, out: Path | None, trial: int | None, as_json: bool,
               ignored: dict[str, Any]) -> None:
    """Export one trial of a run (default: the best), with its trained weights when the run kept them."""
    given = [f"--{k.replace('_', '-')}" for k, v in ignored.items() if v is not None]
    if given:
        raise UserError(f"{', '.join(given)}: not used with a run dir (a trial is exported as it was trained, "
                        "with its kept weights)")
    try:
        with _err.status(f"exporting {fmt} ..."):
            info = export_trial(RunDir(run_dir), fmt, out, trial)
    except (RunError, ss.SpecError, ss.ExportError) as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps(info))
        return
    extra = f", max |onnx - torch| = {info['max_abs_diff']:.2g}" if "max_abs_diff" in info else ""
    if fmt in ("onnx", "torchscript"):
        extra += ", trained weights" if info["weights_included"] else ", UNTRAINED: no weights kept for this trial"
    for m in info.get("mismatches") or []:
        _err.print(f"timm mismatch: {m}", markup=False, highlight=False)
    click.echo(f"wrote {info['path']} (trial {info['trial']}, {info['bytes']:,} bytes{extra})")
