"""Ground-truth Q in the real engine: state draws, Q and its halves by hand, a small real estimate, grading."""

import pytest

from agentprm.algorithms.action_ranking import grade_ranker
from agentprm.envs.base import Game, Observation, Step
from agentprm.envs.registry import list_games
from agentprm.envs.runner import EpisodeResult
from agentprm.models.policy import Policy
from agentprm.models.prompts import PromptConfig
from agentprm.pipeline.oracle import (
    OracleSettings,
    draw_states,
    estimate_ground_truth,
    graded_states,
    load_states,
    save_states,
    score_states,
)


def _episode(task_type, steps, admissible=("a", "b")):
    game = Game("alfworld", f"{task_type}-g", "", "valid_seen", task_type)
    obs = Observation("t", "o", list(admissible))
    return EpisodeResult(game, [(obs, "a", Step(obs, 0.0, False, False)) for _ in range(steps)], False, steps)


def test_states_are_spread_over_task_types_and_thirds_of_the_budget():
    results = [_episode("pick", 30), _episode("look", 30), _episode("heat", 30, admissible=("a",))]
    picks = draw_states(results, 6, max_steps=30, seed=0)
    assert len(picks) == len(set(picks)) == 6
    assert {e for e, _ in picks} == {0, 1}  # the one-action episode has nothing to rank
    assert {(e, t // 10) for e, t in picks} == {(e, third) for e in (0, 1) for third in range(3)}
    assert draw_states(results, 6, 30, seed=0) == picks


def _row(returns, logprobs, expert=None):
    return {"game_id": "g", "task_type": "pick", "step": 0, "episode_won": False, "actions": ["a", "b"],
            "returns": returns, "expert_action": expert, "policy_logprobs": logprobs,
            "state": {"task": "t", "observation": "o", "admissible_actions": ["a", "b", "c"], "history": [],
                      "task_type": "pick"}}


def test_q_and_its_halves_from_the_continuations_by_hand(tmp_path):
    data = {"format": 1, "states": [_row([[1.0, 0.0, 0.9, 0.0], [0.0, 0.0, 0.0, 0.0]],
                                         {"a": -2.0, "b": -1.0, "c": -3.0}, expert="a")]}
    save_states(data, tmp_path / "s.json")
    [state] = graded_states(load_states(tmp_path / "s.json"))
    assert state.q == pytest.approx([0.475, 0.0])
    assert state.q_halves == (pytest.approx([0.5, 0.0]), pytest.approx([0.45, 0.0]))
    report = grade_ranker([state], "policy", delta=0.1, resamples=20)
    assert report["pairwise_accuracy"]["value"] == 0.0  # the policy prefers b, Q prefers a
    assert report["expert_mean_rank"]["value"] == 2.0


def test_a_corrupt_states_file_is_reported(tmp_path):
    (tmp_path / "bad.json").write_text('{"format": 1, "sta')
    with pytest.raises(ValueError, match="not a readable oracle states file"):
        load_states(tmp_path / "bad.json")


def test_a_small_real_estimate_replays_states_and_grades_a_prm(sft_model, alfworld_root, tmp_path):
    from agentprm.models.prm import ProcessRewardModel

    root, _ = alfworld_root
    games = list_games("alfworld", "seen", root=str(root))[:3]
    policy = Policy.from_pretrained(sft_model)
    settings = OracleSettings(states=4, actions=2, continuations=2, temperature=1.0, max_steps=6, num_envs=8)
    data = estimate_ground_truth("alfworld", games, policy, PromptConfig(), settings, log=lambda *_: None)
    assert len(data["states"]) == 4
    for row in data["states"]:
        assert len(row["actions"]) == 2 and all(len(r) == 2 for r in row["returns"])
        assert all(0.0 <= x <= 1.0 for r in row["returns"] for x in r)
        assert set(row["actions"]) <= set(row["state"]["admissible_actions"])
        top = sorted(row["policy_logprobs"].values(), reverse=True)[:2]
        assert sorted((row["policy_logprobs"][a] for a in row["actions"]), reverse=True) == top
        assert row["expert_action"] is None or isinstance(row["expert_action"], str)
    assert any(row["expert_action"] for row in data["states"])  # the handcoded expert watched
    states = graded_states(data)
    prm = ProcessRewardModel.from_policy(sft_model)
    score_states(data, states, "Q", prm, prm.tokenizer, PromptConfig())
    assert all(set(s.scores["Q"]) == set(s.admissible) for s in states)
    assert all(v == pytest.approx(0.5) for s in states for v in s.scores["Q"].values())  # zero head
    assert grade_ranker(states, "Q", delta=0.0, resamples=20)["pairwise_accuracy"]["value"] == 0.5  # all ties
