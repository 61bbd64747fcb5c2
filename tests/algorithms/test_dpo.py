"""Online DPO: exact pure pieces (loss, pair selection, log-probs) and a tiny run against a stand-in PRM."""

import json
import math

import pytest
import torch

from agentprm.algorithms.dpo import (
    INVALID_SCORE,
    ScoredResponse,
    dpo_loss,
    sampled_kl_estimate,
    select_dpo_pairs,
    sequence_logprobs_with_grad,
)
from agentprm.algorithms.dpo_trainer import DPOConfig, online_dpo_loop, score_samples, train_online_dpo
from agentprm.config import ConfigError, load_config
from agentprm.metrics import MetricsLogger, read_metrics
from agentprm.models.policy import Policy, Sample, encode_prompts
from agentprm.models.prompts import PromptConfig, PromptState, render_prompt

PROMPT_CONFIG = PromptConfig(use_chat_template="never")


# ------------------------------------------------------------------------------------------------ dpo_loss


def test_dpo_loss_by_hand():
    # pair 1: r_c = 0.1 * (-1 - -2) = 0.1, r_r = 0.1 * (-3 - -2) = -0.1, h = 0.2
    # pair 2: r_c = 0.1 * (-5 - -4) = -0.1, r_r = 0.1 * (-2 - -4) = 0.2, h = -0.3
    loss, stats = dpo_loss(torch.tensor([-1.0, -5.0]), torch.tensor([-3.0, -2.0]),
                           torch.tensor([-2.0, -4.0]), torch.tensor([-2.0, -4.0]), beta=0.1)
    expected = (math.log(1 + math.exp(-0.2)) + math.log(1 + math.exp(0.3))) / 2  # -log sigmoid(h) = log(1+e^-h)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["reward_margin"] == pytest.approx(-0.05, abs=1e-6)
    assert stats["accuracy"] == 0.5
    assert stats["chosen_reward"] == pytest.approx(0.0, abs=1e-6)
    assert stats["rejected_reward"] == pytest.approx(0.05, abs=1e-6)


def test_dpo_loss_at_the_reference_and_its_gradient():
    # policy == reference: h = 0, L = log 2, dL/dlogp_c = -beta * sigmoid(-h) = -beta / 2, dL/dlogp_r = +beta / 2
    chosen = torch.tensor([-4.0], requires_grad=True)
    rejected = torch.tensor([-6.0], requires_grad=True)
    loss, stats = dpo_loss(chosen, rejected, torch.tensor([-4.0]), torch.tensor([-6.0]), beta=0.03)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert stats["accuracy"] == 0.0 and stats["reward_margin"] == 0.0  # accuracy counts h > 0 strictly
    assert chosen.grad.item() == pytest.approx(-0.015, abs=1e-7)
    assert rejected.grad.item() == pytest.approx(0.015, abs=1e-7)
    with pytest.raises(ValueError):
        dpo_loss(torch.tensor([]), torch.tensor([]), torch.tensor([]), torch.tensor([]), beta=0.1)


def test_sampled_kl_estimate():
    assert sampled_kl_estimate([-1.0, -2.0], [-1.5, -1.0]) == pytest.approx((0.5 - 1.0) / 2)
    assert sampled_kl_estimate([-3.0], [-3.0]) == 0.0
    assert math.isnan(sampled_kl_estimate([], []))


# ------------------------------------------------------------------------------------------------ pair selection


def _r(ids, score, valid=True):
    return ScoredResponse(text=" ".join(map(str, ids)), token_ids=ids, score=score, valid=valid)


