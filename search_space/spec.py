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
    The fields are the latency table's row layout, stored in every table and kit, so they keep their names even
    where a kind uses them for something else (the head's conv width sits in `expand`, its hidden width in `out`,
    its two NLs in `act`). Nothing outside this class packs or reads them that way: build a config with
    `of_stem` / `of_block` / `of_head`, read it back with `spec()` or `head_conv` / `head_hidden`.
    (`LatencyTable._fast_sums` repeats the packing as tuples: it is the search's hot path, 6x faster than
    `Arch.layers()`, and a test holds it to this class.)
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

    @classmethod
    def of_stem(cls, stem: Stem, size: int) -> LayerConfig:
        return cls("stem", size, 3, 0, stem.out, stem.kernel, stem.stride, False, stem.act)

    @classmethod
    def of_block(cls, block: Bneck | DepthwiseSeparable, size: int, cin: int) -> LayerConfig:
        if isinstance(block, Bneck):
            return cls("bneck", size, cin, block.expand, block.out, block.kernel, block.stride, block.se, block.act)
        return cls("ds", size, cin, 0, block.out, block.kernel, block.stride, False, block.act)

    @classmethod
    def of_head(cls, head: Head, size: int, cin: int, num_classes: int) -> LayerConfig:
        return cls("head", size, cin, head.conv or 0, head.hidden or 0, 1, 1, False,
                   f"{head.conv_act}/{head.hidden_act}", num_classes)

    @property
    def head_conv(self) -> int | None:
        """The head's 1x1 conv width (None: no conv)."""
        self._require("head")
        return self.expand or None

    @property
    def head_hidden(self) -> int | None:
        """The head's hidden (pre-classifier) width (None: no hidden layer)."""
        self._require("head")
        return self.out or None

    def spec(self) -> Stem | Bneck | DepthwiseSeparable | Head:
        """The spec this layer was made from (a head without dropout: dropout costs no time)."""
        if self.kind == "stem":
            return Stem(self.out, self.kernel, self.stride, self.act)  # type: ignore[arg-type]
        if self.kind == "bneck":
            return Bneck(self.kernel, self.expand, self.out, self.stride, self.se, self.act)  # type: ignore[arg-type]
        if self.kind == "ds":
            return DepthwiseSeparable(self.kernel, self.out, self.stride, self.act)  # type: ignore[arg-type]
        if self.kind == "head":
            conv_act, hidden_act = self.act.split("/")
            return Head(conv=self.head_conv, conv_act=conv_act, hidden=self.head_hidden,  # type: ignore[arg-type]
                        hidden_act=hidden_act, dropout=0.0)  # type: ignore[arg-type]
        raise SpecError(f"kind {self.kind!r} not in {{stem,bneck,ds,head}}")

    def _require(self, kind: str) -> None:
        if self.kind != kind:
            raise AttributeError(f"a {self.kind} layer has no {kind} fields")

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
        out = [LayerConfig.of_stem(self.stem, size)]
        size = out_size(size, self.stem.stride)
        cin = self.stem.out
        for b in self.blocks:
            out.append(LayerConfig.of_block(b, size, cin))
            size = out_size(size, b.stride)
            cin = b.out
        out.append(LayerConfig.of_head(self.head, size, cin, self.num_classes))
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
