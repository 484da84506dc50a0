"""The MnasNet / MobileNetV3 reward: accuracy traded against latency around a target.

`ACC(m) * (LAT(m) / TARGET) ** w` with `w = alpha` when LAT <= TARGET and `beta` otherwise (MnasNet eq. 2).
Soft constraint: alpha = beta = -0.07 (MnasNet: doubling latency costs ~5% relative accuracy); MobileNetV3
re-tuned it to -0.15 for small models, whose accuracy moves faster with latency. Hard constraint: alpha = 0,
beta = -1 (no credit for being faster, a steep penalty for being slower).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

REWARD_PRESETS: dict[str, tuple[float, float]] = {
    "mnasnet": (-0.07, -0.07),
    "mobilenet_v3": (-0.15, -0.15),
    "hard": (0.0, -1.0),
}


class RewardError(ValueError):
    """A reward setting a user gave is invalid (names the field)."""


@dataclass(frozen=True, slots=True)
class Reward:
    """`ACC * (LAT/TARGET)^w`, w = alpha at or under the target, beta over it."""

    target_ms: float
    alpha: float = -0.07
    beta: float = -0.07

    def __post_init__(self) -> None:
        if not (isinstance(self.target_ms, (int, float)) and np.isfinite(self.target_ms) and self.target_ms > 0):
            raise RewardError(f"target_ms must be a positive number of milliseconds, got {self.target_ms!r}")
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v <= 0):
                raise RewardError(f"{name} must be a number <= 0 (latency may only lower the reward), got {v!r}")

    @classmethod
    def preset(cls, name: str, target_ms: float) -> Reward:
        """`mnasnet` (soft, -0.07), `mobilenet_v3` (soft, -0.15) or `hard` (alpha 0, beta -1)."""
        if name not in REWARD_PRESETS:
            raise RewardError(f"unknown reward {name!r} (known: {', '.join(REWARD_PRESETS)})")
        alpha, beta = REWARD_PRESETS[name]
        return cls(target_ms, alpha, beta)

    def __call__(self, accuracy: float, latency_ms: float) -> float:
        ratio = latency_ms / self.target_ms
        return float(accuracy * ratio ** (self.alpha if ratio <= 1.0 else self.beta))

    def batch(self, accuracy: Any, latency_ms: Any) -> np.ndarray:
        """The reward of many (accuracy, latency) pairs at once."""
        ratio = np.asarray(latency_ms, dtype=np.float64) / self.target_ms
        return np.asarray(accuracy, dtype=np.float64) * ratio ** np.where(ratio <= 1.0, self.alpha, self.beta)

    def to_dict(self) -> dict[str, float]:
        return {"target_ms": self.target_ms, "alpha": self.alpha, "beta": self.beta}
