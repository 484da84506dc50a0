"""`bneck latency ...`: build, inspect, use and check latency tables."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import click

import latency as lat
import search_space as ss
from bneck_common.progress import progress_bar
from runs.errors import UserError, console_err, console_out


def _provider(value: str) -> str:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if value not in available:
        raise UserError(f"--provider {value!r} not available here (available: {', '.join(available)})")
    return value


def _load_table(path: Path) -> lat.LatencyTable:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            table = lat.LatencyTable.load(path)
        except lat.LatencyError as exc:
            raise UserError(str(exc)) from None
    for w in caught:
        console_err.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    return table


def _space(name: str, width_mult: float, num_classes: int, resolution: int) -> ss.SearchSpace:
    try:
        return ss.get_space(name, width_mult, num_classes, resolution)
    except ss.SpecError as exc:
        raise UserError(str(exc)) from None


def _archs(specs: tuple[str, ...], resolution: int, num_classes: int | None = None) -> list[tuple[str, ss.Arch]]:
    out = []
    for text in specs:
        try:
            preset = text in ss.PRESETS  # presets take the table's resolution and classes; specs are exact
            arch = ss.load_arch(text, None, resolution, num_classes) if preset else ss.load_arch(text)
        except ss.SpecError as exc:
            raise UserError(str(exc)) from None
        out.append((text, arch))
    return out


@click.group("latency")
def latency_group() -> None:
    """Latency lookup tables measured with onnxruntime on this device."""


space_opt = click.option("--space", "space_name", default="mobilenet_v3_small_space", show_default=True,
                         help="Search space whose layer configurations the table covers.")
res_opt = click.option("--resolution", type=click.IntRange(32, 2048), default=224, show_default=True)
threads_opt = click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                           help="onnxruntime intra-op threads.")
provider_opt = click.option("--provider", default="CPUExecutionProvider", show_default=True,
                            help="onnxruntime execution provider.")


@latency_group.command("build")
@space_opt
@res_opt
@threads_opt
@provider_opt
@click.option("--num-classes", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--width-mult", type=float, default=1.0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Table file (default: the per-device cache, ~/.cache/bneck/latency/).")
@click.option("--resume", is_flag=True, help="Finish an interrupted build without re-measuring rows.")
@click.option("--force", is_flag=True, help="Discard an existing table or partial build and start over.")
@click.option("--add", "add", multiple=True, metavar="SPEC", help="Also measure this architecture's layers.")
@click.option("--calibration-nets", type=click.IntRange(min=3), default=64, show_default=True,
              help="Whole networks timed to calibrate the layer sum.")
@click.option("--seed", type=int, default=0, show_default=True)
def build_cmd(space_name: str, resolution: int, threads: int, provider: str, num_classes: int, width_mult: float,
              out: Path | None, resume: bool, force: bool, add: tuple[str, ...], calibration_nets: int,
              seed: int) -> None:
    """Measure every layer configuration of a space (resumable; Ctrl-C then --resume)."""
    provider = _provider(provider)
    space = _space(space_name, width_mult, num_classes, resolution)
    extra = [a for _, a in _archs(add, resolution, num_classes)]
    try:
        table, path = lat.build_table(space, resolution, threads, provider, out, resume=resume, force=force,
                                      add=extra, n_calibration=calibration_nets, seed=seed)
    except lat.LatencyError as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        console_err.print("interrupted: finished rows are kept; rerun with --resume to finish")
        raise SystemExit(130) from None
    cal = table.calibration
    console_out.print(f"wrote {path}: {len(table)} entries, reference {table.reference_us / 1e3:.3f} ms, "
                      f"rows repeat within {100 * table.meta['row_pass_spread_median']:.1f}% (median pass spread), "
                      f"calibration {'+'.join(cal['features'])} (leave-one-out MAPE "
                      f"{100 * (cal.get('loo_mape') or 0):.1f}% on {cal['n_nets']} nets)", highlight=False)


@latency_group.command("measure")
@click.argument("spec_or_preset")
@click.option("--resolution", type=click.IntRange(32, 2048), default=None, help="Input resolution (presets).")
@click.option("--num-classes", type=click.IntRange(min=1), default=None)
@click.option("--table", "table_path", type=click.Path(path_type=Path), default=None,
              help="Express the latency in this table's host state (its reference, resolution and threads).")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="Rounds timed next to the reference (default: the protocol's).")
@threads_opt
@provider_opt
@click.option("--json", "as_json", is_flag=True)
def measure_cmd(spec_or_preset: str, resolution: int | None, num_classes: int | None, table_path: Path | None,
                rounds: int | None, threads: int, provider: str, as_json: bool) -> None:
    """Measure a whole network with the table protocol: rounds of paired bursts next to a reference.

    Without --table the reference is V3-Small at the net's resolution, and `ratio_to_reference` is the number
    that repeats from call to call; with --table, `ms` is in the table's host state, comparable to its
    predictions and repeatable too."""
    provider = _provider(provider)
    table = _load_table(table_path) if table_path is not None else None
    try:
        if table is not None:
            arch = ss.load_arch(spec_or_preset, None, resolution or table.resolution,
                                num_classes or table.space.num_classes)
            table.check(arch)
            threads = table.threads
        else:
            arch = ss.load_arch(spec_or_preset, None, resolution, num_classes)
    except (ss.SpecError, lat.LatencyError, lat.KitError) as exc:
        raise UserError(str(exc)) from None
    with console_err.status("measuring ..."):
        if table is not None:  # beside the table's anchors: in its scale
            scaled = lat.measure_in_table_scale(table, [arch], rounds, provider=provider)
            t, ms = scaled.timings[0], scaled.us[0] / 1e3
        else:
            scaled, t = None, lat.measure_arch(arch, threads, provider, None, None, rounds)
            ms = t.us / 1e3
    result = {"arch_id": arch.arch_id, "resolution": arch.resolution, "threads": threads, "provider": provider,
              "ms": ms, "ms_now": t.us / 1e3, "ratio_to_reference": t.ratio, "reference_ms_now": t.reference_us / 1e3,
              "rounds": t.rounds, "quiet_rounds": t.quiet_rounds, "round_ratio_spread": t.ratio_spread,
              "host_state": "table" if table is not None else "now",
              **({"anchor_scale": scaled.scale, "anchors": scaled.anchors} if scaled is not None else {})}
    if as_json:
        click.echo(json.dumps(result))
    else:
        where = "in the table's host state" if table is not None else "now"
        console_out.print(f"{spec_or_preset} @{arch.resolution}px, {threads} thread(s): {ms:.3f} ms {where} "
                          f"({t.ratio:.4f} x the reference, {t.rounds} rounds ({t.quiet_rounds} quiet), round-to-round "
                          f"spread {100 * t.ratio_spread:.1f}%)", highlight=False)


@latency_group.command("predict")
@click.option("--table", "table_path", type=click.Path(path_type=Path), required=True)
@click.argument("specs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
def predict_cmd(table_path: Path, specs: tuple[str, ...], as_json: bool) -> None:
    """Predict whole-network latency from a table (presets take the table's resolution and classes)."""
    table = _load_table(table_path)
    rows: list[dict[str, Any]] = []
    for text, arch in _archs(specs, table.resolution, table.space.num_classes):
        try:
            ms = table.predict_ms(arch)
        except lat.LatencyError as exc:
            raise UserError(f"{text}: {exc}") from None
        outside = table.extrapolation(arch)
        rows.append({"spec": text, "arch_id": arch.arch_id, "predicted_ms": ms,
                     "block_sum_ms": table.block_sum_us(arch) / 1e3, "extrapolated": outside})
        if outside:  # stderr, so that --json output stays one document
            more = f" and {len(outside) - 3} more" if len(outside) > 3 else ""
            console_err.print(f"warning: {text[:60]}: outside the measured grid, the prediction is extrapolated: "
                              + "; ".join(outside[:3]) + more, highlight=False, soft_wrap=True)
    if as_json:
        click.echo(json.dumps(rows if len(rows) > 1 else rows[0]))
        return
    for r in rows:
        console_out.print(f"{r['spec'][:60]}: {r['predicted_ms']:.3f} ms predicted "
                          f"(layer sum {r['block_sum_ms']:.3f} ms)", highlight=False)


@latency_group.command("validate")
@click.option("--table", "table_path", type=click.Path(path_type=Path), required=True)
@click.option("--samples", type=click.IntRange(min=1), default=50, show_default=True,
              help="Sampled held-out nets (besides the off-grid ones).")
@click.option("--pruned", type=click.IntRange(min=0), default=10, show_default=True,
              help="Randomly pruned (off-grid) nets; width-multiplier variants of the preset come too.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="Rounds per net (default: the protocol's).")
@click.option("--repeat", type=click.IntRange(1, 5), default=1, show_default=True,
              help="Measure the nets this many times, one pass after the other: 2 reports test-retest agreement.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Scatter PNG (default: next to the table).")
@click.option("--json", "as_json", is_flag=True)
def validate_cmd(table_path: Path, samples: int, pruned: int, seed: int, rounds: int | None, repeat: int,
                 plot: Path | None, as_json: bool) -> None:
    """Measure held-out networks against their predictions (interleaved with the reference)."""
    table = _load_table(table_path)
    plot = plot or table_path.with_suffix(".validate.png")
    with progress_bar("validating") as prog:
        task = prog.add_task("validate", total=None)
        try:
            result = lat.validate(table, samples, seed, rounds, n_pruned=pruned, repeat=repeat, plot=plot,
                                  progress=lambda d, t: prog.update(task, completed=d, total=t))
        except (lat.LatencyError, lat.KitError) as exc:
            raise UserError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({k: v for k, v in result.items() if k != "archs"}))
        return
    u, off = result["uncorrected"], result["offgrid"]
    line = (f"held-out n={result['n']}: {100 * result['within_10pct']:.0f}% within ±10% "
            f"({100 * result['within_5pct']:.0f}% within ±5%), MAPE {100 * result['mape']:.1f}%, "
            f"Kendall τ {result.get('kendall_tau', float('nan')):.3f}")
    if off["n"]:
        line += f"; off-grid n={off['n']}: {100 * off['within_10pct']:.0f}% within ±10%"
    line += f"; uncorrected layer sum: {100 * u['within_10pct']:.0f}% within ±10%, MAPE {100 * u['mape']:.1f}%."
    if "retest_within_5pct" in result:
        line += (f" Noise floor (pass 1 vs 2): {100 * result['retest_within_5pct']:.0f}% within ±5%, median |Δ| "
                 f"{result['retest_median_abs_pct']:.1f}%, τ {result['retest_kendall_tau']:.3f}.")
    if "reference_net" in result:
        line += f" Seed/reference net (not in the metrics): {result['reference_net']['error_pct']:+.1f}%."
    console_out.print(line + f" plot: {result['plot']}", highlight=False)


@latency_group.command("kit")
@space_opt
@res_opt
@threads_opt
@click.option("--num-classes", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--width-mult", type=float, default=1.0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--calibration-nets", type=click.IntRange(min=3), default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def kit_cmd(space_name: str, resolution: int, threads: int, num_classes: int, width_mult: float, out: Path,
            calibration_nets: int, seed: int) -> None:
    """Write a folder to measure on a device with only Python, numpy and onnxruntime."""
    from latency.build import make_kit

    space = _space(space_name, width_mult, num_classes, resolution)
    try:
        make_kit(out, space, resolution, threads, (), calibration_nets, seed)
    except lat.LatencyError as exc:
        raise UserError(str(exc)) from None
    console_out.print(f"wrote {out}: copy it to the device and run `python measure.py` there, then "
                      f"`bneck latency import {out}/results.csv --out table.parquet`")


@latency_group.command("import")
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def import_cmd(results: Path, out: Path) -> None:
    """Turn a kit's measured results (KIT/results.csv or KIT) into a table."""
    kit = results if results.is_dir() else results.parent
    csv_path = results / "results.csv" if results.is_dir() else results
    try:
        table = lat.LatencyTable.from_kit(kit, csv_path)
    except (lat.LatencyError, lat.KitError) as exc:
        raise UserError(str(exc)) from None
    table.save(out)
    console_out.print(f"wrote {out}: {len(table)} entries")
