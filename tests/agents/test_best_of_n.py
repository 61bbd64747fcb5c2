"""Best-of-N: the pure selection rule against hand-computed cases, then the agent in the runner on real ALFWorld."""

import pytest

from agentprm.agents.best_of_n import BestOfNAgent, Candidate, representatives, select_best
from agentprm.agents.policy_agent import PolicyAgent
from agentprm.envs.registry import list_games
from agentprm.envs.runner import EnvPool, run_episodes
from agentprm.models.policy import Policy
from agentprm.models.prm import ProcessRewardModel
from agentprm.models.prompts import PromptConfig

# -- select_best -----------------------------------------------------------------------------------------------------


def cand(action, score=None, logprob=-1.0, response=None):
    return Candidate(action, response if response is not None else action, logprob, score)


def test_argmax_of_the_prm_score():
    cands = [cand("go to desk 1", 0.2), cand("take pen 1", 0.9), cand("look", 0.5)]
    assert select_best(cands, ["go to desk 1", "take pen 1", "look"]) == 1


def test_inadmissible_actions_are_dropped_even_with_the_best_score():
    cands = [cand("fly to the moon", 0.99), cand("look", 0.1), cand("inventory", 0.3)]
    assert select_best(cands, ["look", "inventory"]) == 2
    assert select_best(cands, ["look", "inventory"], filter_admissible=False) == 0


def test_all_inadmissible_falls_back_to_every_candidate():
    cands = [cand("jump", 0.4), cand("dance", 0.7)]
    assert representatives(cands, ["look"]) == [0, 1]
    assert select_best(cands, ["look"]) == 1


def test_duplicates_are_represented_once_and_need_one_score():
    # Sampling with replacement: "look" three times; only its first occurrence is scored.
    cands = [cand("look", 0.6), cand("take pen 1", 0.4), cand("look"), cand("look")]
    assert representatives(cands, ["look", "take pen 1"]) == [0, 1]
    assert select_best(cands, ["look", "take pen 1"]) == 0


def test_free_mode_duplicate_keeps_the_most_likely_response():
    cands = [cand("look", logprob=-5.0, response="look around"), cand("look", logprob=-2.0, response="look"),
             cand("take pen 1", logprob=-1.0)]
    assert representatives(cands, ["look", "take pen 1"]) == [1, 2]
    cands[1].score, cands[2].score = 0.8, 0.3
    assert select_best(cands, ["look", "take pen 1"]) == 1


def test_ties_go_to_the_higher_likelihood_then_the_first_sampled():
    cands = [cand("a", 0.5, logprob=-3.0), cand("b", 0.5, logprob=-1.0), cand("c", 0.5, logprob=-1.0)]
    assert select_best(cands, ["a", "b", "c"]) == 1
    cands[2].logprob = -0.5
    assert select_best(cands, ["a", "b", "c"]) == 2


def test_q_plus_lambda_log_pi_keeps_the_policy_preference():
    # Q: b > a by 0.1; log pi: a > b by 2 nats. lambda = 0.1: a scores 0.5 - 0.1 = 0.4, b 0.6 - 0.3 = 0.3
    cands = [cand("a", 0.5, logprob=-1.0), cand("b", 0.6, logprob=-3.0)]
    assert select_best(cands, ["a", "b"]) == 1
    assert select_best(cands, ["a", "b"], logprob_weight=0.1) == 0
    assert select_best(cands, ["a", "b"], logprob_weight=0.04) == 1  # 0.46 < 0.48


def test_single_distinct_action_needs_no_score_and_missing_scores_are_an_error():
    assert select_best([cand("look"), cand("look")], ["look"]) == 0
    with pytest.raises(ValueError, match="no PRM score"):
        select_best([cand("look", 0.3), cand("take pen 1")], ["look", "take pen 1"])
    with pytest.raises(ValueError, match="at least one"):
        select_best([], ["look"])


# -- the agent -------------------------------------------------------------------------------------------------------


