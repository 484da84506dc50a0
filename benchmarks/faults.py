"""Fault injection: kill -9 a search's driver (and its workers) at seeded random moments, resume, and check
that nothing finished is lost, nothing is counted twice, and the budget is exact.

A tiny space with a synthetic latency table (no timing: the same on every machine), digits, a few steps per
trial, one worker. Every round starts (or resumes) `bneck search` in its own process group, waits a seeded
random time, and kills the whole group with SIGKILL; after the last kill the run is resumed to the end. After
every kill the trials that were COMPLETE must still be COMPLETE with the same accuracy (nothing lost); at the
end each trial number appears once, exactly `budget` trials are counted, and every COMPLETE trial of the
killed run also has the accuracy the same architecture gets in an uninterrupted run (trainings are
deterministic per seed, so a re-run that differed would be a corruption). tests/test_faults.py runs a few
kills; this is the long version.

Usage: python benchmarks/faults.py [--kills 10] [--budget 12] [--seed 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

BNECK = [sys.executable, "-m", "runs.cli"]
STARTUP_S = 6.0  # start-up kills land in [0.5 s, this]: interpreter, torch, table, data, study


def tiny_space(name: str = "fault_space") -> Any:
    """A two-stage space around a small seed at 32 px, 10 classes: trials train in a second or two."""
    import search_space as ss

    preset = ss.Arch(ss.Stem(8, act="hswish"),
                     (ss.Bneck(3, 8, 8, 1, False, "relu"), ss.Bneck(3, 24, 16, 2, True, "hswish")),
                     ss.Head(conv=32, hidden=64), num_classes=10, resolution=32)
    return ss.space_around(name, preset, expand_ratios=(1.0, 3.0), width_ratios=(1.0, 1.5),
                           kernels=(3, 5), depth_delta=1, num_classes=10, resolution=32)


def tiny_setup(root: Path) -> dict[str, Path]:
    """`tiny_space` and a synthetic table of it (5 µs + MAdds/1e4 per layer)."""
    import latency as lat
    import search_space as ss

    root.mkdir(parents=True, exist_ok=True)
    space = tiny_space()
    (root / "space.json").write_text(json.dumps(space.to_dict()))
    table = lat.LatencyTable.from_layer_us(space, 32, lambda cfg: 5.0 + ss.layer_cost(cfg)[1] / 1e4)
    table.save(root / "table.parquet")
    return {"space": root / "space.json", "table": root / "table.parquet"}


def write_config(paths: dict[str, Path], out: Path, budget: int, steps: int) -> Path:
    doc = {"space": str(paths["space"]), "table": str(paths["table"]), "latency_resolution": 32, "steps": steps,
           "trials": budget, "eval_cache": False, "progress": False, "keep_weights": 1, "searcher": "random",
           "threads": 1, "confirm": None}
    out.write_text(yaml.safe_dump(doc))
    return out


def _frame(run: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(run / "trials.parquet")
    except (OSError, ValueError):
        return pd.DataFrame(columns=["trial", "state", "arch", "accuracy"])


def _running(run: Path, since: float) -> bool:
    """This driver shows a RUNNING trial: trials.parquet rewritten after `since` (the file a killed driver left
    still shows its own RUNNING trial)."""
    try:
        if (run / "trials.parquet").stat().st_mtime <= since:
            return False
    except FileNotFoundError:
        return False
    return bool((_frame(run)["state"] == "RUNNING").any())


def _complete(run: Path) -> dict[int, tuple[str, float]]:
    f = _frame(run)
    f = f[f["state"] == "COMPLETE"]
    return {int(t): (a, float(acc)) for t, a, acc in zip(f["trial"], f["arch"], f["accuracy"], strict=True)}


def inject(root: Path, kills: int, budget: int, seed: int, steps: int = 40,
           env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the whole experiment under `root`; returns the measurements (see the module docstring). Kills land
    during start-up (1 in 5) or at a random moment of a running trial."""
    env = {**os.environ, "BNECK_CACHE": str(root / "cache"), "PYTHONUNBUFFERED": "1", **(env or {})}
    paths = tiny_setup(root / "setup")
    cfg = write_config(paths, root / "run.yaml", budget, steps)
    ref_run, run = root / "reference", root / "killed"
    t0 = time.perf_counter()
    subprocess.run([*BNECK, "search", "--config", str(cfg), "--out", str(ref_run)], env=env, check=True,
                   capture_output=True, timeout=1800)
    reference_s = time.perf_counter() - t0
    truth = {a: acc for a, acc in _complete(ref_run).values()}
    rng = random.Random(seed)
    rounds = []
    def command() -> list[str]:  # a kill during start-up leaves no config.yaml: the user starts again
        return ["--resume", str(run)] if (run / "config.yaml").is_file() else ["--config", str(cfg), "--out", str(run)]

    for k in range(kills):
        args = command()
        before = _complete(run)
        proc = subprocess.Popen([*BNECK, "search", *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        # one kill in five during start-up (imports, table, data, study), the others while a trial trains: once
        # the driver shows a RUNNING trial, a random moment within about one trial's time
        started, started_wall = time.perf_counter(), time.time()
        phase = "startup" if rng.random() < 0.2 else "search"
        if phase == "search":
            while proc.poll() is None and time.perf_counter() - started < 600 and not _running(run, started_wall):
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5 * reference_s / budget))
        else:
            time.sleep(rng.uniform(0.5, STARTUP_S))
        wait = time.perf_counter() - started
        ended = proc.poll() is not None
        if not ended:
            os.killpg(proc.pid, signal.SIGKILL)
        err = proc.communicate()[1]
        after = _complete(run)
        lost = [t for t in before if t not in after or after[t] != before[t]]
        rounds.append({"kill": k, "phase": phase, "after_s": round(wait, 2), "ended_before_kill": ended,
                       "complete_before": len(before), "complete_after": len(after), "lost": lost,
                       "exit": proc.returncode, "stderr_tail": err.strip().splitlines()[-1:] if ended else []})
        if ended and len(after) >= budget:
            break
    final = subprocess.run([*BNECK, "search", *command()], env=env, capture_output=True, text=True, timeout=1800)
    frame = _frame(run)
    complete = _complete(run)
    counted = frame[frame["state"].isin(["COMPLETE", "FAIL"])]
    differs = [t for t, (a, acc) in complete.items() if a in truth and abs(truth[a] - acc) > 1e-12]
    return {
        "kills": sum(not r["ended_before_kill"] for r in rounds), "rounds": rounds, "budget": budget,
        "final_exit": final.returncode, "final_stderr": final.stderr.strip().splitlines()[-1:],
        "counted": len(counted), "unique_trials": bool(frame["trial"].is_unique),
        "lost": sorted({t for r in rounds for t in r["lost"]}), "accuracy_differs": differs,
        "status": json.loads((run / "run.json").read_text()).get("status") if (run / "run.json").is_file() else None,
        "reference_s": reference_s, "wall_s": time.perf_counter() - t0,
    }


def main() -> None:
    from _common import write

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--budget", type=int, default=12)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bneck-faults-") as tmp:
        result = inject(Path(tmp), args.kills, args.budget, args.seed, args.steps)
    path = write("faults", result, args.out)
    ok = (not result["lost"] and result["counted"] == args.budget and result["unique_trials"]
          and not result["accuracy_differs"] and result["final_exit"] == 0)
    print(f"{result['kills']} kill -9 of the driver and its workers; lost {len(result['lost'])} finished trials, "
          f"counted {result['counted']} of a budget of {args.budget}, accuracies differing from an uninterrupted run: "
          f"{len(result['accuracy_differs'])}: {'OK' if ok else 'FAILED'}; wrote {path}")


if __name__ == "__main__":
    main()
