"""The `bneck` command line: JSON outputs, exports, and user mistakes as one line with exit code 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from runs.cli import cli
from search_space import (
    Arch,
    build_model,
    count,
    get_space,
    mobilenet_v1,
    mobilenet_v3_small,
    mobilenet_v3_small_space,
)


def invoke(*args):
    # click >= 8.2: result.stdout and result.stderr are captured separately
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok_json(*args):
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def assert_user_error(result, *fragments):
    """Exit 2, no traceback, and the error is one line on stderr (click's usage lines may precede it)."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert lines[-1] == errors[0], result.stderr  # nothing after the error line
    assert all(line.startswith(("Usage:", "Try ")) for line in lines[:-1]), result.stderr
    for fragment in fragments:
        assert fragment in errors[0]
    return errors[0]


# ---- space list / show / sample ------------------------------------------------------------------------------------
def test_space_list_json():
    data = ok_json("space", "list", "--json")
    assert [p["name"] for p in data["presets"]] == ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large",
                                                   "mobilenet_v3_small"]
    small = data["presets"][3]
    assert (small["params"], small["madds"]) == count(mobilenet_v3_small())
    assert small["arch_id"] == mobilenet_v3_small().arch_id
    assert [s["name"] for s in data["spaces"]] == ["mobilenet_v3_large_space", "mobilenet_v3_small_space"]
    assert data["spaces"][1]["decisions"] == mobilenet_v3_small_space().num_decisions
    assert all(s["log10_size"] >= 15 for s in data["spaces"])


def test_space_list_table():
    result = invoke("space", "list")
    assert result.exit_code == 0
    for name in ("mobilenet_v1", "mobilenet_v3_small", "2,542,856", "mobilenet_v3_large_space"):
        assert name in result.stdout


def test_space_show_preset_json():
    data = ok_json("space", "show", "mobilenet_v3_small", "--json")
    for key in ("params", "madds", "resolution", "blocks", "arch_id", "arch", "spec"):
        assert key in data
    assert data["params"] == 2542856
    assert data["madds"] == 56_510_400
    assert data["resolution"] == 224 and data["num_classes"] == 1000
    assert Arch.parse(data["arch"]) == Arch.from_dict(data["spec"]) == mobilenet_v3_small()
    rows = data["blocks"]
    assert [r["type"] for r in rows] == ["stem"] + ["bneck"] * 11 + ["head"]
    assert sum(r["params"] for r in rows) == data["params"] and sum(r["madds"] for r in rows) == data["madds"]
    assert [r["residual"] for r in rows[1:-1]] == [mobilenet_v3_small().has_residual(i) for i in range(11)]


def test_space_show_with_overrides():
    data = ok_json("space", "show", "mobilenet_v3_small", "--width-mult", "0.75", "--resolution", "160",
                   "--num-classes", "10", "--json")
    expected = mobilenet_v3_small(0.75, resolution=160, num_classes=10)
    assert Arch.from_dict(data["spec"]) == expected
    assert (data["params"], data["madds"]) == count(expected)
    assert (data["resolution"], data["num_classes"]) == (160, 10)
    assert data["blocks"][0]["input_size"] == 160


def test_space_show_table_prints_the_arch_string():
    result = invoke("space", "show", "mobilenet_v1")
    assert result.exit_code == 0
    assert mobilenet_v1().to_string() in result.stdout
    assert mobilenet_v1().arch_id in result.stdout


def test_space_show_inline_string_json_and_spec_file(tmp_path):
    arch = mobilenet_v3_small_space().sample(3)
    from_string = ok_json("space", "show", arch.to_string(), "--json")
    from_json = ok_json("space", "show", arch.to_json(indent=None), "--json")
    spec = tmp_path / "arch.json"
    spec.write_text(arch.to_json())
    from_file = ok_json("space", "show", spec, "--resolution", "96", "--json")
    assert from_string["arch_id"] == from_json["arch_id"] == arch.arch_id
    assert Arch.from_dict(from_file["spec"]) == arch.replace(resolution=96)
    txt = tmp_path / "arch.txt"
    txt.write_text(arch.to_string() + "\n")
    assert ok_json("space", "show", txt, "--json")["arch_id"] == arch.arch_id


def test_space_show_space_json():
    data = ok_json("space", "show", "mobilenet_v3_small_space", "--json")
    space = mobilenet_v3_small_space()
    assert data["name"] == "mobilenet_v3_small_space"
    assert data["num_decisions"] == space.num_decisions
    assert data["layer_configs"] == len(space.layer_configs())
    assert data["log10_size"] == round(space.log10_size, 2)
    assert len(data["stages"]) == len(space.stages)


