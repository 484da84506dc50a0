"""NetAdapt: proposals sized by the latency table, selection, the loop, its CLI, no-op, unreachable, resume after kill.

A three-block network (one residual group) and a synthetic 32 px latency table (linear in mult-adds: no host
timing) keep every run to seconds and the same on every machine; the kill test uses a real process and SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

import latency as lat
import search_space as ss
from evaluators import ProxyTrainer, Recipe, holdout_split, load_data
from runs.cli import cli
from runs.netadapt_run import inline_evaluate
from searchers.netadapt import (
    Move,
    NetAdapt,
    NetAdaptError,
    NetAdaptSettings,
    _keeps,
    collapsed,
    measured_correction,
    propose,
    select,
    slots,
    smallest,
    state_bytes,
)

BNECK = [sys.executable, "-m", "runs.cli"]
SEED_ARCH = ss.Arch(ss.Stem(16, act="hswish"),
                    (ss.Bneck(3, 48, 24, 2, True, "relu"), ss.Bneck(3, 72, 24, 1, True, "relu"),
                     ss.Bneck(3, 96, 40, 2, True, "hswish")),
                    ss.Head(conv=64, hidden=None), num_classes=10, resolution=32)
# 2-step fine-tunes drop the tiny start network from 94% to ~66%: a floor of 30% lets it reach the target
QUICK = ["--short-steps", "2", "--long-epochs", "0.25", "--step-frac", "0.05", "--threads", "1", "--no-progress",
         "--collapse-floor", "0.3"]


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> dict:
    """The trained start network (69 steps, 3 digits epochs), its weights file and a synthetic table of its space."""
    d = tmp_path_factory.mktemp("netadapt")
    space = ss.space_around("na_space", SEED_ARCH, expand_ratios=(2.0, 3.0, 4.0), width_ratios=(1.0, 1.5),
                            kernels=(3,), depth_delta=0, num_classes=10, resolution=32)
    (d / "space.json").write_text(json.dumps(space.to_dict()))
    # tests of the algorithm must not depend on this host's timing: a table with latency linear in mult-adds
    # plus a per-layer overhead (the shape of a measured one), the same on every machine
    table = lat.LatencyTable.from_layer_us(space, 32, lambda c: 5.0 + ss.layer_cost(c)[1] / 1e4)
    table_path = table.save(d / "table.parquet")
    data = load_data("builtin:digits", 32)
    result = ProxyTrainer(Recipe(steps=69, threads=1)).evaluate(SEED_ARCH, data, seed=0, return_model=True)
    torch.save(result.model.state_dict(), d / "start.pt")  # type: ignore[attr-defined]
    (d / "start.json").write_text(SEED_ARCH.to_json())
    start_ms = table.predict_ms(SEED_ARCH)
    return {"dir": d, "space": d / "space.json", "table": table, "table_path": table_path, "weights": d / "start.pt",
            "spec": d / "start.json",
            "model": result.model, "top1": result.top1, "start_ms": start_ms}  # type: ignore[attr-defined]


def cli_args(net: dict, out: Path, target_ms: float, *extra: str) -> list[str]:
    return ["netadapt", "--arch", str(net["spec"]), "--weights", str(net["weights"]), "--table",
            str(net["table_path"]), "--target-ms", f"{target_ms:.6f}", "--out", str(out), *QUICK, *extra]


@pytest.fixture(scope="module")
def finished(net, tmp_path_factory) -> dict:
    """One uninterrupted CLI run to 85% of the start's predicted latency."""
    out = tmp_path_factory.mktemp("na_run") / "out"
    target = 0.85 * net["start_ms"]
    res = CliRunner().invoke(cli, cli_args(net, out, target))
    assert res.exit_code == 0, res.output
    return {"out": out, "target": target, "output": res.output,
            "result": json.loads((out / "result.json").read_text())}


