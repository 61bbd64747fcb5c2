"""One protocol for multi-turn text environments.

Every backend (ALFWorld, TextWorldExpress, ...) exposes the same small surface, so that rollouts, demonstrations,
evaluation and the terminal player never look at a backend's own API:

    env.reset(game)      -> Observation   (task, observation text, admissible actions)
    env.step(action)     -> Step          (next Observation, reward, done, won)
    env.expert_action()  -> str | None    (the backend's expert, when it has one)
    env.close()

A ``Game`` names one playable episode start: a game file for ALFWorld, a (game name, fold, seed) triple for
TextWorldExpress. Games are plain data, so they can be listed, split, pickled to worker processes and written into
trajectory records.

Invalid commands never raise: an empty, non-admissible, very long or non-ASCII command gets the engine's own answer
(ALFWorld: "Nothing happens.") and counts as a step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Game:
    """One playable game.

    ``env`` is the backend name; ``game_id`` is stable across machines (a path relative to the game root for
    ALFWorld, ``"twc/train/17"`` for TextWorldExpress); ``source`` is what the backend needs to load it (an absolute
    path, or a ``name/fold/seed`` spec); ``split`` and ``task_type`` are metadata used for evaluation tables.
    """

    env: str
    game_id: str
    source: str
    split: str
    task_type: str


@dataclass
class Observation:
    """What the agent sees at one turn.

    ``text`` is the engine's feedback for the last command (at reset: the room description). ``task`` is the goal
    sentence, fixed for the episode. ``admissible_actions`` is the engine's list of valid commands at this state,
    in the engine's order.
    """

    task: str
    text: str
    admissible_actions: list[str]
    task_type: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Step:
    """The result of one command: the next observation, the reward for this step, and whether the episode ended.

    ``won`` is the environment's own success signal (ALFWorld ``won``, TextWorldExpress ``tasksuccess``).
    """

    observation: Observation
    reward: float
    done: bool
    won: bool


@runtime_checkable
class TextEnv(Protocol):
    """A multi-turn text environment holding at most one live episode."""

    name: str

    def reset(self, game: Game) -> Observation:
        """Start ``game`` from its initial state."""
        ...

    def step(self, action: str) -> Step:
        """Execute one command string (any string: invalid commands get the engine's answer)."""
        ...

    def expert_action(self) -> str | None:
        """The expert's next command at the current state, or None when the backend has no expert here."""
        ...

    def close(self) -> None:
        """Release engine resources (processes, JVM gateways)."""
        ...


class EnvError(RuntimeError):
    """A user-facing environment error: unknown backend or task type, missing games. The message says what to run."""


def sanitize_command(action: object, max_chars: int = 1000) -> str:
    """Turn anything a model produced into a single-line command string the engines accept.

    Engines parse one line of text; a newline would be read as two commands and a NUL byte can break the JVM bridge.
    Very long strings are cut (no valid command is anywhere near ``max_chars``).
    """
    text = "" if action is None else str(action)
    # Lone UTF-16 surrogates cannot be encoded as UTF-8 and crash the bridges (py4j) before the engine sees them.
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = text.replace("\x00", " ").replace("\r", " ").replace("\n", " ")
    return text.strip()[:max_chars]
