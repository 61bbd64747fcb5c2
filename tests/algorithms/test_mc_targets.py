"""MC Q targets: exact values on hand-made trajectories (merging, remaining-step discount, by-game split, state
keys, Parquet)."""

import hashlib
import json

import pyarrow.parquet as pq
import pytest

from agentprm.algorithms.mc_targets import (
    KEYINGS,
    QTarget,
    history_state_id,
    mc_q_targets,
    observation_state_id,
    pooled_state_id,
    prefix_key,
    state_action_key,
    state_counts,
    state_from_target,
    state_key,
    target_histogram,
    targets_from_parquet,
    visited_state_id,
    targets_to_parquet,
)
from agentprm.algorithms.sft_data import in_validation
from agentprm.data import StepRecord, TrajectoryRecord
from agentprm.models.prompts import PromptState


def step(observation: str, action: str, response: str | None = None) -> StepRecord:
    return StepRecord(observation=observation, admissible_actions=[action, "look"], response=response or action,
                      reason="", action=action, admissible=True, reward=0.0, done=False, won=False)


def episode(game: str, pairs: list[tuple[str, str]], won: bool, task: str = "put a mug in cabinet") -> TrajectoryRecord:
    steps = [step(obs, action) for obs, action in pairs]
    steps[-1].done, steps[-1].won, steps[-1].reward = won, won, float(won)
    return TrajectoryRecord(env="alfworld", env_version="test", game_id=game, split="train", task=task,
                            task_type="pick_and_place_simple", policy_id="pi_0", seed=0, steps=steps, won=won,
                            total_reward=float(won), final_observation="done" if won else "...")


WIN = [("o0", "a0"), ("o1", "a1"), ("o2", "a2")]


def by_step(targets: list[QTarget]) -> list[float]:
    return [t.q for t in sorted(targets, key=lambda t: t.step_index)]


def test_discount_counts_the_steps_remaining():
    targets = mc_q_targets([episode("g", WIN, won=True)], gamma=0.5, val_fraction=0.0)
    assert by_step(targets) == [0.25, 0.5, 1.0]
    assert [t.steps_remaining for t in targets] == [2, 1, 0]
    assert [t.visits for t in targets] == [1, 1, 1]
    assert [t.step_index for t in targets] == [0, 1, 2]  # first-visit order


def test_failed_or_truncated_episode_gives_zero_everywhere():
    # A step-budget cut (won=False, not done) is a failure: R = 0, not 0.5 as with the reference's (q+1)/2.
    targets = mc_q_targets([episode("g", WIN, won=False)], gamma=0.95, val_fraction=0.0)
    assert by_step(targets) == [0.0, 0.0, 0.0]


def test_shared_prefix_merges_and_averages_discounted_returns():
    winner = episode("g", WIN, won=True)  # T = 3
    loser = episode("g", [("o0", "a0"), ("o1", "b1"), ("o3", "b2"), ("o4", "b3")], won=False)
    long_winner = episode("g", [("o0", "a0"), ("o1", "a1"), ("o2", "c2"), ("o5", "c3")], won=True)  # T = 4
    targets = mc_q_targets([winner, loser, long_winner], gamma=0.5, val_fraction=0.0)
    table = {(t.step_index, t.action): t for t in targets}
    first = table[(0, "a0")]
    assert first.visits == 3 and first.episode_indices == [0, 1, 2] and first.episode_won == [True, False, True]
    assert first.q == pytest.approx((0.25 + 0.0 + 0.125) / 3)
    assert first.steps_remaining == 2 and first.episode_index == 0 and first.wins == 2
    shared = table[(1, "a1")]
    assert shared.visits == 2 and shared.q == pytest.approx((0.5 + 0.25) / 2)
    assert table[(1, "b1")].visits == 1 and table[(1, "b1")].q == 0.0
    assert table[(2, "c2")].q == 0.5 and table[(3, "c3")].q == 1.0 and table[(2, "a2")].q == 1.0
    assert len(targets) == 1 + 2 + 3 + 2  # a0 | a1, b1 | a2, b2, c2 | b3, c3
    assert len({t.key for t in targets}) == len(targets)


