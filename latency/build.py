"""Building latency tables on this machine: write a kit, measure it with the protocol, import it.

The kit folder (`<table>.kit/`) keeps the manifest and the results CSV, so an interrupted build resumes
(`--resume`) without re-measuring rows, and `--add SPEC` measures only the new layers. Graph files are
deleted once measured (a 224 px table's graphs take hundreds of MB).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latency.kit import layer_key, write_kit
from latency.protocol import Protocol, Timing, done_rows, fingerprint, run_kit
from latency.protocol import measure as measure_onnx
from latency.table import LatencyError, LatencyTable
from search_space import Arch, LayerConfig, SearchSpace, build_model, onnx_bytes
from search_space.paths import cache_dir
from search_space.progress import progress_bar


def device_id(threads: int, provider: str) -> str:
    fp = fingerprint(threads, provider)
    text = json.dumps({k: fp[k] for k in ("cpu", "cores", "machine", "os", "onnxruntime", "provider")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def default_table_path(space: SearchSpace, resolution: int, threads: int = 1,
                       provider: str = "CPUExecutionProvider") -> Path:
    name = f"{space.name}_w{space.width_mult:g}_n{space.num_classes}_r{resolution}_t{threads}.parquet"
    return cache_dir() / "latency" / device_id(threads, provider) / name


def measure_arch(arch: Arch, threads: int = 1, provider: str = "CPUExecutionProvider",
                 protocol: Protocol | None = None) -> Timing:
    """Whole-network latency of `arch` with the table protocol."""
    data = onnx_bytes(build_model(arch), (1, 3, arch.resolution, arch.resolution))
    return measure_onnx(data, threads, provider, protocol)


def build_table(space: SearchSpace, resolution: int | None = None, threads: int = 1,
                provider: str = "CPUExecutionProvider", out: str | os.PathLike[str] | None = None,
                resume: bool = False, force: bool = False, add: Sequence[Arch] = (), n_calibration: int = 24,
                seed: int = 0, protocol: Protocol | None = None, workers: int = 2, show_progress: bool = True,
                keep_graphs: bool = False) -> tuple[LatencyTable, Path]:
    """Measure every layer configuration of `space` at `resolution` and save the table; returns it and its path."""
    res = space.resolution if resolution is None else resolution
    if threads < 1:
        raise LatencyError(f"threads {threads} must be >= 1")
    if space.resolution != res:  # from its own definition: custom spaces are not in the registry
        space = SearchSpace.from_dict({**space.to_dict(), "resolution": res})
    path = Path(out) if out else default_table_path(space, res, threads, provider)
    kit = path.with_name(path.name + ".kit")
    if force:
        shutil.rmtree(kit, ignore_errors=True)
        path.unlink(missing_ok=True)
    partial = (kit / "results.csv").exists() and not path.exists()
    if path.exists() and not resume and not add:
        raise LatencyError(f"table {path} already exists: pass --force to rebuild it or --add SPEC to extend it")
    if partial and not resume:
        raise LatencyError(f"an interrupted build exists at {kit}: pass --resume to finish it "
                           "(or --force to start over)")
    for a in add:
        if a.resolution != res:
            raise LatencyError(f"--add spec {a.arch_id}: resolution {a.resolution} != table resolution {res}")
    measured = _measured_keys(kit)
    make_kit(kit, space, res, threads, add, n_calibration, seed, protocol, workers, show_progress, measured)
    if show_progress:
        with progress_bar("{task.description}") as prog:
            tasks: dict[str, Any] = {}

            def on_measure(done: int, total: int, key: str) -> None:
                phase = "calibrating" if key == "calibration" else "measuring  "
                if phase not in tasks:
                    tasks[phase] = prog.add_task(phase, total=total)
                prog.update(tasks[phase], completed=done, total=total)

            run_kit(kit, None, threads, provider, on_measure)
    else:
        run_kit(kit, None, threads, provider)
    table = LatencyTable.from_kit(kit)
    table.save(path)
    if not keep_graphs:
        for sub in ("blocks", "nets"):
            shutil.rmtree(kit / sub, ignore_errors=True)
        (kit / "reference.onnx").unlink(missing_ok=True)
    return table, path


def make_kit(kit: Path, space: SearchSpace, resolution: int, threads: int = 1, add: Sequence[Arch] = (),
             n_calibration: int = 24, seed: int = 0, protocol: Protocol | None = None, workers: int = 2,
             show_progress: bool = True, skip_keys: set[str] | frozenset[str] = frozenset()) -> Path:
    """Write the kit for `space` at `resolution`: its layer configs, `add`'s layers, the seed network as
    reference and `n_calibration` sampled networks (seeded) for the whole-network calibration."""
    if space.seed is None:
        raise LatencyError(f"space {space.name} has no seed network to use as the reference")
    rng = np.random.default_rng(seed)
    calibration = [space.seed, *[space.sample(rng) for _ in range(n_calibration)]]
    layers = {layer_key(c): c for c in space.layer_configs(resolution)}
    manifest_path = kit / "manifest.json"
    if manifest_path.exists():  # keep layers an earlier --add brought in
        for e in json.loads(manifest_path.read_text())["entries"]:
            if e["kind"] == "layer" and e["key"] not in layers:
                layers[e["key"]] = LayerConfig(**e["config"])
    for a in add:
        for c in a.layers():
            layers.setdefault(layer_key(c), c)
    if not show_progress:
        return write_kit(kit, space, resolution, space.seed, calibration, threads, list(layers.values()), protocol,
                         workers, skip_keys=skip_keys)
    with progress_bar("exporting graphs") as prog:
        task = prog.add_task("export", total=1)

        def on_export(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        return write_kit(kit, space, resolution, space.seed, calibration, threads, list(layers.values()), protocol,
                         workers, on_export, skip_keys=skip_keys)


def _measured_keys(kit: Path) -> set[str]:
    return {r["key"] for r in done_rows(kit / "results.csv")} - {"reference"}
