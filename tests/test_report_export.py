"""Run reports (report.png / report.md), per-trial export from a run dir, and the timm architecture definitions.

One tiny real run per module: a two-stage space with a latency table measured at 32 px in the fixture (seconds,
not the minutes a real space's table takes), three trials of one step on the built-in digits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

import latency as lat
import search_space as ss
from runs.cli import cli
from runs.outputs import export_trial, write_report
from runs.rundir import RunDir, RunError
from search_space.timm_def import arch_from_timm, expand_ratio, to_timm

FAST = lat.Protocol(warmup_runs=1, burst_runs=3, burst_min_s=0.0, passes=2, rounds=2,
                   max_rounds=2)


def invoke(args: list[str], tmp: Path):
    return CliRunner().invoke(cli, args, env={"BNECK_CACHE": str(tmp / "cache")})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 3-trial run (trial 0 = the space's preset, the reference) over a tiny space and table."""
    d = tmp_path_factory.mktemp("report")
    preset = ss.Arch(ss.Stem(8, act="hswish"),
                     (ss.Bneck(3, 8, 8, 1, True, "relu"), ss.Bneck(3, 24, 16, 2, True, "hswish")),
                     ss.Head(conv=32, hidden=64), num_classes=10, resolution=32)
    space = ss.space_around("tiny_space", preset, expand_ratios=(1.0, 3.0), width_ratios=(1.0,), kernels=(3, 5),
                            depth_delta=1, num_classes=10, resolution=32)
    (d / "space.json").write_text(json.dumps(space.to_dict()))
    lat.build_table(space, 32, out=d / "table.parquet", n_calibration=3, protocol=FAST, workers=1,
                    show_progress=False)
    cfg = {"space": str(d / "space.json"), "table": str(d / "table.parquet"), "latency_resolution": 32,
           "eval_cache": False, "keep_weights": 1, "searcher": "random"}
    (d / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = d / "run"
    res = invoke(["search", "--config", str(d / "run.yaml"), "--trials", "3", "--steps", "1", "--out", str(out),
                  "--no-progress", "--seed", "0"], d)
    assert res.exit_code == 0, res.output
    return out


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("weights", "export", "best", "report.*"))
    return dest


def frame(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "trials.parquet")


# ---- report ----------------------------------------------------------------------------------------------------
def test_report_writes_a_png_and_a_summary_with_the_front_and_the_reference(run, tmp_path):
    res = invoke(["report", str(run)], tmp_path)
    assert res.exit_code == 0, res.output
    png, md = run / "report.png", run / "report.md"
    assert f"wrote {png}" in res.output and f"wrote {md}" in res.output
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 300
    text = md.read_text()
    f = frame(run)
    assert "| trial | top-1 (%) | latency (ms) | reward | params | MAdds (M) | arch_id |" in text
    from runs.rundir import pareto_rows

    for _, r in pareto_rows(f).iterrows():  # every front trial is a table row
        assert f"| {int(r['trial'])} | {100 * r['accuracy']:.2f} | {r['latency_ms']:.3f} |" in text
    assert "## Reference" in text and "tiny_space seed (same recipe): trial 0" in text
    assert "3 complete, 0 failed" in text and "tiny_space" in text


def test_report_without_a_reference_trial_says_so(run, tmp_path):
    other = copy_run(run, tmp_path / "noref")
    f = frame(other)
    f["reference"] = False
    f.to_parquet(other / "trials.parquet", index=False)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    (other / "config.yaml").write_text(yaml.safe_dump({**cfg, "enqueue_preset": False}))
    png, md = write_report(RunDir(other))
    assert png.stat().st_size > 0
    assert "no reference trial (config `enqueue_preset: false`)" in md.read_text()


