"""Runs: config validation, run dirs, resume after real kills, K workers, PostgreSQL storage.

Every run here searches a tiny space (two bneck blocks) with a tiny latency table measured in the module
fixture, so a trial trains in about a second; the kill tests use real processes and real signals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from requires import unavailable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from faults import tiny_space

import latency as lat
import search_space as ss
from evaluators import fashion_installed
from runs.cli import cli
from runs.config import ConfigError, RunConfig, load_config, resume_config

BNECK = [sys.executable, "-m", "runs.cli"]
FAST = lat.Protocol(warmup_runs=1, burst_runs=3, burst_min_s=0.0, passes=2, rounds=2,
                   max_rounds=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A two-stage space around a small seed and its latency table at 32 px."""
    d = tmp_path_factory.mktemp("tiny")
    space = tiny_space("tiny_space")
    (d / "space.json").write_text(json.dumps(space.to_dict()))
    lat.build_table(space, 32, out=d / "table.parquet", n_calibration=3, protocol=FAST, workers=1,
                    show_progress=False)
    return {"space": d / "space.json", "table": d / "table.parquet", "dir": d}


def write_config(tiny: dict[str, Path], path: Path, **extra) -> Path:
    doc = {"space": str(tiny["space"]), "table": str(tiny["table"]), "latency_resolution": 32, "steps": 12,
           "trials": 4, "eval_cache": False, "progress": False, "keep_weights": 2, "searcher": "random",
           "threads": 1, "confirm": None} | extra
    path.write_text(yaml.safe_dump(doc))
    return path


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "BNECK_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}


def study_of(run: Path) -> str:
    return yaml.safe_load((run / "config.yaml").read_text())["study"]


def trials(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "trials.parquet")


def assert_exact_budget(run: Path, budget: int) -> pd.DataFrame:
    """The user-facing guarantee: exactly `budget` finished trials, none twice, every row complete."""
    frame = trials(run)
    assert len(frame) == budget
    assert frame["trial"].is_unique
    assert set(frame["state"]) == {"COMPLETE"}
    assert frame["accuracy"].between(0, 1).all()
    assert json.loads((run / "run.json").read_text())["status"] == "done"
    return frame


# ---- config -----------------------------------------------------------------------------------------------
def test_flags_override_the_file_and_the_resolved_config_is_saved(tiny, tmp_path):
    cfg = write_config(tiny, tmp_path / "run.yaml", trials=3, seed=7)
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["search", "--config", str(cfg), "--trials", "2", "--out", str(out)],
                             env=env(tmp_path))
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["trials"] == 2 and saved["seed"] == 7  # flag over file; file over default
    assert saved["target_ms"] > 0 and Path(saved["table"]).is_file()  # machine-dependent defaults made explicit
    frame = assert_exact_budget(out, 2)
    assert frame.loc[frame["trial"] == 0, "reference"].item()  # the space's preset is trial 0
    preset_arch = ss.SearchSpace.from_dict(json.loads(tiny["space"].read_text())).preset
    assert ss.Arch.parse(frame.loc[0, "arch"]).arch_id == preset_arch.replace(num_classes=10).arch_id
    assert frame.loc[0, "latency_ms"] == pytest.approx(saved["target_ms"])
    for name in ("study.db", "pareto.json", "best/spec.json", "best/model.onnx", "best/weights.pt", "logs"):
        assert (out / name).exists(), name


