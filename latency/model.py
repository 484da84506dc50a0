"""The deployed network's predicted latency: the one adapter between a latency table and what searches it.

A search may train at another resolution and class count than the table measured (proxy training on 32 px
Fashion-MNIST, deployment at 224 px and 1,000 classes). The latency is always the deployed network's: this
module owns "deployed at the table's resolution and class count" (`LatencyModel.deployed`), once, for the
searchers (every trial), NetAdapt (every proposal) and the exports of a run.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from latency.table import LatencyError
from search_space import Arch, SearchSpace


class LatencyPredictor(Protocol):
    """What `LatencyModel` needs of a latency table (`latency.LatencyTable` is one)."""

    @property
    def space(self) -> SearchSpace:
        """Read once, when the `LatencyModel` is made: the space the table measured (its decisions must be the
        search space's; its resolution and class count are the deployed network's)."""
        ...

    def predict_ms(self, arch: Arch) -> float:
        """Called by `LatencyModel.ms` (every trial), with `arch` at the table's resolution and class count."""
        ...

    def predict_ms_batch(self, encoded: np.ndarray) -> np.ndarray:
        """Called by `LatencyModel.ms_batch` (the `predictor` sampler, scoring many candidates at once), with
        encoded decision vectors of the search space, one per row; returns ms per row."""
        ...


class LatencyModel:
    """Predicted latency of architectures deployed as the table measured them. With `space`, the table must
    have been measured for a space of the same decisions (the batch path scores that space's encodings)."""

    def __init__(self, table: LatencyPredictor, space: SearchSpace | None = None) -> None:
        ts = table.space
        if space is not None and ([d.choices for d in ts.decisions] != [d.choices for d in space.decisions]
                                  or ts.stem != space.stem or ts.head != space.head
                                  or ts.width_mult != space.width_mult):
            raise LatencyError(f"the latency table was measured for space {ts.name} (width {ts.width_mult}), "
                               f"whose decisions differ from the search space {space.name} (width "
                               f"{space.width_mult}); build a table for it with `bneck latency build --space ...`")
        self.table, self.space = table, space
        self.resolution, self.num_classes = ts.resolution, ts.num_classes

    def deployed(self, arch: Arch) -> Arch:
        """`arch` as it is deployed and timed: at the table's resolution and class count."""
        return arch.replace(resolution=self.resolution, num_classes=self.num_classes)

    def ms(self, arch: Arch) -> float:
        return float(self.table.predict_ms(self.deployed(arch)))

    def ms_batch(self, encoded: np.ndarray) -> np.ndarray:
        if self.space is None:
            raise LatencyError("ms_batch scores a search space's encodings: make the LatencyModel with its space")
        return self.table.predict_ms_batch(encoded)