def preference(response):
    """A hand-written Q: "help" over "inventory" over anything else. The untrained tiny policy samples almost only
    its one-token commands (look, inventory, help, all about equally likely), so this order often contradicts the
    policy's own likelihood ranking."""
    return {"help": 0.9, "inventory": 0.5}.get(response, 0.1)


class PreferHelp:
    """A stand-in PRM scoring with :func:`preference`; counts its calls and the pairs it is asked to score."""

    def __init__(self):
        self.calls, self.pairs = 0, []

    def score(self, prompts, responses):
        self.calls += 1
        self.pairs.extend(zip(prompts, responses))
        return [preference(r) for r in responses]


@pytest.fixture(scope="module")
def policy(tiny_model):
    return Policy.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def games(alfworld_root):
    root, _ = alfworld_root
    return list_games("alfworld", "unseen", root=str(root))[:3]


@pytest.fixture(scope="module")
def pool():
    """One pool for the module: building ALFWorld environments costs more than resetting them."""
    with EnvPool("alfworld", 3) as shared:
        yield shared


def play(pool, agent, games, max_steps, on_turn=None):
    """Action sequences of ``games`` played by ``agent``; ``on_turn(batch, actions)`` sees every turn."""
    def policy_fn(batch):
        actions = agent(batch)
        if on_turn is not None:
            on_turn(batch, actions)
        return actions

    results = run_episodes(pool, games, policy_fn, max_steps=max_steps)
    return [[a for _, a, _ in r.transitions] for r in results]


def test_n1_acts_exactly_like_the_policy_agent(policy, games, pool):
    prm = PreferHelp()
    bon = play(pool, BestOfNAgent(policy, prm, n=1, temperature=1.0, seed=5), games, max_steps=3)
    plain = play(pool, PolicyAgent(policy, temperature=1.0, seed=5), games, max_steps=3)
    assert bon == plain
    assert prm.calls == 0  # one sample per turn: nothing to choose between


def test_distinct_candidates_are_counted_per_turn(policy, games, pool):
    agent = BestOfNAgent(policy, PreferHelp(), n=4, temperature=1.0, seed=3, logprob_weight=0.1)
    counts = []

    def check(batch, actions):
        for item in batch:
            choice = agent.last_choices[item.slot]
            counts.append(len({c.action for c in choice.candidates}))

    play(pool, agent, games, max_steps=3, on_turn=check)
    assert agent.turns == len(counts) > 0
    assert agent.distinct_candidates == sum(counts) and 1 <= agent.distinct_candidates / agent.turns <= 4


def test_a_repeated_admissible_action_counts_once_in_every_stage(policy):
    """PolicyAgent, Best-of-N and online DPO sample one state from one distribution: softmax(log pi / T) over the
    DISTINCT admissible actions, however often the engine repeats one."""
    from agentprm.algorithms.dpo_trainer import DPOConfig, sample_responses
    from agentprm.envs.base import Game, Observation
    from agentprm.envs.runner import PolicyInput
    from agentprm.models.prompts import PromptState, render_prompt

    repeated, distinct = ["look", "inventory", "look", "help"], ["look", "inventory", "help"]
    item = PolicyInput(0, Game("alfworld", "g", "", "train", "pick_and_place_simple"),
                       Observation("put a mug in cabinet.", "You are in a room.", repeated), [], 0)
    state = PromptState.from_policy_input(item)
    prompt = render_prompt(state, PromptConfig(), policy.tokenizer)
    temperature, seeds = 5.0, range(40)

    def draws(candidates, n=1):  # the agents' seed for their first call is seed * 1_000_003
        return [[s.text for s in policy.sample_admissible([prompt], [candidates], n, temperature, s * 1_000_003)[0]]
                for s in seeds]

    once = draws(distinct)
    assert draws(repeated) != once  # counting "look" twice is a different distribution: the test can tell
    agent = [PolicyAgent(policy, temperature=temperature, seed=s)([item]) for s in seeds]
    best_of_one = [BestOfNAgent(policy, PreferHelp(), n=1, temperature=temperature, seed=s)([item]) for s in seeds]
    assert agent == best_of_one == once
    config = DPOConfig(samples_per_state=2, temperature=temperature)
    dpo = [[r.text for r in sample_responses(policy, [state], [prompt], config, PromptConfig(), s * 1_000_003)[0]]
           for s in seeds]
    assert dpo == draws(distinct, n=2)


