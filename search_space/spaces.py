"""Factorized hierarchical search spaces (MnasNet §4) around a preset network.

A space is a fixed sequence of stages (residual groups). Per stage it decides the number of layers, the
output width (a ratio of the preset's width), and, tied across the stage as in MnasNet, the depthwise kernel,
SE and nonlinearity. Each layer picks its own expansion ratio: MobileNetV3's expansions vary inside a
stage (240, 200, 184, 184), so per-layer expansion is what makes the presets exact points of the space.

Every architecture of a space is a vector of decision indices (`encode`/`decode`), the representation that
samplers, controllers and vectorized predictors share; `search_space.encoding` owns where each decision sits
(`SearchSpace.layout`). Absent layers' expansion slots hold -1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search_space.encoding import ABSENT, STAGE_DECISIONS, VectorLayout
from search_space.presets import mobilenet_v3_large, mobilenet_v3_small
from search_space.spec import (
    Arch,
    Bneck,
    Head,
    LayerConfig,
    SpecError,
    Stem,
    make_divisible,
    out_size,
)


@dataclass(frozen=True, slots=True)
class Stage:
    """One residual group: `depths` layers of width `base_out`·ratio, the first with `stride`."""

    base_out: int
    stride: int
    depths: tuple[int, ...]
    width_ratios: tuple[float, ...]
    kernels: tuple[int, ...]
    se: tuple[bool, ...]
    acts: tuple[str, ...]

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(make_divisible(self.base_out * r, 8) for r in self.width_ratios)

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    @property
    def choices(self) -> dict[str, tuple[Any, ...]]:
        """The choices of each stage-level decision, by name (see `encoding.STAGE_DECISIONS`)."""
        return {"depth": self.depths, "width": self.width_ratios, "kernel": self.kernels, "se": self.se,
                "act": self.acts}


@dataclass(frozen=True, slots=True)
class Decision:
    """One categorical choice of the space; `choices` are the values, decisions are indices into them."""

    name: str
    choices: tuple[Any, ...]
    stage: int
    layer: int | None = None  # set for per-layer expansion decisions


class SearchSpace:
    """A MnasNet-style space. Resolution and class count are run settings, not searched."""

    def __init__(self, name: str, stem: Stem, stages: Sequence[Stage], expand_ratios: Sequence[float],
                 head: Head, num_classes: int = 1000, resolution: int = 224, width_mult: float = 1.0,
                 preset: Arch | None = None) -> None:
        if not stages:
            raise SpecError("a search space needs at least one stage")
        self.name = name
        self.stem = stem
        self.stages = tuple(stages)
        self.expand_ratios = tuple(float(r) for r in expand_ratios)
        self.head = head
        self.num_classes = num_classes
        self.resolution = resolution
        self.width_mult = width_mult
        self.preset = preset  # the network the space was built around (contained exactly), if any
        self.layout = VectorLayout.of([st.max_depth for st in self.stages])  # where each decision sits
        decisions: list[Decision] = []
        for i, st in enumerate(self.stages):
            decisions += [Decision(f"s{i}.{name}", st.choices[name], i) for name in STAGE_DECISIONS]
            decisions += [Decision(f"s{i}.l{j}.expand", self.expand_ratios, i, j) for j in range(st.max_depth)]
        self.decisions: tuple[Decision, ...] = tuple(decisions)
        self._index = {d.name: k for k, d in enumerate(self.decisions)}
        self.cardinalities = np.array([len(d.choices) for d in self.decisions], dtype=np.int64)

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, stages={len(self.stages)}, log10_size={self.log10_size:.1f})"

    # ---- size ---------------------------------------------------------------------------------------
    @property
    def num_decisions(self) -> int:
        return len(self.decisions)

    @property
    def size(self) -> int:
        """Number of distinct decision vectors (a few may build the same network: widths round to 8)."""
        total = 1
        n_exp = len(self.expand_ratios)
        for st in self.stages:
            per_stage = math.prod(len(values) for name, values in st.choices.items() if name != "depth")
            total *= per_stage * sum(n_exp**d for d in st.depths)
        return total

    @property
    def log10_size(self) -> float:
        return math.log10(self.size)

    # ---- decisions <-> architectures -----------------------------------------------------------------
    def decode(self, vector: Sequence[int] | np.ndarray) -> Arch:
        """The architecture of a decision vector (absent-layer slots are ignored)."""
        vec = [int(v) for v in vector]
        if len(vec) != self.num_decisions:
            raise SpecError(f"encoding has {len(vec)} entries, space {self.name} needs {self.num_decisions}")
        blocks: list[Bneck] = []
        cin = self.stem.out
        for st, at in zip(self.stages, self.layout.stages, strict=True):
            for pos in at.stage_level.values():
                n = len(self.decisions[pos].choices)
                if not 0 <= vec[pos] < n:
                    raise SpecError(f"{self.decisions[pos].name}: index {vec[pos]} not in [0, {n})")
            depth = st.depths[vec[at.depth]]
            out = st.widths[vec[at.width]]
            for j in range(depth):
                r = vec[at.expand(j)]
                if not 0 <= r < len(self.expand_ratios):
                    raise SpecError(f"{self.decisions[at.expand(j)].name}: index {r} not in "
                                    f"[0, {len(self.expand_ratios)})")
                blocks.append(Bneck(kernel=st.kernels[vec[at.kernel]],
                                    expand=make_divisible(cin * self.expand_ratios[r], 8), out=out,
                                    stride=st.stride if j == 0 else 1, se=st.se[vec[at.se]],
                                    act=st.acts[vec[at.act]]))  # type: ignore[arg-type]
                cin = out
        return Arch(stem=self.stem, blocks=tuple(blocks), head=self.head, num_classes=self.num_classes,
                    resolution=self.resolution)

    def encode(self, arch: Arch) -> np.ndarray:
        """The canonical decision vector of `arch` (lowest index wherever two choices coincide).

        Raises SpecError saying why when `arch` is not in the space. Resolution and class count are ignored.
        """
        if arch.stem != self.stem:
            raise SpecError(f"stem {arch.stem} differs from the space's {self.stem}")
        if arch.head != self.head:
            raise SpecError(f"head {arch.head} differs from the space's {self.head}")
        blocks = arch.blocks
        if not all(isinstance(b, Bneck) for b in blocks):
            raise SpecError("the space holds bneck blocks only")
        result = self._encode_from(blocks, 0, 0, self.stem.out)
        if result is None:
            raise SpecError(self._explain(blocks))
        return np.array(result, dtype=np.int64)

    def _encode_from(self, blocks: tuple[Any, ...], stage: int, pos: int, cin: int) -> list[int] | None:
        """Backtracking partition of `blocks[pos:]` into stages `stage...` (widths of adjacent stages can
        coincide, so the split is not always the obvious one); None if there is none."""
        if stage == len(self.stages):
            return [] if pos == len(blocks) else None
        st = self.stages[stage]
        for d_idx, depth in enumerate(st.depths):
            group = blocks[pos:pos + depth]
            if len(group) < depth:
                continue
            vec = self._encode_stage(stage, d_idx, group, cin, pos)
            if isinstance(vec, str):
                continue
            rest = self._encode_from(blocks, stage + 1, pos + depth, group[-1].out)
            if rest is not None:
                return [*vec, *rest]
        return None

    def _explain(self, blocks: tuple[Any, ...]) -> str:
        """Why `blocks` is not in the space, read against its natural residual groups (a new group at every
        stride 2 or width change), which is how a user reads an architecture."""
        starts, groups = residual_groups(self.stem.out, blocks)
        if len(groups) != len(self.stages):
            return f"{len(groups)} residual groups (a new one at every stride 2 or width change), the space has " \
                   f"{len(self.stages)} stages"
        cin = self.stem.out
        for stage, (st, group, pos) in enumerate(zip(self.stages, groups, starts, strict=True)):
            if len(group) not in st.depths:
                return f"block {pos}: stage {stage} has {len(group)} blocks, allowed depths " \
                       f"{'/'.join(map(str, st.depths))}"
            vec = self._encode_stage(stage, st.depths.index(len(group)), tuple(group), cin, pos)
            if isinstance(vec, str):
                return vec
            cin = group[-1].out
        return "no split of the blocks into the space's stages fits"  # pragma: no cover - encode found none

    def _encode_stage(self, stage: int, depth_index: int, group: tuple[Bneck, ...], cin: int,
                      pos: int) -> list[int] | str:
        """Stage `stage`'s part of the decision vector for `group` (its depth choice `depth_index`, its first
        block at `pos`, input width `cin`), or why `group` does not fit the stage."""
        st = self.stages[stage]
        first = group[0]
        where = f"block {pos} (stage {stage})"
        if first.out not in st.widths:
            return f"{where}: out {first.out} not in {set(st.widths)}"
        for choice, values, label in ((first.kernel, st.kernels, "kernel"), (first.se, st.se, "se"),
                                      (first.act, st.acts, "act")):
            if choice not in values:
                return f"{where}: {label} {choice} not in {set(values)}"
        expands: list[int] = []
        for j, b in enumerate(group):
            w = f"block {pos + j} (stage {stage})"
            if b.out != first.out or b.kernel != first.kernel or b.se != first.se or b.act != first.act:
                return f"{w}: out/kernel/se/act must match the stage's first block"
            if b.stride != (st.stride if j == 0 else 1):
                return f"{w}: stride {b.stride} != {st.stride if j == 0 else 1}"
            layer_in = cin if j == 0 else first.out
            for r_idx, r in enumerate(self.expand_ratios):
                if make_divisible(layer_in * r, 8) == b.expand:
                    expands.append(r_idx)
                    break
            else:
                return f"{w}: expand {b.expand} is no ratio in {self.expand_ratios} of input width {layer_in}"
        return self.layout.stages[stage].pack(
            {"depth": depth_index, "width": st.widths.index(first.out), "kernel": st.kernels.index(first.kernel),
             "se": st.se.index(first.se), "act": st.acts.index(first.act)}, expands)

    def contains(self, arch: Arch) -> bool:
        try:
            self.encode(arch)
        except SpecError:
            return False
        return True

    # ---- sampling -----------------------------------------------------------------------------------
    def sample_encoded(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        """`n` uniform decision vectors, shape (n, num_decisions); absent-layer slots are -1."""
        vecs = np.floor(rng.random((n, self.num_decisions)) * self.cardinalities).astype(np.int64)
        for st, at in zip(self.stages, self.layout.stages, strict=True):
            depth = np.asarray(st.depths)[vecs[:, at.depth]]
            vecs[:, at.expands][~at.used_mask(depth)] = ABSENT
        return vecs

    def sample(self, rng: np.random.Generator | int) -> Arch:
        """One architecture uniformly over decision vectors; `rng` may be a seed."""
        gen = np.random.default_rng(rng) if isinstance(rng, int) else rng
        return self.decode(self.sample_encoded(gen, 1)[0])

    def mutate(self, arch: Arch, rng: np.random.Generator | int) -> Arch:
        """Change one active decision of `arch` to another value (Real et al. 2019); never returns `arch`."""
        gen = np.random.default_rng(rng) if isinstance(rng, int) else rng
        vec = self.encode(arch)
        for _ in range(100):
            new = vec.copy()
            active = np.flatnonzero(new >= 0)
            k = int(active[gen.integers(len(active))])
            n = int(self.cardinalities[k])
            if n < 2:
                continue
            new[k] = (new[k] + 1 + gen.integers(n - 1)) % n
            self._fill_slots(new, gen)
            child = self.decode(new)
            if child != arch:
                return child
        raise SpecError(f"space {self.name}: no mutation of this architecture changes it")

    def mutate_encoded(self, rng: np.random.Generator, encoded: np.ndarray) -> np.ndarray:
        """One mutation per row of `encoded` (the vectorized `mutate`): one active decision with two or more
        choices moves to another value; a depth change samples expansions for new layers and blanks removed
        ones. Returns a new array; rows can still decode to their parent when widths round together."""
        vecs = np.array(encoded, dtype=np.int64, copy=True, ndmin=2)
        n = len(vecs)
        mutable = (vecs >= 0) & (self.cardinalities >= 2)[None, :]
        pick = np.where(mutable, rng.random(vecs.shape), -1.0).argmax(axis=1)
        card = self.cardinalities[pick]
        rows = np.arange(n)
        vecs[rows, pick] = (vecs[rows, pick] + 1 + np.floor(rng.random(n) * (card - 1)).astype(np.int64)) % card
        n_exp = len(self.expand_ratios)
        fresh = np.floor(rng.random(vecs.shape) * n_exp).astype(np.int64)
        for st, at in zip(self.stages, self.layout.stages, strict=True):
            depth = np.asarray(st.depths)[vecs[:, at.depth]]
            slots = vecs[:, at.expands]
            used = at.used_mask(depth)
            slots[used & (slots < 0)] = fresh[:, at.expands][used & (slots < 0)]
            slots[~used] = ABSENT
        return vecs

    def _fill_slots(self, vec: np.ndarray, gen: np.random.Generator) -> None:
        """After a depth change: sample expansions for new layers, blank slots of removed ones."""
        n_exp = len(self.expand_ratios)
        for st, at in zip(self.stages, self.layout.stages, strict=True):
            depth = st.depths[vec[at.depth]]
            for j in range(at.max_depth):
                slot = at.expand(j)
                if j < depth and vec[slot] < 0:
                    vec[slot] = gen.integers(n_exp)
                elif j >= depth:
                    vec[slot] = ABSENT

    def suggest(self, trial: Any) -> Arch:
        """Define-by-run sampling through an Optuna trial; layer expansions are conditional on depth."""
        vec = np.full(self.num_decisions, ABSENT, dtype=np.int64)
        for st, at in zip(self.stages, self.layout.stages, strict=True):
            for pos in at.stage_level.values():
                d = self.decisions[pos]
                vec[pos] = d.choices.index(trial.suggest_categorical(d.name, list(d.choices)))
            for j in range(st.depths[vec[at.depth]]):
                d = self.decisions[at.expand(j)]
                vec[at.expand(j)] = d.choices.index(trial.suggest_categorical(d.name, list(d.choices)))
        return self.decode(vec)

    # ---- what the latency table must measure ----------------------------------------------------------
    def layer_configs(self, resolution: int | None = None) -> list[LayerConfig]:
        """Every distinct latency-relevant layer any architecture of the space has at `resolution`."""
        size = self.resolution if resolution is None else resolution
        configs = {LayerConfig.of_stem(self.stem, size)}
        size = out_size(size, self.stem.stride)
        in_widths: set[int] = {self.stem.out}
        for st in self.stages:
            outs = set(st.widths)
            for out in outs:
                for k in st.kernels:
                    for se in st.se:
                        for act in st.acts:
                            for cin, stride, sz in [(c, st.stride, size) for c in in_widths] + (
                                    [(out, 1, out_size(size, st.stride))] if st.max_depth > 1 else []):
                                for r in self.expand_ratios:
                                    block = Bneck(k, make_divisible(cin * r, 8), out, stride, se, act)
                                    configs.add(LayerConfig.of_block(block, sz, cin))
            size = out_size(size, st.stride)
            in_widths = outs
        for cin in in_widths:
            configs.add(LayerConfig.of_head(self.head, size, cin, self.num_classes))
        return sorted(configs, key=lambda c: (c.kind != "stem", c.kind == "head", -c.size, c.cin, c.out,
                                              c.expand, c.kernel, c.stride, c.se, c.act))

    def tabulate(self, fn: Callable[[LayerConfig], Any], resolution: int | None = None,
                 dtype: Any = np.float64) -> LayerTables:
        """Tabulate a per-layer quantity (cost, latency, ...) so it sums over many encodings at once.

        `fn(layer_config)` returns a number or a tuple of numbers; `LayerTables.total(encoded)` then returns
        the per-architecture sums, shape (n,) or (n, len(tuple)), with numpy gathers only.
        """
        size = self.resolution if resolution is None else resolution
        stem = np.asarray(fn(LayerConfig.of_stem(self.stem, size)), dtype)
        size = out_size(size, self.stem.stride)
        prev_widths: tuple[int, ...] = (self.stem.out,)
        first, rest = [], []
        for st in self.stages:
            osize = out_size(size, st.stride)
            grid = [(k, se, act, r) for k in st.kernels for se in st.se for act in st.acts for r in self.expand_ratios]
            shape = (len(st.kernels), len(st.se), len(st.acts), len(self.expand_ratios), *stem.shape)

            def table(cin: int, out: int, stride: int, sz: int, grid: list = grid, shape: tuple = shape) -> np.ndarray:
                vals = [fn(LayerConfig.of_block(Bneck(k, make_divisible(cin * r, 8), out, stride, se, act), sz, cin))
                        for k, se, act, r in grid]
                return np.asarray(vals, dtype).reshape(shape)

            first.append(np.stack([np.stack([table(cin, out, st.stride, size) for out in st.widths])
                                   for cin in prev_widths]))
            rest.append(np.stack([table(out, out, 1, osize) for out in st.widths]) if st.max_depth > 1 else None)
            size, prev_widths = osize, st.widths
        head = np.stack([np.asarray(fn(LayerConfig.of_head(self.head, size, cin, self.num_classes)), dtype)
                         for cin in prev_widths])
        return LayerTables(self, stem, first, rest, head)

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the space (`from_dict`), plus its size for people reading it."""
        return {"name": self.name, "num_classes": self.num_classes, "resolution": self.resolution,
                "width_mult": self.width_mult, "log10_size": round(self.log10_size, 2),
                "num_decisions": self.num_decisions, "expand_ratios": list(self.expand_ratios),
                "stem": {"out": self.stem.out, "kernel": self.stem.kernel,
                         "stride": self.stem.stride, "act": self.stem.act},
                "head": {"conv": self.head.conv, "conv_act": self.head.conv_act, "hidden": self.head.hidden,
                         "hidden_act": self.head.hidden_act, "dropout": self.head.dropout},
                # The preset's key stays "seed" (the attribute's old name): latency tables (meta space.definition),
                # kit manifests and space .json files store this dict, and they must keep loading unchanged.
                "seed": self.preset.to_string() if self.preset is not None else None,
                "stages": [{"base_out": st.base_out, "stride": st.stride, "depths": list(st.depths),
                            "width_ratios": list(st.width_ratios), "widths": list(st.widths),
                            "kernels": list(st.kernels), "se": list(st.se), "acts": list(st.acts)}
                           for st in self.stages]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpace:
        try:
            stages = [Stage(base_out=st["base_out"], stride=st["stride"], depths=tuple(st["depths"]),
                            width_ratios=tuple(st["width_ratios"]), kernels=tuple(st["kernels"]), se=tuple(st["se"]),
                            acts=tuple(st["acts"])) for st in d["stages"]]
            return cls(d["name"], Stem(**d["stem"]), stages, d["expand_ratios"], Head(**d["head"]), d["num_classes"],
                       d["resolution"], d.get("width_mult", 1.0),  # "seed" is the preset's key (see to_dict)
                       Arch.parse(d["seed"]).replace(resolution=d["resolution"], num_classes=d["num_classes"])
                       if d.get("seed") else None)
        except (KeyError, TypeError) as exc:
            raise SpecError(f"not a search space definition (missing or bad {exc})") from None


def residual_groups(stem_out: int, blocks: Sequence[Any]) -> tuple[list[int], list[list[Any]]]:
    """Split blocks into residual groups (a new group at every stride 2 or width change): the stages a
    reader sees in a MobileNet table. Returns each group's first block index and the groups."""
    starts: list[int] = []
    groups: list[list[Any]] = []
    cin = stem_out
    for i, b in enumerate(blocks):
        if not groups or b.stride != 1 or b.out != cin:
            starts.append(i)
            groups.append([])
        groups[-1].append(b)
        cin = b.out
    return starts, groups


class LayerTables:
    """Per-slot lookup tables of a per-layer quantity over a space (see `SearchSpace.tabulate`).

    Each slot's table is flattened to (cells, outputs) so a batch costs one integer index computation and one
    `take` per layer slot.
    """

    def __init__(self, space: SearchSpace, stem: np.ndarray, first: list[np.ndarray],
                 rest: list[np.ndarray | None], head: np.ndarray) -> None:
        self.space, self.stem, self.head = space, stem, head
        self.n_out = int(np.prod(stem.shape)) if stem.shape else 1
        self.first = [t.reshape(-1, self.n_out) for t in first]
        # a trailing zero row is where absent layers (expansion slot -1) point
        self.rest = [np.vstack([t.reshape(-1, self.n_out), np.zeros((1, self.n_out), t.dtype)]) if t is not None
                     else None for t in rest]
        self.head_flat = head.reshape(-1, self.n_out)
        self.shapes = [t.shape[:6] for t in first]

    def total(self, encoded: np.ndarray) -> np.ndarray:
        """Sum of the quantity over every layer of each encoded architecture (rows of `encoded`)."""
        enc = np.asarray(encoded, dtype=np.int64)
        if enc.ndim == 1:
            enc = enc[None, :]
        if enc.shape[1] != self.space.num_decisions:
            raise SpecError(f"encodings have {enc.shape[1]} columns, space {self.space.name} needs "
                            f"{self.space.num_decisions}")
        cols = np.ascontiguousarray(enc.T)
        n = cols.shape[1]
        total = np.empty((n, self.n_out), dtype=self.stem.dtype)
        total[:] = self.stem.reshape(1, -1)
        prev = np.zeros(n, dtype=np.int64)
        for i, at in enumerate(self.space.layout.stages):
            _, n_w, n_k, n_se, n_act, n_r = self.shapes[i]
            cell = (((cols[at.width] * n_k + cols[at.kernel]) * n_se + cols[at.se]) * n_act + cols[at.act]) * n_r
            total += self.first[i].take(prev * (n_w * n_k * n_se * n_act * n_r) + cell + cols[at.expand(0)], axis=0)
            rest = self.rest[i]
            for j in range(1, at.max_depth):
                r = cols[at.expand(j)]
                total += rest.take(np.where(r >= 0, cell + r, len(rest) - 1), axis=0)  # type: ignore[union-attr,arg-type]
            prev = cols[at.width]
        total += self.head_flat.take(prev, axis=0)
        return total.reshape((n, *self.stem.shape))


def space_around(name: str, preset: Arch, expand_ratios: Sequence[float], *,
                 width_ratios: Sequence[float] = (0.75, 1.0, 1.25), kernels: Sequence[int] = (3, 5, 7),
                 depth_delta: int = 1, num_classes: int = 1000, resolution: int = 224,
                 width_mult: float = 1.0) -> SearchSpace:
    """A space whose stages are the preset's residual groups (a new stage at every stride 2 or width change),
    with per-stage depth preset±`depth_delta`, width ratios, kernels, SE on/off and ReLU/h-swish."""
    if not all(isinstance(b, Bneck) for b in preset.blocks):
        raise SpecError("space_around needs a seed made of bneck blocks")
    _, groups = residual_groups(preset.stem.out, preset.blocks)
    stages = []
    for g in groups:
        n = len(g)
        depths = tuple(range(max(1, n - depth_delta), n + depth_delta + 1))
        stages.append(Stage(base_out=g[0].out, stride=g[0].stride, depths=depths,
                            width_ratios=tuple(width_ratios), kernels=tuple(kernels), se=(False, True),
                            acts=("relu", "hswish")))
    return SearchSpace(name, preset.stem, stages, expand_ratios, preset.head, num_classes, resolution, width_mult,
                       preset.replace(num_classes=num_classes, resolution=resolution))


# Expansion ratios: MnasNet's {3, 6}, 1 for the first stage, and the ratios MobileNetV3's NetAdapt step left
# in the published models (Large: 200/80 = 2.5, 184/80 = 2.3, 64/16 = 4; Small: 72/16 = 4.5, 88/24 = 3.67).
V3_LARGE_RATIOS = (1.0, 2.3, 2.5, 3.0, 4.0, 6.0)
V3_SMALL_RATIOS = (1.0, 3.0, 3.67, 4.0, 4.5, 6.0)


def mobilenet_v3_large_space(width_mult: float = 1.0, num_classes: int = 1000,
                             resolution: int = 224) -> SearchSpace:
    """The MnasNet-style space around MobileNetV3-Large (contains it exactly)."""
    preset = mobilenet_v3_large(width_mult, resolution, num_classes)
    return space_around("mobilenet_v3_large_space", preset, V3_LARGE_RATIOS, num_classes=num_classes,
                        resolution=resolution, width_mult=width_mult)


def mobilenet_v3_small_space(width_mult: float = 1.0, num_classes: int = 1000,
                             resolution: int = 224) -> SearchSpace:
    """The MnasNet-style space around MobileNetV3-Small (contains it exactly)."""
    preset = mobilenet_v3_small(width_mult, resolution, num_classes)
    return space_around("mobilenet_v3_small_space", preset, V3_SMALL_RATIOS, num_classes=num_classes,
                        resolution=resolution, width_mult=width_mult)


SPACES: dict[str, Callable[..., SearchSpace]] = {
    "mobilenet_v3_large_space": mobilenet_v3_large_space,
    "mobilenet_v3_small_space": mobilenet_v3_small_space,
}


def get_space(name: str, width_mult: float = 1.0, num_classes: int = 1000, resolution: int = 224) -> SearchSpace:
    """A space by name; unknown names raise a SpecError listing the known ones."""
    if name not in SPACES:
        raise SpecError(f"unknown space {name!r} (known: {', '.join(SPACES)})")
    return SPACES[name](width_mult=width_mult, num_classes=num_classes, resolution=resolution)


def load_space(name_or_file: str, width_mult: float = 1.0, num_classes: int | None = None,
               resolution: int = 224) -> SearchSpace:
    """A registered space by name, or a `SearchSpace.to_dict()` JSON file, at a resolution and class count;
    `num_classes` None keeps the file's (named spaces: 1000, the deployed ImageNet head). SpecError names the
    file or the known names."""
    if name_or_file in SPACES:
        return get_space(name_or_file, width_mult, 1000 if num_classes is None else num_classes, resolution)
    if not name_or_file.endswith(".json"):
        raise SpecError(f"unknown space {name_or_file!r} (known: {', '.join(SPACES)}, or a .json space definition)")
    try:
        doc = json.loads(Path(name_or_file).read_text())
    except (OSError, ValueError) as exc:
        raise SpecError(f"space: cannot read {name_or_file} as JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise SpecError(f"space: {name_or_file} is not a search space definition")
    classes = doc.get("num_classes") if num_classes is None else num_classes
    return SearchSpace.from_dict({**doc, "num_classes": classes, "resolution": resolution})
