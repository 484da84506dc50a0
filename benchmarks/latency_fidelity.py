"""Latency table build cost and prediction fidelity on this machine (issue: latency).

For each default space at 224 px, 1 thread: build the table from scratch (or reuse one), then validate it on
held-out nets (the validate protocol: `--samples` random nets of the space, uniform width multipliers of the
preset and `--pruned` randomly pruned nets; never the seed/reference or a calibration net), measured twice one
pass after the other (`repeat=2`): the second pass against the first is the measurement's own noise floor.
Targets (latency issue): retest >= 90% within ±5% and τ >= 0.9; predictor >= 95% within ±10%, >= 75% within
±5%, τ >= 0.90; small-space build <= 6 min.

Usage: python benchmarks/latency_fidelity.py [--spaces small,large] [--samples 40] [--pruned 10] [--seed 11]
                                             [--reuse] [--out F]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write

import latency as lat
import search_space as ss

SPACES = {"small": "mobilenet_v3_small_space", "large": "mobilenet_v3_large_space"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spaces", default="small,large")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--pruned", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=None, help="rounds per net (default: the protocol's)")
    ap.add_argument("--seed", type=int, default=11, help="held-out sampling seed (builds use seed 0)")
    ap.add_argument("--reuse", action="store_true", help="reuse a cached table instead of rebuilding")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results = {}
    for short in args.spaces.split(","):
        space = ss.get_space(SPACES[short], resolution=args.resolution)
        path = lat.default_table_path(space, args.resolution)
        t0 = time.time()
        if args.reuse and path.exists():
            table, built = lat.LatencyTable.load(path), False
        else:
            table, path = lat.build_table(space, args.resolution, force=True, show_progress=sys.stderr.isatty())
            built = True
        build_s = time.time() - t0
        t0 = time.time()
        v = lat.validate(table, args.samples, args.seed, args.rounds, n_pruned=args.pruned, repeat=2,
                         plot=RESULTS / f"latency_fidelity_{short}.png")
        cal = {k: val for k, val in table.calibration.items() if k != "nets"}
        rounds = [n["rounds"] for n in table.calibration.get("nets", [])]
        cal["rounds_per_net"] = {"median": float(np.median(rounds)), "max": max(rounds)} if rounds else None
        keys = ("n", "within_5pct", "within_10pct", "mape", "bias", "kendall_tau", "spearman", "retest_within_5pct",
                "retest_within_10pct", "retest_median_abs_pct", "retest_kendall_tau", "round_ratio_spread_median")
        results[space.name] = {
            "table": str(path), "entries": len(table), "built": built, "build_s": build_s if built else None,
            "validate_s": time.time() - t0, "calibration": cal, "protocol": table.meta["protocol"],
            "row_pass_spread_median": table.meta.get("row_pass_spread_median"),
            **{k: v[k] for k in keys}, "offgrid": v["offgrid"], "uncorrected": v["uncorrected"],
            "unanchored": v["unanchored"], "anchors": v["anchors"],
            "reference_net": v.get("reference_net"), "predictor_vs_each_pass": v["predictor_vs_each_pass"],
            "plot": v["plot"], "archs": v["archs"]}
        r = results[space.name]
        o = r["offgrid"]
        print(f"{space.name}: {r['entries']} entries, build {r['build_s'] or 0:.0f} s, validate {r['validate_s']:.0f} s"
              f" | held-out n={r['n']}: {100 * r['within_10pct']:.0f}% within ±10%, {100 * r['within_5pct']:.0f}% "
              f"±5%, τ {r['kendall_tau']:.3f}, MAPE {100 * r['mape']:.1f}% | off-grid n={o['n']}: "
              f"{100 * o.get('within_10pct', float('nan')):.0f}% ±10% | retest: {100 * r['retest_within_5pct']:.0f}% "
              f"±5%, median |Δ| {r['retest_median_abs_pct']:.2f}%, τ {r['retest_kendall_tau']:.3f} | calibration "
              f"LOO MAPE {100 * cal.get('loo_mape', float('nan')):.1f}% | anchor scale by pass "
              f"{[round(x, 4) for x in r['anchors']['scale_by_pass']]}; unanchored "
              f"{100 * r['unanchored']['within_10pct']:.0f}% ±10%, {100 * r['unanchored']['within_5pct']:.0f}% ±5%, "
              f"τ {r['unanchored']['kendall_tau']:.3f}", flush=True)
    path = write("latency_fidelity", {"resolution": args.resolution, "threads": 1, "targets":
                                      {"within_10pct": 0.95, "within_5pct": 0.75, "kendall_tau": 0.9,
                                                  "retest_within_5pct": 0.9, "retest_kendall_tau": 0.9,
                                                  "build_s_small": 360},
                                      "spaces": results}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