# ---- proposals --------------------------------------------------------------------------------------------
def test_slots_are_each_expansion_with_its_own_conv_and_each_residual_group():
    v3 = ss.mobilenet_v3_small()
    found = slots(v3)
    expands = [b for kind, b, _ in found if kind == "expand"]
    groups = [b for kind, b, _ in found if kind == "group"]
    assert (0,) not in expands  # block 0: expansion 16 == input 16, no expand conv
    assert len(expands) == 10
    assert groups == [(0,), (1, 2), (3, 4, 5), (6, 7), (8, 9, 10)]
    assert list(_keeps(96)) == list(range(88, 7, -8)) and list(_keeps(100)) == list(range(96, 7, -8))


def _accepts(arch: ss.Arch, move: Move) -> bool:
    try:
        move.arch(arch)
    except ss.SpecError:
        return False
    return True


@pytest.mark.parametrize("frac", [0.05, 0.5, 0.95])
def test_every_proposal_meets_delta_per_the_table_with_the_largest_such_width(net, frac):
    table, arch = net["table"], SEED_ARCH
    current = table.predict_ms(arch)
    biggest_cut = current - min(table.predict_ms(Move(k, b, w, 8).arch(arch)) for k, b, w in slots(arch)
                                if _accepts(arch, Move(k, b, w, 8)))
    delta = frac * biggest_cut  # measured tables differ run to run: δ relative to what one move can do
    proposals = propose(arch, table.predict_ms, delta)
    assert proposals, "the table must allow some proposal"
    for p in proposals:
        assert p.latency_ms == pytest.approx(table.predict_ms(p.arch))
        assert p.latency_ms <= current - delta + 1e-12
        assert p.move.keep % 8 == 0 and p.move.keep < p.move.width
        for wider in range(p.move.keep + 8, p.move.width, 8):  # every wider accepted width misses δ
            try:
                a = Move(p.move.kind, p.move.blocks, p.move.width, wider).arch(arch)
            except ss.SpecError:
                continue
            assert table.predict_ms(a) > current - delta
    assert len({(p.move.kind, p.move.blocks) for p in proposals}) == len(proposals)  # one per slot


def test_proposals_skip_widths_the_surgery_refuses(net):
    # block 1 consumes group (0,1)'s width 24 and expands to 72: a group width of 72 is impossible anyway, but
    # an expansion of block 2 equal to its input (24) would drop its expand conv: never proposed
    for p in propose(SEED_ARCH, net["table"].predict_ms, 1e-6):
        new = p.arch
        for i, b in enumerate(new.blocks):
            assert (b.expand != new.in_channels[i]) == (SEED_ARCH.blocks[i].expand != SEED_ARCH.in_channels[i])


def test_smallest_is_the_floor_of_every_move(net):
    floor = smallest(SEED_ARCH)
    assert propose(floor, net["table"].predict_ms, 1e-9) == [] or \
        all(p.latency_ms >= net["table"].predict_ms(floor) - 1e-9 for p in propose(floor, net["table"].predict_ms, 0))
    assert all(w <= 16 for _, _, w in slots(floor))


# ---- schedule and selection -------------------------------------------------------------------------------
def test_delta_schedule_decays_and_never_overshoots_what_is_left():
    s = NetAdaptSettings(target_ms=9.0, step_frac=0.02, decay=0.5)
    assert s.delta_ms(1, 10.0, 10.0) == pytest.approx(0.2)
    assert s.delta_ms(3, 10.0, 10.0) == pytest.approx(0.05)
    assert s.delta_ms(1, 10.0, 9.1) == pytest.approx(0.1)  # only 0.1 ms left to the target
    with pytest.raises(NetAdaptError, match="step_frac"):
        NetAdaptSettings(target_ms=1.0, step_frac=0)
    with pytest.raises(NetAdaptError, match="selection"):
        NetAdaptSettings(target_ms=1.0, selection="best")


