"""The one sampler interface: a strategy proposes a whole architecture per trial.

Optuna asks a sampler one parameter at a time, while NAS strategies (evolution, a controller, a predictor) think
in whole architectures. `ArchSampler` bridges the two: `before_trial` asks the strategy for a decision vector of
the space (`propose`), stores it with the trial (system attr `bneck:proposal`, so the study records what was
proposed), and `sample_independent` answers each `suggest_categorical` of `SearchSpace.suggest` from it.

Strategies are stateless or rebuild their state from the study's history, so a study in shared storage is the
whole state of a search: resume and many workers come from Optuna. Every random choice of trial `n` draws from
`rng(n)`, a generator seeded by (seed, n), so a proposal depends on the seed and the history only.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from search_space import SearchSpace
from search_space.encoding import ABSENT

PROPOSAL_KEY = "bneck:proposal"
ACCURACY_ATTR = "accuracy"
LATENCY_ATTR = "latency_ms"


class SearchError(ValueError):
    """A search setting or study is unusable as given (the message names what and why)."""


def vector_of_params(space: SearchSpace, params: dict[str, Any]) -> np.ndarray:
    """The decision vector of a trial's parameters (values as `SearchSpace.suggest` names them)."""
    vec = np.full(space.num_decisions, ABSENT, dtype=np.int64)
    for st, at in zip(space.stages, space.layout.stages, strict=True):
        for pos in range(at.start, at.stop):
            d = space.decisions[pos]
            if d.name in params:
                try:
                    vec[pos] = d.choices.index(params[d.name])
                except ValueError:
                    raise SearchError(f"trial parameter {d.name}={params[d.name]!r} is not a choice of space "
                                      f"{space.name} ({list(d.choices)})") from None
            elif pos < at.first_expand:
                raise SearchError(f"trial has no parameter {d.name}: it was not sampled from space {space.name}")
        depth = st.depths[vec[at.depth]]
        vec[at.unused_slots(depth)] = ABSENT  # slots a flat suggestion filled but the depth does not use
        if (vec[at.used_slots(depth)] < 0).any():
            raise SearchError(f"trial lacks an expansion of stage s{at.stage} of space {space.name}")
    return vec


def params_of_vector(space: SearchSpace, vector: np.ndarray) -> dict[str, Any]:
    """The trial parameters (as `SearchSpace.suggest` names them) of a decision vector: its inverse."""
    return {d.name: d.choices[int(v)] for d, v in zip(space.decisions, vector, strict=True) if v >= 0}


@dataclass(frozen=True)
class History:
    """Completed trials of a study in trial-number order, as arrays a strategy can compute on."""

    numbers: np.ndarray      # (n,) trial numbers
    vectors: np.ndarray      # (n, num_decisions) decision vectors
    values: np.ndarray       # (n,) objective value, larger is better
    accuracy: np.ndarray     # (n,) the `accuracy` user attr (nan where absent or not trained)
    violation: np.ndarray    # (n,) summed positive constraint values (0 = feasible)

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def fitness(self) -> np.ndarray:
        """Feasible trials by value; any infeasible trial ranks below every feasible one, by its violation."""
        return np.where(self.violation <= 0, self.values, -1e6 - self.violation)


