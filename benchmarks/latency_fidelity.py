"""Latency table build cost and prediction fidelity on this machine (issue: latency).

For each default space at 224 px, 1 thread: build the table (or reuse one), then measure >= 50 held-out
random architectures plus the space's preset whole, interleaved with the reference network (the validate
protocol), against the calibrated prediction and the uncorrected layer sum.
Targets: build <= 10 min per space; >= 95% within ±10%; Kendall τ >= 0.9.

Usage: python benchmarks/latency_fidelity.py [--spaces small,large] [--samples 50] [--rounds 3] [--reuse] [--out F]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write

import latency as lat
import search_space as ss

SPACES = {"small": "mobilenet_v3_small_space", "large": "mobilenet_v3_large_space"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spaces", default="small,large")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
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
        v = lat.validate(table, args.samples, args.seed, args.rounds,
                         plot=RESULTS / f"latency_fidelity_{short}.png")
        cal = {k: val for k, val in table.calibration.items() if k != "nets"}
        results[space.name] = {
            "table": str(path), "entries": len(table), "built": built, "build_s": build_s if built else None,
            "validate_s": time.time() - t0, "calibration": cal,
            **{k: v[k] for k in ("n", "within_5pct", "within_10pct", "mape", "bias", "kendall_tau", "spearman")},
            "uncorrected": v["uncorrected"], "plot": v["plot"], "archs": v["archs"]}
        r = results[space.name]
        u = r["uncorrected"]
        print(f"{space.name}: {r['entries']} entries, build {r['build_s'] or 0:.0f} s | n={r['n']}: "
              f"{100 * r['within_10pct']:.0f}% within ±10% ({100 * r['within_5pct']:.0f}% ±5%), MAPE "
              f"{100 * r['mape']:.1f}%, τ {r['kendall_tau']:.3f} | uncorrected sum: {100 * u['within_10pct']:.0f}% "
              f"within ±10%, MAPE {100 * u['mape']:.1f}%, bias {100 * u['bias']:+.1f}%", flush=True)
    path = write("latency_fidelity", {"resolution": args.resolution, "threads": 1, "targets":
                                      {"within_10pct": 0.95, "kendall_tau": 0.9, "build_s": 600},
                                      "spaces": results}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