@pytest.mark.parametrize(("doc", "needle"), [
    ({"trails": 3}, "unknown key 'trails'"),
    ({"trials": 0}, "trials: Input should be greater than or equal to 1"),
    ({"searcher": "annealing"}, "unknown searcher 'annealing'"),
    ({"recipe": {"lr": -1}}, "recipe: recipe field lr=-1"),
    ({"mode": "pareto", "searcher": "rl"}, "mode pareto takes"),
    ({"space": "nope_space"}, "unknown space 'nope_space'"),
    ({"storage": "study.db"}, "storage: 'study.db' is not a database URL"),
    ({"address": "auto"}, "address: only meaningful with backend ray"),
])
def test_bad_config_is_one_line_naming_the_key_with_exit_2(tmp_path, doc, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    res = CliRunner().invoke(cli, ["search", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert needle in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_bad_flag_value_and_bad_yaml(tmp_path):
    res = CliRunner().invoke(cli, ["search", "--backend", "slurm", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "backend" in res.output
    (tmp_path / "x.yaml").write_text("trials: [1,\n")
    res = CliRunner().invoke(cli, ["search", "--config", str(tmp_path / "x.yaml")])
    assert res.exit_code == 2 and "not valid YAML" in res.output
    res = CliRunner().invoke(cli, ["search", "--resume", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_resume_may_raise_the_budget_but_not_change_the_search():
    saved = RunConfig(trials=5, searcher="evolution")
    assert resume_config(saved, {"trials": 9, "workers": 2}).trials == 9
    with pytest.raises(ConfigError, match="searcher: cannot change on resume"):
        resume_config(saved, {"searcher": "tpe"})
    assert resume_config(saved, {"searcher": "evolution"}).searcher == "evolution"  # same value is fine
    assert load_config(None, {"workers": 2}).worker_threads() >= 1


# ---- resume after real kills -----------------------------------------------------------------------------
def wait_rows(run: Path, n: int, proc: subprocess.Popen, timeout: float = 240, running: int = 0) -> None:
    """Until trials.parquet shows `n` finished trials and `running` running ones (the driver rewrites it as
    trials start and finish)."""
    end = time.time() + timeout
    while time.time() < end:
        if (run / "trials.parquet").exists():
            try:
                state = trials(run)["state"]
                if state.isin(["COMPLETE", "FAIL"]).sum() >= n and (state == "RUNNING").sum() >= running:
                    return
            except (OSError, ValueError):
                pass
        if proc.poll() is not None:
            raise AssertionError(f"search ended early (exit {proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting for trials")


def start(tiny: dict[str, Path], tmp_path: Path, run: Path, **extra) -> subprocess.Popen:
    cfg = write_config(tiny, tmp_path / "run.yaml", **extra)
    return subprocess.Popen([*BNECK, "search", "--config", str(cfg), "--out", str(run)], env=env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def resume(tmp_path: Path, run: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BNECK, "search", "--resume", str(run), *args], env=env(tmp_path),
                          capture_output=True, text=True, timeout=600)


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def interrupted_trials(run: Path) -> list:
    import optuna

    study = optuna.load_study(study_name=study_of(run), storage=f"sqlite:///{run / 'study.db'}")
    return [t for t in study.trials if t.user_attrs.get("interrupted")]


@pytest.mark.slow
def test_kill_9_of_the_driver_then_resume_runs_exactly_the_budget(tiny, tmp_path):
    run = tmp_path / "run"
    proc = start(tiny, tmp_path, run, trials=5, steps=46)
    wait_rows(run, 2, proc, running=1)
    os.kill(proc.pid, signal.SIGKILL)  # the driver only: its workers see their parent vanish
    proc.wait()
    before = trials(run)
    running = before[before["state"] == "RUNNING"]
    assert len(running) == 1  # killed mid-trial
    res = resume(tmp_path, run)
    assert res.returncode == 0, res.stderr
    frame = assert_exact_budget(run, 5)
    lost = interrupted_trials(run)
    assert [t.number for t in lost] == running["trial"].tolist()
    assert lost[0].user_attrs["arch"] in set(frame["arch"])  # the interrupted architecture ran again
    assert set(before.loc[before["state"] == "COMPLETE", "trial"]) <= set(frame["trial"])  # nothing redone
    assert json.loads((run / "run.json").read_text())["interrupted_reruns"] == 1


@pytest.mark.slow
def test_kill_9_of_a_worker_reruns_its_trial_and_two_workers_lose_nothing(tiny, tmp_path):
    run = tmp_path / "run"
    proc = start(tiny, tmp_path, run, trials=6, workers=2, threads=1, steps=46)
    wait_rows(run, 1, proc)
    workers = children(proc.pid)
    workers = [p for p in workers if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) >= 2
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    frame = assert_exact_budget(run, 6)
    assert len(interrupted_trials(run)) >= 1
    assert frame["worker"].nunique() >= 2  # both slots trained trials


@pytest.mark.slow
def test_ctrl_c_keeps_finished_trials_and_says_how_to_resume(tiny, tmp_path):
    run = tmp_path / "run"
    proc = start(tiny, tmp_path, run, trials=4, steps=46)
    wait_rows(run, 1, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"bneck search --resume {run}" in err and "Traceback" not in err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    done = trials(run)
    done = done[done["state"] == "COMPLETE"]
    assert len(done) >= 1
    res = resume(tmp_path, run, "--trials", "5")  # a resume may also raise the budget
    assert res.returncode == 0, res.stderr
    frame = assert_exact_budget(run, 5)
    assert set(done["trial"]) <= set(frame["trial"])


def test_two_runs_on_one_storage_never_share_a_study(tiny, tmp_path):
    """Each run gets its own study (saved in config.yaml); a new run naming an existing study is refused and
    leaves nothing behind; the first run's trials are untouched."""
    import optuna

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    runner = CliRunner()
    cfg = write_config(tiny, tmp_path / "run.yaml", trials=2, storage=url)
    for name in ("a", "b"):
        res = runner.invoke(cli, ["search", "--config", str(cfg), "--out", str(tmp_path / name)], env=env(tmp_path))
        assert res.exit_code == 0, res.output
    names = {study_of(tmp_path / "a"), study_of(tmp_path / "b")}
    assert len(names) == 2 and all(n.startswith(("a-", "b-")) for n in names)
    for name in ("a", "b"):  # each ran its own reference trial and its own budget
        study = optuna.load_study(study_name=study_of(tmp_path / name), storage=url)
        assert len(study.trials) == 2 and study.trials[0].user_attrs.get("reference")
    res = runner.invoke(cli, ["search", "--config", str(cfg), "--study", study_of(tmp_path / "a"),
                              "--out", str(tmp_path / "c")], env=env(tmp_path))
    assert res.exit_code == 2 and "already holds a study named" in res.output, res.output
    assert not (tmp_path / "c").exists()  # a failed start leaves no run dir
    assert len(optuna.load_study(study_name=study_of(tmp_path / "a"), storage=url).trials) == 2
    res = runner.invoke(cli, ["search", "--resume", str(tmp_path / "a"), "--trials", "3"], env=env(tmp_path))
    assert res.exit_code == 0, res.output
    assert len(optuna.load_study(study_name=study_of(tmp_path / "a"), storage=url).trials) == 3
    assert len(optuna.load_study(study_name=study_of(tmp_path / "b"), storage=url).trials) == 2


def test_a_failed_start_leaves_no_run_dir(tiny, tmp_path):
    cfg = write_config(tiny, tmp_path / "run.yaml", data=str(tmp_path / "no_such_folder"))
    res = CliRunner().invoke(cli, ["search", "--config", str(cfg), "--out", str(tmp_path / "r")], env=env(tmp_path))
    assert res.exit_code == 2 and "no_such_folder" in res.output, res.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("cut", ["empty", "half"])
def test_resume_refuses_an_empty_or_cut_short_saved_config(tiny, tmp_path, cut):
    """A config.yaml cut short (a kill or a full disk while an older version rewrote it) must not resume as the
    default search on the old study."""
    cfg = write_config(tiny, tmp_path / "run.yaml", trials=1)
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["search", "--config", str(cfg), "--out", str(run)], env=env(tmp_path))
    assert res.exit_code == 0, res.output
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text("" if cut == "empty" else text[:len(text) // 2].rsplit("\n", 1)[0] + "\n")
    res = CliRunner().invoke(cli, ["search", "--resume", str(run), "--trials", "2"], env=env(tmp_path))
    assert res.exit_code == 2, res.output
    assert ("is empty" if cut == "empty" else "is incomplete") in res.output and "Traceback" not in res.output
    assert len(trials(run)) == 1  # nothing ran


def test_storage_password_is_used_but_never_saved_or_printed():
    from runs.config import redact_url, without_password

    url = "postgresql+psycopg://bneck:s3cret@db.example:5432/nas?sslmode=require"
    assert "s3cret" not in redact_url(url) and "bneck:***@db.example:5432/nas" in redact_url(url)
    assert redact_url("sqlite:///x/study.db") == "sqlite:///x/study.db"
    saved = RunConfig(storage=url)
    assert "s3cret" not in saved.to_yaml()
    again = load_config_text(saved.to_yaml())
    assert resume_config(again, {}).storage == "postgresql+psycopg://bneck@db.example:5432/nas?sslmode=require"
    assert resume_config(again, {"storage": url}).storage == url  # the password given again on resume
    assert without_password(None) is None
    with pytest.raises(ConfigError, match="storage: cannot change on resume"):
        resume_config(again, {"storage": "postgresql+psycopg://bneck:s3cret@other/nas"})


def load_config_text(text: str) -> RunConfig:
    return RunConfig.model_validate(yaml.safe_load(text))


def test_an_architecture_that_keeps_killing_its_worker_fails_and_the_search_goes_on(tiny, tmp_path, monkeypatch):
    """OOM-like: the reference architecture's worker dies every time. It is re-run, then FAILED with the reason
    after MAX_WORKER_LOSSES deaths (not re-queued forever), and the other trials fill the budget."""
    import optuna

    from runs.engine import MAX_WORKER_LOSSES, Driver, claim_study, enqueue_reference, make_setup, open_study
    from runs.executors import WorkerLost
    from runs.rundir import RunDir
    from runs.worker import evaluate_task

    monkeypatch.setenv("BNECK_CACHE", str(tmp_path / "cache"))
    config = load_config(write_config(tiny, tmp_path / "run.yaml", trials=3, steps=1)).model_copy(
        update={"study": "oom"})
    setup = make_setup(config, show_progress=False)
    doomed = setup.space.preset.replace(num_classes=10, resolution=32).to_string()

    class Dying:
        slots = 1

        def __init__(self) -> None:
            self.tasks: dict[int, object] = {}

        def submit(self, task):
            self.tasks[id(task)] = task
            return id(task)

        def wait(self, handles, timeout):
            out = []
            for h in handles:
                task = self.tasks.pop(h)
                out.append((h, WorkerLost("its worker process died") if task.arch == doomed else evaluate_task(task)))
            return out

        def close(self) -> None:
            pass

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    claim_study(setup, run)
    study = open_study(setup, run)
    enqueue_reference(study, setup.space)
    frame = Driver(setup, run, study, Dying()).run_to_budget()
    trials_ = optuna.load_study(study_name="oom", storage=run.storage_url(None)).trials
    doomed_trials = [t for t in trials_ if t.user_attrs.get("arch") == doomed]
    assert len(doomed_trials) == MAX_WORKER_LOSSES
    assert [t.user_attrs.get("interrupted", False) for t in doomed_trials] == [True] * (MAX_WORKER_LOSSES - 1) + [False]
    assert "died 3 times" in doomed_trials[-1].user_attrs["fail_reason"]
    assert (frame["state"] == "COMPLETE").sum() == 2 and (frame["state"] == "FAIL").sum() == 1  # budget 3


@pytest.mark.slow
def test_confirmation_retrains_the_best_and_the_reference_and_resumes_after_kill_9(tiny, tmp_path):
    """After the budget, the top trial and the reference get 2 more seeds each; the best is the best mean. A
    kill -9 during confirmation loses no finished training: the resume trains only the missing ones."""
    run = tmp_path / "run"
    proc = start(tiny, tmp_path, run, trials=3, steps=120, confirm={"top": 1, "seeds": 2})
    path = run / "confirm.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if path.is_file() and any(r["extra"] for r in json.loads(path.read_text())["rows"]):
            break
        if proc.poll() is not None:
            pytest.fail(f"search ended before confirmation was under way: {proc.communicate()}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {(r["trial"], s): e for r in json.loads(path.read_text())["rows"] for s, e in r["extra"].items()}
    assert before and json.loads(path.read_text())["status"] == "running"
    res = resume(tmp_path, run)
    assert res.returncode == 0, res.stderr
    doc = json.loads(path.read_text())
    assert doc["status"] == "done" and len(doc["rows"]) == 2  # the top trial and the reference
    assert {r["reference"] for r in doc["rows"]} == {True, False}
    for r in doc["rows"]:
        assert len(r["top1_seeds"]) == 3 and r["top1_mean"] == pytest.approx(sum(r["top1_seeds"]) / 3)
        for s, e in r["extra"].items():
            if (r["trial"], s) in before:
                assert e == before[(r["trial"], s)]
    log = (run / "logs" / "driver.log").read_text()
    for r in doc["rows"]:
        for s in doc["seeds"]:  # every training ran once: none lost, none repeated
            assert log.count(f"confirm: trial {r['trial']} seed {s} ") == 1, log
    best = next(r for r in doc["rows"] if not r["reference"])
    assert doc["best_trial"] == best["trial"]
    assert json.loads((run / "run.json").read_text())["best_trial"] == best["trial"]
    report = CliRunner().invoke(cli, ["report", str(run)], env=env(tmp_path))
    assert report.exit_code == 0, report.output
    assert "## Confirmation" in (run / "report.md").read_text()


def test_a_second_driver_on_the_same_run_is_refused(tiny, tmp_path):
    from runs.rundir import RunDir, RunError

    a = RunDir(tmp_path / "run")
    a.lock()
    try:
        with pytest.raises(RunError, match="being driven by another"):
            RunDir(tmp_path / "run").lock()
    finally:
        a.unlock()


def test_same_seed_same_search(tiny, tmp_path):
    archs = []
    for name in ("a", "b"):
        cfg = write_config(tiny, tmp_path / f"{name}.yaml", trials=4, searcher="evolution", steps=5,
                           searcher_options={"population": 2, "sample_size": 2})
        res = CliRunner().invoke(cli, ["search", "--config", str(cfg), "--out", str(tmp_path / name)],
                                 env=env(tmp_path))
        assert res.exit_code == 0, res.output
        archs.append(trials(tmp_path / name)[["arch", "accuracy"]])
    pd.testing.assert_frame_equal(archs[0], archs[1])


# ---- storage: a real PostgreSQL server ------------------------------------------------------------------
@pytest.mark.slow
def test_two_worker_search_on_postgresql_loses_and_duplicates_nothing(tiny, tmp_path, postgres_url):
    import optuna

    secret_url = postgres_url.replace("://bneck@", "://bneck:s3cret@")  # trust auth: the server ignores it
    assert secret_url != postgres_url
    cfg = write_config(tiny, tmp_path / "run.yaml", trials=5, workers=2, threads=1, storage=secret_url)
    res = subprocess.run([*BNECK, "search", "--config", str(cfg), "--out", str(tmp_path / "run")],
                         env=env(tmp_path), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    res2 = resume(tmp_path, tmp_path / "run", "--trials", "6")  # the saved URL has no password: libpq's turn
    assert res2.returncode == 0, res2.stderr
    for text in (res.stdout, res.stderr, res2.stdout, res2.stderr,
                 *(p.read_bytes().decode(errors="replace") for p in (tmp_path / "run").rglob("*") if p.is_file())):
        assert "s3cret" not in text  # the storage password is never printed or written
    frame = assert_exact_budget(tmp_path / "run", 6)
    assert not (tmp_path / "run" / "study.db").exists()  # the study lives in PostgreSQL
    study = optuna.load_study(study_name=study_of(tmp_path / "run"), storage=postgres_url)
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert sorted(frame["trial"]) == list(range(6))
    assert len({t.user_attrs["arch"] for t in study.trials}) == len(frame["arch"].unique())


# ---- Ray: a real cluster, in a network namespace with only loopback ---------------------------------------
def _can_unshare() -> str | None:
    try:
        res = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare unavailable ({exc})"
    if res.returncode != 0:
        return f"cannot create a network namespace (unshare -n: {res.stderr.decode().strip()[:80]}); needs root"
    return None


@pytest.mark.slow
def test_ray_search_resumes_after_kill_9_of_the_driver(tiny, tmp_path):
    reason = _can_unshare()
    if reason:
        unavailable(f"Ray tests run only inside a loopback-only network namespace: {reason}")
    run = tmp_path / "run"
    cfg = write_config(tiny, tmp_path / "run.yaml", trials=5, workers=2, threads=1, steps=46)
    home = tmp_path / "home"  # as after an earlier private Ray of Ray's own: `ray start --head` then needs it
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("0f" * 32)
    res = subprocess.run(["unshare", "-n", sys.executable, str(Path(__file__).with_name("ray_scenario.py")),
                          str(cfg), str(run), str(home)], env=env(tmp_path), capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    frame = assert_exact_budget(run, 5)
    lost = interrupted_trials(run)
    assert len(lost) >= 1
    assert lost[0].user_attrs["arch"] in set(frame["arch"])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["backend"] == "ray" and saved["address"] == "127.0.0.1:6391"


def test_the_example_configs_are_valid():
    from runs.pipeline import load_pipeline, main_job

    examples = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        pipeline = load_pipeline(path)
        assert load_config(path).model_dump() == pipeline.run_config().model_dump()  # `bneck search` reads it too
    assert load_pipeline(None).trials == main_job()["trials"]


def test_the_main_job_searches_fashion_where_it_is_installed_and_digits_where_not(tmp_path, monkeypatch):
    from runs.pipeline import load_pipeline

    if not fashion_installed():
        unavailable("needs builtin:fashion (make fashion: apt-get install dataset-fashion-mnist)")
    assert load_pipeline(None).data == "builtin:fashion:10000"
    monkeypatch.setenv("BNECK_FASHION_DIR", str(tmp_path))  # an empty folder: not installed
    assert load_pipeline(None).data == "builtin:digits"
    taken = tmp_path / "taken"
    taken.write_text("a file, not a run dir")  # so the run stops right after the choice is announced
    res = CliRunner().invoke(cli, ["run", "--out", str(taken)])
    assert "builtin:fashion is not installed" in res.output and "make fashion" in res.output
    assert res.exit_code == 2 and taken.read_text() == "a file, not a run dir"


def test_recover_requeues_only_trials_whose_architecture_was_complete():
    import optuna

    from runs.engine import recover

    study = optuna.create_study(direction="maximize")
    whole = study.ask()
    whole.suggest_int("a", 0, 3)
    whole.set_user_attr("arch", "r32_n10,...")
    partial = study.ask()  # stopped inside SearchSpace.suggest: no arch yet, params incomplete
    partial.suggest_int("a", 0, 3)
    assert recover(study) == 2
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "FAIL", "WAITING"]  # one re-queued copy: the complete one
    assert study.trials[2].params == {} and study.trials[2].system_attrs["fixed_params"] == whole.params
    assert all(t.user_attrs.get("interrupted") for t in study.trials[:2])


# ---- evaluator: supernet ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_supernet(tiny, tmp_path_factory) -> Path:
    """A supernet of the tiny space trained a few steps on digits (split seed 0), as `bneck supernet train` does."""
    from evaluators import Recipe, load_data
    from evaluators.supernet import SupernetRecipe, train_supernet

    out = tmp_path_factory.mktemp("supernet")
    data = load_data("builtin:digits", resolution=32, seed=0)
    space = ss.load_space(str(tiny["space"]), 1.0, data.num_classes, 32)
    train_supernet(space, data, SupernetRecipe(recipe=Recipe(steps=20, batch_size=32, threads=1), rule="spos"),
                   out_dir=out, seed=0)
    return out


def test_a_search_scores_on_the_supernet_and_confirms_standalone(tiny, tiny_supernet, tmp_path):
    cfg = write_config(tiny, tmp_path / "run.yaml", trials=6, evaluator="supernet", keep_weights=1,
                       supernet={"checkpoint": str(tiny_supernet), "calib_images": 64},
                       confirm={"top": 1, "seeds": 1})
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["search", "--config", str(cfg), "--out", str(run)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    frame = assert_exact_budget(run, 6)
    storage = f"sqlite:///{run / 'study.db'}"
    import optuna

    study = optuna.load_study(study_name=study_of(run), storage=storage)
    assert all(t.user_attrs.get("evaluator") == "supernet" for t in study.trials)  # scored, not trained
    assert all("train_s" not in t.user_attrs for t in study.trials)
    doc = json.loads((run / "confirm.json").read_text())
    assert doc["seeds"] == [0, 1000]  # standalone trainings: the run's seed first
    for row in doc["rows"]:
        assert row["search_score_counts"] is False and len(row["top1_seeds"]) == 2
        assert row["top1_seeds"] == [row["extra"]["0"]["top1"], row["extra"]["1000"]["top1"]]  # no supernet score
    best = int(frame.sort_values("reward", ascending=False)["trial"].iloc[0])
    weights = run / "weights" / f"trial_{best}.pt"  # the extracted, recalibrated subnet: exportable as is
    import torch

    model = ss.build_model(ss.Arch.parse(frame.set_index("trial").loc[best, "arch"]))
    model.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    res = CliRunner().invoke(cli, ["report", str(run)])
    assert res.exit_code == 0, res.output
    report = (run / "report.md").read_text()
    assert "| evaluator | supernet" in report and "trained standalone 2 times" in report


def test_a_supernet_of_another_split_or_space_is_refused(tiny, tiny_supernet, tmp_path):
    cfg = write_config(tiny, tmp_path / "run.yaml", evaluator="supernet", seed=1,
                       supernet={"checkpoint": str(tiny_supernet)})
    res = CliRunner().invoke(cli, ["search", "--config", str(cfg), "--out", str(tmp_path / "r1")])
    assert res.exit_code == 2 and "split seed 0" in res.output and "overlap its training set" in "".join(
        res.output.split("\n")), res.output
    cfg = write_config(tiny, tmp_path / "run2.yaml", evaluator="supernet", space="mobilenet_v3_small_space",
                       table=None, supernet={"checkpoint": str(tiny_supernet)})
    res = CliRunner().invoke(cli, ["search", "--config", str(cfg), "--no-build-table", "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "is a supernet of tiny_space" in res.output, res.output
    with pytest.raises(ConfigError, match="evaluator supernet needs supernet"):
        load_config(None, {"evaluator": "supernet"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(None, {"evaluator": "supernet", "supernet": {"checkpoint": str(tmp_path / "nope")}})
