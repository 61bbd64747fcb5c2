"""The implicit PRM: the outcome loss and its gradient by hand, scores that start at 0.5, a tiny real training."""

import math

import pytest
import torch

from agentprm.algorithms.implicit_prm import outcome_loss, response_logprobs, train_implicit_prm
from agentprm.algorithms.prm_training import PRMTrainConfig
from agentprm.config import load_config
from agentprm.data import read_trajectories
from agentprm.models.implicit_prm import ImplicitPRM, load_prm
from agentprm.models.policy import Policy, encode_prompts, encode_responses
from agentprm.models.prompts import PromptConfig


def test_outcome_loss_sums_the_steps_of_each_episode():
    z = torch.tensor([0.5, -0.25, 1.0], requires_grad=True)
    owner = torch.tensor([0, 0, 1])
    labels = torch.tensor([1.0, 0.0])
    loss = outcome_loss(z, owner, labels)
    r0, r1 = 0.25, 1.0
    expected = (-math.log(1 / (1 + math.exp(-r0))) - math.log(1 - 1 / (1 + math.exp(-r1)))) / 2
    assert float(loss.detach()) == pytest.approx(expected)
    loss.backward()
    s0, s1 = 1 / (1 + math.exp(-r0)), 1 / (1 + math.exp(-r1))
    # dL/dz_t = (sigmoid(r_e) - y_e) / E for every step t of episode e
    assert z.grad.tolist() == pytest.approx([(s0 - 1) / 2, (s0 - 1) / 2, s1 / 2])


def test_response_logprobs_equal_the_policy_definition(sft_model):
    policy = Policy.from_pretrained(sft_model)
    prompts, responses = ["You are in a room.", "Task: find the apple"], ["go to desk 1", "look"]
    pairs = list(zip(encode_prompts(policy.tokenizer, prompts), encode_responses(policy.tokenizer, responses)))
    with torch.no_grad():
        ours = response_logprobs(policy.model, pairs, policy.pad_id, policy.device).tolist()
    assert ours == pytest.approx(policy.sequence_logprobs(pairs), abs=1e-4)


def test_an_untrained_implicit_prm_scores_every_action_one_half(sft_model, tmp_path):
    prm = ImplicitPRM.from_policy(sft_model, beta=0.1)
    assert prm.score(["p", "p", "q"], ["go to desk 1", "look", "look"]) == pytest.approx([0.5] * 3)
    prm.save_pretrained(tmp_path / "prm")
    loaded = load_prm(tmp_path / "prm")
    assert isinstance(loaded, ImplicitPRM) and loaded.beta == 0.1


def _flip(records, won_game):
    return [r.__class__(**{**r.__dict__, "won": r.game_id == won_game}) for r in records]


def test_over_long_steps_drop_the_oldest_history_steps_not_the_task(long_episode):
    from agentprm.algorithms.implicit_prm import episode_steps
    from agentprm.models.prompts import PromptState, render_prompt_within

    record, config, max_length, tokenizer = long_episode
    [episode] = episode_steps([record], tokenizer, config, max_length)
    prompt_ids, response_ids = episode.steps[60]
    state = PromptState.from_trajectory(record, 60)
    assert prompt_ids == encode_prompts(tokenizer, [render_prompt_within(state, config, tokenizer,
                                                                          max_length - len(response_ids))])[0]
    assert len(episode.steps) == 61 and max(len(p) + len(r) for p, r in episode.steps) <= max_length
    text = tokenizer.decode(prompt_ids)
    assert text.startswith("<|bos|>user\nYou are an agent playing a text-based game.\nTask: put a clean mug in ")
    assert "a mug 0," not in text and "a mug 59," in text


