"""Which training games are demonstrated and which ones rollouts play: the balanced order over task types and
rollouts.exclude_demo_games."""

from types import SimpleNamespace

import pytest

from agentprm.config import ConfigError, load_config
from agentprm.data import StepRecord, TrajectoryRecord, TrajectoryWriter
from agentprm.pipeline.run_config import RunConfig
from agentprm.pipeline.run_stages import balanced_order, demo_games, rollout_games, rollout_pool


def game(game_id: str):
    """a game whose task type is the id's letter: 'a1' is of type a"""
    return SimpleNamespace(game_id=game_id, task_type=game_id[0])


# sorted by id, as the game lists are: grouped by task type
GAMES = [game(i) for i in ("a1", "a2", "a3", "b1", "b2", "b3", "c1", "c2")]


def ids(games):
    return [g.game_id for g in games]


def demo_record(game_id: str) -> TrajectoryRecord:
    return TrajectoryRecord(env="alfworld", env_version="0.4.2", game_id=game_id, split="train", task="t",
                            task_type=game_id[0], policy_id="expert:handcoded", seed=0, won=True, total_reward=1.0,
                            final_observation="done",
                            steps=[StepRecord(observation="o", admissible_actions=["look"], response="look",
                                              reason="", action="look", admissible=True, reward=1.0, done=True,
                                              won=True)])


def context(exclude: bool, count: int, games=GAMES, run_dir=None, demonstrated=None):
    """A run context over ``games``; with ``run_dir``, RUN/demos/demos.jsonl holds demonstrations of the games
    ``demonstrated`` (default: the ones the demos stage would record, ``demo_games``)."""
    config = load_config(RunConfig, {"games": {"train": len(games)}, "demos": {"count": count},
                                     "rollouts": {"exclude_demo_games": exclude}})
    config.validate()
    ctx = SimpleNamespace(config=config, dir=run_dir, games=lambda split: list(games) if split == "train" else [])
    if run_dir is not None:
        with TrajectoryWriter(run_dir / "demos" / "demos.jsonl") as writer:
            for game_id in demonstrated if demonstrated is not None else ids(demo_games(ctx)):
                writer.write(demo_record(game_id))
    return ctx


def test_balanced_order_deals_round_robin_over_task_types():
    assert ids(balanced_order(GAMES)) == ["a1", "b1", "c1", "a2", "b2", "c2", "a3", "b3"]
    assert balanced_order([]) == []
    untyped = list("xyz")  # no task type: one group, order kept
    assert balanced_order(untyped) == untyped


def test_demonstrated_games_are_a_balanced_prefix():
    assert ids(demo_games(context(False, 3))) == ["a1", "b1", "c1"]
    assert demo_games(context(False, 0)) == GAMES


def test_the_pool_is_every_training_game_by_default():
    assert rollout_pool(context(False, 3)) == GAMES
    assert rollout_pool(context(False, 0)) == GAMES


def test_excluding_demo_games_leaves_the_undemonstrated_ones(tmp_path):
    pool = rollout_pool(context(True, 3, run_dir=tmp_path))
    assert ids(pool) == ["a2", "a3", "b2", "b3", "c2"]
    # windows take the pool in balanced order and wrap around inside it, never reaching a demonstrated game
    assert ids(rollout_games(pool, 2, 1)) == ["a2", "b2"]
    assert ids(rollout_games(pool, 2, 2)) == ["c2", "a3"]
    assert ids(rollout_games(pool, 2, 3)) == ["b3", "a2"]


def test_the_demos_records_say_which_games_are_demonstrated(tmp_path):
    """A base run's demonstrations kept while the game pool grew: the pool is every game without a record, whatever
    demos.count would pick from the larger pool."""
    grown = GAMES + [game("a4"), game("b4")]
    pool = rollout_pool(context(True, 6, games=grown, run_dir=tmp_path, demonstrated=ids(GAMES)))
    assert ids(pool) == ["a4", "b4"]


def test_a_pool_without_undemonstrated_games_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no game is left to play"):
        rollout_pool(context(True, 3, run_dir=tmp_path, demonstrated=ids(GAMES)))


def test_windows_hold_every_task_type():
    games = [game(f"{t}{i:02d}") for t in "abcdef" for i in range(10)]  # 6 types x 10, sorted by id
    for iteration in (1, 2, 3):
        window = rollout_games(games, 12, iteration)
        assert sorted(g.task_type for g in window) == sorted("abcdef" * 2)


@pytest.mark.parametrize("settings, message", [
    ({"demos": {"count": 0}}, "0 < demos.count < games.train"),
    ({"demos": {"count": 8}}, "0 < demos.count < games.train"),
    ({"demos": {"count": 3}, "rollouts": {"exclude_demo_games": True, "reset_fraction": 0.5}}, "reset_fraction"),
])
def test_invalid_settings_fail_before_work_and_name_the_keys(settings, message):
    data = {"games": {"train": 8}, "rollouts": {"exclude_demo_games": True}, **settings}
    with pytest.raises((ValueError, ConfigError), match=message):
        load_config(RunConfig, data).validate()
