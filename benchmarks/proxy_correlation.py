"""Zero-cost proxies vs proxy-trained top-1 on builtin:digits, over random archs of mobilenet_v3_small_space.

Digits is easy: with the default 10 epochs most archs land at 98-99% and ranking is noise, so this trains each
arch for a short budget (default 3 epochs) where accuracies still spread. The (arch, top-1, scores) rows are
saved to benchmarks/data/digits_small_space_top1.json for reuse (e.g. a searcher benchmark's surrogate).
Usage: python benchmarks/proxy_correlation.py [--archs 30] [--epochs 3] [--seed 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write

import search_space as ss
from evaluators import PROXIES, ProxyTrainer, Recipe, load_data, proxy_score

DATA_FILE = Path(__file__).resolve().parent / "data" / "digits_small_space_top1.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--archs", type=int, default=30)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    data = load_data("builtin:digits", resolution=32, seed=0)
    space = ss.mobilenet_v3_small_space(num_classes=10, resolution=32)
    rng = np.random.default_rng(args.seed)
    archs = [space.sample(rng) for _ in range(args.archs)]
    trainer = ProxyTrainer(Recipe(epochs=args.epochs))
    rows = []
    t0 = time.perf_counter()
    for i, arch in enumerate(archs):
        res = trainer.evaluate(arch, data, seed=0)
        scores = {}
        proxy_s = {}
        for name in PROXIES:
            t = time.perf_counter()
            scores[name] = proxy_score(name, arch, data, seed=0)
            proxy_s[name] = time.perf_counter() - t
        rows.append({"arch": arch.to_string(), "arch_id": arch.arch_id, "top1": res.top1, "failed": res.failed,
                     "train_s": res.train_s, "params": res.params, "madds": res.madds, "scores": scores,
                     "proxy_s": proxy_s})
        print(f"[{i + 1}/{len(archs)}] {arch.arch_id} top-1 {100 * res.top1:.1f}% "
              + " ".join(f"{k} {v:.3g}" for k, v in scores.items()), flush=True)
    top1 = np.array([r["top1"] for r in rows])
    summary = {}
    for name in [*PROXIES, "params", "madds"]:
        vals = np.array([r["scores"][name] if name in PROXIES else r[name] for r in rows], dtype=float)
        ok = np.isfinite(vals)
        summary[name] = {"spearman": float(spearmanr(vals[ok], top1[ok]).statistic),
                         "kendall": float(kendalltau(vals[ok], top1[ok]).statistic), "n": int(ok.sum()),
                         "seconds_per_arch": float(np.median([r["proxy_s"][name] for r in rows]))
                         if name in PROXIES else 0.0}
    DATA_FILE.parent.mkdir(parents=True, exist_ok=True)
    DATA_FILE.write_text(json.dumps({"space": space.name, "data": "builtin:digits", "resolution": 32,
                                     "recipe": Recipe(epochs=args.epochs).__dict__, "rows": rows}, indent=1))
    path = write("proxy_correlation", {"archs": len(rows), "epochs": args.epochs, "top1_range": [float(top1.min()),
               float(top1.max())], "wall_s": time.perf_counter() - t0, "correlation": summary}, args.out)
    print(f"top-1 range {100 * top1.min():.1f}-{100 * top1.max():.1f}% over {len(rows)} archs")
    for name, s in summary.items():
        print(f"{name:10s} Spearman {s['spearman']:+.3f}  Kendall {s['kendall']:+.3f}  "
              f"({s['seconds_per_arch']:.2f} s/arch)")
    print(f"wrote {path} and {DATA_FILE}")


if __name__ == "__main__":
    main()