def test_selection_ratio_accuracy_and_landing():
    rows = [{"top1": 0.90, "loss": 0.5, "latency_ms": 9.0, "failed": False},   # -5 pts for 1 ms: -0.05/ms
            {"top1": 0.94, "loss": 0.4, "latency_ms": 9.8, "failed": False},   # -1 pt for 0.2 ms: -0.05/ms, higher top1
            {"top1": 0.92, "loss": 0.3, "latency_ms": 9.5, "failed": False},   # -3 pts for 0.5 ms: -0.06/ms
            {"top1": 0.99, "loss": 0.1, "latency_ms": 9.9, "failed": True}]
    assert select(rows, 0.95, 10.0, "ratio") == 1
    assert select(rows, 0.95, 10.0, "accuracy") == 1
    rows[0]["top1"] = 0.93  # -2 pts for 1 ms: the best ratio, not the best accuracy
    assert select(rows, 0.95, 10.0, "ratio") == 0
    assert select(rows, 0.95, 10.0, "accuracy") == 1
    rows[2]["top1"] = 0.935  # within a point of the best accuracy (0.94)
    assert select(rows, 0.95, 10.0, "ratio", landing=(9.4, 9.6)) == 2  # the only one landing near the target
    rows[2]["top1"] = 0.80  # ... but not when landing costs real accuracy
    assert select(rows, 0.95, 10.0, "ratio", landing=(9.4, 9.6)) == 0
    assert select([dict(rows[3])], 0.95, 10.0, "ratio") is None


def test_latency_saved_past_the_target_is_worth_nothing():
    """The fresh `make run` case: every proposal loses accuracy, so the plain ratio takes the biggest cut (1.233 ->
    1.062 ms, 11% below a 1.189 ms target). Counting savings only down to the landing window's bottom, a cut that
    stops above the target at a smaller loss wins, and the next iteration lands."""
    rows = [{"top1": 0.7960, "loss": 0.60, "latency_ms": 1.0617, "failed": False},  # -1.45 pts for 0.172 ms
            {"top1": 0.8065, "loss": 0.59, "latency_ms": 1.1922, "failed": False},  # -0.40 pts for 0.041 ms
            {"top1": 0.8015, "loss": 0.58, "latency_ms": 1.1834, "failed": False}]  # -0.90 pts for 0.050 ms
    assert select(rows, 0.8105, 1.2336, "ratio") == 0
    assert select(rows, 0.8105, 1.2336, "ratio", useful_ms=1.189 * 0.98) == 1
    assert select(rows, 0.8105, 1.2336, "ratio", useful_ms=0.5) == 0  # far from the target: unchanged


def test_collapsed_proposals_are_never_selected():
    """The ratio rule's favourite here is a huge cut at a collapsed accuracy; it is excluded, by the gap to the
    iteration's best and by the floor relative to the start."""
    rows = [{"top1": 0.47, "loss": 2.0, "latency_ms": 3.0, "failed": False},  # -43 pts for 7 ms: best ratio
            {"top1": 0.88, "loss": 0.5, "latency_ms": 9.8, "failed": False},  # -2 pts for 0.2 ms
            {"top1": 0.86, "loss": 0.6, "latency_ms": 9.5, "failed": False},
            {"top1": 0.99, "loss": 0.1, "latency_ms": 9.9, "failed": True}]
    assert select(rows, 0.90, 10.0, "ratio") == 0  # what the ratio alone picks
    flags = collapsed(rows, start_top1=0.90, gap=0.05, floor_frac=0.8)
    assert flags == [True, False, False, True]
    marked = [{**r, "collapsed": f} for r, f in zip(rows, flags, strict=True)]
    assert select(marked, 0.90, 10.0, "ratio") == 2
    assert collapsed(rows, start_top1=1.0, gap=0.5, floor_frac=0.87)[:3] == [True, False, True]  # the floor
    assert select([{**r, "collapsed": True} for r in rows], 0.90, 10.0, "ratio") is None


def test_no_proposal_cuts_more_than_max_cut_of_a_slot(net):
    table, arch = net["table"], SEED_ARCH
    current = table.predict_ms(arch)
    cuts = [current - table.predict_ms(Move(k, b, w, 8).arch(arch)) for k, b, w in slots(arch)
            if _accepts(arch, Move(k, b, w, 8))]
    delta = 0.3 * max(cuts)  # some slot must cut deep for it, another needs less
    free = propose(arch, table.predict_ms, delta)
    capped = propose(arch, table.predict_ms, delta, max_cut=0.5)
    assert any(p.move.keep < 0.5 * p.move.width for p in free), free  # the cap changes something here
    assert capped and all(p.move.keep >= 0.5 * p.move.width for p in capped)
    assert {(p.move.kind, p.move.blocks) for p in capped} <= {(p.move.kind, p.move.blocks) for p in free}


