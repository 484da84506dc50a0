"""NetAdapt weight surgery: pruning dead channels is exact, the largest-norm channels are kept, the result is
what the builder makes (params, strict load, ONNX export), and bad requests are SpecErrors."""

import copy
import functools

import numpy as np
import pytest
import torch
from torch import nn

import search_space as ss
from search_space import Arch, Bneck, DepthwiseSeparable, Head, SpecError, Stem, se_channels
from search_space.builder import BN_MOMENTUM
from search_space.spaces import residual_groups
from search_space.surgery import channel_norms, prune_expand, prune_group, residual_group_of

V3S = ss.mobilenet_v3_small(num_classes=10, resolution=32)
# Hand-made to reach every case: block 0 adds to the stem (the stem is a producer) and has no expand conv;
# block 3 is a residual consumer without expand conv; ds blocks as producers and consumers (block 5 has
# stride 1 but no residual); block 6 consumes width 96 without an expand conv and its SE squeeze shrinks.
TINY = Arch(stem=Stem(16, kernel=3, stride=2, act="hswish"),
            blocks=(Bneck(3, 16, 16, stride=1, se=True, act="relu"),
                    Bneck(3, 48, 24, stride=2, act="hswish"),
                    Bneck(5, 72, 24, stride=1, se=True, act="hswish"),
                    Bneck(3, 24, 24, stride=1, act="relu6"),
                    DepthwiseSeparable(3, 32, stride=1, act="relu"),
                    DepthwiseSeparable(3, 96, stride=1, act="relu"),
                    Bneck(3, 96, 40, stride=2, se=True, act="hswish")),
            head=Head(conv=64, hidden=32, dropout=0.0), num_classes=10, resolution=32)
TINY_NO_CONV = TINY.replace(head=Head(conv=None, hidden=32, dropout=0.0))
TINY_BARE = TINY.replace(head=Head(conv=None, hidden=None, dropout=0.0))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convs: one thread is faster than several (and leaves the other cores alone)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(arch: Arch, seed: int = 0) -> nn.Module:
    """A fresh copy of `_calibrated(arch, seed)`."""
    return copy.deepcopy(_calibrated(arch, seed))


