"""Search strategies behind one Optuna sampler interface, the MnasNet reward, and the search objective."""

from searchers.base import (
    ArchSampler,
    History,
    RandomSearch,
    SearchError,
    history,
    params_of_vector,
    vector_of_params,
)
from searchers.controller import ControllerSampler, Policy
from searchers.evolution import RegularizedEvolution
from searchers.netadapt import (
    FineTuneOutcome,
    FineTuneRequest,
    Move,
    NetAdapt,
    NetAdaptError,
    NetAdaptSettings,
    Proposal,
    propose,
)
from searchers.objective import (
    Evaluation,
    EvaluationFailed,
    Pending,
    SearchObjective,
    Trainer,
    TrainingEvaluator,
)
from searchers.predictor import AccuracyPredictor, PredictorSampler
from searchers.reward import REWARD_PRESETS, Reward, RewardError
from searchers.search import (
    OPTIONS,
    PARETO_STRATEGIES,
    STRATEGIES,
    create_study,
    finished,
    make_sampler,
    optimize_study,
)

__all__ = [
    "OPTIONS", "PARETO_STRATEGIES", "REWARD_PRESETS", "STRATEGIES", "AccuracyPredictor", "ArchSampler",
    "ControllerSampler", "Evaluation", "EvaluationFailed", "FineTuneOutcome", "FineTuneRequest", "History",
    "Move", "NetAdapt", "NetAdaptError", "NetAdaptSettings", "Pending", "Policy",
    "PredictorSampler", "Proposal", "RandomSearch", "RegularizedEvolution", "Reward", "RewardError", "SearchError",
    "SearchObjective", "Trainer", "TrainingEvaluator", "create_study", "finished", "history", "make_sampler",
    "optimize_study", "params_of_vector", "propose", "vector_of_params",
]
