"""Best-of-N ranked by Monte Carlo Q in the real engine: exact values on an expert path, and the agent's choices."""

import pytest

from agentprm.agents.lookahead import LookaheadBestOfN, MonteCarloQ, Verdicts
from agentprm.agents.policy_agent import PolicyAgent
from agentprm.envs.registry import list_games
from agentprm.envs.runner import EnvPool, PolicyInput, run_episodes
from agentprm.models.policy import Policy

GAMMA = 0.95


@pytest.fixture(scope="module")
def game(alfworld_root):
    root, _ = alfworld_root
    return list_games("alfworld", "seen", root=str(root))[0]


@pytest.fixture(scope="module")
def expert_episode(game):
    """The handcoded expert's winning episode of ``game`` (its states carry the whole history)."""
    with EnvPool("alfworld", 1, env_options={"expert": "handcoded"}) as pool:
        [result] = run_episodes(pool, [game], lambda batch: [item.expert_action for item in batch], max_steps=30,
                                need_expert=True)
    assert result.won and result.steps >= 3
    return result


@pytest.fixture(scope="module")
def pool():
    with EnvPool("alfworld", 4) as shared:
        yield shared


class Scripted:
    """Continues the expert's actions while the history is the expert's prefix, else "look" (never wins)."""

    def __init__(self, actions):
        self.actions = actions

    def __call__(self, batch):
        out = []
        for item in batch:
            on_path = [a for _, a in item.history] == self.actions[: item.step]
            out.append(self.actions[item.step] if on_path and item.step < len(self.actions) else "look")
        return out


def _state(result, t, slot=0):
    observation = result.transitions[t][0]
    history = [(obs.text, action) for obs, action, _ in result.transitions[:t]]
    return PolicyInput(slot, result.game, observation, history, t)


def test_q_is_the_discounted_return_of_the_continuations_by_hand(expert_episode, pool):
    actions = [a for _, a, _ in expert_episode.transitions]
    steps = len(actions)
    q = MonteCarloQ(pool, Scripted(actions), continuations=2, max_steps=30, gamma=GAMMA)
    t = 1
    state = _state(expert_episode, t)
    other = next(a for a in state.observation.admissible_actions if a != actions[t])
    values = q.estimate([state, state], [actions[t], other])
    # the expert's action, then the expert's path: won at step `steps`, so gamma^(steps - 1 - t); the other: never
    assert values == pytest.approx([GAMMA ** (steps - 1 - t), 0.0])
    assert q.branches == 4
    assert q.continuation_steps == 2 * (steps - t) + 2 * (30 - t)


def test_a_state_without_its_whole_history_cannot_be_replayed(expert_episode, pool):
    state = _state(expert_episode, 2)
    state.history = state.history[1:]
    with pytest.raises(ValueError, match="whole episode"):
        MonteCarloQ(pool, Scripted([]), continuations=1).estimate([state], ["look"])
    with pytest.raises(ValueError, match="continuations"):
        MonteCarloQ(pool, Scripted([]), continuations=0)


def test_the_agent_takes_the_action_of_highest_q_whenever_it_is_a_candidate(tiny_model, expert_episode, pool):
    policy = Policy.from_pretrained(tiny_model)
    actions = [a for _, a, _ in expert_episode.transitions]
    q = MonteCarloQ(pool, Scripted(actions), continuations=1, max_steps=12, gamma=GAMMA)
    agent = LookaheadBestOfN(policy, None, n=8, temperature=2.0, seed=3, q=q)
    checked = []

    def watch(batch):
        chosen = agent(batch)
        for item, action in zip(batch, chosen):
            offered = {c.action for c in agent.last_choices[item.slot].candidates}
            on_path = [a for _, a in item.history] == actions[: item.step]
            if on_path and actions[item.step] in offered and len(offered) > 1:
                assert action == actions[item.step]  # Q > 0 only there: every other candidate scores 0
                checked.append(item.step)
        return chosen

    with EnvPool("alfworld", 1) as outer:
        run_episodes(outer, [expert_episode.game], watch, max_steps=12)
    assert checked and agent.estimates >= 2 and q.branches == agent.estimates


