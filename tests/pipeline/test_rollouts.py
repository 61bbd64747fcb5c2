"""Rollouts: sharded, resumable, with sampled responses and log-probabilities kept per step."""

import pytest

from agentprm.agents.policy_agent import PolicyAgent
from agentprm.envs.registry import list_games
from agentprm.models.policy import Policy
from agentprm.pipeline.rollouts import collect_rollouts, read_rollouts


@pytest.fixture(scope="module")
def policy(sft_model):
    return Policy.from_pretrained(sft_model)


def _collect(policy, games, out):
    return collect_rollouts("alfworld", games, lambda seed: PolicyAgent(policy, temperature=1.0, seed=seed), out,
                            episodes_per_game=2, max_steps=5, policy_id="pi_0", seed=10, num_envs=3, progress=False)


def test_shards_hold_every_episode_with_samples(policy, alfworld_root, tmp_path):
    root, _ = alfworld_root
    games = list_games("alfworld", "train", root=str(root))[:3]
    shards = _collect(policy, games, tmp_path / "rollouts")
    assert [s.name for s in shards] == ["shard_000.jsonl", "shard_001.jsonl"]
    records = read_rollouts(tmp_path / "rollouts")
    assert len(records) == 6 and sorted({r.game_id for r in records}) == sorted(g.game_id for g in games)
    assert {r.seed for r in records} == {10, 11} and all(r.policy_id == "pi_0" for r in records)
    for record in records:
        assert 1 <= record.num_steps <= 5
        for step in record.steps:
            assert step.response == step.action and step.admissible
            assert step.extras["logprob"] < 0 and step.extras["finished"] is True


def test_an_interrupted_stage_resumes_without_redoing_or_losing_work(policy, alfworld_root, tmp_path):
    root, _ = alfworld_root
    games = list_games("alfworld", "train", root=str(root))[:3]
    out = tmp_path / "rollouts"
    _collect(policy, games, out)
    complete = {p.name: p.read_text() for p in out.glob("shard_*.jsonl")}
    first_mtime = (out / "shard_000.jsonl").stat().st_mtime_ns

    # Simulate a kill during shard 1: its file is only partially written.
    (out / "shard_001.jsonl").rename(out / "shard_001.jsonl.partial")
    text = (out / "shard_001.jsonl.partial").read_text()
    (out / "shard_001.jsonl.partial").write_text(text[: len(text) // 2])
    assert len(read_rollouts(out)) == 3  # partial shards are never read

    _collect(policy, games, out)
    assert (out / "shard_000.jsonl").stat().st_mtime_ns == first_mtime
    assert {p.name: p.read_text() for p in out.glob("shard_*.jsonl")} == complete
    assert not list(out.glob("*.partial"))
