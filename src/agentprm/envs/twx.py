"""TextWorldExpress backend for the :mod:`agentprm.envs.base` protocol.

TextWorldExpress (PyPI ``textworld-express``, import ``textworld_express``) is a Scala re-implementation of
CookingWorld, TextWorld Common Sense (twc), Coin Collector and five small reasoning games. The Python package ships a
jar and talks to it over py4j: each :class:`TWXEnv` owns one JVM, started lazily on the first ``reset`` and stopped
by ``close()``.

Games are generated procedurally from ``(game name, fold, seed, params)``:

* **Folds.** ``train``, ``dev`` and ``test`` (TWX uses the same names). Each fold has 1,000 games.
* **Seeds.** Our seed is the *index inside the fold*, 0..999. TWX's official fold seeds are disjoint ranges
  (train 0..999, dev 10000..10999, test 20000..20999) but the engine accepts any seed with any fold, and the same
  seed in two folds gives the same map with different objects. We therefore map index ``i`` of fold ``f`` to the
  official engine seed ``offset[f] + i`` so that splits never share a layout; the engine seed is reported in
  ``Observation.info["engine_seed"]``.
* **Params.** A TWX parameter string such as ``"numLocations=2,numItemsToPutAway=3,includeDoors=0"`` (empty: the
  game's defaults). The syntax is checked here; parameter names and ranges are checked by the engine at reset.

A game is written as ``Game.source = "twc/train/17?numLocations=1,includeDoors=0"`` (the ``?params`` part is
omitted when empty) and ``Game.game_id = "twc/train/17"``. Note that ``game_id`` does not encode params.

Rewards and termination: TWX reports a normalised score (1.0 = solved, negative after a fatal mistake). The reward of
a step is the score change since the previous step; ``won`` is the engine's ``tasksuccess``; ``done`` is the
engine's done flag (success, failure, or score >= 1) or ``won``. No step limit is imposed here: the rollout loop
owns the turn budget.

Invalid input (measured on TWX 1.1.0): empty, unknown, very long, non-ASCII and control-character commands all get
the engine's answer ``"Unknown action: I'm not sure what you mean."`` with unchanged state and score. Lone UTF-16
surrogates cannot be sent over py4j at all, so they are replaced by ``?`` before sending. ``"help"`` is answered by
the Python wrapper with the task description without advancing the engine. Every call to :meth:`TWXEnv.step` counts
as one step in ``info["steps"]``.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agentprm.envs.base import EnvError, Game, Observation, Step, sanitize_command

try:
    from py4j.protocol import Py4JError
except ImportError:  # py4j comes with textworld-express; listing games must work without it.

    class Py4JError(Exception):  # type: ignore[no-redef]
        """Placeholder so ``except Py4JError`` is valid when py4j is not installed."""


ENV_NAME = "twx"

#: Game names known to TextWorldExpress 1.1.0 (``textworld_express.GAME_NAMES``).
TWX_GAMES: tuple[str, ...] = (
    "cookingworld",
    "twc",
    "coin",
    "mapreader",
    "arithmetic",
    "sorting",
    "simonsays",
    "peckingorder",
)

#: Our fold name -> TextWorldExpress's fold name.
TWX_FOLDS: dict[str, str] = {"train": "train", "dev": "dev", "test": "test"}

#: Games per fold; our seeds are indices 0..SEEDS_PER_FOLD-1 into a fold.
SEEDS_PER_FOLD = 1000

# First engine seed of each fold (TWX's getValidSeedsTrain/Dev/Test are these contiguous ranges of 1,000 seeds).
_FOLD_SEED_OFFSET: dict[str, int] = {"train": 0, "dev": 10000, "test": 20000}

# The engine's answer to any command it does not recognise; reused when py4j itself rejects a command.
UNKNOWN_ACTION_TEXT = "Unknown action: I'm not sure what you mean."

# The wrapper ends an episode after `envStepLimit` moves; we leave turn budgets to the rollout loop.
_NO_STEP_LIMIT = 2**31 - 1

_PARAM_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(-?[0-9]+)$")

_INSTALL_HINT = "Install it with: pip install 'agentprm[twx]' (needs Java 17+ on PATH)."


@dataclass(frozen=True)
class TWXSpec:
    """A parsed TextWorldExpress game: name, fold, seed index inside the fold, and the TWX parameter string."""

    game_name: str
    fold: str
    seed: int
    params: str = ""

    @property
    def engine_seed(self) -> int:
        """The seed passed to the engine: TWX's official seed for index ``seed`` of ``fold``."""
        return _FOLD_SEED_OFFSET[self.fold] + self.seed

    @property
    def game_id(self) -> str:
        return f"{self.game_name}/{self.fold}/{self.seed}"

    @property
    def source(self) -> str:
        return f"{self.game_id}?{self.params}" if self.params else self.game_id

    def to_game(self) -> Game:
        return Game(env=ENV_NAME, game_id=self.game_id, source=self.source, split=self.fold, task_type=self.game_name)


