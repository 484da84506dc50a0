"""NetAdapt (Yang et al. 2018) as MobileNetV3 used it: shrink a trained network's widths, one move per
iteration, until a latency table predicts the target latency.

Each iteration asks for a latency reduction δ (MobileNetV3: 1% of the starting latency; optionally decaying)
and makes one proposal per prunable width: the expansion of a single bneck block, or the shared width of a
residual group. A proposal takes the *largest* multiple of 8 whose predicted latency is at least δ below the
current one, so it removes as little as possible. Each proposal is made by weight surgery
(`search_space.surgery`: largest-L2 channels kept), short-term fine-tuned and scored on a held-out part of the
training split; the winner maximizes ΔAcc/|ΔLatency| (MobileNetV3) or accuracy (NetAdapt's original rule).
After the target is met the result is long-term fine-tuned and scored on the untouched validation split.

With `measured` the loop steers by the device, not only the table: the start and every selected network are
timed whole on this host (`measure`: the table's protocol, beside its anchors, in the table's scale) and the
current network's measured/predicted ratio corrects the predictions its proposals are sized by, so the target is
met as measured. Why: each iteration takes the move the table credits most per accuracy lost, so the moves it
over-credits win; NetAdapt's results to 80/60/40% of V3-Small's latency measured 1.03 / 1.06 / 1.22x their
prediction (uniform nets of the same latency 0.97-1.07x; benchmarks/results/netadapt_40pct.json). One
measurement is not steady enough to steer by alone (`measured_correction`).

The loop is storage-first: every finished iteration is a directory (spec, weights, metrics) written
atomically, so a killed run resumes after the last one; that storage is the algorithm's resumable state, so it
stays here (with trajectory.parquet and proposals.parquet, its record). Fine-tunes are asked for as
`FineTuneRequest`s through a caller-supplied `evaluate(requests) -> outcomes`: where and how they run (in this
process, local worker processes or a Ray cluster) is `runs`' job (`runs.netadapt_run`, `runs.worker.run_job`), and
so is drawing the trajectory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bneck_common.paths import atomic_dir, atomic_write
from search_space import Arch, Bneck, SpecError
from search_space.surgery import prune_expand, prune_group, residual_group_of, shrink_expand, shrink_group

SELECTIONS = ("ratio", "accuracy")
STATE_FILE = "netadapt.json"
LONG_SEED_OFFSET = 10_000  # the long-term fine-tune's seed is seed + this (proposals use seed + iteration)


class NetAdaptError(ValueError):
    """A NetAdapt setting or starting point is unusable (bad value, unreachable target, changed resume)."""


class Collapsed(NetAdaptError):
    """Every proposal of an iteration collapsed (see `collapsed`): NetAdapt stops at the last good network."""


# ---- moves and proposals ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Move:
    """Shrink one width: a block's expansion (`kind='expand'`) or a residual group's width (`'group'`)."""

    kind: str
    blocks: tuple[int, ...]
    width: int
    keep: int

    @property
    def label(self) -> str:
        where = f"block {self.blocks[0]}" if self.kind == "expand" else \
            f"blocks {self.blocks[0]}" + (f"-{self.blocks[-1]}" if len(self.blocks) > 1 else "")
        return f"{self.kind} {where}: {self.width}->{self.keep}"

    def arch(self, arch: Arch) -> Arch:
        if self.kind == "expand":
            return shrink_expand(arch, self.blocks[0], self.keep)
        return shrink_group(arch, list(self.blocks), self.keep)

    def apply(self, arch: Arch, model: Any) -> tuple[Arch, Any]:
        if self.kind == "expand":
            return prune_expand(arch, model, self.blocks[0], self.keep)
        return prune_group(arch, model, list(self.blocks), self.keep)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "blocks": list(self.blocks), "width": self.width, "keep": self.keep}


def slots(arch: Arch) -> list[tuple[str, tuple[int, ...], int]]:
    """Every prunable width as (kind, blocks, current width): each bneck's expansion that has its own expand
    conv, then each residual group's width (in block order)."""
    out: list[tuple[str, tuple[int, ...], int]] = []
    ins = arch.in_channels
    for i, b in enumerate(arch.blocks):
        if isinstance(b, Bneck) and b.expand != ins[i]:
            out.append(("expand", (i,), b.expand))
    i = 0
    while i < len(arch.blocks):
        group = residual_group_of(arch, i)
        out.append(("group", tuple(group), arch.blocks[group[0]].out))
        i = group[-1] + 1
    return out


