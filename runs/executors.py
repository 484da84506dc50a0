"""Where trials are evaluated: K local worker processes, or Ray tasks on a cluster. Same narrow interface.

A task is a search trial (`TrialTask`) or a NetAdapt fine-tune (`FineTuneJob`); `runs.worker.run_task` dispatches.

The driver owns the study (ask/tell) and the budget; executors only train. A lost worker (killed process,
dead node) is reported as `WorkerLost` so the driver re-runs that trial; it never takes the search down.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import signal
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from runs.worker import TrialOutcome, init_worker, run_task


class WorkerLost(RuntimeError):
    """The process (or node) evaluating a trial died; the trial must run again."""


class ExecutorError(RuntimeError):
    """The backend cannot start (e.g. no Ray cluster at the address); the message says what to do."""


class Executor(Protocol):
    slots: int

    def submit(self, task: Any) -> Any: ...

    def wait(self, handles: Iterable[Any], timeout: float) -> list[tuple[Any, TrialOutcome | BaseException]]: ...

    def close(self) -> None: ...


def _exit_with_parent(parent: int) -> None:
    """A worker whose driver was killed (kill -9 leaves no time to stop the pool) exits instead of lingering
    as an orphan holding a data set and a model in memory."""
    import time

    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _local_worker_init(threads: int) -> None:
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it re-queues the running trials
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    init_worker(threads)


class LocalExecutor:
    """K spawned worker processes (fresh interpreters: no torch state shared with the driver)."""

    def __init__(self, workers: int, threads: int) -> None:
        self.slots, self.threads = workers, threads
        self._pool: cf.ProcessPoolExecutor | None = None

    def _ensure(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.slots, mp_context=mp.get_context("spawn"),
                                                initializer=_local_worker_init, initargs=(self.threads,))
        return self._pool

    def submit(self, task: Any) -> cf.Future[Any]:
        try:
            return self._ensure().submit(run_task, task)
        except cf.process.BrokenProcessPool:
            self._restart()
            return self._ensure().submit(run_task, task)

    def wait(self, handles: Iterable[Any], timeout: float) -> list[tuple[Any, TrialOutcome | BaseException]]:
        handles = list(handles)
        done, pending = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        out: list[tuple[Any, TrialOutcome | BaseException]] = []
        broken = False
        for fut in done:
            try:
                out.append((fut, fut.result()))
            except cf.process.BrokenProcessPool:
                broken = True
                out.append((fut, WorkerLost("its worker process died")))
            except Exception as exc:
                out.append((fut, exc))
        if broken:
            # a dead process breaks the whole pool: the other running trials are lost with it (re-queued by the
            # driver); a fresh pool takes the next submissions
            out.extend((fut, WorkerLost("another worker process died and took the pool down")) for fut in pending)
            self._restart()
        return out

    def _restart(self) -> None:
        self._terminate()
        self._pool = None

    def _terminate(self) -> None:
        if self._pool is None:
            return
        procs = list(getattr(self._pool, "_processes", {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)

    def close(self) -> None:
        self._terminate()
        self._pool = None


_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")


def _token_available() -> bool:
    """A Ray token this user has: `RAY_AUTH_TOKEN`, the file `RAY_AUTH_TOKEN_PATH` names, or ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def ray_auth_env(address: str | None, private_dir: str | None) -> dict[str, str]:
    """The `RAY_AUTH_*` variables a driver sets before `ray.init` (an explicit `RAY_AUTH_MODE` always wins).

    - Joining a cluster (`address`): token mode whenever this user has a token. `ray start --head` turns token
      auth on by itself when ~/.ray/auth_token exists, but a driver given an explicit address does not, and is
      then refused (`InvalidAuthToken`); a cluster without auth accepts a token-mode driver too (both checked
      on Ray 2.60).
    - A private instance (no address): token mode with a fresh random token in a 0600 file inside its own temp
      dir, removed with it. Ray's servers listen on every interface whatever `--node-ip-address` says (Ray 2.60),
      so the token is what keeps other hosts from running code on it; and ~/.ray/auth_token is never written
      (Ray's default for a local `ray.init()` is to create it, which then breaks joining other clusters).
    """
    if "RAY_AUTH_MODE" in os.environ:
        return {}
    if address is not None:
        return {"RAY_AUTH_MODE": "token"} if _token_available() else {}
    env = {"RAY_AUTH_MODE": "token"}
    if not os.environ.get("RAY_AUTH_TOKEN") and private_dir is not None:
        import secrets

        path = os.path.join(private_dir, "auth_token")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        env["RAY_AUTH_TOKEN_PATH"] = path
    return env


