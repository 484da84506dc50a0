"""Grow the measured (arch, top-1) rows that the search benchmark's surrogate is fitted on.

Trains `--archs` more random archs of mobilenet_v3_small_space on builtin:digits at 32 px with the same short
recipe as benchmarks/proxy_correlation.py (3 epochs, seed 0) and appends them to
benchmarks/data/digits_small_space_top1.json (rows already there are kept; their arch ids are skipped).
Usage: python benchmarks/surrogate_rows.py [--archs 60] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import search_space as ss
from evaluators import ProxyTrainer, Recipe, load_data

DATA_FILE = Path(__file__).resolve().parent / "data" / "digits_small_space_top1.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--archs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    doc = json.loads(DATA_FILE.read_text())
    recipe = Recipe.from_dict(doc["recipe"])  # the rows' own (epoch-based) recipe
    data = load_data(doc["data"], resolution=doc["resolution"], seed=0)
    space = ss.mobilenet_v3_small_space(num_classes=data.num_classes, resolution=doc["resolution"])
    seen = {r["arch_id"] for r in doc["rows"]}
    rng = np.random.default_rng(args.seed)
    trainer = ProxyTrainer(recipe)
    added = 0
    t0 = time.perf_counter()
    while added < args.archs:
        arch = space.sample(rng)
        if arch.arch_id in seen:
            continue
        res = trainer.evaluate(arch, data, seed=0)
        doc["rows"].append({"arch": arch.to_string(), "arch_id": arch.arch_id, "top1": res.top1,
                            "failed": res.failed, "train_s": res.train_s, "params": res.params,
                            "madds": res.madds})
        seen.add(arch.arch_id)
        added += 1
        tmp = DATA_FILE.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, DATA_FILE)  # every row lands at once, so an interrupted run loses nothing
        print(f"[{added}/{args.archs}] {arch.arch_id} top-1 {100 * res.top1:.1f}% "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
