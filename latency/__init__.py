"""Latency lookup tables measured with onnxruntime on the target device (see issue: latency)."""