def test_when_no_capped_cut_meets_delta_the_fallback_still_respects_max_cut(net, tmp_path):
    """δ no slot can meet within max_cut: the iteration's proposals are each slot's biggest *allowed* cut
    (a fallback that ignored the cap cut a 576-wide expansion to 8 in one step on fashion)."""
    current = net["table"].predict_ms(SEED_ARCH)
    settings = NetAdaptSettings(target_ms=0.6 * current, step_frac=0.35, max_cut=0.5, short_steps=0,
                                long_epochs=0.0, threads=1, collapse_floor=0.0, max_iterations=1)
    na = NetAdapt(tmp_path / "na", settings, net["table"].predict_ms, inline_evaluate(settings))
    with pytest.raises(NetAdaptError, match="max_iterations 1 reached"):
        na.run(SEED_ARCH, state_bytes(net["model"]))
    props = pd.DataFrame(na.load_iteration(1).metrics["proposals"])
    assert len(props) and (props["keep"] >= 0.5 * props["width"]).all(), props[["move", "width", "keep"]]
    assert (props["latency_ms"] > current - 0.35 * current).all()  # none met δ: these are the fallback's


def test_netadapt_stops_at_the_last_good_network_when_every_proposal_collapses(net, tmp_path):
    """A floor no proposal can meet: the result is the last good iteration, and it says the target was missed."""
    target = 0.5 * net["table"].predict_ms(SEED_ARCH)
    settings = NetAdaptSettings(target_ms=target, short_steps=1, long_epochs=0.0, step_frac=0.3, threads=1,
                                collapse_floor=0.999)
    summary = NetAdapt(tmp_path / "na", settings, net["table"].predict_ms, inline_evaluate(settings)).run(
        SEED_ARCH, state_bytes(net["model"]))
    assert summary["iterations"] == 0 and not summary["reached_target"]
    assert "collapsed" in summary["stopped"]
    assert f"stopped at {net['table'].predict_ms(SEED_ARCH):.3f} ms" in summary["stopped"]  # the number, not "{...}"
    assert (tmp_path / "na" / "final" / "weights.pt").is_file()


def _device(table: lat.LatencyTable, calls: list[ss.Arch], noise: float = 0.0) -> Any:
    """A device the table misjudges the way the real one does (netadapt_40pct.json): every channel removed from
    a block's expansion costs less than predicted, so a network grows slower than predicted as it is pruned;
    each measurement off by up to ±`noise` (seeded: a repeated measurement of V3-Small here spread ±1.5%)."""
    widths = [b.expand for b in SEED_ARCH.blocks]
    rng = np.random.default_rng(0)

    def measure(arch: ss.Arch) -> float:
        calls.append(arch)
        removed = sum(w - b.expand for w, b in zip(widths, arch.blocks, strict=True)) / sum(widths)
        return table.predict_ms(arch) * (1.0 + 0.8 * removed) * (1.0 + noise * rng.uniform(-1, 1))

    return measure


