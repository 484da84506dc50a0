"""Confirmation: the search's best candidates and the reference, trained again with more seeds; the best by mean.

A search picks its best from one training per architecture, and on a proxy task the seed noise is the size of
the differences it ranks by (digits: V3-Small's own seed spread was 2.8 points, the search's "win" 0.9). So after
the budget the top `top` feasible trials by reward and the reference (the space's preset, trial 0) are trained
`seeds` more times with the same recipe and data split and other training seeds; each gets mean and std of top-1
over its 1 + `seeds` trainings, the reward of the mean, and the run's best is the best mean reward.

With a supernet evaluator (`evaluator: supernet`) a trial's accuracy is a shared-weights score, not a training:
the candidates are then trained standalone with the run's recipe for 1 + `seeds` seeds (the run's own seed
first), and their means rest on those trainings alone (`search_score_counts` false in each row).

RUN/confirm.json is rewritten atomically after every training, so a kill loses at most the trainings running;
a resume trains only what is missing (and the evaluation cache makes repeats free).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from bneck_common.paths import atomic_write
from runs.executors import Executor, WorkerLost
from runs.rundir import RunDir, best_row
from runs.worker import TrialOutcome, TrialTask

log = logging.getLogger("bneck.run")
SEED_STRIDE = 1000  # training seeds of the extra trainings: seed + k * SEED_STRIDE, k = 1..seeds
MAX_ATTEMPTS = 3  # a training whose worker dies this often is recorded as failed


def candidates(frame: pd.DataFrame, top: int) -> pd.DataFrame:
    """The top `top` feasible completed trials by reward (not the reference) plus the reference trial(s)."""
    ok = frame[(frame["state"] == "COMPLETE") & frame["reward"].notna() & frame["feasible"]]
    ranked = ok[~ok["reference"]].sort_values(["reward", "latency_ms", "trial"], ascending=[False, True, True])
    refs = frame[(frame["state"] == "COMPLETE") & frame["reference"] & frame["accuracy"].notna()]
    return pd.concat([ranked.head(top), refs]).drop_duplicates("trial")


def summarize(rows: list[dict[str, Any]], reward: Any) -> dict[str, Any]:
    """Per candidate: top-1 over every training, mean, std, the reward of the mean; the best by that reward."""
    best, best_key = None, -math.inf
    for r in rows:
        own = [r["accuracy"]] if r.get("search_score_counts", True) else []
        accs = [*own, *[e["top1"] for e in r["extra"].values() if not e["failed"]]]
        if not accs:  # every standalone training failed
            accs = [0.0]
        r["top1_seeds"] = accs
        r["top1_mean"] = float(np.mean(accs))
        r["top1_std"] = float(np.std(accs, ddof=1)) if len(accs) > 1 else None
        r["reward_mean"] = reward(r["top1_mean"], r["latency_ms"])
        if not r["reference"] and r["feasible"] and r["reward_mean"] > best_key:
            best, best_key = r["trial"], r["reward_mean"]
    stds = [r["top1_std"] for r in rows if r["top1_std"] is not None]
    return {"best_trial": best, "pooled_std": float(np.sqrt(np.mean(np.square(stds)))) if stds else None}


def confirm(run: RunDir, frame: pd.DataFrame, config: Any, reward: Any, executor: Executor,
            make_task: Any, on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any] | None:
    """Train the candidates' extra seeds (resuming confirm.json) and write the confirmed best.

    `make_task(trial_number, arch, train_seed) -> TrialTask` builds the same task the search ran, with another
    training seed; `on_progress(done, total)` is called as trainings finish. Returns the confirm document, or
    None when confirmation is off or nothing is feasible."""
    settings = config.confirm
    if settings is None or settings.seeds < 1 or best_row(frame) is None:
        return None
    path = run.confirm
    old = run.confirmation()
    done = {int(r["trial"]): r for r in old.get("rows", [])}
    standalone = getattr(config, "evaluator", "train") == "supernet"  # the search's scores are no trainings
    seeds = [config.seed + k * SEED_STRIDE for k in range(0 if standalone else 1, settings.seeds + 1)]
    rows = []
    for _, c in candidates(frame, settings.top).iterrows():
        prev = done.get(int(c["trial"]), {})
        rows.append({"trial": int(c["trial"]), "arch": str(c["arch"]), "reference": bool(c["reference"]),
                     "feasible": bool(c["feasible"]), "latency_ms": float(c["latency_ms"]),
                     "accuracy": float(c["accuracy"]), "reward": float(c["reward"]),
                     "search_score_counts": not standalone,
                     "extra": {k: v for k, v in prev.get("extra", {}).items() if int(k) in seeds}})
    t0 = time.time()

    def save(status: str) -> dict[str, Any]:
        doc = {"status": status, "top": settings.top, "seeds": seeds, **summarize(rows, reward), "rows": rows,
               "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_s": old.get("wall_s", 0.0) + time.time() - t0}
        atomic_write(path, json.dumps(doc, indent=2) + "\n")
        return doc

    todo = [(r, s) for r in rows for s in seeds if str(s) not in r["extra"]]
    attempts: dict[tuple[int, int], int] = {}
    inflight: dict[Any, tuple[dict[str, Any], int]] = {}
    total = len(rows) * len(seeds)

    def progress() -> None:
        if on_progress is not None:
            on_progress(sum(len(r["extra"]) for r in rows), total)

    save("running")
    progress()
    while todo or inflight:
        while todo and len(inflight) < executor.slots:
            r, s = todo.pop(0)
            task: TrialTask = make_task(r["trial"], r["arch"], s)
            inflight[executor.submit(dataclasses.replace(task, keep_weights=False))] = (r, s)
        for handle, out in executor.wait(list(inflight), 0.5):
            r, s = inflight.pop(handle)
            if isinstance(out, WorkerLost):
                n = attempts[(r["trial"], s)] = attempts.get((r["trial"], s), 0) + 1
                if n < MAX_ATTEMPTS:
                    todo.append((r, s))
                    continue
                r["extra"][str(s)] = {"top1": 0.0, "failed": True, "reason": f"worker died {n} times: {out}"}
            elif isinstance(out, BaseException):
                r["extra"][str(s)] = {"top1": 0.0, "failed": True, "reason": f"{type(out).__name__}: {out}"}
            else:
                assert isinstance(out, TrialOutcome)
                r["extra"][str(s)] = {"top1": out.accuracy, "failed": out.failed, "reason": out.reason}
            log.info("confirm: trial %d seed %d -> %s", r["trial"], s, r["extra"][str(s)])
            save("running")
            progress()
    return save("done")
