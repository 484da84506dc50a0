"""NetAdapt against uniform width scaling and the search, at equal measured latency, on Fashion-MNIST.

Yang et al. (2018) claim that layer-wise pruning guided by measured latency keeps more accuracy than thinning
every layer alike; MobileNetV3 ran NetAdapt after its search. This benchmark asks it of our NetAdapt:

1. Start: MobileNetV3-Small (α 1.0, 32 px, 10 classes) trained START_STEPS steps on fashion's training split
   *minus the holdout* that NetAdapt ranks its proposals on (HOLDOUT of it, split before the start is trained,
   so no proposal is scored on images the start saw). Latency: this machine's 224 px table of the small space,
   the network deployed as the table predicts it (224 px, the table's class count).
2. NetAdapt to TARGETS (80% and 60% of the start's predicted latency): δ = STEP_FRAC of the start's latency
   per iteration, SHORT_STEPS-step short-term fine-tunes, ΔAcc/|ΔLat| selection with the guard rails (collapsed
   proposals never selected, at most `max_cut` of a slot per step). The 60% run continues from the 80% run's
   result (its pruned weights, the same absolute δ): the iterations a single run to 60% would make on the way,
   paid once. No long-term fine-tune inside NetAdapt: it is done here, LONG_STEPS steps on the whole training
   split with `--seeds` seeds, scored on the test split. `--measured`: NetAdapt times the start and each
   selected network on this host and steers by that (`bneck netadapt --measured`), in its own dir and JSON.
3. Uniform width scaling at equal *measured* latency: the α whose predicted latency matches NetAdapt's result,
   then the α around it (steps of 0.02, distinct widths) timed interleaved with NetAdapt's result in 3 passes
   (onnxruntime, the table's protocol and anchors), and the one whose measured ratio to NetAdapt's result is
   closest to 1 (see `uniform_alpha`). Trained from scratch for
   START_STEPS + LONG_STEPS steps (the steps NetAdapt's result saw, short-term fine-tunes aside), `--seeds` seeds.
4. The search's answer at that latency: the best proxy-scored trial of `--search-run` (benchmarks/fashion_search.py's
   run) whose predicted latency is at most NetAdapt's result's, trained from scratch like the uniform baseline.
5. Everything timed once more, interleaved, in three passes 20 s apart; top-1 on fashion's 10,000 test images.

How the schedule was chosen: δ = 2% of the start (MobileNetV3 used 1%) reaches 80% in about 10 iterations and
60% in 10 more; with a 50% cap per slot and step, 4% left most iterations without a proposal meeting δ. An
iteration is informative when the spread of its proposals' held-out top-1 exceeds twice the holdout's binomial
standard error; the JSON reports both per iteration (`informativeness`). The first full run (40-step fine-tunes,
2,400 held-out images, a 500-step start) had 20% informative iterations on the way to 80%: hence the constants
below, sized so the benchmark stays near 45 minutes on 2 cores.
Usage: python benchmarks/netadapt.py [--seeds 3] [--quick] [--data builtin:digits] [--out FILE]
Resumable: NetAdapt runs resume from their dirs, trainings come from the eval cache, fine-tunes from done.json;
the default dir is named after the settings, so a run with other constants never reuses another's results.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write
from fashion_search import timed_ms as fashion_timed_ms

import latency as lat
import search_space as ss
from bneck_common.paths import RUNS_DIR, atomic_write, cache_dir

RESOLUTION = 32
LATENCY_RESOLUTION = 224
# Run 3 (2026-12-01, results/netadapt_run3_start500.json): START_STEPS 500, HOLDOUT 0.05 (2,400 images, binomial
# SE ~0.7 points), SHORT_STEPS 40: NetAdapt tied uniform (-0.09 points at both targets) and only 20% / 62% of
# its iterations were informative. Run 4 changes what that pointed at: a start trained as long as the
# proxy-fidelity truth (a converged start is what NetAdapt prunes in the paper), twice the holdout and 2.5x the
# short-term fine-tune (channels-last training pays for them).
HOLDOUT = 0.10  # of fashion's 48,000 training images: 4,800 rank the proposals (binomial SE ~0.5 points at 86%)
START_STEPS = 1200
LONG_STEPS = 250
SHORT_STEPS = 100
STEP_FRAC = 0.02
TARGETS = (0.8, 0.6)
LONG_LR = 0.05


# ---- trainings (in worker processes: top-level functions, everything in the arguments) ------------------------
def _init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def scratch_top1(arch_text: str, data_spec: str, data_seed: int, steps: int, seed: int, threads: int) -> float:
    """Test top-1 of `arch` trained from scratch with the default recipe for `steps` (eval cache)."""
    from evaluators import ProxyTrainer, Recipe, load_data

    data = load_data(data_spec, resolution=RESOLUTION, seed=data_seed, progress=False)
    trainer = ProxyTrainer(Recipe(steps=steps, threads=threads), cache_dir=cache_dir())
    res = trainer.evaluate(ss.Arch.parse(arch_text), data, seed=seed, return_model=True)
    return 0.0 if res.failed else float(trainer.score(res.model, data, "test")[0])  # type: ignore[arg-type]


def finetuned_top1(arch_text: str, weights: bytes, data_spec: str, data_seed: int, steps: int, seed: int,
                   threads: int) -> float:
    """Test top-1 of the pruned network after a `steps` fine-tune on the whole training split."""
    from evaluators import ProxyTrainer, Recipe, load_data, trained_arch
    from searchers.netadapt import load_model

    data = load_data(data_spec, resolution=RESOLUTION, seed=data_seed, progress=False)
    arch = trained_arch(ss.Arch.parse(arch_text), data)
    trainer = ProxyTrainer(Recipe(steps=steps, lr=LONG_LR, warmup_fraction=0.0, threads=threads))
    result, model = trainer.fine_tune(arch, load_model(arch, weights), data, seed=seed)
    return 0.0 if result.failed else float(trainer.score(model, data, "test")[0])


class Jobs:
    """Trainings on 2 processes x 1 thread, their results kept in `done.json` (atomic) so a rerun skips them."""

    def __init__(self, path: Path, workers: int) -> None:
        self.path = path
        self.done: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
        self.pool = cf.ProcessPoolExecutor(workers, mp.get_context("spawn"), initializer=_init, initargs=(1,))

    def run(self, jobs: dict[str, tuple[Any, ...]]) -> dict[str, float]:
        todo = {k: v for k, v in jobs.items() if k not in self.done}
        futures = {self.pool.submit(fn, *args): k for k, (fn, *args) in todo.items()}
        for f in cf.as_completed(futures):
            self.done[futures[f]] = f.result()
            atomic_write(self.path, json.dumps(self.done, indent=1))
            print(f"  {futures[f]}: test top-1 {100 * self.done[futures[f]]:.2f}%", flush=True)
        return {k: self.done[k] for k in jobs}

    def close(self) -> None:
        self.pool.shutdown()


# ---- latency ---------------------------------------------------------------------------------------------------
def load_table() -> tuple[lat.LatencyTable, Path]:
    big = ss.mobilenet_v3_small_space(resolution=LATENCY_RESOLUTION)
    path = lat.default_table_path(big, LATENCY_RESOLUTION)
    table = lat.LatencyTable.load(path) if path.is_file() else lat.build_table(big, LATENCY_RESOLUTION)[0]
    return table, path


def timed_ms(table: lat.LatencyTable, archs: list[ss.Arch], passes: int, rounds: int | None) -> np.ndarray:
    """(passes, n) latencies in ms: `fashion_search.timed_ms` (deployed as the table predicts them, interleaved
    with its reference and anchors, passes 20 s apart) as an array."""
    return np.array(fashion_timed_ms(table, archs, passes, rounds)).T


def alpha_at(model: lat.LatencyModel, target_ms: float, num_classes: int) -> float:
    """Largest α (to 0.005) whose V3-Small is predicted at or below `target_ms`."""
    lo, hi = 0.2, 1.0
    while hi - lo > 0.005:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if model.ms(ss.mobilenet_v3_small(mid, RESOLUTION, num_classes)) <= target_ms else (lo, mid)
    return round(lo, 3)


def uniform_alpha(table: lat.LatencyTable, model: lat.LatencyModel, netadapt: ss.Arch, rounds: int | None,
                  num_classes: int, passes: int = 3) -> dict[str, Any]:
    """α of uniform width scaling at NetAdapt's measured latency: around the predicted match, every α in steps of
    0.02 (±0.08) that gives distinct widths, timed interleaved with NetAdapt's result in `passes` passes, each as
    its ratio to NetAdapt's in the same pass (median over passes); the α whose ratio is closest to 1.

    V3-Small's widths move in steps of 8 channels, so latency is a staircase in α: a line through the ratios
    (run 2) picked α 0.733, which ran 4.5% faster than NetAdapt's result, and one pass instead of three (run 1)
    read NetAdapt's result 5% slow and picked a uniform net 20% slower."""
    a_pred = alpha_at(model, model.ms(netadapt), num_classes)
    by_arch: dict[str, tuple[float, ss.Arch]] = {}
    for d in np.arange(-0.08, 0.0801, 0.02):
        a = round(a_pred + float(d), 3)
        arch = ss.mobilenet_v3_small(a, RESOLUTION, num_classes)
        by_arch.setdefault(arch.arch_id, (a, arch))
    alphas = [a for a, _ in by_arch.values()]
    ms = timed_ms(table, [netadapt, *(arch for _, arch in by_arch.values())], passes, rounds)
    ratios = np.median(ms[:, 1:] / ms[:, :1], axis=0)
    best = int(np.argmin(np.abs(ratios - 1.0)))
    # the nearest width on the other side of NetAdapt's latency: with both trained, top-1 interpolates to ratio 1
    other = [i for i in range(len(alphas)) if (ratios[i] - 1.0) * (ratios[best] - 1.0) < 0]
    bracket = min(other, key=lambda i: abs(ratios[i] - 1.0)) if other else None
    return {"predicted_alpha": a_pred, "alphas_timed": alphas, "alphas_ratio_to_netadapt": ratios.tolist(),
            "passes_ms": ms.tolist(), "netadapt_ms_at_choice": float(np.median(ms[:, 0])), "alpha": alphas[best],
            "ratio": float(ratios[best]), "bracket_alpha": None if bracket is None else alphas[bracket],
            "bracket_ratio": None if bracket is None else float(ratios[bracket])}


