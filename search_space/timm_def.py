"""timm-style architecture definitions of an `Arch` (`arch_def` block strings), and back.

timm (huggingface/pytorch-image-models) builds its MobileNet family from a list of stages of block strings such as
``ir_r1_k5_s2_e3.67_c40_se0.25_nre`` (`_efficientnet_builder._decode_block_str`). Writing a searched network in
that grammar lets anyone rebuild it in timm without this package. timm is not a dependency: the grammar is restated
here from its documentation and model definitions. The mapping, exact unless the doc's `mismatches` says otherwise:

- bneck with an expansion conv -> ``ir``. timm's expand width is ``make_divisible(in * e, 8)``, so `e` gets as many
  digits as it takes to give back our exact width (checked for every block);
- bneck without one (expand == input width) -> ``ds_..._e1``: timm's ``ir`` always has a 1x1 expansion conv, its
  ``ds`` is dw + BN + act, [SE], linear 1x1 + BN, residual at stride 1 with in == out, i.e. our block;
- MobileNetV1's depthwise-separable block -> ``dsa`` (activation after the pointwise conv, no residual), as in
  timm's mobilenetv1 definitions (timm's plain ``ds`` has a linear pointwise conv and a residual);
- a V3 head (pool, then a hidden linear) -> timm ``MobileNetV3``: the head's 1x1 conv is a last ``cn_r1_k1_s1_cN``
  stage and ``num_features`` is the hidden width (timm's biased ``conv_head``); any other head -> timm
  ``EfficientNet`` with ``num_features`` = the head conv width (0: none);
- activation suffix ``_nre`` ReLU, ``_nr6`` ReLU6, ``_nhs`` hard-swish; none when the block uses ``act_layer``
  (our stem's activation, which timm also applies to the stem and the head).

Stages are our residual groups (a new stage at every stride 2 or width change), which is where timm's own
MobileNet definitions split them; timm forces stride 1 on every block but a stage's first.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from bneck_common.paths import atomic_write
from search_space.spaces import residual_groups
from search_space.spec import (
    Activation,
    Arch,
    Block,
    Bneck,
    DepthwiseSeparable,
    Head,
    SpecError,
    Stem,
    make_divisible,
    se_channels,
)

TIMM_FORMAT = "bneck-timm/1"
_TIMM_ACT: dict[str, str] = {"relu": "relu", "relu6": "relu6", "hswish": "hard_swish"}
_FROM_TIMM_ACT: dict[str, Activation] = {"relu": "relu", "relu6": "relu6", "hard_swish": "hswish"}
_SUFFIX: dict[str, str] = {"relu": "nre", "relu6": "nr6", "hswish": "nhs"}
_FROM_SUFFIX: dict[str, Activation] = {"re": "relu", "r6": "relu6", "hs": "hswish"}


def _timm_se_width(channels: int) -> int:
    """timm MobileNetV3's SE squeeze: round_channels(channels * 0.25), i.e. make_divisible(.., 8)."""
    return make_divisible(channels * 0.25, 8)


def expand_ratio(cin: int, expand: int, where: str = "block") -> str:
    """The shortest `e` (2+ decimals) for which timm's make_divisible(cin * e, 8) is exactly `expand`."""
    ratio = expand / cin
    candidates = [f"{ratio:.{d}f}".rstrip("0").rstrip(".") for d in range(2, 13)] + [repr(ratio)]
    for text in candidates:
        if make_divisible(cin * float(text), 8) == expand:
            return text
    raise SpecError(f"{where}: expand width {expand} (input {cin}) cannot be written for timm, whose expand width "
                    "is make_divisible(in * e, 8): a multiple of 8, at least 8")


def _act_suffix(act: str, default: str) -> str:
    return "" if act == default else f"_{_SUFFIX[act]}"


def _block_string(i: int, cin: int, b: Block, act_layer: str) -> str:
    suffix = _act_suffix(b.act, act_layer)
    if isinstance(b, DepthwiseSeparable):
        return f"dsa_r1_k{b.kernel}_s{b.stride}_c{b.out}{suffix}"
    se = "_se0.25" if b.se else ""
    if b.expand == cin:
        return f"ds_r1_k{b.kernel}_s{b.stride}_e1_c{b.out}{se}{suffix}"
    e = expand_ratio(cin, b.expand, f"block {i}")
    return f"ir_r1_k{b.kernel}_s{b.stride}_e{e}_c{b.out}{se}{suffix}"


