"""The policy agent in the batched runner, on the real ALFWorld engine."""

import pytest

from agentprm.agents.policy_agent import PolicyAgent
from agentprm.envs.registry import list_games
from agentprm.envs.runner import EnvPool, run_episodes
from agentprm.models.policy import Policy
from agentprm.models.prompts import PromptConfig


@pytest.fixture(scope="module")
def policy(sft_model):
    return Policy.from_pretrained(sft_model)


def test_admissible_mode_only_sends_admissible_actions(policy, alfworld_root):
    root, _ = alfworld_root
    games = list_games("alfworld", "unseen", root=str(root))
    agent = PolicyAgent(policy, mode="admissible", temperature=0.3, seed=1)
    with EnvPool("alfworld", 3) as pool:
        results = run_episodes(pool, games, agent, max_steps=6)
    assert len(results) == len(games)
    for result in results:
        for obs, action, _ in result.transitions:
            assert action in obs.admissible_actions
    assert set(agent.last_samples) <= {0, 1, 2}
    assert all(s.token_ids[-1] == policy.tokenizer.eos_token_id for s in agent.last_samples.values())


def test_same_seed_same_episodes(policy, alfworld_root):
    root, _ = alfworld_root
    games = list_games("alfworld", "train", root=str(root))[:3]

    def play(seed):
        with EnvPool("alfworld", 3) as pool:
            results = run_episodes(pool, games, PolicyAgent(policy, seed=seed, temperature=1.0), max_steps=5)
        return [[a for _, a, _ in r.transitions] for r in results]

    assert play(3) == play(3)


def test_free_mode_never_crashes_on_garbage(policy, alfworld_root):
    """A weak model writes anything in free generation; every response is still a step."""
    root, _ = alfworld_root
    games = list_games("alfworld", "train", root=str(root))[:2]
    agent = PolicyAgent(policy, mode="free", temperature=1.0, max_new_tokens=8,
                        prompt=PromptConfig(template="action_only"))
    with EnvPool("alfworld", 2) as pool:
        results = run_episodes(pool, games, agent, max_steps=4)
    assert all(r.steps == 4 or r.won for r in results)


def test_unknown_mode_is_rejected(policy):
    with pytest.raises(ValueError, match="mode must be one of"):
        PolicyAgent(policy, mode="beam")


def test_the_score_cache_answers_like_the_policy_even_when_it_fills_up(policy):
    from agentprm.agents.policy_agent import ScoreCache

    prompts = ["Task: find a mug\n", "You see a desk 1.\n", "Nothing happens.\n"]
    candidates = [["look", "go to desk 1"], ["look"], ["inventory", "look"]]
    expected = policy.score_candidates(prompts, candidates)
    flat = lambda rows: [value for row in rows for value in row]  # noqa: E731
    cache = ScoreCache(max_entries=2)
    assert flat(cache.scores(policy, prompts[:2], candidates[:2])) == pytest.approx(flat(expected[:2]), abs=1e-5)
    # one hit and one new prompt with the cache full: it is cleared, and the hit is still answered
    got = cache.scores(policy, prompts[1:], candidates[1:])
    assert flat(got) == pytest.approx(flat(expected[1:]), abs=1e-5)
    assert (cache.hits, cache.misses) == (1, 3) and len(cache.entries) == 1
