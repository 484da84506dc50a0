"""One weight-sharing network that contains every architecture of a `SearchSpace` (TuNAS / Once-for-All).

Per stage the supernet has the stage's maximum depth; every layer holds its weights at the largest width it can
take: the largest expansion of the largest input width, the largest output width, the largest depthwise kernel,
SE at full width. An architecture runs as a slice of it:

  - channels: the first `c` filters / input channels of every conv and BN (OFA's channel slicing);
  - kernels: a k x k depthwise kernel is the centre crop of the largest one, or, with `kernel_transform`,
    OFA's learned transform of that crop (a k²×k² matrix per layer and kernel size, shared by the channels,
    applied from the largest kernel down: 7 -> 5 -> 3);
  - depth: a stage of depth d runs its first d layers (the rest are skipped);
  - ratio 1 layers (expand == input width) skip the expand conv, as `build_model` builds them without one;
  - residual, SE, NL: as the architecture's own blocks say (`stride 1 and cin == out`).

`extract(arch)` returns the weights `build_model(arch)` loads strictly and runs with the same outputs as
`subnet(arch)` (tests/test_supernet.py holds them equal to 1e-5 for random archs of both spaces). The layer
grammar is `builder.py`'s: this module only slices it, and builds the standalone module with `BneckNet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search_space.builder import BN_EPS, BN_MOMENTUM, BneckNet, ConvBNAct, init_weights
from search_space.spaces import SearchSpace
from search_space.spec import Arch, Bneck, SpecError, make_divisible, se_channels


def _act(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "relu6":
        return F.relu6(x)
    return F.hardswish(x)


class SlicedBN(nn.BatchNorm2d):
    """A BatchNorm over the largest width that normalizes the first `c` channels of its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        assert self.running_mean is not None and self.running_var is not None
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, self.momentum if self.momentum is not None else 0.1, self.eps)


