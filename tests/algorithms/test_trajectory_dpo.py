"""Trajectory-level preference optimisation: pairing by hand, and a few steps that prefer the won episodes."""

import dataclasses

import pytest
import torch

from agentprm.algorithms.trajectory_dpo import (
    TrajectoryDPOConfig,
    _episode_rows,
    _trajectory_logps,
    train_trajectory_dpo,
    trajectory_pairs,
)
from agentprm.metrics import MetricsLogger, read_metrics
from agentprm.models.policy import Policy
from agentprm.models.prompts import PromptConfig

PROMPT = PromptConfig(use_chat_template="never")


@dataclasses.dataclass
class Ep:
    game_id: str
    won: bool


def test_pairs_match_won_and_failed_episodes_of_the_same_game_once():
    records = [Ep("a", True), Ep("a", False), Ep("b", True), Ep("a", False), Ep("b", True), Ep("c", False),
               Ep("a", True), Ep("a", True)]
    pairs = trajectory_pairs(records, seed=0)
    # game a: won {0, 6, 7}, failed {1, 3} -> 2 pairs; game b: no failure; game c: no win
    assert len(pairs) == 2
    assert all(records[w].won and not records[lost].won and records[w].game_id == records[lost].game_id
               for w, lost in pairs)
    assert len({i for pair in pairs for i in pair}) == 4  # no episode twice
    assert trajectory_pairs(records, seed=0) == pairs and trajectory_pairs([], 0) == []


def _failed_copy(record):
    """The same game played badly: every response replaced by "look" (and lost)."""
    steps = [dataclasses.replace(s, action="look", response="look") for s in record.steps]
    return dataclasses.replace(record, steps=steps, won=False)


def test_a_few_steps_raise_the_won_trajectories_against_the_failed_ones(sft_model, alfworld_demos, tmp_path):
    from agentprm.data import read_trajectories

    won = list(read_trajectories(alfworld_demos))[:4]
    records = won + [_failed_copy(r) for r in won]
    reset = dataclasses.replace(records[0], steps=[dataclasses.replace(records[0].steps[0],
                                                                       extras={"reset": True})]
                                + records[0].steps[1:])
    policy = Policy.from_pretrained(sft_model)
    assert len(_episode_rows(reset, policy, PROMPT)) == len(records[0].steps) - 1  # replayed steps left out

    def margin(model_path):
        p = Policy.from_pretrained(model_path)
        with torch.no_grad():
            logps = _trajectory_logps(p.model, [_episode_rows(r, p, PROMPT) for r in records], p.pad_id)
        return (logps[:4] - logps[4:]).mean().item()

    config = TrajectoryDPOConfig(steps=6, pairs_per_step=2, lr=1e-3, beta=0.1, progress=False)
    with MetricsLogger(tmp_path / "metrics.jsonl", "trajectory_dpo") as metrics:
        summary = train_trajectory_dpo(config, sft_model, records, tmp_path / "out", PROMPT, metrics)
    assert summary["pairs"] == 4 and summary["steps"] == 6 and summary["won"] == 4
    assert margin(tmp_path / "out" / "model") > margin(sft_model) + 1.0
    losses = [m["value"] for m in read_metrics(tmp_path / "metrics.jsonl", "trajectory_dpo", "loss")]
    assert len(losses) == 6 and losses[0] == pytest.approx(torch.nn.functional.softplus(torch.tensor(0.0)).item(),
                                                           abs=1e-4)  # -log sigmoid(0) at the reference


def test_without_pairs_the_policy_is_saved_unchanged(sft_model, alfworld_demos, tmp_path):
    from agentprm.data import read_trajectories

    records = list(read_trajectories(alfworld_demos))[:2]  # all won: no pair
    with MetricsLogger(tmp_path / "metrics.jsonl", "trajectory_dpo") as metrics:
        summary = train_trajectory_dpo(TrajectoryDPOConfig(progress=False), sft_model, records, tmp_path / "o",
                                       PROMPT, metrics)
    assert summary["pairs"] == 0 and summary["steps"] == 0
    before = Policy.from_pretrained(sft_model).model.state_dict()
    after = Policy.from_pretrained(tmp_path / "o" / "model").model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
