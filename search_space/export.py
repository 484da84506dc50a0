"""Export architectures (and trained weights) as JSON, ONNX or TorchScript.

ONNX uses torch's TorchScript-based exporter (`dynamo=False`): it writes one self-contained file and takes
~10-50 ms per block versus ~1 s for the dynamo exporter (benchmarks/export_speed.py), which matters
because the latency package exports one graph per table entry. Every ONNX file is checked by onnxruntime
against torch before it is reported written.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bneck_common.paths import atomic_write
from search_space.builder import build_model
from search_space.spec import Arch, SpecError

ONNX_OPSET = 17
FORMATS = ("json", "onnx", "torchscript")


class ExportError(RuntimeError):
    """Export failed or the exported graph does not reproduce torch's outputs."""


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a state dict (or a checkpoint dict holding 'state_dict'/'model') into `model`, strictly."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"weights file {str(p)!r} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SpecError(f"weights file {str(p)!r} is not a torch state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    elif isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()
        raise SpecError(f"weights file {str(p)!r} does not fit this architecture: "
                        f"{first[1].strip() if len(first) > 1 else first[0]}") from None


def onnx_bytes(module: nn.Module, input_shape: tuple[int, ...], opset: int = ONNX_OPSET) -> bytes:
    """Serialize `module` (in eval mode) to a self-contained ONNX model in memory."""
    module = module.eval()
    buf = io.BytesIO()
    dummy = torch.zeros(input_shape)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (dummy,), buf, dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["output"], do_constant_folding=True)
    return buf.getvalue()


def verify_onnx(model_bytes: bytes, module: nn.Module, input_shape: tuple[int, ...], atol: float = 1e-4,
                seed: int = 0) -> float:
    """Run the ONNX model in onnxruntime and torch on the same random input; return the max |diff|."""
    import onnxruntime as ort

    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(input_shape).astype(np.float32))
    with torch.no_grad():
        expected = module.eval()(x).numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
    if got.shape != expected.shape or not diff <= atol:
        raise ExportError(f"ONNX output differs from torch: max |diff| {diff:.3g} > {atol} "
                          f"(shapes {got.shape} vs {expected.shape})")
    return diff


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def export_arch(arch: Arch, path: str | os.PathLike[str], fmt: str = "onnx",
                weights: str | os.PathLike[str] | None = None, batch_size: int = 1) -> dict[str, object]:
    """Write `arch` in `fmt` to `path`; returns facts about the file (and the ONNX parity error)."""
    if fmt not in FORMATS:
        raise SpecError(f"format {fmt!r} not in {{{','.join(FORMATS)}}}")
    out = Path(path)
    info: dict[str, object] = {"path": str(out), "format": fmt, "arch_id": arch.arch_id}
    if fmt == "json":
        if weights is not None:
            raise SpecError("--weights has no meaning for --format json (the spec holds no weights)")
        _atomic_write(out, (arch.to_json() + "\n").encode())
        info["bytes"] = out.stat().st_size
        return info
    model = build_model(arch).eval()
    if weights is not None:
        load_weights(model, weights)
    shape = (batch_size, 3, arch.resolution, arch.resolution)
    if fmt == "onnx":
        data = onnx_bytes(model, shape)
        info["max_abs_diff"] = verify_onnx(data, model, shape)
        _atomic_write(out, data)
    else:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, torch.zeros(shape))
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        _atomic_write(out, buf.getvalue())
    info["bytes"] = out.stat().st_size
    return info
