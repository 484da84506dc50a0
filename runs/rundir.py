"""A run directory: what a search leaves on disk, and the one place that knows its layout.

    RUN/config.yaml      the resolved config (target latency and table path filled in)
    RUN/study.db         the Optuna study (SQLite; or the config's storage URL)
    RUN/trials.parquet   one row per trial, rewritten after every finished trial
    RUN/pareto.json      the (accuracy up, latency down) front of the trials so far
    RUN/run.json         status, counts, best trial, timings
    RUN/weights/         trained weights of the best `keep_weights` trials (trial_N.pt)
    RUN/confirm.json     the confirmation: top trials and the reference over more seeds (runs.confirm)
    RUN/best/            the best trial (after confirmation: by mean): spec.json, arch.txt, weights.pt, model.onnx
    RUN/pipeline.yaml    what `bneck run` does after the search (exports, NetAdapt), for `bneck run --resume`
    RUN/logs/            driver log
"""

from __future__ import annotations

import fcntl
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from bneck_common.paths import atomic_write

INTERRUPTED = "interrupted"  # user attr of a trial whose worker or driver died; it is re-run, never counted
REFERENCE = "reference"  # user attr of the enqueued preset (the reference point of reports)
WORKER_LOSSES = "worker_losses"  # user attr: how often this architecture's worker died (re-queued trials carry it)
TRIAL_COLUMNS = ("trial", "state", "arch", "arch_id", "accuracy", "latency_ms", "reward", "params", "madds",
                 "feasible", "duration_s", "worker", "reference", "fail_reason")


class RunError(RuntimeError):
    """A run dir is missing, locked by another driver, or not a run dir; the message says which."""


def counted(t: FrozenTrial) -> bool:
    """Trials that use the budget: finished and not interrupted."""
    return t.state.is_finished() and not t.user_attrs.get(INTERRUPTED, False)


class RunDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    config = property(lambda self: self.path / "config.yaml")
    study_db = property(lambda self: self.path / "study.db")
    trials = property(lambda self: self.path / "trials.parquet")
    pareto = property(lambda self: self.path / "pareto.json")
    run_json = property(lambda self: self.path / "run.json")
    weights = property(lambda self: self.path / "weights")
    best = property(lambda self: self.path / "best")
    logs = property(lambda self: self.path / "logs")
    report_png = property(lambda self: self.path / "report.png")
    report_md = property(lambda self: self.path / "report.md")
    confirm = property(lambda self: self.path / "confirm.json")
    pipeline = property(lambda self: self.path / "pipeline.yaml")

    def confirmation(self) -> dict[str, Any]:
        """RUN/confirm.json (runs.confirm), or {} when the run has none or it cannot be read."""
        try:
            doc = json.loads(self.confirm.read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def exists(self) -> bool:
        return self.config.is_file()

    def require(self) -> RunDir:
        if not self.path.is_dir():
            raise RunError(f"run dir {self.path} does not exist")
        if not self.exists():
            raise RunError(f"{self.path} is not a run dir (no config.yaml); runs are made by `bneck search`")
        return self

    def storage_url(self, storage: str | None) -> str:
        return storage or f"sqlite:///{self.study_db.resolve()}"

    def weights_of(self, trial: int) -> Path:
        return self.weights / f"trial_{trial}.pt"

    def info(self) -> dict[str, Any]:
        return json.loads(self.run_json.read_text()) if self.run_json.is_file() else {}

    # ---- one driver per run ----------------------------------------------------------------------------
    def lock(self) -> None:
        """Exclusive lock: a second driver on the same run dir is refused (it would double-count trials)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunError(f"run dir {self.path} is being driven by another `bneck search` process") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- outputs rewritten as trials finish ---------------------------------------------------------------
    def write_trials(self, frame: pd.DataFrame) -> None:
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        atomic_write(self.trials, buf.getvalue())

    def write_json(self, path: Path, doc: dict[str, Any]) -> None:
        atomic_write(path, (json.dumps(doc, indent=2, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def trials_frame(study: optuna.Study, reward: Any, max_latency_ms: float | None) -> pd.DataFrame:
    """One row per counted trial (interrupted attempts are left out: their re-run is the row)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get(INTERRUPTED):
            continue
        u = t.user_attrs
        acc = u.get("accuracy", math.nan)
        lat = u.get("latency_ms", math.nan)
        skipped = bool(u.get("skipped"))
        ok = t.state == TrialState.COMPLETE and not skipped and math.isfinite(acc)
        rew = u.get("reward")
        if rew is None and ok and reward is not None:
            rew = reward(acc, lat)
        end = t.datetime_complete
        dur = (end - t.datetime_start).total_seconds() if end is not None and t.datetime_start else math.nan
        rows.append({"trial": t.number, "state": t.state.name, "arch": u.get("arch", ""),
                     "arch_id": u.get("arch_id", ""), "accuracy": float(acc) if ok else math.nan,
                     "latency_ms": float(lat), "reward": float(rew) if ok and rew is not None else math.nan,
                     "params": int(u.get("params", 0)), "madds": int(u.get("madds", 0)),
                     "feasible": bool(max_latency_ms is None or lat <= max_latency_ms),
                     "duration_s": dur, "worker": u.get("worker", ""), "reference": bool(u.get(REFERENCE)),
                     "fail_reason": u.get("fail_reason", u.get("skipped", ""))})
    frame = pd.DataFrame(rows, columns=list(TRIAL_COLUMNS))
    return frame.astype({"trial": "int64", "params": "int64", "madds": "int64", "feasible": "bool",
                         "reference": "bool"})


def pareto_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The non-dominated trials for (accuracy up, latency down), fastest first."""
    ok = frame[frame["accuracy"].notna()].sort_values(["latency_ms", "accuracy"], ascending=[True, False])
    keep, best = [], -math.inf
    for idx, acc in zip(ok.index, ok["accuracy"], strict=True):
        if acc > best:
            keep.append(idx)
            best = acc
    return ok.loc[keep]


def best_trial(run: RunDir, frame: pd.DataFrame) -> int | None:
    """The run's best trial: confirmation's (best mean reward over seeds, RUN/confirm.json) once it finished,
    else the best single training's (`best_row`)."""
    doc = run.confirmation()
    if doc.get("status") == "done" and doc.get("best_trial") is not None:
        return int(doc["best_trial"])
    b = best_row(frame)
    return None if b is None else int(b["trial"])


def best_trial_row(run: RunDir, frame: pd.DataFrame) -> pd.Series | None:
    """The row of `best_trial` in `frame`, or None."""
    t = best_trial(run, frame)
    rows = frame[frame["trial"] == t] if t is not None else frame.iloc[:0]
    return None if rows.empty else rows.iloc[0]


def best_row(frame: pd.DataFrame) -> pd.Series | None:
    """The best feasible trial by reward (ties: faster, then earlier)."""
    ok = frame[frame["reward"].notna() & frame["feasible"]]
    if ok.empty:
        return None
    return ok.sort_values(["reward", "latency_ms", "trial"], ascending=[False, True, True]).iloc[0]


PARETO_FIELDS = ("trial", "arch", "arch_id", "accuracy", "latency_ms", "reward", "params", "madds", "reference")


def pareto_doc(frame: pd.DataFrame) -> dict[str, Any]:
    front = pareto_rows(frame)
    return {"objectives": {"accuracy": "maximize", "latency_ms": "minimize"},
            "trials": [{k: plain_value(r[k]) for k in PARETO_FIELDS} for _, r in front.iterrows()]}


def plain_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
