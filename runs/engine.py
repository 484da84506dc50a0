"""A search run: resolve the config, then one driver asks the study, workers train, the driver tells.

Why a driver with ask/tell rather than K independent `study.optimize` loops (or Ray Tune's `OptunaSearch`):
the driver is the only writer, so the budget is exact (no K-1 overshoot), a dead worker's trial is re-queued
by the one process that knows it, and every strategy's state stays where it already lives, in the study. The
workers (processes here, Ray tasks on a cluster) only train, from plain arch strings.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

import latency as lat
import search_space as ss
import searchers as se
from bneck_common.paths import atomic_write, cache_dir
from evaluators import ImageData, ProxyTrainer, load_data
from evaluators.trainer import prune_eval_cache
from latency.build import stale_kit
from runs.config import LEGACY_STUDY, RunConfig, redact_url
from runs.confirm import confirm
from runs.executors import Executor, WorkerLost, make_executor, stop_on_signals
from runs.rundir import (
    INTERRUPTED,
    REFERENCE,
    WORKER_LOSSES,
    RunDir,
    RunError,
    best_trial,
    counted,
    pareto_doc,
    trials_frame,
)
from runs.worker import TrialOutcome, TrialTask

log = logging.getLogger("bneck.run")


@dataclass
class Setup:
    """Everything the driver and the reports derive from a config."""

    config: RunConfig
    data: ImageData
    space: ss.SearchSpace
    table: lat.LatencyTable
    table_path: Path
    latency: lat.LatencyModel
    target_ms: float
    reward: se.Reward
    objective: se.SearchObjective


def search_space_of(config: RunConfig, num_classes: int | None, resolution: int) -> ss.SearchSpace:
    """The config's space (a registered name, or a `SearchSpace.to_dict()` JSON file) at a resolution and
    class count; `num_classes` None keeps the file's (named spaces: 1000, the deployed ImageNet head)."""
    try:
        return ss.load_space(config.space, config.width_mult, num_classes, resolution)
    except ss.SpecError as exc:
        raise RunError(str(exc)) from None


def table_space(config: RunConfig) -> ss.SearchSpace:
    return search_space_of(config, None, config.latency_resolution)


def resolve_table(config: RunConfig, show_progress: bool = True) -> tuple[lat.LatencyTable, Path]:
    """The config's table, or this device's cached table for the space (built first when allowed)."""
    if config.table is not None:
        if not config.table.is_file():
            raise RunError(f"table: {config.table} does not exist")
        return lat.LatencyTable.load(config.table), config.table
    tspace = table_space(config)
    path = lat.default_table_path(tspace, config.latency_resolution, config.latency_threads)
    if path.is_file():
        try:
            return lat.LatencyTable.load(path), path
        except lat.OutdatedTableError:  # our own cache, of an older bneck: measure it again, do not misread it
            return lat.build_table(tspace, config.latency_resolution, config.latency_threads, force=True,
                                   show_progress=show_progress)
    if not config.build_table:
        raise RunError(f"table: no cached table at {path}; build it (`bneck latency build --space {config.space} "
                       f"--resolution {config.latency_resolution}`) or drop --no-build-table")
    stale = stale_kit(path)  # our own cache: an older bneck's partial build is started over, not refused
    partial = path.with_name(path.name + ".kit").is_dir() and not stale
    return lat.build_table(tspace, config.latency_resolution, config.latency_threads, resume=partial, force=stale,
                           show_progress=show_progress)


def make_setup(config: RunConfig, show_progress: bool = True) -> Setup:
    data = load_data(config.data, resolution=config.resolution, seed=config.seed, progress=show_progress)
    space = search_space_of(config, data.num_classes, config.resolution)
    if config.supernet is not None:  # before the table: a mismatch must not wait for a table build
        check_supernet(config.supernet.checkpoint, space, data)
    table, table_path = resolve_table(config, show_progress)
    model = lat.LatencyModel(table, space)
    target = config.target_ms if config.target_ms is not None else model.ms(space.preset)
    reward = se.Reward.preset(config.reward, target)
    if config.alpha is not None or config.beta is not None:
        reward = se.Reward(target, reward.alpha if config.alpha is None else config.alpha,
                           reward.beta if config.beta is None else config.beta, reward.kind)
    trainer = ProxyTrainer(config.training_recipe(), device=config.device)
    # the driver only uses the objective's begin/finish; workers evaluate (train, or score on the supernet)
    objective = se.SearchObjective(space, model, se.TrainingEvaluator(trainer, data, seed=config.seed), reward,
                                   mode=config.mode, max_latency_ms=config.max_latency_ms)
    return Setup(config, data, space, table, table_path, model, target, reward, objective)


