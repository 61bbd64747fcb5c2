"""Monte Carlo Q targets for the PRM (AgentPRM stage 1, Eq. 1), over plain trajectory records.

With an outcome-only reward R in {0, 1} (R = 1 iff the episode was won; an episode cut by the step budget without
winning has R = 0) the discounted return from step t of an episode of T steps is

    G_t = sum_{k=t}^{T-1} gamma^(k-t) r_k = gamma^(T-1-t) * R          (discounted by the steps REMAINING)

and the target of a key is the mean over every visit of the key, with the visit count kept:

    Q_hat(s, a) = (1 / N(s, a)) * sum_{visits} G_t        in [0, 1]

Three keyings (``key``):

* ``"prefix"`` (the paper's, default): the game id and the FULL prefix of (observation, action) pairs up to and
  including the action,

      key(episode, t) = sha256(game_id, [(o_0, a_0), ..., (o_t, a_t)])

  so identical prefixes from different rollouts of the same game merge, and the same prefix in another game stays
  separate. Sampled rollouts diverge within a few steps, so almost no key state ever sees two actions and the PRM
  is trained as a value function: nothing teaches it to rank the actions at one state.
* ``"state"``: visits are pooled by the environment's TRUE state,

      key(episode, t) = sha256(game_id, sid(s_t), a_t)

  with sid the state id the environment recorded (``step.extras["state_id"]``; ALFWorld: a digest of the engine's
  world facts, ``envs.alfworld.world_state_id``). Two paths to the same world state share its actions' targets, and
  many states then see several actions. Observation text alone would not do: ALFWorld's "Nothing happens." or
  "You arrive at X" alias different worlds. For an environment that exposes no state (TextWorldExpress) the
  documented fallback is sid = sha256(observation, sorted admissible actions), an approximation that aliases worlds
  behind identical text. Every visit counts, also a state-action an episode revisits (every-visit Monte Carlo).
* ``"state_visited"``: ``"state"`` with the set of places visited before t (``prompts.visited_places``) in the
  state id, sid'(s_t) = sha256(sid(s_t), sorted(visited)): the world facts do not record where the agent has
  looked, the ``prompt.show_visited`` line does, so the targets pool exactly the visits its prompt cannot tell apart
  by world and memory.

Each target carries ``state_id``, the group of sibling actions at one state (``state_key``): for ``"prefix"``
sha256(game_id, history, o_t), for ``"state"`` sha256(game_id, sid(s_t)). Bradley-Terry pairs, the within-state
loss and the same-state ranking metric group by it.

Train/validation split is BY GAME, never by key, so no prefix of a validation game is trained on:
``sft_data.in_validation(game_id, val_fraction)`` holds a game out when the hash of its id, read as a number in
[0, 1], is below ``val_fraction``. The PRM holds out exactly the games SFT holds out only when
``targets.val_fraction`` equals ``sft.val_fraction``. Otherwise, the threshold being on the same hash, the smaller
fraction's held-out games are a subset of the larger's: with ``configs/alfworld-cpu.yaml`` (``sft.val_fraction``
0.05, ``targets.val_fraction`` 0.1) every game SFT held out is held out from the PRM too, and the PRM also holds
out about 5% of the games, on whose demonstrations pi_0 was trained.

Deviations from the reference code (paper.md, "Known defects"), on purpose:
1. it discounted by steps ELAPSED (gamma^t); here by steps remaining, gamma^(T-1-t);
2. it mapped the outcome to {-1, +1} and back with (q + 1) / 2, so late steps of failures got ~0.5; here a failed
   episode gives exactly 0 at every step;
3. it split train/validation by key; here by game.

Replayed steps get no target: steps replayed from an expert prefix (reset distribution, ``step.extras["reset"]``)
and the shared prefix of a branch (``step.extras["branch_prefix"]``) were not chosen by the policy at that point.
They stay in the prefix of the later keys.

A key merges visits with the same ACTIONS: two responses with different reasoning but the same command share the
key, and the target keeps the first visit's prompt state (history included) and response text (``response``) as
the PRM's training input.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from agentprm.algorithms.sft_data import in_validation
from agentprm.data import TrajectoryRecord
from agentprm.data.records import StepRecord
from agentprm.models.prompts import PromptState, visited_places

TARGETS_FORMAT_VERSION = 2  # 2: the state_id column; version-1 files are still read (state_id from the history)
KEYINGS = ("prefix", "state", "state_visited")
REPLAYED_FLAGS = ("reset", "branch_prefix")  # step.extras flags of steps the policy did not choose
_METADATA_KIND = b"agentprm.kind"
_METADATA_VERSION = b"agentprm.targets_version"


@dataclass
class QTarget:
    """One (state, action) key with its Monte Carlo target.

    ``episode_index``/``step_index``/``steps_remaining``/``response`` describe the FIRST visit;
    ``episode_indices``/``episode_won`` list every visit's episode (input order) and its outcome, so per-episode
    metrics (``prm_training.early_step_auc``) can be computed from the targets alone. ``state_id`` groups the
    sibling actions of one state (see the module doc); empty for a target built by hand (``state_key`` then derives
    it from the history).
    """

    game_id: str
    split: str  # "train" | "val"
    episode_index: int
    step_index: int
    task: str
    task_type: str
    state: dict[str, Any]  # PromptState fields; history is a list of (observation, action) tuples
    response: str
    action: str
    q: float
    visits: int
    steps_remaining: int
    key: str
    episode_indices: list[int] = field(default_factory=list)
    episode_won: list[bool] = field(default_factory=list)
    state_id: str = ""

    @property
    def wins(self) -> int:
        """Number of visiting episodes that were won."""
        return sum(self.episode_won)


def _digest(payload: Any) -> str:
    """sha256 hex of a JSON payload (JSON, so no separator can collide)."""
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def prefix_key(game_id: str, prefix: Iterable[tuple[str, str]]) -> str:
    """Stable hex digest of a game id and an (observation, action) prefix."""
    return _digest([game_id, [[obs, action] for obs, action in prefix]])


def history_state_id(game_id: str, history: Iterable[tuple[str, str]], observation: str) -> str:
    """State group under ``key="prefix"``: game, history and current observation, without the action."""
    return "state:" + prefix_key(game_id, list(history) + [(observation, "")])


def observation_state_id(observation: str, admissible_actions: Iterable[str]) -> str:
    """Fallback state id where an environment records none: sha256(observation, sorted admissible actions)."""
    return "obs:" + _digest([observation, sorted(admissible_actions)])[:16]


def step_state_id(step: StepRecord) -> str:
    """The environment's state id of a step (``extras["state_id"]``), else :func:`observation_state_id`."""
    recorded = step.extras.get("state_id")
    return str(recorded) if recorded else observation_state_id(step.observation, step.admissible_actions)