def _check_game_name(game_name: str) -> str:
    if game_name not in TWX_GAMES:
        raise EnvError(f"Unknown TextWorldExpress game {game_name!r}. Known games: {', '.join(TWX_GAMES)}.")
    return game_name


def _check_fold(fold: str) -> str:
    if fold not in TWX_FOLDS:
        raise EnvError(f"Unknown TextWorldExpress fold {fold!r}. Known folds: {', '.join(TWX_FOLDS)}.")
    return fold


def _check_seed(seed: object) -> int:
    # bool is an int subclass; True as a seed is certainly a caller bug.
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise EnvError(f"TextWorldExpress seeds are integers 0..{SEEDS_PER_FOLD - 1}, got {seed!r}.")
    if not 0 <= seed < SEEDS_PER_FOLD:
        raise EnvError(
            f"TextWorldExpress seed {seed} is out of range: each fold has {SEEDS_PER_FOLD} games, "
            f"seeds 0..{SEEDS_PER_FOLD - 1} (an index into the fold)."
        )
    return seed


def _normalize_params(params: str) -> str:
    """Check ``"key=int,key=int"`` syntax and drop whitespace. Names and ranges are the engine's to check."""
    items = [item.strip() for item in params.split(",")] if params.strip() else []
    normalized = []
    for item in items:
        match = _PARAM_RE.match(item)
        if match is None:
            raise EnvError(
                f"Bad TextWorldExpress parameter {item!r} in {params!r}: expected comma-separated name=integer "
                f"pairs, e.g. 'numLocations=2,numItemsToPutAway=3,includeDoors=0'."
            )
        normalized.append(f"{match[1]}={int(match[2])}")
    return ",".join(normalized)


def make_spec(game_name: str, fold: str, seed: int, params: str = "") -> TWXSpec:
    """Validate and build a :class:`TWXSpec`; raises :class:`EnvError` with the known values on bad input."""
    return TWXSpec(_check_game_name(game_name), _check_fold(fold), _check_seed(seed), _normalize_params(params))


def parse_twx_source(source: str) -> TWXSpec:
    """Parse ``"name/fold/seed"`` or ``"name/fold/seed?params"`` (the format of ``Game.source``)."""
    path, _, params = source.partition("?")
    parts = path.split("/")
    if len(parts) != 3:
        raise EnvError(
            f"Bad TextWorldExpress game source {source!r}: expected 'name/fold/seed' or 'name/fold/seed?params'."
        )
    game_name, fold, seed_text = parts
    try:
        seed = int(seed_text)
    except ValueError:
        raise EnvError(f"Bad TextWorldExpress game source {source!r}: seed {seed_text!r} is not an integer.") from None
    return make_spec(game_name, fold, seed, params)


def twx_games(game_name: str, fold: str, seeds: Iterable[int], params: str = "") -> list[Game]:
    """One :class:`Game` per seed index of ``fold`` for ``game_name``, all with the same TWX ``params``.

    >>> [g.game_id for g in twx_games("twc", "dev", range(2))]
    ['twc/dev/0', 'twc/dev/1']
    """
    return [make_spec(game_name, fold, seed, params).to_game() for seed in seeds]


def env_version() -> str:
    """The installed textworld-express version (recorded with trajectories so results can be reproduced)."""
    try:
        return importlib.metadata.version("textworld-express")
    except importlib.metadata.PackageNotFoundError:
        raise EnvError(f"textworld-express is not installed. {_INSTALL_HINT}") from None


def _dedupe(actions: Iterable[str]) -> list[str]:
    """Engine order, first occurrence kept (simonsays lists some actions twice)."""
    return list(dict.fromkeys(str(a) for a in actions))


def _py4j_safe(command: str) -> str:
    """Replace lone surrogates: py4j encodes commands as strict UTF-8 and would fail before reaching the engine."""
    return command.encode("utf-8", "replace").decode("utf-8")


