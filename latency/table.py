"""Latency lookup tables: one measured row per distinct layer configuration, plus what makes sums honest.

Prediction for an architecture = calibration(Σ layer latencies). Layers timed alone run with hot caches,
so the plain sum underestimates a whole network; the calibration (`whole ≈ a·Σ + b·layers`), fitted on
whole networks measured in the same kit, corrects that. Every row is normalized to the reference network
timed throughout the build, so host drift during the build cancels out; the reference latency is stored,
so later measurements can be rescaled to the table's state of the host (`validate`).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latency.kit import layer_key
from latency.protocol import fingerprint
from search_space import Arch, LayerConfig, SearchSpace, layer_cost, params

TABLE_FORMAT = "bneck-latency-table/1"
_CFG_FIELDS = [f.name for f in fields(LayerConfig)]


class LatencyError(ValueError):
    """A user-facing latency problem: bad table file, wrong resolution/threads, missing entries."""


def _drift_normalize(rows: list[dict[str, Any]]) -> tuple[dict[str, float], float, list[float]]:
    """Map key -> latency normalized to the median reference, by interpolating the reference over time."""
    refs = [(int(r["seq"]), float(r["median_us"])) for r in rows if r["key"] == "reference"]
    if not refs:
        raise LatencyError("results have no reference measurement: re-run the kit's measure.py")
    ref_seq = np.array([s for s, _ in refs], dtype=float)
    ref_us = np.array([u for _, u in refs], dtype=float)
    ref_median = float(np.median(ref_us))
    # one reference timing can spike (+15% seen here); a rolling median of 3 drops lone spikes but still
    # follows a real step in host speed within one reference timing
    smooth = np.array([np.median(ref_us[max(0, i - 1):i + 2]) for i in range(len(ref_us))])
    normalized: dict[str, float] = {}
    for r in rows:
        if r["key"] == "reference":
            continue
        local = float(np.interp(int(r["seq"]), ref_seq, smooth))
        normalized[r["key"]] = float(r["median_us"]) * ref_median / local
    return normalized, ref_median, ref_us.tolist()


FEATURES = ("sum_us", "layers", "mparams")
CANDIDATE_MODELS: tuple[tuple[str, ...], ...] = (
    ("sum_us",), ("sum_us", "layers"), ("sum_us", "mparams"), ("sum_us", "layers", "mparams"))


def fit_calibration(features: dict[str, np.ndarray], whole_us: np.ndarray) -> dict[str, Any]:
    """Non-negative least squares `whole ≈ Σ coef·feature`, the feature set chosen by leave-one-out error.

    Features: the hot-cache layer sum, the number of layers (per-layer transition cost) and the parameter
    count in millions (weights that must come back from memory when the network runs whole).
    """
    from scipy.optimize import nnls

    y = np.asarray(whole_us, dtype=float)

    def loo(cols: tuple[str, ...]) -> float:
        x = np.column_stack([features[c] for c in cols]).astype(float)
        errs = []
        for i in range(len(y)):
            mask = np.arange(len(y)) != i
            coef, _ = nnls(x[mask], y[mask])
            errs.append(abs(float(x[i] @ coef) - y[i]) / y[i])
        return float(np.mean(errs))

    scores = {cols: loo(cols) for cols in CANDIDATE_MODELS if len(y) > len(cols) + 1}
    best = min(scores, key=lambda c: scores[c])
    x = np.column_stack([features[c] for c in best]).astype(float)
    coef, _ = nnls(x, y)
    pred = x @ coef
    sums = np.asarray(features["sum_us"], dtype=float)
    return {"features": list(best), "coef": [float(c) for c in coef], "n_nets": len(y),
            "fit_mape": float(np.mean(np.abs(pred - y) / y)), "loo_mape": scores[best],
            "loo_mape_by_model": {"+".join(k): v for k, v in scores.items()},
            "uncorrected_mape": float(np.mean(np.abs(sums - y) / y)),
            "uncorrected_bias": float(np.mean((sums - y) / y))}


class LatencyTable:
    """Measured layer latencies for one space, resolution, thread count and device."""

    def __init__(self, entries: pd.DataFrame, meta: dict[str, Any]) -> None:
        self.entries = entries
        self.meta = meta
        self._us = dict(zip(entries["key"], entries["median_us"].astype(float), strict=True))
        self._space: SearchSpace | None = None
        self._tables: Any = None

    # ---- facts --------------------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return int(self.meta["resolution"])

    @property
    def threads(self) -> int:
        return int(self.meta["threads"])

    @property
    def reference_us(self) -> float:
        return float(self.meta["reference"]["median_us"])

    @property
    def calibration(self) -> dict[str, Any]:
        return self.meta["calibration"]

    @property
    def space(self) -> SearchSpace:
        if self._space is None:
            self._space = SearchSpace.from_dict({**self.meta["space"]["definition"], "resolution": self.resolution})
        return self._space

    def __len__(self) -> int:
        return len(self.entries)

    # ---- prediction ---------------------------------------------------------------------------------
    def layer_us(self, cfg: LayerConfig) -> float:
        key = layer_key(cfg)
        if key in self._us:
            return self._us[key]
        raise LatencyError(self._missing_message([cfg]))

    def _missing_message(self, cfgs: Sequence[LayerConfig]) -> str:
        keys = sorted({layer_key(c) for c in cfgs})
        shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        return (f"the table has no entry for {len(keys)} layer(s): {shown}; add them with "
                f"`bneck latency build --space {self.meta['space']['name']} --resolution {self.resolution} "
                f"--threads {self.threads} --add SPEC`")

    def check(self, arch: Arch, threads: int | None = None) -> None:
        if arch.resolution != self.resolution:
            raise LatencyError(f"resolution {arch.resolution} differs from the table's {self.resolution}: build a "
                               f"table at {arch.resolution} (bneck latency build --resolution {arch.resolution})")
        if threads is not None and threads != self.threads:
            raise LatencyError(f"threads {threads} differs from the table's {self.threads}")

    def block_sum_us(self, arch: Arch) -> float:
        """Uncorrected sum of the layers' latencies (µs)."""
        self.check(arch)
        layers = arch.layers()
        missing = [c for c in layers if layer_key(c) not in self._us]
        if missing:
            raise LatencyError(self._missing_message(missing))
        return math.fsum(self._us[layer_key(c)] for c in layers)

    def calibrate(self, sum_us: Any, n_layers: Any, mparams: Any) -> Any:
        """Whole-network latency from the layer sum and the calibration's other features."""
        c = self.calibration
        values = {"sum_us": sum_us, "layers": n_layers, "mparams": mparams}
        return sum(coef * values[f] for f, coef in zip(c["features"], c["coef"], strict=True))

    def predict_us(self, arch: Arch, threads: int | None = None) -> float:
        """Predicted whole-network latency in µs on the table's device, in the table's host state."""
        self.check(arch, threads)
        return float(self.calibrate(self.block_sum_us(arch), len(arch.blocks) + 2, params(arch) / 1e6))

    def predict_ms(self, arch: Arch, threads: int | None = None) -> float:
        return self.predict_us(arch, threads) / 1e3

    def predict_ms_batch(self, encoded: np.ndarray) -> np.ndarray:
        """Predicted latency (ms) of many encoded architectures of the table's space (numpy only)."""
        if self._tables is None:
            def fn(cfg: LayerConfig) -> tuple[float, float, float]:
                return self._us.get(layer_key(cfg), math.nan), 1.0, layer_cost(cfg)[0] / 1e6

            self._tables = self.space.tabulate(fn)
        totals = self._tables.total(encoded)
        out = self.calibrate(totals[:, 0], totals[:, 1], totals[:, 2]) / 1e3
        if np.isnan(out).any():
            bad = int(np.flatnonzero(np.isnan(out))[0])
            arch = self.space.decode(np.asarray(encoded).reshape(len(out), -1)[bad])
            self.block_sum_us(arch)  # raises with the list of missing entries
        return out

    # ---- persistence --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        t = pa.Table.from_pandas(self.entries, preserve_index=False)
        t = t.replace_schema_metadata({**(t.schema.metadata or {}), b"bneck": json.dumps(self.meta).encode()})
        tmp = p.with_name(p.name + ".tmp")
        pq.write_table(t, tmp)
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path, warn_device: bool = True) -> LatencyTable:
        import pyarrow.parquet as pq

        p = Path(path)
        if not p.is_file():
            raise LatencyError(f"latency table {str(p)!r} does not exist (build one: bneck latency build)")
        try:
            t = pq.read_table(p)
            meta = json.loads(t.schema.metadata[b"bneck"])
        except Exception as exc:
            raise LatencyError(f"latency table {str(p)!r} is corrupt or not a bneck table "
                               f"({type(exc).__name__})") from None
        if meta.get("format") != TABLE_FORMAT:
            raise LatencyError(f"latency table {str(p)!r} has format {meta.get('format')!r}, expected {TABLE_FORMAT}")
        table = cls(t.to_pandas(), meta)
        if warn_device:
            here = fingerprint(table.threads, meta["fingerprint"]["provider"])
            diff = [k for k in ("cpu", "cores", "machine", "onnxruntime") if here.get(k) != meta["fingerprint"].get(k)]
            if diff:
                theirs = meta["fingerprint"]
                changes = ", ".join(f"{k}: {theirs.get(k)} vs {here.get(k)}" for k in diff)
                warnings.warn(f"latency table {p.name} was measured on another device/runtime ({changes})",
                              stacklevel=2)
        return table

    # ---- import from a kit --------------------------------------------------------------------------
    @classmethod
    def from_kit(cls, kit_dir: str | Path, results_csv: str | Path | None = None) -> LatencyTable:
        """Build a table from a kit's manifest and its measured results CSV."""
        kit = Path(kit_dir)
        man_path = kit / "manifest.json"
        if not man_path.is_file():
            raise LatencyError(f"{kit} has no manifest.json (not a bneck latency kit)")
        manifest = json.loads(man_path.read_text())
        res = Path(results_csv) if results_csv else kit / "results.csv"
        if not res.is_file():
            raise LatencyError(f"results file {str(res)!r} does not exist: run the kit's measure.py first")
        try:
            with open(res, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("wall_time")]
            float(rows[0]["median_us"]) if rows else None
        except (csv.Error, KeyError, ValueError, UnicodeDecodeError) as exc:
            raise LatencyError(f"results file {str(res)!r} is not a bneck results CSV ({exc})") from None
        device_path = res.with_suffix(".device.json")
        device = json.loads(device_path.read_text()) if device_path.is_file() else {}
        by_key = {e["key"]: e for e in manifest["entries"]}
        measured = {r["key"] for r in rows}
        missing = [k for k, e in by_key.items() if e["kind"] == "layer" and k not in measured]
        n_layers = sum(e["kind"] == "layer" for e in by_key.values())
        if missing:
            raise LatencyError(f"{len(missing)} of {n_layers} kit entries are not measured yet "
                               f"(first: {missing[0]}): run the kit's measure.py again to finish")
        normalized, ref_median, ref_all = _drift_normalize(rows)
        raw = {r["key"]: r for r in rows if r["key"] != "reference"}
        records = []
        for key, e in by_key.items():
            if e["kind"] != "layer":
                continue
            r = raw[key]
            records.append({**e["config"], "key": key, "median_us": normalized[key],
                            "raw_median_us": float(r["median_us"]), "p10_us": float(r["p10_us"]),
                            "p90_us": float(r["p90_us"]), "runs": int(r["runs"])})
        entries = pd.DataFrame.from_records(records)
        space_info = manifest["space_info"]
        meta: dict[str, Any] = {
            "format": TABLE_FORMAT,
            "space": {"name": manifest["space"], "width_mult": space_info.get("width_mult", 1.0),
                      "num_classes": space_info["num_classes"], "definition": space_info},
            "resolution": manifest["resolution"], "threads": manifest["threads"],
            "fingerprint": device.get("fingerprint", {}), "protocol": device.get("protocol", manifest["protocol"]),
            "reference": {"arch": by_key["reference"]["arch"], "median_us": ref_median, "all_us": ref_all},
            "created": rows[-1]["wall_time"] if rows else None,
        }
        table = cls(entries, {**meta, "calibration": {"features": ["sum_us"], "coef": [1.0], "n_nets": 0}})
        cal_path = res.with_name("calibration.csv")
        if cal_path.is_file():
            table.meta["calibration"] = _calibration_from_csv(cal_path, by_key, ref_median, table)
        return table


