"""paired_success_difference: A minus B on the same games, seeds averaged per game, bootstrap over games."""

import pytest

from agentprm.pipeline.results import paired_success_difference, pooled_success


def wins(*rows):
    """wins(seed 1's wins over games g0.., seed 2's ...) -> {seed: {game: bool}}"""
    return {seed: {f"g{i}": bool(w) for i, w in enumerate(row)} for seed, row in enumerate(rows, start=1)}


def test_value_by_hand():
    # A per game: (1+1)/2, (1+0)/2, 0, 0 = 1, .5, 0, 0; B: 0, 0, (1+0)/2, 0 -> d = 1, .5, -.5, 0 -> mean .25
    result = paired_success_difference(wins([1, 1, 0, 0], [1, 0, 0, 0]), wins([0, 0, 1, 0], [0, 0, 0, 0]))
    assert result["difference"] == pytest.approx(0.25)
    assert result["games"] == 4 and result["seeds_a"] == [1, 2] and result["seeds_b"] == [1, 2]
    low, high = result["ci95"]
    assert -0.5 <= low <= 0.25 <= high <= 1.0


def test_interval_of_two_games_by_hand():
    # d = (1, 0): a resample's mean is 0, .5 or 1 with probability 1/4, 1/2, 1/4, so the 2.5% and 97.5%
    # percentiles of 2000 resamples are 0 and 1.
    result = paired_success_difference(wins([1, 0]), wins([0, 0]))
    assert result["difference"] == 0.5
    assert result["ci95"] == [0.0, 1.0]


def test_identical_and_constant_differences_have_point_intervals():
    same = wins([1, 0, 1], [0, 0, 1])
    assert paired_success_difference(same, same)["ci95"] == [0.0, 0.0]
    result = paired_success_difference(wins([1, 1, 1]), wins([0, 0, 0]))
    assert result["difference"] == 1.0 and result["ci95"] == [1.0, 1.0]


def test_seeds_may_differ_between_agents():
    # B played one seed, A three: A's per-game means are 2/3 and 0
    result = paired_success_difference(wins([1, 0], [1, 0], [0, 0]), {7: {"g0": False, "g1": False}})
    assert result["difference"] == pytest.approx(1 / 3)
    assert result["seeds_b"] == [7]


def test_different_games_are_refused():
    with pytest.raises(ValueError, match="different games"):
        paired_success_difference(wins([1, 0]), wins([1, 0, 0]))
    with pytest.raises(ValueError, match="seeds played different games"):
        paired_success_difference({1: {"g0": True}, 2: {"g1": True}}, wins([1]))
    with pytest.raises(ValueError, match="no seeds"):
        paired_success_difference({}, wins([1]))


def test_pooled_success_by_hand():
    result = pooled_success(wins([1, 1, 0, 0], [1, 0, 0, 0]))
    assert result["success"] == pytest.approx(0.375)  # per game 1, .5, 0, 0
    assert result["games"] == 4 and result["seeds"] == [1, 2]
    assert 0.0 <= result["ci95"][0] <= 0.375 <= result["ci95"][1] <= 1.0
    assert pooled_success(wins([1, 1]))["ci95"] == [1.0, 1.0]
