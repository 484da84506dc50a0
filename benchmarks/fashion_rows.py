"""Measured (arch, proxy top-1) rows across the small space's whole cost range, on Fashion-MNIST.

What benchmarks/search_efficiency.py fits its accuracy surrogate on. The earlier rows (90 random archs, digits)
covered 0.63-2.7x the seed's MAdds while the space reaches 0.31x, so a strategy could win by exploiting the fit's
guesses where no row was. These rows are drawn to cover the range evenly:

  - the space's MAdds range (its smallest and its largest decision vectors, 32 px) is cut into BINS equal bins of
    log MAdds; MAdds, not this machine's latency table, so that the same seed gives the same rows on any machine
    (the search benchmark reports which predicted-latency range they cover);
  - candidates come from a size-tilted sampler: per candidate a size t ~ U(0, 1); every ordered decision (depth,
    width, kernel, expansion) draws its index from a discretized normal around t·(n-1) (sd TILT_SD·(n-1)); SE
    and activation stay uniform. Uniform sampling alone almost never reaches the ends of the range;
  - a bin takes candidates until it holds ceil(archs / BINS) rows; the proxy-fidelity rows
    (benchmarks/data/fashion_small_space_rows.json, the same proxy budget and seed; the 31 in the space)
    count where they fall, and their measurements are reused, not repeated.

Each new row is one search proxy (the default recipe at ROWS_STEPS = 300 optimizer steps, the search default when
the rows were measured; seed 0) on builtin:fashion at 32 px, scored on the validation split, what a search trial
saw then. Rows land in
benchmarks/data/fashion_search_rows.json one by one (atomically): an interrupted run resumes where it stopped.
10-60 s per row on 2 cores (the cost grows along the bins), so 200 rows are about 2 hours alone.

Usage: python benchmarks/fashion_rows.py [--archs 200] [--seed 0] [--plan]   (--plan: list the bins, train nothing)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_fidelity import ROWS_FILE as FIDELITY_ROWS

import search_space as ss
from bneck_common.paths import atomic_write, cache_dir
from evaluators import ProxyTrainer, Recipe, load_data
from search_space.encoding import ABSENT

DATA = "builtin:fashion"
RESOLUTION = 32
BINS = 10
TILT_SD = 0.2  # of the decision's index range: t = 0 gives nearly-smallest archs, t = 1 nearly-largest
ORDERED = ("depth", "width", "kernel", "expand")  # decisions whose later choices cost more
ROWS_FILE = Path(__file__).resolve().parent / "data" / "fashion_search_rows.json"
ROWS_STEPS = 300  # the rows' proxy budget: the search default (DEFAULT_STEPS) when they were measured


def small_space() -> ss.SearchSpace:
    return ss.mobilenet_v3_small_space(num_classes=10, resolution=RESOLUTION)


def log_madds(space: ss.SearchSpace, encoded: np.ndarray) -> np.ndarray:
    return np.log(ss.count_encoded(space, np.atleast_2d(encoded))[1].astype(float))


def madds_range_archs(space: ss.SearchSpace) -> tuple[ss.Arch, ss.Arch]:
    """The space's cheapest and dearest archs: every decision at its first (last) choice, i.e. ordered decisions
    smallest (largest), SE off (on), ReLU (h-swish)."""
    first = space.decode(np.zeros(space.num_decisions, dtype=np.int64))
    last = space.decode(np.array([len(d.choices) - 1 for d in space.decisions], dtype=np.int64))
    return first, last


def madds_range(space: ss.SearchSpace) -> tuple[float, float]:
    """log MAdds of `madds_range_archs`."""
    lo, hi = log_madds(space, np.stack([space.encode(a) for a in madds_range_archs(space)]))
    return float(lo), float(hi)


def tilted_sample(space: ss.SearchSpace, rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` decision vectors whose sizes spread over the space (see the module docstring)."""
    t = rng.random(n)
    vecs = space.sample_encoded(rng, n)  # uniform; the ordered decisions are redrawn around t below
    for k, d in enumerate(space.decisions):
        if d.name.rsplit(".", 1)[1] not in ORDERED or len(d.choices) < 2:
            continue
        top = len(d.choices) - 1
        vecs[:, k] = np.clip(np.rint(t * top + rng.standard_normal(n) * TILT_SD * top), 0, top)
    for st, at in zip(space.stages, space.layout.stages, strict=True):  # blank the slots of absent layers
        depth = np.asarray(st.depths)[vecs[:, at.depth]]
        vecs[:, at.expands][~at.used_mask(depth)] = ABSENT
    return vecs


