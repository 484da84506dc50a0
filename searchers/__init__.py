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
from searchers.objective import Evaluation, EvaluationFailed, LatencyModel, SearchObjective, TrainingEvaluator
from searchers.predictor import AccuracyPredictor, PredictorSampler
from searchers.reward import Reward, RewardError
from searchers.search import STRATEGIES, create_study, finished, make_sampler, run_search

__all__ = [
    "STRATEGIES", "AccuracyPredictor", "ArchSampler", "ControllerSampler", "Evaluation", "EvaluationFailed",
    "History", "LatencyModel", "Policy", "PredictorSampler", "RandomSearch", "RegularizedEvolution", "Reward",
    "RewardError", "SearchError", "SearchObjective", "TrainingEvaluator", "create_study", "finished", "history",
    "make_sampler", "params_of_vector", "run_search", "vector_of_params",
]