def test_report_of_a_run_without_completed_trials_or_of_a_non_run_dir_is_exit_2(run, tmp_path):
    failed = copy_run(run, tmp_path / "failed")
    f = frame(failed)
    f["state"], f["accuracy"] = "FAIL", float("nan")
    f.to_parquet(failed / "trials.parquet", index=False)
    with pytest.raises(RunError, match="no completed trials to report"):
        write_report(RunDir(failed))
    for target in (failed, tmp_path, tmp_path / "missing"):
        res = invoke(["report", str(target)], tmp_path)
        assert res.exit_code == 2, res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


# ---- export from a run dir -------------------------------------------------------------------------------------
def trial_with_weights(run: Path, kept: bool) -> int:
    f = frame(run)
    trials = [int(t) for t in f["trial"] if (run / "weights" / f"trial_{t}.pt").is_file() == kept]
    assert trials, f"no trial with kept={kept}"
    return trials[0]


def test_json_export_is_the_trial_arch_and_best_is_the_default(run, tmp_path):
    res = invoke(["export", str(run), "--format", "json"], tmp_path)
    assert res.exit_code == 0, res.output
    best = json.loads((run / "run.json").read_text())["best_trial"]
    path = run / "export" / f"trial_{best}.json"
    assert str(path) in res.output
    expected = ss.Arch.parse(frame(run).set_index("trial").loc[best, "arch"])
    assert ss.Arch.from_json(path.read_text()) == expected
    for t in frame(run)["trial"]:
        out = tmp_path / f"t{t}.json"
        assert invoke(["export", str(run), "--trial", str(t), "--format", "json", "--out", str(out)],
                      tmp_path).exit_code == 0
        assert ss.Arch.from_json(out.read_text()).to_string() == frame(run).set_index("trial").loc[t, "arch"]


def _input(arch: ss.Arch) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((2, 3, arch.resolution, arch.resolution)).astype(np.float32)


def _torch_out(arch: ss.Arch, x: np.ndarray, weights: Path | None) -> np.ndarray:
    model = ss.build_model(arch).eval()
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_onnx_export_carries_the_trained_weights(run, tmp_path):
    t = trial_with_weights(run, kept=True)
    out = tmp_path / "m.onnx"
    res = invoke(["export", str(run), "--trial", str(t), "--format", "onnx", "--out", str(out), "--json"], tmp_path)
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["weights_included"] is True and info["trial"] == t
    arch = ss.Arch.parse(info["arch"])
    x = _input(arch)[:1]  # exported with batch size 1
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    trained = _torch_out(arch, x, run / "weights" / f"trial_{t}.pt")
    np.testing.assert_allclose(got, trained, atol=1e-4)
    # not the untrained network: it is off by orders of magnitude more than the export error (init logits are small)
    off_untrained = np.abs(got - _torch_out(arch, x, None)).max()
    assert off_untrained > 1e-5 and off_untrained > 100 * np.abs(got - trained).max()


def test_torchscript_export_reloads_and_matches(run, tmp_path):
    t = trial_with_weights(run, kept=True)
    info = export_trial(RunDir(run), "torchscript", tmp_path / "m.pt", trial=t)
    assert info["weights_included"] is True
    arch = ss.Arch.parse(info["arch"])
    x = _input(arch)[:1]
    with torch.no_grad():
        got = torch.jit.load(str(tmp_path / "m.pt")).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _torch_out(arch, x, run / "weights" / f"trial_{t}.pt"), atol=1e-5)


def test_a_trial_without_kept_weights_exports_the_untrained_architecture_and_says_so(run, tmp_path):
    t = trial_with_weights(run, kept=False)
    res = invoke(["export", str(run), "--trial", str(t), "--format", "onnx", "--out", str(tmp_path / "u.onnx")],
                 tmp_path)
    assert res.exit_code == 0, res.output
    assert "UNTRAINED" in res.output
    info = export_trial(RunDir(run), "onnx", tmp_path / "u2.onnx", trial=t)
    assert info["weights_included"] is False and "untrained" in info["note"]