def test_same_prefix_in_another_game_stays_separate():
    targets = mc_q_targets([episode("g1", WIN, won=True), episode("g2", WIN, won=False)], gamma=0.5,
                           val_fraction=0.0)
    assert len(targets) == 6 and all(t.visits == 1 for t in targets)
    assert by_step([t for t in targets if t.game_id == "g1"]) == [0.25, 0.5, 1.0]
    assert by_step([t for t in targets if t.game_id == "g2"]) == [0.0, 0.0, 0.0]
    assert prefix_key("g1", WIN[:1]) != prefix_key("g2", WIN[:1])


def test_key_is_the_full_prefix_not_the_state_alone():
    # Same current observation and action at step 1, different earlier action: different keys.
    a = episode("g", [("o0", "x"), ("o1", "a1")], won=True)
    b = episode("g", [("o0", "y"), ("o1", "a1")], won=False)
    targets = mc_q_targets([a, b], gamma=0.9, val_fraction=0.0)
    assert len(targets) == 4 and {t.q for t in targets if t.step_index == 1} == {1.0, 0.0}
    assert targets[0].key == prefix_key("g", [("o0", "x")])


def test_state_fields_and_prompt_state():
    records = [episode("g", WIN, won=True)]
    target = mc_q_targets(records, gamma=0.9, val_fraction=0.0)[2]
    assert target.state == {"task": "put a mug in cabinet", "observation": "o2", "admissible_actions": ["a2", "look"],
                            "history": [("o0", "a0"), ("o1", "a1")], "task_type": "pick_and_place_simple"}
    assert target.response == "a2" and target.action == "a2" and target.split == "train"
    assert state_from_target(target) == PromptState.from_trajectory(records[0], 2)


def test_state_key_groups_sibling_actions_only():
    records = [episode("g", [("o0", "a0"), ("o1", "a1")], won=True), episode("g", [("o0", "a0"), ("o1", "b1")], False)]
    targets = mc_q_targets(records, gamma=0.9, val_fraction=0.0)
    keys = [state_key(t) for t in targets]
    assert keys[1] == keys[2] and keys[0] != keys[1]


def test_split_is_by_game_and_stable():
    games = [f"train/game_{i}" for i in range(40)]
    records = [episode(g, WIN, won=i % 2 == 0) for i, g in enumerate(games)]
    records += [episode(g, [("o0", "a0"), ("o9", "z")], won=False) for g in games]
    targets = mc_q_targets(records, gamma=0.9, val_fraction=0.3)
    splits: dict[str, set[str]] = {}
    for target in targets:
        splits.setdefault(target.game_id, set()).add(target.split)
    assert all(len(s) == 1 for s in splits.values())  # every key of a game on one side
    assert {g for g, s in splits.items() if s == {"val"}} == {g for g in games if in_validation(g, 0.3)}
    assert 0 < sum(s == {"val"} for s in splits.values()) < 40
    again = mc_q_targets(list(reversed(records)), gamma=0.9, val_fraction=0.3)
    assert {t.key: t.split for t in again} == {t.key: t.split for t in targets}
    assert all(t.split == "train" for t in mc_q_targets(records, gamma=0.9, val_fraction=0.0))


def test_parquet_round_trip_is_exact(tmp_path):
    records = [episode("g1", WIN, won=True), episode("g1", [("o0", "a0"), ("o1", "b1")], won=False),
               episode("g2", [("o0", "a0")], won=True, task="héat — a mug\nnow")]
    targets = mc_q_targets(records, gamma=0.95, val_fraction=0.5)
    path = tmp_path / "targets" / "q.parquet"
    assert targets_to_parquet(targets, path) == len(targets)
    assert targets_from_parquet(path) == targets
    schema = pq.read_schema(path)
    history = schema.field("state").type.field("history").type
    assert history.value_type.names == ["observation", "action"]
    assert not list(path.parent.glob("*.tmp"))
    targets_to_parquet([], tmp_path / "empty.parquet")
    assert targets_from_parquet(tmp_path / "empty.parquet") == []


