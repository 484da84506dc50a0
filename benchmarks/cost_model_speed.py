"""Cost model throughput: analytic params+MAdds per second, scalar and vectorized, vs building torch modules.

Target (issue 3): >= 100k archs/s. Usage: python benchmarks/cost_model_speed.py [--n N] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write

import search_space as ss


def rate(fn, n_items: int, repeats: int = 5) -> tuple[float, list[float]]:
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        rates.append(n_items / (time.perf_counter() - t))
    return statistics.median(rates), rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=20000, help="architectures per space for the scalar path")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results = {}
    for make in (ss.mobilenet_v3_large_space, ss.mobilenet_v3_small_space):
        space = make()
        rng = np.random.default_rng(0)
        enc = space.sample_encoded(rng, max(args.n, 200_000))
        archs = [space.decode(row) for row in enc[: args.n]]
        ss.count_encoded(space, enc[:10])  # build the lookup tables once (reported separately)
        t = time.perf_counter()
        space.tabulate(ss.layer_cost, dtype=np.int64)
        tab_s = time.perf_counter() - t
        scalar, scalar_all = rate(lambda archs=archs: [ss.count(a) for a in archs], len(archs))
        batch, batch_all = rate(lambda enc=enc, space=space: ss.count_encoded(space, enc), len(enc))

        few = archs[:20]
        torch_rate, _ = rate(lambda few=few: [sum(p.numel() for p in ss.build_model(a).parameters()) for a in few],
                             len(few), repeats=3)
        results[space.name] = {"scalar_archs_per_s_median": scalar, "scalar_archs_per_s": scalar_all,
                               "batch_archs_per_s_median": batch, "batch_archs_per_s": batch_all,
                               "batch_size": len(enc), "tabulate_s": tab_s,
                               "torch_build_params_archs_per_s": torch_rate}
        print(f"{space.name:26s} scalar count(): {scalar:>10,.0f} archs/s | count_encoded(): {batch:>12,.0f} archs/s"
              f" | torch build: {torch_rate:,.1f} archs/s | table build {tab_s * 1e3:.0f} ms")
    path = write("cost_model_speed", {"target_archs_per_s": 100_000, "spaces": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
