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
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from bneck_common.paths import atomic_write
from latency.protocol import KIT_FORMAT, Protocol
from search_space import (
    Arch,
    LayerConfig,
    SearchSpace,
    SpecError,
    build_layer,
    build_model,
    layer_input_shape,
    onnx_bytes,
    preset,
)
from search_space.surgery import shrink_expand, shrink_group


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
    atomic_write(path, onnx_bytes(build_layer(cfg), layer_input_shape(cfg)), fsync=False)
    return path


def _export_net(args: tuple[str, str]) -> str:
    arch_text, path = args
    import torch

    torch.set_num_threads(1)
    arch = Arch.parse(arch_text)
    atomic_write(path, onnx_bytes(build_model(arch), (1, 3, arch.resolution, arch.resolution)), fsync=False)
    return path


def layer_reference(reference: Arch) -> LayerConfig:
    """The graph every layer row is timed next to: the middle layer of the reference network (for V3-Small at
    224 px a 14x14 5x5 SE bneck of ~100 µs, the scale of a typical row)."""
    layers = reference.layers()
    return layers[len(layers) // 2]


def _m8(v: float) -> int:
    return max(8, round(v / 8) * 8)


ANCHOR_SCALES = (0.25, 0.5)


def offgrid_anchors(configs: Sequence[LayerConfig]) -> list[LayerConfig]:
    """Extra rows below the space's grid, so the table interpolates NetAdapt's and width multipliers' widths
    instead of extrapolating them.

    The grid measures widths of 0.75-1.25x the preset; pruning and α = 0.5 go down to 8 channels, where a layer
    stops getting cheaper in proportion (memory traffic and per-op overhead stay): fitted on the grid alone, a
    56 px bneck with an 8-wide input came out 40-57% low and a 112 px one at 0 µs (measured). Per family (same
    input size, stride, kernel, SE, NL and structure) its median row is scaled by 0.25 and 0.5: all widths, the
    bottleneck only (a pruned residual group), the expansion only (a pruned expansion). Stems get every
    multiple of 8 up to twice their width (V3-Small α = 1.25 was under-predicted by 21% with a 24-wide stem
    extrapolated from 16), heads a grid of input x conv widths down to half: 37% more rows for the
    small space (1,046 on 2,812), 31% for the large.
    """
    have = set(configs)
    anchors: dict[LayerConfig, None] = {}
    families: dict[tuple[object, ...], list[LayerConfig]] = {}
    for c in configs:
        if c.kind == "bneck":
            key = (c.kind, c.size, c.stride, c.kernel, c.se, c.act, c.expand != c.cin, c.cin == c.out)
        elif c.kind in ("stem", "head"):
            key = (c.kind, c.size, c.kernel, c.stride, c.act, c.num_classes, c.head_hidden if c.kind == "head" else 0)
        else:
            continue
        families.setdefault(key, []).append(c)
    for (kind, *_), rows in families.items():
        rows = sorted(rows, key=lambda c: (c.cin, c.expand, c.out))
        rep = rows[len(rows) // 2]
        if kind == "stem":
            widest = max(c.out for c in rows)  # and up to 2x: α = 1.25 of V3-Small has a 24-wide stem
            cands = [replace(rep, out=w) for w in range(8, 2 * widest + 1, 8)]
        elif kind == "head":
            cins = sorted({c.cin for c in rows})
            conv = rep.expand
            cands = [replace(rep, cin=_m8(ci), expand=_m8(conv * f) if conv else 0)
                     for ci in (8, cins[0] / 4, cins[0] / 2, cins[0], cins[-1]) for f in (0.5, 0.75, 1.0)]
        else:
            cands = []
            for f in ANCHOR_SCALES:
                cin, out = _m8(rep.cin * f), _m8(rep.out * f)
                if rep.cin == rep.out:
                    out = cin
                for c_in, e, c_out in ((cin, _m8(rep.expand * f), out), (cin, rep.expand, out),
                                       (rep.cin, _m8(rep.expand * f), rep.out)):
                    if rep.expand == rep.cin:
                        e = c_in  # no expand conv in this family: its width is the input's
                    elif e == c_in:
                        e += 8  # keep the expand conv (a different structure otherwise)
                    cands.append(replace(rep, cin=c_in, expand=e, out=c_out))
        for c in cands:
            if c not in have:
                anchors.setdefault(c)
    return list(anchors)


WIDTH_MULTS = (0.5, 0.75, 1.25)  # validated (held out)
CALIBRATION_WIDTH_MULTS = (0.6, 0.85, 1.1)  # calibrated on: other multipliers, so validation's stay held out
PRESET_OF_SPACE = {"mobilenet_v3_small_space": "mobilenet_v3_small", "mobilenet_v3_large_space": "mobilenet_v3_large"}


def offgrid_archs(space: SearchSpace, n_pruned: int, seed: int,
                  width_mults: tuple[float, ...] = WIDTH_MULTS) -> list[tuple[str, Arch]]:
    """Width-multiplier variants of the space's preset (when it is one) and randomly pruned nets (1-4 cuts of
    an expansion or a residual group's width to 40-90%, multiples of 8), as NetAdapt and uniform thinning make:
    the calibration fits on some, `validate` holds out others (another seed)."""
    out: list[tuple[str, Arch]] = []
    base = space.preset
    name = PRESET_OF_SPACE.get(space.name)
    if base is not None and name and preset(name, 1.0, base.resolution, base.num_classes) == base:
        out += [(f"width_mult_{a:g}", preset(name, a, base.resolution, base.num_classes)) for a in width_mults]
    rng = np.random.default_rng([seed, 17])
    tries = 0
    while sum(k == "pruned" for k, _ in out) < n_pruned and tries < 50 * max(1, n_pruned):
        tries += 1
        arch = base if base is not None and rng.random() < 0.3 else space.sample(rng)
        for _ in range(int(rng.integers(1, 5))):  # a few NetAdapt-like cuts of 10-60%
            i = int(rng.integers(len(arch.blocks)))
            try:
                if rng.random() < 0.6:
                    width = arch.blocks[i].expand
                    arch = shrink_expand(arch, i, max(8, int(width * rng.uniform(0.4, 0.9)) // 8 * 8))
                else:
                    width = arch.blocks[i].out
                    arch = shrink_group(arch, i, max(8, int(width * rng.uniform(0.4, 0.9)) // 8 * 8))
            except (SpecError, AttributeError):
                continue
        if space.preset is None or arch != space.preset:
            out.append(("pruned", arch))
    return out


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
    if layers is None:
        grid = space.layer_configs(resolution)
        layers = [*grid, *offgrid_anchors(grid)]
    configs = list(layers)
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
    atomic_write(kit / "manifest.json", json.dumps(manifest, indent=1))
    shutil.copyfile(Path(__file__).with_name("protocol.py"), kit / "measure.py")
    return kit
