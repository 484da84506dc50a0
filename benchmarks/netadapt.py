"""NetAdapt on MobileNetV3-Small trained on builtin:digits, down to 80% of its predicted latency.

Start: MobileNetV3-Small trained 3 epochs on digits at 32 px (seed 0); latency: this machine's 224 px table
(1000-class head, as deployed). NetAdapt runs with MobileNetV3's δ = 1% of the starting latency, 10-step
short-term fine-tunes on 2 local workers, ΔAcc/|ΔLat| selection, then a 2-epoch long-term fine-tune.
Baseline: uniform width scaling, the largest width multiplier α whose predicted latency meets the same target,
trained from scratch for as many epochs as NetAdapt's result saw in total (3 + 2). Accuracies on digits move by
about a point between seeds, so the long-term fine-tune and the baseline are both run with `--seeds` seeds.
Measured latency: ONNX in onnxruntime at 224 px, 1 thread, the three networks interleaved round by round.
Usage: python benchmarks/netadapt.py [--out FILE] [--seeds 3] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write
from search_efficiency import load_table

import search_space as ss
from bneck_common.paths import cache_dir
from evaluators import ProxyTrainer, Recipe, load_data
from latency.build import default_reference, measure_whole
from runs.netadapt_run import Start, run_netadapt
from runs.worker import FineTuneJob, run_job
from searchers.netadapt import FineTuneRequest, state_bytes

START_EPOCHS, LONG_EPOCHS = 3.0, 2.0


def uniform_width(table, target_ms: float, num_classes: int) -> tuple[float, ss.Arch, float]:
    """Largest α (to 0.005) whose V3-Small meets the target per the table."""
    def ms(alpha: float) -> float:
        return table.predict_ms(ss.mobilenet_v3_small(alpha, table.resolution, table.space.num_classes))

    lo, hi = 0.3, 1.0
    while hi - lo > 0.005:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ms(mid) <= target_ms else (lo, mid)
    return lo, ss.mobilenet_v3_small(lo, 32, num_classes), ms(lo)


def interleaved_ms(archs: dict[str, ss.Arch], rounds: int) -> dict[str, dict[str, float]]:
    """Each network timed with the table protocol (paired bursts next to V3-Small, median ratio over rounds),
    all in one interleaved measurement, in the host state of that measurement."""
    keys = list(archs)
    first = archs[keys[0]]
    timings = measure_whole([archs[k] for k in keys], default_reference(first), 1, rounds=rounds)
    return {k: {"median_ms": t.us / 1e3, "ratio_to_reference": t.ratio, "round_ratio_spread": t.ratio_spread}
            for k, t in zip(keys, timings, strict=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--short-steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--table", default=None)
    ap.add_argument("--run-dir", default=str(RESULTS / "netadapt_run"), help="NetAdapt's dir (resumable)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    table, _ = load_table(args.table, ss.mobilenet_v3_small_space())
    data = load_data("builtin:digits", resolution=32, seed=0)
    start_arch = ss.mobilenet_v3_small(1.0, 32, data.num_classes)
    recipe = Recipe(epochs=START_EPOCHS, threads=2)
    trained = ProxyTrainer(recipe, cache_dir=cache_dir()).evaluate(start_arch, data, seed=0, return_model=True)
    start_ms = table.predict_ms(ss.mobilenet_v3_small(1.0, table.resolution, table.space.num_classes))
    target = 0.8 * start_ms
    print(f"start: V3-Small top-1 {100 * trained.top1:.2f}%, predicted {start_ms:.3f} ms, target {target:.3f} ms",
          flush=True)

    t_na = time.perf_counter()
    start = Start(start_arch, state_bytes(trained.model), None, "builtin:digits", 32, 0, "cpu", "benchmark")
    settings_kw = {"target_ms": target, "step_frac": 0.01, "short_steps": args.short_steps,
                   "long_epochs": LONG_EPOCHS}
    summary = run_netadapt(start, Path(args.table or _table_path()), Path(args.run_dir), settings_kw,
                           args.workers, 1, "local", None, show_progress=False)
    netadapt_s = time.perf_counter() - t_na
    resumed = netadapt_s < summary["adapt_s"]  # the run dir was finished before: its own times count
    netadapt_s = summary["adapt_s"] + summary["long_s"] if resumed else netadapt_s
    final = ss.Arch.parse(summary["final_arch"])
    pruned = (Path(args.run_dir) / "iterations" / f"{summary['iterations']:03d}")
    pruned_weights = (pruned / "weights.pt").read_bytes()
    settings = summary["settings"]
    long_recipe = {"epochs": LONG_EPOCHS, "lr": settings["long_lr"], "warmup_fraction": 0.0,
                   "batch_size": settings["batch_size"], "threads": 2}
    after = [summary["top1_after"]]
    for s in range(1, args.seeds):  # the long-term fine-tune with more seeds (seed 0 is NetAdapt's own)
        request = FineTuneRequest(0, final.to_string(), pruned_weights, long_recipe, 10_000 + s, None, True)
        out = run_job(FineTuneJob(request, "builtin:digits", 32, "cpu", 0))
        after.append(out.top1)

    alpha, uniform, uniform_ms = uniform_width(table, target, data.num_classes)
    scratch = Recipe(epochs=START_EPOCHS + LONG_EPOCHS, threads=2)
    uniform_top1 = [ProxyTrainer(scratch, cache_dir=cache_dir()).evaluate(uniform, data, seed=s).top1
                    for s in range(args.seeds)]
    deployed = {"start": ss.mobilenet_v3_small(1.0, 224, 1000), "netadapt": final.replace(resolution=224,
                                                                                            num_classes=1000),
                "uniform": ss.mobilenet_v3_small(alpha, 224, 1000)}
    measured = interleaved_ms(deployed, args.rounds)
    m_start, m_final = measured["start"]["median_ms"], measured["netadapt"]["median_ms"]
    result = {
        "target_ms": target, "start_predicted_ms": start_ms, "final_predicted_ms": summary["final_predicted_ms"],
        "predicted_below_target_pct": 100 * (1 - summary["final_predicted_ms"] / target),
        "start_measured_ms": m_start, "final_measured_ms": m_final,
        "measured_ratio": m_final / m_start, "measured_target_ms": 0.8 * m_start,
        "measured_vs_target_pct": 100 * (m_final / (0.8 * m_start) - 1),
        "top1_before": summary["top1_before"], "top1_after": summary["top1_after"],
        "top1_after_seeds": after, "top1_after_mean": statistics.mean(after),
        "uniform_width_alpha": alpha, "uniform_width_predicted_ms": uniform_ms,
        "uniform_width_measured_ms": measured["uniform"]["median_ms"],
        "uniform_width_top1": statistics.mean(uniform_top1), "uniform_width_top1_seeds": uniform_top1,
        "iterations": summary["iterations"], "final_arch": summary["final_arch"],
        "measured": measured, "netadapt_s": netadapt_s, "netadapt_resumed": resumed,
        "wall_s": time.perf_counter() - t0 + (netadapt_s if resumed else 0.0),
        "settings": settings,
    }
    path = write("netadapt", result, args.out)
    print(f"NetAdapt {summary['iterations']} iterations in {netadapt_s:.0f} s: predicted {start_ms:.3f} -> "
          f"{result['final_predicted_ms']:.3f} ms (target {target:.3f}, {result['predicted_below_target_pct']:.2f}% "
          f"below)")
    print(f"measured (interleaved, 224 px, 1 thread): {m_start:.3f} -> {m_final:.3f} ms = "
          f"{100 * result['measured_ratio']:.1f}% of the start ({result['measured_vs_target_pct']:+.1f}% vs 80%)")
    print(f"top-1: before {100 * result['top1_before']:.2f}%, after {100 * result['top1_after']:.2f}% "
          f"(mean of {len(after)} long fine-tune seeds {100 * result['top1_after_mean']:.2f}%)")
    print(f"uniform width α={alpha:.3f} ({uniform_ms:.3f} ms predicted, "
          f"{measured['uniform']['median_ms']:.3f} ms measured): top-1 mean {100 * result['uniform_width_top1']:.2f}% "
          f"over {len(uniform_top1)} seeds, trained {START_EPOCHS + LONG_EPOCHS:g} epochs from scratch")
    print(f"wall {result['wall_s']:.0f} s -> {path}")


def _table_path() -> str:
    from latency import default_table_path

    return str(default_table_path(ss.mobilenet_v3_small_space(), 224, 1))


if __name__ == "__main__":
    main()