def test_the_measured_correction_fits_a_line_and_averages_noise():
    exact = [(p, p * (1.5 - 0.2 * p)) for p in (2.0, 1.9, 1.8, 1.7, 1.6)]
    assert measured_correction(exact)(1.65) == pytest.approx(1.5 - 0.2 * 1.65)
    assert measured_correction(exact[:2])(1.95) == pytest.approx(1.5 - 0.2 * 1.95)
    assert measured_correction(exact[:1])(1.0) == pytest.approx(1.5 - 0.2 * 2.0)
    assert measured_correction(exact)(0.1) == pytest.approx(1.5 - 0.2 * 1.6)  # no extrapolation past the points
    rng = np.random.default_rng(1)
    errors = {"last": [], "fit": []}
    for _ in range(200):
        pts = [(p, p * 1.05 * (1 + rng.uniform(-0.03, 0.03))) for p in np.linspace(2.0, 1.6, 8)]
        errors["last"].append(abs(pts[-1][1] / pts[-1][0] - 1.05))
        errors["fit"].append(abs(measured_correction(pts)(1.6) - 1.05))
    assert np.mean(errors["fit"]) < 0.75 * np.mean(errors["last"])
    bent = [*exact[:3], (1.7, 1.7 * 9.0), (1.6, 1.6 * 9.0)]  # only the last `window` points count
    assert measured_correction(bent, window=2)(1.65) == pytest.approx(9.0)


def test_measured_netadapt_prunes_until_the_device_meets_the_target(net, tmp_path):
    """Steered by the table alone, the result misses the target as measured; `measured` times the start and each
    selected network once, corrects the proposals by the current measured/predicted ratio, and lands within the
    landing window of the target as measured (below it as predicted)."""
    table, start_w = net["table"], state_bytes(net["model"])
    target = 0.8 * net["start_ms"]
    kw = {"target_ms": target, "step_frac": 0.05, "short_steps": 0, "long_epochs": 0.0, "threads": 1,
          "collapse_floor": 0.0}
    plain_calls: list[ss.Arch] = []
    plain = NetAdapt(tmp_path / "plain", NetAdaptSettings(**kw), table.predict_ms,
                     inline_evaluate(NetAdaptSettings(**kw))).run(SEED_ARCH, start_w)
    assert plain["final_predicted_ms"] <= target
    assert _device(table, plain_calls)(ss.Arch.parse(plain["final_arch"])) > 1.02 * target  # misses, as measured

    calls: list[ss.Arch] = []
    settings = NetAdaptSettings(**kw, measured=True)
    r = NetAdapt(tmp_path / "measured", settings, table.predict_ms, inline_evaluate(settings),
                 measure=_device(table, calls, noise=0.02)).run(SEED_ARCH, start_w)
    assert r["latency_source"] == "measured" and r["reached_target"]
    true_ms = _device(table, [])(ss.Arch.parse(r["final_arch"]))  # the noiseless device
    assert target * (1 - settings.land_tol) - 0.05 * net["start_ms"] <= true_ms <= 1.03 * target
    assert r["final_predicted_ms"] < 0.97 * target  # the table's prediction of the result is below the target
    assert r["iterations"] > plain["iterations"]
    assert len(calls) == r["iterations"] + 1 and calls[0] == SEED_ARCH  # the start, then each selected network
    traj = pd.read_parquet(tmp_path / "measured" / "trajectory.parquet")
    assert traj["measured_ms"].notna().all() and traj["latency_ms"].iloc[-1] > 1.2 * traj["predicted_ms"].iloc[-1]
    na = NetAdapt(tmp_path / "measured", NetAdaptSettings(**kw), table.predict_ms, inline_evaluate(settings))
    true = np.array([_device(table, [])(na.load_iteration(i).arch) for i in traj["iteration"]])
    assert np.mean(np.abs(traj["latency_ms"] / true - 1)) < 0.02  # steered by the device within its noise
    assert r["final_measured_ms"] == traj["measured_ms"].iloc[-1]


def test_measured_needs_a_measurement_and_a_table_of_this_host(net, tmp_path):
    with pytest.raises(NetAdaptError, match="needs a measure"):
        NetAdapt(tmp_path / "x", NetAdaptSettings(target_ms=1.0, measured=True), net["table"].predict_ms,
                 inline_evaluate(NetAdaptSettings(target_ms=1.0)))
    res = CliRunner().invoke(cli, cli_args(net, tmp_path / "syn", 0.8 * net["start_ms"], "--measured"))
    assert res.exit_code == 2 and "synthetic (not measured)" in res.output and "Traceback" not in res.output
    t = net["table"]
    other = lat.LatencyTable(t.entries, {**t.meta, "protocol": {"name": "bneck-ort/3"},
                                         "fingerprint": {**t.meta["fingerprint"], "cpu": "Some Board A55"}})
    args = cli_args({**net, "table_path": other.save(tmp_path / "other.parquet")}, tmp_path / "o",
                    0.8 * net["start_ms"], "--measured")
    with pytest.warns(UserWarning, match="another device"):  # loading warns; measuring on it refuses
        res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "another device (cpu: Some Board A55 vs" in res.output
    assert not (tmp_path / "o").exists()  # nothing left behind