def check_supernet(checkpoint: Path, space: ss.SearchSpace, data: ImageData) -> None:
    """A supernet evaluator must cover the run's space and score on the split it was trained with (else its
    training images would be scored as validation)."""
    from evaluators.supernet import SupernetError, check_same_split, load_supernet

    try:
        supernet, meta = load_supernet(checkpoint)
        check_same_split(meta, data)
    except SupernetError as exc:
        raise RunError(str(exc)) from None
    if supernet.space.to_dict() != space.to_dict():
        raise RunError(f"supernet {checkpoint} is a supernet of {supernet.space.name} at "
                       f"{supernet.space.resolution} px, {supernet.space.num_classes} classes; the run searches "
                       f"{space.name} at {space.resolution} px, {space.num_classes} classes")


def resolved(config: RunConfig, setup: Setup) -> RunConfig:
    """The config as saved in the run dir: the defaults that depend on this machine are made explicit."""
    update: dict[str, Any] = {"table": setup.table_path.resolve(), "target_ms": setup.target_ms}
    if config.steps is None and config.epochs is None:  # a resumed run keeps its budget if the default changes
        update["steps"] = config.training_recipe().steps
    return config.model_copy(update=update)


def open_study(setup: Setup, run: RunDir) -> optuna.Study:
    c = setup.config
    options = dict(c.searcher_options)
    sampler = se.make_sampler(c.searcher, setup.space, c.seed, latency=setup.latency, reward=setup.reward,
                              max_latency_ms=c.max_latency_ms, mode=c.mode, **options)
    try:
        return optuna.create_study(storage=run.storage_url(c.storage), sampler=sampler, study_name=study_name(c),
                                   directions=setup.objective.directions, load_if_exists=True)
    except Exception as exc:
        raise RunError(_storage_failure(c.storage, exc)) from None


def study_name(config: RunConfig) -> str:
    return config.study or LEGACY_STUDY


def claim_study(setup: Setup, run: RunDir) -> None:
    """Create a new run's study; refuse if the storage already holds one of that name (another run's: sharing
    it would merge their trials and budgets, and each driver's recovery would fail the other's running trials)."""
    c = setup.config
    try:
        optuna.create_study(storage=run.storage_url(c.storage), study_name=study_name(c),
                            directions=setup.objective.directions, load_if_exists=False)
    except optuna.exceptions.DuplicatedStudyError:
        raise RunError(f"storage {redact_url(run.storage_url(c.storage))} already holds a study named "
                       f"{study_name(c)!r} (another run's): choose another --study, or resume that run") from None
    except Exception as exc:
        raise RunError(_storage_failure(c.storage, exc)) from None


