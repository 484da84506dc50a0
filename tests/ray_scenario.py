"""Run inside a private network namespace (only loopback): a real Ray head node, a search on it, a kill -9 of
the driver, and a resume on the same cluster. Used by tests/test_runs.py:

    unshare -n python tests/ray_scenario.py CONFIG RUN_DIR HOME_DIR

Ray binds to the machine's non-loopback address when it has one; in this namespace it has none, so all
traffic stays on 127.0.0.1. HOME is HOME_DIR (the test makes it), so the machine's own ~/.ray never matters;
the test puts a token file there, as an earlier private Ray of Ray's own would have, which makes
`ray start --head` require it: the driver must join with it. First leg: a private instance (`RayExecutor`
without address) starts and stops without writing ~/.ray/auth_token and leaves no temp dir behind.
Only the Ray processes this script started are stopped (`ray stop --force` would kill every Ray on the host).
Exit 0 when every leg passed; the test then checks the run dir.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

BIN = Path(sys.executable).parent


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, **kw)


def _processes_of(marker: str) -> list[int]:
    """Processes whose command line names `marker` (the head's temp dir), and their descendants."""
    parents: dict[int, int] = {}
    hits: set[int] = set()
    for stat in glob.glob("/proc/[0-9]*/stat"):
        pid = int(stat.split("/")[2])
        try:
            parents[pid] = int(Path(stat).read_text().rsplit(")", 1)[1].split()[1])
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                hits.add(pid)
        except (OSError, IndexError, ValueError):
            continue
    grown = True
    while grown:
        more = {p for p, pp in parents.items() if pp in hits} - hits
        hits |= more
        grown = bool(more)
    return sorted(hits - {os.getpid()})


def stop_own_ray(marker: str, grace_s: float = 15.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _processes_of(marker)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        end = time.time() + grace_s
        while time.time() < end and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)


def private_leg(home: Path) -> str | None:
    from runs.executors import RayExecutor

    token_before = (home / ".ray" / "auth_token").read_text()

    before = set(glob.glob("/tmp/bneck-ray-*"))
    ex = RayExecutor(1, 1, None)
    try:
        ref = ex.submit(("bogus",))  # any task: run_task refuses it, which proves a worker ran it
        got = ex.wait([ref], timeout=120)
        if not got:
            return "private Ray ran no task within 120 s"
    finally:
        ex.close()
    token = home / ".ray" / "auth_token"
    if not token.is_file() or token.read_text() != token_before:
        return "the private Ray instance wrote ~/.ray/auth_token"
    left = set(glob.glob("/tmp/bneck-ray-*")) - before
    if left:
        return f"the private Ray instance left its temp dir behind: {sorted(left)}"
    if any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")):
        return "the private Ray instance left RAY_AUTH_* set in the driver's environment"
    return None


def main() -> int:
    config, run, home = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    sh("ip", "link", "set", "lo", "up")
    os.environ["HOME"] = str(home)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        os.environ.pop(k, None)
    problem = private_leg(home)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    env = dict(os.environ)
    temp = tempfile.mkdtemp(prefix="bneck-ray-head-", dir="/tmp")
    port = "6391"
    try:
        sh(str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2", "--disable-usage-stats",
           f"--temp-dir={temp}", "--include-dashboard=false", env=env, timeout=120)
        address = f"127.0.0.1:{port}"
        search = [sys.executable, "-m", "runs.cli", "search"]
        proc = subprocess.Popen([*search, "--config", str(config), "--out", str(run), "--backend", "ray",
                                 "--address", address], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        end = time.time() + 300
        while time.time() < end:  # one trial done and another one running: kill the driver mid-search
            try:
                state = pd.read_parquet(run / "trials.parquet")["state"]
                if (state == "COMPLETE").sum() >= 1 and (state == "RUNNING").sum() >= 1:
                    break
            except (OSError, ValueError):
                pass
            if proc.poll() is not None:
                print("first leg ended early:", proc.returncode, proc.stderr.read(), file=sys.stderr)
                return 1
            time.sleep(0.2)
        else:
            print("timed out waiting for a trial", file=sys.stderr)
            return 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        res = subprocess.run([*search, "--resume", str(run), "--address", address], env=env, capture_output=True,
                             text=True, timeout=600)
        if res.returncode != 0:
            print("resume failed:", res.returncode, res.stderr, file=sys.stderr)
            return 1
        return 0
    finally:
        stop_own_ray(temp)
        subprocess.run(["rm", "-rf", temp], check=False)


if __name__ == "__main__":
    sys.exit(main())