# ---- NetAdapt ----------------------------------------------------------------------------------------------------
def informativeness(run_dir: Path, holdout_n: int) -> dict[str, Any]:
    """Per iteration: spread (max - min) of the non-failed proposals' held-out top-1 against the holdout's binomial
    standard error at their mean; an iteration is informative when the spread exceeds 2 SE.

    And what the short-term fine-tune changes: Kendall τ between the proposals' held-out top-1 right after the cut
    and after the fine-tune, and whether the best proposal is the same by both. A low τ says a run with (almost)
    no fine-tune steps, like the main job's, would rank its proposals differently."""
    import pandas as pd
    from scipy.stats import kendalltau

    props = pd.read_parquet(run_dir / "proposals.parquet")
    rows = []
    for i, g in props[~props["failed"]].groupby("iteration"):
        p = float(g["top1"].mean())
        se = float(np.sqrt(p * (1 - p) / holdout_n))
        spread = float(g["top1"].max() - g["top1"].min())
        tau = kendalltau(g["top1_before"], g["top1"]).statistic if len(g) > 2 else float("nan")
        rows.append({"iteration": int(i), "proposals": len(g), "spread": spread, "holdout_se": se,
                     "cut_top1_mean": float(g["top1_before"].mean()), "cut_top1_min": float(g["top1_before"].min()),
                     "tuned_top1_mean": p, "collapsed": int(g["collapsed"].sum()),
                     "cut_tuned_tau": float(tau) if np.isfinite(tau) else None,
                     "same_best_cut_and_tuned": bool(g["top1_before"].idxmax() == g["top1"].idxmax())})
    share = float(np.mean([r["spread"] > 2 * r["holdout_se"] for r in rows])) if rows else 0.0
    taus = [r["cut_tuned_tau"] for r in rows if r["cut_tuned_tau"] is not None]
    return {"iterations": rows, "informative_share": share,
            "cut_tuned_tau_median": float(np.median(taus)) if taus else None,
            "same_best_share": float(np.mean([r["same_best_cut_and_tuned"] for r in rows])) if rows else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="builtin:fashion")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--replicate", type=int, default=0,
                    help="an independent repeat: R seeds the train/val split, the holdout, the start's training and "
                         "NetAdapt (0: run 4's); R > 0 writes netadapt_replicateR.json")
    ap.add_argument("--targets", type=float, nargs="+", default=list(TARGETS))
    ap.add_argument("--short-steps", type=int, default=SHORT_STEPS)
    ap.add_argument("--step-frac", type=float, default=STEP_FRAC)
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (default: the protocol's)")
    ap.add_argument("--measured", action="store_true",
                    help="NetAdapt steered by timing each selected network on this host (`--measured` of bneck "
                         "netadapt); writes netadapt_measured*.json")
    ap.add_argument("--search-run", type=Path, default=RUNS_DIR / "bench-fashion-search")
    ap.add_argument("--dir", type=Path, default=None,
                    help="NetAdapt dirs and done.json (default: bneck_runs/bench-netadapt-<settings>)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, one target, 2 seeds")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    start_steps, long_steps = START_STEPS, LONG_STEPS
    if args.dir is None:
        args.dir = RUNS_DIR / (f"bench-netadapt-{args.data.split(':')[-1]}-s{start_steps}-h{HOLDOUT:g}"
                               f"-k{args.short_steps}-d{args.step_frac:g}-l{long_steps}"
                               + (f"-r{args.replicate}" if args.replicate else "") + ("-m" if args.measured else ""))
    if args.quick:
        start_steps, long_steps, args.short_steps, args.seeds, args.targets = 100, 30, 5, 2, [0.9]
        args.step_frac, args.rounds, args.dir = 0.05, 6, args.dir.with_name(args.dir.name + "-quick")
    t0 = time.perf_counter()

    from evaluators import ProxyTrainer, Recipe, holdout_split, load_data
    from runs.netadapt_run import Start, run_netadapt
    from searchers.netadapt import state_bytes

    args.dir.mkdir(parents=True, exist_ok=True)
    table, table_path = load_table()
    rep = args.replicate  # the data split, the holdout and the start's training seed (NetAdapt's settings.seed)
    data = load_data(args.data, resolution=RESOLUTION, seed=rep)
    held = holdout_split(data, HOLDOUT, seed=rep)
    model = lat.LatencyModel(table)
    start_arch = ss.mobilenet_v3_small(1.0, RESOLUTION, data.num_classes)
    trainer = ProxyTrainer(Recipe(steps=start_steps, threads=2), cache_dir=cache_dir())
    trained = trainer.evaluate(start_arch, held, seed=rep, return_model=True)
    top1_start = float(trainer.score(trained.model, data, "test")[0])  # type: ignore[arg-type]
    start_ms = model.ms(start_arch)
    print(f"start: V3-Small {start_steps} steps on {len(held.y_train)} images: test top-1 {100 * top1_start:.2f}%, "
          f"predicted {start_ms:.3f} ms", flush=True)
    start = Start(start_arch, state_bytes(trained.model), None, args.data, RESOLUTION, rep, "cpu", "benchmark start")

    jobs = Jobs(args.dir / "done.json", 2)
    per_target: dict[str, dict[str, Any]] = {}
    chain, chain_ms = start, start_ms
    try:
        for frac in sorted(args.targets, reverse=True):
            key = f"{round(100 * frac)}pct"
            run_dir = args.dir / key
            t_na = time.perf_counter()
            summary = run_netadapt(chain, table_path, run_dir,
                                   {"target_ms": frac * start_ms, "step_frac": args.step_frac * start_ms / chain_ms,
                                    "short_steps": args.short_steps, "holdout": HOLDOUT, "long_epochs": 0.0,
                                    "measured": args.measured},
                                   2, 1, "local", None, show_progress=False)
            final = ss.Arch.parse(summary["final_arch"])
            weights = (run_dir / "final" / "weights.pt").read_bytes()
            chain_from = chain.origin
            chain, chain_ms = Start(final, weights, None, args.data, RESOLUTION, rep, "cpu", f"{key} result"), \
                summary["final_predicted_ms"]
            print(f"{key}: NetAdapt {summary['iterations']} iterations, {summary['final_predicted_ms']:.3f} ms "
                  f"predicted (target {frac * start_ms:.3f}) in {time.perf_counter() - t_na:.0f} s", flush=True)
            choice = uniform_alpha(table, model, final, args.rounds, data.num_classes)
            uniform = ss.mobilenet_v3_small(choice["alpha"], RESOLUTION, data.num_classes)
            print(f"{key}: uniform α {choice['alpha']:.3f} (predicted match {choice['predicted_alpha']:.3f}; α "
                  f"{choice['alphas_timed']} measured at {[round(r, 3) for r in choice['alphas_ratio_to_netadapt']]}x "
                  f"NetAdapt's {choice['netadapt_ms_at_choice']:.3f} ms)", flush=True)
            searched = best_searched(args.search_run, summary["final_predicted_ms"])
            if searched is not None:
                searched["predicted_ms"] = model.ms(ss.Arch.parse(searched["arch"]))
            seeds = list(range(args.seeds))
            todo: dict[str, tuple[Any, ...]] = {}
            for s in seeds:
                todo[f"{key}/netadapt/{s}"] = (finetuned_top1, final.to_string(), weights, args.data, rep,
                                               long_steps, s, 1)
                todo[f"{key}/uniform-a{choice['alpha']:.3f}/{s}"] = (scratch_top1, uniform.to_string(), args.data,
                                                                     rep, start_steps + long_steps, s, 1)
                if choice["bracket_alpha"] is not None:
                    other = ss.mobilenet_v3_small(choice["bracket_alpha"], RESOLUTION, data.num_classes)
                    todo[f"{key}/bracket-a{choice['bracket_alpha']:.3f}/{s}"] = (
                        scratch_top1, other.to_string(), args.data, rep, start_steps + long_steps, s, 1)
                if searched is not None:
                    todo[f"{key}/searched/{s}"] = (scratch_top1, searched["arch"], args.data, rep,
                                                   start_steps + long_steps, s, 1)
            top1 = jobs.run(todo)
            per_target[key] = {"frac": frac, "summary": summary, "final": final, "uniform": uniform,
                               "chained_from": chain_from,
                               "choice": choice, "searched": searched, "top1": top1, "seeds": seeds,
                               "netadapt_s": summary["adapt_s"],
                               "informativeness": informativeness(run_dir, len(held.y_val))}
    finally:
        jobs.close()

    print("timing every network (3 passes, interleaved)", flush=True)
    names, nets = ["start"], [start_arch]
    for key, t in per_target.items():
        for what in ("netadapt", "uniform", "searched"):
            arch = t["final"] if what == "netadapt" else t["uniform"] if what == "uniform" else (
                ss.Arch.parse(t["searched"]["arch"]) if t["searched"] else None)
            if arch is not None:
                names.append(f"{key}/{what}")
                nets.append(arch)
    passes = timed_ms(table, nets, 3, args.rounds)
    measured = dict(zip(names, np.median(passes, axis=0).tolist(), strict=True))
    m_start = measured["start"]

    results = {key: target_summary(key, t, measured, start_ms, top1_start, model.ms(t["uniform"]))
               for key, t in per_target.items()}
    doc = {"data": args.data, "quick": args.quick, "replicate": rep, "measured": args.measured,
           "start_steps": start_steps,
           "long_steps": long_steps,
           "holdout": HOLDOUT, "holdout_images": len(held.y_val), "top1_start": top1_start,
           "start_predicted_ms": start_ms, "start_measured_ms": m_start, "measured_passes_ms": passes.tolist(),
           "measured_names": names, "targets": results, "wall_s": time.perf_counter() - t0}
    name = "netadapt" + ("_measured" if args.measured else "") + (f"_replicate{rep}" if rep else "") + (
        "_quick" if args.quick else "")
    path = write(name, doc, args.out)
    for key in results:  # the trajectories beside the JSON (runs.outputs drew them in each NetAdapt dir)
        png = args.dir / key / "trajectory.png"
        if png.is_file():
            shutil.copyfile(png, path.with_name(f"{path.stem}_{key}_trajectory.png"))
    for key, r in results.items():
        print(f"{key}: NetAdapt {r['iterations']} iterations, predicted {r['final_predicted_ms']:.3f} ms "
              f"({r['predicted_below_target_pct']:.2f}% below target), measured {r['final_measured_ms']:.3f} ms "
              f"({r['measured_vs_target_pct']:+.1f}% vs target); informative iterations "
              f"{100 * r['informativeness']['informative_share']:.0f}%")
        print(f"  top-1: start {100 * top1_start:.2f}%, NetAdapt {_pct(r['top1_netadapt'], r['top1_netadapt_std'])}, "
              f"uniform α {r['uniform_alpha']:.3f} {_pct(r['top1_uniform'], r['top1_uniform_std'])} at "
              f"{r['uniform_measured_ms']:.3f} ms measured; NetAdapt - uniform "
              f"{_num(r['netadapt_minus_uniform_points'])} points (pooled std {_num(_x100(r['pooled_std']))}); "
              f"interpolated to equal measured latency: uniform {_num(_x100(r['top1_uniform_at_equal_latency']))}%, "
              f"NetAdapt - uniform {_num(r['netadapt_minus_uniform_at_equal_latency_points'])} points")
        if r["searched"]:
            print(f"  searched trial {r['searched']['trial']}: {_pct(r['searched']['top1'], r['searched']['top1_std'])}"
                  f" at {_num(r['searched']['measured_ms'])} ms measured")
    print(f"wall {doc['wall_s']:.0f} s -> {path}")



def _stats(top1: dict[str, float], what: str) -> tuple[list[float], float | None, float | None]:
    """The test top-1 of one column (`netadapt`, `uniform`, `bracket`, `searched`) of a target's trainings (keys
    `<target>/<column>[-a<α>]/<seed>`): the values, their mean and their std (ddof 1; None below 2 seeds)."""
    vals = [v for k, v in top1.items() if k.split("/")[1].split("-")[0] == what]
    if not vals:
        return [], None, None
    return vals, float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None


def target_summary(key: str, t: dict[str, Any], measured: dict[str, float], start_ms: float, top1_start: float,
                   uniform_predicted_ms: float) -> dict[str, Any]:
    """One target's row of the JSON from what the run gathered (`t`: NetAdapt's summary, the uniform choice, the
    trainings' top-1) and the final interleaved timing (`measured`: median ms by name, `start` and `<key>/<what>`).
    NetAdapt beats uniform scaling when its mean top-1 exceeds uniform's by at least the pooled seed std."""
    s = t["summary"]
    m_start = measured["start"]
    na, na_mean, na_std = _stats(t["top1"], "netadapt")
    un, un_mean, un_std = _stats(t["top1"], "uniform")
    se, se_mean, se_std = _stats(t["top1"], "searched")
    br, br_mean, _ = _stats(t["top1"], "bracket")
    c = t["choice"]
    interp = None  # uniform scaling's top-1 at exactly NetAdapt's measured latency, between the two widths
    if br_mean is not None and un_mean is not None:
        w = (1.0 - c["ratio"]) / (c["bracket_ratio"] - c["ratio"])
        interp = float(un_mean + w * (br_mean - un_mean))
    stds = [x for x in (na_std, un_std) if x is not None]
    pooled = float(np.sqrt(np.mean(np.square(stds)))) if stds else None
    target_ms = t["frac"] * start_ms
    gain = None if na_mean is None or un_mean is None else na_mean - un_mean
    return {
        "target_ms": target_ms, "start_predicted_ms": start_ms, "final_predicted_ms": s["final_predicted_ms"],
        "predicted_below_target_pct": 100 * (1 - s["final_predicted_ms"] / target_ms),
        "start_measured_ms": m_start, "final_measured_ms": measured[f"{key}/netadapt"],
        "measured_target_ms": t["frac"] * m_start,
        "measured_vs_target_pct": 100 * (measured[f"{key}/netadapt"] / (t["frac"] * m_start) - 1),
        "latency_source": s.get("latency_source", "table"), "inloop_measured_ms": s.get("final_measured_ms"),
        "uniform_alpha": c["alpha"], "uniform_choice": c,
        "uniform_predicted_ms": uniform_predicted_ms, "uniform_measured_ms": measured[f"{key}/uniform"],
        "top1_start": top1_start, "top1_netadapt": na_mean, "top1_netadapt_std": na_std,
        "top1_netadapt_seeds": na, "top1_uniform": un_mean, "top1_uniform_std": un_std, "top1_uniform_seeds": un,
        "top1_uniform_bracket": br_mean, "top1_uniform_bracket_seeds": br,
        "top1_uniform_at_equal_latency": interp,
        "netadapt_minus_uniform_at_equal_latency_points": None if interp is None or na_mean is None
        else 100 * (na_mean - interp),
        "pooled_std": pooled, "netadapt_minus_uniform_points": None if gain is None else 100 * gain,
        "beats_uniform": bool(gain is not None and pooled is not None and gain >= pooled),
        "drop_from_start_points": None if na_mean is None else 100 * (top1_start - na_mean),
        "searched": None if t["searched"] is None else {
            **t["searched"], "measured_ms": measured.get(f"{key}/searched"), "top1": se_mean, "top1_std": se_std,
            "top1_seeds": se},
        "iterations": s["iterations"], "chained_from": t["chained_from"], "stopped": s["stopped"],
        "final_arch": s["final_arch"],
        "informativeness": t["informativeness"], "netadapt_s": t["netadapt_s"], "seeds": t["seeds"],
        "settings": s["settings"],
    }

def best_searched(run: Path, max_ms: float) -> dict[str, Any] | None:
    """The search run's best completed non-reference trial predicted at or below `max_ms` (None: no such run)."""
    import pandas as pd

    path = run / "trials.parquet"
    if not path.is_file():
        print(f"no search run at {run}: the searched column is left out", flush=True)
        return None
    d = pd.read_parquet(path)
    d = d[(d["state"] == "COMPLETE") & (~d["reference"]) & (d["latency_ms"] <= max_ms)]
    if d.empty:
        return None
    r = d.sort_values(["accuracy", "latency_ms"], ascending=[False, True]).iloc[0]
    return {"run": str(run), "trial": int(r["trial"]), "arch": str(r["arch"]), "proxy_top1": float(r["accuracy"])}


def _x100(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _pct(mean: float | None, std: float | None) -> str:
    return "n/a" if mean is None else f"{100 * mean:.2f}% ± {100 * (std or 0):.2f}"


if __name__ == "__main__":
    main()