def test_holdout_split_is_disjoint_stratified_and_keeps_normalization():
    data = load_data("builtin:digits", 32)
    h = holdout_split(data, 0.25, seed=0)
    assert len(h.y_train) + len(h.y_val) == len(data.y_train)
    assert h.mean == data.mean and h.std == data.std and h.fingerprint != data.fingerprint
    assert set(np.unique(h.y_val)) == set(range(10))
    rows = {x.tobytes() for x in np.asarray(h.x_train)}
    assert not any(x.tobytes() in rows for x in np.asarray(h.x_val)[:50])
    again = holdout_split(data, 0.25, seed=0)
    assert np.array_equal(again.y_val, h.y_val)


# ---- the loop -------------------------------------------------------------------------------------------------
def test_run_reaches_the_target_and_writes_every_output(net, finished):
    out, r = finished["out"], finished["result"]
    target = finished["target"]
    assert target * 0.8 <= r["final_predicted_ms"] <= target  # reached, not far below
    final = ss.Arch.from_json((out / "final" / "spec.json").read_text())
    assert net["table"].predict_ms(final) == pytest.approx(r["final_predicted_ms"])
    assert r["iterations"] >= 2 and not r["noop"]
    traj = pd.read_parquet(out / "trajectory.parquet")
    assert list(traj["iteration"]) == list(range(r["iterations"] + 1))
    assert (np.diff(traj["latency_ms"]) < 0).all()
    props = pd.read_parquet(out / "proposals.parquet")
    assert (props.groupby("iteration")["selected"].sum() == 1).all()
    assert sorted(props.loc[props["selected"], "move"]) == sorted(traj["move"].iloc[1:])
    # each proposal is scored right after its cut too: the plot and report show what the fine-tune recovered
    assert props["top1_before"].between(0, 1).all()
    assert traj["holdout_top1_before"].iloc[1:].tolist() == props.loc[props["selected"], "top1_before"].tolist()
    assert (props["top1_before"] != props["top1"]).any()  # scored before the 2 fine-tune steps, not after
    # every iteration's latency cut met its δ (except the last, which may only need what was left)
    for i in range(1, r["iterations"]):
        assert traj["latency_ms"][i - 1] - traj["latency_ms"][i] >= traj["delta_ms"][i] - 1e-9
    model = ss.build_model(final)
    ss.load_weights(model, out / "final" / "weights.pt")  # strict load: weights match the pruned spec
    for name in ("final/model.onnx", "trajectory.png", "netadapt.json", "iterations/000/weights.pt"):
        assert (out / name).is_file(), name
    assert r["top1_before"] == pytest.approx(net["top1"])  # the start scored on the same validation split
    assert 0 < r["top1_after"] <= 1


def test_same_settings_give_the_same_result_with_two_workers(net, finished, tmp_path):
    out = tmp_path / "w2"
    res = CliRunner().invoke(cli, cli_args(net, out, finished["target"], "--workers", "2"))
    assert res.exit_code == 0, res.output
    r = json.loads((out / "result.json").read_text())
    assert r["final_arch"] == finished["result"]["final_arch"]
    assert r["top1_after"] == pytest.approx(finished["result"]["top1_after"])


def test_target_already_met_is_a_noop_with_a_message(net, tmp_path):
    out = tmp_path / "noop"
    res = CliRunner().invoke(cli, cli_args(net, out, net["start_ms"] * 1.01))
    assert res.exit_code == 0, res.output
    assert "nothing to prune (no-op)" in res.output
    r = json.loads((out / "result.json").read_text())
    assert r["noop"] and r["iterations"] == 0 and r["final_arch"] == r["start_arch"]
    assert r["top1_after"] == pytest.approx(net["top1"])  # scored as is, no fine-tune
    state = torch.load(out / "final" / "weights.pt", weights_only=True)
    for k, v in net["model"].state_dict().items():
        assert torch.equal(state[k], v), k


