"""The torch builder: stable layer names for weight surgery, residuals, shapes and seeded init."""

import pytest
import torch
from torch import nn

from search_space import (
    Arch,
    Bneck,
    BneckNet,
    DepthwiseSeparable,
    Head,
    Stem,
    build_model,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_small,
    mobilenet_v3_small_space,
    se_channels,
)

PRESETS = [mobilenet_v1, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small]
SMALL_SPACE = mobilenet_v3_small_space(num_classes=10, resolution=32)
# Hand-made: stride-2 without expansion, residual, ds after bneck, head with hidden but no conv.
MIXED = Arch(stem=Stem(8, kernel=5, stride=1, act="relu"),
             blocks=(Bneck(3, 8, 16, stride=2, se=True, act="hswish"), Bneck(7, 16, 16, stride=1, act="relu6"),
                     DepthwiseSeparable(5, 24, stride=2, act="relu"), Bneck(3, 48, 24, stride=1, se=True)),
             head=Head(conv=None, hidden=32, hidden_act="relu", dropout=0.0), num_classes=7, resolution=32)


def _archs():
    return [make(resolution=64, num_classes=10) for make in PRESETS] + [SMALL_SPACE.sample(s) for s in range(5)] \
        + [MIXED]


@pytest.mark.parametrize("arch", _archs(), ids=lambda a: a.arch_id)
def test_module_names_follow_the_spec(arch):
    model = build_model(arch)
    assert isinstance(model, BneckNet) and model.arch is arch
    s = arch.stem
    assert (model.stem.conv.in_channels, model.stem.conv.out_channels) == (3, s.out)
    assert model.stem.conv.kernel_size == (s.kernel, s.kernel) and model.stem.conv.stride == (s.stride, s.stride)
    assert model.stem.bn.num_features == s.out
    assert len(model.blocks) == len(arch.blocks)
    for i, (cin, b) in enumerate(zip(arch.in_channels, arch.blocks, strict=True)):
        m = model.blocks[i]
        assert m.depthwise.conv.kernel_size == (b.kernel, b.kernel)
        assert m.depthwise.conv.stride == (b.stride, b.stride)
        if isinstance(b, Bneck):
            assert (m.expand is None) == (b.expand == cin)
            if m.expand is not None:
                assert (m.expand.conv.in_channels, m.expand.conv.out_channels) == (cin, b.expand)
                assert m.expand.conv.kernel_size == (1, 1)
            assert m.depthwise.conv.groups == b.expand == m.depthwise.conv.out_channels
            assert (m.se is not None) == b.se
            if b.se:
                assert m.se.reduce.out_channels == se_channels(b.expand)
                assert m.se.expand.out_channels == b.expand
            assert (m.project.conv.in_channels, m.project.conv.out_channels) == (b.expand, b.out)
            assert isinstance(m.project.act, nn.Identity)  # linear bottleneck
            assert m.use_residual == (b.stride == 1 and cin == b.out) == arch.has_residual(i)
        else:
            assert m.depthwise.conv.groups == cin
            assert (m.pointwise.conv.in_channels, m.pointwise.conv.out_channels) == (cin, b.out)
    h = arch.head
    assert (model.head.conv is None) == (h.conv is None)
    assert (model.head.hidden is None) == (h.hidden is None)
    assert model.head.classifier.out_features == arch.num_classes
    assert model.head.dropout.p == h.dropout


@pytest.mark.parametrize(("name", "cls"), [("relu", nn.ReLU), ("relu6", nn.ReLU6), ("hswish", nn.Hardswish)])
def test_activations_are_the_named_ones(name, cls):
    arch = Arch(stem=Stem(8, act=name), blocks=(Bneck(3, 16, 8, act=name), DepthwiseSeparable(3, 8, act=name)),
                head=Head(conv=16, conv_act=name, hidden=16, hidden_act=name), num_classes=2, resolution=32)
    model = build_model(arch)
    assert isinstance(model.stem.act, cls)
    assert isinstance(model.blocks[0].expand.act, cls) and isinstance(model.blocks[0].depthwise.act, cls)
    assert isinstance(model.blocks[1].depthwise.act, cls) and isinstance(model.blocks[1].pointwise.act, cls)
    assert isinstance(model.head.conv.act, cls) and isinstance(model.head.hidden_act, cls)


