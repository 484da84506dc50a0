"""Does a weight-sharing supernet rank architectures like standalone training, how fast does it score them, and does
a search over it find a better net than the standalone search at equal wall time? Fashion-MNIST, the small space.

Stages (each resumable: rerun the same command; `--stage` runs one):

1. train: a supernet of mobilenet_v3_small_space on builtin:fashion at 32 px (48,000 training images, split seed 0)
   per rule in `--rules` (sandwich with in-place distillation, SPOS), the budgets chosen for about equal CPU time
   (`RULE_STEPS`); `bneck supernet train`'s code path, checkpointed in WORK/train-RULE.
2. rank: every architecture of benchmarks/data/fashion_small_space_rows.json (benchmarks/proxy_fidelity.py: 30
   sampled + V3-Small at 4 widths, each trained LONG_STEPS standalone and scored on fashion's test split) scored
   on each supernet (BN recalibrated on 256 training images, top-1 on the validation split, which the supernet
   never saw) at several validation sizes: Kendall τ against the long training's test top-1, beside the τ of
   the search's standalone proxy (DEFAULT_STEPS) on the same rows and the long training's own seed-to-seed τ.
3. throughput: candidates scored per minute on 2 cores at the chosen validation size, 60 random architectures.
4. search: `bneck search` with `evaluator: supernet` on the best-ranking supernet, `--candidates` trials per
   strategy, V3-Small's predicted latency as the hard ceiling (as benchmarks/fashion_search.py): evolution with
   the `hard` reward, and the REINFORCE controller (`rl`) with TuNAS's absolute reward (`tunas`) around it.
5. confirm: each search's best `--top` feasible candidates by supernet score trained standalone LONG_STEPS with
   3 seeds (test top-1), and the best one fine-tuned from its extracted weights for the proxy budget against
   training from scratch for it (which start is better here).

The standalone search it is compared with is benchmarks/results/fashion_search.json (search + confirmation +
long trainings, `wall_s`); this benchmark's wall time is reported per stage so the two can be put side by side.

Usage: python benchmarks/supernet.py [--rules sandwich,spos] [--candidates 2000] [--stage all] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write
from fashion_search import LONG_STEPS, latency_setup, long_top1
from proxy_fidelity import ROWS_FILE, TRUTHS, headline_key

import search_space as ss
from bneck_common.paths import RUNS_DIR, atomic_write
from evaluators import ProxyTrainer, Recipe, load_data
from evaluators.supernet import SupernetRecipe, SupernetScorer, load_supernet, train_supernet
from evaluators.trainer import DEFAULT_STEPS
from runs.rundir import RunDir

DATA = "builtin:fashion"
RESOLUTION = 32
# About equal CPU time per rule (measured here: a sandwich step of 4 subnets costs 3.4x a SPOS step)
RULE_STEPS = {"sandwich": 1500, "spos": 5000}
VAL_SIZES = (1000, 2000, None)  # None: the whole validation split (12,000 images)
CALIB_IMAGES = 256
STATE = "state.json"


def _tau(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3:
        return None
    t = kendalltau(x, y).statistic
    return float(t) if np.isfinite(t) else None


class Work:
    """WORK/state.json: every stage's results, rewritten atomically after each unit of work."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        f = path / STATE
        self.doc: dict[str, Any] = json.loads(f.read_text()) if f.is_file() else {}

    def save(self) -> None:
        atomic_write(self.path / STATE, json.dumps(self.doc, indent=1) + "\n")


def space() -> ss.SearchSpace:
    return ss.mobilenet_v3_small_space(num_classes=10, resolution=RESOLUTION)


def stage_train(work: Work, data: Any, rules: list[str], quick: bool) -> None:
    for rule in rules:
        steps = 40 if quick else RULE_STEPS[rule]
        recipe = SupernetRecipe(recipe=Recipe(steps=steps, threads=2), rule=rule, checkpoint_every=50)
        out = work.path / f"train-{rule}"
        print(f"train {rule}: {steps} steps ({recipe.subnets_per_step} subnets per step) -> {out}", flush=True)
        c0 = time.process_time()
        state = train_supernet(space(), data, recipe, seed=0, out_dir=out, progress=True, data_seed=0)
        slot = work.doc.setdefault("train", {}).setdefault(rule, {"cpu_s": 0.0})
        slot.update(steps=state.step, total_steps=state.total_steps, train_s=state.train_s,
                    subnets_per_step=recipe.subnets_per_step, final_train_loss=state.history[-1]["train_loss"])
        slot["cpu_s"] += time.process_time() - c0  # this call's share: a resumed run adds to it
        work.save()


