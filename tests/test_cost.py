"""The analytic cost model agrees with the torch module it describes, and its three forms agree."""

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from search_space import (
    Arch,
    Bneck,
    DepthwiseSeparable,
    Head,
    Stem,
    build_model,
    count,
    count_encoded,
    layer_cost,
    madds,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_large_space,
    mobilenet_v3_small,
    mobilenet_v3_small_space,
    params,
)

PRESETS = [mobilenet_v1, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small]
SPACES = {"large": mobilenet_v3_large_space(num_classes=10, resolution=64),
          "small": mobilenet_v3_small_space(num_classes=10, resolution=64)}
RESOLUTIONS = (32, 48, 64, 96)


def torch_params(model):
    return sum(p.numel() for p in model.parameters())


def torch_madds(model, resolution):
    """conv + linear FLOPs / 2 of one eval-mode forward pass at batch 1, as torch counts them."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, resolution, resolution))
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


def assert_matches_torch(arch, resolutions=None):
    model = build_model(arch)
    assert params(arch) == torch_params(model)
    assert madds(arch) == torch_madds(model, arch.resolution)
    for r in resolutions or ():
        assert madds(arch, r) == torch_madds(model, r)
        assert count(arch, r) == (params(arch), madds(arch, r))


@pytest.mark.parametrize("make", PRESETS)
def test_presets_match_torch_at_64(make):
    assert_matches_torch(make(resolution=64, num_classes=10))


def test_v3_large_matches_torch_at_224():
    arch = mobilenet_v3_large()
    assert_matches_torch(arch)
    assert count(arch) == (5_483_032, 216_589_760)  # torchvision's count, the paper's 217M


def test_width_multiplied_preset_matches_torch():
    assert_matches_torch(mobilenet_v3_small(0.75, resolution=96, num_classes=10), resolutions=(33,))


@pytest.mark.parametrize("space", SPACES, ids=str)
@pytest.mark.parametrize("seed", range(20))
def test_space_samples_match_torch(space, seed):
    arch = SPACES[space].sample(seed)
    # each sample at one of the small resolutions (cheap), plus an odd one every few samples
    arch = arch.replace(resolution=RESOLUTIONS[seed % len(RESOLUTIONS)])
    assert_matches_torch(arch, resolutions=(37,) if seed % 5 == 0 else None)


# Arbitrary small archs: exercise ds blocks, heads with a hidden layer but no conv, stride-2 without expand, ...
_acts = st.sampled_from(["relu", "relu6", "hswish"])
_k = st.sampled_from([3, 5, 7])
_s = st.sampled_from([1, 2])
_c = st.integers(1, 40)
small_archs = st.builds(
    Arch,
    stem=st.builds(Stem, out=_c, kernel=_k, stride=_s, act=_acts),
    blocks=st.lists(st.builds(Bneck, kernel=_k, expand=_c, out=_c, stride=_s, se=st.booleans(), act=_acts)
                    | st.builds(DepthwiseSeparable, kernel=_k, out=_c, stride=_s, act=_acts),
                    min_size=1, max_size=5).map(tuple),
    head=st.builds(Head, conv=st.none() | _c, conv_act=_acts, hidden=st.none() | _c, hidden_act=_acts,
                   dropout=st.sampled_from([0.0, 0.2])),
    num_classes=st.integers(1, 20),
    resolution=st.integers(32, 50),
)


@settings(max_examples=30, deadline=None)
@given(arch=small_archs)
def test_arbitrary_small_archs_match_torch(arch):
    assert_matches_torch(arch)


# ---- the three forms of the cost model agree ----------------------------------------------------------------
def _layer_sum(arch, resolution=None):
    costs = [layer_cost(cfg) for cfg in arch.layers(resolution)]
    return sum(p for p, _ in costs), sum(m for _, m in costs)


@pytest.mark.parametrize("make", PRESETS)
def test_layer_cost_sums_to_count_for_presets(make):
    arch = make()
    assert _layer_sum(arch) == count(arch)
    assert _layer_sum(arch, 97) == count(arch, 97)


@settings(max_examples=100, deadline=None)
@given(arch=small_archs | st.integers(0, 2**32 - 1).map(SPACES["large"].sample)
       | st.integers(0, 2**32 - 1).map(SPACES["small"].sample))
def test_layer_cost_sums_to_count(arch):
    assert _layer_sum(arch) == count(arch)


@pytest.mark.parametrize("space_name", ["large", "small"])
@pytest.mark.parametrize("resolution", [None, 224])
def test_count_encoded_equals_scalar_count(space_name, resolution):
    space = SPACES[space_name]
    encoded = space.sample_encoded(np.random.default_rng(1), 300)
    p, m = count_encoded(space, encoded, resolution)
    assert p.shape == m.shape == (300,)
    expected = [count(space.decode(row), resolution) for row in encoded]
    assert p.tolist() == [e[0] for e in expected]
    assert m.tolist() == [e[1] for e in expected]


def test_count_encoded_accepts_a_single_vector_and_a_canonical_encoding():
    space = mobilenet_v3_small_space()
    vec = space.encode(mobilenet_v3_small())
    p, m = count_encoded(space, vec)
    assert (p.tolist(), m.tolist()) == ([2_542_856], [56_510_400])


# ---- one constructor per layer kind, one unpacker --------------------------------------------------------------
@pytest.mark.parametrize("make", PRESETS)
def test_layer_configs_unpack_to_their_specs_and_build_what_they_cost(make):
    from search_space.builder import build_layer
    from search_space.spec import LayerConfig

    arch = make()
    layers = arch.layers()
    for i, cfg in enumerate(layers):
        spec = cfg.spec()
        if isinstance(spec, Stem):
            assert spec == arch.stem and LayerConfig.of_stem(spec, cfg.size) == cfg
        elif isinstance(spec, Head):
            assert spec == dataclasses.replace(arch.head, dropout=0.0)
            assert (cfg.head_conv, cfg.head_hidden) == (arch.head.conv, arch.head.hidden)
            assert LayerConfig.of_head(spec, cfg.size, cfg.cin, cfg.num_classes) == cfg
        else:
            assert spec == arch.blocks[i - 1] and LayerConfig.of_block(spec, cfg.size, cfg.cin) == cfg
        n_params = sum(p.numel() for p in build_layer(cfg).parameters())
        assert n_params == layer_cost(cfg)[0], f"layer {i} ({cfg.kind})"
    with pytest.raises(AttributeError, match="a stem layer has no head fields"):
        _ = layers[0].head_conv
