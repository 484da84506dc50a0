"""The bneck search space: architecture specs, MobileNet presets, spaces, builder, cost model, export."""

from search_space.builder import BneckNet, build_layer, build_model, layer_input_shape
from search_space.cost import count, count_encoded, layer_cost, madds, params
from search_space.export import ExportError, export_arch, load_weights, onnx_bytes, verify_onnx
from search_space.grammar import format_arch, parse_arch, parse_block
from search_space.presets import (
    PRESETS,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_small,
    preset,
)
from search_space.resolve import load_arch
from search_space.spaces import (
    SPACES,
    Decision,
    LayerTables,
    SearchSpace,
    Stage,
    get_space,
    mobilenet_v3_large_space,
    mobilenet_v3_small_space,
    space_around,
)
from search_space.spec import (
    Arch,
    Block,
    Bneck,
    DepthwiseSeparable,
    Head,
    LayerConfig,
    SpecError,
    Stem,
    make_divisible,
    se_channels,
)
from search_space.timm_def import arch_from_timm, export_timm, to_timm

__all__ = [
    "PRESETS",
    "SPACES",
    "Arch",
    "Block",
    "Bneck",
    "BneckNet",
    "Decision",
    "DepthwiseSeparable",
    "ExportError",
    "Head",
    "LayerConfig",
    "LayerTables",
    "SearchSpace",
    "SpecError",
    "Stage",
    "Stem",
    "arch_from_timm",
    "build_layer",
    "build_model",
    "count",
    "count_encoded",
    "export_arch",
    "export_timm",
    "format_arch",
    "get_space",
    "layer_cost",
    "layer_input_shape",
    "load_arch",
    "load_weights",
    "madds",
    "make_divisible",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_large_space",
    "mobilenet_v3_small",
    "mobilenet_v3_small_space",
    "onnx_bytes",
    "params",
    "parse_arch",
    "parse_block",
    "preset",
    "se_channels",
    "space_around",
    "to_timm",
    "verify_onnx",
]
