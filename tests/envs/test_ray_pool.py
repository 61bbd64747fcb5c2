"""The Ray backend on a real local Ray instance: the same rollout stage gives identical trajectories on the local
and Ray backends, and a killed actor's games are played again so every episode is written exactly once."""

import os
import signal

import pytest

pytest.importorskip("ray")

from agentprm.agents.policy_agent import PolicyAgent  # noqa: E402
from agentprm.envs.registry import list_games  # noqa: E402
from agentprm.envs.runner import PoolSpec, open_pool, run_episodes  # noqa: E402
from agentprm.models.policy import Policy  # noqa: E402
from agentprm.pipeline import rollouts as rollouts_module  # noqa: E402
from agentprm.pipeline.rollouts import collect_rollouts, read_rollouts  # noqa: E402

pytestmark = pytest.mark.slow
RAY = PoolSpec(workers=2, backend="ray")


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def policy(sft_model):
    return Policy.from_pretrained(sft_model)


@pytest.fixture(scope="module")
def games(alfworld_root):
    root, _ = alfworld_root
    return list_games("alfworld", "train", root=str(root))[:4]


def collect(policy, games, out, workers, wrap_agent=None):
    return collect_rollouts("alfworld", games, lambda seed: PolicyAgent(policy, temperature=1.0, seed=seed), out,
                            episodes_per_game=2, max_steps=6, policy_id="pi_0", seed=3, num_envs=4,
                            workers=workers, progress=False, wrap_agent=wrap_agent)


def trajectories(out):
    return sorted((r.seed, r.game_id, [(s.observation, s.response, s.action, s.extras["logprob"]) for s in r.steps],
                   r.won) for r in read_rollouts(out))


def test_the_rollout_stage_gives_identical_trajectories_on_both_backends(policy, games, tmp_path):
    collect(policy, games, tmp_path / "local", PoolSpec(workers=2))
    collect(policy, games, tmp_path / "ray", RAY)
    local, on_ray = trajectories(tmp_path / "local"), trajectories(tmp_path / "ray")
    assert len(local) == 8 and local == on_ray


def test_a_killed_actor_has_its_games_played_again_exactly_once(policy, games, tmp_path, monkeypatch):
    pools = []

    def keep(*args, **kwargs):
        pools.append(open_pool(*args, **kwargs))
        return pools[-1]

    monkeypatch.setattr(rollouts_module, "open_pool", keep)
    calls = {"n": 0, "killed": []}

    def killer(agent, seed):
        def act(batch):
            calls["n"] += 1
            if calls["n"] == 3:  # mid-episode: every slot is on its third step
                pid = pools[0].worker_pids()[1]
                os.kill(pid, signal.SIGKILL)
                calls["killed"].append(pid)
            actions = agent(batch)
            act.last_samples = agent.last_samples
            return actions

        act.last_samples = {}
        return act

    collect(policy, games, tmp_path / "ray", RAY, wrap_agent=killer)
    assert calls["killed"] and pools[0].restarts == 1
    assert calls["killed"][0] not in pools[0].worker_pids()  # a new actor took the lost slots
    records = read_rollouts(tmp_path / "ray")
    per_shard = {}
    for record in records:
        per_shard.setdefault(record.seed, []).append(record.game_id)
    assert {seed: sorted(ids) for seed, ids in per_shard.items()} == {
        3: sorted(g.game_id for g in games), 4: sorted(g.game_id for g in games)}
    for record in records:  # every written episode is whole: it starts at the game's first observation
        assert 1 <= record.num_steps <= 6 and len(record.steps) == record.num_steps


def test_lost_episodes_restart_from_the_first_step(games):
    with open_pool("alfworld", 2, RAY) as pool:
        played = []

        def policy(batch):
            if len(played) == 1:
                os.kill(pool.worker_pids()[0], signal.SIGKILL)
            played.append([item.step for item in batch])
            return ["look" for _ in batch]

        results = run_episodes(pool, games[:2], policy, max_steps=3)
    assert [r.steps for r in results] == [3, 3] and pool.restarts == 1
    assert [r.game.game_id for r in results] == [g.game_id for g in games[:2]]
