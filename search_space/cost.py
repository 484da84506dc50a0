"""Analytic parameter and mult-add counts, without building torch modules.

Counts match the built module exactly for parameters (BN γ/β included, buffers excluded) and match
`torch.utils.flop_counter.FlopCounterMode` conv+linear FLOPs / 2 for mult-adds (`madds`). Element-wise
ops (BN, activations, SE gating, residual adds, pooling) are not mult-adds, as in the papers.

`layer_cost` is the single statement of the formulas; `count` inlines the same sums for one whole
arch (the scalar hot path) and `count_encoded` vectorizes them over a space's decision vectors.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import numpy as np

from search_space.spec import Arch, Bneck, LayerConfig, se_channels

if TYPE_CHECKING:
    from search_space.spaces import LayerTables, SearchSpace

_TABLES: weakref.WeakKeyDictionary[SearchSpace, dict[int, LayerTables]] = weakref.WeakKeyDictionary()


def layer_cost(cfg: LayerConfig) -> tuple[int, int]:
    """(params, madds) of one layer as `Arch.layers()` describes it."""
    size, cin, e, out, k = cfg.size, cfg.cin, cfg.expand, cfg.out, cfg.kernel
    osize = cfg.out_size
    if cfg.kind == "stem":
        return cin * out * k * k + 2 * out, osize * osize * cin * out * k * k
    if cfg.kind == "ds":
        return (cin * k * k + 2 * cin + cin * out + 2 * out, osize * osize * cin * (k * k + out))
    if cfg.kind == "bneck":
        p = e * k * k + 2 * e + e * out + 2 * out
        m = osize * osize * e * (k * k + out)
        if e != cin:
            p += cin * e + 2 * e
            m += size * size * cin * e
        if cfg.se:
            sq = se_channels(e)
            p += 2 * e * sq + sq + e
            m += 2 * e * sq
        return p, m
    # head: [conv] -> pool -> [hidden] -> classifier
    p = m = 0
    conv, hidden = cfg.head_conv, cfg.head_hidden
    if conv:
        p += cin * conv + 2 * conv
        m += size * size * cin * conv
        cin = conv
    if hidden:
        p += cin * hidden + hidden
        m += cin * hidden
        cin = hidden
    return p + cin * cfg.num_classes + cfg.num_classes, m + cin * cfg.num_classes


def params(arch: Arch) -> int:
    """Trainable parameters of `build_model(arch)`."""
    return count(arch)[0]


def madds(arch: Arch, resolution: int | None = None) -> int:
    """Multiply-adds of one forward pass at `resolution` (default: the arch's)."""
    return count(arch, resolution)[1]


_SE_WIDTH: dict[int, int] = {}


def count(arch: Arch, resolution: int | None = None) -> tuple[int, int]:
    """(params, madds) in one pass over the blocks (no per-layer objects: this is the scalar hot path)."""
    size = arch.resolution if resolution is None else resolution
    stem = arch.stem
    kk = stem.kernel * stem.kernel
    cin = stem.out
    size = (size + stem.stride - 1) // stem.stride
    n_params = 3 * cin * kk + 2 * cin
    n_madds = size * size * 3 * cin * kk
    se_width = _SE_WIDTH
    for b in arch.blocks:
        out = b.out
        k = b.kernel
        in_area = size * size
        if b.stride != 1:  # strides are validated to be 1 or 2
            size = (size + 1) // 2
        if type(b) is Bneck:
            e = b.expand
            c = e * (k * k + out)  # depthwise + project weights; per output pixel MAdds
            n_params += c + 2 * (e + out)
            n_madds += size * size * c
            if e != cin:
                n_params += (cin + 2) * e
                n_madds += in_area * cin * e
            if b.se:
                sq = se_width.get(e)
                if sq is None:
                    sq = se_width[e] = se_channels(e)
                n_params += (2 * sq + 1) * e + sq
                n_madds += 2 * e * sq
        else:
            c = cin * (k * k + out)
            n_params += c + 2 * (cin + out)
            n_madds += size * size * c
        cin = out
    head = arch.head
    if head.conv is not None:
        n_params += (cin + 2) * head.conv
        n_madds += size * size * cin * head.conv
        cin = head.conv
    if head.hidden is not None:
        n_params += (cin + 1) * head.hidden
        n_madds += cin * head.hidden
        cin = head.hidden
    n_params += (cin + 1) * arch.num_classes
    n_madds += cin * arch.num_classes
    return n_params, n_madds


def count_encoded(space: SearchSpace, encoded: np.ndarray,
                  resolution: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(params, madds) arrays for many encoded architectures of `space` at once (numpy gathers)."""
    res = space.resolution if resolution is None else resolution
    per_space = _TABLES.setdefault(space, {})
    if res not in per_space:
        per_space[res] = space.tabulate(layer_cost, res, dtype=np.int64)
    totals = per_space[res].total(encoded)
    return totals[:, 0], totals[:, 1]