def test_unreachable_target_is_one_line_naming_the_minimum(net, tmp_path):
    floor_ms = net["table"].predict_ms(smallest(SEED_ARCH))
    res = CliRunner().invoke(cli, cli_args(net, tmp_path / "u", floor_ms * 0.5))
    assert res.exit_code == 2
    line = res.output.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "unreachable" in line and f"{floor_ms:.3f} ms" in line
    settings = NetAdaptSettings(target_ms=floor_ms * 0.5)
    with pytest.raises(NetAdaptError, match="minimum reachable latency"):
        NetAdapt(tmp_path / "lib", settings, net["table"].predict_ms, inline_evaluate(settings)).run(
            SEED_ARCH, state_bytes(net["model"]))


@pytest.mark.parametrize(("args", "needle"), [
    (["--target-ms", "1"], "give --run DIR"),
    (["--arch", "x.json", "--target-ms", "1"], "--arch needs --weights"),
    (["--arch", "mobilenet_v3_small", "--weights", "missing.pt", "--table", "t.parquet", "--target-ms", "1"],
     "--table t.parquet: no such file"),
])
def test_usage_errors_exit_2(tmp_path, args, needle):
    res = CliRunner().invoke(cli, ["netadapt", *args])
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output


def test_resume_with_other_settings_is_refused(net, finished):
    res = CliRunner().invoke(cli, cli_args(net, finished["out"], finished["target"], "--selection", "accuracy"))
    assert res.exit_code == 2 and "selection='ratio'" in res.output


def test_finished_run_is_not_redone(net, finished):
    before = (finished["out"] / "result.json").stat().st_mtime_ns
    res = CliRunner().invoke(cli, cli_args(net, finished["out"], finished["target"]))
    assert res.exit_code == 0 and "already finished" in res.output
    assert (finished["out"] / "result.json").stat().st_mtime_ns == before


def test_a_retrained_start_is_not_taken_for_the_finished_run(net, finished, tmp_path):
    """Same arch, other weights (the same byte count once loaded and serialized, which is what the state held
    before): refused, not "already finished" (the state holds a hash)."""
    import torch

    state = torch.load(net["weights"], weights_only=True)
    other = {k: (v + 0.01 if v.is_floating_point() else v) for k, v in state.items()}
    path = tmp_path / "retrained.pt"
    torch.save(other, path)
    args = cli_args(net, finished["out"], finished["target"])
    args[args.index(str(net["weights"]))] = str(path)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "started from other weights" in res.output, res.output


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_resume_after_kill_continues_from_the_last_iteration(net, finished, tmp_path):
    out = tmp_path / "killed"
    cmd = BNECK + cli_args(net, out, finished["target"])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "iterations" / "001" / "metrics.json").is_file():
        assert proc.poll() is None, "netadapt ended before its first iteration"
        assert time.time() < deadline
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert workers, "the local executor runs proposals in worker processes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "result.json").exists()
    deadline = time.time() + 15
    while any(Path(f"/proc/{w}").exists() for w in workers):  # orphaned workers notice and exit
        assert time.time() < deadline, "worker processes outlived their killed driver"
        time.sleep(0.2)
    done_before = sorted(p.name for p in (out / "iterations").iterdir() if p.name.isdigit())
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    said = "".join(res.stderr.split())  # rich wraps long lines
    assert f"resuming{out}afteriteration{int(done_before[-1])}" in said
    r = json.loads((out / "result.json").read_text())
    assert r["final_arch"] == finished["result"]["final_arch"]  # deterministic: resumed == uninterrupted
    assert r["top1_after"] == pytest.approx(finished["result"]["top1_after"])


