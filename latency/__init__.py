"""Latency lookup tables measured with onnxruntime on the target device, and the predictor built on them."""

from latency.build import (
    TableScaleTiming,
    WholeNetTiming,
    build_table,
    cache_dir,
    default_table_path,
    measure_arch,
    measure_in_table_scale,
    measure_whole,
)
from latency.kit import layer_key, write_kit
from latency.model import LatencyModel, LatencyPredictor
from latency.protocol import KitError, Protocol, fingerprint, run_kit
from latency.table import LatencyError, LatencyTable, OutdatedTableError, anchor_scale, fit_calibration
from latency.validate import validate

__all__ = [
    "KitError", "LatencyError", "LatencyModel", "LatencyPredictor", "LatencyTable", "OutdatedTableError", "Protocol",
    "TableScaleTiming", "WholeNetTiming", "anchor_scale", "build_table", "cache_dir", "default_table_path",
    "fingerprint", "fit_calibration", "layer_key", "measure_arch", "measure_in_table_scale", "measure_whole", "run_kit",
    "validate", "write_kit",
]