def _bn(channels: int) -> SlicedBN:
    return SlicedBN(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _crop(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    big = weight.shape[-1]
    lo = (big - kernel) // 2
    return weight[..., lo:lo + kernel, lo:lo + kernel]


class SuperBneck(nn.Module):
    """One layer slot of a stage at its largest shape. Parameter names follow `builder.InvertedResidual`."""

    def __init__(self, cin_max: int, expand_max: int, out_max: int, kernels: Sequence[int], stride: int,
                 se: bool, kernel_transform: bool) -> None:
        super().__init__()
        self.kernels = tuple(sorted(set(kernels)))
        self.k_max = self.kernels[-1]
        self.expand_conv = nn.Conv2d(cin_max, expand_max, 1, bias=False)
        self.expand_bn = _bn(expand_max)
        self.dw_conv = nn.Conv2d(expand_max, expand_max, self.k_max, stride, self.k_max // 2, groups=expand_max,
                                 bias=False)
        self.dw_bn = _bn(expand_max)
        squeeze_max = se_channels(expand_max)
        self.se_reduce = nn.Conv2d(expand_max, squeeze_max, 1) if se else None
        self.se_expand = nn.Conv2d(squeeze_max, expand_max, 1) if se else None
        self.project_conv = nn.Conv2d(expand_max, out_max, 1, bias=False)
        self.project_bn = _bn(out_max)
        # OFA kernel transforms: `transform_{k}` maps the centre k x k crop of the next larger kernel to a k x k
        # kernel; identity at init, so the supernet starts as the centre-crop supernet.
        self.kernel_transform = kernel_transform
        if kernel_transform:
            for k in self.kernels[:-1]:
                self.register_parameter(f"transform_{k}", nn.Parameter(torch.eye(k * k)))

    def depthwise_weight(self, channels: int, kernel: int) -> torch.Tensor:
        if kernel not in self.kernels:
            raise SpecError(f"kernel {kernel} not in this layer's {set(self.kernels)}")
        w = self.dw_conv.weight[:channels]
        if not self.kernel_transform:
            return _crop(w, kernel)
        for k in reversed(self.kernels[:-1]):  # 7 -> 5 -> 3: each step transforms the crop of the previous
            if k < kernel:
                break
            crop = _crop(w, k)
            w = (crop.reshape(channels, k * k) @ getattr(self, f"transform_{k}")).reshape(channels, 1, k, k)
        return w

    def forward(self, x: torch.Tensor, block: Bneck) -> torch.Tensor:
        cin, e, out = x.shape[1], block.expand, block.out
        y = x
        if e != cin:
            y = _act(self.expand_bn(F.conv2d(x, self.expand_conv.weight[:e, :cin])), block.act)
        y = F.conv2d(y, self.depthwise_weight(e, block.kernel), None, block.stride, block.kernel // 2, 1, e)
        y = _act(self.dw_bn(y), block.act)
        if block.se:
            if self.se_reduce is None or self.se_expand is None:
                raise SpecError("this layer slot has no SE (the space's stage never enables it)")
            sq = se_channels(e)
            s = y.mean((2, 3), keepdim=True)
            s = F.relu(F.conv2d(s, self.se_reduce.weight[:sq, :e], self.se_reduce.bias[:sq]))
            s = F.hardsigmoid(F.conv2d(s, self.se_expand.weight[:e, :sq], self.se_expand.bias[:e]))
            y = y * s
        y = self.project_bn(F.conv2d(y, self.project_conv.weight[:out, :e]))
        return x + y if block.stride == 1 and cin == out else y


class SuperHead(nn.Module):
    """The space's head with its 1x1 conv over the largest input width (conv, hidden, classifier are fixed)."""

    def __init__(self, space: SearchSpace, cin_max: int) -> None:
        super().__init__()
        h = space.head
        self.spec = h
        self.conv = nn.Conv2d(cin_max, h.conv, 1, bias=False) if h.conv is not None else None
        self.conv_bn = _bn(h.conv) if h.conv is not None else None
        width = h.conv if h.conv is not None else cin_max
        self.hidden = nn.Linear(width, h.hidden) if h.hidden is not None else None
        width = h.hidden if h.hidden is not None else width
        self.dropout = nn.Dropout(h.dropout)
        self.classifier = nn.Linear(width, space.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.spec
        if self.conv is not None and self.conv_bn is not None:
            x = _act(self.conv_bn(F.conv2d(x, self.conv.weight[:, :x.shape[1]])), h.conv_act)
        x = torch.flatten(x.mean((2, 3)), 1)
        if self.hidden is not None:
            x = _act(self.hidden(x), h.hidden_act)
        return self.classifier(self.dropout(x))


class Supernet(nn.Module):
    """Every architecture of `space` in one network; `forward(x, arch)` runs `arch` (see the module docstring).

    Architectures must be in the space (`space.encode` says why not) and have its class count; resolution is a
    run setting (the supernet is fully convolutional).
    """

    def __init__(self, space: SearchSpace, kernel_transform: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.space = space
        self.kernel_transform = kernel_transform
        s = space.stem
        self.stem = ConvBNAct(3, s.out, s.kernel, s.stride, act=s.act)
        stages: list[nn.ModuleList] = []
        prev_widths: tuple[int, ...] = (s.out,)
        for st in space.stages:
            layers = []
            for j in range(st.max_depth):
                cins = prev_widths if j == 0 else st.widths
                expand_max = max(make_divisible(c * r, 8) for c in cins for r in space.expand_ratios)
                expand_max = max(expand_max, max(cins))  # a ratio-1 layer's depthwise runs on the input width
                layers.append(SuperBneck(max(cins), expand_max, max(st.widths), st.kernels,
                                         st.stride if j == 0 else 1, any(st.se), kernel_transform))
            stages.append(nn.ModuleList(layers))
            prev_widths = st.widths
        self.stages = nn.ModuleList(stages)
        if space.head.conv is None:
            raise SpecError("a supernet needs a head with a 1x1 conv (every V2/V3 space has one)")
        self.head = SuperHead(space, max(prev_widths))
        init_weights(self, seed)  # the kernel transforms are plain parameters: they stay at identity

    # ---- which slot runs which block ----------------------------------------------------------------------
    def placement(self, arch: Arch) -> tuple[tuple[int, int], ...]:
        """(stage, layer) of every block of `arch`; raises SpecError (saying why) for archs outside the space."""
        return _placement(self.space, arch)

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:  # type: ignore[override]
        x = self.stem(x)
        for (stage, layer), block in zip(self.placement(arch), arch.blocks, strict=True):
            x = self.stages[stage][layer](x, block)
        return self.head(x)

    def subnet(self, arch: Arch) -> Subnet:
        """`arch` as a module that runs on (and trains) this supernet's weights."""
        self.placement(arch)
        return Subnet(self, arch)

    # ---- standalone weights ---------------------------------------------------------------------------------
    @torch.no_grad()
    def extract(self, arch: Arch) -> tuple[Arch, dict[str, torch.Tensor]]:
        """`arch` and the state dict `build_model(arch)` loads strictly, equal in outputs to `subnet(arch)`."""
        placement = self.placement(arch)
        target = BneckNet(arch)
        sd: dict[str, torch.Tensor] = {}
        _copy_conv_bn(sd, "stem", self.stem.conv.weight, self.stem.bn)
        for i, ((stage, layer), block, cin) in enumerate(zip(placement, arch.blocks, arch.in_channels,
                                                            strict=True)):
            assert isinstance(block, Bneck)
            slot: SuperBneck = self.stages[stage][layer]  # type: ignore[assignment]
            e, out, p = block.expand, block.out, f"blocks.{i}"
            if e != cin:
                _copy_conv_bn(sd, f"{p}.expand", slot.expand_conv.weight[:e, :cin], slot.expand_bn)
            _copy_conv_bn(sd, f"{p}.depthwise", slot.depthwise_weight(e, block.kernel), slot.dw_bn)
            if block.se:
                assert slot.se_reduce is not None and slot.se_expand is not None
                sq = se_channels(e)
                sd[f"{p}.se.reduce.weight"] = slot.se_reduce.weight[:sq, :e]
                sd[f"{p}.se.reduce.bias"] = slot.se_reduce.bias[:sq]
                sd[f"{p}.se.expand.weight"] = slot.se_expand.weight[:e, :sq]
                sd[f"{p}.se.expand.bias"] = slot.se_expand.bias[:e]
            _copy_conv_bn(sd, f"{p}.project", slot.project_conv.weight[:out, :e], slot.project_bn)
        head = self.head
        assert head.conv is not None and head.conv_bn is not None
        _copy_conv_bn(sd, "head.conv", head.conv.weight[:, :arch.last_channels], head.conv_bn)
        if head.hidden is not None:
            sd["head.hidden.weight"], sd["head.hidden.bias"] = head.hidden.weight, head.hidden.bias
        sd["head.classifier.weight"], sd["head.classifier.bias"] = head.classifier.weight, head.classifier.bias
        sd = {k: v.detach().clone().contiguous() for k, v in sd.items()}
        expected = set(target.state_dict())
        if set(sd) != expected:  # pragma: no cover - the builder's names changed without this module
            raise SpecError(f"extract: state dict keys differ from build_model's: {sorted(expected ^ set(sd))[:4]}")
        return arch, sd

    def standalone(self, arch: Arch) -> BneckNet:
        """`build_model(arch)` with the extracted weights loaded (strictly)."""
        arch, sd = self.extract(arch)
        model = BneckNet(arch)
        model.load_state_dict(sd, strict=True)
        return model

    # ---- the space's corners (the sandwich rule trains them every step) --------------------------------------
    def largest(self, rng: np.random.Generator) -> Arch:
        """Every decision at its largest (depth, width, kernel, expansion, SE on); the NL per stage from `rng`."""
        return _corner(self.space, rng, largest=True)

    def smallest(self, rng: np.random.Generator) -> Arch:
        """Every decision at its smallest (SE off where the stage allows it); the NL per stage from `rng`."""
        return _corner(self.space, rng, largest=False)


class Subnet(nn.Module):
    """One architecture of a supernet as a module (shares the supernet's parameters)."""

    def __init__(self, supernet: Supernet, arch: Arch) -> None:
        super().__init__()
        self.supernet, self.arch = supernet, arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x, self.arch)


def _copy_conv_bn(sd: dict[str, torch.Tensor], prefix: str, weight: torch.Tensor, bn: nn.BatchNorm2d) -> None:
    c = weight.shape[0]
    assert bn.running_mean is not None and bn.running_var is not None and bn.num_batches_tracked is not None
    sd[f"{prefix}.conv.weight"] = weight
    sd[f"{prefix}.bn.weight"], sd[f"{prefix}.bn.bias"] = bn.weight[:c], bn.bias[:c]
    sd[f"{prefix}.bn.running_mean"], sd[f"{prefix}.bn.running_var"] = bn.running_mean[:c], bn.running_var[:c]
    sd[f"{prefix}.bn.num_batches_tracked"] = bn.num_batches_tracked


@lru_cache(maxsize=4096)  # a search scores thousands of archs; encoding one is a backtracking walk
def _placement(space: SearchSpace, arch: Arch) -> tuple[tuple[int, int], ...]:
    vec = space.encode(arch)
    if arch.num_classes != space.num_classes:
        raise SpecError(f"num_classes {arch.num_classes} differs from the supernet's {space.num_classes}")
    out: list[tuple[int, int]] = []
    for i, (st, at) in enumerate(zip(space.stages, space.layout.stages, strict=True)):
        out += [(i, j) for j in range(st.depths[vec[at.depth]])]
    return tuple(out)


def _corner(space: SearchSpace, rng: np.random.Generator, largest: bool) -> Arch:
    pick = max if largest else min
    vec: list[int] = []
    ratios = space.expand_ratios
    r_idx = ratios.index(pick(ratios))
    for st, at in zip(space.stages, space.layout.stages, strict=True):
        depth = st.depths.index(pick(st.depths))
        level = {"depth": depth, "width": st.width_ratios.index(pick(st.width_ratios)),
                 "kernel": st.kernels.index(pick(st.kernels)),
                 "se": st.se.index(largest) if largest in st.se else 0,
                 "act": int(rng.integers(len(st.acts)))}
        vec += at.pack(level, [r_idx] * st.depths[depth])
    return space.decode(vec)


__all__ = ["SlicedBN", "Subnet", "SuperBneck", "SuperHead", "Supernet"]
