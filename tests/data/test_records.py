"""TrajectoryRecord / StepRecord: exact dict round-trips and validation errors that name the key."""

from __future__ import annotations

import math

import pytest

from agentprm.data.records import SCHEMA_VERSION, RecordError, StepRecord, TrajectoryRecord


def make_step(index: int = 0, **overrides) -> StepRecord:
    values = dict(
        observation=f"You are in the kitchen ({index}). Il y a un café ☕.",
        admissible_actions=["look", "go to fridge 1", f"take mug {index}"],
        response=f"THOUGHT: I need a mug.\nACTION: take mug {index}",
        reason="I need a mug.",
        action=f"take mug {index}",
        admissible=True,
        reward=0.0,
        done=False,
        won=False,
    )
    values.update(overrides)
    return StepRecord(**values)


def make_record(num_steps: int = 3, **overrides) -> TrajectoryRecord:
    steps = [make_step(i) for i in range(num_steps)]
    if steps:
        steps[-1] = make_step(num_steps - 1, reward=1.0, done=True, won=True, extras={"prm": [0.25, 0.5]})
    values = dict(
        env="alfworld",
        env_version="0.4.2",
        game_id="json_2.1.1/train/pick_and_place-Mug-None-Shelf-1/trial_0/game.tw-pddl",
        split="train",
        task="put a clean mug in the shelf.",
        task_type="pick_and_place",
        policy_id="expert",
        seed=7,
        steps=steps,
        won=True,
        total_reward=1.0,
        final_observation="You put the mug in the shelf.",
        meta={"temperature": 0.7, "tags": ["a", "b"], "nested": {"k": None}},
    )
    values.update(overrides)
    return TrajectoryRecord(**values)


def test_round_trip_is_exact() -> None:
    record = make_record()
    data = record.to_dict()
    assert TrajectoryRecord.from_dict(data) == record
    assert TrajectoryRecord.from_dict(data).to_dict() == data
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["num_steps"] == record.num_steps == 3
    assert data["steps"][2]["extras"] == {"prm": [0.25, 0.5]}


def test_num_steps_follows_steps() -> None:
    record = make_record(num_steps=2)
    record.steps.append(make_step(2))
    assert record.num_steps == 3
    assert record.to_dict()["num_steps"] == 3


def test_num_steps_is_optional_but_must_agree() -> None:
    data = make_record(num_steps=2).to_dict()
    del data["num_steps"]
    assert TrajectoryRecord.from_dict(data).num_steps == 2
    data["num_steps"] = 5
    with pytest.raises(RecordError, match=r"'num_steps'.*5.*len\(steps\) = 2"):
        TrajectoryRecord.from_dict(data)


def test_to_dict_returns_copies() -> None:
    record = make_record()
    data = record.to_dict()
    data["meta"]["nested"]["k"] = "changed"
    data["steps"][0]["admissible_actions"].append("dance")
    assert record.meta["nested"]["k"] is None
    assert "dance" not in record.steps[0].admissible_actions


def test_int_reward_is_read_as_float() -> None:
    data = make_record().to_dict()
    data["total_reward"] = 1
    data["steps"][0]["reward"] = 0
    record = TrajectoryRecord.from_dict(data)
    assert type(record.total_reward) is float and record.total_reward == 1.0
    assert type(record.steps[0].reward) is float


def test_record_error_is_a_value_error() -> None:
    assert issubclass(RecordError, ValueError)


@pytest.mark.parametrize("key", ["won", "steps", "game_id", "meta", "final_observation"])
def test_missing_key_is_named(key: str) -> None:
    data = make_record().to_dict()
    del data[key]
    with pytest.raises(RecordError, match=f"missing required key '{key}'"):
        TrajectoryRecord.from_dict(data)


def test_missing_step_key_is_named_with_its_index() -> None:
    data = make_record().to_dict()
    del data["steps"][1]["reward"]
    with pytest.raises(RecordError, match=r"missing required key 'steps\[1\]\.reward'"):
        TrajectoryRecord.from_dict(data)


