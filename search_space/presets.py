"""MobileNet V1, V2, V3-Large and V3-Small as exact points of the bneck space.

Each preset is its paper's table as data plus the width-multiplier rule its reference implementation uses
(torchvision for V2/V3; V1's α scales every layer). Counts at 1000 classes / 224 px equal torchvision's
parameter counts exactly (tests/test_presets.py).
"""

from __future__ import annotations

from collections.abc import Callable

from search_space.spec import Arch, Bneck, DepthwiseSeparable, Head, SpecError, Stem, make_divisible

# MobileNetV1 (Howard et al. 2017, Table 1): (out channels, stride) of each depthwise-separable layer.
# The paper's last dw has stride 2 on a 7x7 map; implementations (and the 7x7 pool) use stride 1.
_V1_LAYERS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)

# MobileNetV2 (Sandler et al. 2018, Table 2): expansion t, out c, repeats n, first stride s.
_V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)

# MobileNetV3 (Howard et al. 2019, Tables 1 and 2): kernel, exp size, #out, SE, NL, stride.
_V3_LARGE: tuple[tuple[int, int, int, bool, str, int], ...] = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hswish", 2),
    (3, 200, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1),
    (3, 480, 112, True, "hswish", 1),
    (3, 672, 112, True, "hswish", 1),
    (5, 672, 160, True, "hswish", 2),
    (5, 960, 160, True, "hswish", 1),
    (5, 960, 160, True, "hswish", 1),
)
_V3_SMALL: tuple[tuple[int, int, int, bool, str, int], ...] = (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hswish", 2),
    (5, 240, 40, True, "hswish", 1),
    (5, 240, 40, True, "hswish", 1),
    (5, 120, 48, True, "hswish", 1),
    (5, 144, 48, True, "hswish", 1),
    (5, 288, 96, True, "hswish", 2),
    (5, 576, 96, True, "hswish", 1),
    (5, 576, 96, True, "hswish", 1),
)


def _check_width(width_mult: float) -> None:
    if not isinstance(width_mult, int | float) or not 0.1 <= width_mult <= 4.0:
        raise SpecError(f"width_mult {width_mult!r} not in [0.1, 4.0]")


def mobilenet_v1(width_mult: float = 1.0, resolution: int = 224, num_classes: int = 1000) -> Arch:
    """MobileNetV1 with width multiplier α (`width_mult`) and resolution multiplier ρ (`resolution`)."""
    _check_width(width_mult)

    def c(ch: int) -> int:
        return make_divisible(ch * width_mult, 8)

    blocks = tuple(DepthwiseSeparable(kernel=3, out=c(out), stride=s, act="relu") for out, s in _V1_LAYERS)
    return Arch(stem=Stem(out=c(32), kernel=3, stride=2, act="relu"), blocks=blocks,
                head=Head(conv=None, hidden=None, dropout=0.0), num_classes=num_classes, resolution=resolution)


def mobilenet_v2(width_mult: float = 1.0, resolution: int = 224, num_classes: int = 1000) -> Arch:
    """MobileNetV2; torchvision's width rule (hidden = round(in·t), last conv never below 1280)."""
    _check_width(width_mult)
    cin = make_divisible(32 * width_mult, 8)
    stem = Stem(out=cin, kernel=3, stride=2, act="relu6")
    blocks: list[Bneck] = []
    for t, c, n, s in _V2_STAGES:
        out = make_divisible(c * width_mult, 8)
        for i in range(n):
            blocks.append(Bneck(kernel=3, expand=round(cin * t), out=out, stride=s if i == 0 else 1,
                                se=False, act="relu6"))
            cin = out
    head = Head(conv=make_divisible(1280 * max(1.0, width_mult), 8), conv_act="relu6", hidden=None, dropout=0.2)
    return Arch(stem=stem, blocks=tuple(blocks), head=head, num_classes=num_classes, resolution=resolution)


def _mobilenet_v3(table: tuple[tuple[int, int, int, bool, str, int], ...], hidden: int, width_mult: float,
                  resolution: int, num_classes: int) -> Arch:
    _check_width(width_mult)

    def c(ch: int) -> int:
        return make_divisible(ch * width_mult, 8)

    # Expansion is a ratio of the block's (scaled) input width, as in the paper's TF models; at α = 1 this is
    # the table's exp size exactly. With α < 1 it reproduces Table 9 (Large 0.75: 155M / 4.0M).
    blocks: list[Bneck] = []
    base_in, cin = 16, c(16)
    for k, e, o, se, act, s in table:
        blocks.append(Bneck(kernel=k, expand=make_divisible(cin * e / base_in, 8), out=c(o), stride=s, se=se,
                            act=act))  # type: ignore[arg-type]
        base_in, cin = o, c(o)
    # Last stage: 1x1 conv to 6x the last width, pool, then the NBN 1x1 conv, whose width (like V2's last
    # conv) is never reduced for α < 1 (torchvision scales it; README "Presets" compares both rules).
    head = Head(conv=6 * cin, conv_act="hswish", hidden=make_divisible(hidden * max(1.0, width_mult), 8),
                hidden_act="hswish", dropout=0.2)
    return Arch(stem=Stem(out=c(16), kernel=3, stride=2, act="hswish"), blocks=tuple(blocks), head=head,
                num_classes=num_classes, resolution=resolution)


def mobilenet_v3_large(width_mult: float = 1.0, resolution: int = 224, num_classes: int = 1000) -> Arch:
    """MobileNetV3-Large (paper Table 1; torchvision's SE width and head)."""
    return _mobilenet_v3(_V3_LARGE, 1280, width_mult, resolution, num_classes)


def mobilenet_v3_small(width_mult: float = 1.0, resolution: int = 224, num_classes: int = 1000) -> Arch:
    """MobileNetV3-Small (paper Table 2; no SE on the last 1x1 conv, as torchvision)."""
    return _mobilenet_v3(_V3_SMALL, 1024, width_mult, resolution, num_classes)


PRESETS: dict[str, Callable[..., Arch]] = {
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
}


def preset(name: str, width_mult: float = 1.0, resolution: int = 224, num_classes: int = 1000) -> Arch:
    """A preset by name; unknown names raise a SpecError listing the known ones."""
    if name not in PRESETS:
        raise SpecError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name](width_mult=width_mult, resolution=resolution, num_classes=num_classes)
