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
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bneck_common.paths import cache_dir
from bneck_common.progress import progress_bar
from latency.kit import CALIBRATION_WIDTH_MULTS, layer_key, offgrid_anchors, offgrid_archs, write_kit
from latency.protocol import (
    KIT_FORMAT,
    KitError,
    Protocol,
    estimate,
    fingerprint,
    kit_lock,
    measured_keys,
    quiet_below_us,
    quiet_ratios,
    quiet_reference_us,
    run_kit,
    session,
    time_interleaved,
)
from latency.table import LatencyError, LatencyTable, anchor_scale
from search_space import Arch, LayerConfig, SearchSpace, build_model, mobilenet_v3_small, onnx_bytes


def device_id(threads: int, provider: str) -> str:
    fp = fingerprint(threads, provider)
    text = json.dumps({k: fp[k] for k in ("cpu", "cores", "machine", "os", "onnxruntime", "provider")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def default_table_path(space: SearchSpace, resolution: int, threads: int = 1,
                       provider: str = "CPUExecutionProvider") -> Path:
    name = f"{space.name}_w{space.width_mult:g}_n{space.num_classes}_r{resolution}_t{threads}.parquet"
    return cache_dir() / "latency" / device_id(threads, provider) / name


@dataclass(frozen=True)
class WholeNetTiming:
    """A whole network measured with the protocol: its latency as a ratio to the reference timed next to it."""

    ratio: float          # median over the quiet rounds of min(net burst) / min(reference burst right after it)
    reference_us: float   # the reference's median burst minimum in the quiet rounds of this measurement
    rounds: int
    ratio_spread: float   # (p90 - p10) / median of the per-round ratios: how steady the host was
    quiet_rounds: int = 0  # rounds the ratio is the median of (`protocol.quiet_ratios`)

    @property
    def us(self) -> float:
        """Latency in the host state of this measurement (µs)."""
        return self.ratio * self.reference_us


def measure_whole(archs: Sequence[Arch], reference: Arch, threads: int = 1, provider: str = "CPUExecutionProvider",
                  protocol: Protocol | None = None, rounds: int | None = None, seed: int = 0,
                  progress: Callable[[int, int], None] | None = None) -> list[WholeNetTiming]:
    """Time whole networks interleaved with `reference` (the protocol's `rounds` by default)."""
    p = protocol or Protocol()
    n_rounds = p.rounds if rounds is None else rounds
    ref = session(onnx_bytes(build_model(reference), (1, 3, reference.resolution, reference.resolution)), threads,
                  provider)
    sessions = [session(onnx_bytes(build_model(a), (1, 3, a.resolution, a.resolution)), threads, provider)
                for a in archs]
    pairs: list[list[tuple[float, float]]] = [[] for _ in archs]
    total = n_rounds * len(archs)

    def record(rnd: int, i: int, t: float, r: float) -> None:
        pairs[i].append((t, r))
        if progress is not None:  # a noisy stretch adds rounds beyond the planned total
            done = sum(map(len, pairs))
            progress(min(done, total), max(total, done))

    time_interleaved(sessions, ref, n_rounds, p, seed=seed, on_timing=record)
    refs = [r for per in pairs for _, r in per]
    below, ref_us = quiet_below_us(refs, p), quiet_reference_us(refs, p)
    out = []
    for per in pairs:
        times, per_refs = [t for t, _ in per], [r for _, r in per]
        ratio = estimate(times, per_refs, 1.0, below, p.min_quiet)
        p10, p90 = np.percentile([t / r for t, r in per], [10, 90])
        quiet = len(quiet_ratios(times, per_refs, below, p.min_quiet))
        out.append(WholeNetTiming(ratio, ref_us, len(per), float((p90 - p10) / ratio), quiet))
    return out


@dataclass(frozen=True)
class TableScaleTiming:
    """Whole networks measured in a table's scale: timed beside the table's anchors (`LatencyTable.anchors`) and
    scaled by their median calibrated/measured ratio, so the numbers compare with the table's predictions."""

    us: np.ndarray          # per network, in the table's scale (µs)
    raw_us: np.ndarray      # ratio x the table's reference latency, before the anchor scale (µs)
    scale: float            # the anchor scale applied (1.0: the measurement read exactly as the calibration)
    ratio_spread: np.ndarray
    anchors: int
    timings: list[WholeNetTiming]  # per network, as `measure_whole` returned it


def measure_in_table_scale(table: LatencyTable, archs: Sequence[Arch], rounds: int | None = None, seed: int = 0,
                           progress: Callable[[int, int], None] | None = None,
                           provider: str | None = None) -> TableScaleTiming:
    """Time `archs` whole with the table's protocol, reference and threads (and its provider unless `provider` is
    given), its anchors beside them (an anchor that is also in `archs` is timed once)."""
    for a in archs:
        table.check(a)
    anchors = table.anchors()
    ids = {a.arch_id for a in archs}
    nets = [*archs, *(a for a, _ in anchors if a.arch_id not in ids)]
    provider = provider or table.meta["fingerprint"].get("provider", "CPUExecutionProvider")
    reference = Arch.parse(table.meta["reference"]["arch"])
    timings = measure_whole(nets, reference, table.threads, provider, Protocol.from_dict(table.meta["protocol"]),
                            rounds, seed=seed, progress=progress)
    raw = np.array([t.ratio * table.reference_us for t in timings])
    by_id = {a.arch_id: float(us) for a, us in zip(nets, raw, strict=True)}
    scale = anchor_scale([us for _, us in anchors], [by_id[a.arch_id] for a, _ in anchors])
    n = len(archs)
    return TableScaleTiming(raw[:n] * scale, raw[:n], scale, np.array([t.ratio_spread for t in timings[:n]]),
                            len(anchors), timings[:n])


def default_reference(arch: Arch) -> Arch:
    """What `latency measure` times a network next to when no table is given: V3-Small at its resolution."""
    return mobilenet_v3_small(num_classes=arch.num_classes, resolution=arch.resolution)


def measure_arch(arch: Arch, threads: int = 1, provider: str = "CPUExecutionProvider",
                 protocol: Protocol | None = None, reference: Arch | None = None,
                 rounds: int | None = None) -> WholeNetTiming:
    """Whole-network latency of `arch` with the table protocol (interleaved with `reference`)."""
    return measure_whole([arch], reference or default_reference(arch), threads, provider, protocol, rounds)[0]


def build_table(space: SearchSpace, resolution: int | None = None, threads: int = 1,
                provider: str = "CPUExecutionProvider", out: str | os.PathLike[str] | None = None,
                resume: bool = False, force: bool = False, add: Sequence[Arch] = (), n_calibration: int = 64,
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
    for a in add:
        if a.resolution != res:
            raise LatencyError(f"--add spec {a.arch_id}: resolution {a.resolution} != table resolution {res}")
    kit.mkdir(parents=True, exist_ok=True)
    waited: list[str] = []

    def on_wait(holder: str) -> None:
        waited.append(holder)
        print(f"waiting: {holder} is building this table ({kit})", file=sys.stderr, flush=True)

    p = protocol or Protocol()
    try:
        # decided under the lock: a second build of the same table (two first-time searches) waits for the
        # first, then uses its table instead of measuring the same rows again
        with kit_lock(kit, wait=True, on_wait=on_wait, name=".build.lock"):
            if waited and path.exists() and not add:  # built while we waited: fresh, whatever --force said
                return LatencyTable.load(path), path
            if force:
                for child in kit.iterdir():
                    if child.name != ".build.lock":
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
                path.unlink(missing_ok=True)
            if (kit / "manifest.json").is_file() and _kit_format(kit) != KIT_FORMAT:
                raise LatencyError(f"{kit} is an interrupted build of an older bneck ({_kit_format(kit)}): pass "
                                   "--force to start over")
            partial = (kit / "results.csv").exists() and not path.exists()
            if path.exists() and not resume and not add:
                raise LatencyError(f"table {path} already exists: pass --force to rebuild it or --add SPEC to "
                                   "extend it")
            if partial and not resume:
                raise LatencyError(f"an interrupted build exists at {kit}: pass --resume to finish it "
                                   "(or --force to start over)")
            measured = measured_keys(kit / "results.csv", p.passes)
            make_kit(kit, space, res, threads, add, n_calibration, seed, p, workers, show_progress, measured)
            _measure(kit, threads, provider, show_progress)
            table = LatencyTable.from_kit(kit)
            table.save(path)
    except KitError as exc:
        raise LatencyError(str(exc)) from None
    if not keep_graphs:
        for sub in ("blocks", "nets"):
            shutil.rmtree(kit / sub, ignore_errors=True)
        for name in ("reference.onnx", "layer_reference.onnx"):
            (kit / name).unlink(missing_ok=True)
    return table, path


def _measure(kit: Path, threads: int, provider: str, show_progress: bool) -> None:
    """Run the kit in this process, with a progress bar when asked."""
    if not show_progress:
        run_kit(kit, None, threads, provider)
        return
    with progress_bar("{task.description}") as prog:
        tasks: dict[str, Any] = {}

        def on_measure(done: int, total: int, key: str) -> None:
            phase = "calibrating" if key == "calibration" else "measuring  "
            if phase not in tasks:
                tasks[phase] = prog.add_task(phase, total=total)
            prog.update(tasks[phase], completed=done, total=total)

        run_kit(kit, None, threads, provider, on_measure)


def stale_kit(path: str | os.PathLike[str]) -> bool:
    """The table at `path` has a kit of an older bneck beside it (not resumable: it must be started over)."""
    kit = Path(path).with_name(Path(path).name + ".kit")
    return (kit / "manifest.json").is_file() and _kit_format(kit) != KIT_FORMAT


def _kit_format(kit: Path) -> str | None:
    try:
        return json.loads((kit / "manifest.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def make_kit(kit: Path, space: SearchSpace, resolution: int, threads: int = 1, add: Sequence[Arch] = (),
             n_calibration: int = 64, seed: int = 0, protocol: Protocol | None = None, workers: int = 2,
             show_progress: bool = True, skip_keys: set[str] | frozenset[str] = frozenset()) -> Path:
    """Write the kit for `space` at `resolution`: its layer configs and the off-grid anchors below them, `add`'s
    layers, the seed network as reference and `n_calibration` sampled networks (seeded) for the calibration."""
    if space.preset is None:
        raise LatencyError(f"space {space.name} has no seed network to use as the reference")
    rng = np.random.default_rng(seed)
    n_off = n_calibration // 4  # a quarter off the grid: the table is used on pruned and thinned nets too
    calibration = [space.preset, *[space.sample(rng) for _ in range(n_calibration - n_off)]]
    seen = {a.arch_id for a in calibration}
    for _, a in offgrid_archs(space, n_off, seed + 1000, CALIBRATION_WIDTH_MULTS):
        if len(calibration) <= n_calibration and a.arch_id not in seen:
            calibration.append(a)
            seen.add(a.arch_id)
    grid = space.layer_configs(resolution)
    layers = {layer_key(c): c for c in [*grid, *offgrid_anchors(grid)]}
    manifest_path = kit / "manifest.json"
    if manifest_path.exists():  # keep layers an earlier --add brought in
        for e in json.loads(manifest_path.read_text())["entries"]:
            if e["kind"] == "layer" and e["key"] not in layers:
                layers[e["key"]] = LayerConfig(**e["config"])
    for a in add:
        for c in a.layers():
            layers.setdefault(layer_key(c), c)
    if not show_progress:
        return write_kit(kit, space, resolution, space.preset, calibration, threads, list(layers.values()), protocol,
                         workers, skip_keys=skip_keys, seed=seed)
    with progress_bar("exporting graphs") as prog:
        task = prog.add_task("export", total=1)

        def on_export(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        return write_kit(kit, space, resolution, space.preset, calibration, threads, list(layers.values()), protocol,
                         workers, on_export, skip_keys=skip_keys, seed=seed)