@pytest.mark.parametrize(
    ("key", "bad_value", "expected"),
    [
        ("steps", {"0": "step"}, "list of steps"),
        ("won", 1, "bool"),
        ("seed", True, "int"),
        ("seed", 7.0, "int"),
        ("total_reward", "1.0", "float"),
        ("task", None, "str"),
        ("meta", [], "object"),
    ],
)
def test_wrong_type_is_named(key: str, bad_value: object, expected: str) -> None:
    data = make_record().to_dict()
    data[key] = bad_value
    with pytest.raises(RecordError, match=f"key '{key}': expected {expected}"):
        TrajectoryRecord.from_dict(data)


def test_wrong_type_inside_a_step_is_named() -> None:
    data = make_record().to_dict()
    data["steps"][0]["admissible_actions"][1] = 3
    with pytest.raises(RecordError, match=r"key 'steps\[0\]\.admissible_actions\[1\]': expected str"):
        TrajectoryRecord.from_dict(data)
    data = make_record().to_dict()
    data["steps"][2]["done"] = "yes"
    with pytest.raises(RecordError, match=r"key 'steps\[2\]\.done': expected bool"):
        TrajectoryRecord.from_dict(data)
    data = make_record().to_dict()
    data["steps"][1] = "look"
    with pytest.raises(RecordError, match=r"key 'steps\[1\]': expected an object"):
        TrajectoryRecord.from_dict(data)


@pytest.mark.parametrize("version", [0, 2, "1", True, None])
def test_unknown_schema_version(version: object) -> None:
    data = make_record().to_dict()
    data["schema_version"] = version
    with pytest.raises(RecordError, match=r"key 'schema_version': unsupported value"):
        TrajectoryRecord.from_dict(data)


def test_missing_schema_version() -> None:
    data = make_record().to_dict()
    del data["schema_version"]
    with pytest.raises(RecordError, match="missing required key 'schema_version'"):
        TrajectoryRecord.from_dict(data)


def test_unknown_keys_are_named() -> None:
    data = make_record().to_dict()
    data["rewardz"] = 1.0
    data["notes"] = "x"
    with pytest.raises(RecordError, match=r"unknown keys 'rewardz', 'notes'"):
        TrajectoryRecord.from_dict(data)
    data = make_record().to_dict()
    data["steps"][0]["score"] = 0.5
    with pytest.raises(RecordError, match=r"unknown key 'steps\[0\]\.score'"):
        TrajectoryRecord.from_dict(data)


def test_not_a_dict() -> None:
    with pytest.raises(RecordError, match="expected a JSON object, got list"):
        TrajectoryRecord.from_dict([1, 2])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_rejected(bad: float) -> None:
    data = make_record().to_dict()
    data["steps"][1]["reward"] = bad
    with pytest.raises(RecordError, match=r"key 'steps\[1\]\.reward': expected a finite float"):
        TrajectoryRecord.from_dict(data)
    with pytest.raises(RecordError, match=r"key 'meta\.score'"):
        make_record(meta={"score": bad}).validate()


def test_values_json_would_change_are_rejected() -> None:
    with pytest.raises(RecordError, match=r"key 'meta\.pair'.*tuple"):
        make_record(meta={"pair": (1, 2)}).validate()
    with pytest.raises(RecordError, match=r"key 'meta\.by_step': dict keys must be str"):
        make_record(meta={"by_step": {1: "a"}}).validate()
    with pytest.raises(RecordError, match=r"key 'steps\[0\]\.extras\.when'"):
        make_record(steps=[make_step(extras={"when": object()})]).validate()


def test_step_from_dict_alone() -> None:
    step = make_step(extras={"prm": 0.9})
    assert StepRecord.from_dict(step.to_dict()) == step
    data = step.to_dict()
    data["won"] = "no"
    with pytest.raises(RecordError, match=r"key 'won': expected bool"):
        StepRecord.from_dict(data)
