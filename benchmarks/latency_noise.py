"""How to measure a whole network so that the number repeats on a noisy host: statistics compared head to head.

Whole networks of the small space at 224 px (plus the reference, V3-Small) are timed in many shuffled rounds;
in each round every net is timed as one burst (warm-up + `--runs` timed runs) followed by a burst of the
reference (A R B R ...). Every run is kept, so each candidate statistic is computed from the same timings:
the first half of the rounds against the second half (test-retest), and, with `--compare`, against an earlier
file (far apart in time). What repeats best is what validation, calibration and `latency measure` use.

Usage: python benchmarks/latency_noise.py [--nets 30] [--rounds 24] [--runs 10] [--seed 7] [--raw F.npz]
       python benchmarks/latency_noise.py --analyze A.npz [--compare B.npz]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write

import search_space as ss
from latency.protocol import feeds_for, session


def burst(sess: Any, feeds: dict[str, np.ndarray], warmup: int, runs: int) -> np.ndarray:
    run = sess.run
    for _ in range(warmup):
        run(None, feeds)
    clock = time.perf_counter_ns
    out = np.empty(runs)
    for i in range(runs):
        t0 = clock()
        run(None, feeds)
        out[i] = clock() - t0
    return out / 1e3


def record(n_nets: int, rounds: int, runs: int, warmup: int, seed: int, threads: int) -> dict[str, Any]:
    space = ss.get_space("mobilenet_v3_small_space", resolution=224)
    rng = np.random.default_rng(seed)
    archs = [space.sample(rng) for _ in range(n_nets)]
    assert space.preset is not None
    ref_arch = space.preset
    sessions = [session(ss.onnx_bytes(ss.build_model(a), (1, 3, 224, 224)), threads) for a in archs]
    ref = session(ss.onnx_bytes(ss.build_model(ref_arch), (1, 3, 224, 224)), threads)
    feeds = [feeds_for(s) for s in sessions]
    ref_feeds = feeds_for(ref)
    net_us = np.zeros((rounds, n_nets, runs))
    ref_us = np.zeros((rounds, n_nets, runs))
    wall = np.zeros((rounds, n_nets))
    t_start = time.time()
    for r in range(rounds):
        for i in rng.permutation(n_nets):
            net_us[r, i] = burst(sessions[i], feeds[i], warmup, runs)
            ref_us[r, i] = burst(ref, ref_feeds, warmup, runs)
            wall[r, i] = time.time() - t_start
        print(f"\rround {r + 1}/{rounds} ({time.time() - t_start:.0f} s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return {"net_us": net_us, "ref_us": ref_us, "wall_s": wall, "archs": np.array([a.to_string() for a in archs]),
            "seed": seed, "runs": runs, "warmup": warmup}


# ---- statistics: each maps (net bursts, ref bursts) of shape (rounds, nets, runs) to one value per net -------
def _burst_med(x: np.ndarray) -> np.ndarray:
    return np.median(x, axis=2)


def _trimmed(x: np.ndarray, axis: int, frac: float = 0.25) -> np.ndarray:
    s = np.sort(x, axis=axis)
    n = s.shape[axis]
    k = int(n * frac)
    return np.take(s, range(k, n - k), axis=axis).mean(axis=axis)


STATS = {
    "raw_median": lambda n, r: np.median(_burst_med(n), axis=0),
    "raw_min": lambda n, r: n.min(axis=(0, 2)),
    "raw_p10": lambda n, r: np.percentile(n.transpose(1, 0, 2).reshape(n.shape[1], -1), 10, axis=1),
    "raw_mean_of_burst_min": lambda n, r: n.min(axis=2).mean(axis=0),
    "ratio_median": lambda n, r: np.median(_burst_med(n) / _burst_med(r), axis=0),
    "ratio_trimmed": lambda n, r: _trimmed(_burst_med(n) / _burst_med(r), axis=0),
    "ratio_of_burst_min": lambda n, r: np.median(n.min(axis=2) / r.min(axis=2), axis=0),
    "ratio_of_p25": lambda n, r: np.median(np.percentile(n, 25, axis=2) / np.percentile(r, 25, axis=2), axis=0),
    "ratio_to_round_ref": lambda n, r: np.median(_burst_med(n) / np.median(_burst_med(r), axis=1, keepdims=True),
                                                 axis=0),
}


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    from scipy.stats import kendalltau

    d = np.abs(a - b) / ((a + b) / 2)
    return {"within_5pct": float(np.mean(d <= 0.05)), "within_2pct": float(np.mean(d <= 0.02)),
            "median_abs_pct": float(100 * np.median(d)), "kendall_tau": float(kendalltau(a, b).statistic)}


def analyze(raw: dict[str, Any], other: dict[str, Any] | None = None) -> dict[str, Any]:
    n, r = raw["net_us"], raw["ref_us"]
    half = n.shape[0] // 2
    out: dict[str, Any] = {"rounds": int(n.shape[0]), "nets": int(n.shape[1]), "runs": int(n.shape[2]),
                           "ref_burst_median_cv": float(np.std(_burst_med(r)) / np.mean(_burst_med(r))),
                           "ratio_burst_cv_median": float(np.median(
                               np.std(_burst_med(n) / _burst_med(r), axis=0) /
                               np.mean(_burst_med(n) / _burst_med(r), axis=0))),
                           "raw_burst_cv_median": float(np.median(np.std(_burst_med(n), axis=0) /
                                                                  np.mean(_burst_med(n), axis=0))),
                           "halves": {}, "vs_other": {}}
    for name, fn in STATS.items():
        out["halves"][name] = agreement(fn(n[:half], r[:half]), fn(n[half:], r[half:]))
        if other is not None and np.array_equal(other["archs"], raw["archs"]):
            out["vs_other"][name] = agreement(fn(n, r), fn(other["net_us"], other["ref_us"]))
    # how many rounds the best ratio statistic needs: halves of the first 2k rounds
    ks = [k for k in (2, 3, 4, 6, 8, 12) if 2 * k <= n.shape[0]]
    out["ratio_median_by_rounds"] = {k: agreement(STATS["ratio_median"](n[:k], r[:k]),
                                                  STATS["ratio_median"](n[k:2 * k], r[k:2 * k]))["within_5pct"]
                                     for k in ks}
    out["raw_median_by_rounds"] = {k: agreement(STATS["raw_median"](n[:k], r[:k]),
                                                STATS["raw_median"](n[k:2 * k], r[k:2 * k]))["within_5pct"]
                                   for k in ks}
    return out


def load(path: str) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nets", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--raw", default="/tmp/latency_noise.npz", help="where the raw timings go (or come from)")
    ap.add_argument("--analyze", default=None, help="analyze this raw file instead of measuring")
    ap.add_argument("--compare", default=None, help="a second raw file of the same nets, taken later")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.analyze:
        raw = load(args.analyze)
    else:
        t0 = time.time()
        raw = record(args.nets, args.rounds, args.runs, args.warmup, args.seed, args.threads)
        raw["measure_s"] = np.array(time.time() - t0)
        np.savez_compressed(args.raw, **raw)
    other = load(args.compare) if args.compare else None
    res = analyze(raw, other)
    res["measure_s"] = float(raw.get("measure_s", np.nan))
    print(f"{res['nets']} nets x {res['rounds']} rounds x {res['runs']} runs, {res['measure_s']:.0f} s; reference "
          f"burst CV {100 * res['ref_burst_median_cv']:.1f}%, per-net burst CV raw "
          f"{100 * res['raw_burst_cv_median']:.1f}% / ratio {100 * res['ratio_burst_cv_median']:.1f}%")
    for name in STATS:
        h = res["halves"][name]
        line = f"  {name:24s} halves: {100 * h['within_5pct']:5.1f}% within ±5%, |Δ| {h['median_abs_pct']:.2f}%, " \
               f"τ {h['kendall_tau']:.3f}"
        if name in res["vs_other"]:
            o = res["vs_other"][name]
            line += (f" | vs other: {100 * o['within_5pct']:5.1f}%, |Δ| {o['median_abs_pct']:.2f}%, "
                     f"τ {o['kendall_tau']:.3f}")
        print(line)
    print("  ratio_median within ±5% by rounds per half:", res["ratio_median_by_rounds"])
    print("  raw_median   within ±5% by rounds per half:", res["raw_median_by_rounds"])
    path = write("latency_noise", res, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
