"""Branches replayed in the real engine, branching rollouts, and the draws that choose them."""

import random

import pytest

from agentprm.agents.policy_agent import PolicyAgent, ScoreCache
from agentprm.data import StepRecord, TrajectoryRecord
from agentprm.envs.registry import list_games, make_env
from agentprm.envs.runner import EnvPool, random_admissible_policy, run_episodes
from agentprm.models.policy import Policy
from agentprm.pipeline.branching import (
    Branch,
    ReplayMismatch,
    branch_points,
    discounted_return,
    distinct_actions,
    play_branches,
)
from agentprm.pipeline.rollouts import collect_rollouts, read_rollouts


@pytest.fixture(scope="module")
def policy(sft_model):
    return Policy.from_pretrained(sft_model)


@pytest.fixture(scope="module")
def games(alfworld_root):
    root, _ = alfworld_root
    return list_games("alfworld", "train", root=str(root))[:3]


def _play(game, actions):
    env = make_env("alfworld")
    try:
        texts = [env.reset(game).text]
        texts += [env.step(a).observation.text for a in actions]
        return texts
    finally:
        env.close()


def test_the_engine_is_deterministic_for_a_replayed_prefix(games):
    with EnvPool("alfworld", 1) as pool:
        [episode] = run_episodes(pool, games[:1], random_admissible_policy(3), max_steps=8)
    actions = [action for _, action, _ in episode.transitions]
    first, second = _play(games[0], actions), _play(games[0], actions)
    assert first == second
    assert first[:-1] == [obs.text for obs, _, _ in episode.transitions]


def test_branches_replay_the_prefix_take_the_action_and_continue(games):
    with EnvPool("alfworld", 2) as pool:
        [episode] = run_episodes(pool, games[:1], random_admissible_policy(1), max_steps=6)
        prefix = tuple(action for _, action, _ in episode.transitions[:3])
        observations = tuple(obs.text for obs, _, _ in episode.transitions[:4])
        actions = list(dict.fromkeys(episode.transitions[3][0].admissible_actions))[:2]
        branches = [Branch(games[0], prefix, observations, a, continuation=m) for a in actions for m in range(2)]
        results = play_branches(pool, branches, random_admissible_policy(9), max_steps=6)
    assert len(results) == 4
    for branch, result in zip(branches, results):
        assert result.game == games[0]  # the original game, not the unique branch id
        assert [a for _, a, _ in result.transitions[:4]] == [*prefix, branch.action]
        assert [o.text for o, _, _ in result.transitions[:4]] == list(observations)
        assert result.steps <= 6


def test_a_prefix_that_does_not_replay_is_reported(games):
    with EnvPool("alfworld", 1) as pool:
        [episode] = run_episodes(pool, games[:1], random_admissible_policy(1), max_steps=3)
        observations = (episode.transitions[0][0].text, "a different room entirely")
        branch = Branch(games[0], (episode.transitions[0][1],), observations, "look")
        with pytest.raises(ReplayMismatch, match="another observation at step 1"):
            play_branches(pool, [branch], random_admissible_policy(0), max_steps=5)


def test_discounted_return_counts_the_steps_after_the_branch():
    from agentprm.envs.runner import EpisodeResult

    won = EpisodeResult(game=None, won=True, steps=10)
    assert discounted_return(won, 3, 0.9) == pytest.approx(0.9 ** 6)
    assert discounted_return(EpisodeResult(game=None, won=False, steps=10), 3, 0.9) == 0.0


def test_distinct_actions_are_drawn_without_replacement_in_proportion():
    assert distinct_actions([-1.0, -0.1, -3.0, -2.0], 3, 0.0, random.Random(0)) == [1, 0, 3]
    rng = random.Random(0)
    draws = [distinct_actions([0.0, -0.6931471805599453], 1, 1.0, rng)[0] for _ in range(20000)]
    assert draws.count(0) / len(draws) == pytest.approx(2 / 3, abs=0.015)  # softmax of (0, log 1/2)
    for _ in range(50):
        picks = distinct_actions([0.0, -1.0, -2.0, -0.5, -4.0], 4, 1.0, rng)
        assert len(set(picks)) == 4


