"""What one trial does: suggest an architecture, predict its latency, evaluate it, score it.

Every trial records the same user attrs (`arch`, `arch_id`, `accuracy`, `latency_ms`, `reward`, `params`,
`madds`, `eval_s`, plus what the evaluator adds), which is what runs and reports read back from the study.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import optuna

from latency import LatencyModel
from search_space import Arch, SearchSpace, count
from searchers.base import ACCURACY_ATTR, LATENCY_ATTR, SearchError
from searchers.reward import Reward

if TYPE_CHECKING:
    from evaluators import ImageData, Result


@dataclass(frozen=True)
class Evaluation:
    """An evaluator's verdict: accuracy in [0, 1]; `failed` (with a reason) when training diverged."""

    accuracy: float
    failed: bool = False
    reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)


Evaluator = Callable[[Arch], "float | Evaluation"]


class Trainer(Protocol):
    """What `TrainingEvaluator` needs of a trainer (`evaluators.ProxyTrainer` is one)."""

    def evaluate(self, arch: Arch, data: ImageData, seed: int = 0) -> Result:
        """Called on every `TrainingEvaluator` call (one per trained trial) with the trial's architecture and the
        evaluator's data and seed: train `arch` on `data` and report its validation result (`top1`, `failed`,
        `reason`, `train_s`, `loss`, `cached` and `epochs` are read)."""
        ...


class TrainingEvaluator:
    """Proxy training (`evaluators.ProxyTrainer`) as a search evaluator."""

    def __init__(self, trainer: Trainer, data: ImageData, seed: int = 0) -> None:
        self.trainer, self.data, self.seed = trainer, data, seed

    def __call__(self, arch: Arch) -> Evaluation:
        r = self.trainer.evaluate(arch, self.data, seed=self.seed)
        return Evaluation(r.top1, r.failed, r.reason or "", {"train_s": r.train_s, "loss": r.loss,
                                                               "cached": r.cached, "epochs": r.epochs})


class SearchObjective:
    """The Optuna objective of an architecture search.

    `mode="reward"`: one value, the MnasNet reward (maximize). `mode="pareto"`: (accuracy, latency_ms) for a
    (maximize, minimize) study. With `max_latency_ms`, every trial sets the Optuna constraint
    `latency_ms - max_latency_ms` (<= 0 feasible); an architecture over it is not trained unless
    `train_infeasible` (its accuracy is recorded as 0).
    """

    def __init__(self, space: SearchSpace, latency: LatencyModel | Callable[[Arch], float], evaluate: Evaluator,
                 reward: Reward | None = None, mode: str = "reward", max_latency_ms: float | None = None,
                 train_infeasible: bool = False) -> None:
        if mode not in ("reward", "pareto"):
            raise SearchError(f"mode must be 'reward' or 'pareto', got {mode!r}")
        if mode == "reward" and reward is None:
            raise SearchError("mode 'reward' needs a Reward (target latency and exponents)")
        if max_latency_ms is not None and not (math.isfinite(max_latency_ms) and max_latency_ms > 0):
            raise SearchError(f"max_latency_ms must be a positive number, got {max_latency_ms!r}")
        self.space, self.evaluate, self.reward, self.mode = space, evaluate, reward, mode
        self.latency_ms: Callable[[Arch], float] = getattr(latency, "ms", latency)  # a LatencyModel or a function
        self.max_latency_ms, self.train_infeasible = max_latency_ms, train_infeasible

    @property
    def directions(self) -> list[str]:
        return ["maximize"] if self.mode == "reward" else ["maximize", "minimize"]

    def begin(self, trial: optuna.Trial) -> Pending:
        """First half of a trial: the architecture, its predicted latency and cost, the constraint. A driver
        that evaluates elsewhere (worker processes, Ray) calls this, evaluates `pending.arch` unless
        `pending.skip`, then calls `finish`."""
        t0 = time.perf_counter()
        arch = self.space.suggest(trial)
        latency = float(self.latency_ms(arch))
        p, m = count(arch)
        trial.set_user_attr("arch", arch.to_string())
        trial.set_user_attr("arch_id", arch.arch_id)
        trial.set_user_attr(LATENCY_ATTR, latency)
        trial.set_user_attr("params", int(p))
        trial.set_user_attr("madds", int(m))
        infeasible = self.max_latency_ms is not None and latency > self.max_latency_ms
        if self.max_latency_ms is not None:
            trial.set_constraint("latency", latency - self.max_latency_ms)
        return Pending(arch, latency, infeasible and not self.train_infeasible, t0)

    def finish(self, trial: optuna.Trial, pending: Pending, result: float | Evaluation | None = None
               ) -> float | tuple[float, float]:
        """Second half: record the evaluation and return the objective value(s); raises `EvaluationFailed`
        for a failed evaluation (the caller tells the study FAIL). `result` is ignored for skipped trials."""
        if pending.skip:
            result = Evaluation(0.0, info={"skipped": "latency over the ceiling"})
        elif result is None:
            raise SearchError("finish() needs the evaluation of a trial that was not skipped")
        elif not isinstance(result, Evaluation):
            result = Evaluation(float(result))
        for key, value in result.info.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("eval_s", time.perf_counter() - pending.started)
        if result.failed or not math.isfinite(result.accuracy):
            trial.set_user_attr("fail_reason", result.reason or f"accuracy {result.accuracy}")
            raise EvaluationFailed(result.reason or f"accuracy {result.accuracy}")
        trial.set_user_attr(ACCURACY_ATTR, float(result.accuracy))
        if self.mode == "pareto":
            return float(result.accuracy), pending.latency_ms
        assert self.reward is not None
        value = self.reward(result.accuracy, pending.latency_ms)
        trial.set_user_attr("reward", value)
        return value

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        pending = self.begin(trial)
        return self.finish(trial, pending, None if pending.skip else self.evaluate(pending.arch))


@dataclass(frozen=True)
class Pending:
    """A trial between `SearchObjective.begin` and `finish`: what to evaluate (unless `skip`)."""

    arch: Arch
    latency_ms: float
    skip: bool
    started: float


class EvaluationFailed(RuntimeError):
    """Raised inside a trial when the evaluator reports failure (Optuna records the trial as FAIL; `optimize_study`
    catches it so the search goes on)."""
