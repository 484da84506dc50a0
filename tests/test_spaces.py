"""Search spaces: membership, encode/decode, sampling, mutation, Optuna, layer tables."""

import itertools

import numpy as np
import optuna
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from search_space import (
    Arch,
    Bneck,
    DepthwiseSeparable,
    SearchSpace,
    SpecError,
    Stage,
    build_model,
    get_space,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_large_space,
    mobilenet_v3_small,
    mobilenet_v3_small_space,
)
from search_space.spec import Head, Stem

LARGE = mobilenet_v3_large_space()
SMALL = mobilenet_v3_small_space()
SPACES = {"large": LARGE, "small": SMALL}
SEEDS = {"large": mobilenet_v3_large, "small": mobilenet_v3_small}
seeds = st.integers(0, 2**32 - 1)
space_names = st.sampled_from(sorted(SPACES))
SETTINGS = settings(max_examples=60, deadline=None)


# ---- membership --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["large", "small"])
def test_default_space_contains_its_seed_exactly(name):
    space, arch = SPACES[name], SEEDS[name]()
    assert space.contains(arch)
    assert space.decode(space.encode(arch)) == arch


@pytest.mark.parametrize("name", ["large", "small"])
@pytest.mark.parametrize("kwargs", [{"num_classes": 10, "resolution": 64}, {"width_mult": 0.75},
                                    {"width_mult": 1.25, "num_classes": 100}])
def test_space_variants_contain_their_seed_variant(name, kwargs):
    space = get_space(f"mobilenet_v3_{name}_space", **kwargs)
    arch = SEEDS[name](**kwargs)
    assert space.contains(arch)
    assert space.decode(space.encode(arch)) == arch


def test_resolution_and_classes_are_not_part_of_membership():
    assert LARGE.contains(mobilenet_v3_large(num_classes=10, resolution=64))


@pytest.mark.parametrize(("arch", "message"), [
    (mobilenet_v3_large(), "head"),
    (mobilenet_v2(), "stem"),
    (mobilenet_v1(), "stem"),
])
def test_small_space_rejects_other_presets_saying_why(arch, message):
    assert not SMALL.contains(arch)
    with pytest.raises(SpecError, match=message):
        SMALL.encode(arch)


def _small_with_block(index, block):
    arch = mobilenet_v3_small()
    blocks = list(arch.blocks)
    blocks[index] = block
    return arch.replace(blocks=tuple(blocks))


def test_encode_rejects_ds_blocks():
    arch = mobilenet_v3_small()
    ds = arch.replace(blocks=(DepthwiseSeparable(3, 16, 2), *arch.blocks[1:]))
    with pytest.raises(SpecError, match="bneck blocks only"):
        SMALL.encode(ds)


def test_encode_rejects_blocks_beyond_the_last_stage():
    arch = mobilenet_v3_small()
    longer = arch.replace(blocks=(*arch.blocks, *arch.blocks[-1:] * 3))
    assert not SMALL.contains(longer)
    with pytest.raises(SpecError, match="block"):
        SMALL.encode(longer)


def test_encode_rejects_a_kernel_mismatch_inside_a_stage():
    # block 5 is in the stage of block 4 (kernel 5): a different kernel cannot be encoded
    arch = _small_with_block(5, Bneck(kernel=3, expand=240, out=40, stride=1, se=True, act="hswish"))
    with pytest.raises(SpecError, match="must match"):
        SMALL.encode(arch)


@pytest.mark.parametrize(("arch", "expected"), [
    (_small_with_block(2, Bneck(kernel=3, expand=100, out=24, stride=1, se=False, act="relu")),
     ("block 2", "expand 100")),
    (mobilenet_v3_small().replace(blocks=mobilenet_v3_small().blocks + mobilenet_v3_small().blocks[-1:] * 3),
     ("block 8", "stage 4 has 6 blocks", "allowed depths 2/3/4")),
], ids=["bad-expand", "too-deep"])
def test_encode_error_names_the_offending_block(arch, expected):
    with pytest.raises(SpecError) as info:
        SMALL.encode(arch)
    assert all(text in str(info.value) for text in expected), str(info.value)


