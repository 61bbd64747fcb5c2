"""Backend names -> environments and game lists, so that the CLI, rollouts and evaluation stay backend-agnostic.

``make_env(name, **options)`` builds a fresh environment (one per worker process); ``list_games(name, ...)``
returns the games of a split. Both fail with an ``EnvError`` that says what to run when the backend, split or task
type is unknown or the games are missing.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from agentprm.envs.base import EnvError, Game, TextEnv

BACKENDS = ("alfworld", "twx")
EXTRAS = {"alfworld": "alfworld", "twx": "twx"}


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise EnvError(f"Unknown environment {name!r}; available: {', '.join(BACKENDS)}")
    return name


def make_env(name: str, **options: Any) -> TextEnv:
    """A new environment of backend ``name``. ALFWorld options: ``expert`` ("handcoded" | "planner" | None),
    ``cache_dir``. TextWorldExpress takes none (its expert, the gold path, is always available)."""
    _check(name)
    try:
        if name == "alfworld":
            from agentprm.envs.alfworld import AlfworldEnv

            return AlfworldEnv(**options)
        from agentprm.envs.twx import TWXEnv

        options.pop("expert", None)
        options.pop("cache_dir", None)
        return TWXEnv(**options)
    except ImportError as error:
        raise EnvError(f"The {name} backend is not installed: pip install -e '.[{EXTRAS[name]}]' ({error})") from error


def list_games(
    name: str,
    split: str,
    *,
    root: str | None = None,
    task_types=None,
    limit: int | None = None,
    twx_game: str = "twc",
    twx_params: str = "",
    first_seed: int = 0,
) -> list[Game]:
    """Games of ``split`` for backend ``name``.

    ALFWorld: the games under ``root`` (or ``$ALFWORLD_DATA``); splits train / seen / unseen (or ALFWorld's
    valid_seen / valid_unseen). TextWorldExpress: ``limit`` seeds from ``first_seed`` of fold train / dev / test
    (``seen`` -> dev and ``unseen`` -> test, the held-out folds) of game ``twx_game``.
    """
    _check(name)
    if name == "alfworld":
        from agentprm.envs.alfworld import alfworld_games

        return alfworld_games(root, split, task_types=task_types, limit=limit)
    from agentprm.envs.twx import twx_games

    fold = {"seen": "dev", "unseen": "test", "valid_seen": "dev", "valid_unseen": "test"}.get(split, split)
    count = 100 if limit is None else limit
    return twx_games(twx_game, fold, range(first_seed, first_seed + count), twx_params)


def env_version(name: str) -> str:
    package = {"alfworld": "alfworld", "twx": "textworld-express"}[_check(name)]
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