def test_one_candidate_needs_no_estimate_and_acts_as_the_policy(tiny_model, game, pool):
    policy = Policy.from_pretrained(tiny_model)
    q = MonteCarloQ(pool, Scripted([]), continuations=1)
    agent = LookaheadBestOfN(policy, None, n=1, temperature=1.0, seed=5, q=q)
    with EnvPool("alfworld", 1) as outer:
        [mine] = run_episodes(outer, [game], agent, max_steps=4)
        [plain] = run_episodes(outer, [game], PolicyAgent(policy, temperature=1.0, seed=5), max_steps=4)
    assert [a for _, a, _ in mine.transitions] == [a for _, a, _ in plain.transitions]
    assert agent.estimates == 0 and q.branches == 0
    with pytest.raises(ValueError, match="MonteCarloQ"):
        LookaheadBestOfN(policy, None, n=4)


def test_verdicts_by_hand():
    verdicts = Verdicts()
    verdicts.add([0.5, 0.0, 0.25], 2)  # contested, not the best: regret 0.25
    verdicts.add([0.0, 0.0], 1)  # all equal: not contested, no regret
    verdicts.add([0.3, 0.3, 0.1], 1)  # a tie for the best counts as agreement
    assert verdicts.summary() == {"decisions": 3, "contested": 2, "agreement": 0.5, "regret": pytest.approx(0.25 / 3)}


class Flat:
    """A PRM that scores every response alike: its choice is the policy's (ties go to the higher log pi)."""

    def score(self, prompts, responses):
        return [0.5] * len(responses)


def test_referees_are_graded_at_every_decision_and_a_flat_prm_chooses_as_the_policy(tiny_model, expert_episode,
                                                                                      pool):
    policy = Policy.from_pretrained(tiny_model)
    actions = [a for _, a, _ in expert_episode.transitions]
    q = MonteCarloQ(pool, Scripted(actions), continuations=1, max_steps=10, gamma=GAMMA)
    agent = LookaheadBestOfN(policy, None, n=8, temperature=2.0, seed=3, q=q, referees={"flat": Flat()})
    decisions = []

    def watch(batch):
        chosen = agent(batch)
        decisions.extend(len({c.action for c in agent.last_choices[item.slot].candidates}) > 1 for item in batch)
        return chosen

    with EnvPool("alfworld", 1) as outer:
        run_episodes(outer, [expert_episode.game], watch, max_steps=10)
    summary = {name: v.summary() for name, v in agent.verdicts.items()}
    assert summary["policy"]["decisions"] == sum(decisions) > 0
    assert summary["flat"] == summary["policy"]
    with pytest.raises(ValueError, match="'policy'"):
        LookaheadBestOfN(policy, None, n=2, q=q, referees={"policy": Flat()})


def test_navigation_left_to_the_policy_is_not_estimated_and_goes_to_its_most_likely_place(tiny_model, expert_episode,
                                                                                          pool):
    from agentprm.agents.best_of_n import Candidate, select_best

    policy = Policy.from_pretrained(tiny_model)
    actions = [a for _, a, _ in expert_episode.transitions]
    state = _state(expert_episode, 0)
    admissible = state.observation.admissible_actions
    places = [a for a in admissible if a.startswith("go to ")]
    assert len(places) >= 2 and not actions[0].startswith("go to ")  # the expert looks first
    q = MonteCarloQ(pool, Scripted(actions), continuations=1, max_steps=30, gamma=GAMMA)
    agent = LookaheadBestOfN(policy, None, n=2, q=q, policy_navigates=True)
    walks = [Candidate(places[0], places[0], -2.0), Candidate(places[1], places[1], -0.5)]
    mixed = [Candidate(places[0], places[0], -0.1), Candidate(actions[0], actions[0], -3.0)]
    agent._score([None, None], ["", ""], [state, _state(expert_episode, 0, slot=1)], [walks, mixed])
    assert [c.score for c in walks] == [0.0, 0.0] and select_best(walks, admissible) == 1  # the policy's pick
    assert mixed[1].score > 0 and mixed[0].score == 0.0  # estimated: the expert's move wins, whatever log pi says
    assert agent.navigation_decisions == 1 and agent.estimates == 2 and q.branches == 2
