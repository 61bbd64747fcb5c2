"""ALFWorld backend: the real engine (TextWorld's PDDL environment with ALFWorld's own wrappers).

Games are folders holding ``game.tw-pddl`` and ``traj_data.json`` in ALFWorld's layout
``<root>/json_2.1.1/{train,valid_seen,valid_unseen}/<task folder>/<trial>/``. The root is either a folder written
by ``agentprm games alfworld`` or the official data (``ALFWORLD_DATA``); nothing else changes between the two.

An episode is played through ``textworld.envs.PddlEnv`` wrapped by ``AlfredDemangler`` (ALFRED ids -> "apple 1"),
``AlfredInfos`` and, when an expert is asked for, ``AlfredExpert`` (handcoded: explores like a person; planner:
fast-downward with privileged knowledge). The expert is stateful and must watch the episode from its first step, so
it is chosen when the environment is built; rollouts that need no expert skip its per-step cost (30-800 ms).

Resets reuse the PDDL-to-SAS translation (``pddl_cache``): a game already seen in this process (or in the disk cache)
resets without translating again.

Every observation carries ``info["state_id"]``, the engine's TRUE world state (:func:`world_state_id`): a digest of
the PDDL facts that hold now, so two different action sequences reaching the same world share it, and two worlds
behind the same text ("Nothing happens." in two places) do not. ``mc_targets`` pools Monte Carlo visits by it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

from agentprm.envs.alfworld_assets import TASK_TYPES, alfworld_version
from agentprm.envs.base import EnvError, Game, Observation, Step, sanitize_command
from agentprm.envs import pddl_cache

DATA_SUBDIR = "json_2.1.1"
SPLIT_ALIASES = {
    "train": "train",
    "seen": "valid_seen",
    "valid_seen": "valid_seen",
    "unseen": "valid_unseen",
    "valid_unseen": "valid_unseen",
}
EXPERTS = ("handcoded", "planner")
TASK_PREFIX = "Your task is to: "


def resolve_split(split: str) -> str:
    try:
        return SPLIT_ALIASES[split]
    except KeyError:
        raise EnvError(f"Unknown ALFWorld split {split!r}; expected one of {sorted(SPLIT_ALIASES)}") from None


def validate_task_types(task_types) -> tuple[str, ...]:
    chosen = tuple(task_types) if task_types else TASK_TYPES
    unknown = [t for t in chosen if t not in TASK_TYPES]
    if unknown:
        raise EnvError(f"Unknown ALFWorld task type(s) {unknown}; expected some of {list(TASK_TYPES)}")
    return chosen


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding ``json_2.1.1`` (or the split folders): ``root``, else ``$ALFWORLD_DATA``."""
    if root is None:
        env_root = os.environ.get("ALFWORLD_DATA")
        if not env_root:
            raise EnvError(
                "No ALFWorld games: pass a game folder, or set ALFWORLD_DATA to the official data, "
                "or generate games with `agentprm games alfworld --out games/alfworld`."
            )
        root = env_root
    root = Path(root).expanduser()
    return root / DATA_SUBDIR if (root / DATA_SUBDIR).is_dir() else root


def alfworld_games(root: str | os.PathLike | None, split: str, task_types=None, limit: int | None = None) -> list[Game]:
    """Every solvable game of ``split`` under ``root``, sorted by id, filtered as ``AlfredTWEnv`` does.

    Like ALFWorld's loader, folders with 'movable' or 'Sliced' in their path and games not marked solvable are left
    out; ``task_types`` filters on ``traj_data.json``'s task type.
    """
    split_name = resolve_split(split)
    wanted = set(validate_task_types(task_types))
    base = data_root(root)
    split_dir = base / split_name
    if not split_dir.is_dir():
        raise EnvError(
            f"No ALFWorld games for split {split_name!r}: {split_dir} does not exist. "
            f"Generate games with `agentprm games alfworld --out {base.parent if base.name == DATA_SUBDIR else base}`."
        )
    games = []
    for traj_path in sorted(split_dir.rglob("traj_data.json")):
        folder = traj_path.parent
        game_file = folder / "game.tw-pddl"
        relative = folder.relative_to(base).as_posix()
        if "movable" in relative or "Sliced" in relative or not game_file.is_file():
            continue
        task_type = json.loads(traj_path.read_text())["task_type"]
        if task_type not in wanted:
            continue
        if not json.loads(game_file.read_text()).get("solvable", False):
            continue
        games.append(Game("alfworld", relative, str(game_file.resolve()), split_name, task_type))
        if limit is not None and len(games) >= limit:
            break
    if not games:
        raise EnvError(f"No ALFWorld games of types {sorted(wanted)} under {split_dir}.")
    return games


# Predicates the domain writes but never reads: ``checked(x)`` is set by look, inventory, help, examine and open, and
# appears in no precondition, goal or grammar rule (tested on the generated domain), so it changes no future.
BOOKKEEPING_PREDICATES = frozenset({"checked"})


