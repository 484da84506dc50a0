"""A throwaway PostgreSQL server for tests: Debian's server binaries, a temp dir, a Unix socket and no TCP at all.

Fixtures (made visible to every test by tests/conftest.py):

- ``postgres_server`` (session scope): starts one server the first time a test asks for it and stops it
  (``pg_ctl -m immediate stop``) and removes its temp dir at the end of the session, even after failures.
- ``postgres_url`` (function scope): a fresh, empty database on that server for each test (``createdb`` costs
  ~0.1 s, a server start ~1 s), as a SQLAlchemy URL ``postgresql+psycopg://bneck@/bneck_test_N?host=SOCKDIR``
  that ``optuna.storages.RDBStorage`` / ``optuna.create_study(storage=url)`` accept as is.

Tests skip (fail under CI=true, see tests/requires.py) when no ``/usr/lib/postgresql/*/bin/initdb`` exists
(``make postgres`` installs Debian's package), or
when running as root with no unprivileged ``postgres`` user to run the server as (initdb and postgres refuse root).

The top-level ``optuna_worker`` runs trials in a ``multiprocessing`` spawn child (workers must be importable).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from requires import unavailable

PG_ROOT = Path("/usr/lib/postgresql")  # Debian's layout: /usr/lib/postgresql/<major>/bin
SERVER_USER = "postgres"  # the system user Debian's package creates
DB_USER = "bneck"
NOT_FOUND = "PostgreSQL server binaries not found (Debian package postgresql; `make postgres` installs it)"
TOOLS = ("initdb", "pg_ctl", "postgres", "createdb")


def find_bin_dir(root: Path | None = None) -> Path | None:
    """The highest-version ``<root>/<version>/bin`` holding every tool in TOOLS, or None."""
    root = PG_ROOT if root is None else root
    found = []
    for bin_dir in root.glob("*/bin"):
        version = bin_dir.parent.name
        if all(os.access(bin_dir / tool, os.X_OK) for tool in TOOLS):
            key = tuple(int(part) for part in re.findall(r"\d+", version))
            found.append((key, version, bin_dir))
    return max(found)[2] if found else None


def _as_server_user() -> list[str] | None:
    """Command prefix that runs the server tools unprivileged: [] when not root, None when there is no way."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        return None
    if shutil.which("runuser"):
        return ["runuser", "-u", SERVER_USER, "--"]
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--init-groups", "--"]
    return None


def _clean_env() -> dict[str, str]:
    """The environment without PG* variables (PGHOST, PGPORT, PGDATA... would redirect the tools) and in C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path  # the temp dir; also the socket dir (kept short: a Unix socket path has at most 107 bytes)
    data: Path
    log: Path
    prefix: list[str]
    _names: Iterator[int]

    @property
    def socket_dir(self) -> Path:
        return self.root

    def run(self, tool: str, *args: str, as_server: bool = False) -> subprocess.CompletedProcess:
        cmd = [*(self.prefix if as_server else []), str(self.bin_dir / tool), *args]
        proc = subprocess.run(
            cmd, cwd=self.root, env=_clean_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}{log}")
        return proc

    def create_database(self) -> str:
        """A new empty database owned by DB_USER; returns its SQLAlchemy URL."""
        name = f"bneck_test_{next(self._names)}"
        self.run("createdb", "-h", str(self.socket_dir), "-U", DB_USER, name)
        return self.url(name)

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{DB_USER}@/{dbname}?host={self.socket_dir}"

    def stop(self) -> None:
        """Stop now (immediate mode); if pg_ctl fails, kill the postmaster it left, by the pid in postmaster.pid."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", as_server=True)
        except RuntimeError:
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


@contextlib.contextmanager
def postgres_server_at(bin_dir: Path, prefix: list[str]) -> Iterator[PostgresServer]:
    """initdb + start a server in a new temp dir under /tmp; stop it and remove the dir on exit, whatever happens."""
    root = Path(tempfile.mkdtemp(prefix="bneck-pg-", dir="/tmp"))
    server = PostgresServer(bin_dir, root, root / "data", root / "server.log", prefix, itertools.count(1))
    try:
        if prefix:  # the server runs as SERVER_USER: it must own the temp dir
            user = pwd.getpwnam(SERVER_USER)
            os.chown(root, user.pw_uid, user.pw_gid)
        initdb = ["-D", str(server.data), "-A", "trust", "-U", DB_USER, "-E", "UTF8", "--locale=C", "--no-sync"]
        server.run("initdb", *initdb, as_server=True)
        # listen_addresses='' : Unix socket only, no TCP port is opened at all.
        options = f"-k {server.socket_dir} -c listen_addresses='' -c fsync=off -c synchronous_commit=off"
        start = ["-w", "-t", "60", "-D", str(server.data), "-l", str(server.log), "-o", options, "start"]
        server.run("pg_ctl", *start, as_server=True)
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        unavailable(NOT_FOUND)
    prefix = _as_server_user()
    if prefix is None:
        unavailable(
            f"running as root and no way to run PostgreSQL unprivileged (needs a '{SERVER_USER}' user and runuser "
            "or setpriv); initdb and postgres refuse to run as root"
        )
    with postgres_server_at(bin_dir, prefix) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy URL of a fresh empty database: postgresql+psycopg://bneck@/bneck_test_N?host=/tmp/bneck-pg-..."""
    return postgres_server.create_database()


def _objective(trial) -> float:
    x = trial.suggest_float("x", -1.0, 1.0)
    return x * x


def optuna_worker(url: str, study_name: str, n_trials: int) -> None:
    """Run n_trials of a trivial objective on a shared study (top level so that spawn children can import it)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=url, study_name=study_name, load_if_exists=True)
    study.optimize(_objective, n_trials=n_trials)