def test_select_dpo_pairs_exact():
    states = [
        [_r([1], 0.2), _r([2], 0.9), _r([3], 0.5)],  # 0: best 1, worst 0
        [_r([4, 9], 0.6), _r([4, 9], 0.6)],  # 1: identical responses: skipped
        [_r([1], 0.5), _r([2], 0.5)],  # 2: tied scores: skipped
        [_r([5], 0.99, valid=False), _r([6], 0.1)],  # 3: the invalid one is rejected whatever its PRM score
        [_r([5], 0.3, valid=False), _r([6], 0.8, valid=False)],  # 4: all invalid: a tie at -1, skipped
        [_r([1], 0.7), _r([2], 0.7), _r([3], 0.1), _r([4], 0.1)],  # 5: first sampled wins ties: (0, 2)
        [_r([7], 0.3), _r([7], 0.3), _r([8], 0.8)],  # 6: duplicates collapse to the first: (2, 0)
        [],  # 7: nothing sampled
        [_r([1], -5.0), _r([2], 0.0, valid=False)],  # 8: a valid score below -1 still beats an invalid one
        [_r([3], 0.4)],  # 9: a single response
    ]
    pairs = select_dpo_pairs(states)
    assert [(p.state_index, p.chosen_index, p.rejected_index) for p in pairs] == [
        (0, 1, 0), (3, 1, 0), (5, 0, 2), (6, 2, 0), (8, 0, 1)]
    assert pairs[1].rejected.score == INVALID_SCORE and pairs[1].chosen.token_ids == (6,)
    assert pairs[0].chosen.score == 0.9 and pairs[0].rejected.score == 0.2


def test_min_gap_skips_pairs_a_prm_barely_separates():
    close = [_r((1,), 0.50), _r((2,), 0.52)]
    apart = [_r((1,), 0.2), _r((2,), 0.9)]
    invalid = [_r((1,), 0.0, valid=False), _r((2,), 0.01)]
    assert len(select_dpo_pairs([close, apart, invalid])) == 3
    pairs = select_dpo_pairs([close, apart, invalid], min_gap=0.05)
    # the close pair is dropped; a valid response always beats an invalid one, whatever the gap
    assert [p.state_index for p in pairs] == [1, 2]
    assert select_dpo_pairs([close], min_gap=0.02)[0].chosen.score == 0.52  # a gap equal to min_gap is kept


def test_invalid_response_scores_the_constant():
    assert ScoredResponse("x", [1], 0.7, valid=False).score == INVALID_SCORE == -1.0
    assert ScoredResponse("x", [1], 0.7).token_ids == (1,)


class GoToScorer:
    """Stand-in PRM: 1 for any response starting with "go to", else 0; records what it was asked."""

    def __init__(self):
        self.calls = []

    def score(self, prompts, responses):
        self.calls.append(list(responses))
        return [1.0 if r.startswith("go to") else 0.0 for r in responses]


def test_score_samples_marks_invalid_and_scores_each_distinct_valid_text_once():
    state = PromptState("task", "obs", ["go to desk 1", "look"])
    samples = [[Sample("go to desk 1", [5, 2], -1.0, True), Sample("look", [6, 2], -2.0, True),
                Sample("go to desk 1", [5, 2], -1.0, True), Sample("go to", [5], -0.5, False),
                Sample("jump", [9, 2], -3.0, True)]]
    scorer = GoToScorer()
    scored = score_samples(scorer, [state], ["p"], samples, "action_only")[0]
    assert scorer.calls == [["go to desk 1", "look"]]
    assert [(r.score, r.valid) for r in scored] == [(1.0, True), (0.0, True), (1.0, True), (-1.0, False),
                                                    (-1.0, False)]
    assert scored[0].logprob == -1.0 and scored[3].token_ids == (5,)


# ------------------------------------------------------------------------------------------------ config


def test_config_defaults_follow_the_paper_and_bad_values_fail():
    config = load_config(DPOConfig, {})
    assert (config.beta, config.samples_per_state, config.temperature, config.steps, config.max_new_tokens) == (
        0.03, 2, 0.7, 400, 64)
    for bad in ({"samples_per_state": 1}, {"beta": 0.0}, {"mode": "greedy"}, {"steps": 0}, {"temperature": 0}):
        with pytest.raises(ConfigError):
            load_config(DPOConfig, bad)


# ------------------------------------------------------------------------------------------------ with a model