class RaySession:
    """A connection to Ray for this process: a private local instance on loopback (token-protected, see
    `ray_auth_env`; its temp dir removed on `close`) with `num_cpus`, or the cluster at `address`.
    `RayExecutor` (trials) and `runs.supernet_ray` (Ray Train) connect through it."""

    def __init__(self, address: str | None, num_cpus: int) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self._tmp: str | None = tempfile.mkdtemp(prefix="bneck-ray-", dir="/tmp") if address is None else None
        self._saved_env = {k: os.environ.get(k) for k in _AUTH_VARS}
        os.environ.update(ray_auth_env(address, self._tmp))
        import ray
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")  # Ray caches RAY_AUTH_MODE when first imported: make it see the variables above
        AuthenticationTokenLoader.instance().reset_cache()
        self.ray = ray
        kw: dict[str, Any] = {"log_to_driver": False, "configure_logging": False, "include_dashboard": False}
        try:
            if address is None:
                ray.init(num_cpus=num_cpus, _temp_dir=self._tmp, _node_ip_address="127.0.0.1", **kw)
            else:
                ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            self._cleanup()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = f"the Ray cluster at {address}" if address else "a private Ray instance"
            raise ExecutorError(f"address: cannot join {where}: {first}") from None

    def _cleanup(self) -> None:
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if self._tmp is not None:
            import shutil

            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def close(self) -> None:
        self.ray.shutdown()
        self._cleanup()


class RayExecutor:
    """Ray tasks, one per trial, each reserving `threads` CPUs (or one GPU with device cuda).

    Ray retries a task whose worker died (`max_retries`); if it still fails, the driver re-queues the trial.
    With no address a private local Ray instance starts (`RaySession`) and stops with the run."""

    def __init__(self, workers: int, threads: int, address: str | None, device: str = "cpu") -> None:
        self._session = RaySession(address, workers * threads)
        self.slots, self.threads, self._ray = workers, threads, self._session.ray
        gpus = 1 if device.startswith("cuda") else 0
        self._remote = self._ray.remote(run_task).options(num_cpus=threads, num_gpus=gpus, max_retries=2)

    def submit(self, task: Any) -> Any:
        return self._remote.remote(task)

    def wait(self, handles: Iterable[Any], timeout: float) -> list[tuple[Any, TrialOutcome | BaseException]]:
        ray = self._ray
        refs = list(handles)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        out: list[tuple[Any, TrialOutcome | BaseException]] = []
        for ref in ready:
            try:
                out.append((ref, ray.get(ref)))
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                    ray.exceptions.OwnerDiedError, ray.exceptions.ObjectLostError) as exc:
                out.append((ref, WorkerLost(f"Ray worker lost ({type(exc).__name__})")))
            except ray.exceptions.OutOfMemoryError:  # Ray's memory monitor killed it: the driver caps re-runs
                out.append((ref, WorkerLost("Ray killed the worker: out of memory")))
            except ray.exceptions.RayTaskError as exc:
                out.append((ref, exc.as_instanceof_cause() if hasattr(exc, "as_instanceof_cause") else exc))
            except ray.exceptions.RayError as exc:  # e.g. TaskUnschedulableError: this trial fails, with the reason
                out.append((ref, RuntimeError(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}")))
        return out

    def close(self) -> None:
        self._session.close()


def make_executor(backend: str, workers: int, threads: int, address: str | None = None,
                  device: str = "cpu") -> Executor:
    if backend == "ray":
        return RayExecutor(workers, threads, address, device)
    return LocalExecutor(workers, threads)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise KeyboardInterrupt in the driver for the duration, so it stops cleanly (saving or
    re-queueing what is running) even when started with SIGINT ignored (background jobs of non-interactive
    shells inherit that); the previous handlers come back afterwards."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