def test_training_raises_the_won_episode_actions_against_the_reference(sft_model, alfworld_demos, tmp_path):
    records = [r for r in read_trajectories(alfworld_demos)][:6]
    records = _flip(records, records[0].game_id)  # one won game, the others failed: a contrast to learn
    config = load_config(PRMTrainConfig, {"kind": "implicit", "beta": 0.5, "lr": 3e-3, "max_steps": 6,
                                          "batch_size": 3, "warmup_steps": 0, "progress": False,
                                          "eval_batch_size": 16})
    summary = train_implicit_prm(config, records, sft_model, tmp_path / "out", PromptConfig(), val_fraction=0.0)
    assert summary["kind"] == "implicit" and summary["steps"] == 6
    assert summary["final_loss"] < summary["first_loss"]
    prm = load_prm(tmp_path / "out" / "model")
    from agentprm.models.prompts import PromptState, render_prompt

    def mean_ratio(record):
        states = [PromptState.from_trajectory(record, t) for t in range(record.num_steps)]
        prompts = [render_prompt(s, PromptConfig(), prm.tokenizer) for s in states]
        return sum(prm.log_ratios(prompts, [s.response for s in record.steps])) / record.num_steps

    won = [mean_ratio(r) for r in records if r.won]
    lost = [mean_ratio(r) for r in records if not r.won]
    assert min(won) > max(lost)


def test_the_chunked_two_pass_gradient_is_the_gradient_of_the_outcome_loss(sft_model):
    from agentprm.algorithms.implicit_prm import outcome_backward

    policy, reference = Policy.from_pretrained(sft_model), Policy.from_pretrained(sft_model)
    with torch.no_grad():  # move phi away from the reference so that every term is non-trivial
        for parameter in policy.model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    prompts = ["Task: put a mug in the desk", "You see a desk 1.", "Nothing happens.", "You arrive at desk 1."]
    responses = ["go to desk 1", "look", "take mug 1 from desk 1", "inventory"]
    pairs = list(zip(encode_prompts(policy.tokenizer, prompts), encode_responses(policy.tokenizer, responses)))
    owner, labels, beta = torch.tensor([0, 0, 1, 1]), torch.tensor([1.0, 0.0], dtype=torch.float64), 0.5
    ref = torch.tensor(reference.sequence_logprobs(pairs), dtype=torch.float64)

    lp = response_logprobs(policy.model, pairs, policy.pad_id, policy.device)
    outcome_loss(beta * (lp.double() - ref), owner, labels).backward()
    expected = [p.grad.clone() for p in policy.model.parameters()]
    policy.model.zero_grad(set_to_none=True)

    loss = outcome_backward(policy.model, pairs, owner, labels, ref, beta, 1.0, policy.pad_id, policy.device, chunk=3)
    z = beta * (torch.tensor(policy.sequence_logprobs(pairs), dtype=torch.float64) - ref)
    assert loss == pytest.approx(2 * float(outcome_loss(z, owner, labels)), rel=1e-4)
    for got, want in zip((p.grad for p in policy.model.parameters()), expected):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4)


def test_the_mean_bias_outcome_by_hand():
    """r_e = b + mean_t z_t: episode 0 has steps 0.5 and -0.25 (mean 0.125), episode 1 the step 1.0; b = -0.5."""
    from agentprm.algorithms.implicit_prm import episode_scores

    z = torch.tensor([0.5, -0.25, 1.0], requires_grad=True)
    bias = torch.tensor(-0.5, requires_grad=True)
    owner, labels = torch.tensor([0, 0, 1]), torch.tensor([1.0, 0.0])
    assert episode_scores(z, owner, 2, "mean_bias", bias).tolist() == pytest.approx([-0.375, 0.5])
    assert episode_scores(z, owner, 2, "sum").tolist() == pytest.approx([0.25, 1.0])
    loss = outcome_loss(z, owner, labels, "mean_bias", bias)
    s0, s1 = 1 / (1 + math.exp(0.375)), 1 / (1 + math.exp(-0.5))
    assert float(loss.detach()) == pytest.approx((-math.log(s0) - math.log(1 - s1)) / 2)
    loss.backward()
    # dL/dz_t = (sigmoid(r_e) - y_e) / (E T_e): the two steps of episode 0 share its push
    assert z.grad.tolist() == pytest.approx([(s0 - 1) / 4, (s0 - 1) / 4, s1 / 2])
    assert float(bias.grad) == pytest.approx(((s0 - 1) + s1) / 2)
    with pytest.raises(ValueError, match="outcome must be one of"):
        episode_scores(z, owner, 2, "max")


