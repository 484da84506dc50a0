"""Latency lookup tables: one measured row per distinct layer configuration, plus what makes sums honest.

Prediction for an architecture = calibration(layer sums). Layers timed alone run with hot caches and pay a
per-graph overhead, so the plain sum misestimates a whole network; the calibration, fitted on whole networks
measured in the same kit, corrects that (`fit_calibration`). Rows are the protocol's estimate (median over
passes of the ratio to the layer reference timed next to them, `row_latencies`), so host drift during the build
cancels out; the whole-net reference's latency is stored, so later measurements are expressed in the table's
host state (`validate`, `latency measure --table`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bneck_common.paths import atomic_write
from latency.kit import layer_key
from latency.protocol import (
    PROTOCOL_NAME,
    STATISTIC,
    KitError,
    Protocol,
    estimate,
    fingerprint,
    quiet_below_us,
    quiet_reference_us,
    read_manifest,
)
from search_space import Arch, Bneck, LayerConfig, SearchSpace, layer_cost, params

TABLE_FORMAT = "bneck-latency-table/3"
_CFG_FIELDS = [f.name for f in fields(LayerConfig)]


class LatencyError(ValueError):
    """A user-facing latency problem: bad table file, wrong resolution/threads, missing entries."""


class OutdatedTableError(LatencyError):
    """A table file of an older format: its numbers are not read, it must be rebuilt."""


def row_latencies(rows: list[dict[str, Any]], protocol: Protocol | None = None
                  ) -> tuple[dict[str, float], dict[str, float], float, dict[str, float]]:
    """Per key: the protocol's estimate (µs), the pass-to-pass spread ((max - min) / median ratio), and the
    layer reference's quiet latency the estimates are expressed in, with its quantiles over the build.

    Each row's passes are min(burst) / min(layer-reference burst right after it); the estimate is the median
    over its quiet passes (layer reference within `quiet_tol` of the build's 5th percentile; without one, its
    least contended pass) times the layer reference's quiet median. A host that slows down in steps or spikes
    slows the row and the reference alike, so the ratio does not move; contention by a neighbour does not
    (measured on the large space: a row's ratio in contended passes was 1-4% lower for bnecks, 21% for heads),
    so the quiet passes decide.
    """
    p = protocol or Protocol()
    pairs: dict[str, tuple[list[float], list[float]]] = {}
    refs: list[float] = []
    for r in rows:
        t, ref = float(r["min_us"]), float(r["ref_min_us"])
        times, rrefs = pairs.setdefault(r["key"], ([], []))
        times.append(t)
        rrefs.append(ref)
        refs.append(ref)
    if not refs:
        raise LatencyError("results have no measured rows: run the kit's measure.py")
    below, ref_us = quiet_below_us(refs, p), quiet_reference_us(refs, p)
    est = {k: estimate(t, r, ref_us, below, 1) for k, (t, r) in pairs.items()}
    spread = {}
    for k, (t, r) in pairs.items():
        ratios = np.asarray(t) / np.asarray(r)
        spread[k] = float((ratios.max() - ratios.min()) / np.median(ratios))
    q = np.percentile(refs, [0, 10, 50, 90, 100])
    return est, spread, ref_us, {"min": float(q[0]), "p10": float(q[1]), "p50": float(q[2]), "p90": float(q[3]),
                                 "max": float(q[4])}


# Whole-net timings taken in another process or at another time than the calibration read the same nets a few
# percent off as a whole (fresh tables here: in all five validations the median held-out net read 1.4-4.3%
# faster than predicted, the reference net too, while two passes agreed within 5% for 94-100% of the nets). So a
# measurement times ANCHORS calibration nets beside its own and is scaled by their median ratio (`anchor_scale`).
ANCHORS = 6
FEATURES = ("sum_us", "hires_us", "edge_us", "layers", "mparams", "const")
CANDIDATE_MODELS: tuple[tuple[str, ...], ...] = (
    ("sum_us",), ("sum_us", "layers"), ("sum_us", "const"), ("sum_us", "mparams"), ("sum_us", "layers", "mparams"),
    ("sum_us", "layers", "const"), ("sum_us", "hires_us", "edge_us"), ("sum_us", "hires_us", "edge_us", "layers"),
    ("sum_us", "hires_us", "edge_us", "const"))


def fit_calibration(features: dict[str, np.ndarray], whole_us: np.ndarray) -> dict[str, Any]:
    """Least squares `whole ≈ Σ coef·feature`, the feature set chosen by leave-one-out error.

    Features: the hot-cache layer sum, and apart the sums over high-resolution blocks (input >= 1/4 of the
    resolution) and over stem + head (these relate to their in-network cost differently: with one coefficient
    the held-out nets came out +3% biased, with the three 0.6%), the number of layers, the parameter count in
    millions and a constant. The sum's coefficient is >= 0, the others signed: each layer graph timed alone
    carries its own per-run overhead, which a whole network pays once (restricted to positive terms the
    calibration over-predicted small nets by 5-12%).
    """
    from scipy.optimize import lsq_linear

    y = np.asarray(whole_us, dtype=float)
    feats = {**features, "const": np.ones_like(y)}

    def solve(x: np.ndarray, target: np.ndarray, cols: tuple[str, ...]) -> np.ndarray:
        lower = [0.0 if c == "sum_us" else -np.inf for c in cols]  # the sub-sums correct the whole sum: signed
        return lsq_linear(x, target, bounds=(lower, [np.inf] * len(cols))).x

    def loo(cols: tuple[str, ...]) -> float:
        x = np.column_stack([feats[c] for c in cols]).astype(float)
        errs = []
        for i in range(len(y)):
            mask = np.arange(len(y)) != i
            coef = solve(x[mask], y[mask], cols)
            errs.append(abs(float(x[i] @ coef) - y[i]) / y[i])
        return float(np.mean(errs))

    scores = {cols: loo(cols) for cols in CANDIDATE_MODELS if len(y) > len(cols) + 2 and set(cols) <= set(feats)}
    best = min(scores, key=lambda c: (round(scores[c], 6), len(c)))
    x = np.column_stack([feats[c] for c in best]).astype(float)
    coef = solve(x, y, best)
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
        self._measured = frozenset(self._us)  # _us also caches interpolated layers
        # the scalar hot path looks layers up by a plain tuple (no LayerConfig, no key string)
        cols = ["kind", "size", "cin", "expand", "out", "kernel", "stride", "se", "act", "median_us"]
        self._us_by_tuple = {(kind, int(size), int(cin), int(e), int(out), int(k), int(s), bool(se), act): float(us)
                             for kind, size, cin, e, out, k, s, se, act, us
                             in entries[cols].itertuples(index=False, name=None)}
        heads = entries.loc[entries["kind"] == "head", "num_classes"]
        self._head_classes = int(heads.iloc[0]) if len(heads) and heads.nunique() == 1 else -1
        self._space: SearchSpace | None = None
        self._tables: Any = None
        self._family_fits: dict[tuple[Any, ...], tuple[str, Any] | None] = {}

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

    def anchors(self, n: int = ANCHORS) -> list[tuple[Arch, float]]:
        """Calibration networks with their calibrated whole-net latency (µs), for `validate` and `measure` to time
        beside what they measure: the reference network first, then `n - 1` more spread over the calibration's
        latency range. A measurement scaled so that its anchors read what they read at calibration is in this
        table's scale (see `anchor_scale`). Tables that did not store calibration archs have the reference only."""
        nets = self.calibration.get("nets", [])
        ref = Arch.parse(self.meta["reference"]["arch"])
        by_id = {c["arch_id"]: c for c in nets}
        out: list[tuple[Arch, float]] = [(ref, float(by_id[ref.arch_id]["whole_us"]))] if ref.arch_id in by_id else []
        rest = sorted((c for c in nets if c.get("arch") and c["arch_id"] != ref.arch_id), key=lambda c: c["whole_us"])
        if rest and n > 1:
            picks = sorted({round(q * (len(rest) - 1)) for q in np.linspace(0.1, 0.9, n - 1)})
            out += [(Arch.parse(rest[i]["arch"]), float(rest[i]["whole_us"])) for i in picks]
        return out

    @property
    def space(self) -> SearchSpace:
        if self._space is None:
            self._space = SearchSpace.from_dict({**self.meta["space"]["definition"], "resolution": self.resolution})
        return self._space

    def __len__(self) -> int:
        return len(self.entries)

    # ---- prediction ---------------------------------------------------------------------------------
    def layer_us(self, cfg: LayerConfig) -> float:
        """A layer's latency: its measured row, or interpolated along the channel axes (see `_interpolate`)."""
        key = layer_key(cfg)
        if key in self._us:
            return self._us[key]
        value = self._interpolate(cfg)
        if value is None:
            raise LatencyError(self._missing_message([cfg]))
        self._us[key] = value
        return value

    @staticmethod
    def _channel_features(cin: Any, expand: Any, out: Any, se: bool, kind: str, stride: int = 1) -> np.ndarray:
        """Per-family regressors (size, kernel, stride fixed): what scales a bneck/ds layer's work and traffic.

        Compute (expand and project MACs, depthwise width), memory traffic (input and output widths) and the
        ops a structure adds (an expand conv, a residual add), so that small widths, where traffic and per-op
        cost dominate, come out right too (the build measures such rows: `offgrid_anchors`).
        """
        cin, expand, out = (np.asarray(v, dtype=float) for v in (cin, expand, out))
        if kind == "ds":
            return np.stack([np.ones_like(cin), cin, cin * out, out], axis=-1)
        has_expand = (expand != cin).astype(float)
        residual = ((cin == out) & (stride == 1)).astype(float)
        cols = [np.ones_like(cin), has_expand, has_expand * cin * expand, expand, expand * out, cin, out,
                residual * out]
        if se:
            cols.append(expand * np.maximum(8.0, np.floor((np.floor(expand / 4) + 4) / 8) * 8))
        return np.stack(cols, axis=-1)

    def _interpolate(self, cfg: LayerConfig) -> float | None:
        """Latency of an unmeasured bneck/ds width, from a least-squares fit over its family's rows.

        NetAdapt prunes expansion and bottleneck widths to any multiple of 8; the space's grid measures every
        family (same input size, stride, kernel, SE, NL) at several widths, which is what the fit uses. A family
        with too few rows for that fits latency linearly in mult-adds over its rows of the same structure.
        """
        if cfg.kind in ("head", "stem"):
            return self._interpolate_edge(cfg)
        if cfg.kind not in ("bneck", "ds"):
            return None
        fam_key = (cfg.kind, cfg.size, cfg.stride, cfg.kernel, cfg.se, cfg.act)
        if fam_key not in self._family_fits:
            e = self.entries
            rows = e[(e["kind"] == cfg.kind) & (e["size"] == cfg.size) & (e["stride"] == cfg.stride)
                     & (e["kernel"] == cfg.kernel) & (e["se"] == cfg.se) & (e["act"] == cfg.act)]
            x = self._channel_features(rows["cin"], rows["expand"], rows["out"], cfg.se, cfg.kind, cfg.stride)
            if len(rows) >= x.shape[1] + 2:
                coef, *_ = np.linalg.lstsq(x, rows["median_us"].to_numpy(dtype=float), rcond=None)
                self._family_fits[fam_key] = ("fit", coef)
            elif len(rows):  # too few widths for the full fit: latency linear in mult-adds (see below)
                self._family_fits[fam_key] = ("few", rows)
            else:
                self._family_fits[fam_key] = None
        fit = self._family_fits[fam_key]
        if fit is None:
            return None
        if fit[0] == "fit":
            x = self._channel_features(cfg.cin, cfg.expand, cfg.out, cfg.se, cfg.kind, cfg.stride)
            return max(float(x @ fit[1]), 1e-3)
        rows = fit[1]
        same = rows[(rows["expand"] != rows["cin"]) == (cfg.expand != cfg.cin)]  # same structure (expand conv)
        rows = same if len(same) else rows

        def madds_of(r: Any) -> float:
            return float(layer_cost(LayerConfig(cfg.kind, cfg.size, int(r["cin"]), int(r["expand"]), int(r["out"]),
                                                cfg.kernel, cfg.stride, cfg.se, cfg.act))[1])

        m = np.array([madds_of(r) for _, r in rows.iterrows()])
        us = rows["median_us"].to_numpy(dtype=float)
        target = float(layer_cost(cfg)[1])
        if len(rows) >= 2 and np.ptp(m) > 0:
            slope, intercept = np.polyfit(m, us, 1)
            return max(float(intercept + slope * target), 1e-3)
        return float(us[0]) * target / max(1.0, m[0])

    def _interpolate_edge(self, cfg: LayerConfig) -> float | None:
        """Head with another input width, or stem with another output width (a pruned last or first group).

        Heads/stems are measured at few widths and their rows are noisy relative to the small share the pruned
        width has in their work, so no regression: piecewise-linear in mult-adds between the measured rows
        around it, and outside them the nearest row scaled by the mult-adds ratio. A head whose conv width was
        never measured (a uniformly thinner network) uses every head row of its input size the same way.
        """
        e = self.entries  # a head row stores its conv width in "expand", its hidden width in "out" (LayerConfig)
        if cfg.kind == "head":
            conv, hidden = cfg.head_conv or 0, cfg.head_hidden or 0
            fit = self._head_fit(cfg)
            if fit is not None:
                return max(float(np.array([1.0, cfg.cin * conv, conv, cfg.cin]) @ fit), 1e-3)
            rows = e[(e["kind"] == "head") & (e["size"] == cfg.size) & (e["expand"] == conv)
                     & (e["out"] == hidden) & (e["act"] == cfg.act) & (e["num_classes"] == cfg.num_classes)]
        else:
            rows = e[(e["kind"] == "stem") & (e["size"] == cfg.size) & (e["cin"] == cfg.cin)
                     & (e["kernel"] == cfg.kernel) & (e["stride"] == cfg.stride) & (e["act"] == cfg.act)]
        if not len(rows) and cfg.kind == "head":  # another conv width too (uniform width scaling): any head
            rows = e[(e["kind"] == "head") & (e["size"] == cfg.size) & (e["act"] == cfg.act)
                     & (e["num_classes"] == cfg.num_classes) & ((e["out"] > 0) == bool(cfg.head_hidden))]
        if not len(rows):
            return None
        m = np.array([float(layer_cost(dataclasses.replace(cfg, cin=int(r["cin"]), expand=int(r["expand"]),
                                                           out=int(r["out"])))[1]) for _, r in rows.iterrows()])
        us = rows["median_us"].to_numpy(dtype=float)
        order = np.argsort(m)
        m, us = m[order], us[order]
        target = float(layer_cost(cfg)[1])
        if m[0] <= target <= m[-1] and len(m) >= 2:
            return float(np.interp(target, m, us))
        nearest = 0 if target < m[0] else len(m) - 1
        return max(float(us[nearest]) * target / max(1.0, m[nearest]), 1e-3)

    def _head_fit(self, cfg: LayerConfig) -> np.ndarray | None:
        """Least squares over the heads of the same input size, hidden width, NL and classes, on
        [1, input x conv width, conv width, input width], when the table has enough of them (the build's
        anchors give a grid of input and conv widths down to half); None otherwise."""
        hidden, has_conv = cfg.head_hidden or 0, cfg.head_conv is not None
        key = ("head", cfg.size, hidden, cfg.act, cfg.num_classes, has_conv)
        if key not in self._family_fits:
            e = self.entries  # head rows: conv width in "expand", hidden width in "out"
            rows = e[(e["kind"] == "head") & (e["size"] == cfg.size) & (e["out"] == hidden) & (e["act"] == cfg.act)
                     & (e["num_classes"] == cfg.num_classes) & ((e["expand"] > 0) == has_conv)]
            fit = None
            if has_conv and len(rows) >= 6 and rows["expand"].nunique() >= 2 and rows["cin"].nunique() >= 2:
                cin, conv = rows["cin"].to_numpy(dtype=float), rows["expand"].to_numpy(dtype=float)
                x = np.column_stack([np.ones_like(cin), cin * conv, conv, cin])
                fit, *_ = np.linalg.lstsq(x, rows["median_us"].to_numpy(dtype=float), rcond=None)
            self._family_fits[key] = ("head", fit) if fit is not None else None
        got = self._family_fits[key]
        return None if got is None else got[1]

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
        values, missing = [], []
        for c in arch.layers():
            try:
                values.append(self.layer_us(c))
            except LatencyError:
                missing.append(c)
        if missing:
            raise LatencyError(self._missing_message(missing))
        return math.fsum(values)

    def extrapolation(self, arch: Arch, tolerance: float = 0.25) -> list[str]:
        """Where `arch` lies outside what the table measured, one line per layer: a width more than `tolerance`
        beyond the widest (or narrower than the narrowest) row of its family, or a family with no rows. Inside
        the grid a prediction is interpolated between measured rows; outside it is a guess whose error grows
        with the distance, so `latency predict` warns with these lines. Empty when every layer is inside."""
        e = self.entries
        lines = []
        for i, cfg in enumerate(arch.layers()):
            if layer_key(cfg) in self._measured:
                continue
            fam = e[(e["kind"] == cfg.kind) & (e["size"] == cfg.size) & (e["stride"] == cfg.stride)
                    & (e["act"] == cfg.act)]
            if cfg.kind in ("bneck", "ds"):
                fam = fam[(fam["kernel"] == cfg.kernel) & (fam["se"] == cfg.se)]
            where = f"layer {i} ({cfg.kind} {cfg.size} px, k{cfg.kernel}, stride {cfg.stride})"
            if not len(fam):
                lines.append(f"{where}: no measured layer of this kind, size, kernel and stride")
                continue
            axes = {"input width": ("cin", cfg.cin), "expansion width" if cfg.kind == "bneck" else "conv width":
                    ("expand", cfg.expand), "output width": ("out", cfg.out)}
            for name, (col, value) in axes.items():
                measured = fam[col].to_numpy(dtype=float)
                lo, hi = float(measured.min()), float(measured.max())
                if value > hi * (1 + tolerance):
                    lines.append(f"{where}: {name} {value} is {value / max(hi, 1.0):.1f}x the widest measured ({hi:g})")
                elif hi > 0 and value < lo / (1 + tolerance):
                    lines.append(f"{where}: {name} {value} is {lo / max(value, 1):.1f}x narrower than the narrowest "
                                 f"measured ({lo:g})")
        return lines

    def calibrate(self, values: dict[str, Any]) -> Any:
        """Whole-network latency from the layer sums and the calibration's other features (`FEATURES`)."""
        c = self.calibration
        values = {**values, "const": 1.0}
        return sum(coef * values[f] for f, coef in zip(c["features"], c["coef"], strict=True))

    def _hires(self, size: int) -> bool:
        return 4 * size >= self.resolution

    def feature_sums(self, arch: Arch) -> dict[str, float]:
        """The calibration's additive features of `arch`: layer sums (all, high-resolution blocks, stem+head),
        layer count and parameters (M)."""
        total = self.block_sum_us(arch)
        layers = arch.layers()
        hires = math.fsum(self.layer_us(c) for c in layers if c.kind in ("bneck", "ds") and self._hires(c.size))
        edge = math.fsum(self.layer_us(c) for c in layers if c.kind in ("stem", "head"))
        return {"sum_us": total, "hires_us": hires, "edge_us": edge, "layers": float(len(layers)),
                "mparams": params(arch) / 1e6}

    def _fast_sums(self, arch: Arch) -> tuple[float, float, float] | None:
        """(layer sum, high-resolution block sum, stem + head) by tuple lookups; None when a layer is missing
        (the slow path then interpolates it or names it)."""
        get = self._us_by_tuple.get
        size = arch.resolution
        s = arch.stem
        edge = get(("stem", size, 3, 0, s.out, s.kernel, s.stride, False, s.act))  # LayerConfig.of_stem's fields
        if edge is None:
            return None
        size = (size + s.stride - 1) // s.stride
        cin = s.out
        total = hires = 0.0
        limit = self.resolution
        for b in arch.blocks:
            if type(b) is Bneck:
                v = get(("bneck", size, cin, b.expand, b.out, b.kernel, b.stride, b.se, b.act))
            else:
                v = get(("ds", size, cin, 0, b.out, b.kernel, b.stride, False, b.act))
            if v is None:
                return None
            total += v
            if 4 * size >= limit:
                hires += v
            if b.stride != 1:
                size = (size + 1) // 2
            cin = b.out
        h = arch.head
        v = get(("head", size, cin, h.conv or 0, h.hidden or 0, 1, 1, False, f"{h.conv_act}/{h.hidden_act}"))
        if v is None or arch.num_classes != self._head_classes:
            return None
        edge += v
        return total + edge, hires, edge

    def predict_us(self, arch: Arch, threads: int | None = None) -> float:
        """Predicted whole-network latency in µs on the table's device, in the table's host state."""
        if arch.resolution != self.resolution or (threads is not None and threads != self.threads):
            self.check(arch, threads)
        fast = self._fast_sums(arch)
        if fast is None:
            return float(self.calibrate(self.feature_sums(arch)))
        total, hires, edge = fast
        mparams = params(arch) / 1e6 if "mparams" in self.calibration["features"] else 0.0
        return float(self.calibrate({"sum_us": total, "hires_us": hires, "edge_us": edge,
                                     "layers": float(len(arch.blocks) + 2), "mparams": mparams}))

    def predict_ms(self, arch: Arch, threads: int | None = None) -> float:
        return self.predict_us(arch, threads) / 1e3

    def predict_ms_batch(self, encoded: np.ndarray) -> np.ndarray:
        """Predicted latency (ms) of many encoded architectures of the table's space (numpy only)."""
        if self._tables is None:
            def fn(cfg: LayerConfig) -> tuple[float, float, float, float, float]:
                try:
                    us = self.layer_us(cfg)
                except LatencyError:
                    us = math.nan
                block = cfg.kind in ("bneck", "ds")
                return (us, 1.0, layer_cost(cfg)[0] / 1e6, us if block and self._hires(cfg.size) else 0.0,
                        0.0 if block else us)

            self._tables = self.space.tabulate(fn)
        t = self._tables.total(encoded)
        out = self.calibrate({"sum_us": t[:, 0], "layers": t[:, 1], "mparams": t[:, 2], "hires_us": t[:, 3],
                              "edge_us": t[:, 4]}) / 1e3
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
        buf = pa.BufferOutputStream()
        pq.write_table(t, buf)
        atomic_write(p, buf.getvalue().to_pybytes())
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
            raise OutdatedTableError(f"latency table {str(p)!r} has format {meta.get('format')!r}, this version reads "
                                     f"{TABLE_FORMAT} (quiet-round whole-net timings): rebuild it with "
                                     "`bneck latency build ... --force`")
        table = cls(t.to_pandas(), meta)
        changes = table.device_changes() if warn_device else ""
        if changes:
            warnings.warn(f"latency table {p.name} was measured on another device/runtime ({changes})", stacklevel=2)
        return table

    def device_changes(self) -> str:
        """How this host differs from the device the table was measured on ('cpu: A vs B, ...'; '' when it is the
        same): what loading warns about, and what refuses to time networks here in the table's scale."""
        theirs = self.meta["fingerprint"]
        here = fingerprint(self.threads, theirs["provider"])
        diff = [k for k in ("cpu", "cores", "machine", "onnxruntime") if here.get(k) != theirs.get(k)]
        return ", ".join(f"{k}: {theirs.get(k)} vs {here.get(k)}" for k in diff)

    def not_measurable_here(self) -> str:
        """Why networks cannot be timed on this host in this table's scale ('' when they can): a synthetic table
        has no protocol to repeat, a table of another device no anchors this host reproduces."""
        if self.meta["protocol"].get("name") == "synthetic":
            return "it is synthetic (not measured)"
        changes = self.device_changes()
        return f"it was measured on another device ({changes})" if changes else ""

    # ---- import from a kit --------------------------------------------------------------------------
    @classmethod
    def from_kit(cls, kit_dir: str | Path, results_csv: str | Path | None = None) -> LatencyTable:
        """Build a table from a kit's manifest and its measured results CSV."""
        kit = Path(kit_dir)
        man_path = kit / "manifest.json"
        if not man_path.is_file():
            raise LatencyError(f"{kit} has no manifest.json (not a bneck latency kit)")
        try:
            manifest = read_manifest(kit)
            by_key = {e["key"]: e for e in manifest["entries"]}
            # every field read below, so that a damaged manifest is one line here, not a traceback later
            for name in ("space", "space_info", "resolution", "threads"):
                manifest[name]
            by_key["reference"]["arch"], by_key["layer_reference"]["config"]
            all(e["kind"] and (e["kind"] != "layer" or e["config"]) for e in by_key.values())
        except KitError as exc:
            raise LatencyError(str(exc)) from None
        except (KeyError, TypeError, AttributeError) as exc:
            raise LatencyError(f"{man_path} is damaged (no {exc}): write the kit again") from None
        res = Path(results_csv) if results_csv else kit / "results.csv"
        if not res.is_file():
            raise LatencyError(f"results file {str(res)!r} does not exist: run the kit's measure.py first")
        try:
            protocol = Protocol.from_dict(manifest.get("protocol", {}))
        except KitError as exc:
            raise LatencyError(f"{man_path}: {exc}; write the kit again with this version") from None
        try:
            with open(res, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("wall_time")]
            for r in rows:  # every row, so a damaged line is this one-line error, not a traceback later
                float(r["min_us"]), float(r["ref_min_us"]), int(r["pass"]), int(r["seq"]), int(r["runs"])
        except (csv.Error, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
            raise LatencyError(f"results file {str(res)!r} is not a bneck results CSV of protocol "
                               f"{PROTOCOL_NAME} ({type(exc).__name__}: {exc})") from None
        device_path = res.with_suffix(".device.json")
        device = json.loads(device_path.read_text()) if device_path.is_file() else {}
        passes: dict[str, set[int]] = {}
        for r in rows:
            passes.setdefault(r["key"], set()).add(int(r["pass"]))
        missing = [k for k, e in by_key.items()
                   if e["kind"] == "layer" and len(passes.get(k, ())) < protocol.passes]
        n_layers = sum(e["kind"] == "layer" for e in by_key.values())
        if missing:
            raise LatencyError(f"{len(missing)} of {n_layers} kit entries are not measured yet "
                               f"(first: {missing[0]}): run the kit's measure.py again to finish")
        est, spread, layer_ref_us, layer_ref_q = row_latencies(rows, protocol)
        raw_median: dict[str, list[float]] = {}
        runs: dict[str, int] = {}
        for r in rows:
            raw_median.setdefault(r["key"], []).append(float(r["median_us"]))
            runs[r["key"]] = runs.get(r["key"], 0) + int(r["runs"])
        records = []
        for key, e in by_key.items():
            if e["kind"] != "layer":
                continue
            records.append({**e["config"], "key": key, "median_us": est[key],
                            "raw_median_us": float(np.median(raw_median[key])), "pass_spread": spread[key],
                            "passes": len(passes[key]), "runs": runs[key]})
        entries = pd.DataFrame.from_records(records)
        space_info = manifest["space_info"]
        meta: dict[str, Any] = {
            "format": TABLE_FORMAT,
            "space": {"name": manifest["space"], "width_mult": space_info.get("width_mult", 1.0),
                      "num_classes": space_info["num_classes"], "definition": space_info},
            "resolution": manifest["resolution"], "threads": manifest["threads"],
            "fingerprint": device.get("fingerprint", {}), "protocol": device.get("protocol", manifest["protocol"]),
            "reference": {"arch": by_key["reference"]["arch"], "median_us": math.nan},
            "layer_reference": {"key": layer_key(LayerConfig(**by_key["layer_reference"]["config"])),
                                "median_us": layer_ref_us, "quantiles_us": layer_ref_q},
            "statistic": STATISTIC,
            "row_pass_spread_median": float(np.median(list(spread.values()))),
            "created": rows[-1]["wall_time"] if rows else None,
        }
        table = cls(entries, {**meta, "calibration": {"features": ["sum_us"], "coef": [1.0], "n_nets": 0}})
        cal_path = res.with_name("calibration.csv")
        nets = [k for k, e in by_key.items() if e["kind"] == "net"]
        cal_rows = _calibration_rows(cal_path, nets, protocol.rounds)
        ref_all = [float(r["reference_us"]) for r in cal_rows]
        table.meta["reference"]["median_us"] = quiet_reference_us(ref_all, protocol)
        q = np.percentile(ref_all, [0, 10, 50, 90, 100])
        table.meta["reference"]["quantiles_us"] = dict(zip(("min", "p10", "p50", "p90", "max"), map(float, q),
                                                           strict=True))
        table.meta["calibration"] = _calibration_from_rows(cal_rows, by_key, table.reference_us, table,
                                                           protocol)
        return table

    # ---- a table without a device -------------------------------------------------------------------
    @classmethod
    def from_layer_us(cls, space: SearchSpace, resolution: int, layer_us: Callable[[LayerConfig], float],
                      threads: int = 1) -> LatencyTable:
        """A table whose rows come from `layer_us(cfg)` instead of a device: deterministic, for tests of what
        consumes tables (NetAdapt, searches) and for dry runs. Its protocol is named `synthetic`, its calibration
        is the identity and its fingerprint is this machine's, so it loads without a device warning."""
        if space.resolution != resolution:
            space = SearchSpace.from_dict({**space.to_dict(), "resolution": resolution})
        if space.preset is None:
            raise LatencyError(f"space {space.name} has no seed network to use as the reference")
        records = []
        for cfg in space.layer_configs(resolution):
            us = float(layer_us(cfg))
            records.append({**dataclasses.asdict(cfg), "key": layer_key(cfg), "median_us": us, "raw_median_us": us,
                            "pass_spread": 0.0, "passes": 1, "runs": 1})
        info = space.to_dict()
        meta: dict[str, Any] = {
            "format": TABLE_FORMAT,
            "space": {"name": space.name, "width_mult": info.get("width_mult", 1.0),
                      "num_classes": info["num_classes"], "definition": info},
            "resolution": resolution, "threads": threads,
            "fingerprint": fingerprint(threads, "CPUExecutionProvider"), "protocol": {"name": "synthetic"},
            "reference": {"arch": space.preset.to_string(), "median_us": 0.0}, "created": None,
            "calibration": {"features": ["sum_us"], "coef": [1.0], "n_nets": 0}}
        table = cls(pd.DataFrame.from_records(records), meta)
        table.meta["reference"]["median_us"] = table.predict_us(space.preset)
        return table


def _calibration_rows(path: Path, nets: list[str], rounds: int) -> list[dict[str, str]]:
    """The calibration timings, every (round, net) pair present: the reference's latency comes from them."""
    if not path.is_file():
        raise LatencyError(f"{path} does not exist: the calibration networks are not measured yet; run the kit's "
                           "measure.py again to finish")
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("wall_time")]
        for r in rows:
            float(r["whole_us"]), float(r["reference_us"]), int(r["round"])
    except (csv.Error, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise LatencyError(f"calibration file {str(path)!r} is damaged ({type(exc).__name__})") from None
    have = {(int(r["round"]), r["key"]) for r in rows}
    lacking = sum((rnd, k) not in have for rnd in range(rounds) for k in nets)
    if lacking:
        raise LatencyError(f"{lacking} of {rounds * len(nets)} calibration timings are missing in {path}: run the "
                           "kit's measure.py again to finish")
    return rows


def _calibration_from_rows(rows: list[dict[str, str]], by_key: dict[str, Any], ref_us: float,
                           table: LatencyTable, protocol: Protocol) -> dict[str, Any]:
    """Fit the calibration: the table's layer sums against whole networks timed next to the reference
    (the protocol's estimate over the quiet rounds, in the units of the reference's quiet median)."""
    pairs: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        pairs.setdefault(r["key"], []).append((float(r["whole_us"]), float(r["reference_us"])))
    keys = sorted(pairs)
    if len(keys) < 4:
        return {"features": ["sum_us"], "coef": [1.0], "n_nets": len(keys)}
    archs = [Arch.parse(by_key[k]["arch"]) for k in keys]
    below = quiet_below_us([r for per in pairs.values() for _, r in per], protocol)
    whole = np.array([estimate([t for t, _ in pairs[k]], [r for _, r in pairs[k]], ref_us, below, protocol.min_quiet)
                      for k in keys])
    per = [table.feature_sums(a) for a in archs]
    feats = {k: np.array([f[k] for f in per]) for k in per[0]}
    sums = feats["sum_us"]
    cal = fit_calibration(feats, whole)
    cal["nets"] = [{"arch_id": a.arch_id, "arch": a.to_string(), "sum_us": float(s), "whole_us": float(w),
                    "rounds": len(pairs[k])}
                   for k, a, s, w in zip(keys, archs, sums, whole, strict=True)]
    return cal


def anchor_scale(calibrated_us: Sequence[float], measured_us: Sequence[float]) -> float:
    """The factor that puts a measurement in its table's scale: the median over the anchors of calibrated /
    measured latency (1.0 without anchors)."""
    pairs = [(c, m) for c, m in zip(calibrated_us, measured_us, strict=True) if m > 0 and math.isfinite(m)]
    return float(np.median([c / m for c, m in pairs])) if pairs else 1.0