class TWXEnv:
    """TextWorldExpress behind the :class:`~agentprm.envs.base.TextEnv` protocol.

    One JVM per object, started on the first ``reset`` and stopped by ``close()`` (or leaving a ``with`` block).
    ``admissible_actions`` keeps the engine's order (which is deterministic per game state) with duplicates dropped.
    ``reward`` is the change in TWX's normalised score since the previous step (so a solved game sums to 1.0).

    ``expert_action()`` follows the gold action sequence TWX generates at reset. It is only valid while the agent
    has taken exactly the gold actions so far; after the first different command (even an invalid one, or ``help``)
    it returns None for the rest of the episode, and also once the gold path is used up.
    """

    name = ENV_NAME

    def __init__(self) -> None:
        self._env: Any = None  # textworld_express.TextWorldExpressEnv, created lazily
        self._spec: TWXSpec | None = None
        self._task = ""
        self._score = 0.0
        self._steps = 0
        self._actions: list[str] = []
        self._gold: list[str] = []
        self._gold_pos: int | None = None  # None once the agent left the gold path

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def _engine(self) -> Any:
        if self._env is None:
            try:
                from textworld_express import TextWorldExpressEnv
            except ImportError:
                raise EnvError(f"textworld-express is not installed. {_INSTALL_HINT}") from None
            try:
                self._env = TextWorldExpressEnv(envStepLimit=_NO_STEP_LIMIT)
            except (OSError, Py4JError) as exc:
                raise EnvError(f"Could not start the TextWorldExpress JVM ({exc}). Is Java 17+ on PATH?") from exc
        return self._env

    def _jvm_alive(self) -> bool:
        # The wrapper keeps the py4j gateway private; a dead JVM must surface as an error, not as "unknown action".
        proc = getattr(getattr(self._env, "_gateway", None), "java_process", None)
        return proc is None or proc.poll() is None

    def close(self) -> None:
        """Stop the JVM. Safe to call twice; the env can be reset again afterwards (a new JVM is started)."""
        env, self._env = self._env, None
        self._spec = None
        if env is not None:
            try:
                env.close()
            except (OSError, Py4JError):
                pass  # the JVM is already gone, which is what close() wants

    def __enter__(self) -> TWXEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- protocol --------------------------------------------------------------------------------------------------

    def reset(self, game: Game) -> Observation:
        """Start ``game`` (a Game from :func:`twx_games`) and return the room description and valid actions."""
        if game.env != ENV_NAME:
            raise EnvError(f"Game {game.game_id!r} belongs to env {game.env!r}, not {ENV_NAME!r}.")
        spec = parse_twx_source(game.source)
        self._spec = None  # a failed reset leaves no episode to step
        engine = self._engine()
        try:
            _, infos = engine.reset(
                seed=spec.engine_seed,
                gameFold=TWX_FOLDS[spec.fold],
                gameName=spec.game_name,
                gameParams=spec.params,
                generateGoldPath=True,
            )
        except ValueError as exc:  # the wrapper raises the engine's message for unknown games or params
            raise EnvError(f"TextWorldExpress rejected {spec.source!r}: {exc}") from None
        except Py4JError as exc:  # folds are validated above, so this is a broken bridge or JVM
            raise EnvError(f"TextWorldExpress failed to reset {spec.source!r} ({exc}); close() and retry.") from exc
        # Bad params can leave the generator unloaded; the engine then answers with an "ERROR: ..." observation.
        if str(infos.get("observation", "")).startswith("ERROR:"):
            raise EnvError(f"TextWorldExpress could not generate {spec.source!r}: {infos['observation']}")

        self._spec = spec
        self._task = str(infos.get("taskDescription", ""))
        self._score = float(infos.get("score", 0.0))
        self._steps = 0
        self._gold = [str(a) for a in engine.getGoldActionSequence()]
        self._gold_pos = 0
        return self._observation(str(infos["observation"]), infos)

    def step(self, action: str) -> Step:
        """Run one command. Any string is accepted; unrecognised ones get the engine's "Unknown action" answer."""
        if self._spec is None:
            raise EnvError("TWXEnv.step() called before reset().")
        command = _py4j_safe(sanitize_command(action))
        self._steps += 1
        self._advance_gold(command)
        try:
            text, _, engine_done, infos = self._env.step(command)
        except Py4JError as exc:
            if not self._jvm_alive():
                raise EnvError(f"The TextWorldExpress JVM died ({exc}); close() and reset() to continue.") from exc
            # The bridge refused this command; the engine state is unchanged, so answer like the engine would.
            return Step(self._observation(UNKNOWN_ACTION_TEXT, {}), reward=0.0, done=False, won=False)

        score = float(infos.get("score", self._score))
        reward, self._score = score - self._score, score
        won = bool(infos.get("tasksuccess", False))
        done = bool(engine_done) or won
        return Step(self._observation(str(text), infos), reward=reward, done=done, won=won)

    def expert_action(self) -> str | None:
        """The next gold action, or None once the agent has deviated from the gold path or finished it."""
        if self._spec is None or self._gold_pos is None or self._gold_pos >= len(self._gold):
            return None
        return self._gold[self._gold_pos]

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _advance_gold(self, command: str) -> None:
        if self._gold_pos is None:
            return
        on_path = self._gold_pos < len(self._gold) and command == self._gold[self._gold_pos]
        self._gold_pos = self._gold_pos + 1 if on_path else None

    def _observation(self, text: str, infos: dict[str, Any]) -> Observation:
        """Build an Observation; an empty ``infos`` (bridge failure) keeps the previous valid actions."""
        if "validActions" in infos:
            self._actions = _dedupe(infos["validActions"])
        assert self._spec is not None
        return Observation(
            task=self._task,
            text=text,
            admissible_actions=list(self._actions),
            task_type=self._spec.game_name,
            info={
                "score": self._score,
                "steps": self._steps,
                "game_id": self._spec.game_id,
                "engine_seed": self._spec.engine_seed,
                "task_failure": bool(infos.get("taskfailure", False)),
            },
        )