def test_prm_preference_wins_whenever_sampled_and_duplicates_are_scored_once(policy, games, pool):
    prm = PreferHelp()
    agent = BestOfNAgent(policy, prm, n=8, temperature=1.0, seed=2)
    seen = {"turns": 0, "distinct": 0, "overrides": 0}
    expected_prompts = set()

    def check(batch, actions):
        seen["turns"] += 1
        expected_prompts.update(PolicyAgent(policy).prompts(batch))  # the PRM shares the policy's tokenizer
        for item, action in zip(batch, actions):
            choice = agent.last_choices[item.slot]
            assert len(choice.candidates) == 8
            assert action == choice.action and action in item.observation.admissible_actions
            assert agent.last_samples[item.slot].text == action
            distinct = {c.action for c in choice.candidates}
            seen["distinct"] += len(distinct) if len(distinct) > 1 else 0
            assert preference(action) == max(preference(a) for a in distinct)
            most_likely = max(choice.candidates, key=lambda c: c.logprob).action
            seen["overrides"] += preference(most_likely) < preference(action)

    play(pool, agent, games, max_steps=4, on_turn=check)
    assert seen["overrides"] > 0  # the PRM, not the likelihood, decided some turns
    assert prm.calls == agent.prm_calls <= seen["turns"]  # at most one batched PRM call per turn
    assert agent.prm_evaluations == len(prm.pairs) == seen["distinct"]  # each distinct action scored once
    assert agent.prm_evaluations < 8 * seen["turns"] * len(games)
    assert {prompt for prompt, _ in prm.pairs} <= expected_prompts


def test_scoring_every_sample_costs_more_and_chooses_the_same(policy, games, pool):
    deduped, naive = PreferHelp(), PreferHelp()
    fast = play(pool, BestOfNAgent(policy, deduped, n=8, temperature=1.0, seed=2), games, max_steps=4)
    agent = BestOfNAgent(policy, naive, n=8, temperature=1.0, seed=2, score_duplicates=True)
    slow = play(pool, agent, games, max_steps=4)
    assert fast == slow
    turns = sum(len(actions) for actions in slow)
    assert len(naive.pairs) == agent.prm_evaluations == 8 * turns > len(deduped.pairs)


def test_zero_initialised_prm_ties_so_the_most_likely_sample_is_executed(policy, games, pool):
    prm = ProcessRewardModel.from_policy(policy)  # zero head: every Q is exactly 0.5
    agent = BestOfNAgent(policy, prm, n=4, temperature=1.0, seed=0)

    def check(batch, actions):
        for item in batch:
            choice = agent.last_choices[item.slot]
            best = max(c.logprob for c in choice.candidates)
            assert choice.candidates[choice.chosen].logprob == best
            assert all(s is None or s == 0.5 for s in choice.scores)

    results = play(pool, agent, games[:2], max_steps=3, on_turn=check)
    assert [len(r) for r in results] == [3, 3]


def test_free_mode_scores_raw_responses_and_runs(policy, games, pool):
    prm = PreferHelp()
    agent = BestOfNAgent(policy, prm, n=3, mode="free", temperature=1.0, max_new_tokens=6,
                         prompt=PromptConfig(template="action_only"))
    raw = set()

    def check(batch, actions):
        raw.update(c.response for choice in agent.last_choices.values() for c in choice.candidates)

    results = play(pool, agent, games[:2], max_steps=2, on_turn=check)
    assert all(len(r) == 2 for r in results)
    assert {response for _, response in prm.pairs} <= raw


def test_invalid_arguments_are_rejected(policy):
    with pytest.raises(ValueError, match="mode must be one of"):
        BestOfNAgent(policy, PreferHelp(), mode="beam")
    with pytest.raises(ValueError, match="n must be"):
        BestOfNAgent(policy, PreferHelp(), n=0)
