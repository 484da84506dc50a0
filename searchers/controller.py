"""The MnasNet controller: a recurrent policy that emits one token per decision of the factorized space,
trained by policy gradient on the reward.

REINFORCE with a moving-average baseline (MnasNet used PPO; with one architecture per update the two coincide up
to clipping). Advantages are divided by a moving standard deviation, since rewards of one space differ only in the
second decimal. Decisions a sampled depth leaves unused are not emitted and carry no gradient.

The entropy bonus is 0.1, not the customary 1e-3: Adam moves the weights by ~lr per update whatever the
advantage's size, so over thousands of trials the policy collapses unless something pulls back. Measured
(benchmarks/rl_collapse.py: the SPOS supernet search replayed on a ridge surrogate of its 4,000 scores, 2,000
trials x 4 seeds, TuNAS reward under V3-Small's latency): entropy 1e-3 collapsed every seed onto 1-2
architectures and found a worse best reward than random sampling (0.855 vs 0.869); 0.02 collapsed too (0.860),
0.05 in 2 of 4 seeds (0.878), 0.1 in none (0.875, every late sample distinct); lr 0.001 instead 0.875. The 100-trial
learning test still reaches > 0.9 with 0.1.

State rebuilt from history: the policy learns from completed trials strictly in trial-number order, consuming a
trial only when every earlier one has finished. Its weights are therefore a function of (seed, the study's
results), identical after a resume, whatever the timing of workers.
"""

from __future__ import annotations

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from search_space import SearchSpace
from searchers.base import ArchSampler, SearchError, vector_of_params


class Policy(nn.Module):
    """An LSTM cell run once per decision; each step's input embeds the previous decision's token."""

    def __init__(self, space: SearchSpace, hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.space = space
        card = space.cardinalities
        self.offsets = np.concatenate([[0], np.cumsum(card)[:-1]]).astype(np.int64)
        self.hidden = hidden
        total = int(card.sum())
        self.embed = nn.Embedding(total + 2, hidden)  # + start token + "layer absent" token
        self.start_token, self.absent_token = total, total + 1
        self.cell = nn.LSTMCell(hidden, hidden)
        self.logits = nn.Linear(hidden, total)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.empty_like(p).uniform_(-0.1, 0.1, generator=gen))
        # which decision slots are expansions, and the depth decision that governs each
        self._slot: list[tuple[int, int] | None] = [None] * space.num_decisions  # (depth position, layer j)
        for at in space.layout.stages:
            for j in range(at.max_depth):
                self._slot[at.expand(j)] = (at.depth, j)

    def run(self, vector: np.ndarray | None = None,
            rng: np.random.Generator | None = None) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Sample a decision vector with `rng` (or score the given `vector`): returns the vector, the summed
        log-probability and the summed entropy of the emitted decisions."""
        space = self.space
        out = np.full(space.num_decisions, -1, dtype=np.int64)
        h = torch.zeros(1, self.hidden)
        c = torch.zeros(1, self.hidden)
        token = self.start_token
        logp = torch.zeros(())
        entropy = torch.zeros(())
        for k in range(space.num_decisions):
            slot = self._slot[k]
            if slot is not None and slot[1] >= space.decisions[slot[0]].choices[out[slot[0]]]:
                token = self.absent_token  # this layer does not exist at the chosen depth
                continue
            h, c = self.cell(self.embed(torch.tensor([token])), (h, c))
            lo = int(self.offsets[k])
            n = int(space.cardinalities[k])
            log_probs = torch.log_softmax(self.logits(h)[0, lo:lo + n], dim=0)
            if vector is None:
                assert rng is not None
                probs = log_probs.detach().exp().numpy().astype(np.float64)
                choice = int(min(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right"),
                                 n - 1))
            else:
                choice = int(vector[k])
            out[k] = choice
            logp = logp + log_probs[choice]
            entropy = entropy - (log_probs.exp() * log_probs).sum()
            token = lo + choice
        return out, logp, entropy


class ControllerSampler(ArchSampler):
    """`rl`: the policy samples trial n after learning from every finished trial before n (see module doc)."""

    name = "rl"

    def __init__(self, space: SearchSpace, seed: int = 0, hidden: int = 64, lr: float = 0.01,
                 baseline_decay: float = 0.9, entropy_weight: float = 0.1) -> None:
        super().__init__(space, seed)
        for key, v, ok in (("hidden", hidden, isinstance(hidden, int) and hidden >= 1),
                           ("lr", lr, isinstance(lr, (int, float)) and lr > 0),
                           ("baseline_decay", baseline_decay, isinstance(baseline_decay, float)
                            and 0 <= baseline_decay < 1),
                           ("entropy_weight", entropy_weight, isinstance(entropy_weight, (int, float))
                            and entropy_weight >= 0)):
            if not ok:
                raise SearchError(f"rl: bad {key} {v!r}")
        self.hidden, self.lr, self.decay, self.entropy_weight = hidden, float(lr), baseline_decay, entropy_weight
        self.reset()

    def reset(self) -> None:
        """Forget everything learned (a fresh policy from the seed)."""
        self.policy = Policy(self.space, self.hidden, self.seed)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.lr)
        self.consumed = 0  # trials 0..consumed-1 have been learned from (or skipped)
        self.baseline: float | None = None
        self.spread: float | None = None
        self.updates = 0

    def learn(self, vector: np.ndarray, reward: float) -> None:
        """One policy-gradient step on one evaluated architecture."""
        if self.baseline is None:
            self.baseline, self.spread = reward, 0.0
            return  # no advantage is defined for the first reward
        assert self.spread is not None
        deviation = reward - self.baseline
        self.spread = self.decay * self.spread + (1 - self.decay) * abs(deviation)
        advantage = float(np.clip(deviation / max(self.spread, 1e-8), -3.0, 3.0))
        self.baseline = self.decay * self.baseline + (1 - self.decay) * reward
        _, logp, entropy = self.policy.run(vector=vector)
        loss = -advantage * logp - self.entropy_weight * entropy
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.updates += 1

    def catch_up(self, study: optuna.Study, before: int) -> None:
        """Learn from finished trials in number order, up to the first unfinished one or `before`."""
        if study._is_multi_objective():
            raise SearchError("rl optimizes one objective (the reward); use tpe or nsga2 for a Pareto search")
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        if self.consumed > before:
            self.reset()  # asked about an earlier trial than we have learned past: rebuild
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        while self.consumed < before:
            t = trials.get(self.consumed)
            if t is None or not t.state.is_finished():
                break
            if t.state == TrialState.COMPLETE:
                violation = sum(max(0.0, v) for v in t.constraints.values())
                reward = sign * float(t.value) if violation <= 0 else -violation  # type: ignore[arg-type]
                self.learn(vector_of_params(self.space, t.params), reward)
            self.consumed += 1

    def propose(self, study: optuna.Study, trial: FrozenTrial) -> np.ndarray:
        self.catch_up(study, trial.number)
        with torch.no_grad():
            vec, _, _ = self.policy.run(rng=self.rng(trial.number, salt=2))
        return vec

    def state_fingerprint(self) -> str:
        """A digest of the policy weights (tests compare a resumed sampler against the original)."""
        import hashlib

        h = hashlib.sha256()
        for p in self.policy.state_dict().values():
            h.update(p.detach().numpy().tobytes())
        return h.hexdigest()[:16]