def test_reading_another_parquet_file_fails_clearly(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not an MC target file"):
        targets_from_parquet(tmp_path / "other.parquet")


def test_histogram_and_argument_checks():
    targets = mc_q_targets([episode("g", WIN, won=True), episode("h", WIN, won=False)], gamma=0.5, val_fraction=0.0)
    assert target_histogram(targets, bins=4) == [3, 1, 1, 1]  # 0,0,0 | 0.25 | 0.5 | 1.0 (last bin closed)
    assert target_histogram(targets, bins=1) == [6]
    with pytest.raises(ValueError, match="gamma"):
        mc_q_targets([], gamma=0.0)
    with pytest.raises(ValueError, match="val_fraction"):
        mc_q_targets([], gamma=0.9, val_fraction=1.0)


def test_replayed_reset_steps_get_no_target_but_stay_in_the_prefix():
    # Two reset episodes replay (o0, a0) then branch; a third plays a0 itself from the start.
    def reset(pairs, won):
        record = episode("g", pairs, won)
        record.steps[0].extras["reset"] = True
        return record

    replay_win = reset([("o0", "a0"), ("o1", "a1"), ("o2", "a2")], won=True)  # T = 3
    replay_loss = reset([("o0", "a0"), ("o1", "b1")], won=False)
    own = episode("g", [("o0", "a0"), ("o1", "a1")], won=True)  # T = 2
    targets = mc_q_targets([replay_win, replay_loss, own], gamma=0.5, val_fraction=0.0)
    table = {(t.step_index, t.action): t for t in targets}
    # (o0, a0) has a target only from the episode that chose it: one visit, return gamma^1 * 1
    assert table[(0, "a0")].visits == 1 and table[(0, "a0")].episode_indices == [2]
    assert table[(0, "a0")].q == 0.5
    # after the reset point the keys carry the replayed prefix: a1 merges the replay and the own episode
    assert table[(1, "a1")].visits == 2 and table[(1, "a1")].q == pytest.approx((0.5 + 1.0) / 2)
    assert table[(1, "b1")].q == 0.0 and table[(2, "a2")].q == 1.0
    assert table[(1, "a1")].state["history"] == [("o0", "a0")]
    assert len(targets) == 4


# -- pooling by the environment's true state ---------------------------------------------------------------------------


def world(game: str, visits: list[tuple[str, str, str | None]], won: bool) -> TrajectoryRecord:
    """An episode of (observation, action, recorded state id or None) steps."""
    record = episode(game, [(obs, action) for obs, action, _ in visits], won)
    for step_record, (_, _, state_id) in zip(record.steps, visits):
        if state_id is not None:
            step_record.extras["state_id"] = state_id
    return record


# A reaches y through x; B goes to y directly (other text on arrival, same world), then fails.
VIA_X = [("start", "go to x", "s0"), ("at x", "go to y", "sx"), ("at y", "take mug", "sy")]
DIRECT = [("start", "go to y", "s0"), ("at y, directly", "take mug", "sy"), ("holding mug", "drop mug", "sm")]


def test_state_key_merges_two_paths_to_one_world_state():
    records = [world("g", VIA_X, won=True), world("g", DIRECT, won=False)]
    targets = mc_q_targets(records, gamma=0.5, val_fraction=0.0, key="state")
    table = {(t.state["observation"], t.action): t for t in targets}
    take = table[("at y", "take mug")]  # first visit's observation, history and response are the target's
    assert take.visits == 2 and take.episode_indices == [0, 1] and take.episode_won == [True, False]
    assert take.q == pytest.approx((0.5**0 * 1 + 0.5**1 * 0) / 2)
    assert take.step_index == 2 and take.steps_remaining == 0 and take.state["history"] == [("start", "go to x"),
                                                                                             ("at x", "go to y")]
    assert table[("start", "go to x")].q == 0.25 and table[("at x", "go to y")].q == 0.5
    assert table[("start", "go to y")].q == 0.0 and table[("holding mug", "drop mug")].q == 0.0
    assert len(targets) == 5
    assert take.key == state_action_key("g", "sy", "take mug")
    # sibling actions at the start share one state group; every other state has one action
    assert take.state_id == pooled_state_id("g", "sy") == "state:" + hashlib.sha256(
        json.dumps(["g", "sy"]).encode()).hexdigest()
    groups = {}
    for target in targets:
        groups.setdefault(state_key(target), []).append(target.action)
    assert groups[pooled_state_id("g", "s0")] == ["go to x", "go to y"] and len(groups) == 4
    assert state_counts(targets) == {"states": 4, "multi_action_states": 1}

    by_prefix = mc_q_targets(records, gamma=0.5, val_fraction=0.0, key="prefix")
    assert len(by_prefix) == 6 and all(t.visits == 1 for t in by_prefix)
    assert [t.state_id for t in by_prefix] == [history_state_id("g", t.state["history"], t.state["observation"])
                                               for t in by_prefix]
    assert state_key(by_prefix[0]) == state_key(by_prefix[3])  # the same first observation, empty history
    assert state_counts(by_prefix) == {"states": 5, "multi_action_states": 1}


def test_state_key_keeps_games_apart_and_every_visit_counts():
    loop = [("start", "go to x", "s0"), ("at x", "go to start", "sx"), ("start again", "go to x", "s0"),
            ("at x", "look", "sx")]
    records = [world("g", loop, won=True), world("h", VIA_X, won=True)]
    targets = mc_q_targets(records, gamma=0.5, val_fraction=0.0, key="state")
    revisited = next(t for t in targets if t.game_id == "g" and t.action == "go to x")
    assert revisited.visits == 2 and revisited.episode_indices == [0, 0]  # steps 0 and 2 of one episode
    assert revisited.q == pytest.approx((0.5**3 + 0.5**1) / 2)
    other_game = next(t for t in targets if t.game_id == "h" and t.action == "go to x")
    assert other_game.visits == 1 and other_game.q == 0.25 and other_game.state_id != revisited.state_id


def test_fallback_state_is_the_observation_and_admissible_actions():
    def plain(pairs, admissible, won):  # no recorded state id, as for TextWorldExpress
        record = episode("g", pairs, won)
        for step_record, actions in zip(record.steps, admissible):
            step_record.admissible_actions = actions
        return record

    a = plain([("kitchen", "open fridge"), ("hall", "go east")], [["open fridge", "go east"], ["go east"]], True)
    b = plain([("kitchen", "go east"), ("hall", "go east")], [["go east", "open fridge"], ["go east"]], False)
    c = plain([("kitchen", "go east")], [["go east"]], False)  # same text, other admissible actions: another state
    targets = mc_q_targets([a, b, c], gamma=0.5, val_fraction=0.0, key="state")
    table = {(t.state["observation"], t.action, len(t.state["admissible_actions"])): t for t in targets}
    assert table[("hall", "go east", 1)].visits == 2 and table[("hall", "go east", 1)].q == 0.5
    assert table[("kitchen", "go east", 2)].visits == 1 and table[("kitchen", "go east", 1)].visits == 1
    assert len(targets) == 4
    kitchen = observation_state_id("kitchen", ["open fridge", "go east"])
    assert kitchen == observation_state_id("kitchen", ["go east", "open fridge"]) == "obs:" + hashlib.sha256(
        json.dumps(["kitchen", ["go east", "open fridge"]]).encode()).hexdigest()[:16]
    assert table[("kitchen", "open fridge", 2)].state_id == pooled_state_id("g", kitchen)
    assert table[("kitchen", "open fridge", 2)].state_id == table[("kitchen", "go east", 2)].state_id


def test_state_visited_key_separates_what_the_agent_remembers_and_merges_the_same_set():
    # A reaches y through x (visited {x, y} at sy); B goes straight to y ({y}); C goes y, x, then y again ({x, y})
    via_y_and_x = [("start", "go to y", "s0"), ("at y", "go to x", "s1"), ("at x", "go to y", "s2"),
                   ("at y again", "take mug", "sy")]
    records = [world("g", VIA_X, won=True), world("g", DIRECT, won=False), world("g", via_y_and_x, won=False)]
    pooled = mc_q_targets(records, gamma=0.5, val_fraction=0.0, key="state")
    by_memory = mc_q_targets(records, gamma=0.5, val_fraction=0.0, key="state_visited")
    take = {t.key: t for t in pooled if t.action == "take mug"}
    assert [t.visits for t in take.values()] == [3]  # the world alone merges all three
    take = [t for t in by_memory if t.action == "take mug"]
    assert [(t.visits, t.episode_indices, t.q) for t in take] == [(2, [0, 2], (1.0 + 0.0) / 2), (1, [1], 0.0)]
    assert take[0].state_id == pooled_state_id("g", visited_state_id("sy", [("start", "go to x"), ("at x", "go to y")]))
    assert visited_state_id("sy", [("o", "go to x"), ("o", "go to y")]) == visited_state_id(
        "sy", [("o", "go to y"), ("o", "go to x"), ("o", "look")]) == "visited:" + hashlib.sha256(
        json.dumps(["sy", ["x", "y"]]).encode()).hexdigest()[:16]
    assert visited_state_id("sy", [("o", "go to x")]) != visited_state_id("sy", [])


@pytest.mark.parametrize("key", KEYINGS)
def test_reset_and_branch_prefix_steps_get_no_target(key):
    reset = world("g", VIA_X, won=True)
    reset.steps[0].extras["reset"] = True
    branch = world("g", DIRECT, won=True)
    branch.steps[0].extras["branch_prefix"] = True
    branch.steps[1].extras["branch_prefix"] = True
    targets = mc_q_targets([reset, branch], gamma=0.5, val_fraction=0.0, key=key)
    assert [(t.episode_index, t.step_index, t.action) for t in targets] == [
        (0, 1, "go to y"), (0, 2, "take mug"), (1, 2, "drop mug")]
    assert [t.q for t in targets] == [0.5, 1.0, 1.0]
    assert targets[1].state["history"] == [("start", "go to x"), ("at x", "go to y")]


def test_unknown_key_is_refused():
    with pytest.raises(ValueError, match="key must be one of"):
        mc_q_targets([], gamma=0.9, key="observation")


def test_parquet_keeps_state_ids_and_reads_version_1(tmp_path):
    records = [world("g", VIA_X, won=True), world("g", DIRECT, won=False)]
    pooled = mc_q_targets(records, gamma=0.5, val_fraction=0.0, key="state")
    targets_to_parquet(pooled, tmp_path / "state.parquet")
    assert targets_from_parquet(tmp_path / "state.parquet") == pooled
    assert pq.read_schema(tmp_path / "state.parquet").metadata[b"agentprm.targets_version"] == b"2"

    # a version-1 file (no state_id column), as written before: the state group comes from the history
    by_prefix = mc_q_targets(records, gamma=0.5, val_fraction=0.0, key="prefix")
    targets_to_parquet(by_prefix, tmp_path / "v2.parquet")
    table = pq.read_table(tmp_path / "v2.parquet").drop_columns(["state_id"])
    metadata = {**table.schema.metadata, b"agentprm.targets_version": b"1"}
    pq.write_table(table.replace_schema_metadata(metadata), tmp_path / "v1.parquet")
    old = targets_from_parquet(tmp_path / "v1.parquet")
    assert old == by_prefix and old[0].state_id.startswith("state:")
    pq.write_table(table.replace_schema_metadata({**metadata, b"agentprm.targets_version": b"3"}),
                   tmp_path / "v3.parquet")
    with pytest.raises(ValueError, match="version 3"):
        targets_from_parquet(tmp_path / "v3.parquet")