def test_timm_export_of_the_run_round_trips(run, tmp_path):
    res = invoke(["export", str(run), "--best", "--format", "timm"], tmp_path)
    assert res.exit_code == 0, res.output
    best = json.loads((run / "run.json").read_text())["best_trial"]
    doc = json.loads((run / "export" / f"trial_{best}.timm.json").read_text())
    arch = ss.Arch.parse(frame(run).set_index("trial").loc[best, "arch"])
    assert arch_from_timm(doc) == arch
    assert doc["num_classes"] == 10 and doc["resolution"] == 32 and doc["note"]


def test_unknown_or_unfinished_trial_is_one_line_naming_it_with_exit_2(run, tmp_path):
    res = invoke(["export", str(run), "--trial", "42", "--format", "json"], tmp_path)
    assert res.exit_code == 2
    assert len(res.output.strip().splitlines()) == 1 and "trial 42" in res.output and "0, 1, 2" in res.output
    failed = copy_run(run, tmp_path / "one_failed")
    f = frame(failed)
    f.loc[f["trial"] == 1, "state"] = "FAIL"
    f.to_parquet(failed / "trials.parquet", index=False)
    res = invoke(["export", str(failed), "--trial", "1", "--format", "json"], tmp_path)
    assert res.exit_code == 2 and "trial 1" in res.output and "FAIL" in res.output
    for args in (["--trial", "0", "--best"], ["--weights", "w.pt"], ["--resolution", "64"]):
        res = invoke(["export", str(run), "--format", "onnx", *args], tmp_path)
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    res = invoke(["export", "mobilenet_v3_small", "--trial", "1"], tmp_path)
    assert res.exit_code == 2 and "only for a run dir" in res.output


# ---- timm definitions ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2", "mobilenet_v1"])
def test_presets_round_trip_through_timm_exactly(name):
    arch = ss.preset(name, num_classes=10, resolution=96)
    doc = to_timm(arch)
    assert doc["mismatches"] == []
    assert arch_from_timm(json.loads(json.dumps(doc))) == arch


@pytest.mark.parametrize("space", list(ss.SPACES))
def test_random_space_archs_round_trip_through_timm(space):
    sp = ss.get_space(space)
    rng = np.random.default_rng(0)
    for _ in range(20):
        arch = sp.sample(rng)
        doc = to_timm(arch)
        assert arch_from_timm(doc) == arch
        assert doc["mismatches"] == []
        # every stage but the first block of each strides 1: timm forces that
        assert all("_s2_" not in s for stage in doc["arch_def"] for s in stage[1:])


def test_timm_strings_match_timms_own_definitions():
    """timm's published arch_defs (mobilenetv3.py, efficientnet.py, with repeats) decode to our presets."""
    v3s = [["ds_r1_k3_s2_e1_c16_se0.25_nre"], ["ir_r1_k3_s2_e4.5_c24_nre", "ir_r1_k3_s1_e3.67_c24_nre"],
           ["ir_r1_k5_s2_e4_c40_se0.25", "ir_r2_k5_s1_e6_c40_se0.25"], ["ir_r2_k5_s1_e3_c48_se0.25"],
           ["ir_r3_k5_s2_e6_c96_se0.25"], ["cn_r1_k1_s1_c576"]]
    v3l = [["ds_r1_k3_s1_e1_c16_nre"], ["ir_r1_k3_s2_e4_c24_nre", "ir_r1_k3_s1_e3_c24_nre"],
           ["ir_r3_k5_s2_e3_c40_se0.25_nre"], ["ir_r1_k3_s2_e6_c80", "ir_r1_k3_s1_e2.5_c80", "ir_r2_k3_s1_e2.3_c80"],
           ["ir_r2_k3_s1_e6_c112_se0.25"], ["ir_r3_k5_s2_e6_c160_se0.25"], ["cn_r1_k1_s1_c960"]]
    v2 = [["ds_r1_k3_s1_c16"], ["ir_r2_k3_s2_e6_c24"], ["ir_r3_k3_s2_e6_c32"], ["ir_r4_k3_s2_e6_c64"],
          ["ir_r3_k3_s1_e6_c96"], ["ir_r3_k3_s2_e6_c160"], ["ir_r1_k3_s1_e6_c320"]]
    v1 = [["dsa_r1_k3_s1_c64"], ["dsa_r2_k3_s2_c128"], ["dsa_r2_k3_s2_c256"], ["dsa_r6_k3_s2_c512"],
          ["dsa_r2_k3_s2_c1024"]]
    v3 = {"model": "MobileNetV3", "stem_size": 16, "act_layer": "hard_swish", "drop_rate": 0.2}
    assert arch_from_timm({**v3, "arch_def": v3s, "num_features": 1024}) == ss.mobilenet_v3_small()
    assert arch_from_timm({**v3, "arch_def": v3l, "num_features": 1280}) == ss.mobilenet_v3_large()
    assert arch_from_timm({"model": "EfficientNet", "arch_def": v2, "stem_size": 32, "num_features": 1280,
                           "act_layer": "relu6", "drop_rate": 0.2}) == ss.mobilenet_v2()
    # timm's MobileNetV1 uses ReLU6; ours (the paper's) ReLU
    assert arch_from_timm({"model": "EfficientNet", "arch_def": v1, "stem_size": 32, "num_features": 0,
                           "act_layer": "relu"}) == ss.mobilenet_v1()
    assert to_timm(ss.mobilenet_v3_small())["arch_def"][1] == v3s[1]