def history(space: SearchSpace, study: optuna.Study, before: int | None = None,
            trials: Sequence[FrozenTrial] | None = None, cache: dict[int, np.ndarray] | None = None) -> History:
    """Completed trials (numbers < `before` when given) of a single-objective study; `cache` keeps decision
    vectors by trial id across calls (a completed trial never changes)."""
    if study._is_multi_objective():
        raise SearchError("this strategy optimizes one objective (the reward); use tpe or nsga2 for a Pareto search")
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    rows = [t for t in (trials if trials is not None else study.get_trials(deepcopy=False))
            if t.state == TrialState.COMPLETE and (before is None or t.number < before)]
    rows.sort(key=lambda t: t.number)
    n = len(rows)
    vectors = np.empty((n, space.num_decisions), dtype=np.int64)
    for i, t in enumerate(rows):
        vec = cache.get(t._trial_id) if cache is not None else None
        if vec is None:
            vec = vector_of_params(space, t.params)
            if cache is not None:
                cache[t._trial_id] = vec
        vectors[i] = vec
    return History(
        numbers=np.array([t.number for t in rows], dtype=np.int64), vectors=vectors,
        values=np.array([sign * float(t.value) for t in rows], dtype=np.float64),  # type: ignore[arg-type]
        accuracy=np.array([float(t.user_attrs.get(ACCURACY_ATTR, np.nan)) if "skipped" not in t.user_attrs
                           else np.nan for t in rows], dtype=np.float64),  # skipped = never trained: no accuracy
        violation=np.array([sum(max(0.0, c) for c in t.constraints.values()) for t in rows], dtype=np.float64))


class ArchSampler(optuna.samplers.BaseSampler, abc.ABC):
    """Base of the strategies that propose whole architectures (see module docstring)."""

    name = "arch"

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise SearchError(f"seed must be an integer >= 0, got {seed!r}")
        self.space = space
        self.seed = int(seed)
        self._proposals: dict[int, np.ndarray] = {}
        self._index = {d.name: k for k, d in enumerate(space.decisions)}
        self._vectors: dict[int, np.ndarray] = {}

    def history(self, study: optuna.Study, before: int | None = None) -> History:
        """The study's completed trials (see `history`), decision vectors cached across trials."""
        return history(self.space, study, before, cache=self._vectors)

    def __str__(self) -> str:
        return f"{type(self).__name__}(space={self.space.name}, seed={self.seed})"

    def rng(self, trial_number: int, salt: int = 0) -> np.random.Generator:
        """The generator for every random choice made for trial `trial_number`."""
        return np.random.default_rng([self.seed, int(trial_number), salt])

    def random_vector(self, trial_number: int) -> np.ndarray:
        """The uniform draw of trial `trial_number`; every strategy that starts randomly starts with these,
        so strategies with the same seed share their first architectures (common random numbers)."""
        return self.space.sample_encoded(self.rng(trial_number), 1)[0]

    @abc.abstractmethod
    def propose(self, study: optuna.Study, trial: FrozenTrial) -> np.ndarray:
        """The decision vector to evaluate as `trial`."""

    # ---- Optuna's sampler interface -------------------------------------------------------------------
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if "fixed_params" in trial.system_attrs:  # an enqueued architecture: nothing to propose
            return
        vec = np.asarray(self.propose(study, trial), dtype=np.int64)
        self._proposals[trial._trial_id] = vec
        study._storage.set_trial_system_attr(trial._trial_id, PROPOSAL_KEY, [int(v) for v in vec])

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        vec = self._proposals.get(trial._trial_id)
        if vec is None:
            stored = study._storage.get_trial_system_attrs(trial._trial_id).get(PROPOSAL_KEY)
            if stored is None:
                raise SearchError(f"{self.name}: no proposal for trial {trial.number} (was the objective "
                                  f"something other than SearchSpace.suggest?)")
            vec = self._proposals[trial._trial_id] = np.asarray(stored, dtype=np.int64)
        k = self._index.get(param_name)
        if k is None:
            raise SearchError(f"{self.name} samples architectures of space {self.space.name}; it cannot answer "
                              f"parameter {param_name!r}")
        idx = int(vec[k])
        if idx < 0:  # a slot the proposal leaves empty, asked by a flat suggestion: any valid value
            idx = 0
        return self.space.decisions[k].choices[idx]

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._proposals.pop(trial._trial_id, None)


class RandomSearch(ArchSampler):
    """Uniform over decision vectors: the baseline every claim is measured against."""

    name = "random"

    def propose(self, study: optuna.Study, trial: FrozenTrial) -> np.ndarray:
        return self.random_vector(trial.number)
