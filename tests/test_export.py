"""Export: self-contained ONNX that onnxruntime runs like torch, TorchScript, JSON, and weight loading."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.external_data_helper import uses_external_data
from torch import nn

from search_space import (
    Arch,
    SpecError,
    build_model,
    export_arch,
    load_weights,
    mobilenet_v1,
    mobilenet_v3_small,
)

ARCHS = {"v3_small": lambda: mobilenet_v3_small(resolution=64, num_classes=10),
         "v1": lambda: mobilenet_v1(resolution=64, num_classes=10)}


def randomized_state(arch, seed=0):
    """A state dict whose BN statistics/affines, biases and linear weights are random, with O(1) outputs.

    Freshly initialized models have zero BN means, unit variances and 0.01-scale classifiers: their outputs are
    ~0 and an export that dropped BN or biases would still match within 1e-4. These weights cannot hide that.
    """
    model = build_model(arch, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith(("running_var", ".bn.weight")):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.2)
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (3 / m.in_features**0.5))
    return model.eval().state_dict()


def torch_model(arch, state):
    model = build_model(arch)
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(params=sorted(ARCHS))
def weighted(request, tmp_path):
    arch = ARCHS[request.param]()
    state = randomized_state(arch)
    weights = tmp_path / "weights" / "w.pt"
    weights.parent.mkdir()
    torch.save(state, weights)
    return arch, state, weights


def test_onnx_is_one_file_and_matches_torch(weighted, tmp_path):
    arch, state, weights = weighted
    out_dir = tmp_path / "out"
    out = out_dir / "model.onnx"
    info = export_arch(arch, out, "onnx", weights=weights)
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.onnx"]  # no .data or .tmp siblings
    assert info["path"] == str(out) and info["format"] == "onnx" and info["arch_id"] == arch.arch_id
    assert info["bytes"] == out.stat().st_size
    assert 0 <= info["max_abs_diff"] <= 1e-4

    proto = onnx.load(str(out), load_external_data=False)
    assert not any(uses_external_data(t) for t in proto.graph.initializer)
    onnx.checker.check_model(proto)

    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(arch, state)(torch.from_numpy(x)).numpy()
    assert expected.std() > 0.3  # outputs are O(1): the comparison below means something
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert got.shape == (1, 10)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)

    # the weights really were used: the default-initialized model gives different outputs
    with torch.no_grad():
        default = build_model(arch).eval()(torch.from_numpy(x)).numpy()
    assert np.abs(default - expected).max() > 0.1


def test_torchscript_reloads_and_matches(weighted, tmp_path):
    arch, state, weights = weighted
    out = tmp_path / "model.pt"
    info = export_arch(arch, out, "torchscript", weights=weights)
    assert info["format"] == "torchscript" and info["bytes"] == out.stat().st_size
    loaded = torch.jit.load(str(out))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = torch_model(arch, state)(x)
        got = loaded(x)
    assert expected.std() > 0.3
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [mobilenet_v3_small, mobilenet_v1, lambda: mobilenet_v1(0.5, 128, 10)])
def test_json_export_reloads_to_an_equal_arch(make, tmp_path):
    arch = make()
    out = tmp_path / "sub" / "arch.json"
    info = export_arch(arch, out, "json")
    assert Arch.from_json(out.read_text()) == arch
    assert info["arch_id"] == arch.arch_id and info["bytes"] == out.stat().st_size
    assert sorted(p.name for p in out.parent.iterdir()) == ["arch.json"]


def test_export_rejects_unknown_format_and_json_weights(tmp_path):
    arch = ARCHS["v3_small"]()
    with pytest.raises(SpecError, match="format 'tflite'"):
        export_arch(arch, tmp_path / "m.tflite", "tflite")
    with pytest.raises(SpecError, match="--weights has no meaning"):
        export_arch(arch, tmp_path / "a.json", "json", weights=tmp_path / "w.pt")
    assert list(tmp_path.iterdir()) == []


def _bad_weights(kind, tmp_path):
    path = tmp_path / f"{kind}.pt"
    if kind == "garbage":
        path.write_bytes(b"\x00\x01 definitely not a torch file " * 20)
    elif kind == "other-arch":
        torch.save(build_model(mobilenet_v1(resolution=64, num_classes=10)).state_dict(), path)
    elif kind == "other-classes":
        torch.save(build_model(mobilenet_v3_small(resolution=64, num_classes=1000)).state_dict(), path)
    elif kind == "not-a-dict":
        torch.save([1, 2, 3], path)
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("missing", "does not exist"),
    ("garbage", "is not a torch state dict"),
    ("other-arch", "does not fit this architecture"),
    ("other-classes", "does not fit this architecture"),
    ("not-a-dict", "does not fit this architecture"),
])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_bad_weights_file_is_a_spec_error_naming_the_file(kind, message, fmt, tmp_path):
    weights = _bad_weights(kind, tmp_path)
    out = tmp_path / "out" / "model.bin"
    with pytest.raises(SpecError) as info:
        export_arch(ARCHS["v3_small"](), out, fmt, weights=weights)
    assert str(weights) in str(info.value)
    assert message in str(info.value)
    assert not out.exists()


def test_load_weights_accepts_checkpoint_dicts(tmp_path):
    arch = ARCHS["v3_small"]()
    state = randomized_state(arch)
    for key in ("state_dict", "model"):
        path = tmp_path / f"{key}.pt"
        torch.save({key: state, "epoch": 3}, path)
        model = build_model(arch)
        load_weights(model, path)
        got = model.state_dict()
        assert all(torch.equal(got[k], state[k]) for k in state)
