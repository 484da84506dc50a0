"""How good a table's predictions are: held-out whole networks measured against their predictions.

Protocol (`latency/protocol.py`): every network is timed whole in the protocol's rounds, each burst followed by
a burst of the table's reference network; a measurement is the median ratio times the table's reference
latency, so what is compared is the predictor's error, not how much the host drifted since the table was built.

Anchors (`LatencyTable.anchors`): the seed and five more calibration nets are timed in every pass beside the
held-out nets, and the pass is scaled by their median calibrated/measured ratio (`anchor_scale`, reported per
pass as `anchors.scale_by_pass`; `unanchored` gives the metrics without it). Across processes and minutes, the
host reads a whole measurement a few percent off its calibration (1.4-4.3% in five fresh validations here);
the anchors put the truth in the table's scale, so what is judged is the predictor, not that offset.

Held out means held out: the space's seed network (it is also the reference and a calibration net) and the
calibration nets are never in the metrics; the seed is reported on its own. Off-grid nets are validated too,
since NetAdapt and width multipliers produce widths the table never measured: uniform width multipliers of the
preset the space is built around and randomly pruned nets (expansions and residual-group widths cut to
multiples of 8). With `repeat=2` the same nets are measured twice, one pass after the other, and the report
gives the measurement's own test-retest agreement: the noise floor a predictor cannot be judged below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latency.build import measure_in_table_scale
from latency.kit import offgrid_archs
from latency.protocol import Protocol
from latency.table import LatencyTable
from search_space import Arch


def metrics(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    from scipy.stats import kendalltau, spearmanr

    rel = (pred - meas) / meas
    out = {"n": len(pred), "within_5pct": float(np.mean(np.abs(rel) <= 0.05)),
           "within_10pct": float(np.mean(np.abs(rel) <= 0.10)), "mape": float(np.mean(np.abs(rel))),
           "bias": float(np.mean(rel))}
    if len(pred) >= 3:
        out["kendall_tau"] = float(kendalltau(pred, meas).statistic)
        out["spearman"] = float(spearmanr(pred, meas).statistic)
    return out


def retest(first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    """Agreement of two measurements of the same nets: |Δ| relative to their mean."""
    from scipy.stats import kendalltau

    d = np.abs(first - second) / ((first + second) / 2)
    return {"retest_within_5pct": float(np.mean(d <= 0.05)), "retest_within_10pct": float(np.mean(d <= 0.10)),
            "retest_median_abs_pct": float(100 * np.median(d)),
            "retest_kendall_tau": float(kendalltau(first, second).statistic) if len(d) >= 3 else float("nan")}


def held_out(table: LatencyTable, n: int, seed: int, archs: Sequence[Arch] = (),
             n_pruned: int = 10) -> list[tuple[str, Arch]]:
    """The nets `validate` measures: `archs`, `n` fresh samples and the off-grid nets, none of them a calibration
    net or the reference, each once."""
    space = table.space
    excluded = {c["arch_id"] for c in table.calibration.get("nets", [])}
    if space.preset is not None:
        excluded.add(space.preset.arch_id)
    excluded.add(Arch.parse(table.meta["reference"]["arch"]).arch_id)
    chosen: list[tuple[str, Arch]] = []
    seen = set(excluded)

    def take(kind: str, a: Arch) -> None:
        if a.arch_id not in seen:
            chosen.append((kind, a))
            seen.add(a.arch_id)

    for a in archs:
        take("given", a)
    rng = np.random.default_rng(seed)
    tries = 0
    while sum(k == "sampled" for k, _ in chosen) < n and tries < 50 * max(1, n):
        take("sampled", space.sample(rng))
        tries += 1
    for kind, a in offgrid_archs(space, n_pruned, seed):
        take(kind, a)
    return chosen


def validate(table: LatencyTable, n: int = 50, seed: int = 1, rounds: int | None = None, archs: Sequence[Arch] = (),
             n_pruned: int = 10, repeat: int = 1, plot: str | Path | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Measure held-out architectures of the table's space (see `held_out`) against their predictions."""
    chosen = held_out(table, n, seed, archs, n_pruned)
    preset_arch = table.space.preset
    nets = [a for _, a in chosen] + ([preset_arch] if preset_arch is not None else [])
    protocol = Protocol.from_dict(table.meta["protocol"])
    n_rounds = protocol.rounds if rounds is None else rounds
    passes: list[np.ndarray] = []
    raw_passes: list[np.ndarray] = []
    scales: list[float] = []
    spreads: list[np.ndarray] = []
    for rep in range(repeat):
        def on_progress(done: int, total: int, rep: int = rep) -> None:
            if progress is not None:
                progress(rep * total + done, repeat * total)

        timing = measure_in_table_scale(table, nets, n_rounds, seed=seed + 1 + rep, progress=on_progress)
        passes.append(timing.us)
        raw_passes.append(timing.raw_us)
        scales.append(timing.scale)
        spreads.append(timing.ratio_spread)
    measured = np.median(np.stack(passes), axis=0)
    unanchored = np.median(np.stack(raw_passes), axis=0)
    predicted = np.array([table.predict_us(a) for a in nets])
    uncorrected = np.array([table.block_sum_us(a) for a in nets])
    kinds = [k for k, _ in chosen]
    h = len(chosen)  # the held-out nets come first, then the seed when there is one
    labels = [*kinds, *(["reference"] if preset_arch is not None else [])]
    offgrid = np.array([k == "pruned" or k.startswith("width_mult") for k in kinds])
    result: dict[str, Any] = {**metrics(predicted[:h], measured[:h]),
                              "uncorrected": metrics(uncorrected[:h], measured[:h]),
                              "offgrid": metrics(predicted[:h][offgrid], measured[:h][offgrid]) if offgrid.any()
                              else {"n": 0},
                              "unanchored": metrics(predicted[:h], unanchored[:h]),
                              "anchors": {"arch_ids": [a.arch_id for a, _ in table.anchors()],
                                          "scale_by_pass": scales},
                              "rounds": n_rounds, "repeat": repeat, "table_reference_us": table.reference_us,
                              "round_ratio_spread_median": float(np.median(np.concatenate(spreads)))}
    if preset_arch is not None:
        result["reference_net"] = {"arch_id": preset_arch.arch_id, "predicted_ms": predicted[h] / 1e3,
                                   "measured_ms": measured[h] / 1e3, "unanchored_ms": unanchored[h] / 1e3,
                                   "error_pct": float(100 * (predicted[h] - measured[h]) / measured[h])}
    if repeat >= 2:
        result.update(retest(passes[0][:h], passes[1][:h]))
        result["unanchored"]["retest"] = retest(raw_passes[0][:h], raw_passes[1][:h])
        result["predictor_vs_each_pass"] = [metrics(predicted[:h], m[:h]) for m in passes]
    result["archs"] = [{"kind": kind, "arch_id": a.arch_id, "arch": a.to_string(), "predicted_ms": p / 1e3,
                        "measured_ms": m / 1e3, "block_sum_ms": u / 1e3,
                        **({"measured_ms_by_pass": [float(x[i]) / 1e3 for x in passes]} if repeat >= 2 else {})}
                       for i, (kind, a, p, m, u) in enumerate(zip(labels, nets, predicted, measured, uncorrected,
                                                                  strict=True))]
    if plot:
        result["plot"] = str(scatter(predicted / 1e3, measured / 1e3, uncorrected / 1e3, plot,
                                     f"{table.space.name} @{table.resolution}px, {table.threads} thread(s)",
                                     offgrid=np.append(offgrid, False)[:len(nets)]))
    return result


def scatter(pred_ms: np.ndarray, meas_ms: np.ndarray, sum_ms: np.ndarray, path: str | Path, title: str,
            offgrid: np.ndarray | None = None) -> Path:
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
    off = np.zeros(len(pred_ms), dtype=bool) if offgrid is None else offgrid
    ax.scatter(meas_ms[~off], pred_ms[~off], s=16, c="tab:blue", label="predicted (calibrated)")
    if off.any():
        ax.scatter(meas_ms[off], pred_ms[off], s=22, c="tab:orange", marker="^",
                   label="predicted, off-grid (pruned / width mult)")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
