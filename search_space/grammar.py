"""The one place that knows the compact one-line architecture grammar (timm-style).

An arch string is comma-separated segments::

    r224_n1000,stem_k3_c16_hs_s2,ir_k3_e16_c16_re_s1,...,ds_k3_c64_re_s1,...,head_c960_hs_fc1280_hs_d0.2

- ``r<resolution>_n<num_classes>`` comes first;
- ``stem_k<kernel>_c<out>_<act>_s<stride>``;
- ``ir_k<kernel>_e<expand>_c<out>[_se]_<act>_s<stride>`` is a bneck (expand and out are channel counts);
- ``ds_k<kernel>_c<out>_<act>_s<stride>`` is a MobileNetV1 depthwise-separable block;
- ``head[_c<conv>_<act>][_fc<hidden>_<act>]_d<dropout>`` comes last.

Activations: ``re`` = ReLU, ``r6`` = ReLU6, ``hs`` = hard-swish. Tokens after the kind may come in any order.
"""

from __future__ import annotations

import re

from search_space.spec import Arch, Block, Bneck, DepthwiseSeparable, Head, SpecError, Stem

ACT_TOKENS = {"re": "relu", "r6": "relu6", "hs": "hswish"}
TOKEN_OF_ACT = {v: k for k, v in ACT_TOKENS.items()}
_NUM = re.compile(r"^([a-z]+?)(\d+(?:\.\d+)?(?:e-?\d+)?)$")


def _format_float(x: float) -> str:
    """Shortest text that parses back to exactly `x` ('0.2', not '0.20000000000000001')."""
    short = f"{x:g}"
    return short if float(short) == x else repr(x)


def format_block(block: Block) -> str:
    act = TOKEN_OF_ACT[block.act]
    if isinstance(block, Bneck):
        se = "_se" if block.se else ""
        return f"ir_k{block.kernel}_e{block.expand}_c{block.out}{se}_{act}_s{block.stride}"
    return f"ds_k{block.kernel}_c{block.out}_{act}_s{block.stride}"


def format_arch(arch: Arch) -> str:
    s = arch.stem
    parts = [f"r{arch.resolution}_n{arch.num_classes}",
             f"stem_k{s.kernel}_c{s.out}_{TOKEN_OF_ACT[s.act]}_s{s.stride}"]
    parts.extend(format_block(b) for b in arch.blocks)
    h = arch.head
    head = "head"
    if h.conv is not None:
        head += f"_c{h.conv}_{TOKEN_OF_ACT[h.conv_act]}"
    if h.hidden is not None:
        head += f"_fc{h.hidden}_{TOKEN_OF_ACT[h.hidden_act]}"
    head += f"_d{_format_float(h.dropout)}"
    parts.append(head)
    return ",".join(parts)


def _fields(segment: str, where: str, numeric: dict[str, str]) -> tuple[dict[str, object], list[str]]:
    """Split `segment`'s tokens (after the kind) into numeric fields and bare flag tokens."""
    values: dict[str, object] = {}
    flags: list[str] = []
    for token in segment.split("_")[1:]:
        m = _NUM.match(token)
        if m and m.group(1) in numeric:
            name = numeric[m.group(1)]
            if name in values:
                raise SpecError(f"{where}: token {m.group(1)!r} given twice in {segment!r}")
            text = m.group(2)
            values[name] = float(text) if name == "dropout" else int(text) if text.isdigit() else text
            if isinstance(values[name], str):
                raise SpecError(f"{where}: {name} must be an integer in {segment!r}")
        elif token in ACT_TOKENS or token == "se":
            flags.append(token)
        else:
            raise SpecError(f"{where}: unknown token {token!r} in {segment!r}")
    return values, flags


def _one_act(flags: list[str], where: str, segment: str) -> str:
    acts = [ACT_TOKENS[f] for f in flags if f in ACT_TOKENS]
    if len(acts) != 1:
        raise SpecError(f"{where}: expected exactly one activation (re, r6, hs) in {segment!r}")
    return acts[0]


