"""Strategies by name, and a search = an Optuna study driven by one of them.

`make_sampler` is the one place that knows the strategy names and their options; `optimize_study` runs a study up
to a total budget of finished trials, so calling it again on the same storage resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from bneck_common.progress import progress_bar
from latency import LatencyModel
from search_space import Arch, SearchSpace
from searchers.base import RandomSearch, SearchError, params_of_vector
from searchers.controller import ControllerSampler
from searchers.evolution import RegularizedEvolution
from searchers.objective import EvaluationFailed, SearchObjective
from searchers.predictor import PredictorSampler
from searchers.reward import Reward

STRATEGIES: dict[str, str] = {
    "random": "uniform architectures; the baseline",
    "evolution": "regularized (aging) evolution, Real et al. 2019",
    "rl": "MnasNet's recurrent controller trained by policy gradient",
    "tpe": "Optuna's tree-structured Parzen estimator (also multi-objective)",
    "nsga2": "Optuna's NSGA-II (multi-objective, constraint-aware)",
    "predictor": "evolution over 100k candidates scored by a learned accuracy predictor and the latency table",
}
OPTIONS: dict[str, tuple[str, ...]] = {
    "random": (), "evolution": ("population", "sample_size"),
    "rl": ("hidden", "lr", "baseline_decay", "entropy_weight"),
    "tpe": ("n_startup_trials", "multivariate", "group", "constant_liar"),
    "nsga2": ("population_size", "mutation_prob", "crossover_prob"),
    "predictor": ("n_startup", "batch_size", "candidates", "kappa"),
}
PARETO_STRATEGIES = ("tpe", "nsga2", "random")


def make_sampler(name: str, space: SearchSpace, seed: int = 0, *, latency: LatencyModel | None = None,
                 reward: Reward | None = None, max_latency_ms: float | None = None, mode: str = "reward",
                 **options: Any) -> optuna.samplers.BaseSampler:
    """The sampler of strategy `name`; unknown names or options raise a SearchError naming them."""
    if name not in STRATEGIES:
        raise SearchError(f"unknown searcher {name!r} (known: {', '.join(STRATEGIES)})")
    unknown = sorted(set(options) - set(OPTIONS[name]))
    if unknown:
        allowed = ", ".join(OPTIONS[name]) or "none"
        raise SearchError(f"searcher {name}: unknown option {unknown[0]!r} (allowed: {allowed})")
    if mode == "pareto" and name not in PARETO_STRATEGIES:
        raise SearchError(f"searcher {name} optimizes the reward; a Pareto search takes "
                          f"{', '.join(PARETO_STRATEGIES)}")
    if name == "random":
        return RandomSearch(space, seed)
    if name == "evolution":
        return RegularizedEvolution(space, seed, **options)
    if name == "rl":
        return ControllerSampler(space, seed, **options)
    if name == "tpe":
        # multivariate: better here than independent TPE and 5x cheaper per trial at 1,000 trials (57 vs 271 ms);
        # group=True costs 149 ms/trial for no gain on this space (benchmarks/search_efficiency.py)
        kw = {"n_startup_trials": 10, "multivariate": True} | options
        return optuna.samplers.TPESampler(seed=seed, **kw)
    if name == "nsga2":
        kw = {"population_size": 20} | options
        return optuna.samplers.NSGAIISampler(seed=seed, **kw)
    if latency is None or reward is None:
        raise SearchError("searcher predictor needs the latency table and the reward")
    return PredictorSampler(space, latency.ms_batch, reward, seed, max_latency_ms=max_latency_ms, **options)


def finished(study: optuna.Study) -> int:
    """Trials that count against the budget: complete, failed or pruned (not running or waiting)."""
    return sum(t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
               for t in study.get_trials(deepcopy=False))


def create_study(objective: SearchObjective, sampler: optuna.samplers.BaseSampler, storage: Any = None,
                 study_name: str = "bneck", load_if_exists: bool = True) -> optuna.Study:
    return optuna.create_study(storage=storage, sampler=sampler, study_name=study_name,
                               directions=objective.directions, load_if_exists=load_if_exists)


def optimize_study(study: optuna.Study, objective: SearchObjective, n_trials: int, *,
                   enqueue: Sequence[Arch] = (), show_progress: bool = False,
                   callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = ()) -> optuna.Study:
    """Run `study` until `n_trials` trials have finished in total (a resumed study runs only the rest).

    `enqueue` architectures (e.g. the space's preset network) are evaluated first, once per study. Failed
    evaluations are recorded as FAIL trials and the search goes on.
    """
    if not isinstance(n_trials, int) or n_trials < 1:
        raise SearchError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    space = objective.space
    if enqueue and not study.get_trials(deepcopy=False):
        for arch in enqueue:
            study.enqueue_trial(params_of_vector(space, space.encode(arch)))
    remaining = n_trials - finished(study)
    if remaining <= 0:
        return study
    if not show_progress:
        study.optimize(objective, n_trials=remaining, catch=(EvaluationFailed,), callbacks=list(callbacks))
        return study
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with progress_bar("{task.description}") as bar:
            task = bar.add_task("search", total=n_trials, completed=n_trials - remaining)

            def tick(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                bar.update(task, completed=finished(st), description=_best_text(st))

            study.optimize(objective, n_trials=remaining, catch=(EvaluationFailed,),
                           callbacks=[*callbacks, tick])
    finally:
        optuna.logging.set_verbosity(verbosity)
    return study


def _best_text(study: optuna.Study) -> str:
    try:
        if study._is_multi_objective():
            return f"search · front {len(study.best_trials)}"
        return f"search · best {study.best_value:.4f}"
    except ValueError:
        return "search"
