"""A search session in a run dir: start or resume it, then drive the engine to its budget with the live view.

`bneck search` and `bneck run` share this: `start_run` resolves the config (a new run or a resume), locks the run
dir, sets up its log and claims the study; `execute` runs the search (`runs.engine.run_search`) under a live
progress table and turns Ctrl-C into the "continue with ..." line; `summary` prints what the run found.

Not in `runs.engine`: the engine is the driver and its study, with no run-dir lifecycle and no console; what
happens around it (the lock, the log file, the live view, the user-facing resume hint) is this module's job.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.live import Live
from rich.table import Table
from rich.text import Text

import latency as lat
import search_space as ss
import searchers as se
from bneck_common.paths import RUNS_DIR, atomic_write
from evaluators import DataError, RecipeError
from runs.config import (
    ConfigError,
    RunConfig,
    default_run_dir,
    load_saved_config,
    redact_url,
    resume_config,
)
from runs.engine import Driver, Setup, claim_study, eta_s, make_setup, resolved, run_search
from runs.errors import UserError, console_err, console_out, out_of_space
from runs.executors import ExecutorError
from runs.rundir import RunDir, RunError, best_row, best_trial_row

# what a session raises for a user's mistake (bad config, missing file, unusable backend): one line, exit 2
USER_ERRORS = (ConfigError, RunError, ExecutorError, DataError, RecipeError, ss.SpecError, se.SearchError,
               se.RewardError, lat.LatencyError)


@contextlib.contextmanager
def user_facing_errors(resume_command: str) -> Iterator[None]:
    """What a search command turns into one line and exit code (runs.errors): a user's mistake (`USER_ERRORS`,
    exit 2), a full disk (OSError ENOSPC, or SQLite's own "database or disk is full"; exit 1 with how to resume:
    `resume_command`, e.g. "`bneck search --resume RUN`"). Anything else propagates."""
    import sqlalchemy.exc

    try:
        yield
    except USER_ERRORS as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        full = out_of_space(exc, resume_command)
        if full is None:
            raise
        raise full from None
    except sqlalchemy.exc.OperationalError as exc:
        if "disk is full" not in str(exc):
            raise
        raise out_of_space(OSError(errno.ENOSPC, "disk full", str(exc).split("\n")[0][:120]),
                           resume_command) from None


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "–"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_table(driver: Driver) -> Table:
    """The live view: trials done / running / failed, the best so far, the ETA."""
    frame = driver.frame()
    c = driver.setup.config
    done = int(frame["state"].isin(["COMPLETE", "FAIL"]).sum())
    failed = int((frame["state"] == "FAIL").sum())
    best = best_row(frame)
    t = Table(title=f"bneck search · {c.searcher} · {c.space} · target {driver.setup.target_ms:.3f} ms",
              title_justify="left")
    for col in ("done", "running", "failed", "best reward", "best top-1", "best latency", "elapsed", "ETA"):
        t.add_column(col, justify="right")
    t.add_row(f"{done}/{c.trials}", str(len(driver.inflight)), str(failed),
              "–" if best is None else f"{best['reward']:.4f}",
              "–" if best is None else f"{100 * best['accuracy']:.2f}%",
              "–" if best is None else f"{best['latency_ms']:.3f} ms",
              _fmt_s(time.time() - driver.started), _fmt_s(eta_s(driver)))
    return t


def _setup_logging(run: RunDir) -> None:
    run.logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run.logs / "driver.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("bneck.run")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def start_run(config: RunConfig | None, out: Path | None, resume: Path | None,
              overrides: dict[str, Any]) -> tuple[RunDir, Setup]:
    """Resolve the config (new run or resume) and prepare the run dir; nothing is searched yet."""
    if resume is not None:
        run = RunDir(resume).require()
        config = resume_config(load_saved_config(run.config), overrides)
        run.lock()
        _setup_logging(run)
        setup = make_setup(config, show_progress=config.progress)
        setup.config = resolved(config, setup)
        atomic_write(run.config, setup.config.to_yaml())
        return run, setup
    assert config is not None
    run = RunDir(out if out is not None else default_run_dir(config, RUNS_DIR))
    if run.exists():
        raise RunError(f"{run.path} already holds a run: resume it with `bneck search --resume {run.path}` "
                       "or choose another --out")
    if run.path.exists() and not run.path.is_dir():
        raise RunError(f"--out {run.path} is a file: a run dir is a folder (choose another --out)")
    created = not run.path.exists()
    try:
        run.lock()
        _setup_logging(run)
        setup = make_setup(config, show_progress=config.progress)
        setup.config = resolved(config, setup)
        if setup.config.study is None:  # unique per run: two runs on one storage never share a study
            setup.config = setup.config.model_copy(update={"study": f"{run.path.name}-{secrets.token_hex(3)}"})
        claim_study(setup, run)
        atomic_write(run.config, setup.config.to_yaml())
    except BaseException:
        run.unlock()
        if created:  # a failed start leaves nothing behind
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    return run, setup


def execute(run: RunDir, setup: Setup, unlock: bool = True, resume_command: str = "bneck search --resume") -> Driver:
    """Run the search with live progress; Ctrl-C keeps every finished trial and says how to resume. With
    `unlock=False` the caller keeps the run dir's lock (`bneck run` holds it until its report)."""
    c = setup.config
    live = Live(console=console_err, refresh_per_second=2, transient=False) if c.progress else None
    last = [0.0]

    def update(driver: Driver) -> None:
        if live is not None and time.time() - last[0] > 0.5:
            last[0] = time.time()
            live.update(progress_table(driver))

    def confirming(done: int, total: int) -> None:
        if live is not None:
            live.update(Text(f"confirmation: {done}/{total} trainings (the best trials and the reference, more "
                             "seeds)"))

    try:
        if live is not None:
            live.start()
        _, driver = run_search(setup, run, update, confirming)
        if live is not None:
            live.update(progress_table(driver))
    except KeyboardInterrupt:
        if live is not None:
            live.stop()
        console_err.print(f"interrupted: finished trials are kept in {run.path}; continue with "
                          f"`{resume_command} {run.path}`", soft_wrap=True, highlight=False)
        raise SystemExit(130) from None
    finally:
        if live is not None:
            live.stop()
        if unlock:
            run.unlock()
    return driver


