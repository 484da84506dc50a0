"""A real PostgreSQL server (tests/pg.py) as Optuna storage, shared by two worker processes."""

from __future__ import annotations

import multiprocessing as mp

import optuna
import pytest
from pg import TOOLS, find_bin_dir, optuna_worker

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_find_bin_dir_picks_the_highest_complete_version(tmp_path):
    assert find_bin_dir(tmp_path) is None
    for version, tools in [("9.6", TOOLS), ("15", TOOLS), ("16", TOOLS[:-1]), ("10", TOOLS)]:
        (tmp_path / version / "bin").mkdir(parents=True)
        for tool in tools:
            exe = tmp_path / version / "bin" / tool
            exe.touch()
            exe.chmod(0o755)
    assert find_bin_dir(tmp_path) == tmp_path / "15" / "bin"  # 16 lacks createdb; 15 > 10 > 9.6 as numbers


def test_fixture_gives_an_empty_database_per_test(postgres_url):
    assert postgres_url.startswith("postgresql+psycopg://bneck@/bneck_test_")
    storage = optuna.storages.RDBStorage(postgres_url)
    try:
        assert storage.get_all_studies() == []
    finally:
        storage.remove_session()
        storage.engine.dispose()


def test_two_processes_share_one_study(postgres_url):
    # The parent creates the study (and so the schema) first: two processes creating Optuna's tables at the same
    # time on an empty database race on CREATE TABLE.
    optuna.create_study(storage=postgres_url, study_name="pg", load_if_exists=True)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=optuna_worker, args=(postgres_url, "pg", 15)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=120)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0, 0]

    trials = optuna.load_study(storage=postgres_url, study_name="pg").get_trials(deepcopy=False)
    assert len(trials) == 30
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(30))
    assert all(t.value == pytest.approx(t.params["x"] ** 2) for t in trials)
