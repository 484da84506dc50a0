"""Build a torch module from an `Arch`.

Layer names are stable and explicit so that weight surgery (NetAdapt) can address them:
``stem.conv/bn``, ``blocks[i].expand.conv/bn`` (absent when expand == input width),
``blocks[i].depthwise.conv/bn``, ``blocks[i].se.reduce/expand``, ``blocks[i].project.conv/bn``
(``blocks[i].pointwise`` for MobileNetV1 blocks), ``head.conv``, ``head.hidden``, ``head.classifier``.
"""

from __future__ import annotations

import torch
from torch import nn

from search_space.spec import Arch, Bneck, DepthwiseSeparable, LayerConfig, se_channels
from search_space.spec import Head as HeadSpec
from search_space.spec import Stem as StemSpec

BN_EPS = 1e-3  # torchvision MobileNetV3 and the TF reference models
BN_MOMENTUM = 0.01


def activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "hswish":
        return nn.Hardswish(inplace=True)
    raise ValueError(f"unknown activation {name!r}")


class ConvBNAct(nn.Module):
    """conv (no bias) -> BN -> optional activation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: str | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = activation(act) if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """MobileNetV3 SE: pool -> 1x1 reduce (bias) -> ReLU -> 1x1 expand (bias) -> hard-sigmoid gate."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(scale))))


class InvertedResidual(nn.Module):
    """The bneck block."""

    def __init__(self, cin: int, block: Bneck) -> None:
        super().__init__()
        e = block.expand
        self.expand = ConvBNAct(cin, e, 1, act=block.act) if e != cin else None
        self.depthwise = ConvBNAct(e, e, block.kernel, block.stride, groups=e, act=block.act)
        self.se = SqueezeExcite(e, se_channels(e)) if block.se else None
        self.project = ConvBNAct(e, block.out, 1, act=None)
        self.use_residual = block.stride == 1 and cin == block.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.use_residual else y


class DepthwiseSeparableBlock(nn.Module):
    """MobileNetV1 block: depthwise kxk + BN + act, pointwise 1x1 + BN + act."""

    def __init__(self, cin: int, block: DepthwiseSeparable) -> None:
        super().__init__()
        self.depthwise = ConvBNAct(cin, cin, block.kernel, block.stride, groups=cin, act=block.act)
        self.pointwise = ConvBNAct(cin, block.out, 1, act=block.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class Head(nn.Module):
    """[1x1 conv + BN + act] -> global average pool -> [linear + act] -> dropout -> classifier."""

    def __init__(self, cin: int, h: HeadSpec, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(cin, h.conv, 1, act=h.conv_act) if h.conv is not None else None
        width = h.conv if h.conv is not None else cin
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hidden: nn.Module | None = None
        self.hidden_act: nn.Module = nn.Identity()
        if h.hidden is not None:
            self.hidden = nn.Linear(width, h.hidden)
            self.hidden_act = activation(h.hidden_act)
            width = h.hidden
        self.dropout = nn.Dropout(h.dropout)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(x)
        x = torch.flatten(self.pool(x), 1)
        if self.hidden is not None:
            x = self.hidden_act(self.hidden(x))
        return self.classifier(self.dropout(x))


class BneckNet(nn.Module):
    """A network built from an `Arch`; `model.arch` is the spec it was built from."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.arch = arch
        s = arch.stem
        self.stem = ConvBNAct(3, s.out, s.kernel, s.stride, act=s.act)
        blocks: list[nn.Module] = []
        for cin, b in zip(arch.in_channels, arch.blocks, strict=True):
            blocks.append(InvertedResidual(cin, b) if isinstance(b, Bneck) else DepthwiseSeparableBlock(cin, b))
        self.blocks = nn.ModuleList(blocks)
        self.head = Head(arch.last_channels, arch.head, arch.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def init_weights(model: nn.Module, seed: int = 0) -> None:
    """torchvision's MobileNet init (kaiming fan-out convs, N(0, 0.01) linears), reproducible by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", generator=gen)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01, generator=gen)
                nn.init.zeros_(m.bias)


def build_model(arch: Arch, seed: int = 0) -> BneckNet:
    """The torch module for `arch`, initialized deterministically from `seed`."""
    model = BneckNet(arch)
    init_weights(model, seed)
    return model


def build_layer(cfg: LayerConfig, seed: int = 0) -> nn.Module:
    """The module of one `LayerConfig` (as in the whole network), e.g. to time it alone.

    Its input is `layer_input_shape(cfg)`. Same classes as `build_model`, so exported ops are identical.
    """
    module: nn.Module
    spec = cfg.spec()
    if isinstance(spec, StemSpec):
        module = ConvBNAct(cfg.cin, spec.out, spec.kernel, spec.stride, act=spec.act)
    elif isinstance(spec, Bneck):
        module = InvertedResidual(cfg.cin, spec)
    elif isinstance(spec, DepthwiseSeparable):
        module = DepthwiseSeparableBlock(cfg.cin, spec)
    else:
        module = Head(cfg.cin, spec, cfg.num_classes)
    init_weights(module, seed)
    return module.eval()


def layer_input_shape(cfg: LayerConfig, batch_size: int = 1) -> tuple[int, int, int, int]:
    return (batch_size, cfg.cin, cfg.size, cfg.size)
