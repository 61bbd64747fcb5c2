"""The batched runner against the real engines (ALFWorld and TextWorldExpress; no mocks).

Pools are expensive (each TWX slot is a JVM, each worker a spawned Python), so results are computed once per module
and shared by the tests that check them.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld_express")

from agentprm.envs.base import EnvError, Game  # noqa: E402
from agentprm.envs.registry import list_games  # noqa: E402
from agentprm.envs.runner import (  # noqa: E402
    EnvPool,
    EpisodeResult,
    PolicyInput,
    expert_policy,
    random_admissible_policy,
    run_episodes,
)

TWX_PARAMS = "numLocations=1,numItemsToPutAway=1,includeDoors=0"
WORKER_COUNTS = (0, 1, 2)


@pytest.fixture(scope="session")
def alf_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agentprm.envs.alfworld_build import generate_games

    root = tmp_path_factory.mktemp("alfworld_games")
    generate_games(root, seed=0, counts={"train": 6}, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def alf_games(alf_root: Path) -> list[Game]:
    games = list_games("alfworld", "train", root=str(alf_root))
    assert len(games) == 6
    return games


@pytest.fixture(scope="session")
def alf_options(tmp_path_factory: pytest.TempPathFactory) -> dict:
    # A shared on-disk translation cache lets spawned workers start warm instead of re-translating every game.
    return {"cache_dir": str(tmp_path_factory.mktemp("pddl_cache"))}


@pytest.fixture(scope="session")
def twx_games() -> list[Game]:
    return list_games("twx", "train", limit=8, twx_game="twc", twx_params=TWX_PARAMS)


def _trajectory(result: EpisodeResult) -> tuple:
    return (result.game, result.transitions, result.won, result.steps, result.final_observation)


def _check_game_order(results: list[EpisodeResult], games: list[Game]) -> None:
    assert [r.game for r in results] == games
    for r in results:
        assert r.steps == len(r.transitions)
        assert r.final_observation == r.transitions[-1][2].observation


# -- ALFWorld --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alf_random(alf_games: list[Game], alf_options: dict) -> dict[int, list[EpisodeResult]]:
    runs = {}
    for workers in WORKER_COUNTS:
        with EnvPool("alfworld", 3, workers=workers, env_options=alf_options) as pool:
            runs[workers] = run_episodes(pool, alf_games, random_admissible_policy(7), max_steps=10)
    return runs


def test_alfworld_trajectories_identical_for_any_worker_count(alf_random, alf_games) -> None:
    reference = [_trajectory(r) for r in alf_random[0]]
    for workers in WORKER_COUNTS[1:]:
        assert [_trajectory(r) for r in alf_random[workers]] == reference, f"workers={workers} differs"
    _check_game_order(alf_random[0], alf_games)


def test_random_policy_picks_admissible_actions_and_max_steps_cuts(alf_random) -> None:
    for result in alf_random[0]:
        assert result.steps <= 10
        if not result.won:
            assert result.steps == 10  # random play rarely solves ALFWorld in 10 steps; the cut must end it
        for observation, action, _ in result.transitions:
            assert action in observation.admissible_actions


def test_alfworld_expert_solves_all_games_in_game_order(alf_games, alf_options) -> None:
    finished: list[EpisodeResult] = []
    options = {"expert": "handcoded", **alf_options}
    with EnvPool("alfworld", 3, workers=2, env_options=options) as pool:
        results = run_episodes(
            pool, alf_games, expert_policy, max_steps=50, on_episode=finished.append, need_expert=True
        )
    assert all(r.won for r in results), [(r.game.game_id, r.steps) for r in results]
    _check_game_order(results, alf_games)
    # on_episode: once per game, as episodes finish (completion order), with the same objects that are returned.
    assert sorted(id(r) for r in finished) == sorted(id(r) for r in results)
    assert len(finished) == len(alf_games)
    assert [r.transitions[-1][2].won for r in results] == [True] * len(results)


def test_history_and_step_index_reach_the_policy(alf_games, alf_options) -> None:
    seen: list[PolicyInput] = []

    def policy(batch: list[PolicyInput]) -> list[str]:
        seen.extend(batch)
        assert len({item.slot for item in batch}) == len(batch)
        return ["look"] * len(batch)

    with EnvPool("alfworld", 2, env_options=alf_options) as pool:
        results = run_episodes(pool, alf_games[:3], policy, max_steps=3)
        with pytest.raises(EnvError, match="max_steps"):
            run_episodes(pool, alf_games[:2], policy, max_steps=0)
        with pytest.raises(EnvError, match="returned 0 actions"):
            run_episodes(pool, alf_games[:1], lambda batch: [], max_steps=3)
    assert [r.steps for r in results] == [3, 3, 3]
    for item in seen:
        assert len(item.history) == item.step
        assert item.expert_action is None  # need_expert was not passed
        assert all(action == "look" for _, action in item.history)


# -- TextWorldExpress ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twx_runs(twx_games: list[Game]) -> dict[int, tuple[list[EpisodeResult], list[EpisodeResult]]]:
    runs = {}
    for workers in WORKER_COUNTS:
        with EnvPool("twx", 4, workers=workers) as pool:
            random_results = run_episodes(pool, twx_games, random_admissible_policy(3), max_steps=10)
            expert_results = run_episodes(pool, twx_games, expert_policy, max_steps=50, need_expert=True)
        runs[workers] = (random_results, expert_results)
    return runs


def test_twx_trajectories_identical_for_any_worker_count(twx_runs, twx_games) -> None:
    reference = [_trajectory(r) for r in twx_runs[0][0]]
    for workers in WORKER_COUNTS[1:]:
        assert [_trajectory(r) for r in twx_runs[workers][0]] == reference, f"workers={workers} differs"
    _check_game_order(twx_runs[0][0], twx_games)
    assert all(r.steps <= 10 for r in twx_runs[0][0])
    # An episode shorter than the cut ended because the engine said done (and a done step always ends it).
    assert all(r.steps == 10 or r.transitions[-1][2].done for r in twx_runs[0][0])
    assert any(r.steps < 10 for r in twx_runs[0][0]), "expected some random episodes to end early (refill path)"


def test_twx_expert_solves_all_games(twx_runs, twx_games) -> None:
    for workers in WORKER_COUNTS:
        results = twx_runs[workers][1]
        assert all(r.won for r in results), (workers, [(r.game.game_id, r.steps) for r in results])
        _check_game_order(results, twx_games)
        assert [_trajectory(r) for r in results] == [_trajectory(r) for r in twx_runs[0][1]]


# -- failures --------------------------------------------------------------------------------------------------------


def _missing(game: Game) -> Game:
    return replace(game, game_id="no/such/game", source=str(Path(game.source).with_name("missing.tw-pddl")))


def test_in_process_error_names_slot_and_game(alf_games, alf_options) -> None:
    with EnvPool("alfworld", 2, env_options=alf_options) as pool:
        with pytest.raises(EnvError, match=r"slot 1 \(game no/such/game\)"):
            pool.reset({1: _missing(alf_games[0])})
        with pytest.raises(EnvError, match="out of range"):
            pool.step({5: "look"})


@pytest.fixture
def worker_pool(alf_options) -> Iterator[EnvPool]:
    with EnvPool("alfworld", 2, workers=1, env_options=alf_options) as pool:
        yield pool


def test_worker_error_surfaces_as_env_error_and_worker_survives(worker_pool, alf_games) -> None:
    with pytest.raises(EnvError, match=r"slot 0 \(game no/such/game\).*not found"):
        worker_pool.reset({0: _missing(alf_games[0]), 1: alf_games[1]})
    # The worker answered with the error and is still serving requests.
    observations = worker_pool.reset({0: alf_games[0], 1: alf_games[1]})
    assert set(observations) == {0, 1}
    assert set(worker_pool.step({0: "look", 1: "look"})) == {0, 1}

    # A killed worker is detected on the next request instead of hanging the parent.
    (pid,) = worker_pool.worker_pids()
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(EnvError, match="died"):
        worker_pool.step({0: "look", 1: "look"})
    with pytest.raises(EnvError, match="died"):
        worker_pool.expert_actions([0])
    assert time.monotonic() - started < 10
    worker_pool.close()  # closing a pool with a dead worker must not hang either
    with pytest.raises(EnvError, match="closed"):
        worker_pool.step({0: "look"})


def test_bad_env_options_fail_at_pool_construction() -> None:
    with pytest.raises(EnvError, match="Unknown ALFWorld expert"):
        EnvPool("alfworld", 1, workers=0, env_options={"expert": "oracle"})
    with pytest.raises(EnvError, match="Unknown ALFWorld expert"):
        EnvPool("alfworld", 1, workers=1, env_options={"expert": "oracle"})
