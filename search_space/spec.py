"""Architecture specs as plain frozen data.

An `Arch` is everything needed to build, cost, time or export a network; nothing else in the project
describes networks. Every `Arch` that exists is valid: constructors validate, and container-level errors
name the block index and field (``block 7: kernel 4 not in {3,5,7}``) so invalid specs never reach torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal

ACTIVATIONS: tuple[str, ...] = ("relu", "relu6", "hswish")
KERNELS: tuple[int, ...] = (3, 5, 7)
STRIDES: tuple[int, ...] = (1, 2)
MAX_CHANNELS = 16384
MIN_RESOLUTION = 32
MAX_RESOLUTION = 2048
SPEC_FORMAT = "bneck-arch/1"

Activation = Literal["relu", "relu6", "hswish"]


class SpecError(ValueError):
    """An architecture spec (or a string/JSON claiming to be one) is invalid; the message names the field."""


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor` without dropping more than 10% (MobileNet rule)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def se_channels(expand: int) -> int:
    """Squeeze width of MobileNetV3's SE module: make_divisible(expand // 4, 8) (torchvision, paper)."""
    return make_divisible(expand // 4, 8)


def out_size(size: int, stride: int) -> int:
    """Spatial size after a 'same'-padded odd-kernel conv: ceil(size / stride)."""
    return (size + stride - 1) // stride


def _check_int(name: str, value: Any, allowed: tuple[int, ...] | None = None, lo: int = 1,
               hi: int = MAX_CHANNELS) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{name} must be an integer, got {value!r}")
    if allowed is not None:
        if value not in allowed:
            raise SpecError(f"{name} {value} not in {{{','.join(map(str, allowed))}}}")
    elif not lo <= value <= hi:
        raise SpecError(f"{name} {value} not in [{lo}, {hi}]")


def _check_act(name: str, value: Any) -> None:
    if value not in ACTIVATIONS:
        raise SpecError(f"{name} {value!r} not in {{{','.join(ACTIVATIONS)}}}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise SpecError(f"{name} must be true or false, got {value!r}")


@dataclass(frozen=True, slots=True)
class Stem:
    """First full convolution: 3 -> `out` channels, BN, activation."""

    out: int
    kernel: int = 3
    stride: int = 2
    act: Activation = "hswish"

    def __post_init__(self) -> None:
        _check_int("out", self.out)
        _check_int("kernel", self.kernel, KERNELS)
        _check_int("stride", self.stride, STRIDES)
        _check_act("act", self.act)


@dataclass(frozen=True, slots=True)
class Bneck:
    """Inverted residual (MobileNetV2/V3): [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear project.

    The expand conv is absent when `expand` equals the block's input width; the residual is used when
    stride is 1 and input width equals `out`. Both follow from the input width, so they are not fields.
    """

    kernel: int
    expand: int
    out: int
    stride: int = 1
    se: bool = False
    act: Activation = "relu"

    def __post_init__(self) -> None:
        _check_int("kernel", self.kernel, KERNELS)
        _check_int("expand", self.expand)
        _check_int("out", self.out)
        _check_int("stride", self.stride, STRIDES)
        _check_bool("se", self.se)
        _check_act("act", self.act)


@dataclass(frozen=True, slots=True)
class DepthwiseSeparable:
    """MobileNetV1 block: kxk depthwise + BN + act, then 1x1 pointwise + BN + act."""

    kernel: int
    out: int
    stride: int = 1
    act: Activation = "relu"

    def __post_init__(self) -> None:
        _check_int("kernel", self.kernel, KERNELS)
        _check_int("out", self.out)
        _check_int("stride", self.stride, STRIDES)
        _check_act("act", self.act)


Block = Bneck | DepthwiseSeparable


@dataclass(frozen=True, slots=True)
class Head:
    """Classifier head: [1x1 conv + BN + act] -> global pool -> [1x1 'NBN' conv (= linear) + act]
    -> dropout -> linear classifier. V1 uses neither optional layer, V2 only the conv, V3 both."""

    conv: int | None = None
    conv_act: Activation = "hswish"
    hidden: int | None = None
    hidden_act: Activation = "hswish"
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.conv is not None:
            _check_int("conv", self.conv)
        if self.hidden is not None:
            _check_int("hidden", self.hidden)
        _check_act("conv_act", self.conv_act)
        _check_act("hidden_act", self.hidden_act)
        # An absent layer's activation is meaningless: normalize it so equal networks compare equal.
        if self.conv is None:
            object.__setattr__(self, "conv_act", "hswish")
        if self.hidden is None:
            object.__setattr__(self, "hidden_act", "hswish")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float):
            raise SpecError(f"dropout must be a number, got {self.dropout!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise SpecError(f"dropout {self.dropout} not in [0, 1)")
        object.__setattr__(self, "dropout", float(self.dropout))


@dataclass(frozen=True, slots=True)
class LayerConfig:
    """One latency-relevant layer: what a latency table keys on and what the cost model counts.

    `size` is the input feature map's side; `kind` is 'stem', 'bneck', 'ds' or 'head'. Unused fields are 0.
    For the head, `expand` holds the conv width (0: none) and `out` the hidden width (0: none).
    """

    kind: str
    size: int
    cin: int
    expand: int
    out: int
    kernel: int
    stride: int
    se: bool
    act: str
    num_classes: int = 0

    @property
    def out_size(self) -> int:
        return out_size(self.size, self.stride)


@dataclass(frozen=True, slots=True)
class Arch:
    """A whole network. Immutable and hashable; `arch_id` is a stable content hash."""

    stem: Stem
    blocks: tuple[Block, ...]
    head: Head = field(default_factory=Head)
    num_classes: int = 1000
    resolution: int = 224

    def __post_init__(self) -> None:
        if not isinstance(self.stem, Stem):
            raise SpecError(f"stem must be a Stem, got {type(self.stem).__name__}")
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.blocks:
            raise SpecError("blocks: an architecture needs at least one block")
        for i, b in enumerate(self.blocks):
            if not isinstance(b, Bneck | DepthwiseSeparable):
                raise SpecError(f"block {i}: type must be bneck or ds, got {type(b).__name__}")
        if not isinstance(self.head, Head):
            raise SpecError(f"head must be a Head, got {type(self.head).__name__}")
        _check_int("num_classes", self.num_classes, lo=1, hi=1_000_000)
        _check_int("resolution", self.resolution, lo=MIN_RESOLUTION, hi=MAX_RESOLUTION)

    # ---- derived structure -------------------------------------------------------------------------
    @property
    def in_channels(self) -> tuple[int, ...]:
        """Input width of every block."""
        widths = [self.stem.out]
        widths.extend(b.out for b in self.blocks[:-1])
        return tuple(widths)

    @property
    def last_channels(self) -> int:
        return self.blocks[-1].out

    def has_residual(self, index: int) -> bool:
        b = self.blocks[index]
        return b.stride == 1 and self.in_channels[index] == b.out

    def layers(self, resolution: int | None = None) -> list[LayerConfig]:
        """Every layer as a `LayerConfig` at `resolution` (default: the arch's own)."""
        size = self.resolution if resolution is None else resolution
        s = self.stem
        out = [LayerConfig("stem", size, 3, 0, s.out, s.kernel, s.stride, False, s.act)]
        size = out_size(size, s.stride)
        cin = s.out
        for b in self.blocks:
            if isinstance(b, Bneck):
                out.append(LayerConfig("bneck", size, cin, b.expand, b.out, b.kernel, b.stride, b.se, b.act))
            else:
                out.append(LayerConfig("ds", size, cin, 0, b.out, b.kernel, b.stride, False, b.act))
            size = out_size(size, b.stride)
            cin = b.out
        h = self.head
        out.append(LayerConfig("head", size, cin, h.conv or 0, h.hidden or 0, 1, 1, False,
                               f"{h.conv_act}/{h.hidden_act}", self.num_classes))
        return out

    # ---- identity and serialization ----------------------------------------------------------------
    @property
    def arch_id(self) -> str:
        """Stable 12-hex content hash of the canonical string (independent of Python's hash seed)."""
        return hashlib.sha256(self.to_string().encode()).hexdigest()[:12]

    def to_string(self) -> str:
        from search_space.grammar import format_arch

        return format_arch(self)

    @classmethod
    def parse(cls, text: str) -> Arch:
        from search_space.grammar import parse_arch

        return parse_arch(text)

    def to_dict(self) -> dict[str, Any]:
        blocks = []
        for b in self.blocks:
            d = {f.name: getattr(b, f.name) for f in fields(b)}
            blocks.append({"type": "bneck" if isinstance(b, Bneck) else "ds", **d})
        return {
            "format": SPEC_FORMAT,
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            "stem": {f.name: getattr(self.stem, f.name) for f in fields(self.stem)},
            "blocks": blocks,
            "head": {f.name: getattr(self.head, f.name) for f in fields(self.head)},
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Any) -> Arch:
        if not isinstance(data, dict):
            raise SpecError(f"spec must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format", SPEC_FORMAT)
        if fmt != SPEC_FORMAT:
            raise SpecError(f"format {fmt!r} not supported (expected {SPEC_FORMAT!r})")
        unknown = set(data) - {"format", "resolution", "num_classes", "stem", "blocks", "head"}
        if unknown:
            raise SpecError(f"unknown field {sorted(unknown)[0]!r} (allowed: resolution, num_classes, "
                            "stem, blocks, head)")
        for key in ("stem", "blocks"):
            if key not in data:
                raise SpecError(f"missing field {key!r}")
        stem = _make("stem", Stem, data["stem"])
        raw_blocks = data["blocks"]
        if not isinstance(raw_blocks, list):
            raise SpecError("blocks must be a list")
        blocks: list[Block] = []
        for i, raw in enumerate(raw_blocks):
            if not isinstance(raw, dict):
                raise SpecError(f"block {i}: must be an object")
            raw = dict(raw)
            kind = raw.pop("type", None)
            block_cls = {"bneck": Bneck, "ds": DepthwiseSeparable}.get(kind)  # type: ignore[arg-type]
            if block_cls is None:
                raise SpecError(f"block {i}: type {kind!r} not in {{bneck,ds}}")
            blocks.append(_make(f"block {i}", block_cls, raw))
        head = _make("head", Head, data.get("head", {}))
        try:
            return cls(stem=stem, blocks=tuple(blocks), head=head,
                       num_classes=data.get("num_classes", 1000), resolution=data.get("resolution", 224))
        except TypeError as exc:  # pragma: no cover - defensive
            raise SpecError(str(exc)) from None

    @classmethod
    def from_json(cls, text: str) -> Arch:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> Arch:
        """A copy with fields changed (validated like any new Arch)."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        current.update(changes)
        return Arch(**current)


def _make(where: str, cls: type, raw: Any) -> Any:
    """Construct `cls(**raw)`, turning any mistake into a SpecError that names `where` and the field."""
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: must be an object")
    allowed = [f.name for f in fields(cls)]
    for key in raw:
        if key not in allowed:
            raise SpecError(f"{where}: unknown field {key!r} (allowed: {', '.join(allowed)})")
    try:
        return cls(**raw)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    except TypeError:
        missing = [f.name for f in fields(cls) if f.name not in raw]
        raise SpecError(f"{where}: missing field {missing[0]!r}" if missing else f"{where}: bad fields") from None