def long_truth(row: dict[str, Any], key: str = "long") -> float | None:
    tests = [v["test"] for v in row.get(key, {}).values() if not v.get("failed")]
    return float(np.mean(tests)) if tests else None


def ranked_rows() -> tuple[list[dict[str, Any]], str]:
    """The proxy-fidelity rows with a long training whose architecture is in the space (V3-Small at α 1.0 is; its
    other widths change the stem, which the space keeps fixed), and the key of the truth to rank them by."""
    sp = space()
    rows = [r for r in json.loads(ROWS_FILE.read_text())["rows"]
            if long_truth(r) is not None and sp.contains(ss.Arch.parse(r["arch"]))]
    return rows, headline_key(rows, 0)  # proxy_fidelity's headline truth (seed pairs not needed here)


def stage_rank(work: Work, data: Any, rules: list[str]) -> None:
    rows, truth_key = ranked_rows()
    for rule in rules:
        supernet, _ = load_supernet(work.path / f"train-{rule}")
        slot = work.doc.setdefault("rank", {}).setdefault(rule, {})
        for val in VAL_SIZES:
            val_key = str(val or "all")
            scores = slot.setdefault(val_key, {})
            scorer = SupernetScorer(supernet, data, CALIB_IMAGES, val)
            for r in rows:
                if r["arch_id"] in scores:
                    continue
                scores[r["arch_id"]] = scorer.score(ss.Arch.parse(r["arch"]))[0]
                work.save()
            have = [r for r in rows if r["arch_id"] in scores]
            t = _tau([scores[r["arch_id"]] for r in have],
                     [long_truth(r, truth_key) for r in have])  # type: ignore[misc]
            print(f"rank {rule} val {val_key}: τ {t} against the {truth_key} truth over {len(have)} archs",
                  flush=True)


def rank_summary(work: Work, rules: list[str]) -> dict[str, Any]:
    rows, key = ranked_rows()
    truth = {r["arch_id"]: long_truth(r, key) for r in rows}
    proxy = {r["arch_id"]: r["proxy"][str(DEFAULT_STEPS)]["0"]["top1"] for r in rows
             if "0" in r.get("proxy", {}).get(str(DEFAULT_STEPS), {})}
    pairs = [(r[key]["0"]["test"], r[key]["1"]["test"]) for r in rows if "1" in r.get(key, {})]
    out: dict[str, Any] = {
        "n_rows": len(rows), "truth": key, "truth_steps": TRUTHS[key],
        "proxy_kendall_tau": _tau([proxy[a] for a in proxy], [truth[a] for a in proxy]),
        "long_self_tau": _tau([a for a, _ in pairs], [b for _, b in pairs]), "long_seed_pairs": len(pairs),
        "rules": {}}
    for rule in rules:
        per_val = {}
        for val_key, scores in work.doc.get("rank", {}).get(rule, {}).items():
            ids = [a for a in scores if a in truth]
            per_val[val_key] = {"n": len(ids), "kendall_tau": _tau([scores[a] for a in ids], [truth[a] for a in ids]),
                            "top1_range": [min(scores[a] for a in ids), max(scores[a] for a in ids)] if ids else None}
        out["rules"][rule] = per_val
    return out


def stage_throughput(work: Work, data: Any, rule: str, val: int | None) -> None:
    supernet, _ = load_supernet(work.path / f"train-{rule}")
    scorer = SupernetScorer(supernet, data, CALIB_IMAGES, val)
    rng = np.random.default_rng(7)
    archs = [space().sample(rng) for _ in range(60)]
    scorer.score(archs[0])  # warm-up
    t0 = time.perf_counter()
    per = []
    for a in archs:
        t = time.perf_counter()
        scorer.score(a)
        per.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    work.doc["throughput"] = {"rule": rule, "val_images": val, "calib_images": CALIB_IMAGES, "n": len(archs),
                              "candidates_per_min": 60 * len(archs) / wall, "score_s_median": float(np.median(per)),
                              "score_s_max": float(np.max(per))}
    work.save()
    print(f"throughput: {work.doc['throughput']['candidates_per_min']:.0f} candidates/min", flush=True)


def search_config(strategy: str, checkpoint: Path, trials: int, table: Path, ceiling_ms: float,
                  val: int | None) -> dict[str, Any]:
    reward, options = ("tunas", {}) if strategy == "rl" else ("hard", {"population": 50, "sample_size": 10})
    return {"name": f"supernet-{strategy}", "space": "mobilenet_v3_small_space", "data": DATA,
            "resolution": RESOLUTION, "trials": trials, "searcher": strategy, "searcher_options": options,
            "reward": reward, "target_ms": ceiling_ms, "max_latency_ms": ceiling_ms, "table": str(table), "seed": 0,
            "workers": 1, "threads": 2, "latency_resolution": 224, "evaluator": "supernet", "keep_weights": 3,
            "supernet": {"checkpoint": str(checkpoint), "calib_images": CALIB_IMAGES, "val_images": val},
            "confirm": None, "progress": False}