def _keeps(width: int, max_cut: float = 1.0) -> range:
    """Widths below `width` that surgery accepts, largest first (multiples of 8, >= 8), cutting at most `max_cut`
    of `width` (the one place the per-step cap is applied)."""
    top = width - 1 if width % 8 == 0 else width
    floor = max(8, -(-math.ceil((1.0 - max_cut) * width - 1e-9) // 8) * 8)  # smallest multiple of 8 within the cap
    return range(top // 8 * 8, floor - 1, -8)


@dataclass(frozen=True)
class Proposal:
    move: Move
    arch: Arch
    latency_ms: float


def propose(arch: Arch, latency: Callable[[Arch], float], delta_ms: float,
            current_ms: float | None = None, max_cut: float = 1.0) -> list[Proposal]:
    """One proposal per slot: the largest width whose predicted latency is <= current - delta_ms.

    Widths the surgery refuses (they would drop an expand conv or add a residual) are skipped; a slot with no
    width meeting δ gives no proposal, and neither does one that would need to cut more than `max_cut` of its
    width in this one step (48 -> 8 channels in one move wrecks a network that a few fine-tune steps cannot
    repair; smaller steps get there over several iterations, each fine-tuned)."""
    current = latency(arch) if current_ms is None else current_ms
    out: list[Proposal] = []
    for kind, blocks, width in slots(arch):
        for keep in _keeps(width, max_cut):
            move = Move(kind, blocks, width, keep)
            try:
                new = move.arch(arch)
            except SpecError:
                continue
            ms = latency(new)
            if ms <= current - delta_ms:
                out.append(Proposal(move, new, ms))
                break
    return out


def _biggest_cut(arch: Arch, kind: str, blocks: tuple[int, ...], width: int, cur_ms: float, max_cut: float,
                 latency: Callable[[Arch], float]) -> Proposal | None:
    """The slot's narrowest width within `max_cut` of `width` that surgery accepts, if that is faster than
    `cur_ms` (what an iteration proposes when no single width meets δ)."""
    for keep in reversed(_keeps(width, max_cut)):
        move = Move(kind, blocks, width, keep)
        try:
            new = move.arch(arch)
        except SpecError:
            continue
        ms = latency(new)
        return Proposal(move, new, ms) if ms < cur_ms else None
    return None


MEASURED_WINDOW = 8  # the last this many measurements fit the correction (see `measured_correction`)


def measured_correction(points: Sequence[tuple[float, float]],
                        window: int = MEASURED_WINDOW) -> Callable[[float], float]:
    """measured/predicted as a function of predicted ms, from (predicted_ms, measured_ms) of the start and each
    selected network so far: a least-squares line over the last `window` points (one point: its ratio); a
    latency outside the fitted points' range gets the line's value at the nearest end (no
    extrapolation: the proposals lie a step beyond the newest point).

    Why a fit and not the last ratio: one whole-net measurement of V3-Small at 224 px repeated back to back read
    1.752 / 1.702 / 1.728 ms here, and in the first measured run to 80% the ratio of successive selected networks
    swung 1.02, 0.98, 1.01, 1.05, 1.02, 1.00 while each step cut only 2%: steering by the last one, a step
    'measured' slower than the network it was cut from. The table's error itself drifts with depth (1.03 at 80%,
    1.06 at 60%), which a line follows without lag where a mean would trail it; over 8 points its value at the
    newest has ~0.6x one measurement's noise (3 points: 0.9x; 2 points: the newest ratio itself)."""
    pts = [(float(p), float(m) / float(p)) for p, m in points][-window:]
    if not pts:
        raise ValueError("measured_correction needs at least one (predicted_ms, measured_ms) point")
    ratios = [r for _, r in pts]
    xs = [p for p, _ in pts]
    lo, hi = min(xs), max(xs)
    if len(pts) < 2 or max(xs) - min(xs) <= 1e-12:
        mean = sum(ratios) / len(ratios)
        return lambda predicted_ms: mean
    x_mean, r_mean = sum(xs) / len(xs), sum(ratios) / len(ratios)
    slope = sum((x - x_mean) * (r - r_mean) for x, r in pts) / sum((x - x_mean) ** 2 for x in xs)
    return lambda predicted_ms: r_mean + slope * (min(hi, max(lo, predicted_ms)) - x_mean)


def smallest(arch: Arch) -> Arch:
    """Every prunable width at its smallest accepted value, repeated until nothing shrinks: the floor NetAdapt's
    moves can reach."""
    while True:
        changed = False
        for kind, blocks, width in slots(arch):
            for keep in reversed(_keeps(width)):
                try:
                    arch = Move(kind, blocks, width, keep).arch(arch)
                except SpecError:
                    continue
                changed = True
                break
        if not changed:
            return arch


# ---- settings and schedule ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetAdaptSettings:
    """Everything that decides a NetAdapt run besides the starting network and the latency table."""

    target_ms: float
    step_frac: float = 0.01  # δ_0 = step_frac * starting latency (MobileNetV3)
    decay: float = 1.0  # δ_i = δ_0 * decay**i (NetAdapt's decaying schedule when < 1)
    selection: str = "ratio"  # ratio: max ΔAcc/|ΔLat| (MobileNetV3); accuracy: max accuracy (NetAdapt)
    short_steps: int = 100  # short-term fine-tune steps per proposal (paper: 10k on ImageNet; why 100: NetAdaptStep)
    short_lr: float = 0.01
    long_epochs: float = 2.0  # long-term fine-tune of the result (0: none)
    long_lr: float = 0.05
    batch_size: int = 64
    holdout: float = 0.2  # part of the training split that ranks proposals
    land_tol: float = 0.02  # last iteration: prefer proposals within this fraction below the target
    max_cut: float = 0.5  # no proposal cuts a slot by more than this fraction of its width in one step
    collapse_gap: float = 0.05  # never select a proposal more than this (top-1) below its iteration's best
    collapse_floor: float = 0.8  # ... or below this fraction of the start network's holdout top-1
    measured: bool = False  # time the start and each selected network on this host and steer by that (see above)
    max_iterations: int = 200
    data: str = "builtin:digits"
    resolution: int = 32
    seed: int = 0
    threads: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        checks = [("target_ms", math.isfinite(self.target_ms) and self.target_ms > 0),
                  ("step_frac", 0 < self.step_frac < 1), ("decay", 0 < self.decay <= 1),
                  ("short_steps", self.short_steps >= 0), ("short_lr", self.short_lr > 0),
                  ("long_epochs", self.long_epochs >= 0), ("long_lr", self.long_lr > 0),
                  ("batch_size", self.batch_size >= 1), ("holdout", 0 < self.holdout < 1),
                  ("land_tol", 0 <= self.land_tol < 1), ("max_cut", 0 < self.max_cut <= 1),
                  ("collapse_gap", 0 < self.collapse_gap <= 1), ("collapse_floor", 0 <= self.collapse_floor < 1),
                  ("max_iterations", self.max_iterations >= 1),
                  ("resolution", self.resolution >= 8), ("threads", self.threads >= 1)]
        for name, ok in checks:
            if not ok:
                raise NetAdaptError(f"{name}={getattr(self, name)!r} is out of range")
        if self.selection not in SELECTIONS:
            raise NetAdaptError(f"selection {self.selection!r} not in {{{', '.join(SELECTIONS)}}}")

    def delta_ms(self, iteration: int, start_ms: float, current_ms: float) -> float:
        """δ of iteration `iteration` (1-based), never more than what is left to reach the target."""
        delta = self.step_frac * start_ms * self.decay ** (iteration - 1)
        return min(delta, current_ms - self.target_ms)

    def short_recipe(self) -> dict[str, Any]:
        return {"steps": max(1, self.short_steps), "lr": self.short_lr, "warmup_fraction": 0.0,
                "batch_size": self.batch_size, "threads": self.threads}

    def long_recipe(self) -> dict[str, Any]:
        budget = {"epochs": float(self.long_epochs)} if self.long_epochs > 0 else {"steps": 1}  # 0: scored only
        return {**budget, "min_steps": 1, "lr": self.long_lr, "warmup_fraction": 0.0,
                "batch_size": self.batch_size, "threads": self.threads}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- one fine-tune (what the algorithm asks for) --------------------------------------------------------------

@dataclass(frozen=True)
class FineTuneRequest:
    """Fine-tune `arch` from `weights` (state-dict bytes) with `recipe` and score it. `holdout` set: train on the
    training split minus the holdout, score on the holdout (ranking proposals); None: train on the whole training
    split, score on the validation split. `train` False scores without training. The data, its split seed and the
    device are the run's (`NetAdaptSettings`); outcomes are matched to requests by `index`."""

    index: int
    arch: str
    weights: bytes
    recipe: dict[str, Any]
    seed: int
    holdout: float | None
    train: bool = True


@dataclass
class FineTuneOutcome:
    """What a fine-tune gave: top-1 and loss on its scoring split, the tuned weights (None when it failed)."""

    index: int
    top1: float
    loss: float
    failed: bool
    reason: str
    weights: bytes | None
    seconds: float
    worker: str = ""
    top1_before: float | None = None  # a proposal's held-out top-1 right after the cut, before its fine-tune


def state_bytes(model: Any) -> bytes:
    """A model's state dict as bytes (CPU tensors), as requests, outcomes and iterations carry weights."""
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def load_model(arch: Arch, weights: bytes) -> Any:
    """The network `arch` with `weights` (bytes of `state_bytes`) loaded, on the CPU."""
    import torch

    from search_space import build_model

    model = build_model(arch)
    model.load_state_dict(torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True))
    return model


Evaluate = Callable[[Sequence[FineTuneRequest]], list[FineTuneOutcome]]  # outcomes in any order


# ---- selection ---------------------------------------------------------------------------------------------

def collapsed(rows: Sequence[dict[str, Any]], start_top1: float, gap: float, floor_frac: float) -> list[bool]:
    """Which proposals collapsed: top-1 more than `gap` below the best proposal of the iteration, or below
    `floor_frac` x the start network's top-1. The ratio rule rewards a big latency cut even at a big accuracy
    loss (a fresh `make run` on digits cut a group 48 -> 8 channels at 47% top-1, and finally reached 10%); such
    a proposal is never selected."""
    ok = [r["top1"] for r in rows if not r["failed"]]
    best = max(ok) if ok else 0.0
    return [bool(r["failed"] or r["top1"] < best - gap or r["top1"] < floor_frac * start_top1) for r in rows]


def select(rows: Sequence[dict[str, Any]], current_top1: float, current_ms: float, selection: str,
           landing: tuple[float, float] | None = None, landing_slack: float = 0.01,
           useful_ms: float | None = None) -> int | None:
    """Index (into rows) of the winning proposal, or None when all failed or collapsed.

    rows carry top1, loss, latency_ms, failed and optionally collapsed (see `collapsed`; never selected).
    `ratio`: max (top1 - current)/(current_ms - max(latency_ms, useful_ms)), ties to higher top1, then lower loss;
    `accuracy`: max top1, then lower loss. Latency saved below `useful_ms` (the bottom of the landing window)
    counts for nothing: when every proposal loses accuracy the ratio favours the biggest cut, and a fresh
    `make run` took a 0.17 ms cut from 1.23 ms to land 11% below its 1.19 ms target. With `landing=(lo, hi)`,
    proposals whose latency lies in [lo, hi] and whose top1 is within `landing_slack` of the best proposal's win
    over the others (the last step lands near the target instead of cutting far below it, but never at a real
    accuracy cost)."""
    ok = [i for i, r in enumerate(rows) if not r["failed"] and not r.get("collapsed", False)]
    if landing is not None and ok:
        best_top1 = max(rows[i]["top1"] for i in ok)
        inside = [i for i in ok if landing[0] <= rows[i]["latency_ms"] <= landing[1]
                  and rows[i]["top1"] >= best_top1 - landing_slack]
        ok = inside or ok
    if not ok:
        return None

    def key(i: int) -> tuple[float, ...]:
        r = rows[i]
        if selection == "ratio":
            reached = r["latency_ms"] if useful_ms is None else max(r["latency_ms"], useful_ms)
            gain = (r["top1"] - current_top1) / max(current_ms - reached, 1e-9)
            return (round(gain, 9), r["top1"], -r["loss"], -i)  # rounded: equal ratios tie, not float noise
        return (r["top1"], -r["loss"], -i)

    return max(ok, key=key)


# ---- the loop ----------------------------------------------------------------------------------------------

@dataclass
class Iteration:
    """A finished iteration as stored on disk (iteration 0 is the starting network)."""

    index: int
    arch: Arch
    weights: bytes
    metrics: dict[str, Any] = field(default_factory=dict)


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, default=float) + "\n").encode()


