"""rollouts.exclude_demo_games: rollouts play only the training games without a demonstration."""

from types import SimpleNamespace

import pytest

from agentprm.config import ConfigError, load_config
from agentprm.pipeline.run_config import RunConfig
from agentprm.pipeline.run_stages import rollout_games, rollout_pool


def context(exclude: bool, count: int, games=tuple("abcdefgh")):
    config = load_config(RunConfig, {"games": {"train": len(games)}, "demos": {"count": count},
                                     "rollouts": {"exclude_demo_games": exclude}})
    config.validate()
    return SimpleNamespace(config=config, games=lambda split: list(games) if split == "train" else [])


def test_the_pool_is_every_training_game_by_default():
    assert rollout_pool(context(False, 3)) == list("abcdefgh")
    assert rollout_pool(context(False, 0)) == list("abcdefgh")


def test_excluding_demo_games_leaves_the_games_after_the_first_count():
    pool = rollout_pool(context(True, 3))
    assert pool == list("defgh")
    # iteration windows then wrap around inside the pool, never reaching a demonstrated game
    assert rollout_games(pool, 2, 1) == list("de") and rollout_games(pool, 2, 3) == list("hd")


@pytest.mark.parametrize("settings, message", [
    ({"demos": {"count": 0}}, "0 < demos.count < games.train"),
    ({"demos": {"count": 8}}, "0 < demos.count < games.train"),
    ({"demos": {"count": 3}, "rollouts": {"exclude_demo_games": True, "reset_fraction": 0.5}}, "reset_fraction"),
])
def test_invalid_settings_fail_before_work_and_name_the_keys(settings, message):
    data = {"games": {"train": 8}, "rollouts": {"exclude_demo_games": True}, **settings}
    with pytest.raises((ValueError, ConfigError), match=message):
        load_config(RunConfig, data).validate()
