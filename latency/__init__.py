"""Latency lookup tables measured with onnxruntime on the target device, and the predictor built on them."""

from latency.build import build_table, cache_dir, default_table_path, measure_arch
from latency.kit import layer_key, write_kit
from latency.protocol import Protocol, Timing, fingerprint, run_kit
from latency.protocol import measure as measure_onnx
from latency.table import LatencyError, LatencyTable, fit_calibration
from latency.validate import validate

__all__ = [
    "LatencyError", "LatencyTable", "Protocol", "Timing", "build_table", "cache_dir", "default_table_path",
    "fingerprint", "fit_calibration", "layer_key", "measure_arch", "measure_onnx", "run_kit", "validate", "write_kit",
]
