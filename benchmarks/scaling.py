"""Trials per hour of one search with 1 vs 2 local workers and 1 vs 2 Ray workers, on this machine.

Every leg is the same search: the random searcher with the same seed proposes the same architectures in the
same order, so the legs train identical work (MobileNetV3-Small space on builtin:digits at 32 px, evaluation
cache off). Threads per worker = cores / workers, so each leg uses the whole machine. Legs are interleaved over
`--rounds` (local-1, local-2, ray-1, ray-2, then again) because this host's speed drifts. Ray legs start a
real head node inside a loopback-only network namespace (`unshare -n`), as the tests do; without it they are
skipped. Wall time covers the whole `bneck search` command (worker start-up included), and, separately, the
driver's own time from the first trial's start to the last trial's end.
Usage: python benchmarks/scaling.py [--trials 8] [--steps 23] [--rounds 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write

BIN = Path(sys.executable).parent
PORT = "6392"


def leg(backend: str, workers: int, args: argparse.Namespace, root: Path, tag: str) -> dict:
    cores = os.cpu_count() or 1
    cfg = {"name": f"scaling-{backend}{workers}", "trials": args.trials, "steps": args.steps, "searcher": "random",
           "enqueue_preset": False, "eval_cache": False, "progress": False, "keep_weights": 0, "seed": 0,
           "workers": workers, "threads": max(1, cores // workers), "backend": backend}
    if args.table:
        cfg["table"] = args.table
    path = root / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = root / tag
    cmd = [sys.executable, "-m", "runs.cli", "search", "--config", str(path), "--out", str(run)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if backend == "ray":
        cmd += ["--address", f"127.0.0.1:{PORT}"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{tag} failed: {res.stderr[-2000:]}")
    frame = pd.read_parquet(run / "trials.parquet")
    study_span = _span(run)
    return {"backend": backend, "workers": workers, "threads": cfg["threads"], "trials": len(frame),
            "wall_s": wall, "trials_per_hour": 3600 * len(frame) / wall, "search_s": study_span,
            "trials_per_hour_search": 3600 * len(frame) / study_span,
            "median_trial_s": float(frame["duration_s"].median()), "archs": frame["arch_id"].tolist()}


def _span(run: Path) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="bneck", storage=f"sqlite:///{run / 'study.db'}")
    starts = [t.datetime_start for t in study.trials if t.datetime_start]
    ends = [t.datetime_complete for t in study.trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds()


def inside_namespace(args: argparse.Namespace) -> None:
    """The Ray legs, run inside `unshare -n`: start a head node on loopback, run the legs, stop it."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    temp = tempfile.mkdtemp(prefix="bneck-ray-", dir="/tmp")
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={PORT}", f"--num-cpus={os.cpu_count()}",
                    "--disable-usage-stats", f"--temp-dir={temp}", "--include-dashboard=false"], check=True,
                   capture_output=True, env=env)
    try:
        root = Path(args.root)
        out = [leg("ray", w, args, root, f"ray{w}-r{args.round}") for w in (1, 2)]
        Path(args.leg_out).write_text(json.dumps(out))
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=23, help="proxy steps per trial (23 = one digits epoch)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--table", default=None, help="latency table (default: this device's cached 224 px table)")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--ray-legs", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--leg-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ray_legs:
        inside_namespace(args)
        return
    root = Path(tempfile.mkdtemp(prefix="bneck-scaling-"))
    legs: list[dict] = []
    ray_skip = None
    for r in range(args.rounds):
        for w in (1, 2):
            legs.append(leg("local", w, args, root, f"local{w}-r{r}"))
            print(f"round {r} local x{w}: {legs[-1]['trials_per_hour']:.0f} trials/h", flush=True)
        if args.no_ray:
            ray_skip = "--no-ray"
            continue
        leg_out = root / f"ray-r{r}.json"
        cmd = ["unshare", "-n", sys.executable, __file__, "--ray-legs", "--root", str(root), "--round", str(r),
               "--leg-out", str(leg_out), "--trials", str(args.trials), "--steps", str(args.steps)]
        if args.table:
            cmd += ["--table", args.table]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            ray_skip = f"Ray legs failed or no network namespace here: {res.stderr.strip()[-300:]}"
            print(ray_skip)
            continue
        for item in json.loads(leg_out.read_text()):
            legs.append(item)
            print(f"round {r} ray x{item['workers']}: {item['trials_per_hour']:.0f} trials/h", flush=True)
    summary = {}
    for backend in ("local", "ray"):
        for w in (1, 2):
            mine = [x for x in legs if x["backend"] == backend and x["workers"] == w]
            if mine:
                summary[f"{backend}_{w}"] = {
                    "trials_per_hour_median": statistics.median(x["trials_per_hour"] for x in mine),
                    "trials_per_hour_search_median": statistics.median(x["trials_per_hour_search"] for x in mine),
                    "median_trial_s": statistics.median(x["median_trial_s"] for x in mine)}
    same_work = len({tuple(x["archs"]) for x in legs}) == 1
    result = {"trials": args.trials, "steps": args.steps, "rounds": args.rounds, "cores": os.cpu_count(),
              "same_architectures_in_every_leg": same_work, "summary": summary, "ray_skipped": ray_skip,
              "legs": [{k: v for k, v in x.items() if k != "archs"} for x in legs]}
    for key in ("local", "ray"):
        one, two = summary.get(f"{key}_1"), summary.get(f"{key}_2")
        if one and two:
            result[f"{key}_speedup_2_vs_1"] = two["trials_per_hour_median"] / one["trials_per_hour_median"]
    path = write("scaling", result, args.out)
    print(f"{'leg':10s} {'trials/h':>9s} {'trials/h (search only)':>23s} {'median trial s':>15s}")
    for key, s in summary.items():
        print(f"{key:10s} {s['trials_per_hour_median']:9.0f} {s['trials_per_hour_search_median']:23.0f} "
              f"{s['median_trial_s']:15.1f}")
    for key in ("local", "ray"):
        if f"{key}_speedup_2_vs_1" in result:
            print(f"{key}: 2 workers / 1 worker = {result[f'{key}_speedup_2_vs_1']:.2f}x")
    print(f"same architectures in every leg: {same_work}; wrote {path}")


if __name__ == "__main__":
    main()