def pooled_state_id(game_id: str, state_id: str) -> str:
    """State group under ``key="state"``: sha256(game_id, state id)."""
    return "state:" + _digest([game_id, state_id])


def visited_state_id(state_id: str, history: Iterable[tuple[str, str]]) -> str:
    """State id under ``key="state_visited"``: the true state's id and the set of places visited so far
    (``prompts.visited_places``, sorted), sha256(state id, places). The world's facts do not record where the
    agent has looked; a prompt with ``show_visited`` does, so two visits of one world state that remember different
    places are different states to the agent (and to its Q: a policy that goes back to where it has looked wastes
    steps)."""
    return "visited:" + _digest([state_id, sorted(visited_places(history))])[:16]


def state_action_key(game_id: str, state_id: str, action: str) -> str:
    """Key under ``key="state"``: sha256(game_id, state id, action)."""
    return _digest([game_id, state_id, action])


def state_key(target: QTarget) -> str:
    """Group of sibling actions at the target's state: ``target.state_id``, else derived from the history."""
    return target.state_id or history_state_id(target.game_id, target.state["history"], target.state["observation"])


def replayed(step: StepRecord) -> bool:
    """True for a step replayed rather than chosen by the policy (an expert reset prefix or a branch prefix)."""
    return any(step.extras.get(flag) for flag in REPLAYED_FLAGS)


