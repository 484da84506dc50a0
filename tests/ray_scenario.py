"""Run inside a private network namespace (only loopback): a real Ray head node, a search on it, a kill -9 of
the driver, and a resume on the same cluster. Used by tests/test_ray.py:

    unshare -n python tests/ray_scenario.py CONFIG RUN_DIR

Ray binds to the machine's non-loopback address when it has one; in this namespace it has none, so all
traffic stays on 127.0.0.1. Exit 0 when both legs finished; the test then checks the run dir.
"""

from __future__ import annotations

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


def main() -> int:
    config, run = Path(sys.argv[1]), Path(sys.argv[2])
    sh("ip", "link", "set", "lo", "up")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    temp = tempfile.mkdtemp(prefix="bneck-ray-", dir="/tmp")
    port = "6391"
    sh(str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2", "--disable-usage-stats",
       f"--temp-dir={temp}", "--include-dashboard=false", env=env, timeout=120)
    address = f"127.0.0.1:{port}"
    search = [sys.executable, "-m", "runs.cli", "search"]
    try:
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
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, env=env, timeout=120)


if __name__ == "__main__":
    sys.exit(main())