def _measured_points(history: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(float(m["predicted_ms"]), float(m["measured_ms"])) for m in history if m.get("measured_ms") is not None]


class NetAdapt:
    """A resumable NetAdapt run in `out_dir`.

    `latency(arch) -> ms` is the table's prediction of the deployed network; `evaluate` runs fine-tune requests
    (possibly in parallel, on the settings' data and device) and returns their outcomes in any order
    (`runs.netadapt_run.inline_evaluate` runs them in this process). `measure(arch) -> ms` (needed with
    `settings.measured`) times the deployed network on the device, in the table's scale; it is called once for
    the start and once per iteration, for its selected network, while no fine-tune runs. `on_event(kind, info)`
    reports progress.
    """

    def __init__(self, out_dir: str | os.PathLike[str], settings: NetAdaptSettings,
                 latency: Callable[[Arch], float], evaluate: Evaluate,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 identity: dict[str, Any] | None = None, measure: Callable[[Arch], float] | None = None) -> None:
        if settings.measured and measure is None:
            raise NetAdaptError("measured=True needs a measure(arch) -> ms that times networks on the device")
        self.out = Path(out_dir)
        self.settings = settings
        self.latency = latency
        self.evaluate = evaluate
        self.on_event = on_event or (lambda kind, info: None)
        self.identity = identity or {}
        self.measure = measure

    def _timed(self, arch: Arch, history: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """A new iteration's latency fields: `predicted_ms` is the table's; with `settings.measured`, `measured_ms`
        is this network timed once on the device and `latency_ms`, what the loop steers by, the prediction
        corrected by `measured_correction` over it and the `history` before it; else both are the prediction."""
        predicted = self.latency(arch)
        if not self.settings.measured:
            return {"latency_ms": predicted, "predicted_ms": predicted, "measured_ms": None}
        assert self.measure is not None
        ms = float(self.measure(arch))
        fit = measured_correction([*_measured_points(history), (predicted, ms)])
        return {"latency_ms": predicted * fit(predicted), "predicted_ms": predicted, "measured_ms": ms}

    # ---- layout ----
    iterations_dir = property(lambda self: self.out / "iterations")
    final_dir = property(lambda self: self.out / "final")

    def _iter_dir(self, i: int) -> Path:
        return self.iterations_dir / f"{i:03d}"

    def done_iterations(self) -> list[int]:
        if not self.iterations_dir.is_dir():
            return []
        found = [int(p.name) for p in self.iterations_dir.iterdir()
                 if p.is_dir() and p.name.isdigit() and (p / "metrics.json").is_file()]
        return sorted(found)

    def load_iteration(self, i: int) -> Iteration:
        d = self._iter_dir(i)
        return Iteration(i, Arch.from_json((d / "spec.json").read_text()), (d / "weights.pt").read_bytes(),
                         json.loads((d / "metrics.json").read_text()))

    def _save_iteration(self, it: Iteration) -> None:
        atomic_dir(self._iter_dir(it.index), {"spec.json": it.arch.to_json().encode(), "weights.pt": it.weights,
                                               "metrics.json": _json(it.metrics)})

    # ---- state file: what was asked; a resume must ask the same ----
    def _state(self, start: Arch, weights: bytes) -> dict[str, Any]:
        # the weights' hash, not their length: any retrained start of one arch has the same byte count
        return {"settings": self.settings.to_dict(), "start_arch": start.to_string(),
                "start_weights_sha256": hashlib.sha256(weights).hexdigest(), **self.identity}

    def _check_state(self, start: Arch, weights: bytes) -> None:
        path = self.out / STATE_FILE
        want = self._state(start, weights)
        if path.is_file():
            have = json.loads(path.read_text())
            for key in sorted(set(want) | set(have)):
                a, b = have.get(key), want.get(key)
                if key == "settings" and isinstance(a, dict) and isinstance(b, dict):
                    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
                    if diff:
                        k = diff[0]
                        raise NetAdaptError(f"{self.out} holds a NetAdapt run with {k}={a.get(k)!r}; this one asks "
                                            f"{k}={b.get(k)!r}: resume with the same settings or use another --out")
                elif key == "start_weights_sha256" and a != b:
                    raise NetAdaptError(f"{self.out} holds a NetAdapt run that started from other weights (sha256 "
                                        f"{str(a)[:12]}, these are {str(b)[:12]}): use another --out")
                elif a != b:
                    raise NetAdaptError(f"{self.out} holds a NetAdapt run of another {key} ({a!r}); use another --out")
            return
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, _json(want))

    # ---- run ----
    def _request(self, index: int, arch: Arch, weights: bytes, iteration: int, train: bool = True,
             final: bool = False) -> FineTuneRequest:
        s = self.settings
        recipe = s.long_recipe() if final else s.short_recipe()
        return FineTuneRequest(index, arch.to_string(), weights, recipe, s.seed + iteration,
                               None if final else s.holdout, train)

    def _one(self, request: FineTuneRequest) -> FineTuneOutcome:
        out = self.evaluate([request])[0]
        if out.failed:
            raise NetAdaptError(f"evaluating {request.arch} failed: {out.reason}")
        return out

    def run(self, start_arch: Arch, start_weights: bytes) -> dict[str, Any]:
        """Run (or resume) to the target, then the long-term fine-tune; returns the summary (also result.json)."""
        s = self.settings
        result_path = self.out / "result.json"
        self._check_state(start_arch, start_weights)
        if result_path.is_file():
            summary = json.loads(result_path.read_text())
            self.on_event("finished_before", summary)
            return summary
        start_ms = self.latency(start_arch)
        floor = smallest(start_arch)
        floor_ms = self.latency(floor)
        if s.target_ms < start_ms and s.target_ms < floor_ms:
            raise NetAdaptError(f"target {s.target_ms:.3f} ms is unreachable: the minimum reachable latency is "
                                f"{floor_ms:.3f} ms (every prunable width at its smallest, from {start_ms:.3f} ms); "
                                "raise --target-ms")
        t0 = time.perf_counter()
        done = self.done_iterations()
        if not done:
            base = self._one(self._request(0, start_arch, start_weights, 0, train=False))
            val = self._one(self._request(0, start_arch, start_weights, 0, train=False, final=True))
            it = Iteration(0, start_arch, start_weights, {
                "iteration": 0, **self._timed(start_arch, []), "holdout_top1": base.top1,
                "holdout_loss": base.loss,
                "val_top1": val.top1, "move": None, "delta_ms": 0.0, "proposals": [], "wall_s": 0.0})
            self._save_iteration(it)
            done = [0]
        else:
            self.on_event("resumed", {"iteration": done[-1]})
        current = self.load_iteration(done[-1])
        history = [self.load_iteration(i).metrics for i in done]
        elapsed_before = sum(m.get("wall_s", 0.0) for m in history)
        if current.index == 0 and current.metrics["latency_ms"] <= s.target_ms:
            self.on_event("noop", {"start_ms": current.metrics["latency_ms"], "target_ms": s.target_ms})
        stopped: str | None = None
        while current.metrics["latency_ms"] > s.target_ms:
            i = current.index + 1
            if i > s.max_iterations:
                raise NetAdaptError(f"max_iterations {s.max_iterations} reached at "
                                    f"{current.metrics['latency_ms']:.3f} ms, above the target {s.target_ms:.3f} ms")
            try:
                current = self._iterate(current, i, start_ms, history)
            except Collapsed as exc:  # the last good network is the result, and the summary says why
                stopped = str(exc)
                self.on_event("stopped", {"iteration": i, "reason": stopped})
                break
            history.append(current.metrics)
        summary = self._finish(start_arch, start_ms, history, current, floor_ms,
                               elapsed_before + time.perf_counter() - t0, stopped)
        return summary

    def _iterate(self, current: Iteration, i: int, start_ms: float, history: list[dict[str, Any]]) -> Iteration:
        s = self.settings
        t0 = time.perf_counter()
        start_top1 = float(history[0]["holdout_top1"])
        cur_ms = float(current.metrics["latency_ms"])
        points = _measured_points(history)  # measured: the fitted correction carries over to the proposals
        fit = measured_correction(points) if s.measured and points else (lambda predicted_ms: 1.0)

        def steer_ms(arch: Arch) -> float:
            predicted = self.latency(arch)
            return predicted * fit(predicted)

        delta = s.delta_ms(i, start_ms, cur_ms)
        proposals = propose(current.arch, steer_ms, delta, cur_ms, s.max_cut)
        if not proposals:  # no single width meets δ within max_cut: the biggest cut each slot may make
            proposals = [p for p in (_biggest_cut(current.arch, kind, blocks, width, cur_ms, s.max_cut, steer_ms)
                                     for kind, blocks, width in slots(current.arch)) if p is not None]
        if not proposals:
            raise NetAdaptError(f"no width can shrink any further at {cur_ms:.3f} ms (target {s.target_ms:.3f} ms)")
        self.on_event("iteration", {"iteration": i, "delta_ms": delta, "current_ms": cur_ms,
                                    "proposals": len(proposals)})
        parent = load_model(current.arch, current.weights)
        requests = []
        for k, p in enumerate(proposals):
            _, pruned = p.move.apply(current.arch, parent)
            requests.append(self._request(k, p.arch, state_bytes(pruned), i, train=s.short_steps > 0))
        outcomes = {o.index: o for o in self.evaluate(requests)}
        rows = []
        for k, p in enumerate(proposals):
            o = outcomes[k]
            rows.append({"iteration": i, "proposal": k, "move": p.move.label, **p.move.to_dict(),
                         "latency_ms": p.latency_ms, "top1_before": o.top1_before, "top1": o.top1, "loss": o.loss,
                         "failed": o.failed, "reason": o.reason, "seconds": o.seconds})
        for r, bad in zip(rows, collapsed(rows, start_top1, s.collapse_gap, s.collapse_floor), strict=True):
            r["collapsed"] = bad and not r["failed"]
        land_lo = s.target_ms * (1 - s.land_tol)  # the landing window's bottom: nothing is gained below it
        landing = (land_lo, s.target_ms) if cur_ms - s.target_ms <= delta + 1e-12 else None  # this step can land
        win = select(rows, float(current.metrics["holdout_top1"]), cur_ms, s.selection, landing, useful_ms=land_lo)
        if win is None:
            if all(r["failed"] for r in rows):
                raise NetAdaptError(f"every proposal of iteration {i} failed (first: {rows[0]['reason']})")
            best = max(r["top1"] for r in rows if not r["failed"])
            raise Collapsed(f"every proposal of iteration {i} collapsed: the best reaches {100 * best:.1f}% "
                                f"holdout top-1, below {100 * s.collapse_floor:.0f}% of the start's "
                                f"{100 * start_top1:.1f}%; the target is out of reach without wrecking the network "
                                f"(raise the target or short_steps); stopped at {cur_ms:.3f} ms")
        for r in rows:
            r["selected"] = r["proposal"] == win
        chosen = proposals[win]
        timed = self._timed(chosen.arch, history)
        metrics = {"iteration": i, **timed, "steered_ms": chosen.latency_ms, "holdout_top1": rows[win]["top1"],
                   "holdout_top1_before": rows[win]["top1_before"],
                   "holdout_loss": rows[win]["loss"], "move": chosen.move.label, "delta_ms": delta,
                   "proposals": rows, "wall_s": time.perf_counter() - t0}
        weights = outcomes[win].weights
        assert weights is not None
        it = Iteration(i, chosen.arch, weights, metrics)
        self._save_iteration(it)
        self.on_event("selected", {"iteration": i, "move": chosen.move.label, "latency_ms": timed["latency_ms"],
                                   "predicted_ms": timed["predicted_ms"], "measured_ms": timed["measured_ms"],
                                   "top1": rows[win]["top1"], "target_ms": s.target_ms})
        return it

    def _finish(self, start_arch: Arch, start_ms: float, history: list[dict[str, Any]], last: Iteration,
                floor_ms: float, adapt_s: float, stopped: str | None = None) -> dict[str, Any]:
        s = self.settings
        t0 = time.perf_counter()
        self.write_trajectory(history)
        if s.long_epochs > 0 and last.index > 0:
            self.on_event("long", {"epochs": s.long_epochs})
            out = self._one(self._request(0, last.arch, last.weights, LONG_SEED_OFFSET, final=True))
        else:
            out = self._one(self._request(0, last.arch, last.weights, LONG_SEED_OFFSET, train=False, final=True))
        assert out.weights is not None
        first = history[0]
        summary = {
            "start_arch": start_arch.to_string(), "final_arch": last.arch.to_string(),
            "target_ms": s.target_ms, "start_predicted_ms": start_ms,
            "final_predicted_ms": last.metrics.get("predicted_ms", last.metrics["latency_ms"]),
            "start_measured_ms": first.get("measured_ms"), "final_measured_ms": last.metrics.get("measured_ms"),
            "latency_source": "measured" if s.measured else "table",
            "min_reachable_ms": floor_ms, "iterations": last.index, "noop": last.index == 0,
            "top1_before": first["val_top1"], "top1_after": out.top1, "val_loss_after": out.loss,
            "long_epochs": s.long_epochs if last.index > 0 else 0.0,
            "adapt_s": adapt_s, "long_s": time.perf_counter() - t0, "settings": s.to_dict(),
            "reached_target": last.metrics["latency_ms"] <= s.target_ms, "stopped": stopped,
        }
        atomic_dir(self.final_dir, {"spec.json": last.arch.to_json().encode(),
                                    "arch.txt": (last.arch.to_string() + "\n").encode(), "weights.pt": out.weights})
        atomic_write(self.out / "result.json", _json(summary))
        self.on_event("finished", summary)
        return summary

    def write_trajectory(self, history: list[dict[str, Any]]) -> None:
        """trajectory.parquet (one row per iteration) and proposals.parquet (every proposal of every iteration)."""
        import pandas as pd

        traj = pd.DataFrame([{k: m.get(k) for k in ("iteration", "latency_ms", "predicted_ms", "measured_ms",
                                                     "holdout_top1_before", "holdout_top1", "holdout_loss", "move",
                                                     "delta_ms", "wall_s")} for m in history])
        traj.to_parquet(self.out / "trajectory.parquet", index=False)
        props = [r for m in history for r in m.get("proposals", [])]
        if props:
            pd.DataFrame(props).to_parquet(self.out / "proposals.parquet", index=False)