def _calibration_from_csv(path: Path, by_key: dict[str, Any], ref_median: float,
                          table: LatencyTable) -> dict[str, Any]:
    """Fit the calibration: the table's layer sums against whole networks timed next to the reference
    (each timing scaled to the table's reference latency by the reference timed with it)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("wall_time")]
    per_net: dict[str, list[float]] = {}
    for r in rows:
        per_net.setdefault(r["key"], []).append(float(r["whole_us"]) * ref_median / float(r["reference_us"]))
    keys = sorted(per_net)
    if len(keys) < 4:
        return {"features": ["sum_us"], "coef": [1.0], "n_nets": len(keys)}
    archs = [Arch.parse(by_key[k]["arch"]) for k in keys]
    whole = np.array([np.median(per_net[k]) for k in keys])
    sums = np.array([table.block_sum_us(a) for a in archs])
    feats = {"sum_us": sums, "layers": np.array([len(a.blocks) + 2 for a in archs], dtype=float),
             "mparams": np.array([params(a) / 1e6 for a in archs])}
    cal = fit_calibration(feats, whole)
    cal["nets"] = [{"arch_id": a.arch_id, "sum_us": float(s), "whole_us": float(w), "rounds": len(per_net[k])}
                   for k, a, s, w in zip(keys, archs, sums, whole, strict=True)]
    return cal
