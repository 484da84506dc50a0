"""Regularized (aging) evolution, Real et al. 2019.

The population is the last `population` completed trials of the study (by trial number), so the sampler keeps
no state: the oldest member ages out as each new trial completes. Trial `n` samples `sample_size` members,
mutates the fittest one decision (`SearchSpace.mutate_encoded`). Until the population is full it draws uniform
architectures (the same ones `RandomSearch` draws for the same seed).
"""

from __future__ import annotations

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from search_space import SearchSpace
from searchers.base import ArchSampler, SearchError


class RegularizedEvolution(ArchSampler):
    name = "evolution"

    def __init__(self, space: SearchSpace, seed: int = 0, population: int = 20, sample_size: int = 5) -> None:
        super().__init__(space, seed)
        if not isinstance(population, int) or population < 2:
            raise SearchError(f"evolution: population must be an integer >= 2, got {population!r}")
        if not isinstance(sample_size, int) or not 1 <= sample_size <= population:
            raise SearchError(f"evolution: sample_size must be an integer in [1, population={population}], "
                              f"got {sample_size!r}")
        self.population = population
        self.sample_size = sample_size

    def propose(self, study: optuna.Study, trial: FrozenTrial) -> np.ndarray:
        hist = self.history(study, before=trial.number)
        if len(hist) < self.population:
            return self.random_vector(trial.number)
        vectors = hist.vectors[-self.population:]
        fitness = hist.fitness[-self.population:]
        rng = self.rng(trial.number, salt=1)
        contestants = rng.choice(self.population, size=self.sample_size, replace=False)
        parent = contestants[np.argmax(fitness[contestants])]
        return self.space.mutate_encoded(rng, vectors[parent])[0]