def test_decode_validates_vectors():
    vec = SMALL.encode(mobilenet_v3_small())
    with pytest.raises(SpecError, match=f"needs {SMALL.num_decisions}"):
        SMALL.decode(vec[:-1])
    bad = vec.copy()
    bad[2] = 3  # s0.kernel has 3 choices
    with pytest.raises(SpecError, match=r"s0.kernel: index 3 not in \[0, 3\)"):
        SMALL.decode(bad)


# ---- encode / decode / sample ----------------------------------------------------------------------------------
@SETTINGS
@given(name=space_names, seed=seeds)
def test_decode_encode_round_trip(name, seed):
    space = SPACES[name]
    arch = space.sample(seed)
    vec = space.encode(arch)
    assert vec.shape == (space.num_decisions,)
    assert space.decode(vec) == arch
    assert space.contains(arch)


@SETTINGS
@given(name=space_names, seed=seeds)
def test_sample_is_deterministic_by_seed(name, seed):
    space = SPACES[name]
    assert space.sample(seed) == space.sample(seed)

    def sequence():
        rng = np.random.default_rng(seed)
        return [space.sample(rng) for _ in range(5)]

    first = sequence()
    assert first == sequence()
    assert len(set(first)) == 5
    # a fresh space object samples the same
    assert get_space(space.name).sample(seed) == space.sample(seed)


@pytest.mark.parametrize("name", ["large", "small"])
def test_different_seeds_give_different_archs(name):
    space = SPACES[name]
    archs = [space.sample(s) for s in range(30)]
    assert len(set(archs)) == 30
    rng = np.random.default_rng(0)
    assert len({space.sample(rng) for _ in range(30)}) == 30


@pytest.mark.parametrize("name", ["large", "small"])
def test_sample_encoded_marks_absent_layers(name):
    space = SPACES[name]
    enc = space.sample_encoded(np.random.default_rng(3), 200)
    assert enc.shape == (200, space.num_decisions)
    k = 0
    for st_ in space.stages:
        depth = np.asarray(st_.depths)[enc[:, k]]
        slots = enc[:, k + 5:k + 5 + st_.max_depth]
        assert ((slots >= 0) == (np.arange(st_.max_depth)[None, :] < depth[:, None])).all()
        k += 5 + st_.max_depth
    assert (enc < space.cardinalities[None, :]).all()
    for row in enc[:20]:
        assert space.contains(space.decode(row))


# ---- mutation ---------------------------------------------------------------------------------------------------
@SETTINGS
@given(name=space_names, seed=seeds, mseed=seeds)
def test_mutate_stays_in_space_and_changes_the_arch(name, seed, mseed):
    space = SPACES[name]
    parent = space.sample(seed)
    child = space.mutate(parent, mseed)
    assert child != parent
    assert space.contains(child)
    assert space.mutate(parent, mseed) == child
    assert space.mutate(parent, np.random.default_rng(mseed)) == child


@pytest.mark.parametrize("name", ["large", "small"])
def test_mutation_chain_of_the_seed_network(name):
    space = SPACES[name]
    arch = SEEDS[name]()
    rng = np.random.default_rng(0)
    children = set()
    for _ in range(50):
        child = space.mutate(arch, rng)
        assert child != arch and space.contains(child)
        children.add(child)
        arch = child
    assert len(children) > 40


def test_mutate_rejects_archs_outside_the_space():
    with pytest.raises(SpecError):
        SMALL.mutate(mobilenet_v2(), 0)


# ---- size ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["large", "small"])
def test_spaces_are_large(name):
    assert SPACES[name].log10_size >= 15


def test_size_counts_decision_vectors_exactly():
    tiny = SearchSpace("tiny", Stem(8), [
        Stage(base_out=16, stride=2, depths=(1, 2), width_ratios=(1.0, 2.0), kernels=(3, 5), se=(False,),
              acts=("relu",)),
        Stage(base_out=24, stride=1, depths=(1,), width_ratios=(1.0,), kernels=(3,), se=(False, True),
              acts=("relu", "hswish")),
    ], expand_ratios=(1.0, 6.0), head=Head(dropout=0.0), num_classes=5, resolution=32)
    vectors = set()
    for vec in itertools.product(*(range(int(n)) for n in tiny.cardinalities)):
        vec = np.array(vec)
        depth = tiny.stages[0].depths[vec[0]]
        if depth < 2:
            vec[6] = -1
        vectors.add(tuple(vec))
    assert tiny.size == len(vectors) == (2 * 2 * (2 + 4)) * (2 * 2 * 2)
    archs = {tiny.decode(v) for v in vectors}
    assert len(archs) == len(vectors)  # no two vectors of this space coincide
    assert all(tiny.decode(tiny.encode(a)) == a for a in archs)


