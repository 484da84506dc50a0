"""What a finished run exports: RUN/best/ (the best trial's spec, weights, ONNX), the report, per-trial exports and
NetAdapt's trajectory plot."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

import search_space as ss
from evaluators.trainer import DEFAULT_STEPS
from runs.rundir import RunDir, RunError, atomic_write, best_row, best_trial_row, pareto_rows, plain_value


def trained_arch(run: RunDir, arch_string: str) -> ss.Arch:
    """A trial's architecture as it was trained (the run's resolution and class count)."""
    info = run.info()
    arch = ss.Arch.parse(arch_string)
    return arch.replace(resolution=int(info.get("resolution", arch.resolution)),
                        num_classes=int(info.get("num_classes", arch.num_classes)))


def write_best(run: RunDir) -> dict[str, Any] | None:
    """RUN/best/: spec.json and arch.txt of the best feasible trial, its trained weights when kept, and ONNX."""
    best = best_trial_row(run, _frame(run))
    if best is None:
        return None
    trial = int(best["trial"])
    arch = trained_arch(run, str(best["arch"]))
    run.best.mkdir(parents=True, exist_ok=True)
    ss.export_arch(arch, run.best / "spec.json", "json")
    atomic_write(run.best / "arch.txt", arch.to_string() + "\n")
    weights = run.weights_of(trial)
    kept = weights.is_file()
    if kept:
        atomic_write(run.best / "weights.pt", weights.read_bytes())
    else:
        (run.best / "weights.pt").unlink(missing_ok=True)
    try:
        onnx = ss.export_arch(arch, run.best / "model.onnx", "onnx", weights if kept else None)
    except ss.ExportError as exc:
        raise RunError(f"best trial {trial}: ONNX export failed: {exc}") from None
    doc = {"trial": trial, "arch": arch.to_string(), "arch_id": arch.arch_id, "accuracy": float(best["accuracy"]),
           "latency_ms": float(best["latency_ms"]), "reward": float(best["reward"]), "params": int(best["params"]),
           "madds": int(best["madds"]), "weights": "weights.pt" if kept else None,
           "onnx_max_abs_diff": onnx.get("max_abs_diff")}
    atomic_write(run.best / "best.json", json.dumps(doc, indent=2) + "\n")
    return doc


# ---- report: the run at a glance ---------------------------------------------------------------------------
REFERENCE_LABELS = {"mobilenet_v3_small_space": "MobileNetV3-Small", "mobilenet_v3_large_space": "MobileNetV3-Large"}
EXPORT_FORMATS = ("json", "onnx", "torchscript", "timm")
EXPORT_EXT = {"json": "json", "onnx": "onnx", "torchscript": "pt", "timm": "timm.json"}


def _frame(run: RunDir) -> pd.DataFrame:
    run.require()
    if not run.trials.is_file():
        raise RunError(f"{run.path} has no trials.parquet yet: no trial has finished")
    try:
        return pd.read_parquet(run.trials)
    except (OSError, ValueError) as exc:  # pyarrow's errors are ValueErrors
        raise RunError(f"{run.trials} is not readable ({type(exc).__name__}); the search rewrites it from "
                       "the study as trials finish") from None


def _config(run: RunDir) -> dict[str, Any]:
    """The saved config as plain YAML: a report must not fail on a config another version would reject."""
    try:
        doc = yaml.safe_load(run.config.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return doc if isinstance(doc, dict) else {}


def space_name(space: str) -> str:
    """A registered space's name, or the name inside a space .json file (its path is too long for a title)."""
    if space in ss.SPACES:
        return space
    name = Path(space).stem
    with contextlib.suppress(OSError, ValueError, AttributeError):
        name = str(json.loads(Path(space).read_text()).get("name") or name)
    return name


def reference_label(space: str) -> str:
    """How reports name the space's enqueued preset (trial 0): the preset, or the seed of a space file."""
    name = space_name(space)
    return REFERENCE_LABELS.get(name, f"{name} seed")


