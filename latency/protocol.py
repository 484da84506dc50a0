"""The one latency measurement protocol: onnxruntime sessions, paired bursts, and the statistic every number uses.

This file is standalone on purpose (stdlib + numpy + onnxruntime only): the device kit ships it verbatim as
its measuring script, so a table built on a phone-class board and one built by `bneck latency build` are
measured by the same code. Run it as a script inside a kit folder:

    python measure.py [--threads 1] [--provider CPUExecutionProvider] [--out results.csv]

Why paired bursts (measured here, `benchmarks/latency_noise.py`, and before that in the latency issue): on a
shared 2-core VM one network's timing swings by 2x within minutes and the block-to-block CV is 10-13%, so a
number taken in one moment does not repeat. What does repeat is a *ratio*: every timing is a burst (warm-up,
then >= `burst_runs` runs) immediately followed by a burst of a reference graph, and the value kept is
min(burst) / min(reference burst). Whole networks are compared with V3-Small (the space's reference net), layer
rows with one mid-size layer of it, since a reference of the same scale cancels more of the host's state.
The estimate is the median of that ratio over `rounds` (whole nets) or `passes` (rows, each pass a new shuffled
order), times the reference's median minimum: 30 V3-like nets timed in 12 rounds agreed with themselves
test-retest 100% within +-5% (median |d| 0.4%), where the earlier one-moment median over 3 rounds agreed 56%.

Why quiet rounds only: a ratio cancels a host that is slower as a whole, not a neighbour contending for the
cache and memory bus. That hits graphs unequally (measured here: with a memory-bound process on the other core a
big net's ratio to V3-Large fell 4-8%; in a real build the calibration nets read 4.3% higher in the rounds whose
reference ran at its quietest than in the rest, and rows 1-4% higher, heads 21%), so a median over every round
depends on how contended the stretch was, and a table built in a busy hour under-predicts nets validated in a
quiet one (the large space: held-out nets 3.2% slower than predicted though the anchors read their calibration
within 1%). So a round (or pass) counts when its reference burst is within `quiet_tol` of the measurement's 5th
percentile; a net gets more rounds until `min_quiet` of them were quiet, a row more passes until one was (up to
`max_rounds` / `max_passes`; a net or row that never was quiet falls back to its least contended ones), and the
reference's latency is its quiet median. On a quiet device every round is quiet and nothing changes.

Interrupt at any time (Ctrl-C or kill -9): rerunning resumes after the last row written. Results are only ever
appended (a torn last line is cut off), and one process at a time measures a kit (a lock file).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOL_NAME = "bneck-ort/3"
KIT_FORMAT = "bneck-latency-kit/3"
CSV_FIELDS = ("key", "pass", "seq", "min_us", "median_us", "ref_min_us", "runs", "wall_time")
CALIBRATION_FIELDS = ("round", "key", "whole_us", "reference_us", "wall_time")
STATISTIC = ("median over the quiet rounds (whole nets) or passes (rows) of min(burst) / min(reference burst right "
             "after it); quiet: reference burst <= (1 + quiet_tol) x the measurement's 5th percentile")


class KitError(ValueError):
    """A kit that cannot be measured as it is (old format, another process measuring it, damaged manifest)."""


@dataclass(frozen=True)
class Protocol:
    """Timing parameters; stored in every kit and table so results are compared like for like."""

    name: str = PROTOCOL_NAME
    warmup_runs: int = 2
    burst_runs: int = 8         # timed runs per burst, at least ...
    burst_min_s: float = 0.002  # ... and at least this long (tiny layers take microseconds)
    max_runs: int = 400
    passes: int = 3             # passes over a table's rows, each in its own shuffled order, and more, up to
    max_passes: int = 6         # ... this many, for the rows none of whose passes was quiet (see `quiet_tol`)
    rounds: int = 12            # rounds over whole networks (calibration, validation, `latency measure`) ...
    max_rounds: int = 30        # ... and more, up to this many, for a net whose estimate is still unsure:
    target_se: float = 0.012    # relative standard error of its median ratio (a quiet host: ~0.9% at 12 rounds)
    quiet_tol: float = 0.05     # a round or pass is quiet when its reference burst is within this of the quietest
    min_quiet: int = 4          # ... (5th percentile); a net is unsure until it has this many quiet rounds
    chunk: int = 256            # rows whose sessions are open at once; their passes run back to back

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Protocol:
        """The protocol a kit or table names; one of another version is refused, not misread."""
        if d.get("name") != PROTOCOL_NAME:
            raise KitError(f"measured with protocol {d.get('name')!r}, this version measures {PROTOCOL_NAME!r} "
                           "(paired bursts; the old protocol's rows do not repeat on a noisy host)")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Burst:
    min_us: float
    median_us: float
    runs: int


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


def burst(sess: Any, feeds: dict[str, np.ndarray], p: Protocol) -> Burst:
    """Warm-up, then at least `burst_runs` runs lasting at least `burst_min_s`: the minimum and median (µs)."""
    run = sess.run
    for _ in range(p.warmup_runs):
        run(None, feeds)
    clock = time.perf_counter_ns
    samples: list[int] = []
    begin = clock()
    min_ns = p.burst_min_s * 1e9
    while len(samples) < p.max_runs and (len(samples) < p.burst_runs or clock() - begin < min_ns):
        t0 = clock()
        run(None, feeds)
        samples.append(clock() - t0)
    arr = np.asarray(samples, dtype=np.float64) / 1e3
    return Burst(float(arr.min()), float(np.median(arr)), len(arr))


def paired(sess: Any, feeds: dict[str, np.ndarray], ref: Any, ref_feeds: dict[str, np.ndarray],
           p: Protocol) -> tuple[Burst, Burst]:
    """One burst of `sess`, then one of the reference in the same moment."""
    return burst(sess, feeds, p), burst(ref, ref_feeds, p)


def quiet_below_us(refs_us: Any, protocol: Protocol) -> float:
    """The reference burst time at or below which a round counts as quiet: (1 + quiet_tol) x the 5th percentile
    of every reference burst of the measurement (inf with no bursts)."""
    r = np.asarray(refs_us, dtype=float)
    return float(np.percentile(r, 5) * (1 + protocol.quiet_tol)) if r.size else float("inf")


def quiet_ratios(values_us: Any, refs_us: Any, quiet_below: float, min_quiet: int) -> np.ndarray:
    """The per-round ratios value/reference of the quiet rounds (reference <= `quiet_below`); when fewer than
    `min_quiet` rounds were quiet, those of the `min_quiet` least contended rounds (lowest reference)."""
    v, r = np.asarray(values_us, dtype=float), np.asarray(refs_us, dtype=float)
    quiet = r <= quiet_below
    if quiet.sum() < min(min_quiet, len(r)):
        quiet = np.zeros(len(r), dtype=bool)
        quiet[np.argsort(r, kind="stable")[:min_quiet]] = True
    return v[quiet] / r[quiet]


def estimate(values_us: Any, refs_us: Any, reference_us: float, quiet_below: float = float("inf"),
             min_quiet: int = 1) -> float:
    """The protocol's statistic: median of value/reference over the quiet rounds (`quiet_ratios`; every round
    with the defaults, as for rows), in the units of `reference_us`."""
    return float(np.median(quiet_ratios(values_us, refs_us, quiet_below, min_quiet)) * reference_us)


def quiet_reference_us(refs_us: Any, protocol: Protocol) -> float:
    """The reference's latency in the quiet state: the median of its bursts at or below `quiet_below_us`."""
    r = np.asarray(refs_us, dtype=float)
    return float(np.median(r[r <= quiet_below_us(r, protocol)]))


