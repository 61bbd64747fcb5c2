"""InversePRM (Eq. 9): transitions, class balance and the loss against hand-computed values; no outcome read."""

import math

import pytest
import torch

from agentprm.algorithms.inverse_prm import (
    balanced_accuracy,
    class_weights,
    episode_transitions,
    expert_transitions,
    inverse_prm_loss,
    logit_differences,
    outcome_free,
)
from agentprm.algorithms.sft_data import in_validation
from agentprm.data import StepRecord, TrajectoryRecord
from agentprm.models.prompts import PromptConfig, format_response, render_prompt


def record(game: str, pairs, won: bool, response=lambda a: f"ACTION: {a}") -> TrajectoryRecord:
    steps = [StepRecord(observation=o, admissible_actions=[a, "look"], response=response(a), reason="", action=a,
                        admissible=True, reward=0.0, done=False, won=False) for o, a in pairs]
    steps[-1].done, steps[-1].won, steps[-1].reward = won, won, float(won)
    return TrajectoryRecord(env="alfworld", env_version="t", game_id=game, split="train", task="put a mug",
                            task_type="pick_and_place_simple", policy_id="pi_0", seed=0, steps=steps, won=won,
                            total_reward=float(won), final_observation="end")


def test_transitions_chain_states_and_end_without_a_next_state():
    found = episode_transitions(outcome_free(record("g", [("o0", "a0"), ("o1", "a1"), ("o2", "a2")], True)), 1,
                                val_fraction=0.0)
    assert [(t.state.observation, t.response) for t in found] == [("o0", "ACTION: a0"), ("o1", "ACTION: a1"),
                                                                  ("o2", "ACTION: a2")]
    assert [t.next_state.observation if t.next_state else None for t in found] == ["o1", "o2", None]
    assert found[1].next_state.history == [("o0", "a0"), ("o1", "a1")] and found[1].state.history == [("o0", "a0")]
    assert {(t.label, t.split, t.iteration, t.next_response) for t in found} == {(1, "train", 0, "")}


def test_the_outcome_is_never_read():
    won = record("g", [("o0", "a0"), ("o1", "a1")], True)
    lost = record("g", [("o0", "a0"), ("o1", "a1")], False)
    assert outcome_free(won) == outcome_free(lost)  # nothing of the outcome survives the view
    fields = set(vars(outcome_free(won).steps[0])) | set(vars(outcome_free(won)))
    assert not {"won", "reward", "done", "total_reward", "meta", "extras"} & fields
    assert episode_transitions(outcome_free(won), 0) == episode_transitions(outcome_free(lost), 0)


def test_split_is_by_game():
    games = [f"game_{i}" for i in range(60)]
    for game in games:
        found = episode_transitions(outcome_free(record(game, [("o", "a"), ("p", "b")], False)), 0, 0.3)
        assert {t.split for t in found} == {"val" if in_validation(game, 0.3) else "train"}
    with pytest.raises(ValueError, match="label"):
        episode_transitions(outcome_free(record("g", [("o", "a")], True)), 2)


@pytest.mark.parametrize("template", ["reason_action", "action_only"])
def test_expert_and_learner_transitions_with_the_same_action_give_the_same_prm_input(template):
    config = PromptConfig(template=template)
    pairs = [("o0", "go to shelf 1"), ("o1", "take mug 1 from shelf 1")]
    demo = record("g", pairs, True, response=lambda a: a)  # demos store the bare command (pipeline.episodes)
    rollout = record("g", pairs, True, response=lambda a: format_response(a, "", config))  # as PolicyAgent samples
    expert, learner = expert_transitions([demo], config, 0.0), episode_transitions(outcome_free(rollout), 0, 0.0)
    assert [t.response for t in expert] == [t.response for t in learner] == (
        ["ACTION: go to shelf 1", "ACTION: take mug 1 from shelf 1"] if template == "reason_action"
        else ["go to shelf 1", "take mug 1 from shelf 1"])
    for e, l in zip(expert, learner):
        assert render_prompt(e.state, config) + e.response == render_prompt(l.state, config) + l.response
        assert (e.next_state, e.label, l.label) == (l.next_state, 1, 0)


def test_expert_transitions_come_from_won_demonstrations_only():
    won, failed = record("won", [("o0", "a0"), ("o1", "a1")], True), record("failed", [("o0", "a0")], False)
    found = expert_transitions([failed, won], PromptConfig(), 0.0)
    assert [(t.game_id, t.response, t.label) for t in found] == [("won", "a0", 1), ("won", "a1", 1)]
    everything = expert_transitions([failed, won], PromptConfig(), 0.0, only_successful=False)  # SFT's switch
    assert [t.game_id for t in everything] == ["failed", "won", "won"]


def test_class_weights_give_each_class_half_the_weight():
    assert class_weights([1, 0, 0, 0]) == [2.0, 2 / 3, 2 / 3, 2 / 3]  # N / (2 N_c): 4/2, 4/6
    assert sum(w for w, y in zip(class_weights([1, 0, 0, 0]), [1, 0, 0, 0]) if y) == 2.0
    assert class_weights([1, 1]) == [1.0, 1.0] and class_weights([]) == []


def test_loss_by_hand():
    # d = z - gamma * has_next * z_next: [1 - 0.5 * 2, 0.5 - 0 (episode ended), -1 - 0.5 * -2] = [0, 0.5, 0]
    z, z_next = torch.tensor([1.0, 0.5, -1.0]), torch.tensor([2.0, 7.0, -2.0])
    has_next, labels = torch.tensor([True, False, True]), torch.tensor([1, 1, 0])
    weights = torch.tensor(class_weights([1, 1, 0]))  # [0.75, 0.75, 1.5]
    loss = inverse_prm_loss(z, z_next, has_next, labels, weights, gamma=0.5)
    by_hand = (0.75 * math.log(2) + 0.75 * math.log(1 + math.exp(-0.5)) + 1.5 * math.log(2)) / 3
    assert loss.item() == pytest.approx(by_hand, abs=1e-6)
    assert logit_differences([1.0, 0.5, -1.0], [2.0, None, -2.0], 0.5) == [0.0, 0.5, 0.0]


def test_loss_gradient_pushes_expert_up_and_its_successor_down():
    z = torch.tensor([0.0], requires_grad=True)
    z_next = torch.tensor([0.0], requires_grad=True)
    inverse_prm_loss(z, z_next, torch.tensor([True]), torch.tensor([1]), torch.tensor([1.0]), 0.9).backward()
    assert z.grad.item() == pytest.approx(-0.5) and z_next.grad.item() == pytest.approx(0.45)


def test_balanced_accuracy():
    assert balanced_accuracy([1.0, -1.0, 2.0, 3.0], [1, 1, 0, 0]) == pytest.approx(0.25)  # (1/2 + 0/2) / 2
    assert math.isnan(balanced_accuracy([1.0], [1]))
