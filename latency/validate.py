"""How good a table's predictions are: held-out whole networks measured against their predictions.

Protocol: every network is timed whole in several rounds, each timing followed by the table's reference
network; a measurement is rescaled by (table reference / reference now), so what is compared is the
predictor's error, not how much the host drifted since the table was built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latency.protocol import Protocol, session, time_interleaved
from latency.table import LatencyTable
from search_space import Arch, build_model, onnx_bytes


def _metrics(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    from scipy.stats import kendalltau, spearmanr

    rel = (pred - meas) / meas
    out = {"within_5pct": float(np.mean(np.abs(rel) <= 0.05)), "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
           "mape": float(np.mean(np.abs(rel))), "bias": float(np.mean(rel))}
    if len(pred) >= 3:
        out["kendall_tau"] = float(kendalltau(pred, meas).statistic)
        out["spearman"] = float(spearmanr(pred, meas).statistic)
    return out


def validate(table: LatencyTable, n: int = 50, seed: int = 1, rounds: int = 3, archs: Sequence[Arch] = (),
             include_seed: bool = True, plot: str | Path | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Measure `n` held-out architectures of the table's space (plus `archs` and the space's seed)."""
    space = table.space
    calibration_ids = {c["arch_id"] for c in table.calibration.get("nets", [])}
    rng = np.random.default_rng(seed)
    chosen: list[Arch] = list(archs)
    if include_seed and space.seed is not None:
        chosen.append(space.seed)
    seen = {a.arch_id for a in chosen}
    tries = 0
    target = len(chosen) + n
    while len(chosen) < target and tries < 50 * max(1, n):
        a = space.sample(rng)
        tries += 1
        if a.arch_id not in seen and a.arch_id not in calibration_ids:
            chosen.append(a)
            seen.add(a.arch_id)
    for a in chosen:
        table.check(a)
    protocol = Protocol(**{k: v for k, v in table.meta["protocol"].items() if k in Protocol.__dataclass_fields__})
    threads = table.threads
    provider = table.meta["fingerprint"].get("provider", "CPUExecutionProvider")
    res = table.resolution
    ref = session(onnx_bytes(build_model(Arch.parse(table.meta["reference"]["arch"])), (1, 3, res, res)), threads,
                  provider)
    sessions = [session(onnx_bytes(build_model(a), (1, 3, res, res)), threads, provider) for a in chosen]
    scaled: list[list[float]] = [[] for _ in chosen]
    total = rounds * len(chosen)

    def record(rnd: int, i: int, t: float, r: float) -> None:
        scaled[i].append(t * table.reference_us / r)
        if progress:
            progress(sum(map(len, scaled)), total)

    time_interleaved(sessions, ref, rounds, protocol, seed=seed + 1, on_timing=record)
    measured = np.array([np.median(v) for v in scaled])
    predicted = np.array([table.predict_us(a) for a in chosen])
    uncorrected = np.array([table.block_sum_us(a) for a in chosen])
    result: dict[str, Any] = {"n": len(chosen), **_metrics(predicted, measured),
                              "uncorrected": _metrics(uncorrected, measured), "rounds": rounds,
                              "table_reference_us": table.reference_us,
                              "archs": [{"arch_id": a.arch_id, "arch": a.to_string(), "predicted_ms": p / 1e3,
                                         "measured_ms": m / 1e3, "block_sum_ms": u / 1e3}
                                        for a, p, m, u in zip(chosen, predicted, measured, uncorrected, strict=True)]}
    if plot:
        result["plot"] = str(scatter(predicted / 1e3, measured / 1e3, uncorrected / 1e3, plot,
                                     f"{space.name} @{res}px, {threads} thread(s)"))
    return result


def scatter(pred_ms: np.ndarray, meas_ms: np.ndarray, sum_ms: np.ndarray, path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    lo = float(min(pred_ms.min(), meas_ms.min(), sum_ms.min())) * 0.9
    hi = float(max(pred_ms.max(), meas_ms.max(), sum_ms.max())) * 1.1
    xs = np.linspace(lo, hi, 2)
    ax.plot(xs, xs, "k-", lw=1)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="0.9", label="±10%")
    ax.scatter(meas_ms, sum_ms, s=14, c="tab:gray", alpha=0.6, label="block sum (uncorrected)")
    ax.scatter(meas_ms, pred_ms, s=16, c="tab:blue", label="predicted (calibrated)")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
