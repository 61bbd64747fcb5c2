"""The trajectory record: one episode of one policy in one game, schema-versioned.

A record is plain data that serialises to a JSON object (one JSONL line) and back without loss. ``from_dict`` is
strict on purpose: a missing key, a wrong type, an unknown key or a schema version this code does not know raises
``RecordError`` naming the key, because a schema mismatch that passes silently corrupts every table built on top.

``StepRecord.observation`` is what the agent saw *before* acting at that step; the observation after the last
action is ``TrajectoryRecord.final_observation``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


class RecordError(ValueError):
    """A dict does not match the trajectory schema. The message names the offending key."""


@dataclass(kw_only=True)
class StepRecord:
    """One turn: the observation shown, the model's raw response, the parsed action and the environment's answer."""

    observation: str
    admissible_actions: list[str]
    response: str
    reason: str
    action: str
    admissible: bool
    reward: float
    done: bool
    won: bool
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; lists and dicts are copies, so mutating it never changes the record."""
        return {
            "observation": self.observation,
            "admissible_actions": list(self.admissible_actions),
            "response": self.response,
            "reason": self.reason,
            "action": self.action,
            "admissible": self.admissible,
            "reward": self.reward,
            "done": self.done,
            "won": self.won,
            "extras": copy.deepcopy(self.extras),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "") -> StepRecord:
        """Build a step from a dict, validating every key; ``where`` prefixes key names in error messages."""
        _check_keys(data, _STEP_FIELDS, optional=(), where=where)
        values = {key: _checked(data[key], kind, _join(where, key)) for key, kind in _STEP_FIELDS.items()}
        return cls(**values)


