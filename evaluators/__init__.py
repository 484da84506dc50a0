"""How good a candidate is: real images, short proxy training, zero-cost proxies."""

from evaluators.data import DataError, ImageData, fashion_installed, holdout_split, load_data, trained_arch
from evaluators.proxies import PROXIES, ProxyError, proxy_score
from evaluators.trainer import ProxyTrainer, Recipe, RecipeError, Result, evaluate_accuracy

__all__ = [
    "PROXIES", "DataError", "ImageData", "ProxyError", "ProxyTrainer", "Recipe", "RecipeError", "Result",
    "evaluate_accuracy", "fashion_installed", "holdout_split", "load_data", "proxy_score", "trained_arch",
]
