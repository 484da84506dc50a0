"""`predictor`: OFA-style specialization: evolution over many candidates scored without training.

After `n_startup` uniform trials, each batch of `batch_size` trials is proposed at once: an accuracy predictor is
fitted on the study's evaluated trials, then a regularized-free evolution searches `candidates` (default 100k)
architectures scored by the predicted reward: predicted accuracy (an optimistic upper bound, mean + `kappa`·std
over a bootstrap ensemble) times the latency factor from the table, which is exact for this space. The batch is
the best distinct candidates not evaluated yet.

A batch starting at trial `s` is computed from the trials numbered below `s` with rng (seed, s), so a resumed
search proposes the same batch again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from search_space import SearchSpace, count_encoded
from searchers.base import ArchSampler, SearchError
from searchers.reward import Reward


def features(space: SearchSpace, encoded: np.ndarray) -> np.ndarray:
    """One-hot of every used decision plus log params and log MAdds (absent layers: all-zero one-hots)."""
    enc = np.asarray(encoded, dtype=np.int64).reshape(-1, space.num_decisions)
    n = len(enc)
    offsets = np.concatenate([[0], np.cumsum(space.cardinalities)[:-1]])
    onehot = np.zeros((n, int(space.cardinalities.sum()) + 2), dtype=np.float64)
    rows, cols = np.nonzero(enc >= 0)
    onehot[rows, offsets[cols] + enc[rows, cols]] = 1.0
    p, m = count_encoded(space, enc)
    onehot[:, -2] = np.log(p.astype(np.float64))
    onehot[:, -1] = np.log(m.astype(np.float64))
    return onehot


class AccuracyPredictor:
    """A bootstrap ensemble of ridge regressions on `features`; ridge strength chosen by leave-one-out."""

    ALPHAS = np.logspace(-2, 3, 11)

    def __init__(self, space: SearchSpace, n_models: int = 8, seed: int = 0) -> None:
        self.space, self.n_models, self.seed = space, n_models, seed
        self.coefs: np.ndarray | None = None

    def fit(self, encoded: np.ndarray, accuracy: np.ndarray) -> AccuracyPredictor:
        x = features(self.space, encoded)
        y = np.asarray(accuracy, dtype=np.float64)
        if len(y) < 2:
            raise SearchError("predictor: needs at least 2 evaluated trials to fit")
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-9
        z = (x - self.mean) / self.scale
        self.y_mean = y.mean()
        alpha = self._loo_alpha(z, y - self.y_mean)
        rng = np.random.default_rng(self.seed)
        coefs = []
        for i in range(self.n_models):
            idx = np.arange(len(y)) if i == 0 else rng.integers(len(y), size=len(y))
            zi, yi = z[idx], y[idx] - self.y_mean
            coefs.append(np.linalg.solve(zi.T @ zi + alpha * np.eye(z.shape[1]), zi.T @ yi))
        self.alpha = alpha
        self.coefs = np.stack(coefs, axis=1)
        return self

    @classmethod
    def _loo_alpha(cls, z: np.ndarray, y: np.ndarray) -> float:
        """Ridge strength with the smallest leave-one-out error (closed form through the SVD)."""
        u, s, _ = np.linalg.svd(z, full_matrices=False)
        uty = u.T @ y
        best, best_err = float(cls.ALPHAS[0]), np.inf
        for a in cls.ALPHAS:
            shrink = s**2 / (s**2 + a)
            fitted = u @ (shrink * uty)
            hat_diag = (u**2 * shrink).sum(1)
            err = np.mean(((y - fitted) / np.maximum(1 - hat_diag, 1e-6)) ** 2)
            if err < best_err:
                best, best_err = float(a), err
        return best

    def predict(self, encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of the ensemble's predicted accuracy. The model is linear in one-hot features, so each
        prediction is a sum of per-decision weight gathers (no dense feature matrix)."""
        if self.coefs is None:
            raise SearchError("predictor: predict before fit")
        space = self.space
        enc = np.asarray(encoded, dtype=np.int64).reshape(-1, space.num_decisions)
        weights = self.coefs / self.scale[:, None]  # (features, models)
        const = self.y_mean - (self.mean / self.scale) @ self.coefs
        offsets = np.concatenate([[0], np.cumsum(space.cardinalities)[:-1]])
        zero_row = len(weights)  # absent layers point at an all-zero row
        padded = np.vstack([weights, np.zeros((1, weights.shape[1]))])
        idx = np.where(enc >= 0, offsets[None, :] + enc, zero_row)
        preds = padded[idx].sum(axis=1)
        p, m = count_encoded(space, enc)
        preds += np.log(p.astype(np.float64))[:, None] * weights[-2]
        preds += np.log(m.astype(np.float64))[:, None] * weights[-1]
        preds += const
        return preds.mean(1), preds.std(1)