def _require(values: dict[str, object], names: tuple[str, ...], where: str, segment: str) -> None:
    for name in names:
        if name not in values:
            raise SpecError(f"{where}: missing {name} in {segment!r}")


def _build(where: str, cls: type, kwargs: dict[str, object]) -> object:
    try:
        return cls(**kwargs)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None


def parse_block(segment: str, where: str = "block") -> Block:
    kind = segment.split("_", 1)[0]
    if kind == "ir":
        values, flags = _fields(segment, where, {"k": "kernel", "e": "expand", "c": "out", "s": "stride"})
        _require(values, ("kernel", "expand", "out"), where, segment)
        if flags.count("se") > 1:
            raise SpecError(f"{where}: 'se' given twice in {segment!r}")
        return _build(where, Bneck, {**values, "se": "se" in flags, "act": _one_act(flags, where, segment)})
    if kind == "ds":
        values, flags = _fields(segment, where, {"k": "kernel", "c": "out", "s": "stride"})
        _require(values, ("kernel", "out"), where, segment)
        if "se" in flags:
            raise SpecError(f"{where}: ds blocks have no SE in {segment!r}")
        return _build(where, DepthwiseSeparable, {**values, "act": _one_act(flags, where, segment)})
    raise SpecError(f"{where}: unknown block kind {kind!r} in {segment!r} (allowed: ir, ds)")


def _parse_head(segment: str) -> Head:
    tokens = segment.split("_")[1:]
    kwargs: dict[str, object] = {}
    pending: str | None = None  # which layer the next activation token belongs to
    for token in tokens:
        if token in ACT_TOKENS:
            if pending is None:
                raise SpecError(f"head: activation {token!r} must follow c<conv> or fc<hidden> in {segment!r}")
            kwargs[pending] = ACT_TOKENS[token]
            pending = None
            continue
        m = _NUM.match(token)
        name = {"c": "conv", "fc": "hidden", "d": "dropout"}.get(m.group(1)) if m else None
        if m is None or name is None:
            raise SpecError(f"head: unknown token {token!r} in {segment!r}")
        if name in kwargs:
            raise SpecError(f"head: {name} given twice in {segment!r}")
        raw = m.group(2)
        if name != "dropout" and not raw.isdigit():
            raise SpecError(f"head: {name} must be an integer in {segment!r}")
        kwargs[name] = float(raw) if name == "dropout" else int(raw)
        pending = {"conv": "conv_act", "hidden": "hidden_act"}.get(name)
    return _build("head", Head, kwargs)  # type: ignore[return-value]


def parse_arch(text: str) -> Arch:
    """Parse an arch string; errors name the segment (``block 3: kernel 4 not in {3,5,7}``)."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError("arch string is empty")
    segments = [s.strip() for s in text.strip().split(",")]
    if len(segments) < 4:
        raise SpecError("arch string needs r<res>_n<classes>, stem_..., at least one block and head_... "
                        "separated by commas")
    first = segments[0]
    values, flags = _fields("x_" + first, "header", {"r": "resolution", "n": "num_classes"})
    if flags:
        raise SpecError(f"header: unknown token {flags[0]!r} in {first!r}")
    _require(values, ("resolution", "num_classes"), "header", first)
    if not segments[1].startswith("stem_"):
        raise SpecError(f"segment 1 must be the stem (stem_k3_c16_hs_s2), got {segments[1]!r}")
    sv, sflags = _fields(segments[1], "stem", {"k": "kernel", "c": "out", "s": "stride"})
    _require(sv, ("out",), "stem", segments[1])
    if "se" in sflags:
        raise SpecError(f"stem: the stem has no SE in {segments[1]!r}")
    stem = _build("stem", Stem, {**sv, "act": _one_act(sflags, "stem", segments[1])})
    if not segments[-1].startswith("head"):
        raise SpecError(f"the last segment must be the head (head_d0.2), got {segments[-1]!r}")
    head = _parse_head(segments[-1])
    blocks = [parse_block(seg, f"block {i}") for i, seg in enumerate(segments[2:-1])]
    return Arch(stem=stem, blocks=tuple(blocks), head=head, **values)  # type: ignore[arg-type]
