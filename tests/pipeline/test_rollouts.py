"""Rollouts: sharded, resumable, with sampled responses, their reasons and log-probabilities kept per step."""

from dataclasses import dataclass, field

import pytest

from agentprm.agents.policy_agent import PolicyAgent
from agentprm.envs.registry import list_games
from agentprm.models.policy import Policy, Sample
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


@dataclass
class Reasoner:
    """A stand-in for a reason_action policy in free mode: reasons, then picks the first admissible action."""

    last_samples: dict = field(default_factory=dict)

    def __call__(self, batch):
        actions = [item.observation.admissible_actions[0] for item in batch]
        self.last_samples = {item.slot: Sample(f"REASON: step {item.step} of {item.game.task_type}\nACTION: {action}",
                                               [], -1.0, True) for item, action in zip(batch, actions)}
        return actions


def test_reason_action_rollouts_keep_the_reason_and_rft_trains_on_it(alfworld_root, tmp_path):
    from agentprm.algorithms.sft_data import build_examples
    from agentprm.models.prompts import PromptConfig
    from agentprm.models.tokenizer import train_tokenizer

    root, _ = alfworld_root
    games = list_games("alfworld", "train", root=str(root))[:2]
    collect_rollouts("alfworld", games, lambda seed: Reasoner(), tmp_path / "rollouts", episodes_per_game=1,
                     max_steps=3, policy_id="pi_0", num_envs=2, progress=False, template="reason_action")
    records = read_rollouts(tmp_path / "rollouts")
    assert len(records) == 2
    for record in records:
        assert [s.reason for s in record.steps] == [f"step {t} of {record.task_type}" for t in range(record.num_steps)]
        assert all(s.response == f"REASON: {s.reason}\nACTION: {s.action}" for s in record.steps)
    config = PromptConfig(template="reason_action", use_chat_template="never")
    tokenizer = train_tokenizer(["REASON: ACTION:"] * 2, vocab_size=300)
    examples = build_examples(records, tokenizer, config, max_length=4096, only_successful=False)  # RFT's examples
    first = records[0].steps[0]
    assert tokenizer.decode(examples[0].response_ids) == (
        f"REASON: step 0 of {records[0].task_type}\nACTION: {first.action}<|eos|>")


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


def test_reset_prefixes_are_seeded_per_game_and_leave_the_policy_an_action():
    from agentprm.envs.base import Game
    from agentprm.pipeline.rollouts import reset_prefixes

    games = [Game("alfworld", f"g{i}", "", "train", "pick_and_place_simple") for i in range(40)]
    demos = {f"g{i}": [f"a{j}" for j in range(2 + i % 7)] for i in range(39)} | {"g0": ["only"]}
    prefixes = reset_prefixes(demos, games, seed=3)
    assert "g0" not in prefixes and "g39" not in prefixes  # a one-action demo; no demo at all
    for game_id, prefix in prefixes.items():
        demo = demos[game_id]
        assert 1 <= len(prefix) <= len(demo) - 1 and prefix == demo[: len(prefix)]
    assert prefixes == reset_prefixes(demos, list(reversed(games)), seed=3)  # depends on (seed, game) only
    assert prefixes != reset_prefixes(demos, games, seed=4)
    assert len({len(p) for p in prefixes.values()}) > 3  # spread over the demonstrations' lengths
    assert max(len(p) for p in reset_prefixes(demos, games, seed=3, max_prefix=2).values()) == 2


def test_reset_shards_replay_the_expert_prefix_then_the_policy_acts(policy, alfworld_root, alfworld_demos, tmp_path):
    from agentprm.data import read_trajectories
    from agentprm.pipeline.rollouts import reset_prefixes

    root, _ = alfworld_root
    games = list_games("alfworld", "train", root=str(root))[:3]
    demos = {r.game_id: [s.action for s in r.steps] for r in read_trajectories(alfworld_demos)}
    prefixes = reset_prefixes(demos, games, seed=1, max_prefix=11)
    out = tmp_path / "rollouts"
    collect_rollouts("alfworld", games, lambda seed: PolicyAgent(policy, temperature=1.0, seed=seed), out,
                     episodes_per_game=2, max_steps=12, policy_id="pi_0", seed=10, num_envs=3, progress=False,
                     prefixes={0: prefixes})
    records = read_rollouts(out)
    for record in records:
        k = len(prefixes[record.game_id]) if record.meta["rollout"] == 0 else 0
        assert record.meta.get("reset_step", 0) == k
        if k:
            assert [s.action for s in record.steps[:k]] == prefixes[record.game_id]  # replayed in the real engine
        assert all(s.extras.get("reset") is True and s.admissible for s in record.steps[:k])
        assert all("reset" not in s.extras and s.extras["logprob"] < 0 for s in record.steps[k:])
        assert record.num_steps > k  # the policy acted after the prefix
    assert sorted(r.meta["rollout"] for r in records if r.meta.get("reset_step")) == [0, 0, 0]


def test_steered_draws_depend_on_game_and_step_only():
    from agentprm.pipeline.rollouts import SteeredAgent

    agent = SteeredAgent(None, None, fraction=0.3, seed=5)
    draws = [agent.is_steered(f"g{g}", t) for g in range(50) for t in range(20)]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    assert draws == [SteeredAgent(None, None, 0.3, 5).is_steered(f"g{g}", t) for g in range(50) for t in range(20)]
    assert not any(SteeredAgent(None, None, 0.0).is_steered("g", t) for t in range(50))
    assert all(SteeredAgent(None, None, 1.0).is_steered("g", t) for t in range(50))


def test_steered_steps_sample_with_the_hint_and_are_flagged(policy, alfworld_root, tmp_path):
    import dataclasses

    from agentprm.models.prompts import PromptConfig, PromptState, render_prompt
    from agentprm.pipeline.rollouts import SteeredAgent

    root, _ = alfworld_root
    games = list_games("alfworld", "train", root=str(root))[:3]
    nominal, hinted = PromptConfig(), PromptConfig(hint="look in the drawers first")

    def wrap(agent, seed):
        return SteeredAgent(agent, dataclasses.replace(agent, prompt=hinted, last_samples={}), 0.5, seed)

    collect_rollouts("alfworld", games, lambda seed: PolicyAgent(policy, prompt=nominal, temperature=1.0, seed=seed),
                     tmp_path / "rollouts", episodes_per_game=1, max_steps=6, policy_id="pi_0", seed=3, num_envs=3,
                     progress=False, wrap_agent=wrap)
    steps = [(r, t) for r in read_rollouts(tmp_path / "rollouts") for t in range(r.num_steps)]
    steered = [(r, t) for r, t in steps if r.steps[t].extras.get("steered")]
    assert 0 < len(steered) < len(steps)
    for record, t in steps:  # the stored log-prob is the one under the prompt the step was sampled with
        step = record.steps[t]
        state = PromptState.from_trajectory(record, t)
        used = hinted if step.extras.get("steered") else nominal
        other = nominal if used is hinted else hinted
        scores = [policy.score_candidates([render_prompt(state, c, policy.tokenizer)], [[step.response]])[0][0]
                  for c in (used, other)]
        assert step.extras["logprob"] == pytest.approx(scores[0], abs=1e-4) and scores[0] != scores[1]
        assert "Hint:" not in render_prompt(state, nominal, policy.tokenizer)  # what training renders
