"""Grading rankers against ground-truth Q: every metric on hand-built states, by hand."""

import math

import pytest

from agentprm.algorithms.action_ranking import (
    GradedState,
    average_ranks,
    _fold,
    bootstrap_ci,
    crossfit_weight,
    estimate_agreement,
    expert_rank,
    grade_ranker,
    mix_scores,
    pair_credits,
    paired_difference,
    rank_agreement,
    spearman,
    split_half_credits,
    top1_credit,
)


def _state(q, scores, halves=None, expert=None, admissible=None):
    actions = [f"a{i}" for i in range(len(q))]
    admissible = admissible or actions
    return GradedState(actions=actions, q=list(q), q_halves=halves or (list(q), list(q)), admissible=admissible,
                       scores={"r": dict(zip(admissible, scores))}, expert_action=expert)


def test_pairs_need_a_gap_and_ties_earn_half():
    # Q = (0.9, 0.5, 0.45): pairs (0,1) and (0,2) have |dQ| >= 0.1; (1,2) does not.
    state = _state([0.9, 0.5, 0.45], [0.2, 0.3, 0.2])
    assert pair_credits(state, "r", 0.1) == [0.0, 0.5]


def test_top1_counts_the_share_of_tied_tops_that_are_best():
    assert top1_credit(_state([0.9, 0.1, 0.1], [1.0, 0.0, 1.0]), "r", 0.1) == 0.5
    assert top1_credit(_state([0.9, 0.1], [2.0, 1.0]), "r", 0.1) == 1.0
    assert top1_credit(_state([0.5, 0.45], [2.0, 1.0]), "r", 0.1) is None  # no spread: nothing to rank


def test_spearman_by_hand():
    assert average_ranks([3.0, 1.0, 3.0]) == [2.5, 1.0, 2.5]
    assert average_ranks([3.0, 1.0, 2.0], descending=True) == [1.0, 3.0, 2.0]
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    # ranks x = (1, 2, 3), y = (1.5, 1.5, 3): rho = 1.5 / sqrt(2 * 1.5)
    assert spearman([1, 2, 3], [0, 0, 5]) == pytest.approx(1.5 / math.sqrt(3.0))
    assert spearman([1, 1, 1], [0, 1, 2]) == 0.0


def test_expert_rank_is_among_all_admissible_actions():
    state = _state([0.9, 0.1], [0.1, 0.7, 0.7, 0.2], expert="b", admissible=["a0", "a1", "b", "c"])
    assert expert_rank(state, "r") == 1.5  # tied first with a1
    assert expert_rank(_state([0.9, 0.1], [1.0, 0.0], expert="zz"), "r") is None


def test_rank_agreement_with_the_policy_is_over_all_admissible_actions():
    """State 1: the ranker and the policy agree on the two candidates a0 > a1 but not on the third admissible
    action b (rho -0.5 over all three); state 2: the same order (+1); state 3 has one admissible action and is left
    out."""
    one = _state([0.9, 0.1], [3.0, 2.0, 1.0], admissible=["a0", "a1", "b"])
    one.scores["p"] = {"a0": 5.0, "a1": 4.0, "b": 9.0}
    two = _state([0.9, 0.1], [2.0, 1.0])
    two.scores["p"] = {"a0": 0.5, "a1": 0.1}
    three = _state([0.5], [1.0])
    three.scores["p"] = {"a0": 0.0}
    # state 1: ranks r = (3, 2, 1), p = (2, 1, 3): rho = -0.5
    got = rank_agreement([one, two, three], "r", "p")
    assert got["n"] == 2 and got["value"] == pytest.approx((-0.5 + 1.0) / 2)


def test_split_half_agreement():
    state = _state([0.9, 0.1, 0.5], [0, 0, 0], halves=([1.0, 0.0, 0.5], [0.8, 0.2, 0.8]))
    # pairs (0,1): both halves agree; (0,2): +0.5 vs 0.0 -> tie -> 1/2; (1,2): -0.5 vs -0.6 agree
    assert split_half_credits(state, 0.1) == [1.0, 0.5, 1.0]
    assert estimate_agreement([state], 0.1, resamples=50)["value"] == pytest.approx(2.5 / 3)


