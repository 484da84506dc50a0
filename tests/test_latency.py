"""Latency tables on a tiny space at 32 px: build, predict, errors, resume after kill -9, kit, CLI."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import latency as lat
import search_space as ss
from latency.table import _drift_normalize
from runs.cli import cli

FAST = lat.Protocol(warmup_runs=2, warmup_s=0.0, min_runs=5, min_time_s=0.002, attempts=1, calibration_rounds=2)


def tiny_space() -> ss.SearchSpace:
    seed = ss.Arch(ss.Stem(8, act="hswish"),
                   (ss.Bneck(3, 8, 8, 1, False, "relu"), ss.Bneck(3, 24, 16, 2, True, "hswish"),
                    ss.Bneck(3, 48, 16, 1, True, "hswish")),
                   ss.Head(conv=32, hidden=64), num_classes=4, resolution=32)
    return ss.space_around("tiny_space", seed, expand_ratios=(1.0, 3.0), width_ratios=(1.0,), kernels=(3, 5),
                           depth_delta=0, num_classes=4, resolution=32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("lat") / "tiny.parquet"
    table, path = lat.build_table(tiny_space(), 32, out=out, n_calibration=5, protocol=FAST, workers=1,
                                  show_progress=False)
    return table, path


def test_build_measures_every_layer_config_and_records_metadata(built):
    table, path = built
    space = tiny_space()
    assert len(table) == len(space.layer_configs(32))
    assert set(table.entries["key"]) == {lat.layer_key(c) for c in space.layer_configs(32)}
    assert (table.entries["median_us"] > 0).all()
    meta = table.meta
    assert meta["resolution"] == 32 and meta["threads"] == 1
    assert meta["fingerprint"]["cores"] == os.cpu_count()
    assert meta["protocol"]["name"] == "bneck-ort/1"
    assert meta["reference"]["median_us"] > 0 and meta["reference"]["arch"] == space.seed.to_string()
    assert meta["calibration"]["n_nets"] == 6  # the seed + 5 sampled
    assert len(meta["calibration"]["coef"]) == len(meta["calibration"]["features"])
    assert not (path.with_name(path.name + ".kit") / "blocks").exists(), "graph files are removed after a build"


def test_saved_table_reloads_with_the_same_predictions(built):
    table, path = built
    again = lat.LatencyTable.load(path)
    arch = tiny_space().sample(3)
    assert again.predict_ms(arch) == pytest.approx(table.predict_ms(arch))
    assert again.space.to_dict() == tiny_space().to_dict()


def test_batch_predictions_equal_single_predictions(built):
    table, _ = built
    space = tiny_space()
    enc = space.sample_encoded(np.random.default_rng(0), 40)
    batch = table.predict_ms_batch(enc)
    single = [table.predict_ms(space.decode(row)) for row in enc]
    assert np.allclose(batch, single, rtol=1e-9)
    assert (batch > 0).all()


def test_prediction_is_the_calibrated_layer_sum(built):
    table, _ = built
    arch = tiny_space().sample(5)
    layers = arch.layers()
    raw = sum(float(table.entries.set_index("key").loc[lat.layer_key(c), "median_us"]) for c in layers)
    assert table.block_sum_us(arch) == pytest.approx(raw)
    cal = table.calibration
    feats = {"sum_us": raw, "layers": len(layers), "mparams": ss.params(arch) / 1e6}
    expected = sum(c * feats[f] for f, c in zip(cal["features"], cal["coef"], strict=True))
    assert table.predict_us(arch) == pytest.approx(expected)


def test_wrong_resolution_or_threads_is_an_error(built):
    table, _ = built
    arch = tiny_space().sample(1)
    with pytest.raises(lat.LatencyError, match="resolution 64 differs from the table's 32"):
        table.predict_ms(arch.replace(resolution=64))
    with pytest.raises(lat.LatencyError, match="threads 2 differs"):
        table.predict_ms(arch, threads=2)


def test_missing_entries_are_listed_with_the_command_that_adds_them(built):
    table, _ = built
    arch = tiny_space().seed
    blocks = list(arch.blocks)
    blocks[1] = ss.Bneck(7, 24, 16, 2, True, "hswish")  # kernel 7: no measured family to interpolate from
    odd = arch.replace(blocks=tuple(blocks))
    with pytest.raises(lat.LatencyError, match=r"no entry for 1 layer\(s\): bneck_r16_i8_e24_o16_k7.*--add SPEC"):
        table.predict_ms(odd)


def test_pruned_widths_are_interpolated_within_their_family(built):
    table, _ = built
    arch = tiny_space().seed
    pruned = arch.replace(blocks=(arch.blocks[0], ss.Bneck(3, 16, 16, 2, True, "hswish"), *arch.blocks[2:]))
    cfg = pruned.layers()[2]
    assert lat.layer_key(cfg) not in set(table.entries["key"])
    e = table.entries
    family = e[(e["size"] == cfg.size) & (e["kernel"] == 3) & e["se"] & (e["act"] == "hswish") & (e["stride"] == 2)]
    value = table.layer_us(cfg)
    assert family["median_us"].min() * 0.5 <= value <= family["median_us"].max() * 1.5
    assert table.predict_ms(pruned) > 0


def test_interpolation_is_exact_on_a_linear_family():
    """If a family's latencies follow the regressors exactly, an unmeasured width is predicted exactly."""
    rows = []
    for cin in (16, 24, 32):
        for e in (48, 72, 96, 144):
            for out in (16, 24, 32):
                us = 5 + 0.01 * cin * e + 0.2 * e + 0.003 * e * out
                rows.append({"kind": "bneck", "size": 14, "cin": cin, "expand": e, "out": out, "kernel": 3,
                             "stride": 1, "se": False, "act": "relu", "num_classes": 0, "median_us": us,
                             "key": f"k{cin}_{e}_{out}"})

    table = lat.LatencyTable(pd.DataFrame(rows), {"resolution": 14, "threads": 1})
    cfg = ss.LayerConfig("bneck", 14, 20, 64, 20, 3, 1, False, "relu")
    assert table.layer_us(cfg) == pytest.approx(5 + 0.01 * 20 * 64 + 0.2 * 64 + 0.003 * 64 * 20, rel=1e-9)