def plan(space: ss.SearchSpace, n_archs: int, seed: int,
         existing: list[tuple[str, int]]) -> tuple[list[ss.Arch], dict[str, Any]]:
    """The archs to add so that every log-MAdds bin holds ceil(n_archs / BINS) rows; `existing` rows
    (arch id, MAdds) count where they fall."""
    lo, hi = madds_range(space)
    edges = np.linspace(lo, hi, BINS + 1)
    per_bin = math.ceil(n_archs / BINS)

    def bin_of(lm: float) -> int:
        return int(np.clip(np.searchsorted(edges, lm, side="right") - 1, 0, BINS - 1))

    counts = [0] * BINS
    seen = set()
    for arch_id, madds in existing:
        counts[bin_of(math.log(madds))] += 1
        seen.add(arch_id)
    rng = np.random.default_rng(seed)
    added: list[ss.Arch] = []
    for _ in range(200):  # rounds of 512 candidates; the end bins are the slow ones to fill
        if all(c >= per_bin for c in counts):
            break
        vecs = tilted_sample(space, rng, 512)
        for v, lm in zip(vecs, log_madds(space, vecs), strict=True):
            b = bin_of(float(lm))
            arch = space.decode(v)
            if counts[b] < per_bin and arch.arch_id not in seen:
                counts[b] += 1
                seen.add(arch.arch_id)
                added.append(arch)
    info = {"bins": BINS, "per_bin": per_bin, "log_madds_edges": edges.tolist(),
            "madds_range": [math.exp(lo), math.exp(hi)], "bin_counts": counts}
    return added, info


def fidelity_rows(space: ss.SearchSpace) -> list[dict[str, Any]]:
    """The proxy-fidelity rows' default-proxy, seed-0 measurements of archs in `space`, as rows of this file
    (V3-Small at α != 1 is not in the space: the surrogate could not use it)."""
    if not FIDELITY_ROWS.is_file():
        return []
    doc = json.loads(FIDELITY_ROWS.read_text())
    out = []
    for r in doc["rows"]:
        m = r.get("proxy", {}).get(str(ROWS_STEPS), {}).get("0")
        if m and space.contains(ss.Arch.parse(r["arch"])):
            out.append({"arch": r["arch"], "arch_id": r["arch_id"], "top1": m["top1"], "loss": m["loss"],
                        "failed": m["failed"], "train_s": m["train_s"], "params": r["params"], "madds": r["madds"],
                        "source": "proxy_fidelity"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", type=int, default=200, help="rows wanted in all (proxy-fidelity rows included)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default=str(ROWS_FILE))
    ap.add_argument("--plan", action="store_true", help="print the bins and the archs to train; train nothing")
    args = ap.parse_args()
    if args.archs < BINS:
        ap.error(f"--archs must be >= {BINS} (one per bin)")
    space = small_space()
    rows_path = Path(args.rows)
    doc = (json.loads(rows_path.read_text()) if rows_path.is_file() else
           {"space": space.name, "data": DATA, "resolution": RESOLUTION, "steps": ROWS_STEPS, "seed": 0,
            "rows": []})
    if (doc["data"], doc["resolution"], doc["steps"]) != (DATA, RESOLUTION, ROWS_STEPS):
        raise SystemExit(f"{rows_path} holds rows of {doc['data']} at {doc['resolution']} px with {doc['steps']} "
                         f"steps, not {DATA} at {RESOLUTION} px with {ROWS_STEPS}: pass --rows to start afresh")
    have = {r["arch_id"] for r in doc["rows"]}
    doc["rows"] += [r for r in fidelity_rows(space) if r["arch_id"] not in have]
    existing = [(r["arch_id"], r["madds"]) for r in doc["rows"]]
    todo, info = plan(space, args.archs, args.seed, existing)
    doc["plan"] = {**info, "seed": args.seed, "tilt_sd": TILT_SD, "archs": args.archs}
    print(f"{len(doc['rows'])} rows already measured; {len(todo)} to train; bins of log MAdds "
          f"{info['madds_range'][0] / 1e6:.2f}-{info['madds_range'][1] / 1e6:.2f} M: {info['bin_counts']} "
          f"(target {info['per_bin']} each)", flush=True)
    if args.plan:
        return

    def save() -> None:
        rows_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(rows_path, json.dumps(doc, indent=1) + "\n")

    data = load_data(DATA, resolution=RESOLUTION, seed=0)
    trainer = ProxyTrainer(Recipe(steps=ROWS_STEPS, threads=args.threads), cache_dir=cache_dir())
    t0 = time.perf_counter()
    for i, arch in enumerate(todo):
        res = trainer.evaluate(arch, data, seed=0)
        doc["rows"].append({"arch": arch.to_string(), "arch_id": arch.arch_id, "top1": res.top1, "loss": res.loss,
                            "failed": res.failed, "train_s": res.train_s, "params": res.params,
                            "madds": res.madds, "source": "stratified"})
        save()
        print(f"[{i + 1}/{len(todo)}] {arch.arch_id} {res.madds / 1e6:.2f} M MAdds: val top-1 "
              f"{100 * res.top1:.2f}% ({res.train_s:.0f} s; {time.perf_counter() - t0:.0f} s so far)", flush=True)
    save()  # also when nothing was left to train: the reused rows and the plan
    print(f"{len(doc['rows'])} rows in {rows_path}")


if __name__ == "__main__":
    main()