def _num(v: Any, fmt: str, none: str = "–") -> str:
    return none if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def write_report(run: RunDir) -> tuple[Path, Path]:
    """RUN/report.png (top-1 vs predicted latency, front, reference, target) and RUN/report.md (the summary)."""
    frame = _frame(run)
    done = frame[(frame["state"] == "COMPLETE") & frame["accuracy"].notna()].sort_values("trial")
    if done.empty:
        failed = int((frame["state"] == "FAIL").sum())
        raise RunError(f"{run.path}: no completed trials to report ({len(frame)} trials, {failed} failed)")
    cfg, info = _config(run), run.info()
    ctx = {
        "space": str(info.get("space", cfg.get("space", "?"))), "searcher": str(cfg.get("searcher", "?")),
        "data": str(info.get("data", cfg.get("data", "?"))), "target": info.get("target_ms", cfg.get("target_ms")),
        "resolution": info.get("resolution", cfg.get("resolution")), "budget": _budget(cfg),
        "latency_resolution": info.get("latency_resolution", cfg.get("latency_resolution")),
        "confirmed": list(run.confirmation().get("rows", [])),
    }
    front = pareto_rows(frame)
    best = best_trial_row(run, frame)
    refs = frame[frame["reference"]]
    label = f"{reference_label(ctx['space'])} (same recipe)"
    _plot(run.report_png, frame, done, front, best, refs, label, cfg, ctx)
    atomic_write(run.report_md, _markdown(run, frame, done, front, best, refs, label, cfg, info, ctx).encode())
    return run.report_png, run.report_md