class PredictorSampler(ArchSampler):
    name = "predictor"

    def __init__(self, space: SearchSpace, latency_ms_batch: Callable[[np.ndarray], np.ndarray], reward: Reward,
                 seed: int = 0, n_startup: int = 20, batch_size: int = 10, candidates: int = 100_000,
                 kappa: float = 1.0, max_latency_ms: float | None = None) -> None:
        super().__init__(space, seed)
        for key, v, ok in (("n_startup", n_startup, isinstance(n_startup, int) and n_startup >= 2),
                           ("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1),
                           ("candidates", candidates, isinstance(candidates, int) and candidates >= 1000),
                           ("kappa", kappa, isinstance(kappa, (int, float)) and kappa >= 0)):
            if not ok:
                raise SearchError(f"predictor: bad {key} {v!r}")
        self.latency_ms_batch = latency_ms_batch
        self.reward = reward
        self.n_startup, self.batch_size, self.candidates, self.kappa = n_startup, batch_size, candidates, kappa
        self.max_latency_ms = max_latency_ms
        self._batches: dict[int, np.ndarray] = {}
        self._mult = np.random.default_rng(12345).integers(1, 2**62, size=space.num_decisions) | 1  # _row_keys
        self.last_fit: dict[str, Any] = {}

    def _row_keys(self, vecs: np.ndarray) -> np.ndarray:
        """A 64-bit hash per decision vector (a fixed random linear map, wrapping), for fast de-duplication."""
        with np.errstate(over="ignore"):
            return (vecs + 1) @ self._mult

    def startup_vector(self, number: int) -> np.ndarray:
        """Trial `number`'s uniform draw; under a latency ceiling, uniform over the architectures that meet it
        (the table knows before training), so no startup evaluation is spent on an infeasible one."""
        if self.max_latency_ms is None:
            return self.random_vector(number)
        rng = self.rng(number, salt=4)
        for _ in range(50):
            cand = self.space.sample_encoded(rng, 256)
            ok = np.flatnonzero(self.latency_ms_batch(cand) <= self.max_latency_ms)
            if len(ok):
                return cand[ok[0]]
        return self.random_vector(number)  # the ceiling is (nearly) unreachable: the objective will say so

    def batch_start(self, number: int) -> int:
        return self.n_startup + (number - self.n_startup) // self.batch_size * self.batch_size

    def propose(self, study: optuna.Study, trial: FrozenTrial) -> np.ndarray:
        if trial.number < self.n_startup:
            return self.startup_vector(trial.number)
        start = self.batch_start(trial.number)
        if start not in self._batches:
            self._batches = {start: self.propose_batch(study, start)}
        batch = self._batches[start]
        return batch[(trial.number - start) % len(batch)]

    def score(self, predictor: AccuracyPredictor, encoded: np.ndarray) -> np.ndarray:
        mean, std = predictor.predict(encoded)
        latency = self.latency_ms_batch(encoded)
        score = self.reward.batch(mean + self.kappa * std, latency)
        if self.max_latency_ms is not None:
            score = np.where(latency <= self.max_latency_ms, score, -latency)
        return score

    def propose_batch(self, study: optuna.Study, start: int) -> np.ndarray:
        """The `batch_size` proposals for trials start, start+1, ... (see module docstring)."""
        hist = self.history(study, before=start)
        ok = np.isfinite(hist.accuracy)
        if ok.sum() < 2:
            if len(hist) and not ok.any():
                raise SearchError("predictor: completed trials carry no `accuracy` user attr; run the search "
                                  "through searchers.SearchObjective")
            return np.stack([self.random_vector(start + i) for i in range(self.batch_size)])
        rng = self.rng(start, salt=3)
        predictor = AccuracyPredictor(self.space, seed=int(rng.integers(2**31))).fit(hist.vectors[ok],
                                                                                    hist.accuracy[ok])
        n_random = min(self.candidates // 5, 20_000)
        pool = np.concatenate([hist.vectors, self.space.sample_encoded(rng, n_random)])
        scores = self.score(predictor, pool)
        seen = n_random
        parents_n, children_n = 64, 2048
        while seen < self.candidates:
            top = np.argsort(-scores)[:parents_n]
            parents = pool[top][rng.integers(len(top), size=children_n)]
            children = self.space.mutate_encoded(rng, parents)
            twice = rng.random(children_n) < 0.3
            children[twice] = self.space.mutate_encoded(rng, children[twice])
            child_scores = self.score(predictor, children)
            pool = np.concatenate([pool[top], children])
            scores = np.concatenate([scores[top], child_scores])
            _, first = np.unique(self._row_keys(pool), return_index=True)  # duplicates would crowd the parents
            pool, scores = pool[first], scores[first]
            seen += children_n
        evaluated = {v.tobytes() for v in hist.vectors}
        chosen: list[np.ndarray] = []
        for i in np.argsort(-scores, kind="stable"):
            key = pool[i].tobytes()
            if key in evaluated:
                continue
            evaluated.add(key)
            chosen.append(pool[i])
            if len(chosen) == self.batch_size:
                break
        while len(chosen) < self.batch_size:  # the pool ran dry of new candidates: fill uniformly
            chosen.append(self.random_vector(start + len(chosen)))
        self.last_fit = {"start": start, "trials": int(ok.sum()), "alpha": predictor.alpha, "candidates": seen}
        return np.stack(chosen)