def test_state_dict_names_for_surgery():
    keys = set(build_model(mobilenet_v3_small()).state_dict())
    for name in ("stem.conv.weight", "stem.bn.running_mean", "blocks.0.depthwise.conv.weight",
                 "blocks.0.se.reduce.weight", "blocks.0.se.expand.bias", "blocks.0.project.conv.weight",
                 "blocks.1.expand.conv.weight", "blocks.1.expand.bn.weight", "head.conv.conv.weight",
                 "head.hidden.weight", "head.classifier.weight"):
        assert name in keys
    assert not any(k.startswith("blocks.0.expand.") for k in keys)  # 16 -> 16: no expand conv
    v1 = set(build_model(mobilenet_v1()).state_dict())
    assert "blocks.3.pointwise.conv.weight" in v1 and "blocks.3.depthwise.bn.running_var" in v1


@pytest.mark.parametrize("arch", [mobilenet_v3_small(num_classes=10), MIXED], ids=["v3_small", "mixed"])
def test_residual_is_used_exactly_when_stride_1_and_widths_match(arch):
    """Zeroing a block's last BN makes its branch output 0: a residual block then returns its input."""
    model = build_model(arch).eval()
    with torch.no_grad():
        for i, (cin, block) in enumerate(zip(arch.in_channels, arch.blocks, strict=True)):
            m = model.blocks[i]
            x = torch.randn(2, cin, 16, 16)
            last = m.project.bn if isinstance(block, Bneck) else m.pointwise.bn
            last.weight.zero_()
            last.bias.zero_()
            y = m(x)
            if isinstance(block, Bneck) and block.stride == 1 and cin == block.out:
                assert torch.equal(y, x), i
            else:  # no residual (ds blocks never have one: act(0) = 0)
                assert not y.any(), i
    assert any(arch.has_residual(i) for i in range(len(arch.blocks)))
    assert not all(arch.has_residual(i) for i in range(len(arch.blocks)))


@pytest.mark.parametrize("resolution", [32, 33, 64, 100])
@pytest.mark.parametrize("make", [mobilenet_v1, mobilenet_v2, mobilenet_v3_small, lambda **kw: MIXED.replace(**kw)],
                         ids=["v1", "v2", "v3_small", "mixed"])
def test_forward_at_any_resolution(make, resolution):
    arch = make(num_classes=10, resolution=resolution)
    model = build_model(arch).eval()
    x = torch.randn(2, 3, resolution, resolution)
    with torch.no_grad():
        features = model.features(x)
        y = model(x)
    side = arch.layers()[-1].size  # what the cost model assumes the head sees
    assert features.shape == (2, arch.last_channels, side, side)
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()


def test_v3_large_runs_at_its_native_resolution():
    model = build_model(mobilenet_v3_large()).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_batch_elements_are_independent_in_eval_mode():
    model = build_model(MIXED).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[1:2], model(x[1:2]), atol=1e-5, rtol=1e-5)


def _states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", [mobilenet_v3_small(num_classes=10), MIXED], ids=["v3_small", "mixed"])
def test_build_is_deterministic_by_seed(arch):
    torch.manual_seed(1)
    a = build_model(arch, seed=3).state_dict()
    torch.manual_seed(2)  # the global RNG must not matter
    torch.rand(100)
    b = build_model(arch, seed=3).state_dict()
    c = build_model(arch, seed=4).state_dict()
    assert _states_equal(a, b)
    assert not _states_equal(a, c)
    conv = next(k for k in a if k.endswith("conv.weight"))
    assert not torch.equal(a[conv], c[conv])
    assert _states_equal(build_model(arch).state_dict(), build_model(arch, seed=0).state_dict())


def test_init_is_torchvision_style():
    model = build_model(mobilenet_v3_small())
    assert torch.equal(model.stem.bn.weight, torch.ones(16)) and not model.stem.bn.bias.any()
    assert not model.head.classifier.bias.any()
    assert model.head.classifier.weight.std().item() == pytest.approx(0.01, rel=0.05)
    w = model.blocks[1].expand.conv.weight  # 1x1, fan_out = 72
    assert w.std().item() == pytest.approx((2 / 72) ** 0.5, rel=0.1)