def test_expansion_ratio_digits_reproduce_the_exact_width():
    assert expand_ratio(24, 88) == "3.67" and expand_ratio(16, 72) == "4.5" and expand_ratio(80, 184) == "2.3"
    for cin in range(8, 400, 8):
        for expand in range(cin + 8, 8 * cin, 8):
            e = expand_ratio(cin, expand)
            assert ss.make_divisible(cin * float(e), 8) == expand, (cin, expand, e)
    with pytest.raises(ss.SpecError, match="expand width 44"):
        expand_ratio(16, 44)


def test_what_timm_cannot_reproduce_is_listed(tmp_path):
    v3 = ss.mobilenet_v3_small()
    odd = v3.replace(stem=ss.Stem(16, kernel=5, act="hswish"))
    doc = to_timm(odd)
    assert any("stem kernel 5" in m for m in doc["mismatches"]) and arch_from_timm(doc) == odd
    v2_se = ss.mobilenet_v2()
    v2_se = v2_se.replace(blocks=(v2_se.blocks[0], ss.Bneck(3, 96, 24, 2, True, "relu6"), *v2_se.blocks[2:]))
    doc = to_timm(v2_se)
    assert any(m.startswith("SE:") for m in doc["mismatches"]) and arch_from_timm(doc) == v2_se
    res = CliRunner().invoke(cli, ["export", "r64_n10,stem_k3_c16_hs_s2,ir_k3_e44_c16_re_s2,head_c96_hs_d0.2",
                                   "--format", "timm", "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "expand width 44" in res.output


@pytest.mark.parametrize(("doc", "needle"), [
    ({"arch_def": [["mqa_r1_k3_h4_s1_d64_c256"]]}, "block type 'mqa'"),
    ({"arch_def": [["ir_r1_k3_s1_e6_c24_nsw"]]}, "activation 'nsw'"),
    ({"arch_def": [["ir_r1_k3_s1_c24"]]}, "lacks option 'e'"),
    ({"arch_def": [["ir_r1_k3_s1_e1_c16"]]}, "expansion conv"),
    ({"arch_def": [["cn_r1_k1_s1_c64"], ["ir_r1_k3_s1_e6_c24"]]}, "cn block"),
    ({"arch_def": [["ds_r1_k3_s1_c16_noskip"]]}, "noskip"),
])
def test_unsupported_timm_definitions_are_clear_errors(doc, needle):
    base = {"model": "MobileNetV3", "stem_size": 16, "num_features": 1024}
    with pytest.raises(ss.SpecError, match=needle):
        arch_from_timm({**base, **doc})