def test_grade_ranker_pools_pairs_over_states_and_bootstraps_over_states():
    good = _state([1.0, 0.0], [0.9, 0.1])
    bad = _state([1.0, 0.0, 0.5], [0.1, 0.9, 0.5])  # 3 pairs, all wrong
    report = grade_ranker([good, bad], "r", delta=0.1, resamples=200)
    assert report["pairwise_accuracy"]["value"] == pytest.approx(1 / 4) and report["pairwise_accuracy"]["n"] == 4
    low, high = report["pairwise_accuracy"]["ci95"]
    assert 0.0 <= low <= 0.25 <= high <= 1.0
    assert report["top1_agreement"]["value"] == 0.5
    assert report["spearman"]["value"] == pytest.approx(0.0)  # +1 and -1


def test_bootstrap_interval_of_a_constant_is_the_constant():
    assert bootstrap_ci([(1.0, 1)] * 10, resamples=100) == [1.0, 1.0]
    assert all(math.isnan(v) for v in bootstrap_ci([], resamples=10))


def test_paired_difference_is_the_accuracy_gap_on_the_same_pairs():
    good = _state([1.0, 0.0], [0.9, 0.1])
    good.scores["b"] = {"a0": 0.1, "a1": 0.9}
    mixed = _state([1.0, 0.0, 0.5], [0.9, 0.1, 0.5])
    mixed.scores["b"] = {"a0": 0.5, "a1": 0.1, "a2": 0.9}  # pairs (0,1) right, (0,2) wrong, (1,2) right
    result = paired_difference([good, mixed], "r", "b", delta=0.1, resamples=200)
    assert result["value"] == pytest.approx((4 - 2) / 4) and result["n"] == 4
    assert result["ci95"][0] <= result["value"] <= result["ci95"][1]


def test_mix_scores_adds_weighted_rankers():
    state = _state([1.0, 0.0], [0.2, 0.6])
    state.scores["policy"] = {"a0": -1.0, "a1": -5.0}
    mix_scores([state], "m", [("r", 1.0), ("policy", 0.5)])
    # a0: 0.2 - 0.5 = -0.3; a1: 0.6 - 2.5 = -1.9: the mix orders the pair right where r alone does not
    assert state.scores["m"] == pytest.approx({"a0": -0.3, "a1": -1.9})
    assert pair_credits(state, "m", 0.1) == [1.0] and pair_credits(state, "r", 0.1) == [0.0]


def test_crossfit_weight_chooses_on_the_other_fold():
    def game_state(game, q, r, policy):
        state = _state(q, r)
        state.scores["policy"] = dict(zip(state.actions, policy))
        state.meta["game_id"] = game
        return state

    games = [f"g{k}" for k in range(40)]
    fold0 = next(g for g in games if _fold(GradedState([], [], ([], []), meta={"game_id": g})) == 0)
    fold1 = next(g for g in games if _fold(GradedState([], [], ([], []), meta={"game_id": g})) == 1)
    # fold 0: the policy is right and r wrong (a large weight wins); fold 1: r is right, the policy wrong (w = 0)
    a = game_state(fold0, [1.0, 0.0], [0.4, 0.6], [-1.0, -3.0])
    b = game_state(fold1, [1.0, 0.0], [0.9, 0.1], [-3.0, -1.0])
    chosen = crossfit_weight([a, b], "m", "r", "policy", [0.0, 1.0])
    # fold 0's weight is tuned on fold 1 (0 best there), fold 1's on fold 0 (1 best there)
    assert chosen == [0.0, 1.0]
    assert a.scores["m"] == pytest.approx({"a0": 0.4, "a1": 0.6})
    assert b.scores["m"] == pytest.approx({"a0": -2.1, "a1": -0.9})
    # both states are ordered wrong: tuning on one fold does not leak into the other's grade
    assert grade_ranker([a, b], "m", resamples=50)["pairwise_accuracy"]["value"] == 0.0
    with pytest.raises(ValueError):
        crossfit_weight([a], "m", "r", "policy", [])