@dataclass(kw_only=True)
class TrajectoryRecord:
    """One episode. ``num_steps`` is derived from ``steps`` so the two can never disagree."""

    env: str
    env_version: str
    game_id: str
    split: str
    task: str
    task_type: str
    policy_id: str
    seed: int
    steps: list[StepRecord]
    won: bool
    total_reward: float
    final_observation: str
    meta: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def num_steps(self) -> int:
        """Number of steps taken in the episode."""
        return len(self.steps)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``steps`` last, so the episode summary leads each JSONL line)."""
        return {
            "schema_version": self.schema_version,
            "env": self.env,
            "env_version": self.env_version,
            "game_id": self.game_id,
            "split": self.split,
            "task": self.task,
            "task_type": self.task_type,
            "policy_id": self.policy_id,
            "seed": self.seed,
            "won": self.won,
            "total_reward": self.total_reward,
            "num_steps": self.num_steps,
            "final_observation": self.final_observation,
            "meta": copy.deepcopy(self.meta),
            "steps": [step.to_dict() for step in self.steps],
        }

    @classmethod
    def from_dict(cls, data: Any) -> TrajectoryRecord:
        """Build a record from a dict, raising ``RecordError`` (naming the key) on any schema mismatch."""
        if not isinstance(data, dict):
            raise RecordError(f"record: expected a JSON object, got {type(data).__name__}")
        # The version is checked first: a different version may legitimately have different keys, and
        # "unsupported schema_version" is the useful message in that case, not "missing key".
        if "schema_version" not in data:
            raise RecordError("missing required key 'schema_version'")
        version = data["schema_version"]
        if type(version) is not int or version != SCHEMA_VERSION:
            raise RecordError(
                f"key 'schema_version': unsupported value {version!r} (this code reads version {SCHEMA_VERSION})"
            )
        _check_keys(data, _TRAJECTORY_FIELDS, optional=("num_steps",), where="record")
        values = {key: _checked(data[key], kind, key) for key, kind in _TRAJECTORY_FIELDS.items()}
        if "num_steps" in data:
            num_steps = _checked(data["num_steps"], "int", "num_steps")
            if num_steps != len(values["steps"]):
                raise RecordError(
                    f"key 'num_steps': value {num_steps} disagrees with len(steps) = {len(values['steps'])}"
                )
        return cls(**values)

    def validate(self) -> None:
        """Raise ``RecordError`` unless this record would read back exactly from its own ``to_dict()``."""
        TrajectoryRecord.from_dict(self.to_dict())


# Field kinds understood by ``_checked``. Kept as data so the key lists and the validation cannot drift apart.
_STEP_FIELDS: dict[str, str] = {
    "observation": "str",
    "admissible_actions": "list[str]",
    "response": "str",
    "reason": "str",
    "action": "str",
    "admissible": "bool",
    "reward": "float",
    "done": "bool",
    "won": "bool",
    "extras": "json_object",
}

_TRAJECTORY_FIELDS: dict[str, str] = {
    "schema_version": "int",
    "env": "str",
    "env_version": "str",
    "game_id": "str",
    "split": "str",
    "task": "str",
    "task_type": "str",
    "policy_id": "str",
    "seed": "int",
    "steps": "steps",
    "won": "bool",
    "total_reward": "float",
    "final_observation": "str",
    "meta": "json_object",
}


def _join(where: str, key: str) -> str:
    return key if where in ("", "record") else f"{where}.{key}"


def _quote_all(keys: list[str]) -> str:
    return ", ".join(repr(key) for key in keys)


def _check_keys(data: Any, fields: dict[str, str], optional: tuple[str, ...], where: str) -> None:
    if not isinstance(data, dict):
        label = f"key '{where}'" if where not in ("", "record") else (where or "step")
        raise RecordError(f"{label}: expected an object, got {type(data).__name__}")
    missing = [key for key in fields if key not in data]
    if missing:
        names = _quote_all([_join(where, key) for key in missing])
        raise RecordError(f"missing required key{'s' if len(missing) > 1 else ''} {names}")
    unknown = [str(key) for key in data if key not in fields and key not in optional]
    if unknown:
        names = _quote_all([_join(where, key) for key in unknown])
        raise RecordError(f"unknown key{'s' if len(unknown) > 1 else ''} {names} (schema version {SCHEMA_VERSION})")


def _type_error(key: str, expected: str, value: Any) -> RecordError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return RecordError(f"key '{key}': expected {expected}, got {type(value).__name__} {shown}")


def _checked(value: Any, kind: str, key: str) -> Any:
    """Validate ``value`` against a field kind and return it in canonical form (fresh lists/dicts, floats)."""
    if kind == "str":
        if not isinstance(value, str):
            raise _type_error(key, "str", value)
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _type_error(key, "bool", value)
        return value
    if kind == "int":
        # bool is a subclass of int in Python, but `"seed": true` is a schema error, not seed 1.
        if type(value) is not int:
            raise _type_error(key, "int", value)
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(key, "float", value)
        if not math.isfinite(value):
            raise RecordError(f"key '{key}': expected a finite float, got {value!r}")
        return float(value)
    if kind == "list[str]":
        if not isinstance(value, list):
            raise _type_error(key, "list of str", value)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise _type_error(f"{key}[{index}]", "str", item)
        return list(value)
    if kind == "json_object":
        if not isinstance(value, dict):
            raise _type_error(key, "object (dict)", value)
        _check_json_value(value, key)
        return copy.deepcopy(value)
    if kind == "steps":
        if not isinstance(value, list):
            raise _type_error(key, "list of steps", value)
        return [StepRecord.from_dict(step, where=f"{key}[{index}]") for index, step in enumerate(value)]
    raise AssertionError(f"unknown field kind {kind!r}")


def _check_json_value(value: Any, key: str) -> None:
    """Reject values that JSON would change on the way through (tuples, int keys, NaN), so round-trips are exact."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RecordError(f"key '{key}': non-finite float {value!r} cannot be stored as JSON")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_value(item, f"{key}[{index}]")
        return
    if isinstance(value, dict):
        for item_key, item in value.items():
            if not isinstance(item_key, str):
                raise RecordError(f"key '{key}': dict keys must be str, got {type(item_key).__name__} {item_key!r}")
            _check_json_value(item, f"{key}.{item_key}")
        return
    raise _type_error(key, "a JSON value (None, bool, int, float, str, list, dict)", value)