def to_timm(arch: Arch) -> dict[str, Any]:
    """The timm definition of `arch`: arch_def, model kwargs, a note on how to build it, and any mismatches."""
    act_layer = arch.stem.act
    head = arch.head
    v3 = head.hidden is not None
    model = "MobileNetV3" if v3 else "EfficientNet"
    _, groups = residual_groups(arch.stem.out, arch.blocks)
    arch_def: list[list[str]] = []
    i, cin = 0, arch.stem.out
    for group in groups:
        stage = []
        for b in group:
            stage.append(_block_string(i, cin, b, act_layer))
            i, cin = i + 1, b.out
        arch_def.append(stage)
    if v3 and head.conv is not None:
        arch_def.append([f"cn_r1_k1_s1_c{head.conv}{_act_suffix(head.conv_act, act_layer)}"])
    mismatches = _mismatches(arch, v3)
    num_features = head.hidden if v3 else (head.conv or 0)
    kwargs = (f"block_args=decode_arch_def(arch_def), stem_size={arch.stem.out}"
              + ("" if v3 else f", stem_kernel_size={arch.stem.kernel}")
              + f", num_features={num_features}, act_layer='{_TIMM_ACT[act_layer]}'"
              + (", se_layer=partial(SqueezeExcite, gate_layer='hard_sigmoid', force_act_layer=nn.ReLU, "
                 "rd_round_fn=round_channels)" if v3 else "")
              + f", norm_layer=partial(nn.BatchNorm2d, eps=1e-3), drop_rate={head.dropout:g}, "
              f"num_classes={arch.num_classes}")
    like = "mobilenetv3_*" if v3 else "mobilenetv2_* / mobilenetv1_*"
    note = (f"timm {model}({kwargs}) at {arch.resolution} px, the settings of timm's {like} models, builds this "
            f"network layer for layer" + ("" if not mismatches else " except for the listed mismatches")
            + "; weights are not converted (timm names its layers differently).")
    return {"format": TIMM_FORMAT, "model": model, "arch_def": arch_def, "stem_size": arch.stem.out,
            "stem_kernel_size": arch.stem.kernel, "stem_stride": arch.stem.stride,
            "stem_act": _TIMM_ACT[arch.stem.act], "act_layer": _TIMM_ACT[act_layer], "num_features": num_features,
            "head_conv": head.conv, "head_conv_act": _TIMM_ACT[head.conv_act] if head.conv is not None else None,
            "head_act": _TIMM_ACT[head.hidden_act] if v3 else None, "drop_rate": head.dropout,
            "num_classes": arch.num_classes, "resolution": arch.resolution, "note": note, "mismatches": mismatches}


def _mismatches(arch: Arch, v3: bool) -> list[str]:
    """Where timm's classes cannot reproduce `arch` exactly (the doc still round-trips through our decoder)."""
    out: list[str] = []
    s, h = arch.stem, arch.head
    if s.stride != 2:
        out.append(f"stem stride {s.stride}: timm's stem always has stride 2")
    if v3 and s.kernel != 3:
        out.append(f"stem kernel {s.kernel}: timm's MobileNetV3 stem is always 3x3")
    if v3 and h.hidden_act != s.act:
        out.append(f"head activation {h.hidden_act}: timm's MobileNetV3 uses act_layer ({s.act}) after conv_head")
    if not v3 and h.conv is not None and h.conv_act != s.act:
        out.append(f"head conv activation {h.conv_act}: timm's EfficientNet uses act_layer ({s.act}) there")
    widths = [s.out, *(b.out for b in arch.blocks), *([h.conv] if v3 and h.conv is not None else [])]
    odd = sorted({w for w in widths if make_divisible(w, 8) != w})
    if odd:
        out.append(f"widths {', '.join(map(str, odd))} are not kept by timm's default round_chs_fn; pass "
                   "round_chs_fn=partial(round_channels, multiplier=0) (no rounding)")
    se_blocks = [(i, b) for i, b in enumerate(arch.blocks) if isinstance(b, Bneck) and b.se]
    if se_blocks and not v3:
        out.append("SE: timm's EfficientNet sizes the squeeze from the block input with a sigmoid gate and the "
                   "block's activation; ours squeezes make_divisible(expand // 4, 8) with ReLU and a hard-sigmoid")
    elif se_blocks:
        bad = [f"block {i} ({se_channels(b.expand)} vs timm {_timm_se_width(b.expand)})" for i, b in se_blocks
               if se_channels(b.expand) != _timm_se_width(b.expand)]
        if bad:
            out.append("SE squeeze width: ours is make_divisible(expand // 4, 8), timm's make_divisible(expand * "
                       f"0.25, 8): {', '.join(bad)}")
    return out