@functools.cache
def _calibrated(arch: Arch, seed: int) -> nn.Module:
    """build_model with random BN affines and biases and BN statistics measured on random images, in eval
    mode: every channel then carries signal, so outputs depend on the input and on every channel."""
    model = ss.build_model(arch, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration pass
            elif isinstance(m, nn.Linear):  # N(0, 1/fan_in), not N(0, 0.01): outputs that depend on the input
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.in_features**0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        model.train()(torch.randn(8, 3, arch.resolution, arch.resolution, generator=gen))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = BN_MOMENTUM
    return model.eval()


def _x(arch: Arch, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, arch.resolution, arch.resolution, generator=torch.Generator().manual_seed(7))


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _zero_bn(bn: nn.BatchNorm2d, channels) -> None:
    bn.weight[channels] = 0.0
    bn.bias[channels] = 0.0


def _kill_squeeze(se: nn.Module, old_e: int, new_e: int, rng: np.random.Generator) -> None:
    """Make as many SE squeeze units dead (reduce row and bias 0 -> ReLU 0) as the squeeze width loses."""
    drop = se_channels(old_e) - se_channels(new_e)
    if drop:
        units = torch.as_tensor(rng.choice(se_channels(old_e), drop, replace=False))
        se.reduce.weight[units] = 0.0
        se.reduce.bias[units] = 0.0


def _kill_hidden(block: nn.Module, arch_block: Bneck, channels, new_e: int, rng: np.random.Generator) -> None:
    """Hidden channels that output exactly 0 (depthwise BN affine 0), plus the squeeze units that will go."""
    if block.expand is not None:
        block.expand.conv.weight[channels] = 0.0
        _zero_bn(block.expand.bn, channels)
    _zero_bn(block.depthwise.bn, channels)
    if block.se is not None:
        _kill_squeeze(block.se, arch_block.expand, new_e, rng)


def _kill_group(model: nn.Module, arch: Arch, group: list[int], channels, keep: int,
                rng: np.random.Generator) -> None:
    """Make group-width channels exactly 0 everywhere (producers' rows and BN), and the hidden channels of
    consumers that feed them straight to a depthwise conv (bneck without expand conv, ds)."""
    first, last = group[0], group[-1]
    stem_producer = isinstance(arch.blocks[first], Bneck) and arch.has_residual(first)
    if stem_producer:
        model.stem.conv.weight[channels] = 0.0
        _zero_bn(model.stem.bn, channels)
    for j in group:
        layer = model.blocks[j].project if isinstance(arch.blocks[j], Bneck) else model.blocks[j].pointwise
        layer.conv.weight[channels] = 0.0
        _zero_bn(layer.bn, channels)
    consumers = [j for j in group if j != first or stem_producer] + [last + 1] * (last + 1 < len(arch.blocks))
    for j in consumers:
        b, mod = arch.blocks[j], model.blocks[j]
        if isinstance(b, DepthwiseSeparable):
            _zero_bn(mod.depthwise.bn, channels)
        elif mod.expand is None:
            _kill_hidden(mod, b, channels, keep, rng)


def _dead(width: int, keep: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.as_tensor(np.sort(rng.choice(width, width - keep, replace=False)))


def _alive(width: int, dead: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(width, dtype=torch.bool)
    mask[dead] = False
    return torch.nonzero(mask).flatten()


# ---- exactness when the pruned channels are dead ---------------------------------------------------------

@pytest.mark.parametrize(("block", "keep"), [(1, 48), (3, 88), (4, 160), (9, 400)],
                         ids=["no-se", "se-same-squeeze", "se-squeeze-64-to-40", "se-last-stage"])
def test_prune_expand_of_dead_channels_is_exact(block, keep):
    arch = V3S
    model = _model(arch, seed=3)
    x = _x(arch)
    before = _run(model, x)
    width = arch.blocks[block].expand
    rng = np.random.default_rng(block)
    dead = _dead(width, keep, rng)
    live_copy = _snapshot(model)
    with torch.no_grad():
        _kill_hidden(model.blocks[block], arch.blocks[block], dead, keep, rng)
    killed = _run(model, x)
    snap = _snapshot(model)

    new_arch, new_model = prune_expand(arch, model, block, keep)

    assert new_arch.blocks[block].expand == keep and new_model.blocks[block].depthwise.conv.out_channels == keep
    assert new_model.blocks[block].project.conv.in_channels == keep
    if arch.blocks[block].se:
        assert new_model.blocks[block].se.reduce.out_channels == se_channels(keep)
    torch.testing.assert_close(_run(new_model, x), killed, atol=1e-5, rtol=0)
    # the dead channels are the ones that went
    torch.testing.assert_close(new_model.blocks[block].expand.conv.weight,
                               snap[f"blocks.{block}.expand.conv.weight"][_alive(width, dead)])
    assert all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())  # input untouched
    # control: the same cut of live channels changes the function, so the comparison above can fail
    model.load_state_dict(live_copy)
    _, cut_live = prune_expand(arch, model, block, keep)
    assert (_run(cut_live, x) - before).abs().max() > 1e-3


@pytest.mark.parametrize(("arch", "block", "keep"), [
    (V3S, 0, 8), (V3S, 1, 16), (V3S, 4, 32), (V3S, 9, 64),
    (TINY, 0, 8), (TINY, 2, 16), (TINY, 4, 16), (TINY, 5, 64), (TINY, 6, 32), (TINY_NO_CONV, 6, 24),
    (TINY_BARE, 6, 16),
], ids=["v3s-g0", "v3s-g1", "v3s-g3", "v3s-last", "stem-producer", "internal-no-expand-and-ds-consumer",
        "ds-producer", "ds-producer-squeeze-shrinks", "head-conv", "head-hidden", "head-classifier"])
def test_prune_group_of_dead_channels_is_exact(arch, block, keep):
    model = _model(arch, seed=block)
    x = _x(arch)
    group = residual_group_of(arch, block)
    width = arch.blocks[group[0]].out
    rng = np.random.default_rng(block + 10)
    dead = _dead(width, keep, rng)
    live_copy = _snapshot(model)
    with torch.no_grad():
        _kill_group(model, arch, group, dead, keep, rng)
    killed = _run(model, x)

    new_arch, new_model = prune_group(arch, model, group, keep)

    assert all(new_arch.blocks[j].out == keep for j in group)
    untouched = [j for j in range(len(arch.blocks)) if j not in group and j != group[-1] + 1]
    assert all(new_arch.blocks[j] == arch.blocks[j] for j in untouched) and new_arch.head == arch.head
    torch.testing.assert_close(_run(new_model, x), killed, atol=1e-5, rtol=0)
    for j in group:
        key = f"blocks.{j}.{'project' if isinstance(arch.blocks[j], Bneck) else 'pointwise'}.bn.running_mean"
        torch.testing.assert_close(new_model.state_dict()[key], model.state_dict()[key][_alive(width, dead)])
    # control: cutting the same number of live channels changes the function
    model.load_state_dict(live_copy)
    _, cut_live = prune_group(arch, model, group, keep)
    assert (_run(cut_live, x) - _run(model, x)).abs().max() > 1e-3


def test_stem_is_a_producer_when_block_0_is_residual():
    arch = ss.mobilenet_v3_large(num_classes=10, resolution=32)
    assert arch.has_residual(0) and residual_group_of(arch, 0) == [0]
    model = _model(arch)
    old = _snapshot(model)
    project = old["blocks.0.project.conv.weight"].flatten(1).norm(dim=1)
    norms = old["stem.conv.weight"].flatten(1).norm(dim=1) + project
    np.testing.assert_allclose(channel_norms(model, arch, 0, "group"), norms.double().numpy(), rtol=1e-6)
    kept = _topk_sorted(norms, 8)
    assert not torch.equal(_topk_sorted(project, 8), kept)  # the stem's rows count

    new_arch, new_model = prune_group(arch, model, 0, 8)
    assert new_arch.stem.out == 8 and new_arch.blocks[0] == Bneck(3, 8, 8, 1, False, "relu")
    assert new_model.blocks[0].expand is None and new_model.blocks[0].use_residual
    assert new_model.blocks[1].expand.conv.in_channels == 8
    new = new_model.state_dict()
    for key in ("stem.conv.weight", "stem.bn.running_var", "blocks.0.depthwise.conv.weight",
                "blocks.0.project.bn.bias"):
        torch.testing.assert_close(new[key], old[key][kept], rtol=0, atol=0)
    for key in ("blocks.0.project.conv.weight", "blocks.1.expand.conv.weight"):
        torch.testing.assert_close(new[key], old[key][:, kept] if key.startswith("blocks.1") else
                                   old[key][kept][:, kept], rtol=0, atol=0)


# ---- which channels are kept ---------------------------------------------------------------------------

def _topk_sorted(norms: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(torch.topk(norms, k).indices).values


def test_prune_expand_keeps_the_largest_norm_channels():
    arch, block, keep = V3S, 4, 160
    model = _model(arch, seed=5)
    old = _snapshot(model)
    p = f"blocks.{block}"
    norms = old[f"{p}.expand.conv.weight"].flatten(1).norm(dim=1)
    np.testing.assert_allclose(channel_norms(model, arch, block, "expand"), norms.double().numpy(), rtol=1e-6)
    kept = _topk_sorted(norms, keep)
    # squeeze units: largest rows of the reduce conv over the kept hidden channels
    reduce = old[f"{p}.se.reduce.weight"][:, kept]
    sq = _topk_sorted(reduce.flatten(1).norm(dim=1), se_channels(keep))
    assert se_channels(keep) < se_channels(arch.blocks[block].expand)

    _, new_model = prune_expand(arch, model, block, keep)
    new = new_model.state_dict()
    for name in ("expand.conv.weight", "expand.bn.weight", "expand.bn.bias", "expand.bn.running_mean",
                 "expand.bn.running_var", "depthwise.conv.weight", "depthwise.bn.weight", "depthwise.bn.bias",
                 "depthwise.bn.running_mean", "depthwise.bn.running_var", "se.expand.bias"):
        torch.testing.assert_close(new[f"{p}.{name}"], old[f"{p}.{name}"][kept], rtol=0, atol=0)
    torch.testing.assert_close(new[f"{p}.project.conv.weight"], old[f"{p}.project.conv.weight"][:, kept])
    torch.testing.assert_close(new[f"{p}.se.reduce.weight"], reduce[sq])
    torch.testing.assert_close(new[f"{p}.se.reduce.bias"], old[f"{p}.se.reduce.bias"][sq])
    torch.testing.assert_close(new[f"{p}.se.expand.weight"], old[f"{p}.se.expand.weight"][kept][:, sq])
    for name in ("weight", "bias", "running_mean", "running_var"):  # the output side is untouched
        assert torch.equal(new[f"{p}.project.bn.{name}"], old[f"{p}.project.bn.{name}"])


def test_prune_group_keeps_the_largest_summed_norm_channels():
    arch, group, keep = V3S, [3, 4, 5], 32
    model = _model(arch, seed=6)
    old = _snapshot(model)
    norms = sum(old[f"blocks.{j}.project.conv.weight"].flatten(1).norm(dim=1) for j in group)
    np.testing.assert_allclose(channel_norms(model, arch, 4, "group"), norms.double().numpy(), rtol=1e-6)
    kept = _topk_sorted(norms, keep)
    # the single-block choice differs from the group's: the sum is what decides
    assert not torch.equal(_topk_sorted(old["blocks.5.project.conv.weight"].flatten(1).norm(dim=1), keep), kept)

    _, new_model = prune_group(arch, model, 5, keep)
    new = new_model.state_dict()
    for j in group:
        for name in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
            key = f"blocks.{j}.project.{name}"
            torch.testing.assert_close(new[key], old[key][kept], rtol=0, atol=0)
    for j in (4, 5, 6):  # consumers: the expand convs' input channels
        key = f"blocks.{j}.expand.conv.weight"
        torch.testing.assert_close(new[key], old[key][:, kept], rtol=0, atol=0)


# ---- structure -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [ss.mobilenet_v2, ss.mobilenet_v3_large, ss.mobilenet_v3_small])
def test_residual_group_of_matches_the_space_grouping(make):
    arch = make(resolution=32, num_classes=10)
    starts, groups = residual_groups(arch.stem.out, arch.blocks)
    expected = {}
    for s, g in zip(starts, groups, strict=True):
        for j in range(s, s + len(g)):
            expected[j] = list(range(s, s + len(g)))
    assert {j: residual_group_of(arch, j) for j in range(len(arch.blocks))} == expected


def test_ds_blocks_have_no_residual_group():
    arch = ss.mobilenet_v1(resolution=32, num_classes=10)
    assert arch.has_residual(7)  # same width, stride 1 ...
    assert residual_group_of(arch, 7) == [7]  # ... but a ds block adds nothing to its input
    new_arch, new_model = prune_group(arch, _model(arch), 7, 256)
    assert new_arch.blocks[7].out == 256 and new_model.blocks[8].depthwise.conv.in_channels == 256
    assert sum(p.numel() for p in new_model.parameters()) == ss.count(new_arch)[0]


# ---- the result is what the builder makes --------------------------------------------------------------

def _chain(arch: Arch, model: nn.Module):
    a, m = prune_group(arch, model, 3, 32)
    a, m = prune_expand(a, m, 4, 160)
    return prune_expand(a, m, 9, 400)


@pytest.mark.parametrize("case", ["expand", "group", "group-head", "tiny-ds", "tiny-stem", "chain"])
def test_result_is_a_builder_model(case):
    arch = TINY if case.startswith("tiny") else V3S
    model = _model(arch).train()
    before = _snapshot(model)
    new_arch, new_model = {
        "expand": lambda: prune_expand(arch, model, 9, 256),
        "group": lambda: prune_group(arch, model, [1, 2], 16),
        "group-head": lambda: prune_group(arch, model, 10, 88),
        "tiny-ds": lambda: prune_group(arch, model, 5, 64),
        "tiny-stem": lambda: prune_group(arch, model, 0, 8),
        "chain": lambda: _chain(arch, model),
    }[case]()
    assert isinstance(new_model, ss.BneckNet) and new_model.arch == new_arch and new_model.training
    assert not prune_group(arch, model.eval(), 0, 8)[1].training  # the input's mode is kept
    assert Arch.parse(new_arch.to_string()) == new_arch
    assert sum(p.numel() for p in new_model.parameters()) == ss.count(new_arch)[0] < ss.count(arch)[0]
    ss.build_model(new_arch).load_state_dict(new_model.state_dict(), strict=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.no_grad():  # no storage shared with the input
        for p in new_model.parameters():
            p.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_export_onnx_with_pruned_weights(tmp_path):
    new_arch, new_model = _chain(V3S, _model(V3S))
    weights = tmp_path / "w.pt"
    torch.save(new_model.state_dict(), weights)
    info = ss.export_arch(new_arch, tmp_path / "m.onnx", "onnx", weights)
    assert (tmp_path / "m.onnx").stat().st_size > 0 and info["max_abs_diff"] <= 1e-4


# ---- errors --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "message"), [
    (lambda m: prune_expand(V3S, m, 4, 100), "multiple of 8"),
    (lambda m: prune_expand(V3S, m, 4, 0), "multiple of 8"),
    (lambda m: prune_expand(V3S, m, 4, 248), "larger than the current expansion of block 4 (240)"),
    (lambda m: prune_expand(V3S, m, 11, 8), "block index 11 out of range"),
    (lambda m: prune_expand(V3S, m, -1, 8), "out of range"),
    (lambda m: prune_expand(V3S, m, 0, 8), "block 0 has no expand conv"),
    (lambda m: prune_expand(V3S, m, 2, 24), "builder drops the expand conv"),
    (lambda m: prune_group(V3S, m, 4, 36), "multiple of 8"),
    (lambda m: prune_group(V3S, m, 4, 48), "larger than the current width of group [3, 4, 5] (40)"),
    (lambda m: prune_group(V3S, m, 11, 8), "out of range"),
    (lambda m: prune_group(V3S, m, [4, 5], 32), "not a residual group"),
    (lambda m: prune_group(V3S, m, 6, 40), "add block 6's residual connection"),
    (lambda m: prune_expand(V3S, ss.build_model(TINY), 4, 160), "different architecture"),
    (lambda m: channel_norms(m, V3S, 4, "rows"), "kind 'rows'"),
])
def test_errors_are_spec_errors(call, message):
    model = _model(V3S)
    with pytest.raises(SpecError) as exc:
        call(model)
    assert message in str(exc.value)


def test_no_expand_conv_error_names_the_group_to_prune():
    with pytest.raises(SpecError, match=r"block 3 has no expand conv.*prune_group on group \[1, 2, 3\]"):
        prune_expand(TINY, _model(TINY), 3, 16)
    with pytest.raises(SpecError, match="depthwise-separable"):
        prune_expand(TINY, _model(TINY), 4, 16)


def test_keep_equal_to_current_width_is_a_copy():
    model = _model(V3S)
    x = _x(V3S)
    for new_arch, new_model in (prune_expand(V3S, model, 2, 88), prune_group(V3S, model, 6, 48)):
        assert new_arch == V3S
        torch.testing.assert_close(_run(new_model, x), _run(model, x), rtol=0, atol=0)
