"""Weight surgery for NetAdapt (Yang et al. 2018, as used for MobileNetV3): shrink a width, keep the weights.

Two moves, each returning a NEW `Arch` (an ordinary one: widths need not lie on any space's grid) and a NEW
module made by `build_model(new_arch)` whose state dict is filled from the old module, so the result is
exactly what the builder makes and loads strictly anywhere (`export_arch(..., weights=...)`). The input
module is never modified.

* `prune_expand` shrinks one bneck block's expansion (hidden) width, keeping the hidden channels whose
  1x1 expand-conv rows have the largest L2 norm. The expand conv + BN, depthwise conv + BN, SE and the
  project conv's input channels follow. A block whose expansion equals its input width has no expand conv:
  its hidden width *is* its input width, so only `prune_group` can shrink it.
* `prune_group` shrinks the width shared by a residual group (a block plus the stride-1 same-width
  bnecks that add their outputs to it, `residual_group_of`). One channel set is chosen for the whole group
  by the summed L2 norm of every producer's output rows (each block's project conv, a ds block's
  pointwise conv, and the stem conv when block 0 adds to the stem's output). Producers lose those output
  channels and every consumer (blocks inside the group, the next block, or the head) the same input
  channels; a consuming bneck without an expand conv loses them from its hidden width too.

When the SE squeeze width `se_channels(expand)` changes, the squeeze units kept are those whose reduce-conv
rows (restricted to the kept hidden channels) have the largest L2 norm. Channels keep their original order;
ties in norm go to the lower index.

A move that would change the network's topology is refused with a `SpecError` instead of silently changing
the function: the builder drops the expand conv whenever expand == input width and adds a residual whenever
stride == 1 and input width == output width, so e.g. shrinking an expansion to the input width, or a group
to the width feeding it, would build a different network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from search_space.builder import BneckNet, build_model
from search_space.spec import Arch, Bneck, SpecError, se_channels

NORM_KINDS = ("expand", "squeeze", "output", "group")

# module prefix -> (row selection, column selection); None keeps every index along that dim
_Plan = dict[str, tuple[np.ndarray | None, np.ndarray | None]]


# ---- structure ------------------------------------------------------------------------------------------

def _is_residual(arch: Arch, i: int) -> bool:
    """Whether the builder adds block i's input to its output (only bneck blocks have a residual;
    `Arch.has_residual` answers for any block type)."""
    return isinstance(arch.blocks[i], Bneck) and arch.has_residual(i)


def _has_expand_conv(arch: Arch, i: int) -> bool:
    b = arch.blocks[i]
    return isinstance(b, Bneck) and b.expand != arch.in_channels[i]


def _check_index(arch: Arch, block: Any) -> int:
    n = len(arch.blocks)
    if isinstance(block, bool) or not isinstance(block, int | np.integer):
        raise SpecError(f"block index must be an integer, got {block!r}")
    if not 0 <= int(block) < n:
        raise SpecError(f"block index {block} out of range: the architecture has {n} blocks (0..{n - 1})")
    return int(block)


def residual_group_of(arch: Arch, block: int) -> list[int]:
    """Indices of the residual group holding `block`: the block that produces a width plus the following
    stride-1 same-width bneck blocks that add their outputs to it.

    Same grouping as `search_space.spaces.residual_groups` for bneck-only networks (a new group at every
    stride 2 or width change). Unlike it, a stride-1 same-width ds block starts a new group (ds blocks
    have no residual). Block 0 may add to the stem's output (V3-Large); the stem is not a block, so such a
    group starts at 0 and `prune_group` treats the stem as one more producer.
    """
    i = _check_index(arch, block)
    start = i
    while start > 0 and _is_residual(arch, start):
        start -= 1
    end = i
    while end + 1 < len(arch.blocks) and _is_residual(arch, end + 1):
        end += 1
    return list(range(start, end + 1))


def _topology(arch: Arch) -> list[tuple[bool, bool]]:
    return [(_is_residual(arch, i), _has_expand_conv(arch, i)) for i in range(len(arch.blocks))]


def _check_topology(old: Arch, new: Arch, what: str) -> None:
    for i, (a, b) in enumerate(zip(_topology(old), _topology(new), strict=True)):
        if a[0] != b[0]:
            cin, out = new.in_channels[i], new.blocks[i].out
            raise SpecError(f"{what} would {'remove' if a[0] else 'add'} block {i}'s residual connection "
                            f"(input width {cin}, output width {out}, stride {new.blocks[i].stride}), "
                            "changing the network's topology; choose another width")
        if a[1] != b[1]:
            raise SpecError(f"{what} would make block {i}'s expansion ({new.blocks[i].expand}) equal its input "
                            f"width ({new.in_channels[i]}), and the builder drops the expand conv then; "
                            "choose another width")


def _check_keep(keep: Any, current: int, what: str) -> int:
    if isinstance(keep, bool) or not isinstance(keep, int | np.integer):
        raise SpecError(f"keep must be an integer, got {keep!r}")
    keep = int(keep)
    if keep > current:
        raise SpecError(f"keep {keep} is larger than the current {what} ({current}): surgery only shrinks")
    if keep != current and (keep < 8 or keep % 8):
        raise SpecError(f"keep {keep} must be a positive multiple of 8 (or the current {what}, {current})")
    return keep


# ---- weights --------------------------------------------------------------------------------------------

def _state(model: nn.Module, arch: Arch) -> dict[str, torch.Tensor]:
    """The model's state dict, checked against what `build_model(arch)` holds."""
    model_arch = getattr(model, "arch", None)
    if isinstance(model, BneckNet) and model_arch != arch:
        raise SpecError("model was built from a different architecture than `arch` "
                        f"({model_arch.arch_id if isinstance(model_arch, Arch) else model_arch!r} vs {arch.arch_id})")
    state = model.state_dict()
    with torch.device("meta"):
        expected = BneckNet(arch).state_dict()
    for key, ref in expected.items():
        if key not in state:
            raise SpecError(f"model does not match the architecture: missing {key!r}")
        if tuple(state[key].shape) != tuple(ref.shape):
            raise SpecError(f"model does not match the architecture: {key!r} has shape {tuple(state[key].shape)}, "
                            f"expected {tuple(ref.shape)}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise SpecError(f"model does not match the architecture: unexpected {extra[0]!r}")
    return state


def _row_norms(weight: torch.Tensor, cols: np.ndarray | None = None) -> np.ndarray:
    w = weight.detach().to("cpu", torch.float64)
    if cols is not None:
        w = w[:, torch.as_tensor(cols, dtype=torch.long)]
    return w.reshape(w.shape[0], -1).norm(dim=1).numpy()


def _top(norms: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest norms in ascending index order (ties: lower index first)."""
    order = np.argsort(-np.asarray(norms, dtype=np.float64), kind="stable")[:k]
    return np.sort(order).astype(np.int64)


def _output_prefix(arch: Arch, i: int) -> str:
    return f"blocks.{i}.project.conv" if isinstance(arch.blocks[i], Bneck) else f"blocks.{i}.pointwise.conv"


def channel_norms(model: nn.Module, arch: Arch, block: int, kind: str = "expand") -> np.ndarray:
    """Per-channel L2 norms (float64) that the surgery ranks channels by.

    kind: 'expand' (hidden channels: rows of the expand conv), 'squeeze' (SE squeeze units: rows of the
    reduce conv), 'output' (output channels of the block: rows of its project / pointwise conv), 'group'
    (the group width: 'output' summed over the residual group, plus the stem conv's rows when block 0 adds
    to the stem's output).
    """
    if kind not in NORM_KINDS:
        raise SpecError(f"kind {kind!r} not in {{{','.join(NORM_KINDS)}}}")
    i = _check_index(arch, block)
    state = _state(model, arch)
    b = arch.blocks[i]
    if kind == "output":
        return _row_norms(state[_output_prefix(arch, i) + ".weight"])
    if kind == "group":
        return _group_norms(state, arch, residual_group_of(arch, i))
    if not isinstance(b, Bneck):
        raise SpecError(f"block {i} is a depthwise-separable block: it has no expansion or SE")
    if kind == "expand":
        if not _has_expand_conv(arch, i):
            raise SpecError(f"block {i} has no expand conv (expansion {b.expand} equals its input width)")
        return _row_norms(state[f"blocks.{i}.expand.conv.weight"])
    if not b.se:
        raise SpecError(f"block {i} has no SE module")
    return _row_norms(state[f"blocks.{i}.se.reduce.weight"])


def _group_norms(state: dict[str, torch.Tensor], arch: Arch, group: list[int]) -> np.ndarray:
    total = np.zeros(arch.blocks[group[0]].out)
    for j in group:
        total += _row_norms(state[_output_prefix(arch, j) + ".weight"])
    if _is_residual(arch, group[0]):  # block 0 adds to the stem's output: the stem produces the width too
        total += _row_norms(state["stem.conv.weight"])
    return total


def _plan_bneck(plan: _Plan, state: dict[str, torch.Tensor], old: Arch, i: int, cin_idx: np.ndarray | None,
                hid_idx: np.ndarray | None, out_idx: np.ndarray | None) -> int:
    """Add block i's selections to `plan`; returns the block's new hidden width."""
    b = old.blocks[i]
    assert isinstance(b, Bneck)
    p = f"blocks.{i}"
    if _has_expand_conv(old, i):
        plan[f"{p}.expand.conv"] = (hid_idx, cin_idx)
        plan[f"{p}.expand.bn"] = (hid_idx, None)
    else:  # the hidden channels are the input channels
        hid_idx = cin_idx
    new_e = b.expand if hid_idx is None else len(hid_idx)
    plan[f"{p}.depthwise.conv"] = (hid_idx, None)
    plan[f"{p}.depthwise.bn"] = (hid_idx, None)
    if b.se:
        old_sq, new_sq = se_channels(b.expand), se_channels(new_e)
        if new_sq > old_sq:  # pragma: no cover - se_channels is monotone
            raise SpecError(f"block {i}: SE squeeze width would grow from {old_sq} to {new_sq}")
        sq_idx = None
        if new_sq != old_sq:
            sq_idx = _top(_row_norms(state[f"{p}.se.reduce.weight"], hid_idx), new_sq)
        plan[f"{p}.se.reduce"] = (sq_idx, hid_idx)
        plan[f"{p}.se.expand"] = (hid_idx, sq_idx)
    plan[f"{p}.project.conv"] = (out_idx, hid_idx)
    plan[f"{p}.project.bn"] = (out_idx, None)
    return new_e


def _rebuild(new_arch: Arch, model: nn.Module, state: dict[str, torch.Tensor],
             plan: _Plan) -> nn.Module:
    """`build_model(new_arch)` loaded with `state` cut down by `plan` (prefix -> (rows, cols))."""
    new = build_model(new_arch)
    target = new.state_dict()
    filled: dict[str, torch.Tensor] = {}
    for key, ref in target.items():
        prefix, _, name = key.rpartition(".")
        t = state[key].detach()
        rows, cols = plan.get(prefix, (None, None))
        if rows is not None and t.ndim >= 1:
            t = t.index_select(0, torch.as_tensor(rows, dtype=torch.long, device=t.device))
        if cols is not None and name == "weight" and t.ndim >= 2:
            t = t.index_select(1, torch.as_tensor(cols, dtype=torch.long, device=t.device))
        if t.shape != ref.shape:  # pragma: no cover - a bug in the plan, never a user error
            raise RuntimeError(f"surgery produced {key} of shape {tuple(t.shape)}, the builder expects "
                               f"{tuple(ref.shape)}")
        filled[key] = t.clone()
    new.load_state_dict(filled, strict=True)
    param = next(model.parameters(), None)
    if param is not None:
        new = new.to(device=param.device, dtype=param.dtype)
    return new.train(model.training)


# ---- the two moves --------------------------------------------------------------------------------------

def shrink_expand(arch: Arch, block: int, keep: int) -> Arch:
    """The architecture `prune_expand` makes (no weights): block `block`'s expansion set to `keep`.
    Raises `SpecError` for every move the surgery refuses, so proposal generators can ask it first."""
    i = _check_index(arch, block)
    b = arch.blocks[i]
    if not isinstance(b, Bneck):
        raise SpecError(f"block {i} is a depthwise-separable block: it has no expansion to prune")
    if not _has_expand_conv(arch, i):
        if i > 0 or _is_residual(arch, 0):
            hint = f"shrink that with prune_group on group {residual_group_of(arch, max(i - 1, 0))}"
        else:
            hint = "that is the stem's width, which no surgery here changes"
        raise SpecError(f"block {i} has no expand conv (expansion {b.expand} equals its input width), so its "
                        f"hidden width is its input width and cannot be pruned on its own: {hint}")
    keep = _check_keep(keep, b.expand, f"expansion of block {i}")
    blocks = list(arch.blocks)
    blocks[i] = dataclasses.replace(b, expand=keep)
    new_arch = arch.replace(blocks=tuple(blocks))
    _check_topology(arch, new_arch, f"shrinking block {i}'s expansion to {keep}")
    return new_arch


def prune_expand(arch: Arch, model: nn.Module, block: int, keep: int) -> tuple[Arch, nn.Module]:
    """Shrink bneck block `block`'s expansion width to `keep` channels, keeping those whose expand-conv rows
    have the largest L2 norm. Returns (new arch, new module); `model` is not modified."""
    new_arch = shrink_expand(arch, block, keep)
    i = int(block)
    state = _state(model, arch)
    hid_idx = _top(_row_norms(state[f"blocks.{i}.expand.conv.weight"]), new_arch.blocks[i].expand)
    plan: _Plan = {}
    _plan_bneck(plan, state, arch, i, None, hid_idx, None)
    return new_arch, _rebuild(new_arch, model, state, plan)


def _group(arch: Arch, blocks: int | Sequence[int]) -> list[int]:
    if isinstance(blocks, int | np.integer) and not isinstance(blocks, bool):
        return residual_group_of(arch, int(blocks))
    given = [_check_index(arch, j) for j in blocks]
    if not given:
        raise SpecError("blocks: give the residual group's block indices (or one block of it)")
    group = residual_group_of(arch, given[0])
    if sorted(given) != group:
        raise SpecError(f"blocks {given} are not a residual group: block {given[0]} belongs to {group}")
    return group


def _group_consumers(arch: Arch, group: list[int]) -> list[int]:
    """Blocks whose input width is the group's width (inside the group, plus the next block)."""
    stem_producer = _is_residual(arch, group[0])
    consumers = [j for j in group if j != group[0] or stem_producer]
    if group[-1] + 1 < len(arch.blocks):
        consumers.append(group[-1] + 1)
    return consumers


def shrink_group(arch: Arch, blocks: int | Sequence[int], keep: int) -> Arch:
    """The architecture `prune_group` makes (no weights): the residual group's width set to `keep`, and the
    hidden width of consumers without an expand conv with it. Raises `SpecError` for refused moves."""
    group = _group(arch, blocks)
    first = group[0]
    keep = _check_keep(keep, arch.blocks[first].out, f"width of group {group}")
    consumers = _group_consumers(arch, group)
    new_blocks = list(arch.blocks)
    for j in sorted(set(group) | set(consumers)):
        b = arch.blocks[j]
        out = keep if j in group else b.out
        if isinstance(b, Bneck):
            expand = keep if j in consumers and not _has_expand_conv(arch, j) else b.expand
            new_blocks[j] = dataclasses.replace(b, expand=expand, out=out)
        else:
            new_blocks[j] = dataclasses.replace(b, out=out)
    new_stem = dataclasses.replace(arch.stem, out=keep) if _is_residual(arch, first) else arch.stem
    new_arch = arch.replace(stem=new_stem, blocks=tuple(new_blocks))
    _check_topology(arch, new_arch, f"shrinking group {group} to width {keep}")
    return new_arch


def prune_group(arch: Arch, model: nn.Module, blocks: int | Sequence[int], keep: int) -> tuple[Arch, nn.Module]:
    """Shrink the output width of the residual group `blocks` (the group's indices, or any one block of it)
    to `keep` channels, chosen once for the group by the summed L2 norm of its producers' output rows.
    Returns (new arch, new module); `model` is not modified."""
    group = _group(arch, blocks)
    new_arch = shrink_group(arch, group, keep)
    first, last = group[0], group[-1]
    keep = new_arch.blocks[first].out
    state = _state(model, arch)
    idx = _top(_group_norms(state, arch, group), keep)
    plan: _Plan = {}
    if _is_residual(arch, first):
        plan["stem.conv"] = (idx, None)
        plan["stem.bn"] = (idx, None)
    consumers = _group_consumers(arch, group)
    for j in sorted(set(group) | set(consumers)):
        cin_idx = idx if j in consumers else None
        out_idx = idx if j in group else None
        if isinstance(arch.blocks[j], Bneck):
            _plan_bneck(plan, state, arch, j, cin_idx, None, out_idx)
        else:
            plan[f"blocks.{j}.depthwise.conv"] = (cin_idx, None)
            plan[f"blocks.{j}.depthwise.bn"] = (cin_idx, None)
            plan[f"blocks.{j}.pointwise.conv"] = (out_idx, cin_idx)
            plan[f"blocks.{j}.pointwise.bn"] = (out_idx, None)
    if last + 1 == len(arch.blocks):  # the head consumes the last block's width
        h = arch.head
        layer = "head.conv.conv" if h.conv is not None else "head.hidden" if h.hidden is not None else "head.classifier"
        plan[layer] = (None, idx)
    return new_arch, _rebuild(new_arch, model, state, plan)