def test_space_show_space_with_overrides():
    data = ok_json("space", "show", "mobilenet_v3_small_space", "--resolution", "96", "--num-classes", "10",
                   "--json")
    assert (data["resolution"], data["num_classes"]) == (96, 10)
    assert data["layer_configs"] == len(mobilenet_v3_small_space(num_classes=10, resolution=96).layer_configs())


def test_space_sample_prints_json_lines_deterministically():
    first = invoke("space", "sample", "mobilenet_v3_small_space", "--n", "3", "--seed", "7")
    second = invoke("space", "sample", "mobilenet_v3_small_space", "--n", "3", "--seed", "7")
    assert first.exit_code == second.exit_code == 0
    assert first.stdout == second.stdout
    lines = first.stdout.splitlines()
    assert len(lines) == 3
    rows = [json.loads(line) for line in lines]
    archs = [Arch.parse(r["arch"]) for r in rows]
    space = mobilenet_v3_small_space()
    rng = np.random.default_rng(7)
    assert archs == [space.sample(rng) for _ in range(3)]
    for row, arch in zip(rows, archs, strict=True):
        assert row["arch_id"] == arch.arch_id
        assert (row["params"], row["madds"]) == count(arch)
    other = invoke("space", "sample", "mobilenet_v3_small_space", "--n", "3", "--seed", "8")
    assert other.exit_code == 0 and other.stdout != first.stdout


def test_space_sample_settings():
    result = invoke("space", "sample", "mobilenet_v3_large_space", "--resolution", "64", "--num-classes", "10")
    assert result.exit_code == 0
    (line,) = result.stdout.splitlines()
    arch = Arch.parse(json.loads(line)["arch"])
    assert (arch.resolution, arch.num_classes) == (64, 10)


# ---- export ----------------------------------------------------------------------------------------------------
def test_export_json(tmp_path):
    out = tmp_path / "v3s.json"
    info = ok_json("export", "mobilenet_v3_small", "--format", "json", "--out", out, "--json")
    assert info["path"] == str(out) and info["format"] == "json"
    assert Arch.from_json(out.read_text()) == mobilenet_v3_small()


def test_export_default_path(tmp_path):
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path):
        result = runner.invoke(cli, ["export", "mobilenet_v1", "--format", "json"])
        assert result.exit_code == 0, result.output
        path = Path("bneck_runs/export/mobilenet_v1.json")
        assert str(path) in result.stdout
        assert Arch.from_json(path.read_text()) == mobilenet_v1()


def test_export_onnx(tmp_path):
    out = tmp_path / "v3s.onnx"
    info = ok_json("export", "mobilenet_v3_small", "--resolution", "64", "--num-classes", "10", "--out", out,
                   "--json")
    assert info["format"] == "onnx" and info["max_abs_diff"] <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v3s.onnx"]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    (y,) = sess.run(None, {"input": x})
    with torch.no_grad():
        expected = build_model(mobilenet_v3_small(resolution=64, num_classes=10)).eval()(torch.from_numpy(x))
    np.testing.assert_allclose(y, expected.numpy(), atol=1e-5)


def test_export_human_output(tmp_path):
    out = tmp_path / "a.json"
    result = invoke("export", "mobilenet_v1", "--format", "json", "--out", out)
    assert result.exit_code == 0
    assert result.stdout.startswith(f"wrote {out} (")


def test_export_of_a_large_space_arch_string(tmp_path):
    """Every large-space architecture string is longer than a file name may be (255): it is a spec, not a path."""
    arch = get_space("mobilenet_v3_large_space").sample(np.random.default_rng(0))
    assert len(arch.to_string()) > 255
    info = ok_json("export", arch.to_string(), "--format", "json", "--out", tmp_path / "a.json", "--json")
    assert Arch.from_json(Path(info["path"]).read_text()) == arch


def test_export_to_an_unwritable_place_is_one_line_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_user_error(invoke("export", "mobilenet_v3_small", "--format", "json", "--out", blocker / "x.json"),
                      "cannot write", str(blocker / "x.json"))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores directory permissions
            return
        assert_user_error(invoke("export", "mobilenet_v3_small", "--format", "json", "--out", ro / "x.json"),
                          "cannot write")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