def _visits(record: TrajectoryRecord, key: str) -> Iterator[tuple[int, list[tuple[str, str]], str, str]]:
    """(step index, history before it, key, state group) of every step of ``record`` the policy chose."""
    prefix: list[tuple[str, str]] = []
    for step_index, step in enumerate(record.steps):
        history = list(prefix)
        prefix.append((step.observation, step.action))
        if replayed(step):
            continue
        if key == "prefix":
            yield (step_index, history, prefix_key(record.game_id, prefix),
                   history_state_id(record.game_id, history, step.observation))
        else:
            state_id = step_state_id(step)
            if key == "state_visited":
                state_id = visited_state_id(state_id, history)
            yield (step_index, history, state_action_key(record.game_id, state_id, step.action),
                   pooled_state_id(record.game_id, state_id))


def mc_q_targets(records: Iterable[TrajectoryRecord], gamma: float, val_fraction: float = 0.1,
                 key: Literal["prefix", "state", "state_visited"] = "prefix") -> list[QTarget]:
    """Monte Carlo Q targets of every key in ``records``, in first-visit order (see the module doc for ``key``)."""
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if key not in KEYINGS:
        raise ValueError(f"key must be one of {KEYINGS}, got {key!r}")
    targets: dict[str, QTarget] = {}
    returns: dict[str, float] = {}  # sum of discounted returns per key
    for episode_index, record in enumerate(records):
        outcome = 1.0 if record.won else 0.0
        length = len(record.steps)
        split = "val" if in_validation(record.game_id, val_fraction) else "train"
        for step_index, history, visit_key, state_id in _visits(record, key):
            remaining = length - 1 - step_index
            if visit_key not in targets:
                targets[visit_key] = _new_target(record, step_index, history, split, episode_index, remaining,
                                                 visit_key, state_id)
                returns[visit_key] = 0.0
            target = targets[visit_key]
            target.episode_indices.append(episode_index)
            target.episode_won.append(record.won)
            returns[visit_key] += gamma**remaining * outcome
    for visit_key, target in targets.items():
        target.visits = len(target.episode_indices)
        target.q = returns[visit_key] / target.visits
    return list(targets.values())


def _new_target(record: TrajectoryRecord, step_index: int, history: list[tuple[str, str]], split: str,
                episode_index: int, remaining: int, key: str, state_id: str) -> QTarget:
    step = record.steps[step_index]
    state = {"task": record.task, "observation": step.observation,
             "admissible_actions": list(step.admissible_actions), "history": history, "task_type": record.task_type}
    return QTarget(game_id=record.game_id, split=split, episode_index=episode_index, step_index=step_index,
                   task=record.task, task_type=record.task_type, state=state, response=step.response,
                   action=step.action, q=0.0, visits=0, steps_remaining=remaining, key=key, state_id=state_id)


def state_from_target(target: QTarget) -> PromptState:
    """The policy/PRM prompt state of a target."""
    state = target.state
    return PromptState(task=state["task"], observation=state["observation"],
                       admissible_actions=list(state["admissible_actions"]),
                       history=[(obs, action) for obs, action in state["history"]], task_type=state["task_type"])


def state_counts(targets: Iterable[QTarget]) -> dict[str, int]:
    """``states``: distinct state groups (:func:`state_key`); ``multi_action_states``: those with >= 2 distinct
    actions among the targets (the only states where the PRM can learn to rank alternatives)."""
    actions: dict[str, set[str]] = {}
    for target in targets:
        actions.setdefault(state_key(target), set()).add(target.action)
    return {"states": len(actions), "multi_action_states": sum(len(a) >= 2 for a in actions.values())}