def test_bneck_run_prunes_the_best_trial_and_reports_it(net, tmp_path):
    cfg = {"space": str(net["space"]), "table": str(net["table_path"]), "latency_resolution": 32, "steps": 69,
           "trials": 2, "searcher": "random", "eval_cache": False, "progress": False, "threads": 1,
           "exports": ["json"],
           "netadapt": {"target_frac": 0.9, "step_frac": 0.05, "short_steps": 1, "long_epochs": 0.1, "workers": 1}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["run", "--config", str(tmp_path / "run.yaml"), "--out", str(run)],
                             env={"BNECK_CACHE": str(tmp_path / "cache")})
    assert res.exit_code == 0, res.output
    # measured: auto (the default) steers by the table when it cannot time networks here, and says why
    assert "NetAdapt steers by the table's predictions, not by timings: the table" in res.output
    assert "is synthetic (not measured)" in res.output
    best = json.loads((run / "best" / "best.json").read_text())
    r = json.loads((run / "netadapt" / "result.json").read_text())
    assert r["latency_source"] == "table"
    assert r["target_ms"] == pytest.approx(0.9 * best["latency_ms"])
    assert r["final_predicted_ms"] <= r["target_ms"]
    assert ss.Arch.parse(r["start_arch"]).arch_id == ss.Arch.parse(best["arch"]).arch_id
    assert "## NetAdapt" in (run / "report.md").read_text()
    assert (run / "netadapt" / "final" / "model.onnx").is_file()
    # the same run dir through `bneck netadapt --run`: its finished NetAdapt is not redone
    res = CliRunner().invoke(cli, ["netadapt", "--run", str(run), "--target-ms", repr(r["target_ms"]),
                                   "--step-frac", "0.05", "--short-steps", "1", "--long-epochs", "0.1",
                                   "--selection", "ratio", "--no-progress", "--threads", "1"])
    assert res.exit_code == 0 and "already finished" in res.output, res.output
    res = CliRunner().invoke(cli, ["netadapt", "--run", str(run), "--trial", "7", "--target-ms", "1"])
    assert res.exit_code == 2 and "trial 7 is not in" in res.output


@pytest.mark.slow
def test_bneck_run_resumes_after_kill_9_during_netadapt(net, tmp_path):
    """`bneck run --resume DIR` continues where a kill left the pipeline: the search is not redone, NetAdapt
    goes on from its last finished iteration with the same target, then export and report."""
    cfg = {"space": str(net["space"]), "table": str(net["table_path"]), "latency_resolution": 32, "steps": 69,
           "trials": 2, "searcher": "random", "eval_cache": False, "progress": False, "threads": 1,
           "exports": ["json"], "confirm": None,
           "netadapt": {"target_frac": 0.8, "step_frac": 0.02, "short_steps": 5, "long_epochs": 0.1, "workers": 1,
                        "collapse_floor": 0.3}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    env = {**os.environ, "BNECK_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([*BNECK, "run", "--config", str(tmp_path / "run.yaml"), "--out", str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    first = run / "netadapt" / "iterations" / "001" / "metrics.json"
    deadline = time.time() + 300
    while not first.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.is_file(), proc.stderr.read()
    assert not (run / "netadapt" / "result.json").exists()  # killed mid-NetAdapt
    trials_before = pd.read_parquet(run / "trials.parquet")
    res = subprocess.run([*BNECK, "run", "--resume", str(run)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    said = " ".join(res.stderr.split())  # rich wraps long lines
    assert "resuming" in said and "after iteration" in said, said
    assert "Using an existing study" not in said  # Optuna's own logging stays quiet
    pd.testing.assert_frame_equal(pd.read_parquet(run / "trials.parquet")[["trial", "arch", "accuracy"]],
                                  trials_before[["trial", "arch", "accuracy"]])
    r = json.loads((run / "netadapt" / "result.json").read_text())
    assert r["final_predicted_ms"] <= r["target_ms"] or r["stopped"]
    assert "## NetAdapt" in (run / "report.md").read_text() and (run / "best" / "spec.json").is_file()
    bad = CliRunner().invoke(cli, ["run", "--resume", str(run), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "no --config or --out" in bad.output
