"""Where each decision sits in a search space's decision vector.

A `SearchSpace` encodes an architecture as a vector of integer decision indices, stage after stage. A stage's
part of the vector is its stage-level decisions, in the order of `STAGE_DECISIONS`, then one expansion slot per
layer the stage can have (`max_depth` of them); the slots of layers absent at the chosen depth hold `ABSENT`.

This module owns that layout and nothing else: the positions. What the decisions choose is `spaces.py`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

STAGE_DECISIONS: tuple[str, ...] = ("depth", "width", "kernel", "se", "act")
"""The stage-level decisions, in vector order (each is also a field of `StageLayout`: its position)."""

ABSENT = -1
"""The value of an expansion slot whose layer the stage's depth leaves out."""


@dataclass(frozen=True, slots=True)
class StageLayout:
    """Positions of stage `stage`'s decisions in the vector: `depth`...`act`, then `max_depth` expansion slots
    from `first_expand`. Build with `StageLayout.at`."""

    stage: int
    start: int  # position of the stage's first decision
    depth: int
    width: int
    kernel: int
    se: int
    act: int
    first_expand: int  # position of layer 0's expansion slot
    max_depth: int  # number of expansion slots

    @classmethod
    def at(cls, stage: int, start: int, max_depth: int) -> StageLayout:
        """The layout of a stage whose decisions begin at position `start`."""
        positions = {name: start + i for i, name in enumerate(STAGE_DECISIONS)}
        return cls(stage=stage, start=start, **positions, first_expand=start + len(STAGE_DECISIONS),
                   max_depth=max_depth)

    @property
    def stop(self) -> int:
        """One past the stage's last position: where the next stage starts."""
        return self.first_expand + self.max_depth

    @property
    def span(self) -> slice:
        """All of the stage's positions."""
        return slice(self.start, self.stop)

    @property
    def stage_level(self) -> dict[str, int]:
        """Position of each stage-level decision, by name, in vector order."""
        return {name: getattr(self, name) for name in STAGE_DECISIONS}

    @property
    def expands(self) -> slice:
        """The expansion slots of every layer the stage can have."""
        return slice(self.first_expand, self.stop)

    def expand(self, layer: int) -> int:
        """Position of layer `layer`'s expansion slot."""
        return self.first_expand + layer

    def used_slots(self, depth: int) -> slice:
        """The expansion slots of the `depth` layers a stage of that depth has."""
        return slice(self.first_expand, self.first_expand + depth)

    def unused_slots(self, depth: int) -> slice:
        """The expansion slots a stage of depth `depth` leaves `ABSENT`."""
        return slice(self.first_expand + depth, self.stop)

    def used_mask(self, depths: np.ndarray) -> np.ndarray:
        """(n, max_depth) booleans: which expansion slots are used at each of the `depths` (shape (n,))."""
        return np.arange(self.max_depth)[None, :] < np.asarray(depths)[:, None]

    def pack(self, stage_level: Mapping[str, int], expands: Sequence[int]) -> list[int]:
        """The stage's part of the vector: the `stage_level` indices by name, then `expands` (one per present
        layer) padded with `ABSENT` to `max_depth` slots."""
        if len(expands) > self.max_depth:
            raise ValueError(f"stage {self.stage}: {len(expands)} expansions, at most {self.max_depth} slots")
        padding = [ABSENT] * (self.max_depth - len(expands))
        return [*(stage_level[name] for name in STAGE_DECISIONS), *expands, *padding]


@dataclass(frozen=True, slots=True)
class VectorLayout:
    """The layout of a whole decision vector: its stages' layouts, back to back. Build with `VectorLayout.of`."""

    stages: tuple[StageLayout, ...]
    size: int  # number of decisions (vector length)

    @classmethod
    def of(cls, max_depths: Sequence[int]) -> VectorLayout:
        """The layout of a space whose stages have at most `max_depths[i]` layers."""
        stages: list[StageLayout] = []
        start = 0
        for i, max_depth in enumerate(max_depths):
            stages.append(StageLayout.at(i, start, int(max_depth)))
            start = stages[-1].stop
        return cls(stages=tuple(stages), size=start)

