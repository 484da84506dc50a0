"""The `bneck` command line. User mistakes end in one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

import search_space as ss
from bneck_common.paths import RUNS_DIR
from runs.cache_cli import cache_group
from runs.errors import UserError
from runs.errors import console_err as _err
from runs.errors import console_out as _out
from runs.evaluate_cli import evaluate_cmd
from runs.latency_cli import latency_group
from runs.netadapt_cli import netadapt_cmd
from runs.report_cli import export_run, is_run_dir, report_cmd
from runs.run_cli import run_cmd
from runs.search_cli import search_cmd
from runs.supernet_cli import supernet_group


def _fail(exc: Exception) -> UserError:
    return UserError(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bneck")
def cli() -> None:
    """bneck: platform-aware NAS over MobileNet bneck blocks."""


cli.add_command(latency_group)
cli.add_command(evaluate_cmd)
cli.add_command(search_cmd)
cli.add_command(run_cmd)
cli.add_command(report_cmd)
cli.add_command(netadapt_cmd)
cli.add_command(cache_group)
cli.add_command(supernet_group)


# ---- bneck space ------------------------------------------------------------------------------------
@cli.group()
def space() -> None:
    """Presets, search spaces and architecture specs."""


def _summary_row(name: str, arch: ss.Arch) -> dict[str, Any]:
    p, m = ss.count(arch)
    return {"name": name, "params": p, "madds": m, "resolution": arch.resolution, "blocks": len(arch.blocks),
            "arch_id": arch.arch_id}


@space.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def space_list(as_json: bool) -> None:
    """List presets (params, MAdds at 224 px, 1000 classes) and search spaces (size)."""
    presets = [_summary_row(n, f()) for n, f in ss.PRESETS.items()]
    spaces = []
    for name, make in ss.SPACES.items():
        sp = make()
        spaces.append({"name": name, "log10_size": round(sp.log10_size, 2), "stages": len(sp.stages),
                       "decisions": sp.num_decisions, "layer_configs_224": len(sp.layer_configs(224))})
    if as_json:
        click.echo(json.dumps({"presets": presets, "spaces": spaces}, indent=2))
        return
    _print_presets(presets)
    t = Table(title="search spaces")
    for col in ("space", "size", "stages", "decisions", "layer configs @224"):
        t.add_column(col, justify="left" if col == "space" else "right")
    for s in spaces:
        t.add_row(s["name"], f"10^{s['log10_size']:.1f}", str(s["stages"]), str(s["decisions"]),
                  str(s["layer_configs_224"]))
    _out.print(t)


def _print_presets(rows: list[dict[str, Any]]) -> None:
    t = Table(title="presets (224 px, 1000 classes)")
    for col in ("preset", "params", "MAdds", "blocks", "arch_id"):
        t.add_column(col, justify="left" if col in ("preset", "arch_id") else "right")
    for r in rows:
        t.add_row(r["name"], f"{r['params']:,}", f"{r['madds'] / 1e6:.1f} M", str(r["blocks"]), r["arch_id"])
    _out.print(t)


def _layer_rows(arch: ss.Arch) -> list[dict[str, Any]]:
    rows = []
    for i, cfg in enumerate(arch.layers()):
        p, m = ss.layer_cost(cfg)
        row: dict[str, Any] = {"index": i - 1 if cfg.kind in ("bneck", "ds") else None, "type": cfg.kind,
                               "input_size": cfg.size, "in": cfg.cin, "out": cfg.out, "kernel": cfg.kernel,
                               "stride": cfg.stride, "act": cfg.act, "params": p, "madds": m}
        if cfg.kind == "bneck":
            row.update(expand=cfg.expand, se=cfg.se, residual=arch.has_residual(i - 1))
        if cfg.kind == "head":
            h = arch.head
            row.update(conv=h.conv, hidden=h.hidden, dropout=h.dropout, num_classes=arch.num_classes)
            row.pop("out")
        rows.append(row)
    return rows


@space.command("show")
@click.argument("name_or_spec")
@click.option("--width-mult", type=float, default=None, help="Width multiplier α (presets and spaces).")
@click.option("--resolution", type=int, default=None, help="Input resolution (ρ·224).")
@click.option("--num-classes", type=int, default=None, help="Number of classes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def space_show(name_or_spec: str, width_mult: float | None, resolution: int | None, num_classes: int | None,
               as_json: bool) -> None:
    """Show a preset, a spec (file, JSON or arch string) or a search space."""
    try:
        if name_or_spec in ss.SPACES:
            sp = ss.get_space(name_or_spec, 1.0 if width_mult is None else width_mult,
                              1000 if num_classes is None else num_classes, 224 if resolution is None else resolution)
            info = sp.to_dict()
            info["layer_configs"] = len(sp.layer_configs())
            if as_json:
                click.echo(json.dumps(info, indent=2))
            else:
                _print_space(sp, info)
            return
        arch = ss.load_arch(name_or_spec, width_mult, resolution, num_classes)
    except ss.SpecError as exc:
        raise _fail(exc) from None
    p, m = ss.count(arch)
    info = {"arch_id": arch.arch_id, "arch": arch.to_string(), "params": p, "madds": m,
            "resolution": arch.resolution, "num_classes": arch.num_classes, "blocks": _layer_rows(arch),
            "spec": arch.to_dict()}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    title = name_or_spec if name_or_spec in ss.PRESETS else "arch"
    t = Table(title=f"{title} {arch.arch_id}: {p:,} params, {m / 1e6:.1f}M MAdds @{arch.resolution}px",
              padding=(0, 1), collapse_padding=True)
    for col in ("#", "layer", "size", "in", "exp", "out", "k", "s", "SE", "NL", "res", "params", "MAdds(M)"):
        t.add_column(col, justify="right", no_wrap=True)
    short = {"relu": "RE", "relu6": "R6", "hswish": "HS"}
    for r in info["blocks"]:
        nl = "/".join(short.get(a, a) for a in r["act"].split("/"))
        t.add_row("" if r["index"] is None else str(r["index"]), r["type"], str(r["input_size"]), str(r["in"]),
                  str(r.get("expand", "")) if r["type"] == "bneck" else str(r.get("conv") or ""),
                  str(r.get("out", r.get("hidden") or "")), str(r["kernel"]), str(r["stride"]),
                  "✓" if r.get("se") else "", nl, "✓" if r.get("residual") else "", f"{r['params']:,}",
                  f"{r['madds'] / 1e6:.2f}")
    _out.print(t)
    _out.print(arch.to_string(), soft_wrap=True, markup=False)


def _print_space(sp: ss.SearchSpace, info: dict[str, Any]) -> None:
    t = Table(title=f"{sp.name}: 10^{sp.log10_size:.1f} architectures, {sp.num_decisions} decisions, "
                    f"{info['layer_configs']} layer configs @ {sp.resolution}px")
    for col in ("stage", "stride", "depths", "widths", "kernels", "SE", "NL"):
        t.add_column(col, justify="right")
    for i, st in enumerate(sp.stages):
        t.add_row(str(i), str(st.stride), ",".join(map(str, st.depths)), ",".join(map(str, st.widths)),
                  ",".join(map(str, st.kernels)), ",".join("y" if s else "n" for s in st.se), ",".join(st.acts))
    _out.print(t)
    _out.print(f"per-layer expansion ratios: {', '.join(f'{r:g}' for r in sp.expand_ratios)}")


@space.command("sample")
@click.argument("space_name")
@click.option("--n", "n", type=click.IntRange(min=1), default=1, show_default=True, help="How many.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--width-mult", type=float, default=1.0, show_default=True)
@click.option("--resolution", type=int, default=224, show_default=True)
@click.option("--num-classes", type=int, default=1000, show_default=True)
def space_sample(space_name: str, n: int, seed: int, width_mult: float, resolution: int,
                 num_classes: int) -> None:
    """Print N architectures sampled uniformly from a space, one JSON object per line."""
    try:
        sp = ss.get_space(space_name, width_mult, num_classes, resolution)
    except ss.SpecError as exc:
        raise _fail(exc) from None
    rng = np.random.default_rng(seed)
    for _ in range(n):
        arch = sp.sample(rng)
        p, m = ss.count(arch)
        click.echo(json.dumps({"arch_id": arch.arch_id, "arch": arch.to_string(), "params": p, "madds": m}))


# ---- bneck export -----------------------------------------------------------------------------------
@cli.command("export")
@click.argument("spec_or_preset")
@click.option("--format", "fmt", type=click.Choice([*ss.export.FORMATS, "timm"]), default="onnx", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file (default: ./bneck_runs/export/<name>.<ext>; a run's: RUN/export/trial_N.<ext>).")
@click.option("--trial", type=int, default=None, help="Run dir only: the trial to export [default: the best].")
@click.option("--best", is_flag=True, help="Run dir only: export the best trial (the default).")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A state dict (.pt) to load before exporting.")
@click.option("--width-mult", type=float, default=None)
@click.option("--resolution", type=int, default=None)
@click.option("--num-classes", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export_cmd(spec_or_preset: str, fmt: str, out: Path | None, trial: int | None, best: bool, weights: Path | None,
               width_mult: float | None, resolution: int | None, num_classes: int | None, as_json: bool) -> None:
    """Export a preset, a spec or a run dir's trial as JSON, ONNX (single file, checked against torch),
    TorchScript or a timm architecture definition."""
    if is_run_dir(spec_or_preset):
        if trial is not None and best:
            raise UserError("--trial and --best: choose one")
        return export_run(spec_or_preset, fmt, out, trial, as_json, {"weights": weights, "width_mult": width_mult,
                                                                     "resolution": resolution,
                                                                     "num_classes": num_classes})
    if trial is not None or best:
        raise UserError(f"--trial/--best: only for a run dir, and {spec_or_preset!r} is not a directory")
    try:
        arch = ss.load_arch(spec_or_preset, width_mult, resolution, num_classes)
        if out is None:
            stem = spec_or_preset if spec_or_preset in ss.PRESETS else arch.arch_id
            ext = {"json": "json", "onnx": "onnx", "torchscript": "pt", "timm": "timm.json"}[fmt]
            out = RUNS_DIR / "export" / f"{stem}.{ext}"
        if fmt == "timm" and weights is not None:
            raise ss.SpecError("--weights has no meaning for --format timm (the definition holds no weights)")
        with _err.status(f"exporting {fmt} ..."):
            info = ss.export_timm(arch, out) if fmt == "timm" else ss.export_arch(arch, out, fmt, weights)
    except (ss.SpecError, ss.ExportError) as exc:
        raise _fail(exc) from None
    except OSError as exc:  # an unwritable --out: name the file, keep nothing half-written (atomic writes)
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps(info))
    else:
        extra = f", max |onnx - torch| = {info['max_abs_diff']:.2g}" if "max_abs_diff" in info else ""
        click.echo(f"wrote {info['path']} ({info['bytes']:,} bytes{extra})")


def main() -> None:
    """Console-script entry point: click's own usage errors keep exit 2; Ctrl-C exits 130 quietly."""
    try:
        cli.main(prog_name="bneck")
    except KeyboardInterrupt:
        _err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
