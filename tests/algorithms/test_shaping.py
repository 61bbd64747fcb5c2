"""Process reward shaping: value targets, the potential-based shaped target and its [0, 1] image, by hand."""

import pytest

from agentprm.algorithms.mc_targets import mc_q_targets
from agentprm.algorithms.shaping import shape_targets, shaped_value, to_unit_interval, value_targets
from test_mc_targets import episode  # tests/algorithms is on sys.path (no __init__.py)


def test_value_is_the_visit_weighted_mean_of_the_actions_q():
    # state o0: a0 visited twice (wins at T=2 and T=3), b0 once (lost); gamma 0.5
    records = [episode("g", [("o0", "a0"), ("o1", "a1")], True), episode("g", [("o0", "b0"), ("o2", "b1")], False),
               episode("g", [("o0", "a0"), ("o1", "c1"), ("o3", "c2")], True)]
    targets = mc_q_targets(records, gamma=0.5, val_fraction=0.0)
    values = {(v.state["observation"], len(v.state["history"])): v for v in value_targets(targets)}
    root = values[("o0", 0)]
    # Q(o0, a0) = (0.5 + 0.25) / 2 with 2 visits, Q(o0, b0) = 0 with 1 visit -> V = (2 * 0.375 + 0) / 3 = 0.25
    assert root.q == pytest.approx(0.25) and root.visits == 3 and root.response == "" and root.action == ""
    assert sorted(root.episode_indices) == [0, 1, 2]
    assert values[("o1", 1)].q == pytest.approx((1.0 + 0.5) / 2)  # a1 (won at once) and c1 (one step later)
    assert len(value_targets(targets)) == 4  # o0; o1 after a0 (shared); o2 after b0; o3 after a0, c1


def test_shaped_value_and_its_image():
    assert shaped_value(0.5, v_state=0.4, v_next=0.8, gamma=0.5) == pytest.approx(0.5 + 0.4 - 0.4)
    assert shaped_value(1.0, v_state=0.9, v_next=None, gamma=0.5) == pytest.approx(0.1)  # V = 0 after the end
    assert to_unit_interval(-1.0, 0.95) == 0.0 and to_unit_interval(1.95, 0.95) == pytest.approx(1.0)
    assert to_unit_interval(0.0, 1.0) == pytest.approx(1 / 3)


def test_shape_targets_uses_the_next_state_of_the_first_visit():
    records = [episode("g", [("o0", "a0"), ("o1", "a1")], True)]  # T = 2
    targets = mc_q_targets(records, gamma=0.5, val_fraction=0.0)  # Q = [0.5, 1.0]
    table = {"o0": 0.2, "o1": 0.6}
    seen = []

    def value(states):
        seen.extend(s.observation for s in states)
        return [table[s.observation] for s in states]

    shaped = shape_targets(targets, records, value, gamma=0.5)
    assert seen == ["o0", "o1", "o1"]  # the two states, then the one next state that exists
    # step 0: 0.5 + 0.5 * V(o1) - V(o0) = 0.5 + 0.3 - 0.2 = 0.6; step 1 (last): 1.0 + 0 - 0.6 = 0.4
    assert [t.q for t in shaped] == pytest.approx([to_unit_interval(0.6, 0.5), to_unit_interval(0.4, 0.5)])
    assert [t.key for t in shaped] == [t.key for t in targets]
    with pytest.raises(ValueError, match="returned"):
        shape_targets(targets, records, lambda states: [0.0], gamma=0.5)
