"""Search efficiency: every strategy against random search at a fixed budget of evaluations.

Space: mobilenet_v3_small_space as searched on builtin:fashion (32 px, 10 classes). Latency: a real table of
this machine (the cached 224 px / 1 thread table of the space, built first when missing), target = the predicted
latency of MobileNetV3-Small, MobileNetV3's small-model reward (alpha = beta = -0.15; `--reward` to change).
Accuracy: a surrogate of the search's default proxy, a Gaussian process fitted on the measured rows of
benchmarks/data/fashion_search_rows.json (benchmarks/fashion_rows.py: >= 200 archs spread evenly over the space's
whole MAdds range, one default proxy training each), plus a deterministic per-arch noise of the size the GP
attributes to measurement noise. Cheap, but not a formula the searchers know; its leave-one-out Spearman on the
rows is reported, and so is the predicted-latency range the rows cover against the space's.

History: the first version fitted 90 random digits rows covering 0.63-2.7x the seed's MAdds (the space reaches
0.31x) and saturating at 97-98% top-1 (leave-one-out Spearman 0.28), so a strategy could win on the fit's guesses.

Reported per strategy (median and quartiles over seeds): best reward after the budget, evaluations needed to
reach random search's final best reward on the same seed (null if never), hypervolume of the (accuracy,
latency) points found; tpe and nsga2 also run as multi-objective (Pareto) searches; sampler overhead per trial
at `--overhead-trials` trials. Then the headline on real trainings: each strategy's final pick (its best-reward
arch on the first search seed) and MobileNetV3-Small are trained with the default proxy at `--confirm-seeds`
seeds on fashion and scored on the validation split, as a search would see them: real top-1 and real reward,
mean and std. Writes JSON and a PNG of the curves.
Usage: python benchmarks/search_efficiency.py [--budget N] [--seeds K] [--seed-offset S] [--confirm-seeds 2]
       [--rows FILE] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write
from fashion_rows import ROWS_FILE, madds_range_archs

import search_space as ss
import searchers as se
from latency import LatencyModel, LatencyTable, build_table, default_table_path

REWARD_STRATEGIES = ["random", "evolution", "rl", "tpe", "nsga2", "predictor"]
PARETO_STRATEGIES = ["tpe", "nsga2"]

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def stage_features(space: ss.SearchSpace, encoded: np.ndarray) -> np.ndarray:
    """Per stage: depth, width ratio, kernel, SE, h-swish, mean expansion ratio; then log params, log MAdds."""
    enc = np.asarray(encoded, dtype=np.int64).reshape(-1, space.num_decisions)
    cols = []
    ratios = np.asarray(space.expand_ratios)
    for st, at in zip(space.stages, space.layout.stages, strict=True):
        cols += [np.asarray(st.depths)[enc[:, at.depth]], np.asarray(st.width_ratios)[enc[:, at.width]],
                 np.asarray(st.kernels)[enc[:, at.kernel]], np.asarray(st.se, dtype=float)[enc[:, at.se]],
                 (np.asarray(st.acts) == "hswish")[enc[:, at.act]].astype(float)]
        slots = enc[:, at.expands]
        used = slots >= 0
        cols.append(np.where(used, ratios[np.maximum(slots, 0)], 0).sum(1) / used.sum(1))
    p, m = ss.count_encoded(space, enc)
    cols += [np.log(p.astype(float)), np.log(m.astype(float))]
    return np.stack(cols, axis=1).astype(float)


class Surrogate:
    """Accuracy of an architecture: GP posterior mean on measured rows + fixed per-arch noise."""

    def __init__(self, space: ss.SearchSpace, rows: Sequence[dict[str, Any]]) -> None:
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        self.space = space
        ok = [r for r in rows if not r.get("failed")]
        enc = np.stack([space.encode(ss.Arch.parse(r["arch"])) for r in ok])
        x = stage_features(space, enc)
        self.mu, self.sd = x.mean(0), x.std(0) + 1e-9
        y = np.array([r["top1"] for r in ok])
        kernel = ConstantKernel(1.0) * RBF(length_scale=3.0, length_scale_bounds=(0.3, 100.0)) + WhiteKernel(0.5)
        self.gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0, n_restarts_optimizer=3)
        self.gp.fit((x - self.mu) / self.sd, y)
        self.noise_sd = float(np.sqrt(self.gp.kernel_.k2.noise_level) * np.std(y))
        self.n_rows, self.y_range = len(y), (float(y.min()), float(y.max()))
        # leave-one-out: does the surrogate rank unseen measured archs? (kernel hyperparameters kept)
        from sklearn.base import clone

        preds = []
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            gp = clone(self.gp).set_params(kernel=self.gp.kernel_, optimizer=None).fit(
                (x[keep] - self.mu) / self.sd, y[keep])
            preds.append(gp.predict(((x[i] - self.mu) / self.sd)[None])[0])
        self.loo_spearman = float(spearmanr(preds, y).statistic)

    def __call__(self, arch: ss.Arch) -> float:
        x = (stage_features(self.space, self.space.encode(arch)[None]) - self.mu) / self.sd
        digest = hashlib.sha256(arch.arch_id.encode()).digest()
        z = np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal()
        return float(np.clip(self.gp.predict(x)[0] + self.noise_sd * z, 0.0, 1.0))


class TimedSampler(optuna.samplers.BaseSampler):
    """Wraps a sampler and adds up the seconds it spends per trial."""

    def __init__(self, inner: optuna.samplers.BaseSampler) -> None:
        self.inner = inner
        self.seconds: dict[int, float] = defaultdict(float)

    def _timed(self, number: int, fn: Any, *args: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[number] += time.perf_counter() - t

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self._timed(trial.number, self.inner.infer_relative_search_space, study, trial)

    def sample_relative(self, study: Any, trial: Any, space: Any) -> Any:
        return self._timed(trial.number, self.inner.sample_relative, study, trial, space)

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        return self._timed(trial.number, self.inner.sample_independent, study, trial, name, dist)

    def before_trial(self, study: Any, trial: Any) -> None:
        self._timed(trial.number, self.inner.before_trial, study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._timed(trial.number, self.inner.after_trial, study, trial, state, values)


def hypervolume(acc: np.ndarray, lat: np.ndarray, acc_ref: float, lat_ref: float) -> float:
    """Area (accuracy above acc_ref x latency below lat_ref) dominated by the points, as a fraction of the box."""
    keep = (acc > acc_ref) & (lat < lat_ref)
    pts = sorted(zip(lat[keep], acc[keep], strict=True))
    area, best = 0.0, acc_ref
    xs = [p[0] for p in pts] + [lat_ref]
    for i, (_, a) in enumerate(pts):
        best = max(best, a)
        area += (xs[i + 1] - xs[i]) * (best - acc_ref)
    return area / ((1.0 - acc_ref) * lat_ref)


def run_one(name: str, mode: str, seed: int, budget: int, space: ss.SearchSpace, model: LatencyModel,
            reward: se.Reward, surrogate: Surrogate) -> dict[str, Any]:
    max_lat = 1.5 * reward.target_ms if mode == "pareto" else None
    obj = se.SearchObjective(space, model, surrogate, reward, mode=mode, max_latency_ms=max_lat)
    sampler = TimedSampler(se.make_sampler(name, space, seed, latency=model, reward=reward, mode=mode))
    study = se.create_study(obj, sampler)
    t0 = time.perf_counter()
    se.optimize_study(study, obj, budget)
    wall = time.perf_counter() - t0
    trials = sorted(study.trials, key=lambda t: t.number)
    acc = np.array([t.user_attrs["accuracy"] for t in trials])
    lat = np.array([t.user_attrs["latency_ms"] for t in trials])
    rewards = reward.batch(acc, lat)
    return {"rewards": rewards, "acc": acc, "lat": lat, "wall_s": wall,
            "archs": [t.user_attrs["arch"] for t in trials],
            "sampler_ms": [1e3 * sampler.seconds[t.number] for t in trials]}


def overhead(name: str, trials: int, space: ss.SearchSpace, model: LatencyModel, reward: se.Reward,
             surrogate: Surrogate) -> dict[str, float]:
    """Mean sampler time per trial over the last 5% of a `trials`-trial in-memory study (a mean, so the
    predictor's once-per-batch refit is amortized)."""
    obj = se.SearchObjective(space, model, surrogate, reward)
    sampler = TimedSampler(se.make_sampler(name, space, 0, latency=model, reward=reward))
    t0 = time.perf_counter()
    se.optimize_study(se.create_study(obj, sampler), obj, trials)
    tail = [sampler.seconds[n] for n in range(int(trials * 0.95), trials)]
    return {"trials": trials, "ms_per_trial_at_end": 1e3 * float(np.mean(tail)),
            "ms_per_trial_mean": 1e3 * float(np.mean(list(sampler.seconds.values()))),
            "wall_s": time.perf_counter() - t0}


def load_table(table: str | None, space224: ss.SearchSpace) -> tuple[LatencyTable, float]:
    if table:
        return LatencyTable.load(table), 0.0
    path = default_table_path(space224, 224, 1)
    if path.exists():
        return LatencyTable.load(path), 0.0
    print(f"no latency table at {path}: building it (a few minutes, once per machine)", flush=True)
    t0 = time.perf_counter()
    tab, _ = build_table(space224, 224, threads=1)
    return tab, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed-offset", type=int, default=0)
    ap.add_argument("--overhead-trials", type=int, default=1000, help="0 skips the overhead measurement")
    ap.add_argument("--table", default=None, help="latency table (default: this machine's cached 224 px table)")
    ap.add_argument("--reward", default="mobilenet_v3", choices=sorted(se.reward.REWARD_PRESETS),
                    help="mobilenet_v3 (soft, -0.15; default), mnasnet (soft, -0.07) or hard (0, -1)")
    ap.add_argument("--rows", default=str(ROWS_FILE), help="measured rows the surrogate is fitted on")
    ap.add_argument("--confirm-seeds", type=int, default=2,
                    help="real trainings of each strategy's pick and of V3-Small (0: surrogate only)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the confirming trainings")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.budget < 10 or args.seeds < 1 or args.confirm_seeds < 0:
        ap.error("--budget must be >= 10, --seeds >= 1 and --confirm-seeds >= 0")
    rows_path = Path(args.rows)
    if not rows_path.is_file():
        ap.error(f"--rows {rows_path}: no such file (benchmarks/fashion_rows.py measures it)")
    t_start = time.perf_counter()
    doc = json.loads(rows_path.read_text())
    space = ss.mobilenet_v3_small_space(num_classes=10, resolution=doc["resolution"])
    table, build_s = load_table(args.table, ss.mobilenet_v3_small_space())
    model = LatencyModel(table, space)
    target = model.ms(space.preset)
    reward = se.Reward.preset(args.reward, target)
    in_space = [r for r in doc["rows"] if space.contains(ss.Arch.parse(r["arch"]))]  # V3-Small at α != 1 is not
    surrogate = Surrogate(space, in_space)
    coverage = rows_coverage(space, model, in_space, target)
    print(f"target {target:.3f} ms (MobileNetV3-Small, predicted); surrogate on {surrogate.n_rows} measured rows "
          f"({doc['data']}), leave-one-out Spearman {surrogate.loo_spearman:.2f}, noise sd "
          f"{100 * surrogate.noise_sd:.2f} points; rows cover {coverage['rows_ms'][0] / target:.2f}-"
          f"{coverage['rows_ms'][1] / target:.2f}x the target, the space {coverage['space_ms'][0] / target:.2f}-"
          f"{coverage['space_ms'][1] / target:.2f}x")
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    runs: dict[str, list[dict[str, Any]]] = {}
    labels = [(n, "reward") for n in REWARD_STRATEGIES] + [(n, "pareto") for n in PARETO_STRATEGIES]
    for name, mode in labels:
        label = name if mode == "reward" else f"{name}_pareto"
        runs[label] = []
        for seed in seeds:
            runs[label].append(run_one(name, mode, seed, args.budget, space, model, reward, surrogate))
        best = [r["rewards"].max() for r in runs[label]]
        print(f"{label:14s} best reward median {np.median(best):.4f} "
              f"({np.mean([r['wall_s'] for r in runs[label]]):.1f} s/search)", flush=True)
    all_acc = np.concatenate([r["acc"] for rs in runs.values() for r in rs])
    acc_ref, lat_ref = float(np.percentile(all_acc, 5)), 2.0 * target
    result: dict[str, Any] = {"budget": args.budget, "seeds": seeds, "target_ms": target, "reward_preset": args.reward,
                              "reward": reward.to_dict(), "table_build_s": build_s,
                              "surrogate": {"rows_file": rows_path.name, "data": doc["data"],
                                            "rows": surrogate.n_rows, "loo_spearman": surrogate.loo_spearman,
                                            "noise_sd": surrogate.noise_sd, "top1_range": surrogate.y_range,
                                            **coverage},
                              "hypervolume_box": {"accuracy_from": acc_ref, "latency_ms_to": lat_ref},
                              "strategies": {}}
    random_best = [r["rewards"].max() for r in runs["random"]]
    for label, rs in runs.items():
        best = np.array([r["rewards"].max() for r in rs])
        to_random = []
        for r, target_best in zip(rs, random_best, strict=True):
            hit = np.flatnonzero(np.maximum.accumulate(r["rewards"]) >= target_best - 1e-12)
            to_random.append(int(hit[0]) + 1 if len(hit) else None)
        ranked = sorted(v if v is not None else np.inf for v in to_random)
        med = float(np.median(ranked))
        hv = [hypervolume(r["acc"], r["lat"], acc_ref, lat_ref) for r in rs]
        result["strategies"][label] = {
            "best_reward_median": float(np.median(best)), "best_reward_q25": float(np.percentile(best, 25)),
            "best_reward_q75": float(np.percentile(best, 75)), "best_reward_per_seed": best.tolist(),
            "evals_to_random_best_median": med if np.isfinite(med) else None,
            "evals_to_random_best_per_seed": to_random,
            "hypervolume_median": float(np.median(hv)), "hypervolume_per_seed": hv,
            "sampler_ms_per_trial_median": float(np.median(np.concatenate([r["sampler_ms"] for r in rs]))),
            "wall_s_per_search": float(np.mean([r["wall_s"] for r in rs])),
            "curve_median": np.median([np.maximum.accumulate(r["rewards"]) for r in rs], axis=0).tolist()}
    if args.overhead_trials:
        for name in REWARD_STRATEGIES:
            o = overhead(name, args.overhead_trials, space, model, reward, surrogate)
            result["strategies"][name]["overhead"] = o
            print(f"overhead {name:10s} {o['ms_per_trial_at_end']:.1f} ms/trial at {o['trials']} trials", flush=True)
    result["fast_strategies"] = [k for k, v in result["strategies"].items() if k != "random"
                                 and v["evals_to_random_best_median"] is not None
                                 and v["evals_to_random_best_median"] <= args.budget / 3]
    if args.confirm_seeds:
        result["confirmed"] = confirm(runs, space, model, reward, surrogate, doc, args.confirm_seeds, args.threads)
        result["real_best"] = max(result["confirmed"], key=lambda k: result["confirmed"][k]["reward_mean"])
    result["wall_s"] = time.perf_counter() - t_start
    plot = plot_curves(runs, result, args.out)
    result["plot"] = plot.name  # written beside the JSON
    path = write("search_efficiency", result, args.out)
    print(f"\n{'strategy':14s} {'best reward (q25-q75)':>26s} {'evals to random best':>21s} {'HV':>6s}")
    for label, v in result["strategies"].items():
        e = v["evals_to_random_best_median"]
        print(f"{label:14s} {v['best_reward_median']:.4f} ({v['best_reward_q25']:.4f}-{v['best_reward_q75']:.4f})"
              f" {('never' if e is None else f'{e:.0f}'):>21s} {v['hypervolume_median']:6.3f}")
    print(f"reach random's final best in <= budget/3 = {args.budget / 3:.0f} evals: "
          f"{', '.join(result['fast_strategies']) or 'none'}")
    if args.confirm_seeds:
        print(f"\nreal trainings ({args.confirm_seeds} seeds, default proxy, fashion validation split):")
        print(f"{'pick of':18s} {'surrogate top-1':>15s} {'real top-1 (std)':>17s} {'pred. ms':>8s} "
              f"{'real reward':>11s}")
        for label, c in result["confirmed"].items():
            print(f"{label:18s} {100 * c['surrogate_top1']:14.2f}% {100 * c['top1_mean']:9.2f}% "
                  f"({100 * c['top1_std']:.2f}) {c['latency_ms']:8.3f} {c['reward_mean']:11.4f}")
        print(f"best real reward: {result['real_best']}")
    print(f"wrote {path} and {plot} ({result['wall_s']:.0f} s)")


def rows_coverage(space: ss.SearchSpace, model: LatencyModel, rows: Sequence[dict[str, Any]],
                  target: float) -> dict[str, Any]:
    """Predicted latency (ms) the rows span, against the space's cheapest and dearest vectors."""
    rows_ms = [model.ms(ss.Arch.parse(r["arch"])) for r in rows]
    space_ms = [model.ms(a) for a in madds_range_archs(space)]
    return {"rows_ms": [min(rows_ms), max(rows_ms)], "space_ms": space_ms, "target_ms": target,
            "rows_below_target": int(sum(m <= target for m in rows_ms))}


def confirm(runs: dict[str, list[dict[str, Any]]], space: ss.SearchSpace, model: LatencyModel, reward: se.Reward,
            surrogate: Surrogate, doc: dict[str, Any], n_seeds: int, threads: int) -> dict[str, Any]:
    """Each strategy's final pick on its first search seed, and V3-Small, trained for real (default proxy)."""
    from bneck_common.paths import cache_dir
    from evaluators import ProxyTrainer, Recipe, load_data

    data = load_data(doc["data"], resolution=doc["resolution"], seed=0)
    trainer = ProxyTrainer(Recipe(threads=threads), cache_dir=cache_dir())
    picks = {"mobilenet_v3_small": space.preset.to_string()}
    for label, rs in runs.items():
        picks[label] = rs[0]["archs"][int(np.argmax(rs[0]["rewards"]))]
    out: dict[str, Any] = {}
    for label, text in picks.items():
        arch = ss.Arch.parse(text)
        top1 = [trainer.evaluate(arch, data, seed=s).top1 for s in range(n_seeds)]
        lat = model.ms(arch)
        rewards = [float(reward.batch(np.array([a]), np.array([lat]))[0]) for a in top1]
        out[label] = {"arch": text, "arch_id": arch.arch_id, "latency_ms": lat, "surrogate_top1": surrogate(arch),
                      "top1_per_seed": top1, "top1_mean": float(np.mean(top1)), "top1_std": float(np.std(top1)),
                      "reward_mean": float(np.mean(rewards))}
        print(f"  confirmed {label:14s} top-1 {100 * np.mean(top1):.2f}% ({lat:.3f} ms)", flush=True)
    return out


def plot_curves(runs: dict[str, list[dict[str, Any]]], result: dict[str, Any], out: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    for label, rs in runs.items():
        curves = np.array([np.maximum.accumulate(r["rewards"]) for r in rs])
        x = np.arange(1, curves.shape[1] + 1)
        line, = ax.plot(x, np.median(curves, 0), label=label, ls="--" if "pareto" in label else "-")
        ax.fill_between(x, np.percentile(curves, 25, 0), np.percentile(curves, 75, 0), alpha=0.15,
                        color=line.get_color())
    ax.set(xlabel="evaluations", ylabel="best reward so far (median, IQR)", title="search efficiency")
    ax.set_ylim(np.percentile([r["rewards"].max() for rs in runs.values() for r in rs], 0) - 0.02, None)
    ax.legend(fontsize=8)
    for label in ("random", "evolution", "predictor", "tpe_pareto", "nsga2_pareto"):
        r = runs[label][0]
        trained = r["acc"] > 0  # over-the-ceiling points of the Pareto runs were not trained
        bx.scatter(r["lat"][trained], 100 * r["acc"][trained], s=8, alpha=0.5, label=label)
    bx.axvline(result["target_ms"], color="k", lw=0.8, ls=":", label="target (V3-Small)")
    bx.set(xlabel="predicted latency (ms)", ylabel="surrogate top-1 (%)", title="points found (first seed)")
    bx.legend(fontsize=8)
    path = (Path(out).with_suffix(".png") if out else RESULTS / "search_efficiency.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    main()