# ---- decoding ---------------------------------------------------------------------------------------------------
_KNOWN_TYPES = ("ir", "ds", "dsa", "cn")


def _parse_block(text: Any, where: str) -> dict[str, Any]:
    """One timm block string as {type, r, k, s, e, c, se, act, noskip}; unsupported options are errors."""
    if not isinstance(text, str) or not text:
        raise SpecError(f"{where}: block must be a string like 'ir_r1_k3_s2_e4_c24', got {text!r}")
    ops = text.split("_")
    kind = ops[0]
    if kind not in _KNOWN_TYPES:
        raise SpecError(f"{where}: block type {kind!r} in {text!r} not supported (known: {', '.join(_KNOWN_TYPES)})")
    opts: dict[str, Any] = {"type": kind, "act": None, "noskip": False, "se": 0.0}
    for op in ops[1:]:
        if op in ("noskip", "skip"):
            opts["noskip"] = op == "noskip"
            if op == "skip" and kind != "cn":
                raise SpecError(f"{where}: option 'skip' in {text!r} not supported")
            continue
        if op.startswith("n"):
            if op[1:] not in _FROM_SUFFIX:
                raise SpecError(f"{where}: activation {op!r} in {text!r} not supported (nre, nr6, nhs)")
            opts["act"] = _FROM_SUFFIX[op[1:]]
            continue
        parts = re.split(r"(\d.*)", op)
        key, value = (parts[0], parts[1]) if len(parts) >= 2 else (op, "")
        if key not in ("r", "k", "s", "e", "c", "se"):
            raise SpecError(f"{where}: option {op!r} in {text!r} not supported (r, k, s, e, c, se, n.., noskip)")
        try:
            opts[key] = float(value) if key in ("e", "se") else int(value)
        except ValueError:
            raise SpecError(f"{where}: option {op!r} in {text!r} is not a number") from None
    required = ("r", "k", "s", "c", "e") if kind == "ir" else ("r", "k", "s", "c")
    for key in required:
        if key not in opts:
            raise SpecError(f"{where}: {text!r} lacks option {key!r}")
    if opts["r"] < 1:
        raise SpecError(f"{where}: repeats r{opts['r']} in {text!r} must be at least 1")
    return opts


def _field(doc: dict[str, Any], key: str, default: Any = None, *, required: bool = False) -> Any:
    if key not in doc or doc[key] is None:
        if required:
            raise SpecError(f"timm definition: missing field {key!r}")
        return default
    return doc[key]


def _act(doc: dict[str, Any], key: str, default: Activation) -> Activation:
    name = _field(doc, key)
    if name is None:
        return default
    if name not in _FROM_TIMM_ACT:
        raise SpecError(f"timm definition: {key} {name!r} not in {{{', '.join(_FROM_TIMM_ACT)}}}")
    return _FROM_TIMM_ACT[name]


