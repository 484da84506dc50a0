"""Proxy-training speed on this machine: images/s for V3-Small and V3-Large at 32 px, and the wall time and top-1
of one default evaluation (V3-Small, default recipe, builtin:digits; targets: <= 60 s, >= 95% top-1).

Usage: python benchmarks/evaluator_speed.py [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write

import search_space as ss
from evaluators import ProxyTrainer, Recipe, load_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = load_data("builtin:digits", resolution=32, seed=0)
    load_s = time.perf_counter() - t0
    rates = {}
    for name in ("mobilenet_v3_small", "mobilenet_v3_large"):
        recipe = Recipe(epochs=1, max_steps=15)
        res = ProxyTrainer(recipe).evaluate(ss.preset(name), data, seed=0)
        rates[name] = {"images_per_s": res.steps * recipe.batch_size / res.train_s, "threads": recipe.threads}
        print(f"{name}: {rates[name]['images_per_s']:.0f} training images/s at 32 px ({recipe.threads} threads)")
    t0 = time.perf_counter()
    res = ProxyTrainer(Recipe()).evaluate(ss.mobilenet_v3_small(), data, seed=0)
    wall = time.perf_counter() - t0
    default = {"wall_s": wall, "train_s": res.train_s, "top1": res.top1, "epochs": res.epochs, "failed": res.failed,
               "recipe": Recipe().__dict__}
    print(f"default evaluation of mobilenet_v3_small on builtin:digits: top-1 {100 * res.top1:.2f}% in {wall:.1f} s "
          f"(targets: >= 95%, <= 60 s); data load {load_s:.1f} s")
    path = write("evaluator_speed", {"data_load_s": load_s, "training_rate": rates, "default_evaluation": default,
                                     "targets": {"wall_s": 60, "top1": 0.95}}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