def stage_search(work: Work, rule: str, strategies: list[str], trials: int, val: int | None) -> None:
    _, table_path, ceiling_ms = latency_setup()
    bneck = Path(sys.executable).with_name("bneck")
    for strategy in strategies:
        run = work.path / f"search-{strategy}"
        if RunDir(run).exists():
            cmd = [str(bneck), "search", "--resume", str(run)]
        else:
            cfg = work.path / f"search-{strategy}.yaml"
            cfg.write_text(yaml.safe_dump(search_config(strategy, work.path / f"train-{rule}", trials, table_path,
                                                        ceiling_ms, val), sort_keys=False))
            cmd = [str(bneck), "search", "--config", str(cfg), "--out", str(run)]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        slot = work.doc.setdefault("search", {}).setdefault(strategy, {"wall_s": 0.0})
        slot["wall_s"] += time.perf_counter() - t0
        slot.update(run=str(run), trials=trials, ceiling_ms=ceiling_ms, rule=rule, val_images=val)
        work.save()


def top_feasible(run: Path, top: int) -> list[dict[str, Any]]:
    import pandas as pd

    frame = pd.read_parquet(run / "trials.parquet")
    ok = frame[(frame["state"] == "COMPLETE") & frame["feasible"] & ~frame["reference"]]
    ok = ok.sort_values(["accuracy", "latency_ms"], ascending=[False, True]).drop_duplicates("arch_id")
    return [{"trial": int(r.trial), "arch": r.arch, "arch_id": r.arch_id, "supernet_top1": float(r.accuracy),
             "predicted_ms": float(r.latency_ms)} for r in ok.head(top).itertuples()]


def stage_confirm(work: Work, data: Any, rule: str, strategies: list[str], top: int, seeds: int, quick: bool) -> None:
    long_steps = 100 if quick else LONG_STEPS
    for strategy in strategies:
        slot = work.doc.setdefault("confirm", {}).setdefault(strategy, {"wall_s": 0.0})
        t0 = time.perf_counter()
        rows = top_feasible(work.path / f"search-{strategy}", top)
        for r in rows:
            print(f"{strategy} trial {r['trial']} {r['arch_id']} (supernet {100 * r['supernet_top1']:.2f}%): "
                  f"{long_steps} steps x {seeds} seeds", flush=True)
            r["top1_seeds"] = long_top1(ss.Arch.parse(r["arch"]), list(range(seeds)), long_steps, data)
            r["top1_mean"] = float(np.mean(r["top1_seeds"]))
            r["top1_std"] = float(np.std(r["top1_seeds"], ddof=1)) if seeds > 1 else None
        slot["rows"] = rows
        slot["wall_s"] += time.perf_counter() - t0
        work.save()
    best_strategy = max(strategies, key=lambda s: max(r["top1_mean"] for r in work.doc["confirm"][s]["rows"]))
    best = max(work.doc["confirm"][best_strategy]["rows"], key=lambda r: r["top1_mean"])
    if "start" not in work.doc:
        work.doc["start"] = fine_tune_vs_scratch(work, data, rule, best["arch"], seeds, quick)
        work.save()


def fine_tune_vs_scratch(work: Work, data: Any, rule: str, arch_text: str, seeds: int,
                         quick: bool) -> dict[str, Any]:
    """The proxy budget from the supernet's extracted weights vs from scratch, test top-1 per seed."""
    supernet, _ = load_supernet(work.path / f"train-{rule}")
    arch = ss.Arch.parse(arch_text)
    steps = 40 if quick else DEFAULT_STEPS
    trainer = ProxyTrainer(Recipe(steps=steps, threads=2))
    scorer = SupernetScorer(supernet, data, CALIB_IMAGES, None)
    out: dict[str, Any] = {"arch": arch_text, "steps": steps, "fine_tune": [], "scratch": []}
    for seed in range(seeds):
        res, model = trainer.fine_tune(arch, scorer.model(arch), data, seed=seed)
        out["fine_tune"].append(float(trainer.score(model, data, "test")[0]))
        res = trainer.evaluate(arch, data, seed=seed, return_model=True)
        out["scratch"].append(float(trainer.score(res.model, data, "test")[0]))  # type: ignore[attr-defined]
        print(f"  seed {seed}: fine-tune {100 * out['fine_tune'][-1]:.2f}%, scratch {100 * out['scratch'][-1]:.2f}%",
              flush=True)
    out["extracted_test_top1"] = float(trainer.score(scorer.model(arch), data, "test")[0])
    for k in ("fine_tune", "scratch"):
        out[f"{k}_mean"] = float(np.mean(out[k]))
    return out


