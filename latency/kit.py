"""Latency kits: the ONNX graphs a table needs, a manifest, and the standalone measuring script.

`bneck latency build` writes a kit and measures it in-process; `bneck latency kit` writes the same folder for
a device that has only Python, numpy and onnxruntime. Either way the rows come from `latency/protocol.py`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from latency.protocol import KIT_FORMAT, Protocol
from search_space import (
    Arch,
    LayerConfig,
    SearchSpace,
    build_layer,
    build_model,
    layer_input_shape,
    onnx_bytes,
)


def layer_key(cfg: LayerConfig) -> str:
    """Stable, file-name-safe key of a layer configuration (a table row)."""
    se = "_se" if cfg.se else ""
    act = cfg.act.replace("/", "-")
    tail = f"_n{cfg.num_classes}" if cfg.kind == "head" else ""
    return f"{cfg.kind}_r{cfg.size}_i{cfg.cin}_e{cfg.expand}_o{cfg.out}_k{cfg.kernel}_s{cfg.stride}{se}_{act}{tail}"


def _export_layer(args: tuple[dict[str, Any], str]) -> str:
    cfg_dict, path = args
    import torch

    torch.set_num_threads(1)
    cfg = LayerConfig(**cfg_dict)
    data = onnx_bytes(build_layer(cfg), layer_input_shape(cfg))
    tmp = Path(path + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _export_net(args: tuple[str, str]) -> str:
    arch_text, path = args
    import torch

    torch.set_num_threads(1)
    arch = Arch.parse(arch_text)
    data = onnx_bytes(build_model(arch), (1, 3, arch.resolution, arch.resolution))
    tmp = Path(path + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def layer_reference(reference: Arch) -> LayerConfig:
    """The graph every layer row is timed next to: the middle layer of the reference network (for V3-Small at
    224 px a 14x14 5x5 SE bneck of ~100 µs, the scale of a typical row)."""
    layers = reference.layers()
    return layers[len(layers) // 2]


def write_kit(out_dir: str | os.PathLike[str], space: SearchSpace, resolution: int, reference: Arch,
              calibration: Sequence[Arch], threads: int = 1, layers: Sequence[LayerConfig] | None = None,
              protocol: Protocol | None = None, workers: int = 2,
              progress: Callable[[int, int], None] | None = None, skip_keys: set[str] | frozenset[str] = frozenset(),
              seed: int = 0) -> Path:
    """Write (or complete) a kit folder. Existing graph files are kept, so an interrupted export resumes;
    entries in `skip_keys` (already measured) stay in the manifest but get no graph file. `seed` fixes the order
    rows are measured in."""
    kit = Path(out_dir)
    (kit / "blocks").mkdir(parents=True, exist_ok=True)
    (kit / "nets").mkdir(exist_ok=True)
    configs = list(layers) if layers is not None else space.layer_configs(resolution)
    entries: list[dict[str, Any]] = []
    jobs_layers: list[tuple[dict[str, Any], str]] = []
    jobs_nets: list[tuple[str, str]] = []
    for cfg in configs:
        key = layer_key(cfg)
        rel = f"blocks/{key}.onnx"
        entries.append({"key": key, "kind": "layer", "file": rel, "config": asdict(cfg),
                        "input_shape": list(layer_input_shape(cfg))})
        if key not in skip_keys and not (kit / rel).exists():
            jobs_layers.append((asdict(cfg), str(kit / rel)))
    lref = layer_reference(reference)
    entries.append({"key": "layer_reference", "kind": "layer_reference", "file": "layer_reference.onnx",
                    "config": asdict(lref), "input_shape": list(layer_input_shape(lref))})
    if not (kit / "layer_reference.onnx").exists():
        jobs_layers.append((asdict(lref), str(kit / "layer_reference.onnx")))
    nets = [("reference", reference)] + [(f"net:{a.arch_id}", a) for a in calibration]
    for key, arch in nets:
        if arch.resolution != resolution:
            raise ValueError(f"{key}: resolution {arch.resolution} != kit resolution {resolution}")
        rel = "reference.onnx" if key == "reference" else f"nets/{arch.arch_id}.onnx"
        entries.append({"key": key, "kind": "reference" if key == "reference" else "net", "file": rel,
                        "arch": arch.to_string(), "input_shape": [1, 3, resolution, resolution],
                        "layers": [layer_key(c) for c in arch.layers()]})
        if not (kit / rel).exists():  # nets are cheap and needed by every calibration round
            jobs_nets.append((arch.to_string(), str(kit / rel)))
    total = len(configs) + 1 + len(nets)
    done = total - len(jobs_layers) - len(jobs_nets)
    if progress:
        progress(done, total)
    if jobs_layers or jobs_nets:
        if workers > 1 and len(jobs_layers) + len(jobs_nets) > 16:  # spawning workers costs seconds each
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                for _ in pool.map(_export_layer, jobs_layers, chunksize=8):
                    done += 1
                    if progress:
                        progress(done, total)
                for _ in pool.map(_export_net, jobs_nets):
                    done += 1
                    if progress:
                        progress(done, total)
        else:
            for job in jobs_layers:
                _export_layer(job)
                done += 1
                if progress:
                    progress(done, total)
            for job in jobs_nets:
                _export_net(job)
                done += 1
                if progress:
                    progress(done, total)
    manifest = {"format": KIT_FORMAT, "space": space.name, "space_info": space.to_dict(), "resolution": resolution,
                "threads": threads, "protocol": asdict(protocol or Protocol()), "seed": seed, "entries": entries}
    tmp = kit / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, kit / "manifest.json")
    shutil.copyfile(Path(__file__).with_name("protocol.py"), kit / "measure.py")
    return kit
