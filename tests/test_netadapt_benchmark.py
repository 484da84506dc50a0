"""benchmarks/netadapt.py's per-target row (the issue's JSON keys, the "beats uniform" rule, the interpolation to
equal measured latency) and its informativeness analysis of a NetAdapt run's proposals."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from netadapt import informativeness, target_summary

# the issue's keys per target (its `wall_s` is the document's: the targets share one run)
ISSUE_KEYS = {"target_ms", "final_predicted_ms", "final_measured_ms", "uniform_alpha", "uniform_measured_ms",
              "top1_start", "top1_netadapt", "top1_uniform", "seeds"}


def _target(netadapt: list[float], uniform: list[float], bracket: list[float] | None) -> dict:
    top1 = {f"80pct/netadapt/{s}": v for s, v in enumerate(netadapt)}
    top1 |= {f"80pct/uniform-a0.800/{s}": v for s, v in enumerate(uniform)}
    if bracket:
        top1 |= {f"80pct/bracket-a0.760/{s}": v for s, v in enumerate(bracket)}
    return {"frac": 0.8, "summary": {"final_predicted_ms": 1.40, "iterations": 9, "stopped": None,
                                     "final_arch": "r32_n10,...", "settings": {"short_steps": 100}},
            "choice": {"alpha": 0.8, "ratio": 0.96, "bracket_ratio": 1.04 if bracket else None},
            "searched": None, "top1": top1, "chained_from": "benchmark start", "seeds": [0, 1, 2],
            "informativeness": {"informative_share": 1.0}, "netadapt_s": 10.0}


MEASURED = {"start": 2.0, "80pct/netadapt": 1.66, "80pct/uniform": 1.60}


def test_row_has_the_issue_keys_and_compares_at_equal_measured_latency() -> None:
    row = target_summary("80pct", _target([0.884, 0.882, 0.883], [0.880, 0.879, 0.881], [0.890, 0.888, 0.889]),
                         MEASURED, start_ms=1.76, top1_start=0.8834, uniform_predicted_ms=1.41)
    assert row.keys() >= ISSUE_KEYS
    assert row["target_ms"] == pytest.approx(0.8 * 1.76)
    assert row["measured_vs_target_pct"] == pytest.approx(100 * (1.66 / 1.6 - 1))
    assert row["netadapt_minus_uniform_points"] == pytest.approx(0.3)
    assert row["pooled_std"] == pytest.approx(0.001)
    assert row["beats_uniform"]  # +0.3 points against a pooled std of 0.1 points
    # halfway between a uniform net 4% faster (88.0%) and one 4% slower (88.9%): 88.45% at equal latency
    assert row["top1_uniform_at_equal_latency"] == pytest.approx(0.8845)
    assert row["netadapt_minus_uniform_at_equal_latency_points"] == pytest.approx(-0.15)
    assert row["drop_from_start_points"] == pytest.approx(0.04)


def test_a_gain_inside_the_seed_spread_does_not_beat_uniform() -> None:
    row = target_summary("80pct", _target([0.884, 0.874, 0.894], [0.880, 0.870, 0.890], None), MEASURED,
                         start_ms=1.76, top1_start=0.8834, uniform_predicted_ms=1.41)
    assert row["netadapt_minus_uniform_points"] == pytest.approx(0.4)
    assert not row["beats_uniform"]  # pooled std 1 point
    assert row["top1_uniform_at_equal_latency"] is None  # no width on the other side was timed


def test_informativeness_counts_spread_against_the_holdout_se_and_compares_cut_with_tuned(tmp_path: Path) -> None:
    rows = []
    for it, tuned in ((1, [0.80, 0.85, 0.90]), (2, [0.850, 0.851, 0.852])):
        for k, top1 in enumerate(tuned):
            rows.append({"iteration": it, "proposal": 3 * it + k, "top1": top1, "failed": False, "collapsed": False,
                         # iteration 1: the cut's ranking is the fine-tune's reversed; iteration 2: the same
                         "top1_before": (0.5 - 0.1 * k) if it == 1 else 0.4 + 0.1 * k})
    rows.append({"iteration": 2, "proposal": 99, "top1": 0.0, "failed": True, "collapsed": False, "top1_before": 0.0})
    pd.DataFrame(rows).to_parquet(tmp_path / "proposals.parquet")
    info = informativeness(tmp_path, holdout_n=4800)
    first, second = info["iterations"]
    assert first["proposals"] == 3 and second["proposals"] == 3  # the failed proposal is left out
    assert info["informative_share"] == pytest.approx(0.5)  # a 10-point spread is; a 0.2-point one is not
    assert first["cut_tuned_tau"] == pytest.approx(-1.0) and second["cut_tuned_tau"] == pytest.approx(1.0)
    assert [first["same_best_cut_and_tuned"], second["same_best_cut_and_tuned"]] == [False, True]
    assert info["same_best_share"] == pytest.approx(0.5)