def summary(work: Work, rules: list[str], quick: bool) -> dict[str, Any]:
    d = work.doc
    rank = rank_summary(work, rules)
    default_rule = max(rules, key=lambda r: (rank["rules"].get(r, {}).get("all", {}).get("kendall_tau") or -1))
    chosen = rank["rules"].get(default_rule, {}).get("all", {})
    confirm = d.get("confirm", {})
    best_rows = [max(c["rows"], key=lambda r: r["top1_mean"]) for c in confirm.values() if c.get("rows")]
    best = max(best_rows, key=lambda r: r["top1_mean"]) if best_rows else None
    standalone_path = RESULTS / "fashion_search.json"
    standalone = json.loads(standalone_path.read_text()) if standalone_path.is_file() else {}
    n_scored = sum(int(json.loads((Path(s["run"]) / "run.json").read_text())["complete"])
                   for s in d.get("search", {}).values())
    stages = {"train": all(d.get("train", {}).get(r, {}).get("steps") == d.get("train", {}).get(r, {}).get(
                  "total_steps") for r in rules) and all(r in d.get("train", {}) for r in rules),
              "rank": (chosen.get("n") or 0) >= 30, "throughput": "throughput" in d,
              "search": n_scored >= 2000, "confirm": bool(best_rows) and "start" in d}
    return {
        "complete": all(stages.values()), "stages_done": stages,
        "data": DATA, "resolution": RESOLUTION, "quick": quick, "rule_steps": RULE_STEPS, "calib_images": CALIB_IMAGES,
        "n_archs": chosen.get("n"), "kendall_tau": chosen.get("kendall_tau"), "default_rule": default_rule,
        "rank": rank, "train": d.get("train", {}),
        "train_s": d.get("train", {}).get(default_rule, {}).get("train_s"),
        "candidates_per_min": d.get("throughput", {}).get("candidates_per_min"), "throughput": d.get("throughput"),
        "search": d.get("search", {}), "candidates_scored": n_scored, "confirm": confirm,
        "supernet_search_top1_mean": None if best is None else best["top1_mean"],
        "supernet_search_best": best,
        "standalone_search_top1_mean": standalone.get("best_top1_mean"),
        "standalone_search_wall_s": standalone.get("wall_s"),
        "standalone_reference_top1_mean": standalone.get("reference_top1_mean"),
        "start_comparison": d.get("start"),
        "wall_s": sum(v.get("train_s", 0) for v in d.get("train", {}).values())
        + sum(v.get("wall_s", 0) for v in d.get("search", {}).values())
        + sum(v.get("wall_s", 0) for v in confirm.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", default="sandwich,spos")
    ap.add_argument("--stage", default="all", choices=["all", "train", "rank", "throughput", "search", "confirm",
                                                       "report"])
    ap.add_argument("--candidates", type=int, default=2000, help="trials per search strategy")
    ap.add_argument("--strategies", default="evolution,rl")
    ap.add_argument("--val-images", type=int, default=2000, help="validation images per search score (0: all)")
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=RUNS_DIR / "bench-supernet")
    ap.add_argument("--quick", action="store_true", help="smoke run: 40 training steps, 30 candidates, short trainings")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rules = args.rules.split(",")
    strategies = args.strategies.split(",")
    val = args.val_images or None
    if args.quick:
        args.work = args.work.with_name(args.work.name + "-quick")
        args.candidates, args.seeds, args.top = 30, 2, 2
    work = Work(args.work)
    data = load_data(DATA, resolution=RESOLUTION, seed=0)
    stages = ["train", "rank", "throughput", "search", "confirm"] if args.stage == "all" else [args.stage]
    if "train" in stages:
        stage_train(work, data, rules, args.quick)
    if "rank" in stages:
        stage_rank(work, data, rules)
    best_rule = summary(work, rules, args.quick)["default_rule"]
    if "throughput" in stages:
        stage_throughput(work, data, best_rule, val)
    if "search" in stages:
        stage_search(work, best_rule, strategies, args.candidates, val)
    if "confirm" in stages:
        stage_confirm(work, data, best_rule, strategies, args.top, args.seeds, args.quick)
    doc = summary(work, rules, args.quick)
    path = write("supernet_quick" if args.quick else "supernet", doc, args.out)
    print(json.dumps({k: doc[k] for k in ("n_archs", "kendall_tau", "default_rule", "candidates_per_min", "train_s",
                                          "supernet_search_top1_mean", "standalone_search_top1_mean")}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
