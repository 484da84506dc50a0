"""The decision-vector layout: positions agree with the spaces' decisions, stages tile the vector, packing."""

import dataclasses
import itertools

import numpy as np
import pytest

from search_space import mobilenet_v3_large, mobilenet_v3_large_space, mobilenet_v3_small, mobilenet_v3_small_space
from search_space.encoding import ABSENT, STAGE_DECISIONS, StageLayout, VectorLayout

SPACES = {"large": mobilenet_v3_large_space(), "small": mobilenet_v3_small_space()}
SEEDS = {"large": mobilenet_v3_large, "small": mobilenet_v3_small}


def test_stage_layout_has_a_position_per_stage_decision():
    fields = [f.name for f in dataclasses.fields(StageLayout)]
    assert [f for f in fields if f in STAGE_DECISIONS] == list(STAGE_DECISIONS)
    at = StageLayout.at(stage=2, start=10, max_depth=3)
    assert list(at.stage_level.values()) == list(range(10, 10 + len(STAGE_DECISIONS)))
    assert at.first_expand == 10 + len(STAGE_DECISIONS)
    assert [at.expand(j) for j in range(3)] == list(range(at.first_expand, at.stop))
    assert at.span == slice(10, at.stop) and at.expands == slice(at.first_expand, at.stop)


@pytest.mark.parametrize("name", ["large", "small"])
def test_positions_name_the_spaces_decisions(name):
    space = SPACES[name]
    layout = space.layout
    assert layout.size == space.num_decisions
    assert layout == VectorLayout.of([st.max_depth for st in space.stages])
    assert [at.stage for at in layout.stages] == list(range(len(space.stages)))
    assert layout.stages[0].start == 0
    assert all(a.stop == b.start for a, b in itertools.pairwise(layout.stages))
    assert layout.stages[-1].stop == space.num_decisions
    for i, (st, at) in enumerate(zip(space.stages, layout.stages, strict=True)):
        assert set(st.choices) == set(STAGE_DECISIONS)
        for decision, pos in at.stage_level.items():
            assert space.decisions[pos].name == f"s{i}.{decision}"
            assert space.decisions[pos].choices == st.choices[decision]
        assert at.max_depth == st.max_depth
        for j in range(at.max_depth):
            assert space.decisions[at.expand(j)].name == f"s{i}.l{j}.expand"
            assert space.decisions[at.expand(j)].layer == j


@pytest.mark.parametrize("name", ["large", "small"])
def test_pack_rebuilds_each_stage_of_sampled_vectors(name):
    space = SPACES[name]
    vecs = space.sample_encoded(np.random.default_rng(0), 50)
    for vec in vecs:
        for st, at in zip(space.stages, space.layout.stages, strict=True):
            depth = st.depths[vec[at.depth]]
            assert (vec[at.unused_slots(depth)] == ABSENT).all()
            assert (vec[at.used_slots(depth)] >= 0).all()
            packed = at.pack({d: int(vec[pos]) for d, pos in at.stage_level.items()},
                             [int(v) for v in vec[at.used_slots(depth)]])
            assert packed == [int(v) for v in vec[at.span]]
    for st, at in zip(space.stages, space.layout.stages, strict=True):
        depths = np.asarray(st.depths)[vecs[:, at.depth]]
        assert ((vecs[:, at.expands] >= 0) == at.used_mask(depths)).all()


@pytest.mark.parametrize("name", ["large", "small"])
def test_seed_round_trips_through_the_layout(name):
    space = SPACES[name]
    vec = space.encode(SEEDS[name]())
    rebuilt: list[int] = []
    for st, at in zip(space.stages, space.layout.stages, strict=True):
        depth = st.depths[vec[at.depth]]
        rebuilt += at.pack({d: int(vec[pos]) for d, pos in at.stage_level.items()},
                           [int(v) for v in vec[at.used_slots(depth)]])
    assert rebuilt == [int(v) for v in vec]
    assert space.decode(np.array(rebuilt)) == SEEDS[name]()


def test_pack_refuses_more_layers_than_slots():
    at = StageLayout.at(stage=0, start=0, max_depth=2)
    with pytest.raises(ValueError, match="3 expansions, at most 2"):
        at.pack(dict.fromkeys(STAGE_DECISIONS, 0), [0, 0, 0])