def arch_from_timm(doc: dict[str, Any] | str) -> Arch:
    """The `Arch` a timm definition (as written by `to_timm`, or hand-written in timm's grammar) describes."""
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError as exc:
            raise SpecError(f"timm definition: malformed JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"timm definition must be a JSON object, got {type(doc).__name__}")
    fmt = doc.get("format", TIMM_FORMAT)
    if fmt != TIMM_FORMAT:
        raise SpecError(f"timm definition: format {fmt!r} not supported (expected {TIMM_FORMAT!r})")
    model = _field(doc, "model", "MobileNetV3")
    if model not in ("MobileNetV3", "EfficientNet"):
        raise SpecError(f"timm definition: model {model!r} not in {{MobileNetV3, EfficientNet}}")
    act_layer = _act(doc, "act_layer", "relu")  # timm's classes default to ReLU
    try:
        stem = Stem(out=_field(doc, "stem_size", required=True), kernel=_field(doc, "stem_kernel_size", 3),
                    stride=_field(doc, "stem_stride", 2), act=_act(doc, "stem_act", act_layer))
    except SpecError as exc:
        raise SpecError(f"timm definition: stem: {exc}") from None
    stages = _field(doc, "arch_def", required=True)
    if not isinstance(stages, list) or not stages or not all(isinstance(st, list) and st for st in stages):
        raise SpecError("timm definition: arch_def must be a non-empty list of non-empty lists of block strings")
    blocks: list[Block] = []
    head_conv: tuple[int, Activation] | None = None
    cin = stem.out
    for si, stage in enumerate(stages):
        for bi, text in enumerate(stage):
            where = f"arch_def stage {si} block {bi}"
            o = _parse_block(text, where)
            act: Activation = o["act"] or act_layer
            if o["type"] == "cn":
                if model != "MobileNetV3" or si != len(stages) - 1 or len(stage) != 1 or o["k"] != 1 or o["s"] != 1 \
                        or o["r"] != 1:
                    raise SpecError(f"{where}: {text!r}: a cn block is only supported as MobileNetV3's last "
                                    "stage cn_r1_k1_s1_cN (the head's 1x1 conv)")
                head_conv = (o["c"], act)
                continue
            for rep in range(o["r"]):
                stride = o["s"] if bi == 0 and rep == 0 else 1  # timm: only a stage's first block strides
                b = _make_block(o, cin, stride, act, f"{where} ({text!r})")
                if o["noskip"] and stride == 1 and cin == b.out and not isinstance(b, DepthwiseSeparable):
                    raise SpecError(f"{where}: {text!r}: noskip on a block that would have a residual is not "
                                    "supported")
                blocks.append(b)
                cin = b.out
    try:
        head = _make_head(doc, model, head_conv, act_layer)
        return Arch(stem=stem, blocks=tuple(blocks), head=head, num_classes=_field(doc, "num_classes", 1000),
                    resolution=_field(doc, "resolution", 224))
    except SpecError as exc:
        raise SpecError(f"timm definition: {exc}") from None


def _make_block(o: dict[str, Any], cin: int, stride: int, act: Activation, where: str) -> Block:
    try:
        if o["type"] == "dsa":
            if o["se"]:
                raise SpecError("SE in a dsa block is not supported (MobileNetV1 blocks have none)")
            return DepthwiseSeparable(kernel=o["k"], out=o["c"], stride=stride, act=act)
        if o["type"] == "ds":
            return Bneck(kernel=o["k"], expand=cin, out=o["c"], stride=stride, se=o["se"] > 0, act=act)
        if o["e"] <= 0:
            raise SpecError(f"expansion e{o['e']:g} must be positive")
        expand = make_divisible(cin * o["e"], 8)
        if expand == cin:
            raise SpecError(f"expansion gives {expand} = input width; timm's ir block then still has a 1x1 "
                            "expansion conv, which a bneck without expansion lacks (write it as ds_..._e1)")
        return Bneck(kernel=o["k"], expand=expand, out=o["c"], stride=stride, se=o["se"] > 0, act=act)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None


def _make_head(doc: dict[str, Any], model: str, head_conv: tuple[int, Activation] | None,
               act_layer: Activation) -> Head:
    num_features = _field(doc, "num_features", 0)
    dropout = _field(doc, "drop_rate", 0.0)
    if model == "MobileNetV3":
        if not num_features:
            raise SpecError("MobileNetV3 needs num_features (the hidden width after pooling)")
        conv, conv_act = head_conv if head_conv is not None else (None, act_layer)
        declared = _field(doc, "head_conv")
        if declared is not None and declared != conv:
            raise SpecError(f"head_conv {declared} disagrees with arch_def's last cn stage "
                            f"({conv if conv is not None else 'none'})")
        return Head(conv=conv, conv_act=conv_act, hidden=num_features, hidden_act=_act(doc, "head_act", act_layer),
                    dropout=dropout)
    return Head(conv=num_features or None, conv_act=_act(doc, "head_conv_act", act_layer), hidden=None,
                dropout=dropout)


def export_timm(arch: Arch, path: str | os.PathLike[str]) -> dict[str, object]:
    """Write `to_timm(arch)` as JSON to `path`; returns facts about the file like `export_arch`."""
    doc = to_timm(arch)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(doc, indent=2) + "\n")
    return {"path": str(out), "format": "timm", "arch_id": arch.arch_id, "bytes": out.stat().st_size,
            "model": doc["model"], "mismatches": doc["mismatches"]}