def test_add_extends_a_table_with_new_layers(tmp_path):
    out = tmp_path / "t.parquet"
    lat.build_table(tiny_space(), 32, out=out, n_calibration=3, protocol=FAST, workers=1, show_progress=False)
    arch = tiny_space().seed
    odd = arch.replace(blocks=(arch.blocks[0], ss.Bneck(3, 40, 16, 2, True, "hswish"), *arch.blocks[2:]))
    table, _ = lat.build_table(tiny_space(), 32, out=out, add=[odd], n_calibration=3, protocol=FAST, workers=1,
                               show_progress=False)
    assert table.predict_ms(odd) > 0
    assert len(table) == len(tiny_space().layer_configs(32)) + 1


def test_existing_table_needs_force(built):
    _, path = built
    with pytest.raises(lat.LatencyError, match="already exists: pass --force"):
        lat.build_table(tiny_space(), 32, out=path, protocol=FAST, workers=1, show_progress=False)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_table_file_is_a_clear_error(tmp_path, built, damage):
    _, path = built
    bad = tmp_path / "bad.parquet"
    data = path.read_bytes()
    bad.write_bytes({"garbage": b"not parquet at all" * 10, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(lat.LatencyError, match="corrupt or not a bneck table"):
        lat.LatencyTable.load(bad)


def test_missing_table_file_is_a_clear_error(tmp_path):
    with pytest.raises(lat.LatencyError, match="does not exist"):
        lat.LatencyTable.load(tmp_path / "nope.parquet")


def test_table_from_another_device_warns(tmp_path, built):
    table, _ = built
    other = lat.LatencyTable(table.entries, {**table.meta, "fingerprint": {**table.meta["fingerprint"],
                                                                           "cpu": "Some Other CPU 9000"}})
    path = other.save(tmp_path / "other.parquet")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lat.LatencyTable.load(path)
    assert any("another device" in str(w.message) and "Some Other CPU 9000" in str(w.message) for w in caught)


def test_drift_normalization_undoes_a_host_slowdown():
    # the host gets 2x slower halfway; every layer is really 100 us in the reference's units
    rows = []
    seq = 0
    for i in range(200):
        if i % 50 == 0:
            rows.append({"key": "reference", "seq": seq, "median_us": 1000.0 if i < 100 else 2000.0})
            seq += 1
        rows.append({"key": f"l{i}", "seq": seq, "median_us": 100.0 if i < 100 else 200.0})
        seq += 1
    rows.append({"key": "reference", "seq": seq, "median_us": 2000.0})
    normalized, _, _ = _drift_normalize(rows)
    vals = np.array([normalized[f"l{i}"] for i in range(200)])
    # away from the switch every layer normalizes to the same value
    assert np.allclose(vals[:40], vals[:40].mean()) and np.allclose(vals[160:], vals[:40].mean())


def test_calibration_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    sums = rng.uniform(500, 3000, 30)
    layers = rng.integers(12, 22, 30).astype(float)
    mparams = rng.uniform(1, 4, 30)
    whole = 1.1 * sums + 20.0 * layers
    cal = lat.fit_calibration({"sum_us": sums, "layers": layers, "mparams": mparams}, whole)
    assert cal["features"][:2] == ["sum_us", "layers"]
    assert cal["coef"][0] == pytest.approx(1.1, rel=1e-6) and cal["coef"][1] == pytest.approx(20.0, rel=1e-5)
    assert cal["loo_mape"] < 1e-6
    assert cal["uncorrected_bias"] < 0


def test_validate_reports_errors_and_writes_a_plot(tmp_path, built):
    table, _ = built
    result = lat.validate(table, n=4, seed=3, rounds=1, plot=tmp_path / "v.png")
    assert result["n"] == 5  # 4 samples + the seed network
    for key in ("within_5pct", "within_10pct", "mape", "kendall_tau", "spearman"):
        assert key in result
    assert 0.0 <= result["within_10pct"] <= 1.0
    assert Path(result["plot"]).stat().st_size > 1000
    ids = {a["arch_id"] for a in result["archs"]}
    assert not ids & {n["arch_id"] for n in table.calibration["nets"] if n["arch_id"] != tiny_space().seed.arch_id}


BUILD_SCRIPT = """
import sys
import latency as lat
sys.path.insert(0, {tests!r})
from test_latency import tiny_space, FAST
import dataclasses
slow = dataclasses.replace(FAST, min_time_s=0.03)
if __name__ == "__main__":
    lat.build_table(tiny_space(), 32, out={out!r}, n_calibration=3, protocol=slow, workers=1, show_progress=False,
                    resume={resume})
"""


@pytest.mark.slow
def test_resume_after_kill_keeps_measured_rows(tmp_path):
    out = tmp_path / "t.parquet"
    results = tmp_path / "t.parquet.kit" / "results.csv"
    script = tmp_path / "build.py"
    tests_dir = str(Path(__file__).parent)
    script.write_text(BUILD_SCRIPT.format(tests=tests_dir, out=str(out), resume=False))
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if results.exists() and len(results.read_text().splitlines()) > 12:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the build was killed before it finished"
    with open(results, newline="") as f:
        before = {r["key"]: r["wall_time"] for r in csv.DictReader(f) if r.get("wall_time") and r["key"] != "reference"}
    assert before
    with pytest.raises(lat.LatencyError, match="pass --resume"):
        lat.build_table(tiny_space(), 32, out=out, protocol=FAST, workers=1, show_progress=False)
    script.write_text(BUILD_SCRIPT.format(tests=tests_dir, out=str(out), resume=True))
    subprocess.run([sys.executable, str(script)], check=True, timeout=300)
    with open(results, newline="") as f:
        after = [r for r in csv.DictReader(f) if r["key"] != "reference"]
    keys = [r["key"] for r in after]
    assert len(keys) == len(set(keys)), "no layer is measured twice"
    for r in after:
        if r["key"] in before:
            assert r["wall_time"] == before[r["key"]], "rows measured before the kill are kept, not re-measured"
    table = lat.LatencyTable.load(out)
    assert len(table) == len(tiny_space().layer_configs(32))


@pytest.mark.slow
def test_kit_runs_in_a_venv_with_only_onnxruntime_and_numpy(tmp_path):
    kit = tmp_path / "kit"
    lat.write_kit(kit, tiny_space(), 32, tiny_space().seed, [tiny_space().sample(1), tiny_space().sample(2),
                                                              tiny_space().sample(4)], protocol=FAST, workers=1)
    venv = tmp_path / "venv"  # a bare interpreter that sees only onnxruntime and numpy (no network, no pip)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    only = tmp_path / "only"
    only.mkdir()
    for pkg in ("onnxruntime", "numpy"):
        src = Path(importlib.util.find_spec(pkg).origin).parent  # type: ignore[arg-type, union-attr]
        for p in src.parent.glob(f"{pkg}*"):  # the package and its bundled libraries (numpy.libs)
            if not p.name.endswith(".dist-info"):
                (only / p.name).symlink_to(p)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "only.pth").write_text(f"{only}\n")
    probe = subprocess.run([str(py), "-c", "import torch"], capture_output=True)
    assert probe.returncode != 0, "the kit venv must not have torch"
    subprocess.run([str(py), str(kit / "measure.py")], check=True, timeout=600, capture_output=True)
    assert (kit / "results.csv").exists() and (kit / "calibration.csv").exists()
    table = lat.LatencyTable.from_kit(kit)
    assert len(table) == len(tiny_space().layer_configs(32))
    assert table.predict_ms(tiny_space().sample(9)) > 0
    runner = CliRunner()
    result = runner.invoke(cli, ["latency", "import", str(kit / "results.csv"), "--out", str(tmp_path / "k.parquet")])
    assert result.exit_code == 0, result.output
    assert lat.LatencyTable.load(tmp_path / "k.parquet").meta["fingerprint"]["cores"] == os.cpu_count()


def test_import_of_an_unfinished_kit_says_what_to_do(tmp_path):
    kit = tmp_path / "kit"
    lat.write_kit(kit, tiny_space(), 32, tiny_space().seed, [], protocol=FAST, workers=1)
    with pytest.raises(lat.LatencyError, match=r"run the kit's measure\.py first"):
        lat.LatencyTable.from_kit(kit)


# ---- CLI ----------------------------------------------------------------------------------------------
def _user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


@pytest.mark.parametrize(("args", "fragment"), [
    (["latency", "build", "--space", "nope_space"], "unknown space 'nope_space'"),
    (["latency", "build", "--threads", "0"], "--threads"),
    (["latency", "build", "--resolution", "8"], "--resolution"),
    (["latency", "build", "--provider", "NoSuchProvider"], "not available here"),
    (["latency", "predict", "--table", "/nonexistent/t.parquet", "mobilenet_v3_small"], "does not exist"),
    (["latency", "measure", "mobilenet_v9"], "is no preset"),
    (["latency", "import", "/nonexistent/results.csv", "--out", "x.parquet"], "no manifest.json"),
])
def test_cli_bad_input_exits_2(args, fragment):
    _user_error(CliRunner().invoke(cli, args), fragment)


def test_cli_predict_and_measure(built):
    _, path = built
    runner = CliRunner()
    spec = tiny_space().sample(2).to_string()
    result = runner.invoke(cli, ["latency", "predict", "--table", str(path), spec, "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert row["predicted_ms"] > 0 and row["arch_id"] == ss.Arch.parse(spec).arch_id
    result = runner.invoke(cli, ["latency", "predict", "--table", str(path), "mobilenet_v3_small", "--json"])
    _user_error(result, "no entry for")  # V3-Small's layers are not in the tiny table
    result = runner.invoke(cli, ["latency", "measure", spec, "--json"])
    assert result.exit_code == 0, result.output
    m = json.loads(result.output)
    assert m["median_ms"] > 0 and m["p10_ms"] <= m["median_ms"] <= m["p90_ms"]
