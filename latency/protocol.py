"""The one latency measurement protocol: onnxruntime sessions, warm-up, timed runs, median and spread.

This file is standalone on purpose (stdlib + numpy + onnxruntime only): the device kit ships it verbatim as
its measuring script, so a table built on a phone-class board and one built by `bneck latency build` are
measured by the same code. Run it as a script inside a kit folder:

    python measure.py [--threads 1] [--provider CPUExecutionProvider] [--out results.csv]

Host drift: every `REFERENCE_EVERY` entries the kit's reference network is timed again; the importer
normalizes every entry to the reference's latency, so a table does not depend on when each row was timed.
Interrupt at any time (Ctrl-C or kill -9): rerunning resumes after the last row written.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOL_NAME = "bneck-ort/1"
REFERENCE_EVERY = 100
CSV_FIELDS = ("key", "seq", "median_us", "p10_us", "p90_us", "runs", "attempts", "wall_time")
CALIBRATION_FIELDS = ("round", "key", "whole_us", "reference_us", "wall_time")


@dataclass(frozen=True)
class Protocol:
    """Timing parameters; stored in every table so results can be compared like for like."""

    name: str = PROTOCOL_NAME
    warmup_runs: int = 5
    warmup_s: float = 0.005
    min_runs: int = 15
    min_time_s: float = 0.02
    max_runs: int = 2000
    max_rel_spread: float = 0.15  # (p90 - p10) / median above this: measure again
    attempts: int = 3
    calibration_rounds: int = 3  # rounds of whole calibration nets, each timing next to the reference


@dataclass(frozen=True)
class Timing:
    median_us: float
    p10_us: float
    p90_us: float
    runs: int
    attempts: int = 1

    @property
    def rel_spread(self) -> float:
        return (self.p90_us - self.p10_us) / self.median_us if self.median_us > 0 else float("inf")


def session(model: str | bytes | os.PathLike[str], threads: int = 1, provider: str = "CPUExecutionProvider") -> Any:
    """An onnxruntime session with the protocol's options (sequential, fixed threads, all optimizations)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    src = os.fspath(model) if not isinstance(model, bytes) else model
    return ort.InferenceSession(src, opts, providers=[provider])


def feeds_for(sess: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the session's (static) input shapes."""
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([int(d) for d in i.shape]).astype(np.float32) for i in sess.get_inputs()}


def _time_once(sess: Any, feeds: dict[str, np.ndarray], p: Protocol) -> Timing:
    run = sess.run
    start = time.perf_counter()
    n = 0
    while n < p.warmup_runs or time.perf_counter() - start < p.warmup_s:
        run(None, feeds)
        n += 1
    samples: list[int] = []
    clock = time.perf_counter_ns
    begin = clock()
    min_ns = p.min_time_s * 1e9
    while len(samples) < p.max_runs and (len(samples) < p.min_runs or clock() - begin < min_ns):
        t0 = clock()
        run(None, feeds)
        samples.append(clock() - t0)
    arr = np.asarray(samples, dtype=np.float64) / 1e3
    p10, med, p90 = np.percentile(arr, [10, 50, 90])
    return Timing(float(med), float(p10), float(p90), len(samples))


def time_session(sess: Any, feeds: dict[str, np.ndarray] | None = None, protocol: Protocol | None = None) -> Timing:
    """Median latency of one run (µs) with p10/p90; re-measured while the spread is too wide."""
    p = protocol or Protocol()
    feeds = feeds if feeds is not None else feeds_for(sess)
    best = _time_once(sess, feeds, p)
    attempt = 1
    while best.rel_spread > p.max_rel_spread and attempt < p.attempts:
        attempt += 1
        t = _time_once(sess, feeds, p)
        if t.rel_spread < best.rel_spread:
            best = t
    return replace(best, attempts=attempt)


