"""The demonstration: does a search of the small space find a net that beats MobileNetV3-Small on Fashion-MNIST at
no more than its latency, by more than the seed noise?

1. `bneck search` (the product, in a run dir it resumes): the small space on builtin:fashion (48,000 training,
   12,000 validation images) at 32 px, the search's default proxy (DEFAULT_STEPS), latency predicted at 224 px
   by this machine's table, reward `hard` and V3-Small's predicted latency as a hard ceiling (`max_latency_ms`:
   nothing slower is trained), V3-Small itself as the reference trial, the run's confirmation (top 3 and the
   reference, 2 more seeds) choosing the candidates by mean.
2. The confirmed top `--top` and V3-Small are trained long (LONG_STEPS, the truth of benchmarks/proxy_fidelity.py;
   its V3-Small row is a cache hit) with `--seeds` seeds each and scored on fashion's 10,000 test images, which
   neither the search nor the confirmation ever saw.
3. All of them are timed with onnxruntime as the table deploys them (224 px, its class count), whole nets
   interleaved with the table's reference and anchors (`latency.measure_in_table_scale`), in two passes 20 s
   apart; the median of the passes is reported beside each pass.

Target (issue 15): the best found beats V3-Small's mean top-1 by >= max(1 point, 2x the pooled seed std) at <=
V3-Small's measured latency. The JSON says whether it did, and by how much.

Usage: python benchmarks/fashion_search.py [--trials 60] [--searcher evolution] [--run DIR] [--out FILE]
       python benchmarks/fashion_search.py --quick     (a few-minute smoke run: tiny budgets, not a result)
Resumable: rerun the same command; the search resumes from its run dir, long trainings come from the eval cache.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write

import latency as lat
import search_space as ss
from bneck_common.paths import RUNS_DIR, cache_dir
from evaluators import ProxyTrainer, Recipe, load_data
from evaluators.trainer import DEFAULT_STEPS
from runs.rundir import RunDir

DATA = "builtin:fashion"
RESOLUTION = 32
LATENCY_RESOLUTION = 224
LONG_STEPS = 1200  # benchmarks/proxy_fidelity.py's truth: 4x its largest proxy budget


def latency_setup() -> tuple[lat.LatencyTable, Path, float]:
    """This machine's 224 px table of the small space (built when missing) and V3-Small's predicted latency as the
    search deploys it (the table's resolution and class count): the ceiling."""
    big = ss.mobilenet_v3_small_space(resolution=LATENCY_RESOLUTION)
    path = lat.default_table_path(big, LATENCY_RESOLUTION)
    table = lat.LatencyTable.load(path) if path.is_file() else lat.build_table(big, LATENCY_RESOLUTION)[0]
    space = ss.mobilenet_v3_small_space(num_classes=10, resolution=RESOLUTION)
    assert space.preset is not None
    return table, path, lat.LatencyModel(table, space).ms(space.preset)


def search_config(trials: int, searcher: str, steps: int, seed: int, confirm_top: int, table: Path,
                  ceiling_ms: float) -> dict[str, Any]:
    options = {"population": 12, "sample_size": 4} if searcher == "evolution" else {}
    return {"name": "fashion-search", "space": "mobilenet_v3_small_space", "data": DATA, "resolution": RESOLUTION,
            "steps": steps, "trials": trials, "searcher": searcher, "searcher_options": options,
            "reward": "hard", "max_latency_ms": ceiling_ms, "table": str(table), "seed": seed, "workers": 2,
            "threads": 1, "latency_resolution": LATENCY_RESOLUTION, "confirm": {"top": confirm_top, "seeds": 2}}


def run_bneck_search(run: Path, config: dict[str, Any]) -> None:
    """`bneck search` in `run` (new, or resumed when it holds a run); its progress goes to this terminal."""
    bneck = Path(sys.executable).with_name("bneck")
    if RunDir(run).exists():
        cmd = [str(bneck), "search", "--resume", str(run)]
    else:
        run.parent.mkdir(parents=True, exist_ok=True)
        cfg = run.parent / f"{run.name}.yaml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = [str(bneck), "search", "--config", str(cfg), "--out", str(run)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def confirmed(run: Path, top: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The reference row and the top `top` feasible rows of the run's confirmation, by mean top-1."""
    doc = RunDir(run).confirmation()
    if doc.get("status") != "done":
        raise SystemExit(f"{run}: the search's confirmation has not finished; rerun to resume it")
    refs = [r for r in doc["rows"] if r["reference"]]
    found = sorted((r for r in doc["rows"] if not r["reference"] and r["feasible"]),
                   key=lambda r: (-r["top1_mean"], r["latency_ms"]))
    return refs[0], found[:top]


def long_top1(arch: ss.Arch, seeds: list[int], steps: int, data: Any) -> list[float]:
    """Test top-1 after `steps` of the default recipe, per seed (eval cache: a rerun costs nothing)."""
    trainer = ProxyTrainer(Recipe(steps=steps, threads=2), cache_dir=cache_dir())
    out = []
    for seed in seeds:
        res = trainer.evaluate(arch, data, seed=seed, return_model=True)
        top1 = 0.0 if res.failed else trainer.score(res.model, data, "test")[0]  # type: ignore[attr-defined]
        print(f"  {arch.arch_id} seed {seed}: test top-1 {100 * top1:.2f}% ({res.train_s:.0f} s"
              f"{', cached' if res.cached else ''})", flush=True)
        out.append(float(top1))
    return out


def timed_ms(table: lat.LatencyTable, archs: list[ss.Arch], passes: int, rounds: int | None) -> list[list[float]]:
    """Per arch, its latency (ms) in each pass: whole nets deployed as the table predicts them (its resolution and
    class count), timed interleaved with the table's reference and anchors, in the table's scale."""
    deployed = [a.replace(resolution=table.resolution, num_classes=table.space.num_classes) for a in archs]
    per: list[list[float]] = [[] for _ in archs]
    for p in range(passes):
        if p:
            time.sleep(20)  # apart in time: a second look at the host, not the same stretch twice
        for i, us in enumerate(lat.measure_in_table_scale(table, deployed, rounds, seed=p).us):
            per[i].append(float(us) / 1000)
    return per


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for r in rows:
        ax.errorbar(r["measured_ms"], 100 * r["top1_mean"], yerr=100 * (r["top1_std"] or 0), fmt="o" if
                    r["reference"] else "s", capsize=3, color="tab:gray" if r["reference"] else "tab:blue")
        ax.annotate("V3-Small" if r["reference"] else f"trial {r['trial']}", (r["measured_ms"],
                    100 * r["top1_mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("measured latency at 224 px (ms, onnxruntime, 1 thread)")
    ax.set_ylabel("fashion test top-1 (%), mean ± std")
    ax.set_title("found nets vs MobileNetV3-Small", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--searcher", default="evolution")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="proxy budget of the search")
    ap.add_argument("--long-steps", type=int, default=LONG_STEPS)
    ap.add_argument("--seeds", type=int, default=3, help="long trainings per net")
    ap.add_argument("--top", type=int, default=3, help="found nets trained long")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", type=Path, default=RUNS_DIR / "bench-fashion-search")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds per pass (default: the protocol's)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 trials of 60 steps, 100-step long, 2 seeds")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.trials, args.steps, args.long_steps, args.seeds, args.top, args.rounds = 6, 60, 100, 2, 2, 6
        args.run = args.run.with_name(args.run.name + "-quick")
    t0 = time.perf_counter()
    table, table_path, ceiling_ms = latency_setup()
    run_bneck_search(args.run, search_config(args.trials, args.searcher, args.steps, args.seed, max(3, args.top),
                                       table_path, ceiling_ms))
    ref_row, found = confirmed(args.run, args.top)
    data = load_data(DATA, resolution=RESOLUTION, seed=0)
    seeds = list(range(args.seeds))
    rows = []
    for r in [ref_row, *found]:
        arch = ss.Arch.parse(r["arch"])
        print(f"{'V3-Small' if r['reference'] else 'trial ' + str(r['trial'])} {arch.arch_id}: "
              f"{args.long_steps} steps x {len(seeds)} seeds", flush=True)
        top1 = long_top1(arch, seeds, args.long_steps, data)
        rows.append({"trial": r["trial"], "reference": r["reference"], "arch": r["arch"], "arch_id": arch.arch_id,
                     "predicted_ms": r["latency_ms"], "proxy_top1_mean": r["top1_mean"], "top1_seeds": top1,
                     "top1_mean": float(np.mean(top1)),
                     "top1_std": float(np.std(top1, ddof=1)) if len(top1) > 1 else None})
    print("timing (2 passes, interleaved)", flush=True)
    passes = timed_ms(table, [ss.Arch.parse(r["arch"]) for r in rows], 2, args.rounds)
    for r, ms in zip(rows, passes, strict=True):
        r["measured_ms_passes"] = ms
        r["measured_ms"] = float(np.median(ms))
    ref = rows[0]
    fast_enough = [r for r in rows[1:] if r["measured_ms"] <= ref["measured_ms"]]
    best = max(fast_enough or rows[1:], key=lambda r: r["top1_mean"]) if len(rows) > 1 else None
    stds = [r["top1_std"] for r in rows if r["top1_std"] is not None]
    pooled = float(np.sqrt(np.mean(np.square(stds)))) if stds else None
    margin_needed = max(0.01, 2 * pooled) if pooled is not None else 0.01
    gain = None if best is None else best["top1_mean"] - ref["top1_mean"]
    # `best` is chosen among the top found by their test top-1 (the rule); the search's own pick, the
    # confirmation's first, was chosen before any test image was seen: both are reported
    pick = rows[1] if len(rows) > 1 else None
    summary = {
        "data": DATA, "resolution": RESOLUTION, "latency_resolution": LATENCY_RESOLUTION, "quick": args.quick,
        "search": {"run": str(args.run), "trials": args.trials, "searcher": args.searcher, "proxy_steps": args.steps,
                   "reward": "hard", "ceiling_ms": ceiling_ms},
        "long_steps": args.long_steps, "seeds": seeds,
        "reference_top1_mean": ref["top1_mean"], "reference_top1_std": ref["top1_std"],
        "best_top1_mean": None if best is None else best["top1_mean"],
        "best_top1_std": None if best is None else best["top1_std"], "pooled_std": pooled,
        "reference_measured_ms": ref["measured_ms"], "best_measured_ms": None if best is None else best["measured_ms"],
        "best_arch": None if best is None else best["arch"], "best_trial": None if best is None else best["trial"],
        "gain_points": None if gain is None else 100 * gain, "margin_needed_points": 100 * margin_needed,
        "target_met": bool(best is not None and best in fast_enough and gain is not None and gain >= margin_needed),
        "search_pick_trial": None if pick is None else pick["trial"],
        "search_pick_top1_mean": None if pick is None else pick["top1_mean"],
        "search_pick_top1_std": None if pick is None else pick["top1_std"],
        "search_pick_measured_ms": None if pick is None else pick["measured_ms"],
        "search_pick_gain_points": None if pick is None else 100 * (pick["top1_mean"] - ref["top1_mean"]),
        "candidates": rows, "wall_s": time.perf_counter() - t0,
    }
    name = "fashion_search_quick" if args.quick else "fashion_search"
    path = write(name, summary, args.out)
    plot(rows, path.with_suffix(".png"))
    for r in rows:
        label = "V3-Small" if r["reference"] else f"trial {r['trial']}"
        print(f"{label:>10s}: test top-1 {100 * r['top1_mean']:.2f}% ± {100 * (r['top1_std'] or 0):.2f} "
              f"(proxy {100 * r['proxy_top1_mean']:.2f}%), {r['predicted_ms']:.3f} ms predicted, "
              f"{r['measured_ms']:.3f} ms measured {[round(m, 3) for m in r['measured_ms_passes']]}")
    print(f"best vs V3-Small: {summary['gain_points']:+.2f} points (needed {summary['margin_needed_points']:.2f}) at "
          f"{summary['best_measured_ms']:.3f} vs {summary['reference_measured_ms']:.3f} ms measured: target met "
          f"{summary['target_met']}; wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