def ratio_se(ratios: Any) -> float:
    """Relative standard error of the median of per-round ratios (from their MAD): how sure the estimate is."""
    r = np.asarray(ratios, dtype=float)
    if len(r) < 3:
        return float("inf")
    med = float(np.median(r))
    mad = float(np.median(np.abs(r - med))) * 1.4826
    return 1.253 * mad / np.sqrt(len(r)) / med


def time_interleaved(sessions: list[Any], reference: Any, rounds: int, protocol: Protocol, seed: int = 0,
                     on_timing: Callable[[int, int, float, float], None] | None = None,
                     skip: Callable[[int, int], bool] | None = None,
                     history: list[list[tuple[float, float]]] | None = None) -> None:
    """Time warm sessions against the reference, A R B R C R ..., in `rounds` rounds, each shuffled; then, in a
    noisy stretch, more rounds for the nets whose estimate is still unsure (fewer than `min_quiet` quiet rounds,
    or `ratio_se` of the quiet ratios > `target_se`), up to `max_rounds` in all.

    This is how whole networks are measured everywhere (calibration, validation, `latency measure`).
    `on_timing(round, index, min_us, reference_min_us)` receives every pair; `skip(round, index)` leaves pairs
    already measured (a resumed calibration) out without changing the order of the others, and `history` holds
    their (min_us, reference_min_us) pairs, so a resume decides on extra rounds from everything measured so far.
    """
    feeds = [feeds_for(s) for s in sessions]
    ref_feeds = feeds_for(reference)
    pairs = [list(h) for h in history] if history is not None else [[] for _ in sessions]

    def one(rnd: int, i: int) -> None:
        if skip is not None and skip(rnd, i):
            return
        t, r = paired(sessions[i], feeds[i], reference, ref_feeds, protocol)
        pairs[i].append((t.min_us, r.min_us))
        if on_timing is not None:
            on_timing(rnd, i, t.min_us, r.min_us)

    for rnd in range(rounds):
        for i in np.random.default_rng([seed, rnd]).permutation(len(sessions)):
            one(rnd, int(i))
    rnd = rounds
    while rnd < protocol.max_rounds:
        unsure = unsure_nets(pairs, protocol)
        if not unsure:
            break
        for j in np.random.default_rng([seed, rnd]).permutation(len(unsure)):
            one(rnd, unsure[int(j)])
        rnd += 1


