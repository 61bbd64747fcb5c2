"""models/device.py and the bf16 paths it opens, run on the CPU: the code a GPU run executes, at toy size."""

from __future__ import annotations

import pytest
import torch

from agentprm.config import ConfigError
from agentprm.algorithms.dpo import sequence_logprobs_with_grad
from agentprm.models.device import accelerate_precision, autocast, resolve_device
from agentprm.models.policy import Policy, encode_prompts, encode_responses
from agentprm.models.prm import ProcessRewardModel

PROMPTS = ["Observation: You are in the middle of a room.\n> ", "Your task is to: put a clean apple in fridge.\n> "]
CANDIDATES = [["go to cabinet 1", "open drawer 2", "look"], ["inventory", "put apple 1 in/on fridge 1"]]


@pytest.fixture(scope="module")
def checkpoint(tiny_model):
    return tiny_model


def test_auto_is_the_cpu_here_and_cpu_is_always_allowed():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="sees no GPU"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="sees no GPU"):
        resolve_device("cuda:1")


def test_unknown_devices_and_precisions_are_refused():
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="fp32 or bf16"):
        autocast("cpu", "fp16")
    assert accelerate_precision("bf16") == "bf16" and accelerate_precision("fp32") == "no"


def test_bf16_autocast_runs_the_matrix_products_in_bf16_on_the_cpu():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert (a @ b).dtype == torch.float32


def test_a_bf16_policy_scores_as_the_fp32_one_up_to_bf16_rounding(checkpoint):
    fp32 = Policy.from_pretrained(checkpoint)
    bf16 = Policy.from_pretrained(checkpoint, precision="bf16")
    assert bf16.precision == "bf16" and next(bf16.model.parameters()).dtype == torch.float32  # fp32 master weights
    exact, rounded = fp32.score_candidates(PROMPTS, CANDIDATES), bf16.score_candidates(PROMPTS, CANDIDATES)
    for row_exact, row_rounded in zip(exact, rounded):
        assert all(isinstance(v, float) for v in row_rounded)
        assert row_rounded == pytest.approx(row_exact, abs=0.5)  # per-action log-probs, a few tokens each
    assert rounded != exact  # the bf16 path really ran
    samples = bf16.generate(PROMPTS, temperature=1.0, max_new_tokens=4, seed=0)
    assert len(samples) == len(PROMPTS)


def test_the_trainers_log_probs_under_bf16_have_gradients_and_match_fp32(checkpoint):
    policy = Policy.from_pretrained(checkpoint)
    prompts = encode_prompts(policy.tokenizer, PROMPTS)
    responses = encode_responses(policy.tokenizer, ["go to cabinet 1", "inventory"])
    exact = sequence_logprobs_with_grad(policy.model, prompts, responses, policy.pad_id)
    rounded = sequence_logprobs_with_grad(policy.model, prompts, responses, policy.pad_id, precision="bf16")
    assert rounded.dtype == torch.float32
    assert rounded.tolist() == pytest.approx(exact.tolist(), abs=0.5)
    rounded.sum().backward()
    grads = [p.grad for p in policy.model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_a_bf16_prm_scores_as_the_fp32_one(checkpoint):
    torch.manual_seed(0)
    fp32 = ProcessRewardModel.from_policy(checkpoint, head_init="normal")
    bf16 = ProcessRewardModel(fp32.model, fp32.tokenizer, precision="bf16")
    prompts = [PROMPTS[0]] * 3 + [PROMPTS[1]] * 2
    responses = CANDIDATES[0] + CANDIDATES[1]
    assert bf16.score(prompts, responses) == pytest.approx(fp32.score(prompts, responses), abs=0.05)
    assert bf16.logits(prompts, responses).dtype == torch.float32
