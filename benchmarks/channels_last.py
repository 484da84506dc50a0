"""Proxy training in channels-last (NHWC) against the default layout (NCHW): trial time and top-1, real trials.

What `Recipe.channels_last` (on by default) rests on. Each pair is one net, one seed and one budget trained twice
on builtin:fashion at 32 px, 2 threads, once per layout, the two back to back and the order alternating from pair
to pair (NCHW first, then NHWC first, ...), so that the host's drift falls on both layouts alike; the pair's ratio
NCHW train_s / NHWC train_s is the speed-up. Nets: V3-Small and the fashion search rows at the 10th, 50th and
90th percentile of MAdds (benchmarks/data/fashion_search_rows.json), so the cost range of a search is covered.
Budgets: 300 and 600 optimizer steps (the two proxy candidates of benchmarks/proxy_fidelity.py). The layouts
round differently, so top-1 differs per pair by about a seed's noise; the mean difference over pairs is what
must stay near zero.

Measured (2026-12-07, 2 cores, see results/channels_last*.json): see the README's benchmark table.

Pairs are saved one by one (atomically) to the output JSON: an interrupted run resumes where it stopped.

Usage: python benchmarks/channels_last.py [--seeds 0,1] [--steps 300,600] [--out F]   (about 20 min alone)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write
from fashion_rows import DATA, RESOLUTION
from fashion_rows import ROWS_FILE as SEARCH_ROWS

import search_space as ss
from evaluators import ProxyTrainer, Recipe, load_data

QUANTILES = (0.1, 0.5, 0.9)  # of the search rows' MAdds


def nets() -> list[tuple[str, ss.Arch]]:
    """V3-Small and the search rows nearest the MAdds quantiles (deterministic: the committed rows)."""
    rows = sorted(json.loads(SEARCH_ROWS.read_text())["rows"], key=lambda r: r["madds"])
    picked = [("mobilenet_v3_small", ss.mobilenet_v3_small(resolution=RESOLUTION, num_classes=10))]
    for q in QUANTILES:
        r = rows[round(q * (len(rows) - 1))]
        picked.append((f"rows_q{round(100 * q)}", ss.Arch.parse(r["arch"])))
    return picked


def summarize(pairs: list[dict[str, Any]], budgets: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for steps in budgets:
        ps = [p for p in pairs if p["steps"] == steps]
        if not ps:
            continue
        ratio = np.array([p["nchw"]["train_s"] / p["nhwc"]["train_s"] for p in ps])
        diff = np.array([100 * (p["nhwc"]["top1"] - p["nchw"]["top1"]) for p in ps])
        out[str(steps)] = {
            "pairs": len(ps),
            "speedup_median": float(np.median(ratio)), "speedup_min": float(ratio.min()),
            "speedup_max": float(ratio.max()),
            "trial_s_nchw_median": float(np.median([p["nchw"]["train_s"] for p in ps])),
            "trial_s_nhwc_median": float(np.median([p["nhwc"]["train_s"] for p in ps])),
            "trial_s_nhwc_max": float(max(p["nhwc"]["train_s"] for p in ps)),
            "top1_diff_mean_pt": float(diff.mean()), "top1_diff_std_pt": float(diff.std(ddof=1)) if len(ps) > 1
            else None,
            "top1_diff_se_pt": float(diff.std(ddof=1) / np.sqrt(len(ps))) if len(ps) > 1 else None,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", default="300,600")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        budgets = [int(s) for s in args.steps.split(",")]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r} / --steps {args.steps!r}: comma-separated integers, e.g. 0,1 and 300,600")
    out = Path(args.out) if args.out else RESULTS / "channels_last.json"
    settings = {"data": DATA, "resolution": RESOLUTION, "threads": args.threads, "seeds": seeds, "steps": budgets}
    prior = json.loads(out.read_text()) if out.is_file() else {}
    if prior and prior.get("settings") != settings:  # never overwrite measured pairs of other settings
        ap.error(f"{out} holds pairs of other settings ({prior.get('settings')}): pass --out to write elsewhere")
    pairs: list[dict[str, Any]] = prior.get("pairs", [])
    done = {(p["net"], p["seed"], p["steps"]) for p in pairs}
    data = load_data(DATA, resolution=RESOLUTION, seed=0)
    todo = [(name, arch, seed, steps) for name, arch in nets() for steps in budgets for seed in seeds]
    print(f"{len(todo)} pairs, {len(done)} already measured", flush=True)
    t0 = time.perf_counter()

    def save(complete: bool) -> None:
        write("channels_last", {"settings": settings, "complete": complete,
                                "summary": summarize(pairs, budgets), "pairs": pairs}, str(out))

    for i, (name, arch, seed, steps) in enumerate(todo):
        if (name, seed, steps) in done:
            continue
        order = ("nchw", "nhwc") if i % 2 == 0 else ("nhwc", "nchw")
        pair: dict[str, Any] = {"net": name, "arch": arch.to_string(), "seed": seed, "steps": steps,
                                "first": order[0]}
        for layout in order:
            trainer = ProxyTrainer(Recipe(steps=steps, threads=args.threads, channels_last=layout == "nhwc"))
            res = trainer.evaluate(arch, data, seed=seed)  # no cache dir: always trained
            pair[layout] = {"train_s": res.train_s, "top1": res.top1, "failed": res.failed}
        pairs.append(pair)
        save(False)
        print(f"[{i + 1}/{len(todo)}] {name} seed {seed} {steps} steps: NCHW {pair['nchw']['train_s']:.1f} s "
              f"{100 * pair['nchw']['top1']:.2f}%, NHWC {pair['nhwc']['train_s']:.1f} s "
              f"{100 * pair['nhwc']['top1']:.2f}% ({time.perf_counter() - t0:.0f} s so far)", flush=True)
    save(True)
    for steps, s in summarize(pairs, budgets).items():
        print(f"{steps} steps, {s['pairs']} pairs: NHWC {s['speedup_median']:.2f}x faster (range "
              f"{s['speedup_min']:.2f}-{s['speedup_max']:.2f}); trial median {s['trial_s_nchw_median']:.1f} s -> "
              f"{s['trial_s_nhwc_median']:.1f} s (max {s['trial_s_nhwc_max']:.1f} s); top-1 NHWC - NCHW "
              f"{s['top1_diff_mean_pt']:+.2f} ± {s['top1_diff_se_pt'] or 0:.2f} (se) points")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