def _states(demos_path, count=None):
    from agentprm.data import read_trajectories

    states = [PromptState.from_trajectory(r, i) for r in read_trajectories(demos_path) for i in range(len(r.steps))]
    return states[:count] if count else states


def test_sequence_logprobs_match_policy_scoring_and_sampling(sft_model, alfworld_demos):
    policy = Policy.from_pretrained(sft_model)
    states = _states(alfworld_demos, 3)
    prompts = [render_prompt(s, PROMPT_CONFIG, policy.tokenizer) for s in states]
    responses = [["go to shelf 1", "look"], ["take watch 2 from shelf 2"], ["inventory", "", "go to sidetable 1"]]
    expected = [x for row in policy.score_responses(prompts, responses) for x in row]
    prompt_ids = encode_prompts(policy.tokenizer, prompts)
    rows = [(prompt_ids[i], ids) for i, rs in enumerate(responses)
            for ids in (policy.tokenizer(r, add_special_tokens=False)["input_ids"] + [policy.eos_id] for r in rs)]
    with torch.no_grad():
        got = sequence_logprobs_with_grad(policy.model, [p for p, _ in rows], [r for _, r in rows], policy.pad_id)
    assert got.shape == (6,)
    assert got.tolist() == pytest.approx(expected, abs=1e-4)

    # the sampler's log-probs (finished or not) are the same quantity on the sampled ids
    samples = [s for row in policy.generate(prompts, n=2, temperature=1.0, max_new_tokens=6, seed=1) for s in row]
    logps = sequence_logprobs_with_grad(policy.model, [prompt_ids[i // 2] for i in range(6)],
                                        [s.token_ids for s in samples], policy.pad_id)
    assert logps.tolist() == pytest.approx([s.logprob for s in samples], abs=1e-4)
    logps.sum().backward()  # differentiable
    assert policy.model.get_input_embeddings().weight.grad.abs().sum() > 0


def _go_to_mass(policy, states):
    """Mean probability (softmax over the admissible actions at T=1) of the actions starting with "go to"."""
    prompts = [render_prompt(s, PROMPT_CONFIG, policy.tokenizer) for s in states]
    actions = [list(dict.fromkeys(s.admissible_actions)) for s in states]
    masses = []
    for acts, lps in zip(actions, policy.score_candidates(prompts, actions)):
        probs = torch.tensor(lps).softmax(0)
        masses.append(float(sum(p for p, a in zip(probs, acts) if a.startswith("go to"))))
    return sum(masses) / len(masses)


def test_online_dpo_raises_the_preferred_actions_and_keeps_the_reference(sft_model, alfworld_demos, tmp_path):
    states = [s for s in _states(alfworld_demos)[:12] if any(a.startswith("go to") for a in s.admissible_actions)]
    policy, reference = Policy.from_pretrained(sft_model), Policy.from_pretrained(sft_model)
    before_reference = {k: v.clone() for k, v in reference.model.state_dict().items()}
    before = _go_to_mass(policy, states)
    # lr 1e-3 / beta 0.1 / T = 1 make the effect visible in 5 steps (paper values move it over ~20: 0.07 -> 0.45)
    config = DPOConfig(lr=1e-3, beta=0.1, steps=5, states_per_step=6, temperature=1.0, progress=False)
    with MetricsLogger(tmp_path / "metrics.jsonl", "dpo") as metrics:
        summary = online_dpo_loop(config, policy, reference, GoToScorer(), states, PROMPT_CONFIG, metrics)
    after = _go_to_mass(policy, states)
    assert after > before + 0.1, (before, after)
    assert all(torch.equal(v, before_reference[k]) for k, v in reference.model.state_dict().items())
    assert not any(p.requires_grad for p in reference.model.parameters())
    assert summary["updates"] > 0 and summary["pairs"] + summary["skipped_ties"] == 5 * 6

    def series(name):
        return [m["value"] for m in read_metrics(tmp_path / "metrics.jsonl", "dpo", name)]

    assert series("kl_to_reference")[0] == pytest.approx(0.0, abs=1e-4)  # step 1: policy == reference
    assert max(series("logprob_mismatch")) < 1e-3  # the loss scores exactly the sampled tokens
    assert len(series("prm_reward")) == 5 and series("valid_fraction") == [1.0] * 5
    for name in ("loss", "dpo_margin", "dpo_accuracy", "pairs", "skipped_ties"):
        assert series(name), name


def test_train_online_dpo_free_mode_saves_a_reloadable_model(sft_model, alfworld_demos, tmp_path):
    states = _states(alfworld_demos, 6)
    config = DPOConfig(lr=1e-4, steps=2, states_per_step=2, mode="free", max_new_tokens=6, progress=False)
    summary = train_online_dpo(config, sft_model, GoToScorer(), states, tmp_path / "dpo", PROMPT_CONFIG)
    folder = tmp_path / "dpo" / "model"
    assert tmp_path / "dpo" / summary["model"] == folder and summary["steps"] == 2
    assert sorted(p.name for p in (tmp_path / "dpo").iterdir() if p.name.startswith(".")) == []  # no staging left
    reloaded = Policy.from_pretrained(folder)
    assert reloaded.generate(["Task: x\nACTION:\n"], max_new_tokens=4, seed=0)[0][0].token_ids
    assert json.loads((folder / "agentprm_dpo.json").read_text())["reference"] == str(sft_model)
    assert json.loads((tmp_path / "dpo" / "dpo_summary.json").read_text())["steps"] == 2
    names = {m["name"] for m in read_metrics(tmp_path / "dpo" / "metrics.jsonl", "dpo")}
    assert {"prm_reward", "kl_to_reference", "pairs", "skipped_ties", "valid_fraction"} <= names


def test_the_monitor_reads_every_m_steps_and_keeps_the_best_weights(sft_model, alfworld_demos, tmp_path):
    from agentprm.algorithms.dpo_trainer import DPOValidation

    states = [s for s in _states(alfworld_demos)[:12] if any(a.startswith("go to") for a in s.admissible_actions)]
    policy, reference = Policy.from_pretrained(sft_model), Policy.from_pretrained(sft_model)
    # A scripted "success" stands in for the validation games (the run test plays real ones); it snapshots the
    # weights it was shown, so the kept checkpoint can be checked exactly.
    scripted, shown = iter([0.5, 0.9, 0.1, 0.2]), []

    def success(p):
        shown.append({k: v.detach().clone() for k, v in getattr(p.model, "module", p.model).state_dict().items()})
        return next(scripted)

    config = DPOConfig(lr=1e-3, beta=0.1, steps=5, states_per_step=6, temperature=1.0, progress=False,
                       monitor_every=2)
    with MetricsLogger(tmp_path / "metrics.jsonl", "dpo") as metrics:
        summary = online_dpo_loop(config, policy, reference, GoToScorer(), states, PROMPT_CONFIG, metrics,
                                  DPOValidation(states=states[:4], success=success))
    monitor = summary["monitor"]
    assert [r["step"] for r in monitor["readings"]] == [0, 2, 4, 5]  # step 0, every 2, and the last
    assert [r["success"] for r in monitor["readings"]] == [0.5, 0.9, 0.1, 0.2]
    assert monitor["selected_step"] == 2 and monitor["kept"] == "best"
    scores = [r["prm_score"] for r in monitor["readings"]]
    assert monitor["hacking_warnings"] == [s for s, score, ok in zip([4, 5], scores[2:], [0.1, 0.2])
                                           if score > scores[1]]
    final = policy.model.state_dict()
    assert all(torch.equal(final[k], shown[1][k]) for k in final)  # the weights of the step-2 reading
    assert not all(torch.equal(final[k], shown[3][k]) for k in final)  # not the last ones
    # the PRM score reading is the GoToScorer's mean over one sample per state: a fraction of "go to" actions
    assert all(0.0 <= s <= 1.0 for s in scores)
    logged = [m["value"] for m in read_metrics(tmp_path / "metrics.jsonl", "dpo", "val_success")]
    assert logged == [0.5, 0.9, 0.1, 0.2]


def test_without_keep_best_the_last_weights_stay(sft_model, alfworld_demos, tmp_path):
    from agentprm.algorithms.dpo_trainer import DPOValidation

    states = _states(alfworld_demos, 6)
    policy, reference = Policy.from_pretrained(sft_model), Policy.from_pretrained(sft_model)
    scripted = iter([0.9, 0.1])
    config = DPOConfig(lr=1e-3, beta=0.1, steps=2, states_per_step=4, temperature=1.0, progress=False,
                       monitor_every=5, keep_best=False)
    with MetricsLogger(tmp_path / "metrics.jsonl", "dpo") as metrics:
        summary = online_dpo_loop(config, policy, reference, GoToScorer(), states, PROMPT_CONFIG, metrics,
                                  DPOValidation(states=[], success=lambda p: next(scripted)))
    assert summary["monitor"]["selected_step"] == 2 and summary["monitor"]["kept"] == "last"
    assert summary["monitor"]["best_step"] == 0
    assert not all(torch.equal(v, reference.model.state_dict()[k]) for k, v in policy.model.state_dict().items())


def test_a_keep_margin_keeps_the_last_weights_when_the_best_reading_is_not_that_much_better(
        sft_model, alfworld_demos, tmp_path):
    from agentprm.algorithms.dpo_trainer import DPOValidation

    states = _states(alfworld_demos, 6)
    policy, reference = Policy.from_pretrained(sft_model), Policy.from_pretrained(sft_model)
    scripted, shown = iter([0.5, 0.9, 0.3]), []

    def success(p):
        shown.append({k: v.detach().clone() for k, v in getattr(p.model, "module", p.model).state_dict().items()})
        return next(scripted)

    config = DPOConfig(lr=1e-3, beta=0.1, steps=3, states_per_step=4, temperature=1.0, progress=False,
                       monitor_every=2, keep_margin=0.7)  # 0.9 < 0.3 + 0.7: the best reading is not kept
    with MetricsLogger(tmp_path / "metrics.jsonl", "dpo") as metrics:
        summary = online_dpo_loop(config, policy, reference, GoToScorer(), states, PROMPT_CONFIG, metrics,
                                  DPOValidation(states=[], success=success))
    monitor = summary["monitor"]
    assert (monitor["best_step"], monitor["selected_step"], monitor["kept"]) == (2, 3, "last")
    final = policy.model.state_dict()
    assert all(torch.equal(final[k], shown[2][k]) for k in final)  # the last reading's weights
    assert not all(torch.equal(final[k], shown[1][k]) for k in final)


def test_distinct_sampling_gives_every_state_two_different_actions(sft_model, alfworld_demos, tmp_path):
    from agentprm.algorithms.dpo_trainer import sample_responses

    policy = Policy.from_pretrained(sft_model)
    states = [s for s in _states(alfworld_demos)[:20] if len(set(s.admissible_actions)) >= 2]
    prompts = [render_prompt(s, PROMPT_CONFIG, policy.tokenizer) for s in states]
    config = DPOConfig(samples_per_state=2, temperature=1.0, distinct=True)
    rows = sample_responses(policy, states, prompts, config, PROMPT_CONFIG, seed=3)
    assert all(len({r.text for r in row}) == 2 for row in rows)
    with MetricsLogger(tmp_path / "metrics.jsonl", "dpo") as metrics:
        summary = online_dpo_loop(DPOConfig(lr=1e-4, steps=2, states_per_step=4, distinct=True, progress=False),
                                  policy, Policy.from_pretrained(sft_model), GoToScorer(), states, PROMPT_CONFIG,
                                  metrics)
    assert summary["pair_fraction"] == summary["pairs"] / 8
    with pytest.raises(ValueError, match="admissible"):
        DPOConfig(distinct=True, mode="free").validate()
    with pytest.raises(ValueError, match="min_gap"):
        DPOConfig(min_gap=-0.1).validate()
