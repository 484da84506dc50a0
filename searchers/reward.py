"""The MnasNet / MobileNetV3 and TuNAS rewards: accuracy traded against latency around a target.

Multiplicative (MnasNet eq. 2): `ACC(m) * (LAT(m) / TARGET) ** w` with `w = alpha` when LAT <= TARGET and `beta`
otherwise. Soft constraint: alpha = beta = -0.07 (MnasNet: doubling latency costs ~5% relative accuracy);
MobileNetV3 re-tuned it to -0.15 for small models, whose accuracy moves faster with latency. Hard constraint:
alpha = 0, beta = -1 (no credit for being faster, a steep penalty for being slower).

Absolute (TuNAS, Bender et al. 2020, eq. 3): `ACC(m) + w * |LAT(m) / TARGET - 1|`, w = alpha under the target and
beta over it; TuNAS uses w = -0.10 on both sides, so a net 10% off the target in either direction pays one point
of top-1. Unlike the multiplicative reward its penalty does not shrink with accuracy, which TuNAS found keeps a
REINFORCE controller near the target instead of drifting to tiny, fast nets while the shared weights are young.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = ("multiplicative", "absolute")
REWARD_PRESETS: dict[str, tuple[float, float, str]] = {  # name: (alpha, beta, kind)
    "mnasnet": (-0.07, -0.07, "multiplicative"),
    "mobilenet_v3": (-0.15, -0.15, "multiplicative"),
    "hard": (0.0, -1.0, "multiplicative"),
    "tunas": (-0.10, -0.10, "absolute"),
}


class RewardError(ValueError):
    """A reward setting a user gave is invalid (names the field)."""


@dataclass(frozen=True, slots=True)
class Reward:
    """`ACC * (LAT/TARGET)^w` (multiplicative) or `ACC + w * |LAT/TARGET - 1|` (absolute), w = alpha at or under
    the target, beta over it."""

    target_ms: float
    alpha: float = -0.07
    beta: float = -0.07
    kind: str = "multiplicative"

    def __post_init__(self) -> None:
        if not (isinstance(self.target_ms, (int, float)) and np.isfinite(self.target_ms) and self.target_ms > 0):
            raise RewardError(f"target_ms must be a positive number of milliseconds, got {self.target_ms!r}")
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v <= 0):
                raise RewardError(f"{name} must be a number <= 0 (latency may only lower the reward), got {v!r}")
        if self.kind not in KINDS:
            raise RewardError(f"reward kind {self.kind!r} not in {{{', '.join(KINDS)}}}")

    @classmethod
    def preset(cls, name: str, target_ms: float) -> Reward:
        """`mnasnet` (soft, -0.07), `mobilenet_v3` (soft, -0.15), `hard` (alpha 0, beta -1) or `tunas` (absolute,
        -0.10)."""
        if name not in REWARD_PRESETS:
            raise RewardError(f"unknown reward {name!r} (known: {', '.join(REWARD_PRESETS)})")
        alpha, beta, kind = REWARD_PRESETS[name]
        return cls(target_ms, alpha, beta, kind)

    def __call__(self, accuracy: float, latency_ms: float) -> float:
        return float(self.batch(accuracy, latency_ms))

    def batch(self, accuracy: Any, latency_ms: Any) -> np.ndarray:
        """The reward of many (accuracy, latency) pairs at once."""
        ratio = np.asarray(latency_ms, dtype=np.float64) / self.target_ms
        w = np.where(ratio <= 1.0, self.alpha, self.beta)
        acc = np.asarray(accuracy, dtype=np.float64)
        if self.kind == "absolute":
            return acc + w * np.abs(ratio - 1.0)
        return acc * ratio ** w

    def to_dict(self) -> dict[str, float | str]:
        return {"target_ms": self.target_ms, "alpha": self.alpha, "beta": self.beta, "kind": self.kind}