def _record(admissible_per_step, flags=()):
    steps = [StepRecord(observation=f"o{t}", admissible_actions=list(adm), response="a", reason="", action="a",
                        admissible=True, reward=0.0, done=False, won=False, extras=dict(flag))
             for t, (adm, flag) in enumerate(zip(admissible_per_step, list(flags) + [{}] * 99))]
    return TrajectoryRecord(env="alfworld", env_version="x", game_id="g", split="train", task="t", task_type="p",
                            policy_id="pi_0", seed=3, steps=steps, won=False, total_reward=0.0,
                            final_observation="", meta={})


def test_branch_points_skip_forced_replayed_and_last_steps():
    record = _record([["a", "b"], ["a", "a"], ["a", "b"], ["a", "b"], ["a", "b"]], flags=[{}, {}, {"reset": True}])
    # step 1 has one distinct action, step 2 was replayed, step 4 leaves no budget with max_steps 5
    assert branch_points(record, 10, max_steps=5, seed=0) == [0, 3]
    assert len(branch_points(record, 1, max_steps=5, seed=0)) == 1
    assert branch_points(record, 1, 5, seed=4) == branch_points(record, 1, 5, seed=4)


def test_branching_rollouts_write_flagged_contrasts_in_their_own_shard(policy, games, tmp_path):
    from agentprm.pipeline.branching import BranchSettings, plan_branches
    from agentprm.models.prompts import PromptConfig, PromptState, render_prompt

    prompt = PromptConfig()

    def score(records, steps):
        states = [PromptState.from_trajectory(r, t) for r, t in zip(records, steps)]
        actions = [list(dict.fromkeys(s.admissible_actions)) for s in states]
        lps = policy.score_candidates([render_prompt(s, prompt, policy.tokenizer) for s in states], actions)
        return list(zip(actions, actions, lps))

    settings = BranchSettings(states=1, actions=2, continuations=2, temperature=1.0)
    by_id = {g.game_id: g for g in games}
    out = tmp_path / "rollouts"

    def collect():
        return collect_rollouts("alfworld", games, lambda seed: PolicyAgent(policy, temperature=1.0, seed=seed,
                                                                            score_cache=ScoreCache()),
                                out, episodes_per_game=1, max_steps=6, policy_id="pi_0", seed=5, num_envs=4,
                                progress=False,
                                branch_plan=lambda records: plan_branches(records, by_id, settings, score, 6, 5))

    shards = collect()
    assert [s.name for s in shards] == ["shard_000.jsonl", "shard_branch.jsonl"]
    records = read_rollouts(out)
    base = [r for r in records if r.meta["rollout"] == 0]
    branches = [r for r in records if r.meta["rollout"] == "branch"]
    assert len(base) == 3 and len(branches) == 3 * 2 * 2
    by_game = {r.game_id: r for r in base}
    for record in branches:
        t = record.meta["branch_step"]
        source = by_game[record.game_id]
        assert [s.action for s in record.steps[:t]] == [s.action for s in source.steps[:t]]
        assert all(s.extras.get("branch_prefix") for s in record.steps[:t])
        assert record.steps[t].extras.get("branch") and not record.steps[t].extras.get("branch_prefix")
        assert all(not s.extras.get("branch_prefix") for s in record.steps[t + 1:])
    for game_id in by_game:  # two distinct actions at each branch point, two continuations each
        mine = [r for r in branches if r.game_id == game_id]
        t = mine[0].meta["branch_step"]
        actions = [r.steps[t].action for r in mine]
        assert len(set(actions)) == 2 and all(actions.count(a) == 2 for a in set(actions))
    text = (out / "shard_branch.jsonl").read_text()
    assert collect() == shards and (out / "shard_branch.jsonl").read_text() == text  # a rerun keeps the shard