# ---- user mistakes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "fragments"), [
    (["space", "show", "mobilenet_v5"], ["'mobilenet_v5' is no preset", "mobilenet_v3_small"]),
    (["space", "show", "{bad json"], ["malformed JSON"]),
    (["space", "show", '{"stem": {"out": 16}, "blocks": [{"type": "bneck", "kernel": 4, "expand": 16, '
                       '"out": 16}]}'], ["block 0: kernel 4 not in {3,5,7}"]),
    (["space", "show", "does/not/exist.json"], ["'does/not/exist.json'"]),
    (["space", "show", "r224_n1000,stem_k3_c16_hs_s2,ir_k4_e16_c16_re_s1,head_d0.2"],
     ["block 0: kernel 4 not in {3,5,7}"]),
    (["space", "show", "mobilenet_v3_small", "--resolution", "8"], ["resolution 8 not in [32, 2048]"]),
    (["space", "show", "mobilenet_v3_small_space", "--resolution", "8"], ["resolution 8"]),
    (["space", "show", "mobilenet_v3_small", "--width-mult", "9"], ["width_mult 9.0 not in [0.1, 4.0]"]),
    (["space", "show", "r224_n1000,stem_k3_c16_hs_s2,ir_k3_e16_c16_re_s1,head_d0.2", "--width-mult", "0.5"],
     ["--width-mult applies to presets only"]),
    (["space", "show", "mobilenet_v3_small", "--resolution", "abc"], ["Invalid value for '--resolution'"]),
    (["space", "sample", "mobilenet_v9_space"], ["unknown space 'mobilenet_v9_space'"]),
    (["space", "sample", "mobilenet_v3_small_space", "--n", "0"], ["Invalid value for '--n'"]),
    (["space", "sample", "mobilenet_v3_small_space", "--resolution", "8"], ["resolution 8"]),
    (["export", "mobilenet_v3_small", "--format", "tflite"], ["Invalid value for '--format'", "tflite"]),
    (["export", "mobilenet_v3_small", "--resolution", "8"], ["resolution 8"]),
    (["export", "nope"], ["'nope' is no preset"]),
    (["export", "mobilenet_v3_small", "--format", "json", "--weights", "w.pt"], ["--weights has no meaning"]),
    (["space", "nope"], ["No such command 'nope'"]),
])
def test_bad_input_is_one_line_and_exit_2(args, fragments):
    assert_user_error(invoke(*args), *fragments)


def test_missing_spec_file_named_like_a_spec(tmp_path):
    missing = tmp_path / "spec.json"
    assert_user_error(invoke("space", "show", missing, "--json"), str(missing))


def test_bad_spec_file_names_the_file(tmp_path):
    spec = tmp_path / "spec.json"
    data = mobilenet_v3_small().to_dict()
    data["blocks"][7]["kernel"] = 4
    spec.write_text(json.dumps(data))
    assert_user_error(invoke("space", "show", spec), f"{spec}: block 7: kernel 4 not in {{3,5,7}}")


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.pt"
    out = tmp_path / "m.onnx"
    result = invoke("export", "mobilenet_v3_small", "--resolution", "64", "--weights", missing, "--out", out)
    assert_user_error(result, str(missing), "does not exist")
    assert not out.exists()


def test_weights_of_another_arch(tmp_path):
    weights = tmp_path / "v1.pt"
    torch.save(build_model(mobilenet_v1(resolution=64)).state_dict(), weights)
    result = invoke("export", "mobilenet_v3_small", "--resolution", "64", "--weights", weights, "--out",
                    tmp_path / "m.onnx")
    assert_user_error(result, str(weights), "does not fit this architecture")


def test_garbage_weights_file_is_one_line(tmp_path):
    weights = tmp_path / "garbage.pt"
    weights.write_bytes(b"\x00 not a checkpoint " * 10)
    result = invoke("export", "mobilenet_v3_small", "--resolution", "64", "--weights", weights, "--out",
                    tmp_path / "m.onnx")
    assert_user_error(result, str(weights), "is not a torch state dict")


@pytest.mark.parametrize("option", ["--resolution", "--num-classes", "--width-mult"])
def test_space_show_space_rejects_zero_settings(option):
    assert_user_error(invoke("space", "show", "mobilenet_v3_small_space", option, "0", "--json"))


def test_console_script_bad_preset_exits_2_without_traceback():
    script = Path(sys.executable).parent / "bneck"
    assert script.is_file(), "the package is not installed (pip install -e .)"
    proc = subprocess.run([str(script), "space", "show", "mobilenet_v5"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: 'mobilenet_v5' is no preset")


def test_usable_cpus_follow_affinity_and_cgroup_quota(tmp_path, monkeypatch):
    """Thread defaults come from the CPUs the process may use, not the machine's count (containers, taskset)."""
    import os

    from runs.config import RunConfig
    from search_space.host import cgroup_cpu_quota, usable_cpus

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    assert usable_cpus(tmp_path) == 2  # 1.5 CPUs of quota round up
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == 8
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(v1) == 3
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert usable_cpus(v1) == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert RunConfig(workers=1).worker_threads() == 1  # taskset -c 3: one thread, whatever os.cpu_count() says