def target_histogram(targets: Iterable[QTarget], bins: int = 10) -> list[int]:
    """Counts of Q_hat in ``bins`` equal-width bins over [0, 1]; bin i is [i/bins, (i+1)/bins), the last is closed."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    counts = [0] * bins
    for target in targets:
        counts[min(int(target.q * bins), bins - 1)] += 1
    return counts


# -- Parquet ---------------------------------------------------------------------------------------------------------

_HISTORY_TYPE = pa.list_(pa.struct([pa.field("observation", pa.string(), nullable=False),
                                    pa.field("action", pa.string(), nullable=False)]))
_STATE_TYPE = pa.struct([
    pa.field("task", pa.string(), nullable=False),
    pa.field("observation", pa.string(), nullable=False),
    pa.field("admissible_actions", pa.list_(pa.string()), nullable=False),
    pa.field("history", _HISTORY_TYPE, nullable=False),
    pa.field("task_type", pa.string(), nullable=False),
])
TARGET_SCHEMA = pa.schema(
    [
        pa.field("game_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("episode_index", pa.int64(), nullable=False),
        pa.field("step_index", pa.int64(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("task_type", pa.string(), nullable=False),
        pa.field("state", _STATE_TYPE, nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        pa.field("q", pa.float64(), nullable=False),
        pa.field("visits", pa.int64(), nullable=False),
        pa.field("steps_remaining", pa.int64(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("episode_indices", pa.list_(pa.int64()), nullable=False),
        pa.field("episode_won", pa.list_(pa.bool_()), nullable=False),
        pa.field("state_id", pa.string(), nullable=False),
    ],
    metadata={_METADATA_KIND: b"mc_q_targets", _METADATA_VERSION: str(TARGETS_FORMAT_VERSION).encode()},
)


def _row(target: QTarget) -> dict[str, Any]:
    row = {name: getattr(target, name) for name in TARGET_SCHEMA.names}
    state = dict(target.state)
    state["history"] = [{"observation": obs, "action": action} for obs, action in state["history"]]
    row["state"] = state
    row["state_id"] = state_key(target)
    return row


def _from_row(row: dict[str, Any]) -> QTarget:
    state = dict(row["state"])
    state["history"] = [(pair["observation"], pair["action"]) for pair in state["history"]]
    target = QTarget(**{**row, "state": state})
    if not target.state_id:  # a version-1 file: prefix keys, whose state group the history gives
        target.state_id = state_key(target)
    return target


def targets_to_parquet(targets: Iterable[QTarget], path: str | os.PathLike[str]) -> int:
    """Write targets with an explicit schema, atomically (temp file + ``os.replace``); return the row count."""
    table = pa.Table.from_pylist([_row(t) for t in targets], schema=TARGET_SCHEMA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    os.chmod(temp_name, 0o644)
    try:
        pq.write_table(table, temp_name)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return table.num_rows


def targets_from_parquet(path: str | os.PathLike[str]) -> list[QTarget]:
    """Read targets written by :func:`targets_to_parquet`, of this format version or version 1 (no ``state_id``
    column: it is derived from the history, as ``key="prefix"`` does); a file of another kind raises ``ValueError``."""
    import pyarrow as pa

    from agentprm.errors import damaged

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise damaged(path, f"not a readable Parquet file ({str(error).splitlines()[0]})") from None
    metadata = table.schema.metadata or {}
    if metadata.get(_METADATA_KIND) != b"mc_q_targets":
        raise ValueError(f"{path}: not an MC target file (write one with targets_to_parquet / `agentprm targets`)")
    version = int(metadata.get(_METADATA_VERSION, b"0"))
    if version not in (1, TARGETS_FORMAT_VERSION):
        raise ValueError(f"{path}: target format version {version}, this code reads 1 and {TARGETS_FORMAT_VERSION}")
    return [_from_row(row) for row in table.to_pylist()]
