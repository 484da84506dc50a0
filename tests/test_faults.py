"""Fault injection (short version of benchmarks/faults.py): kill -9 of a search's driver and its workers at
seeded random moments, then resume: nothing finished lost, nothing counted twice, the budget exact."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from faults import inject


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    result = inject(tmp_path, kills=4, budget=5, seed=3, steps=20)
    assert result["kills"] >= 3, result["rounds"]  # the rounds were really killed, not finished first
    assert any(r["phase"] == "search" and not r["ended_before_kill"] for r in result["rounds"])  # mid-trial kills
    assert result["final_exit"] == 0 and result["status"] == "done", result
    assert result["lost"] == []  # every trial COMPLETE before a kill is COMPLETE after, same accuracy
    assert result["unique_trials"] and result["counted"] == 5  # budget exact, nothing twice
    assert result["accuracy_differs"] == []  # re-runs give what an uninterrupted run gives


@pytest.mark.slow
def test_corrupt_run_files_are_a_clear_error_or_rebuilt_from_the_study(tmp_path):
    """The study is the source of truth: a damaged trials.parquet or run.json is rewritten from it on resume
    (nothing lost); a damaged study.db or table is one line and exit 2, never a silent fresh start."""
    import shutil
    import subprocess

    import pandas as pd
    from faults import BNECK, tiny_setup, write_config

    env = {**os.environ, "BNECK_CACHE": str(tmp_path / "cache")}
    paths = tiny_setup(tmp_path / "setup")
    cfg = write_config(paths, tmp_path / "run.yaml", budget=2, steps=5)
    run = tmp_path / "run"
    res = subprocess.run([*BNECK, "search", "--config", str(cfg), "--out", str(run)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    done = pd.read_parquet(run / "trials.parquet")[["trial", "arch", "accuracy"]]
    for name, junk in (("trials.parquet", b"PAR1 not parquet"), ("run.json", b"{"), ("study.db", b"junk" * 64)):
        copy = tmp_path / f"copy_{name}"
        shutil.copytree(run, copy)
        (copy / name).write_bytes(junk)
        res = subprocess.run([*BNECK, "search", "--resume", str(copy), "--trials", "3"], env=env, capture_output=True,
                             text=True, timeout=600)
        if name == "study.db":
            assert res.returncode == 2 and "cannot open the study" in res.stderr, res.stderr
            assert "Traceback" not in res.stderr
        else:
            assert res.returncode == 0, res.stderr
            frame = pd.read_parquet(copy / "trials.parquet")
            assert len(frame) == 3  # the 2 finished trials kept, one more run
            pd.testing.assert_frame_equal(frame[["trial", "arch", "accuracy"]].head(2), done)
    (run / "trials.parquet").write_bytes(b"junk")
    res = subprocess.run([*BNECK, "report", str(run)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "not readable" in res.stderr
    paths["table"].write_bytes(b"junk")
    res = subprocess.run([*BNECK, "search", "--resume", str(run), "--trials", "3"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 2 and "corrupt or not a bneck table" in res.stderr, res.stderr


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_run_resumes_once_space_is_back(tmp_path):
    """The run dir on a 450 KB tmpfs: trials go on without their weights, then the run ends with one line
    (exit 1, no traceback, no temp files); after the disk grows, --resume finishes it with nothing lost."""
    import subprocess

    import pandas as pd
    import yaml
    from faults import BNECK, tiny_setup, write_config

    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=450k", "tmpfs", str(disk)], capture_output=True,
                           text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mount.stderr.strip()[:100]}")
    try:
        env = {**os.environ, "BNECK_CACHE": str(tmp_path / "cache")}
        cfg = write_config(tiny_setup(tmp_path / "setup"), tmp_path / "run.yaml", budget=12, steps=5)
        cfg.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "keep_weights": 12}))
        run = disk / "run"
        res = subprocess.run([*BNECK, "search", "--config", str(cfg), "--out", str(run)], env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 1, res.stderr
        assert "no space left on the device" in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert f"bneck search --resume {run}" in res.stderr
        assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        res = subprocess.run([*BNECK, "search", "--resume", str(run)], env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr
        frame = pd.read_parquet(run / "trials.parquet")
        assert len(frame) == 12 and set(frame["state"]) == {"COMPLETE"} and frame["trial"].is_unique
        assert (run / "best" / "model.onnx").is_file()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
