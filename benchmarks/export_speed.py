"""ONNX export time per block (TorchScript exporter, what bneck uses, vs the dynamo exporter) and per net.

The latency table exports one small graph per entry (thousands), so per-block export time matters.
Usage: python benchmarks/export_speed.py [--blocks N] [--dynamo-blocks M] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write

import search_space as ss


def dynamo_bytes(module: torch.nn.Module, shape: tuple[int, ...]) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        path = Path(d) / "m.onnx"
        torch.onnx.export(module, (torch.zeros(shape),), str(path), dynamo=True, external_data=False)
        return path.read_bytes()


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--blocks", type=int, default=60, help="blocks exported with the TorchScript exporter")
    ap.add_argument("--dynamo-blocks", type=int, default=5, help="blocks exported with the dynamo exporter")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # dynamo exporter: torchvision-op chatter
    space = ss.mobilenet_v3_large_space()
    configs = space.layer_configs(224)
    rng = np.random.default_rng(0)
    picks = [configs[i] for i in rng.choice(len(configs), args.blocks, replace=False)]
    ts_s, verify_s, sizes = [], [], []
    for cfg in picks:
        module = ss.build_layer(cfg)
        shape = ss.layer_input_shape(cfg)
        data = b""

        def export(module=module, shape=shape) -> None:
            nonlocal data
            data = ss.onnx_bytes(module, shape)

        ts_s.append(timed(export))
        verify_s.append(timed(lambda data=data, module=module, shape=shape: ss.verify_onnx(data, module, shape)))
        sizes.append(len(data))
    dyn_s = []
    dyn_ok = True
    for cfg in picks[: args.dynamo_blocks]:
        module = ss.build_layer(cfg)
        try:
            dyn_s.append(timed(lambda module=module, cfg=cfg: dynamo_bytes(module, ss.layer_input_shape(cfg))))
        except Exception as exc:
            dyn_ok = False
            print(f"dynamo export failed: {type(exc).__name__}: {exc}"[:200])
            break
    nets = {}
    for name in ("mobilenet_v3_small", "mobilenet_v3_large"):
        arch = ss.preset(name)
        model = ss.build_model(arch).eval()
        shape = (1, 3, 224, 224)
        nets[name] = {"torchscript_export_s": timed(lambda model=model, shape=shape: ss.onnx_bytes(model, shape))}
    res = {
        "blocks": len(picks),
        "torchscript_export_ms_per_block_median": 1e3 * statistics.median(ts_s),
        "torchscript_export_ms_per_block_p90": 1e3 * float(np.percentile(ts_s, 90)),
        "verify_ms_per_block_median": 1e3 * statistics.median(verify_s),
        "onnx_bytes_per_block_median": statistics.median(sizes),
        "dynamo_blocks": len(dyn_s),
        "dynamo_export_ms_per_block_median": 1e3 * statistics.median(dyn_s) if dyn_s else None,
        "dynamo_ok": dyn_ok,
        "speedup_torchscript_vs_dynamo": (statistics.median(dyn_s) / statistics.median(ts_s[: len(dyn_s)]))
        if dyn_s else None,
        "whole_nets": nets,
        "est_minutes_to_export_large_space_224": len(configs) * statistics.median(ts_s) / 60,
        "large_space_layer_configs_224": len(configs),
    }
    path = write("export_speed", res, args.out)
    print(f"TorchScript exporter: {res['torchscript_export_ms_per_block_median']:.1f} ms/block median "
          f"(p90 {res['torchscript_export_ms_per_block_p90']:.1f}), verify {res['verify_ms_per_block_median']:.1f} ms")
    if dyn_s:
        print(f"dynamo exporter:      {res['dynamo_export_ms_per_block_median']:.1f} ms/block median "
              f"({res['speedup_torchscript_vs_dynamo']:.0f}x slower on the same blocks)")
    for n, v in nets.items():
        print(f"{n}: whole-net export {v['torchscript_export_s']:.2f} s")
    print(f"exporting all {len(configs)} layer configs of mobilenet_v3_large_space @224: "
          f"~{res['est_minutes_to_export_large_space_224']:.1f} min. wrote {path}")


if __name__ == "__main__":
    main()