def summary(run: RunDir, setup: Setup) -> None:
    """Print the finished search: trial counts, the best trial, its confirmation, where the files are."""
    import pandas as pd

    frame = pd.read_parquet(run.trials)
    best = best_trial_row(run, frame)
    c = setup.config
    console_out.print(f"run {run.path}: {len(frame)} trials ({int((frame['state'] == 'FAIL').sum())} failed), "
                      f"target {setup.target_ms:.3f} ms")
    if best is not None:
        console_out.print(f"best: trial {int(best['trial'])}, top-1 {100 * best['accuracy']:.2f}% at "
                          f"{best['latency_ms']:.3f} ms predicted (reward {best['reward']:.4f}, {c.reward})")
        console_out.print(f"  {best['arch']}", markup=False, highlight=False, soft_wrap=True)
    doc = run.confirmation()
    for r in doc.get("rows", []):
        std = f" ± {100 * r['top1_std']:.2f}" if r.get("top1_std") is not None else ""
        tag = " (reference)" if r["reference"] else (" (best)" if r["trial"] == doc.get("best_trial") else "")
        console_out.print(f"  confirmed trial {r['trial']}{tag}: top-1 {100 * r['top1_mean']:.2f}%{std} over "
                          f"{len(r['top1_seeds'])} trainings at {r['latency_ms']:.3f} ms", highlight=False)
    console_out.print(f"trials {run.trials} · front {run.pareto} · study {c.study} in "
                      f"{redact_url(run.storage_url(c.storage))}",
                      highlight=False)


__all__ = ["USER_ERRORS", "execute", "progress_table", "start_run", "summary", "user_facing_errors"]