def _plot(path: Path, frame: pd.DataFrame, done: pd.DataFrame, front: pd.DataFrame, best: pd.Series | None,
          refs: pd.DataFrame, label: str, cfg: dict[str, Any], ctx: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    try:
        pts = ax.scatter(done["latency_ms"], 100 * done["accuracy"], c=done["trial"], cmap="viridis", s=30,
                         alpha=0.85, zorder=2, label="trials")
        if len(done) > 1:
            bar = fig.colorbar(pts, ax=ax, label="trial (search order)")
            bar.locator = MaxNLocator(integer=True)
            bar.update_ticks()
        ax.step(front["latency_ms"], 100 * front["accuracy"], where="post", color="crimson", lw=1.5, zorder=3)
        ax.scatter(front["latency_ms"], 100 * front["accuracy"], s=90, facecolors="none", edgecolors="crimson",
                   lw=1.5, zorder=4, label="Pareto front")
        ref_ok = refs[refs["accuracy"].notna()]
        if not ref_ok.empty:
            ax.scatter(ref_ok["latency_ms"], 100 * ref_ok["accuracy"], marker="*", s=280, color="orange",
                       edgecolors="black", zorder=7, label=label)  # above the best's label box
        if ctx["target"] is not None:
            ax.axvline(float(ctx["target"]), ls="--", color="0.35", lw=1, zorder=1,
                       label=f"target {float(ctx['target']):.3g} ms")
        if cfg.get("max_latency_ms") is not None:
            ax.axvline(float(cfg["max_latency_ms"]), ls=":", color="red", lw=1, zorder=1,
                       label=f"ceiling {float(cfg['max_latency_ms']):.3g} ms")
        if best is not None:  # named in the legend: a text box next to the point would hide its neighbours
            ax.scatter([best["latency_ms"]], [100 * best["accuracy"]], s=200, facecolors="none", edgecolors="black",
                       lw=2, zorder=6, label=f"best: trial {int(best['trial'])}, {100 * best['accuracy']:.2f}% @ "
                                            f"{best['latency_ms']:.3g} ms")
        confirmed = ctx.get("confirmed") or []
        if confirmed:  # mean ± std over the confirmation's trainings, beside each trial's single training
            ax.errorbar([r["latency_ms"] for r in confirmed], [100 * r["top1_mean"] for r in confirmed],
                        yerr=[100 * (r["top1_std"] or 0.0) for r in confirmed], fmt="D", ms=5, color="black",
                        ecolor="black", capsize=4, lw=1, zorder=8,
                        label=f"confirmed: mean ± std of {len(confirmed[0]['top1_seeds'])} trainings")
        epochs = f" after {ctx['budget']}" if ctx["budget"] != "?" else ""
        ax.set_xlabel(f"predicted latency (ms) @ {ctx['latency_resolution']} px")
        ax.set_ylabel(f"top-1 (%){epochs} @ {ctx['resolution']} px")
        ax.set_title(f"{space_name(ctx['space'])} · {ctx['searcher']} · {len(frame)} trials · {ctx['data']}",
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        atomic_write(path, buf.getvalue())
    finally:
        plt.close(fig)


def _budget(cfg: dict[str, Any]) -> str:
    """The proxy budget of a saved config: '600 steps' or '3 epochs' (older runs have epochs only)."""
    if isinstance(cfg.get("steps"), int):
        return f"{cfg['steps']} steps"
    if isinstance(cfg.get("epochs"), int | float):
        return f"{cfg['epochs']:g} epochs"
    return f"{DEFAULT_STEPS} steps" if "steps" in cfg else "?"


def _markdown(run: RunDir, frame: pd.DataFrame, done: pd.DataFrame, front: pd.DataFrame, best: pd.Series | None,
              refs: pd.DataFrame, label: str, cfg: dict[str, Any], info: dict[str, Any], ctx: dict[str, Any]) -> str:
    states = frame["state"].value_counts()
    n_complete, n_failed = int(states.get("COMPLETE", 0)), int(states.get("FAIL", 0))
    others = {s: int(n) for s, n in states.items() if s not in ("COMPLETE", "FAIL")}
    target = ctx["target"]
    lines = [f"# bneck search report: {run.path.name}", "", "![top-1 vs predicted latency](report.png)", "",
             "## Run", "", "| setting | value |", "|---|---|",
             f"| space | {space_name(ctx['space'])}"
             + ("" if space_name(ctx["space"]) == ctx["space"] else f" (`{ctx['space']}`)") + " |",
             f"| searcher | {ctx['searcher']} ({cfg.get('mode', 'reward')} mode), seed {cfg.get('seed', '?')} |",
             f"| trials | {len(frame)} of a budget of {cfg.get('trials', '?')}: {n_complete} complete, "
             f"{n_failed} failed" + "".join(f", {n} {s.lower()}" for s, n in others.items()) + " |",
             f"| data | {ctx['data']}, {info.get('num_classes', '?')} classes, trained at {ctx['resolution']} px for "
             f"{ctx['budget']} |",
             *([f"| evaluator | supernet `{cfg['supernet']['checkpoint']}`: shared weights, BN recalibrated on "
                f"{cfg['supernet'].get('calib_images', 256)} training images, top-1 on the validation split; "
                "the budget above is the confirmation's standalone trainings |"]
               if cfg.get("evaluator") == "supernet" and cfg.get("supernet") else []),
             f"| latency | predicted at {ctx['latency_resolution']} px by `{info.get('table', cfg.get('table'))}` |",
             f"| target | {_num(target, '.3f')} ms, reward {cfg.get('reward', '?')} |",
             f"| ceiling | {_num(cfg.get('max_latency_ms'), '.3f', 'none')}"
             + (" ms |" if cfg.get("max_latency_ms") is not None else " |"),
             "", "## Best trial", ""]
    if best is None:
        lines.append("No feasible completed trial has a reward.")
    else:
        t = int(best["trial"])
        kept = run.weights_of(t).is_file()
        lines += [f"Trial {t}: top-1 **{100 * best['accuracy']:.2f}%** at **{best['latency_ms']:.3f} ms** predicted "
                  f"(reward {best['reward']:.4f}), {int(best['params']):,} params, {int(best['madds']) / 1e6:.1f} M "
                  f"MAdds, arch_id `{best['arch_id']}`."
                  + (" It is the reference preset." if bool(best["reference"]) else ""), "",
                  f"```\n{best['arch']}\n```", "",
                  f"Trained weights: {f'`weights/trial_{t}.pt`' if kept else 'not kept'}. Export: "
                  f"`bneck export {run.path} --best --format onnx` (or json, torchscript, timm)."]
    lines += _confirm_lines(run)
    lines += _netadapt_lines(run)
    lines += ["", "## Reference", ""]
    lines += _reference_lines(refs, best, label, cfg, ctx.get("confirmed"))
    lines += ["", "## Pareto front (top-1 up, latency down)", "",
              "| trial | top-1 (%) | latency (ms) | reward | params | MAdds (M) | arch_id | |",
              "|---:|---:|---:|---:|---:|---:|---|---|"]
    best_t = None if best is None else int(best["trial"])
    for _, r in front.iterrows():
        tags = [x for x, on in (("best", int(r["trial"]) == best_t), ("reference", bool(r["reference"]))) if on]
        lines.append(f"| {int(r['trial'])} | {100 * r['accuracy']:.2f} | {r['latency_ms']:.3f} | "
                     f"{_num(float(r['reward']), '.4f')} | {int(r['params']):,} | {int(r['madds']) / 1e6:.2f} | "
                     f"`{r['arch_id']}` | {', '.join(tags)} |")
    lines += ["", f"{len(front)} of {len(done)} trials with an accuracy are on the front. Params and MAdds are "
              f"counted at the training resolution ({ctx['resolution']} px) and class count.", "",
              "## Trials", "", f"- complete: {n_complete}", f"- failed: {n_failed}"]
    lines += [f"- {s.lower()}: {n}" for s, n in others.items()]
    reasons = frame.loc[frame["state"] == "FAIL", "fail_reason"].astype(str).str.slice(0, 100).value_counts()
    lines += [f"  - {n} x {reason or 'no reason recorded'}" for reason, n in reasons.head(5).items()]
    return "\n".join(lines) + "\n"


def _confirm_lines(run: RunDir) -> list[str]:
    """The confirmation (RUN/confirm.json): top-1 mean ± std over seeds of the best trials and the reference."""
    doc = run.confirmation()
    if not doc.get("rows"):
        return []
    standalone = not all(r.get("search_score_counts", True) for r in doc["rows"])
    n = len(doc.get("seeds", [])) + (0 if standalone else 1)
    how = (f"trained standalone {n} times (the search scored them on a supernet; seeds "
           f"{', '.join(map(str, doc['seeds']))})" if standalone else
           f"trained {n} times (seeds: the search's and {', '.join(map(str, doc['seeds']))})")
    lines = ["", "## Confirmation", "",
             f"The top {doc['top']} trials and the reference, each {how}, same data split and recipe. The best is "
             f"the best reward of the "
             f"mean top-1" + (f"; pooled seed std {100 * doc['pooled_std']:.2f} points" if doc.get("pooled_std")
                              else "") + (" (still running)" if doc.get("status") != "done" else "") + ".", "",
             "| trial | | predicted ms | top-1 mean ± std | trainings | reward of the mean |",
             "|---|---|---|---|---|---|"]
    for r in sorted(doc["rows"], key=lambda r: -r.get("reward_mean", 0.0)):
        std = f" ± {100 * r['top1_std']:.2f}" if r.get("top1_std") is not None else ""
        tag = "reference" if r["reference"] else ("**best**" if r["trial"] == doc.get("best_trial") else "")
        lines.append(f"| {r['trial']} | {tag} | {r['latency_ms']:.3f} | {100 * r['top1_mean']:.2f}%{std} | "
                     f"{len(r['top1_seeds'])} | {r['reward_mean']:.4f} |")
    return lines


def _netadapt_lines(run: RunDir) -> list[str]:
    """The NetAdapt step of `bneck run` (RUN/netadapt/result.json), when it ran."""
    path = run.path / "netadapt" / "result.json"
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if r.get("noop"):
        return ["", "## NetAdapt", "", f"No-op: the best trial already meets {r['target_ms']:.3f} ms."]
    return ["", "## NetAdapt", "",
            f"The best trial pruned layer by layer from {r['start_predicted_ms']:.3f} to "
            f"**{r['final_predicted_ms']:.3f} ms** predicted (target {r['target_ms']:.3f} ms) in {r['iterations']} "
            f"iterations; top-1 {100 * r['top1_before']:.2f}% -> **{100 * r['top1_after']:.2f}%** after "
            f"{r['long_epochs']:g} epochs of long-term fine-tune. Files: `netadapt/final/` (spec.json, weights.pt, "
            "model.onnx), `netadapt/trajectory.png`.", "", f"```\n{r['final_arch']}\n```",
            *(["", f"**The target was not reached**: {r['stopped']}"] if r.get("stopped") else []),
            *_trajectory_lines(run.path / "netadapt" / "trajectory.parquet")]


def _trajectory_lines(path: Path) -> list[str]:
    """Every iteration's chosen move and its held-out top-1 after the short fine-tune: the honest record of
    what pruning did on the way (the long fine-tune at the end can hide a collapse on the way)."""
    try:
        traj = pd.read_parquet(path)
    except (OSError, ValueError):
        return []
    lines = ["", "| iteration | move | predicted ms | held-out top-1 after the cut | after the short fine-tune |",
             "|---|---|---|---|---|"]
    for _, t in traj.iterrows():
        move = "start" if pd.isna(t["move"]) or not t["move"] else t["move"]
        before = t.get("holdout_top1_before")
        cut = "" if before is None or pd.isna(before) else f"{100 * before:.2f}%"
        lines.append(f"| {int(t['iteration'])} | {move} | {t['latency_ms']:.3f} | {cut} | "
                     f"{100 * t['holdout_top1']:.2f}% |")
    return lines


def write_trajectory_plot(out_dir: Path, target_ms: float) -> Path | None:
    """OUT/trajectory.png of a NetAdapt dir, from its trajectory.parquet; drawn again only when the parquet is
    newer (a resumed or finished run keeps its plot). None when NetAdapt has not written its trajectory yet."""
    traj_path, png = out_dir / "trajectory.parquet", out_dir / "trajectory.png"
    if not traj_path.is_file():
        return None
    if png.is_file() and png.stat().st_mtime_ns >= traj_path.stat().st_mtime_ns:
        return png
    return plot_trajectory(pd.read_parquet(traj_path), target_ms, png)


def plot_trajectory(traj: pd.DataFrame, target_ms: float, path: Path) -> Path:
    """Held-out top-1 against the latency NetAdapt steered by (predicted, or measured with `--measured`: then the
    table's predictions beside it), one point per iteration (the chosen proposal right after its cut and after its
    short-term fine-tune), the target marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    if "holdout_top1_before" in traj and traj["holdout_top1_before"].notna().any():
        ax.plot(traj["latency_ms"], 100 * traj["holdout_top1_before"].astype(float), "v", color="tab:gray", ms=4,
                label="right after the cut")
    ax.plot(traj["latency_ms"], 100 * traj["holdout_top1"], "o-", color="tab:blue", ms=4,
            label="after short-term fine-tune")
    ax.plot(traj["latency_ms"].iloc[:1], 100 * traj["holdout_top1"].iloc[:1], "*", color="tab:orange", ms=14,
            label="start")
    measured = "measured_ms" in traj and traj["measured_ms"].notna().all()
    if measured:
        ax.plot(traj["predicted_ms"], 100 * traj["holdout_top1"], ".", color="tab:blue", alpha=0.35, ms=5,
                label="the same, at the table's prediction")
    ax.axvline(target_ms, color="tab:red", ls="--", lw=1, label=f"target {target_ms:.3f} ms")
    ax.invert_xaxis()
    ax.set_xlabel("measured latency on this host (ms)" if measured else "predicted latency (ms)")
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title(f"NetAdapt: {len(traj) - 1} iterations")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path


def _reference_lines(refs: pd.DataFrame, best: pd.Series | None, label: str, cfg: dict[str, Any],
                     confirmed: list[dict[str, Any]] | None = None) -> list[str]:
    if refs.empty:
        why = " (config `enqueue_preset: false`)" if cfg.get("enqueue_preset") is False else ""
        return [f"This run has no reference trial{why}: there is no same-recipe baseline to compare against. "
                "Start a run with `enqueue_preset: true` to have the space's preset trained first."]
    out = []
    for _, r in refs.iterrows():
        t = int(r["trial"])
        if pd.isna(r["accuracy"]):
            out.append(f"{label}: trial {t} did not complete ({r['state']}"
                       + (f": {r['fail_reason']}" if r["fail_reason"] else "") + ").")
            continue
        out.append(f"{label}: trial {t}, top-1 {100 * r['accuracy']:.2f}% at {r['latency_ms']:.3f} ms predicted "
                   f"(reward {_num(float(r['reward']), '.4f')}), {int(r['params']):,} params, "
                   f"{int(r['madds']) / 1e6:.1f} M MAdds.")
        if best is not None and int(best["trial"]) != t:
            by_trial = {c["trial"]: c for c in confirmed or []}
            b, ref = by_trial.get(int(best["trial"])), by_trial.get(t)
            if b is not None and ref is not None and b.get("top1_std") is not None and ref.get("top1_std") is not None:
                gap = b["top1_mean"] - ref["top1_mean"]
                pooled = math.sqrt((b["top1_std"] ** 2 + ref["top1_std"] ** 2) / 2)
                verdict = "beyond" if abs(gap) > 2 * pooled else "within"
                out.append(f"Best vs reference, confirmed ({len(b['top1_seeds'])} trainings each): "
                           f"{100 * b['top1_mean']:.2f}% ± {100 * b['top1_std']:.2f} vs {100 * ref['top1_mean']:.2f}% "
                           f"± {100 * ref['top1_std']:.2f}: **{100 * gap:+.2f} points**, {verdict} 2x their pooled "
                           f"seed std ({100 * pooled:.2f}), at {best['latency_ms'] / r['latency_ms']:.2f}x the "
                           "latency.")
            else:
                out.append(f"Best vs reference: {100 * (best['accuracy'] - r['accuracy']):+.2f} points top-1 (one "
                           f"training each), {best['latency_ms'] / r['latency_ms']:.2f}x the latency.")
    return out


# ---- export one trial of a run -------------------------------------------------------------------------------
def _trial_row(run: RunDir, frame: pd.DataFrame, trial: int | None) -> pd.Series:
    complete = frame[frame["state"] == "COMPLETE"].sort_values("trial")
    valid = [int(t) for t in complete["trial"]]
    shown = ", ".join(map(str, valid[:8])) + (", ..." if len(valid) > 8 else "")
    if trial is None:
        best_t = run.info().get("best_trial")
        if best_t is None or best_t not in valid:
            b = best_row(frame)
            best_t = None if b is None else int(b["trial"])
        if best_t is None:
            raise RunError(f"{run.path} has no best trial yet (complete trials: {shown or 'none'}); "
                           "choose one with --trial")
        trial = int(best_t)
    rows = frame[frame["trial"] == trial]
    if rows.empty:
        raise RunError(f"trial {trial} is not in {run.path} (complete trials: {shown or 'none'})")
    row = rows.iloc[0]
    if row["state"] != "COMPLETE":
        raise RunError(f"trial {trial} of {run.path} is {row['state']}, not COMPLETE "
                       f"(complete trials: {shown or 'none'})")
    return row


def export_trial(run: RunDir, fmt: str, out: str | os.PathLike[str] | None = None,
                 trial: int | None = None) -> dict[str, Any]:
    """Export one trial (default: the best) as json | onnx | torchscript | timm, with its trained weights if kept.

    Returns the file's facts plus `trial`, `weights_included` and, without weights, a `note` saying so.
    """
    if fmt not in EXPORT_FORMATS:
        raise RunError(f"format {fmt!r} not in {{{','.join(EXPORT_FORMATS)}}}")
    frame = _frame(run)
    row = _trial_row(run, frame, trial)
    t = int(row["trial"])
    arch = trained_arch(run, str(row["arch"]))
    path = Path(out) if out is not None else run.path / "export" / f"trial_{t}.{EXPORT_EXT[fmt]}"
    weights = run.weights_of(t)
    kept = weights.is_file()
    if fmt == "timm":
        info: dict[str, Any] = dict(ss.export_timm(arch, path))
    else:
        info = dict(ss.export_arch(arch, path, fmt, weights if kept and fmt != "json" else None))
    info.update(trial=t, arch=arch.to_string(), accuracy=plain_value(float(row["accuracy"])),
                latency_ms=plain_value(float(row["latency_ms"])), reference=bool(row["reference"]))
    if fmt in ("onnx", "torchscript"):
        info["weights_included"] = kept
        info["weights"] = str(weights) if kept else None
        if not kept:
            info["note"] = (f"no trained weights kept for trial {t} (the run keeps the best keep_weights trials): "
                            "exported the untrained architecture")
    else:
        info["weights_included"] = False
        info["note"] = f"{fmt} holds the architecture only (no weights)"
    return info