def measure(model: str | bytes | os.PathLike[str], threads: int = 1, provider: str = "CPUExecutionProvider",
            protocol: Protocol | None = None) -> Timing:
    """Time one ONNX model (path or bytes) with the protocol."""
    sess = session(model, threads, provider)
    return time_session(sess, feeds_for(sess), protocol)


def fingerprint(threads: int, provider: str) -> dict[str, Any]:
    """What identifies the device and runtime a table was measured on."""
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "os": platform.system(),
            "os_release": platform.release(), "onnxruntime": ort.__version__, "provider": provider,
            "threads": threads}


# ---- running a kit -------------------------------------------------------------------------------------
def done_rows(path: Path) -> list[dict[str, str]]:
    """Rows already in a results CSV; a torn last line (kill -9 mid-write) is dropped."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    rows = list(csv.DictReader(lines))
    return [r for r in rows if r.get("wall_time")]


def run_kit(kit_dir: str | os.PathLike[str], out_csv: str | os.PathLike[str] | None = None, threads: int = 1,
            provider: str = "CPUExecutionProvider", progress: Any = None) -> Path:
    """Measure every graph of a kit's manifest into a CSV, resuming after rows already there.

    The reference network is measured first, every REFERENCE_EVERY entries and last, so the importer can
    undo host drift. `progress(done, total, key)` is called after each row when given.
    """
    kit = Path(kit_dir)
    manifest = json.loads((kit / "manifest.json").read_text())
    out = Path(out_csv) if out_csv else kit / "results.csv"
    protocol = Protocol(**manifest.get("protocol", {}))
    rows = done_rows(out)
    if out.exists():  # rewrite without a torn tail so appends start on a clean line
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS)
            w.writeheader()
            w.writerows({k: r[k] for k in CSV_FIELDS} for r in rows)
    done = {r["key"] for r in rows if r["key"] != "reference"}
    seq = len(rows)
    entries = [e for e in manifest["entries"] if e["kind"] == "layer"]
    todo = [e for e in entries if e["key"] not in done]
    ref = next(e for e in manifest["entries"] if e["key"] == "reference")
    ref_sess = session(kit / ref["file"], threads, provider)
    ref_feeds = feeds_for(ref_sess)
    meta_path = out.with_suffix(".device.json")
    meta_path.write_text(json.dumps({"fingerprint": fingerprint(threads, provider), "protocol": asdict(protocol)},
                                    indent=2))
    new_file = not out.exists()
    with open(out, "a", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        if new_file:
            writer.writeheader()

        def emit(key: str, t: Timing) -> None:
            nonlocal seq
            writer.writerow({"key": key, "seq": seq, "median_us": f"{t.median_us:.3f}", "p10_us": f"{t.p10_us:.3f}",
                             "p90_us": f"{t.p90_us:.3f}", "runs": t.runs, "attempts": t.attempts,
                             "wall_time": f"{time.time():.3f}"})
            f.flush()
            os.fsync(f.fileno())
            seq += 1

        if todo:
            emit("reference", time_session(ref_sess, ref_feeds, protocol))
        for i, entry in enumerate(todo):
            sess = session(kit / entry["file"], threads, provider)
            emit(entry["key"], time_session(sess, feeds_for(sess), protocol))
            del sess
            if (i + 1) % REFERENCE_EVERY == 0 or i + 1 == len(todo):
                emit("reference", time_session(ref_sess, ref_feeds, protocol))
            if progress is not None:
                progress(len(entries) - len(todo) + i + 1, len(entries), entry["key"])
    calibrate_kit(kit, out.with_name("calibration.csv"), threads, provider, protocol, progress)
    return out


def time_interleaved(sessions: list[Any], reference: Any, rounds: int, protocol: Protocol, seed: int = 0,
                     on_timing: Any = None) -> None:
    """Time warm sessions against the reference, A R B R C R ..., in `rounds` shuffled rounds.

    This is how whole networks are measured everywhere a table is fitted or checked (calibration,
    validation): each timing has a reference timing next to it, so host drift divides out.
    `on_timing(round, index, median_us, reference_us)` receives every pair.
    """
    feeds = [feeds_for(s) for s in sessions]
    ref_feeds = feeds_for(reference)
    rng = np.random.default_rng(seed)
    for rnd in range(rounds):
        for i in rng.permutation(len(sessions)):
            t = time_session(sessions[int(i)], feeds[int(i)], protocol).median_us
            r = time_session(reference, ref_feeds, protocol).median_us
            on_timing(rnd, int(i), t, r)


def calibrate_kit(kit: Path, out: Path, threads: int, provider: str, protocol: Protocol,
                  progress: Any = None) -> Path:
    """Time the kit's calibration networks whole, interleaved with the reference (`time_interleaved`).

    Layers timed alone misestimate a whole network (hot caches, per-graph overhead); the importer fits the
    table's layer sums to these timings. Resumes by round: finished rounds in `out` are kept.
    """
    manifest = json.loads((kit / "manifest.json").read_text())
    nets = [e for e in manifest["entries"] if e["kind"] == "net"]
    if not nets:
        return out
    ref_entry = next(e for e in manifest["entries"] if e["key"] == "reference")
    rows = done_rows(out) if out.exists() else []
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["round"]] = counts.get(r["round"], 0) + 1
    done_rounds = {k for k, v in counts.items() if v == len(nets)}
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, CALIBRATION_FIELDS)
        w.writeheader()
        w.writerows({k: r[k] for k in CALIBRATION_FIELDS} for r in rows if r["round"] in done_rounds)
    todo_rounds = [r for r in range(protocol.calibration_rounds) if str(r) not in done_rounds]
    if not todo_rounds:
        return out
    sessions = [session(kit / e["file"], threads, provider) for e in nets]
    ref = session(kit / ref_entry["file"], threads, provider)
    total = protocol.calibration_rounds * len(nets)
    done = len(done_rounds) * len(nets)
    with open(out, "a", newline="") as f:
        writer = csv.DictWriter(f, CALIBRATION_FIELDS)

        def record(rnd: int, i: int, t: float, r: float) -> None:
            nonlocal done
            writer.writerow({"round": todo_rounds[rnd], "key": nets[i]["key"], "whole_us": f"{t:.3f}",
                             "reference_us": f"{r:.3f}", "wall_time": f"{time.time():.3f}"})
            f.flush()
            os.fsync(f.fileno())
            done += 1
            if progress is not None:
                progress(done, total, "calibration")

        time_interleaved(sessions, ref, len(todo_rounds), protocol, seed=len(done_rounds), on_timing=record)
    return out


def _text_progress() -> Any:
    """Plain-text progress with ETA for devices without rich."""
    start = time.time()
    first: list[int] = []

    def show(done: int, total: int, key: str) -> None:
        if not first:
            first.append(done - 1)
        rate = (time.time() - start) / max(1, done - first[0])
        sys.stderr.write(f"\r{done}/{total} ({100 * done / total:.0f}%)  ETA {rate * (total - done) / 60:.1f} min   ")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Measure a bneck latency kit with onnxruntime.")
    ap.add_argument("--kit", default=str(Path(__file__).resolve().parent), help="kit folder (default: this one)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the kit's)")
    ap.add_argument("--provider", default="CPUExecutionProvider")
    ap.add_argument("--out", default=None, help="results CSV (default: KIT/results.csv)")
    args = ap.parse_args(argv)
    kit = Path(args.kit)
    if not (kit / "manifest.json").is_file():
        print(f"error: {kit} has no manifest.json (is it a bneck latency kit?)", file=sys.stderr)
        return 2
    threads = args.threads or json.loads((kit / "manifest.json").read_text()).get("threads", 1)
    if threads < 1:
        print(f"error: --threads {threads} must be >= 1", file=sys.stderr)
        return 2
    try:
        out = run_kit(kit, args.out, threads, args.provider, _text_progress())
    except KeyboardInterrupt:
        print("\ninterrupted: run again to resume", file=sys.stderr)
        return 130
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
