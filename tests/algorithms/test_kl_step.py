"""The exact KL-regularised policy step: pi* by hand, its limits, its optimality, and a tiny run that fits it."""

import json
import math

import pytest
import torch

from agentprm.algorithms.kl_step import (
    KLState,
    KLStepConfig,
    kl_objective,
    kl_step_loop,
    kl_target,
    mc_states,
    prm_states,
    target_cross_entropy,
    train_kl_policy,
)
from agentprm.config import ConfigError, load_config
from agentprm.metrics import MetricsLogger, read_metrics
from agentprm.models.policy import Policy
from agentprm.models.prompts import PromptConfig, PromptState, render_prompt

PROMPT_CONFIG = PromptConfig(use_chat_template="never")


def test_kl_target_by_hand():
    # pi_prev = (1/2, 1/4, 1/4), Q = (0, 1, 0), beta = 1: pi* proportional to (1/2, e/4, 1/4)
    prev = torch.tensor([0.5, 0.25, 0.25]).log()
    star = kl_target(prev, torch.tensor([0.0, 1.0, 0.0]), 1.0)
    z = 0.5 + math.e / 4 + 0.25
    assert star.tolist() == pytest.approx([0.5 / z, math.e / 4 / z, 0.25 / z])
    # an unnormalised log pi_prev gives the same target
    assert kl_target(prev + 3.0, torch.tensor([0.0, 1.0, 0.0]), 1.0).tolist() == pytest.approx(star.tolist())


def test_kl_target_limits():
    prev = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64).log()
    q = torch.tensor([0.2, 0.9, 0.9], dtype=torch.float64)
    # beta -> infinity leaves pi_prev; beta = inf exactly is pi_prev
    assert kl_target(prev, q, 1e9).tolist() == pytest.approx([0.6, 0.3, 0.1], abs=1e-6)
    assert kl_target(prev, q, math.inf).tolist() == pytest.approx([0.6, 0.3, 0.1])
    # beta -> 0: the argmax actions only, in pi_prev's proportions among the tied maxima
    assert kl_target(prev, q, 1e-4).tolist() == pytest.approx([0.0, 0.75, 0.25], abs=1e-6)
    with pytest.raises(ValueError):
        kl_target(prev, q, 0.0)


def test_kl_target_maximises_the_objective():
    prev = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.1, 0.7, 0.4])
    beta = 0.3
    star = kl_target(prev.log(), q, beta)
    best = kl_objective(star, prev, q, beta)
    # the value at the optimum is beta log Z
    assert float(best) == pytest.approx(beta * math.log(float((prev * (q / beta).exp()).sum())))
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        other = torch.rand(3, generator=generator)
        other = other / other.sum()
        assert float(kl_objective(other, prev, q, beta)) <= float(best) + 1e-9
    assert float(kl_objective(prev, prev, q, beta)) == pytest.approx(float((prev * q).sum()))  # J(pi_prev) = E[Q]


def test_target_cross_entropy_is_minimal_at_the_target():
    star = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    entropy = -float((star * star.log()).sum())
    assert float(target_cross_entropy(star.log() + 7.0, star)) == pytest.approx(entropy)
    logp = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    target_cross_entropy(logp, star).backward()
    # d/dlogp = softmax(logp) - target = 1/3 - target
    assert logp.grad.tolist() == pytest.approx([1 / 3 - 0.2, 1 / 3 - 0.5, 1 / 3 - 0.3])


def test_config_checks_and_loading():
    config = load_config(KLStepConfig, {"beta": 0.5, "q_source": "mc"})
    assert config.beta == 0.5 and config.q_source == "mc"
    for bad in ({"beta": 0}, {"lr": -1}, {"steps": 0}, {"rows_per_forward": 0}, {"max_grad_norm": -1}):
        with pytest.raises((ValueError, ConfigError)):
            load_config(KLStepConfig, bad).validate()


def test_mc_states_group_sibling_actions_and_keep_only_contrasts():
    from agentprm.algorithms.mc_targets import QTarget

    def target(state_id, action, q, split="train"):
        state = {"task": "t", "observation": "o", "admissible_actions": ["a", "b", "c"], "history": [],
                 "task_type": "x"}
        return QTarget(game_id="g", split=split, episode_index=0, step_index=0, task="t", task_type="x", state=state,
                       response=action, action=action, q=q, visits=1, steps_remaining=1, key=f"{state_id}{action}",
                       state_id=state_id)

    found = mc_states([target("s1", "a", 0.9), target("s1", "b", 0.1), target("s2", "a", 0.5),
                       target("s3", "a", 1.0, "val"), target("s3", "b", 0.0, "val")])
    assert len(found) == 1
    assert found[0].actions == ["a", "b"] and found[0].q == [0.9, 0.1]
    with pytest.raises(ValueError):
        KLState(found[0].state, ["a"], [0.1, 0.2])


