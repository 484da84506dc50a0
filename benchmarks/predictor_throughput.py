"""Latency predictor speed: `predict_ms_batch` (target >= 1,000,000 archs/s) and `predict_ms` (<= 20 µs).

Speed does not depend on the measured values, so without --table this uses a synthetic table of the space
(every layer config present, values from its MAdds) and needs no build.
Usage: python benchmarks/predictor_throughput.py [--table T.parquet] [--space S] [--n N] [--out FILE]
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

import latency as lat
import search_space as ss


def synthetic_table(space: ss.SearchSpace) -> lat.LatencyTable:
    return lat.LatencyTable.from_layer_us(space, space.resolution, lambda c: 1.0 + ss.layer_cost(c)[1] / 5e4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--table", default=None)
    ap.add_argument("--space", default="mobilenet_v3_large_space")
    ap.add_argument("--n", type=int, default=1_000_000, help="encodings per batch")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    table = lat.LatencyTable.load(args.table) if args.table else synthetic_table(ss.get_space(args.space))
    space = table.space
    rng = np.random.default_rng(0)
    enc = space.sample_encoded(rng, args.n)
    table.predict_ms_batch(enc[:10])  # builds the gather tables once
    batch_rates = []
    for _ in range(5):
        t = time.perf_counter()
        table.predict_ms_batch(enc)
        batch_rates.append(len(enc) / (time.perf_counter() - t))
    archs = [space.decode(row) for row in enc[:5000]]
    single_us = []
    for _ in range(5):
        t = time.perf_counter()
        for a in archs:
            table.predict_ms(a)
        single_us.append((time.perf_counter() - t) / len(archs) * 1e6)
    res = {"space": space.name, "table": args.table or "synthetic", "batch_size": len(enc),
           "batch_archs_per_s_median": statistics.median(batch_rates), "batch_archs_per_s": batch_rates,
           "single_us_median": statistics.median(single_us), "single_us": single_us,
           "targets": {"batch_archs_per_s": 1_000_000, "single_us": 20}}
    path = write("predictor_throughput", res, args.out)
    print(f"{space.name} ({res['table']}): predict_ms_batch {res['batch_archs_per_s_median']:,.0f} archs/s "
          f"(target 1,000,000); predict_ms {res['single_us_median']:.1f} µs/arch (target 20). wrote {path}")


if __name__ == "__main__":
    main()