def test_with_the_mean_a_long_failure_and_a_short_win_push_an_everyday_action_equally():
    """The length bias the mean removes: one action taken at every step of a 1-step win and a 3-step failure, at
    initialisation (z = 0, b = logit(1/2) = 0). With the sum its total gradient is (0.5 - 1) + 3 * 0.5 > 0 (pushed
    down by gradient descent); with the mean it is 0."""
    owner, labels = torch.tensor([0, 1, 1, 1]), torch.tensor([1.0, 0.0])
    for outcome, total in (("sum", (-0.5 + 3 * 0.5) / 2), ("mean_bias", 0.0)):
        z = torch.zeros(4, requires_grad=True)
        outcome_loss(z, owner, labels, outcome, 0.0).backward()
        assert float(z.grad.sum()) == pytest.approx(total, abs=1e-6)


def test_the_chunked_gradient_of_the_mean_bias_outcome_is_its_autograd_gradient(sft_model):
    from agentprm.algorithms.implicit_prm import outcome_backward

    policy, reference = Policy.from_pretrained(sft_model), Policy.from_pretrained(sft_model)
    with torch.no_grad():
        for parameter in policy.model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    prompts = ["Task: put a mug in the desk", "You see a desk 1.", "Nothing happens.", "You arrive at desk 1.", "x"]
    responses = ["go to desk 1", "look", "take mug 1 from desk 1", "inventory", "look"]
    pairs = list(zip(encode_prompts(policy.tokenizer, prompts), encode_responses(policy.tokenizer, responses)))
    owner, labels, beta = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([1.0, 0.0], dtype=torch.float64), 0.5
    ref = torch.tensor(reference.sequence_logprobs(pairs), dtype=torch.float64)

    want_bias = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    lp = response_logprobs(policy.model, pairs, policy.pad_id, policy.device)
    outcome_loss(beta * (lp.double() - ref), owner, labels, "mean_bias", want_bias).backward()
    expected = [p.grad.clone() for p in policy.model.parameters()]
    policy.model.zero_grad(set_to_none=True)

    bias = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
    outcome_backward(policy.model, pairs, owner, labels, ref, beta, 1.0, policy.pad_id, policy.device, chunk=2,
                     outcome="mean_bias", bias=bias)
    assert float(bias.grad) == pytest.approx(float(want_bias.grad), rel=1e-5)
    for got, want in zip((p.grad for p in policy.model.parameters()), expected):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4)


def test_training_with_the_mean_bias_outcome_learns_its_offset(sft_model, alfworld_demos, tmp_path):
    records = _flip([r for r in read_trajectories(alfworld_demos)][:6], None)
    records = _flip(records, records[0].game_id)
    config = load_config(PRMTrainConfig, {"kind": "implicit", "outcome": "mean_bias", "beta": 0.5, "lr": 3e-3,
                                          "max_steps": 4, "batch_size": 6, "warmup_steps": 0, "progress": False,
                                          "eval_batch_size": 16})
    summary = train_implicit_prm(config, records, sft_model, tmp_path / "out", PromptConfig(), val_fraction=0.0)
    assert summary["outcome"] == "mean_bias" and summary["final_loss"] < summary["first_loss"]
    assert summary["bias"] != pytest.approx(math.log(1 / 5))  # started at logit(1/6 won), then trained
    with pytest.raises(Exception, match="outcome"):
        load_config(PRMTrainConfig, {"kind": "implicit", "outcome": "max"})
