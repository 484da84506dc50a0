"""Preset counts a user can quote: torchvision's parameter counts and the papers' MAdds tables."""

import pytest

from search_space import count, mobilenet_v1, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small


@pytest.mark.parametrize(("make", "params", "madds"), [
    (mobilenet_v3_large, 5_483_032, 216_589_760),
    (mobilenet_v3_small, 2_542_856, 56_510_400),
    (mobilenet_v2, 3_504_872, 300_774_272),
    (mobilenet_v1, 4_231_976, 568_740_352),
])
def test_preset_counts_equal_torchvision(make, params, madds):
    assert count(make()) == (params, madds)


@pytest.mark.parametrize(("alpha", "madds_m", "params_m"), [
    (1.0, 569, 4.2), (0.75, 325, 2.6), (0.5, 149, 1.3), (0.25, 41, 0.5)])
def test_mobilenet_v1_width_multiplier_table(alpha, madds_m, params_m):
    p, m = count(mobilenet_v1(alpha))
    assert m / 1e6 == pytest.approx(madds_m, rel=0.01)
    assert round(p / 1e6, 1) == params_m


@pytest.mark.parametrize(("res", "madds_m"), [(224, 569), (192, 418), (160, 290), (128, 186)])
def test_mobilenet_v1_resolution_multiplier_table(res, madds_m):
    _, m = count(mobilenet_v1(1.0, resolution=res))
    assert m / 1e6 == pytest.approx(madds_m, rel=0.01)


@pytest.mark.parametrize(("make", "madds_m", "params_m"), [
    (mobilenet_v3_large, 155, 4.0), (mobilenet_v3_small, 44, 2.0)])
def test_mobilenet_v3_075_near_paper_table_9(make, madds_m, params_m):
    p, m = count(make(0.75))
    assert m / 1e6 == pytest.approx(madds_m, rel=0.02)
    assert p / 1e6 == pytest.approx(params_m, rel=0.03)