# ---- Optuna ----------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="module")
def _quiet_optuna():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(level)


@pytest.mark.parametrize("name", ["large", "small"])
def test_suggest_with_random_sampler(name):
    space = SPACES[name]
    archs = []

    def objective(trial):
        arch = space.suggest(trial)
        archs.append(arch)
        return sum(b.expand for b in arch.blocks)

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=20)
    assert len(archs) == 20 and len(set(archs)) == 20
    assert all(space.contains(a) for a in archs)
    # parameters Optuna recorded reproduce the arch: expansions of absent layers are not asked for
    for trial, arch in zip(study.trials, archs, strict=True):
        assert space.suggest(optuna.trial.FixedTrial(trial.params)) == arch


def test_suggest_with_tpe_sampler():
    archs = []

    def objective(trial):
        arch = SMALL.suggest(trial)
        archs.append(arch)
        return sum(b.expand for b in arch.blocks)

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    study.optimize(objective, n_trials=20)
    assert len(study.trials) == 20
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert all(SMALL.contains(a) for a in archs)


@pytest.mark.parametrize("name", ["large", "small"])
def test_suggest_maps_names_to_decisions(name):
    space, arch = SPACES[name], SEEDS[name]()
    vec = space.encode(arch)
    params = {d.name: d.choices[v] for d, v in zip(space.decisions, vec, strict=True) if v >= 0}
    assert space.suggest(optuna.trial.FixedTrial(params)) == arch


# ---- layer configs and tables ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["large", "small"])
def test_layer_configs_cover_every_sampled_layer(name):
    space = SPACES[name]
    configs = space.layer_configs(64)
    assert len(configs) == len(set(configs))
    known = set(configs)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(100)] + [SEEDS[name]()]
    for arch in archs:
        missing = [cfg for cfg in arch.layers(64) if cfg not in known]
        assert not missing, missing
    assert configs[0].kind == "stem" and configs[-1].kind == "head"


@pytest.mark.parametrize("name", ["large", "small"])
def test_layer_configs_default_to_the_space_resolution(name):
    space = get_space(f"mobilenet_v3_{name}_space", resolution=96, num_classes=10)
    configs = set(space.layer_configs())
    assert configs == set(space.layer_configs(96))
    assert all(cfg in configs for cfg in space.sample(0).layers())


@pytest.mark.parametrize("name", ["large", "small"])
def test_tabulate_custom_fn_totals_equal_python_sums(name):
    space = SPACES[name]
    encoded = space.sample_encoded(np.random.default_rng(5), 200)
    for fn in (lambda cfg: cfg.out, lambda cfg: cfg.kernel * cfg.size + (cfg.expand if cfg.se else 0)):
        totals = space.tabulate(fn, 64).total(encoded)
        assert totals.shape == (200,)
        expected = [sum(fn(cfg) for cfg in space.decode(row).layers(64)) for row in encoded]
        assert totals.tolist() == expected


def test_tabulate_tuple_fn_and_bad_width():
    tables = SMALL.tabulate(lambda cfg: (1, cfg.stride), dtype=np.int64)
    arch = mobilenet_v3_small()
    totals = tables.total(SMALL.encode(arch))
    assert totals.tolist() == [[len(arch.layers()), sum(c.stride for c in arch.layers())]]
    with pytest.raises(SpecError, match="columns"):
        tables.total(np.zeros((1, 3), dtype=np.int64))


# ---- building sampled archs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["large", "small"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_archs_build_and_run(name, seed):
    space = get_space(f"mobilenet_v3_{name}_space", num_classes=10, resolution=32)
    arch = space.sample(seed)
    assert isinstance(arch, Arch) and arch.num_classes == 10 and arch.resolution == 32
    model = build_model(arch).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()