def _storage_failure(storage: str | None, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    hint = ""
    if storage is not None and "password" in first.lower():
        hint = "; a password is never saved with the run: pass the URL again with --storage, or set PGPASSWORD"
    return f"cannot open the study in {redact_url(storage) or 'the run dir'}: {first}{hint}"


def recover(study: optuna.Study) -> int:
    """Trials left RUNNING by a killed driver are marked interrupted (FAIL) and queued again with the same
    architecture, so the re-run replaces them. Only the run's single driver calls this."""
    storage = study._storage
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        _requeue(study, t.params, t.user_attrs)
        n += 1
    return n


MAX_WORKER_LOSSES = 3  # an architecture whose worker dies this often (OOM, a crash in a kernel) fails for good


def _requeue(study: optuna.Study, params: dict[str, Any], attrs: dict[str, Any]) -> None:
    """Queue an interrupted trial's architecture again. A trial stopped while its architecture was still being
    suggested (no `arch` yet) has partial params: nothing is queued, the sampler proposes a new trial instead."""
    if "arch" not in attrs:
        return
    keep = {k: attrs[k] for k in (REFERENCE, WORKER_LOSSES) if k in attrs}
    study.enqueue_trial(params, user_attrs=keep, skip_if_exists=False)


def _interrupt(study: optuna.Study, trial: optuna.Trial, reason: str, count: bool = True) -> bool:
    """A trial whose worker died: re-queued, unless its architecture has now lost MAX_WORKER_LOSSES workers
    (counted across re-runs and driver restarts; a pool broken by another trial's death counts too, so the cap
    is a few losses, not one). Then it is FAILED with the reason, uses its budget, and the search goes on.
    A trial stopped by the driver (Ctrl-C, SIGTERM) is re-queued with `count=False`: not its architecture's fault.
    Returns whether it was re-queued."""
    losses = int(trial.user_attrs.get(WORKER_LOSSES, 0)) + int(count)
    params = dict(trial.params)
    attrs = {**trial.user_attrs, WORKER_LOSSES: losses}
    if losses >= MAX_WORKER_LOSSES:
        trial.set_user_attr(WORKER_LOSSES, losses)
        trial.set_user_attr("fail_reason", f"its worker died {losses} times (last: {reason}); out of memory? "
                                           "not re-queued again")
        study.tell(trial, state=TrialState.FAIL)
        return False
    trial.set_user_attr(INTERRUPTED, True)
    trial.set_user_attr("fail_reason", reason)
    study.tell(trial, state=TrialState.FAIL)
    _requeue(study, params, attrs)
    return True


class Driver:
    """Runs a study to its budget with an executor; writes the run dir's outputs as trials finish."""

    def __init__(self, setup: Setup, run: RunDir, study: optuna.Study, executor: Executor,
                 on_update: Any = None) -> None:
        self.setup, self.run, self.study, self.executor = setup, run, study, executor
        self.on_update = on_update or (lambda driver: None)
        self.inflight: dict[Any, tuple[optuna.Trial, se.Pending]] = {}
        self.started = time.time()
        self.recent_s: list[float] = []
        self.errors_in_row = 0
        self.lost = 0
        self.asking: optuna.Trial | None = None

    # ---- bookkeeping ---------------------------------------------------------------------------------
    def done(self) -> int:
        return sum(counted(t) for t in self.study.get_trials(deepcopy=False))

    def frame(self) -> pd.DataFrame:
        c = self.setup.config
        return trials_frame(self.study, self.setup.reward, c.max_latency_ms)

    def write_outputs(self, status: str) -> pd.DataFrame:
        frame = self.frame()
        self.run.write_trials(frame)
        self.run.write_json(self.run.pareto, pareto_doc(frame))
        c = self.setup.config
        self.run.write_json(self.run.run_json, {
            "status": status, "budget": c.trials, "finished": int(len(frame) - (frame["state"] == "RUNNING").sum()),
            "complete": int((frame["state"] == "COMPLETE").sum()), "failed": int((frame["state"] == "FAIL").sum()),
            "interrupted_reruns": self.lost, "target_ms": self.setup.target_ms,
            "table": str(self.setup.table_path), "space": c.space, "data": c.data,
            "num_classes": self.setup.data.num_classes, "resolution": c.resolution,
            "latency_resolution": self.setup.table.resolution, "storage": redact_url(self.run.storage_url(c.storage)),
            "study_name": study_name(c), "best_trial": best_trial(self.run, frame),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_s": time.time() - self.started})
        return frame

    def _keep_weights(self, frame: pd.DataFrame) -> None:
        keep_n = self.setup.config.keep_weights
        ok = frame[frame["reward"].notna()].sort_values("reward", ascending=False)
        keep = set(ok["trial"].head(keep_n)) | set(frame.loc[frame["reference"], "trial"])
        b = best_trial(self.run, frame)
        if b is not None:
            keep.add(b)
        if self.run.weights.is_dir():
            for f in self.run.weights.glob("trial_*.pt"):
                if int(f.stem.removeprefix("trial_")) not in keep:
                    f.unlink(missing_ok=True)

    # ---- the loop ------------------------------------------------------------------------------------
    def _task(self, trial: optuna.Trial, arch: ss.Arch) -> TrialTask:
        return self.task(trial.number, arch.to_string())

    def task(self, number: int, arch: str, train_seed: int | None = None) -> TrialTask:
        """What a worker runs for trial `number` (confirmation: the same with another training seed)."""
        c = self.setup.config
        recipe = dataclasses.asdict(c.training_recipe())
        supernet = c.supernet.model_dump(mode="json") if c.supernet is not None and train_seed is None else None
        return TrialTask(number, arch, c.data, c.resolution, recipe, c.seed, c.device, c.eval_cache,
                         c.keep_weights > 0, train_seed, supernet)

    def _ask(self) -> None:
        trial = self.study.ask()
        self.asking = trial
        pending = self.setup.objective.begin(trial)
        self.asking = None
        if pending.skip:
            self._tell(trial, pending, None)
            return
        self.inflight[self.executor.submit(self._task(trial, pending.arch))] = (trial, pending)
        self.write_outputs("running")  # the new RUNNING row is visible to anyone watching the run

    def _tell(self, trial: optuna.Trial, pending: se.Pending, outcome: TrialOutcome | None) -> None:
        result = None
        if outcome is not None:
            trial.set_user_attr("worker", outcome.worker)
            result = se.Evaluation(outcome.accuracy, outcome.failed, outcome.reason, outcome.info)
        try:
            values = self.setup.objective.finish(trial, pending, result)
        except se.EvaluationFailed:
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            if outcome is not None and outcome.weights is not None:
                try:
                    self.run.weights.mkdir(exist_ok=True)
                    atomic_write(self.run.weights_of(trial.number), outcome.weights)
                except OSError as exc:  # a full disk costs the weights, never the finished trial's result
                    log.warning("trial %d: its weights were not kept (%s)", trial.number, exc)
            self.study.tell(trial, values)
        self.recent_s.append(time.perf_counter() - pending.started)

    def _collect(self, timeout: float) -> None:
        for handle, out in self.executor.wait(list(self.inflight), timeout):
            trial, pending = self.inflight.pop(handle)
            if isinstance(out, WorkerLost):
                self.lost += 1
                if _interrupt(self.study, trial, str(out)):
                    log.warning("trial %d: %s; it runs again", trial.number, out)
                else:
                    log.error("trial %d: %s, %d times for its architecture: failed", trial.number, out,
                              MAX_WORKER_LOSSES)
            elif isinstance(out, BaseException):
                self.errors_in_row += 1
                trial.set_user_attr("fail_reason", f"{type(out).__name__}: {out}")
                self.study.tell(trial, state=TrialState.FAIL)
                log.error("trial %d failed in the worker: %s: %s", trial.number, type(out).__name__, out)
                if self.errors_in_row >= 3:
                    raise RunError(f"3 trials in a row raised in the worker (last: {type(out).__name__}: {out}); "
                                   f"see {self.run.logs}/driver.log")
            else:
                self.errors_in_row = 0
                self._tell(trial, pending, out)
            frame = self.write_outputs("running")
            self._keep_weights(frame)
            self.on_update(self)

    def run_to_budget(self) -> pd.DataFrame:
        budget = self.setup.config.trials
        try:
            while True:
                while len(self.inflight) < self.executor.slots and self.done() + len(self.inflight) < budget:
                    self._ask()
                    self.on_update(self)
                if not self.inflight:
                    break
                self._collect(timeout=0.5)
        except BaseException:  # Ctrl-C, SIGTERM or an error: the running trials are re-queued for the resume
            stopped = [trial for trial, _ in self.inflight.values()]
            if self.asking is not None:
                stopped.append(self.asking)
            try:  # best effort: with a full disk these writes fail too, and the next resume recovers instead
                for trial in stopped:
                    _interrupt(self.study, trial, "driver stopped", count=False)
                self.inflight.clear()
                self.write_outputs("interrupted")
            except Exception as exc:  # the original error is what the user must see
                log.error("could not record the interruption: %s", exc)
            raise
        return self.write_outputs("done")


def enqueue_reference(study: optuna.Study, space: ss.SearchSpace) -> None:
    """The space's preset (e.g. MobileNetV3-Small) as trial 0: the point every report compares against."""
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(se.params_of_vector(space, space.encode(space.preset)), user_attrs={REFERENCE: True})


def run_search(setup: Setup, run: RunDir, on_update: Any = None,
               on_confirm: Callable[[int, int], None] | None = None) -> tuple[pd.DataFrame, Driver]:
    """Drive the run's study to its budget (resuming whatever is in its storage), then confirm its best
    (`runs.confirm`; `on_confirm(done, total)` reports the trainings)."""
    c = setup.config
    study = open_study(setup, run)
    n = recover(study)
    if n:
        log.info("re-queued %d interrupted trial(s)", n)
    if c.enqueue_preset:
        enqueue_reference(study, setup.space)
    executor = make_executor(c.backend, c.workers, c.worker_threads(), c.address, c.device)
    driver = Driver(setup, run, study, executor, on_update)
    driver.lost = n
    try:
        with stop_on_signals():  # Ctrl-C / SIGTERM: running trials are re-queued by the next resume
            frame = driver.run_to_budget()
            if driver.done() >= c.trials and c.confirm is not None and c.confirm.seeds > 0:
                doc = confirm(run, frame, c, setup.reward, executor, driver.task, on_confirm)
                if doc is not None:
                    frame = driver.write_outputs("done")  # run.json's best trial is the confirmed one
                    log.info("confirmed best: trial %s (pooled seed std %s)", doc["best_trial"], doc["pooled_std"])
    finally:
        executor.close()
    if c.eval_cache:  # every trial's weights were cached; the run keeps its best in RUN/weights
        usage = prune_eval_cache(cache_dir())
        if usage.removed:
            log.info("eval cache: removed %d file(s), %.1f MB", usage.removed, usage.freed_bytes / 1e6)
    return frame, driver


def eta_s(driver: Driver) -> float:
    budget = driver.setup.config.trials
    left = budget - driver.done()
    if not driver.recent_s or left <= 0:
        return math.nan if left > 0 else 0.0
    per = sum(driver.recent_s[-20:]) / len(driver.recent_s[-20:])
    return left * per / max(1, driver.executor.slots)
