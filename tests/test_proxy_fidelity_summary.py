"""benchmarks/proxy_fidelity.py's summary: which truth the headline rests on, and what it ranks against it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from proxy_fidelity import DEFAULT_STEPS, LONG_STEPS, LONGER_STEPS, PROXY_STEPS, spearman_brown, summarize


def _rows(n: int, longer: int, seeded: int) -> list[dict]:
    """n rows whose proxies rank exactly like the 1,200-step truth and exactly against the 2,400-step one."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        q = 0.85 + 0.002 * i
        r = {"label": f"a{i}", "arch_id": f"id{i}", "madds": 1e6 * (1 + i), "params": 1000,
             "proxy": {str(s): {str(seed): {"top1": q + 0.0001 * seed, "loss": 0.5, "train_s": 1.0, "failed": False}
                                for seed in (0, 1)} for s in PROXY_STEPS},
             "long": {str(seed): {"val": q, "test": q + 0.01, "train_s": 1.0, "failed": False} for seed in (0, 1)},
             "zero_cost": {}}
        if i < longer:
            r["longer"] = {str(seed): {"val": 1 - q, "test": 1 - q + rng.normal(0, 1e-6), "train_s": 2.0,
                                       "failed": False} for seed in ((0, 1) if i < seeded else (0,))}
        rows.append(r)
    return rows


def test_headline_uses_the_longer_truth_only_once_it_covers_every_row() -> None:
    partial = summarize(_rows(8, longer=5, seeded=3), seeded=3)
    assert partial["long_steps"] == LONG_STEPS and not partial["complete"]
    assert partial["kendall_tau"] == pytest.approx(1.0)  # against the 1,200-step truth
    assert partial["truths"][str(LONGER_STEPS)]["n_archs"] == 5

    full = summarize(_rows(8, longer=8, seeded=3), seeded=3)
    assert full["long_steps"] == LONGER_STEPS and full["complete"]
    assert full["kendall_tau"] == pytest.approx(-1.0)  # the 2,400-step truth reverses the order
    assert full["truths"][str(LONG_STEPS)]["budgets"][str(DEFAULT_STEPS)]["kendall_tau"] == pytest.approx(1.0)
    assert full["truth_agreement_tau"] == pytest.approx(-1.0)
    assert full["long_seed_pairs"] == 3


def test_longer_truth_without_its_seed_pairs_is_not_the_headline() -> None:
    doc = summarize(_rows(6, longer=6, seeded=0), seeded=3)
    assert doc["long_steps"] == LONG_STEPS and not doc["complete"]


def test_seed_averaged_truth_becomes_the_headline_once_every_row_has_both_seeds() -> None:
    rows = _rows(8, longer=8, seeded=8)
    for r in rows:  # seed 1 rises with the proxy three times as steeply as seed 0 falls: their mean rises
        q = r["long"]["0"]["val"]
        r["longer"]["1"]["test"] = q + 3 * (q - 0.85)
    doc = summarize(rows, seeded=3)
    assert doc["truths"][str(LONGER_STEPS)]["budgets"][str(DEFAULT_STEPS)]["kendall_tau"] == pytest.approx(-1.0)
    averaged = doc["truths"][f"{LONGER_STEPS}x2"]
    assert averaged["seeds_averaged"] == 2 and averaged["n_archs"] == 8 and averaged["self_tau"] is None
    assert doc["long_seeds_averaged"] == 2 and doc["kendall_tau"] == pytest.approx(1.0)
    one_seed = summarize(_rows(8, longer=8, seeded=3), seeded=3)  # seed 1 missing for 5 rows: one seed
    assert one_seed["long_seeds_averaged"] == 1 and f"{LONGER_STEPS}x2" not in one_seed["truths"]


def test_spearman_brown_lifts_a_noisy_ceiling_and_keeps_a_perfect_one() -> None:
    assert spearman_brown(0.47) == pytest.approx(0.595, abs=0.005)  # the 2,400-step truth: 0.47 -> 0.60
    assert spearman_brown(1.0) == pytest.approx(1.0)
    assert spearman_brown(None) is None and spearman_brown(-0.1) is None
