"""Fault injection (short version of benchmarks/faults.py): kill -9 of a search's driver and its workers at
seeded random moments, then resume: nothing finished lost, nothing counted twice, the budget exact."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from faults import inject


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    result = inject(tmp_path, kills=4, budget=4, seed=3, steps=20)
    assert result["kills"] >= 2, result["rounds"]  # most rounds were really killed, not finished first
    assert result["final_exit"] == 0 and result["status"] == "done", result
    assert result["lost"] == []  # every trial COMPLETE before a kill is COMPLETE after, same accuracy
    assert result["unique_trials"] and result["counted"] == 4  # budget exact, nothing twice
    assert result["accuracy_differs"] == []  # re-runs give what an uninterrupted run gives