class GoToScorer:
    """A stand-in PRM: Q = 1 for "go to" actions, 0 otherwise."""

    def score(self, prompts, responses):
        return [1.0 if r.startswith("go to") else 0.0 for r in responses]


def _states(demos_path, count):
    from agentprm.data import read_trajectories

    states = [PromptState.from_trajectory(r, i) for r in read_trajectories(demos_path) for i in range(len(r.steps))]
    return [s for s in states if any(a.startswith("go to") for a in s.admissible_actions)][:count]


def _distributions(policy, states):
    prompts = [render_prompt(s.state, PROMPT_CONFIG, policy.tokenizer) for s in states]
    return [torch.tensor(lps, dtype=torch.float64).softmax(0)
            for lps in policy.score_candidates(prompts, [s.actions for s in states])]


def test_the_step_moves_the_policy_to_the_closed_form_target(sft_model, alfworld_demos, tmp_path):
    states = prm_states(_states(alfworld_demos, 6))
    policy, reference = Policy.from_pretrained(sft_model), Policy.from_pretrained(sft_model)
    before_reference = {k: v.clone() for k, v in reference.model.state_dict().items()}
    prev = _distributions(reference, states)
    beta = 0.5
    q = [torch.tensor([1.0 if a.startswith("go to") else 0.0 for a in s.actions], dtype=torch.float64)
         for s in states]
    stars = [kl_target(p.log(), v, beta) for p, v in zip(prev, q)]
    gap_before = sum(float((s * (s.log() - p.log())).sum()) for s, p in zip(stars, prev))
    config = KLStepConfig(beta=beta, lr=3e-3, steps=30, states_per_step=6, rows_per_forward=40, progress=False,
                          log_every=1)
    with MetricsLogger(tmp_path / "metrics.jsonl", "kl") as metrics:
        summary = kl_step_loop(config, policy, reference, GoToScorer(), states, PROMPT_CONFIG, metrics)
    after = _distributions(policy, states)
    gap_after = sum(float((s * (s.log() - a.log())).sum()) for s, a in zip(stars, after))
    assert gap_after < 0.3 * gap_before, (gap_before, gap_after)  # KL(pi* || pi_theta) shrinks
    assert all(torch.equal(v, before_reference[k]) for k, v in reference.model.state_dict().items())
    assert summary["steps"] == 30 and summary["states"] == len(states)

    def series(name):
        return [m["value"] for m in read_metrics(tmp_path / "metrics.jsonl", "kl", name)]

    assert series("kl_to_reference")[0] == pytest.approx(0.0, abs=1e-6)  # step 1: pi_theta == pi_prev
    assert series("q_gain")[0] == pytest.approx(0.0, abs=1e-6)
    assert series("kl_to_target")[0] == pytest.approx(gap_before / len(states), rel=1e-3)
    assert series("target_q_gain")[0] > 0 and series("q_gain")[-1] > 0.5 * series("target_q_gain")[-1]
    assert series("objective_gain")[-1] > 0


def test_train_kl_policy_with_mc_values_saves_a_reloadable_model(sft_model, alfworld_demos, tmp_path):
    base = _states(alfworld_demos, 3)
    states = [KLState(s, list(dict.fromkeys(s.admissible_actions))[:2], [1.0, 0.0]) for s in base]
    config = KLStepConfig(beta=0.2, lr=1e-3, steps=2, states_per_step=2, progress=False, q_source="mc")
    summary = train_kl_policy(config, sft_model, None, states, tmp_path / "out", PROMPT_CONFIG)
    assert summary["steps"] == 2
    reloaded = Policy.from_pretrained(tmp_path / "out" / "model")
    assert reloaded.score_candidates(["x"], [["look"]])[0][0] < 0
    card = json.loads((tmp_path / "out" / "model" / "agentprm_kl.json").read_text())
    assert card["policy_step"] == "kl" and card["beta"] == 0.2
    assert json.loads((tmp_path / "out" / "kl_summary.json").read_text())["model"] == "model"
    with pytest.raises(ValueError, match="need a PRM"):
        train_kl_policy(config, sft_model, None, prm_states(base), tmp_path / "out2", PROMPT_CONFIG)