def world_state_id(facts) -> str:
    """First 16 hex digits of sha256 over the sorted world facts, one ``name(arg,...)`` line each.

    ``facts`` are the engine's propositions (``state["_facts"]``, which ``PddlEnv`` rebuilds at every step). Their
    arguments are the PDDL object ids of the problem file ("drawer_bar__minus_04_dot_43_..."), not the demangled
    names shown to the agent, so the id does not depend on naming order. Left out: negated facts (the engine keeps
    "not_opened(x)" after a close, while a never-opened x has no fact at all: the same world) and
    :data:`BOOKKEEPING_PREDICATES` (else "look" or "inventory" would make a new state of an unchanged world).
    """
    lines = sorted(f"{fact.name}({','.join(arg.name for arg in fact.arguments)})" for fact in facts
                   if not fact.is_negation and fact.name not in BOOKKEEPING_PREDICATES)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:16]


def split_intro(feedback: str) -> tuple[str, str]:
    """ALFWorld's first observation is 'welcome banner / room / Your task is to: ...': return (room text, task)."""
    body = feedback.replace("-= Welcome to TextWorld, ALFRED! =-", "").strip()
    if TASK_PREFIX in body:
        room, task = body.split(TASK_PREFIX, 1)
        return room.strip(), task.strip()
    return body, ""


class AlfworldEnv:
    """One ALFWorld episode at a time, following the ``TextEnv`` protocol.

    ``expert``: None (no expert, fastest), "handcoded" or "planner". ``cache_dir``: optional folder for the on-disk
    translation cache shared by processes. ``expert_seed``: the handcoded expert breaks loops with the global
    ``random`` module; each environment gives it a private stream, restarted from this seed at every reset, so an
    expert episode is the same whether it runs alone or interleaved with other environments in one process.
    """

    name = "alfworld"

    def __init__(self, expert: str | None = None, cache_dir: str | os.PathLike | None = None, expert_seed: int = 0):
        if expert is not None and expert not in EXPERTS:
            raise EnvError(f"Unknown ALFWorld expert {expert!r}; expected one of {EXPERTS} or None")
        self.expert = expert
        self.expert_seed = expert_seed
        self._expert_random = random.Random(expert_seed).getstate()
        self.cache = pddl_cache.install(cache_dir)
        self._env = None
        self._loaded_source: str | None = None
        self._game: Game | None = None
        self._state = None
        self._task = ""
        self._expert_failed = False

    def _build(self):
        import textworld
        from textworld.envs.pddl import PddlEnv
        from alfworld.agents.environment.alfred_tw_env import (
            AlfredDemangler, AlfredExpert, AlfredExpertType, AlfredInfos,
        )

        extras = ["gamefile"] + (["expert_plan"] if self.expert else [])
        infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=extras)
        env = AlfredInfos(AlfredDemangler(PddlEnv(infos)))
        if self.expert:
            kind = AlfredExpertType.HANDCODED if self.expert == "handcoded" else AlfredExpertType.PLANNER
            env = AlfredExpert(env, expert_type=kind)
        return env

    def reset(self, game: Game) -> Observation:
        if self._env is None:
            self._env = self._build()
        if game.source != self._loaded_source:
            if not Path(game.source).is_file():
                raise EnvError(f"ALFWorld game file not found: {game.source}")
            self._env.load(game.source)
            self._loaded_source = game.source
        self._game = game
        self._expert_failed = False
        self._expert_random = random.Random(self.expert_seed).getstate()
        self._state = self._with_expert_random(self._env.reset)
        room, self._task = split_intro(self._state.feedback)
        return self._observation(room)

    def step(self, action: str) -> Step:
        if self._state is None:
            raise EnvError("step() before reset(): reset the environment to a game first")
        command = sanitize_command(action)
        try:
            state, _, _ = self._with_expert_random(self._env.step, command)
        except Exception:
            # Only the expert wrapper raises (the handcoded expert's step budget ran out); the game went on.
            self._expert_failed = True
            state = self._env.state if self.expert else None
            if state is None:
                raise
        self._state = state
        won = bool(state["won"])
        return Step(self._observation(state.feedback), reward=1.0 if won else 0.0, done=won, won=won)

    def _with_expert_random(self, call, *args):
        """Run ``call`` with the global ``random`` state swapped for this environment's expert stream."""
        if not self.expert:
            return call(*args)
        outside = random.getstate()
        random.setstate(self._expert_random)
        try:
            return call(*args)
        finally:
            self._expert_random = random.getstate()
            random.setstate(outside)

    def _observation(self, text: str) -> Observation:
        state = self._state
        return Observation(
            task=self._task,
            text=text,
            admissible_actions=list(state["admissible_commands"]),
            task_type=self._game.task_type if self._game else "",
            info={"won": bool(state["won"]), "gamefile": self._loaded_source,
                  "state_id": world_state_id(state["_facts"])},
        )

    def expert_action(self) -> str | None:
        if not self.expert or self._state is None or self._expert_failed:
            return None
        plan = self._state.get("extra.expert_plan") or []
        if not plan:
            return None
        action = plan[0]
        return action if action in self._state["admissible_commands"] else None

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env = None
        self._state = None
        self._loaded_source = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def env_version() -> str:
    return alfworld_version()


def run_expert(env: AlfworldEnv, game: Game, max_steps: int) -> tuple[bool, list[str]]:
    """Play ``game`` with the environment's expert for at most ``max_steps``; return (won, commands)."""
    env.reset(game)
    commands: list[str] = []
    for _ in range(max_steps):
        action = env.expert_action()
        if action is None:
            return False, commands
        commands.append(action)
        if env.step(action).won:
            return True, commands
    return False, commands
