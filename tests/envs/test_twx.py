"""TextWorldExpress backend against the real engine (a JVM over py4j; no mocks)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator

import pytest

pytest.importorskip("textworld_express")

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from agentprm.envs.base import EnvError, Game, Observation, Step, TextEnv  # noqa: E402
from agentprm.envs.twx import (  # noqa: E402
    TWX_GAMES,
    UNKNOWN_ACTION_TEXT,
    TWXEnv,
    env_version,
    parse_twx_source,
    twx_games,
)

# Small worlds so expert episodes take a handful of steps.
SMALL_PARAMS = {
    "twc": "numLocations=1,numItemsToPutAway=1,includeDoors=0",
    "cookingworld": "numLocations=1,numIngredients=1,numDistractorItems=0,includeDoors=0,limitInventorySize=0",
    "coin": "numLocations=2,numDistractorItems=0,includeDoors=0,limitInventorySize=0",
}


@pytest.fixture(scope="module")
def env() -> Iterator[TWXEnv]:
    with TWXEnv() as twx:
        yield twx


def _play_expert(env: TWXEnv, game: Game, max_steps: int = 100) -> tuple[Step, float, int]:
    env.reset(game)
    total, steps = 0.0, 0
    while (action := env.expert_action()) is not None and steps < max_steps:
        step = env.step(action)
        total += step.reward
        steps += 1
        if step.done:
            return step, total, steps
    raise AssertionError(f"expert did not finish {game.game_id} (stopped after {steps} steps)")


# -- games and specs -----------------------------------------------------------------------------------------------


def test_twx_games_builds_games() -> None:
    games = twx_games("twc", "dev", [0, 999], params="numLocations=2, includeDoors=0")
    assert [g.game_id for g in games] == ["twc/dev/0", "twc/dev/999"]
    assert games[0] == Game(
        env="twx",
        game_id="twc/dev/0",
        source="twc/dev/0?numLocations=2,includeDoors=0",
        split="dev",
        task_type="twc",
    )
    spec = parse_twx_source(games[1].source)
    assert (spec.game_name, spec.fold, spec.seed, spec.params) == ("twc", "dev", 999, "numLocations=2,includeDoors=0")
    assert spec.engine_seed == 10999
    assert twx_games("coin", "train", range(1))[0].source == "coin/train/0"


def test_unknown_game_lists_known_names() -> None:
    with pytest.raises(EnvError) as err:
        twx_games("zork", "train", [0])
    for name in TWX_GAMES:
        assert name in str(err.value)


def test_unknown_fold_lists_known_folds() -> None:
    with pytest.raises(EnvError, match=r"'validation'.*train, dev, test"):
        twx_games("twc", "validation", [0])


@pytest.mark.parametrize("seed", [-1, 1000, 10000, True, "3"])
def test_bad_seed(seed: object) -> None:
    with pytest.raises(EnvError, match="0..999"):
        twx_games("twc", "train", [seed])  # type: ignore[list-item]


@pytest.mark.parametrize("source", ["twc/train", "twc/train/x", "twc/train/1?numLocations", "a/b/c/d"])
def test_bad_source(source: str) -> None:
    with pytest.raises(EnvError, match="TextWorldExpress"):
        parse_twx_source(source)


def test_env_version() -> None:
    assert env_version() == importlib.metadata.version("textworld-express")


# -- the engine ----------------------------------------------------------------------------------------------------


def test_is_a_text_env(env: TWXEnv) -> None:
    assert isinstance(env, TextEnv)
    assert env.name == "twx"


@pytest.mark.parametrize("game_name", ["twc", "cookingworld", "coin"])
def test_expert_wins(env: TWXEnv, game_name: str) -> None:
    games = twx_games(game_name, "train", range(3), SMALL_PARAMS[game_name])
    games += twx_games(game_name, "test", [0], SMALL_PARAMS[game_name])
    for game in games:
        step, total_reward, steps = _play_expert(env, game)
        assert step.won and step.done, game.game_id
        assert total_reward == pytest.approx(1.0)  # reward is the score delta; a solved game scores 1.0
        assert step.observation.info["steps"] == steps
        assert env.expert_action() is None  # gold path used up


def test_expert_on_default_params(env: TWXEnv) -> None:
    step, _, _ = _play_expert(env, twx_games("twc", "dev", [5])[0])
    assert step.won


def test_reset_observation(env: TWXEnv) -> None:
    obs = env.reset(twx_games("twc", "train", [0], SMALL_PARAMS["twc"])[0])
    assert isinstance(obs, Observation)
    assert obs.task.startswith("Your task is to pick up objects")
    assert obs.task not in obs.text
    assert obs.text.startswith("You are in the")
    assert "look around" in obs.admissible_actions
    assert obs.task_type == "twc"
    assert obs.info["score"] == 0.0 and obs.info["steps"] == 0
    assert obs.info["game_id"] == "twc/train/0" and obs.info["engine_seed"] == 0


def test_fold_offsets_match_engine_seeds(env: TWXEnv) -> None:
    engine = env._engine()  # private: the official seed lists are only on the wrapper
    official = {
        "train": engine.getValidSeedsTrain(),
        "dev": engine.getValidSeedsDev(),
        "test": engine.getValidSeedsTest(),
    }
    for fold, seeds in official.items():
        assert len(seeds) == 1000
        specs = [parse_twx_source(g.source) for g in twx_games("coin", fold, [0, 999])]
        assert [s.engine_seed for s in specs] == [seeds[0], seeds[-1]]


def test_same_seed_same_game(env: TWXEnv) -> None:
    def start(fold: str, seed: int) -> tuple[str, str, list[str]]:
        obs = env.reset(twx_games("cookingworld", fold, [seed])[0])
        return obs.task, obs.text, obs.admissible_actions

    first = start("train", 7)
    assert start("train", 7) == first
    assert start("train", 8) != first
    assert start("dev", 7) != first  # folds map to disjoint engine seeds


def test_duplicate_actions_dropped(env: TWXEnv) -> None:
    # simonsays train seed 1 lists "take grapefruit" twice in the engine's validActions.
    obs = env.reset(twx_games("simonsays", "train", [1])[0])
    assert len(obs.admissible_actions) == len(set(obs.admissible_actions))
    assert "take grapefruit" in obs.admissible_actions


def test_failure_and_deviation(env: TWXEnv) -> None:
    obs = env.reset(twx_games("simonsays", "train", [1])[0])
    gold = env.expert_action()
    assert gold is not None
    wrong = next(a for a in obs.admissible_actions if a != gold)
    step = env.step(wrong)
    assert step.done and not step.won
    assert step.reward == pytest.approx(-1.0)
    assert step.observation.info["task_failure"]
    assert env.expert_action() is None


def test_invalid_command_deviates_from_gold(env: TWXEnv) -> None:
    env.reset(twx_games("twc", "train", [0], SMALL_PARAMS["twc"])[0])
    step = env.step("dance wildly")
    assert step.observation.text == UNKNOWN_ACTION_TEXT
    assert (step.reward, step.done, step.won) == (0.0, False, False)
    assert step.observation.info["steps"] == 1
    assert env.expert_action() is None


def test_help_counts_as_step(env: TWXEnv) -> None:
    obs = env.reset(twx_games("twc", "train", [0], SMALL_PARAMS["twc"])[0])
    step = env.step("help")
    assert step.observation.text == obs.task
    assert step.observation.info["steps"] == 1 and not step.done


def test_unknown_param_rejected_at_reset(env: TWXEnv) -> None:
    with pytest.raises(EnvError, match="bogus"):
        env.reset(twx_games("twc", "train", [0], "bogus=3")[0])
    with pytest.raises(EnvError, match="before reset"):
        env.step("look around")  # the failed reset left no episode
    assert env.reset(twx_games("twc", "train", [0])[0]).admissible_actions  # and the env still works


def test_wrong_backend_game(env: TWXEnv) -> None:
    game = Game(env="alfworld", game_id="x", source="/tmp/x", split="train", task_type="pick")
    with pytest.raises(EnvError, match="alfworld"):
        env.reset(game)


def test_close_and_reuse() -> None:
    twx = TWXEnv()
    game = twx_games("coin", "train", [0], SMALL_PARAMS["coin"])[0]
    with pytest.raises(EnvError, match="before reset"):
        twx.step("look around")
    first = twx.reset(game)
    twx.close()
    twx.close()  # idempotent
    with pytest.raises(EnvError, match="before reset"):
        twx.step("look around")
    with twx:
        assert twx.reset(game).text == first.text  # a fresh JVM after close()


# -- any string is a valid step ------------------------------------------------------------------------------------

_PROPERTY_GAME = twx_games("twc", "train", [3], "numLocations=2,numItemsToPutAway=2,includeDoors=0")[0]
_property_episode = {"steps": 0, "live": False}  # one episode spans several examples, to exercise longer histories


@pytest.fixture(scope="module")
def property_env() -> Iterator[TWXEnv]:
    """Its own env (and JVM), so other tests resetting the shared one cannot interleave with these episodes."""
    with TWXEnv() as twx:
        yield twx


def _property_reset(env: TWXEnv) -> None:
    env.reset(_PROPERTY_GAME)
    _property_episode.update(steps=0, live=True)


# exclude_categories=() keeps surrogates (Cs) and control characters (Cc), which st.text() leaves out by default.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command=st.text(alphabet=st.characters(exclude_categories=()), max_size=200))
@example(command="")
@example(command=" ")
@example(command="x" * 10000)
@example(command="go north\nlook")
@example(command="\x00")
@example(command="☕ café")
@example(command="\ud800 lone surrogate")
@example(command="\x01\x02\x1b[31m\x7f\t")
@example(command="help")
def test_any_string_is_a_step(property_env: TWXEnv, command: str) -> None:
    env = property_env
    if not _property_episode["live"] or _property_episode["steps"] > 30:
        _property_reset(env)
    step = env.step(command)
    _property_episode["steps"] += 1
    assert isinstance(step, Step) and isinstance(step.observation, Observation)
    assert step.observation.admissible_actions
    assert isinstance(step.reward, float)
    if step.done:
        _property_episode["live"] = False
        return
    # The episode continues: a valid command is still understood.
    actions = step.observation.admissible_actions
    after = env.step("look around" if "look around" in actions else actions[0])
    _property_episode["steps"] += 1
    assert after.observation.text != UNKNOWN_ACTION_TEXT
    assert after.observation.info["steps"] == step.observation.info["steps"] + 1
    _property_episode["live"] = not after.done
