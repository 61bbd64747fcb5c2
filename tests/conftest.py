"""Shared fixtures: one small generated ALFWorld game set per test session (real engine, real expert)."""

import pytest

from agentprm.envs.alfworld_build import generate_games

SESSION_SEED = 7
SESSION_COUNTS = {"train": 6, "valid_seen": 6, "valid_unseen": 6}


@pytest.fixture(scope="session")
def alfworld_root(tmp_path_factory):
    """One game of each of the six task types in each split (18 games, every one checked by the expert)."""
    root = tmp_path_factory.mktemp("alfworld_games")
    manifest = generate_games(root, seed=SESSION_SEED, counts=SESSION_COUNTS, workers=2, progress=False)
    return root, manifest


@pytest.fixture(scope="session")
def alfworld_demos(alfworld_root, tmp_path_factory):
    """Handcoded-expert demonstrations of the session's train and valid_seen games (12 episodes)."""
    from agentprm.envs.registry import list_games
    from agentprm.pipeline.demos import record_demos

    root, _ = alfworld_root
    out = tmp_path_factory.mktemp("demos") / "demos.jsonl"
    games = list_games("alfworld", "train", root=str(root)) + list_games("alfworld", "seen", root=str(root))
    record_demos("alfworld", games, out, progress=False)
    return out