def unsure_nets(pairs: list[list[tuple[float, float]]], protocol: Protocol) -> list[int]:
    """Indices of the nets that need more rounds: fewer than `min_quiet` quiet rounds, or their quiet ratios'
    `ratio_se` above `target_se` (quiet: reference <= `quiet_below_us` of every reference burst so far)."""
    below = quiet_below_us([r for per in pairs for _, r in per], protocol)
    unsure = []
    for i, per in enumerate(pairs):
        quiet = [t / r for t, r in per if r <= below]
        if len(quiet) < protocol.min_quiet or ratio_se(quiet) > protocol.target_se:
            unsure.append(i)
    return unsure


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
    """Complete rows of a results CSV; a torn last line (kill -9 mid-write) or a damaged line is left out."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    return [r for r in csv.DictReader(lines) if r.get("wall_time") and None not in r.values()]


def _cut_torn_tail(path: Path) -> None:
    """Drop an incomplete last line so appends start on a clean line; every complete line stays as it was."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def kit_lock(kit: Path, wait: bool = False, on_wait: Callable[[str], None] | None = None,
             name: str = ".lock") -> Iterator[None]:
    """One process measures a kit at a time: a second one waits (`wait`) or is refused with who holds it.
    The lock file (`kit/name`) stays: unlinking it would let a waiter and a newcomer both hold a lock."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): a device kit is run by hand, one at a time
        yield
        return
    path = kit / name
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            if not wait:
                raise KitError(f"{kit} is being measured by {holder}: wait for it to finish") from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_manifest(kit: Path) -> dict[str, Any]:
    path = kit / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != KIT_FORMAT:
            raise KitError(f"{path}: kit format {manifest.get('format')!r}, this version reads {KIT_FORMAT!r}: "
                           "write the kit again with this version of bneck")
        manifest["entries"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, KitError):
            raise
        raise KitError(f"{path} is missing or damaged ({type(exc).__name__}): write the kit again") from None
    return manifest


def measured_keys(path: Path, passes: int) -> set[str]:
    """Row keys with every pass measured."""
    counts: dict[str, set[str]] = {}
    for r in done_rows(path):
        counts.setdefault(r["key"], set()).add(r["pass"])
    return {k for k, v in counts.items() if len(v) >= passes}


def run_kit(kit_dir: str | os.PathLike[str], out_csv: str | os.PathLike[str] | None = None, threads: int = 1,
            provider: str = "CPUExecutionProvider", progress: Callable[[int, int, str], None] | None = None,
            wait: bool = False, on_wait: Callable[[str], None] | None = None) -> Path:
    """Measure every layer graph of a kit's manifest into a CSV (`passes` times each), resuming after the rows
    already there, then its calibration networks (`calibrate_kit`).

    Rows are taken in chunks of `chunk` graphs (a seeded order, the same on resume); within a chunk each pass
    visits the graphs in its own shuffled order, every burst paired with the layer reference; then the rows
    without a quiet pass get more passes, up to `max_passes` (a resume does not add them to finished rows).
    `progress(done, total, key)` is called after each timing when given.
    """
    kit = Path(kit_dir)
    manifest = read_manifest(kit)
    out = Path(out_csv) if out_csv else kit / "results.csv"
    protocol = Protocol.from_dict(manifest["protocol"])
    with kit_lock(kit, wait, on_wait):
        _cut_torn_tail(out)
        done = {(r["key"], int(r["pass"])) for r in done_rows(out)}
        seq = len(done)
        layers = [e for e in manifest["entries"] if e["kind"] == "layer"]
        lref = next(e for e in manifest["entries"] if e["kind"] == "layer_reference")
        ref_sess = session(kit / lref["file"], threads, provider)
        ref_feeds = feeds_for(ref_sess)
        meta_path = out.with_suffix(".device.json")
        tmp = meta_path.with_name(meta_path.name + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": fingerprint(threads, provider), "protocol": asdict(protocol)},
                                  indent=2))
        os.replace(tmp, meta_path)
        total = len(layers) * protocol.passes
        count = sum((e["key"], p) in done for e in layers for p in range(protocol.passes))
        order = np.random.default_rng(int(manifest.get("seed", 0))).permutation(len(layers))
        new_file = not out.exists() or out.stat().st_size == 0
        refs = [float(r["ref_min_us"]) for r in done_rows(out)]
        with open(out, "a", newline="") as f:
            writer = csv.DictWriter(f, CSV_FIELDS)
            if new_file:
                writer.writeheader()

            def measure(sess: Any, feeds: dict[str, np.ndarray], key: str, p: int) -> float:
                nonlocal seq
                t, r = paired(sess, feeds, ref_sess, ref_feeds, protocol)
                writer.writerow({"key": key, "pass": p, "seq": seq, "min_us": f"{t.min_us:.3f}",
                                 "median_us": f"{t.median_us:.3f}", "ref_min_us": f"{r.min_us:.3f}",
                                 "runs": t.runs, "wall_time": f"{time.time():.3f}"})
                f.flush()
                os.fsync(f.fileno())
                seq += 1
                refs.append(r.min_us)
                return r.min_us

            for c, start in enumerate(range(0, len(layers), protocol.chunk)):
                chunk = [layers[int(i)] for i in order[start:start + protocol.chunk]]
                chunk = [e for e in chunk if any((e["key"], p) not in done for p in range(protocol.passes))]
                if not chunk:
                    continue
                sessions = [session(kit / e["file"], threads, provider) for e in chunk]
                feeds = [feeds_for(s) for s in sessions]
                chunk_refs: list[list[float]] = [[] for _ in chunk]
                for p in range(protocol.passes):
                    for i in np.random.default_rng([c, p]).permutation(len(chunk)):
                        e = chunk[int(i)]
                        if (e["key"], p) in done:
                            continue
                        chunk_refs[int(i)].append(measure(sessions[int(i)], feeds[int(i)], e["key"], p))
                        count += 1
                        if progress is not None:
                            progress(count, total, e["key"])
                # rows none of whose passes was quiet get more passes (contention lowers a row's ratio to the
                # layer reference by 1-21% by layer kind, measured): until one is, up to max_passes
                for p in range(protocol.passes, protocol.max_passes):
                    below = quiet_below_us(refs, protocol)
                    loud = [i for i, rs in enumerate(chunk_refs) if rs and min(rs) > below]
                    for i in np.random.default_rng([c, p]).permutation(loud).tolist() if loud else []:
                        chunk_refs[i].append(measure(sessions[i], feeds[i], chunk[i]["key"], p))
                del sessions
        calibrate_kit(kit, out.with_name("calibration.csv"), threads, provider, protocol, progress)
    return out


def calibrate_kit(kit: Path, out: Path, threads: int, provider: str, protocol: Protocol,
                  progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Time the kit's calibration networks whole, interleaved with the reference (`time_interleaved`).

    Layers timed alone misestimate a whole network (hot caches, per-graph overhead); the importer fits the
    table's layer sums to these timings. Resumes pair by pair: rows already in `out` are kept, never rewritten.
    """
    manifest = read_manifest(kit)
    nets = [e for e in manifest["entries"] if e["kind"] == "net"]
    if not nets:
        return out
    ref_entry = next(e for e in manifest["entries"] if e["key"] == "reference")
    _cut_torn_tail(out)
    rows = done_rows(out)
    done = {(int(r["round"]), r["key"]) for r in rows}
    keys = [e["key"] for e in nets]
    history: list[list[tuple[float, float]]] = [[] for _ in keys]
    for r in sorted(rows, key=lambda r: int(r["round"])):
        if r["key"] in keys:
            history[keys.index(r["key"])].append((float(r["whole_us"]), float(r["reference_us"])))
    total = protocol.rounds * len(nets)
    base_done = all((rnd, k) in done for rnd in range(protocol.rounds) for k in keys)
    maxed = [i for i, h in enumerate(history) if len(h) >= protocol.max_rounds]
    if base_done and not set(unsure_nets(history, protocol)) - set(maxed):
        return out
    sessions = [session(kit / e["file"], threads, provider) for e in nets]
    ref = session(kit / ref_entry["file"], threads, provider)
    count = sum((rnd, k) in done for rnd in range(protocol.rounds) for k in keys)
    new_file = not out.exists() or out.stat().st_size == 0
    with open(out, "a", newline="") as f:
        writer = csv.DictWriter(f, CALIBRATION_FIELDS)
        if new_file:
            writer.writeheader()

        def record(rnd: int, i: int, t: float, r: float) -> None:
            nonlocal count
            writer.writerow({"round": rnd, "key": keys[i], "whole_us": f"{t:.3f}", "reference_us": f"{r:.3f}",
                             "wall_time": f"{time.time():.3f}"})
            f.flush()
            os.fsync(f.fileno())
            count += 1
            if progress is not None:
                progress(count, total, "calibration")

        time_interleaved(sessions, ref, protocol.rounds, protocol, seed=int(manifest.get("seed", 0)),
                         on_timing=record, skip=lambda rnd, i: (rnd, keys[i]) in done,
                         history=history)
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
    try:
        threads = args.threads or int(read_manifest(kit).get("threads", 1))
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if threads < 1:
        print(f"error: --threads {threads} must be >= 1", file=sys.stderr)
        return 2
    try:
        out = run_kit(kit, args.out, threads, args.provider, _text_progress())
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run again to resume", file=sys.stderr)
        return 130
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
