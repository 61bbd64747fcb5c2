"""Tests for agentprm.models.prm on a tiny locally built Llama (no hub downloads)."""

from __future__ import annotations

import pytest
import torch

from agentprm.models.policy import Policy, left_pad, position_ids_from_mask
from agentprm.models.prm import ProcessRewardModel

GAME_TEXT = [
    "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a drawer 2.",
    "Your task is to: put a clean apple in fridge.",
    "go to cabinet 1", "go to drawer 2", "open drawer 2", "take apple 1 from countertop 1",
    "put apple 1 in/on fridge 1", "examine cabinet 1", "look", "inventory", "Nothing happens.",
    "You arrive at cabinet 1. On the cabinet 1, you see a mug 1.",
]
PROMPTS = [
    "Observation: You are in the middle of a room.\n> ",
    "Task: put a clean apple in fridge.\nObservation: You arrive at cabinet 1. On the cabinet 1, you see a mug 1.\n> ",
    "look\n> ",
    "Observation: Nothing happens.\n> ",
]
RESPONSES = ["go to cabinet 1", "take apple 1 from countertop 1", "", "inventory"]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|pad|>", "<|bos|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(GAME_TEXT * 3, trainer)
    bos = tk.token_to_id("<|bos|>")
    tk.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>", padding_side="left"
    )


def build_config(tok):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def policy(tok):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return Policy(LlamaForCausalLM(build_config(tok)).eval(), tok)


@pytest.fixture(scope="module")
def prm(tok):
    """PRM with a random (non-zero) head so scores differ between inputs."""
    torch.manual_seed(1)
    return ProcessRewardModel.from_scratch(tok, build_config(tok), head_init="normal")


def test_scores_are_probabilities_and_logits_have_grad(prm):
    scores = prm.score(PROMPTS, RESPONSES)
    assert len(scores) == 4 and all(0.0 < s < 1.0 for s in scores)
    assert len(set(round(s, 6) for s in scores)) == 4
    logits = prm.logits(PROMPTS, RESPONSES)
    assert logits.shape == (4,) and logits.requires_grad
    assert torch.sigmoid(logits).tolist() == pytest.approx(scores, abs=1e-5)


@pytest.mark.parametrize("batch_size", [32, 2])
def test_responses_sharing_a_prompt_score_as_full_sequences(prm, batch_size):
    # Best-of-N's shape: several responses per state, states of different lengths, repeated in any order.
    prompts = [PROMPTS[1], PROMPTS[0], PROMPTS[1], PROMPTS[3], PROMPTS[1], PROMPTS[0], PROMPTS[2] * 5]
    responses = ["look", "go to cabinet 1", "take apple 1 from countertop 1", "", "inventory", "", "look"]
    shared = prm.score(prompts, responses, batch_size=batch_size)
    with torch.no_grad():
        full = torch.sigmoid(prm.logits(prompts, responses)).tolist()  # one full sequence per pair
    assert shared == pytest.approx(full, abs=1e-5)
    assert prm.score([], []) == []


def test_scoring_is_batch_invariant(prm):
    batched = prm.score(PROMPTS, RESPONSES, batch_size=4)
    for i in range(len(PROMPTS)):
        alone = prm.score([PROMPTS[i]], [RESPONSES[i]])[0]
        assert alone == pytest.approx(batched[i], abs=1e-5)
    reordered = prm.score(PROMPTS[::-1], RESPONSES[::-1], batch_size=3)[::-1]
    assert reordered == pytest.approx(batched, abs=1e-5)


def test_pooling_matches_transformers_sequence_classification(prm):
    """With a dedicated pad token, HF's own pooling (rightmost non-pad token) agrees with ours."""
    ids, mask = prm.encode(PROMPTS, RESPONSES)  # left-padded (B, L)
    assert (ids[:, -1] == prm.tokenizer.eos_token_id).all()
    assert prm.model.config.pad_token_id == prm.tokenizer.pad_token_id != prm.tokenizer.eos_token_id
    with torch.no_grad():
        ours = prm.forward_ids(ids, mask)
        theirs = prm.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    assert theirs.shape == (4, 1)
    assert ours.tolist() == pytest.approx(theirs[:, 0].tolist(), abs=1e-5)


def test_value_model_is_empty_response(prm):
    states = PROMPTS[:3]
    assert prm.value(states) == pytest.approx(prm.score(states, [""] * 3), abs=1e-7)
    ids, _ = prm.encode(states[:1], [""])
    prompt_ids = prm.tokenizer(states[0])["input_ids"]  # BOS + tokens
    assert ids[0].tolist() == prompt_ids + [prm.tokenizer.eos_token_id]


def test_save_load_round_trip(prm, tmp_path):
    before = prm.score(PROMPTS, RESPONSES)
    prm.save_pretrained(tmp_path / "prm")
    loaded = ProcessRewardModel.from_pretrained(tmp_path / "prm")
    assert loaded.score(PROMPTS, RESPONSES) == pytest.approx(before, abs=1e-6)


def test_from_policy_copies_backbone(policy, tmp_path):
    def q_proj(model):
        return model.base_model.layers[0].self_attn.q_proj.weight

    for source in (policy, policy.model):
        prm = ProcessRewardModel.from_policy(source, tokenizer=policy.tokenizer)
        assert torch.equal(q_proj(prm.model), q_proj(policy.model))
        assert torch.equal(prm.model.base_model.embed_tokens.weight, policy.model.base_model.embed_tokens.weight)
        assert q_proj(prm.model).data_ptr() != q_proj(policy.model).data_ptr()  # a copy, not shared
        assert prm.score(PROMPTS, RESPONSES) == pytest.approx([0.5] * 4)  # zero-initialised head
    policy.save_pretrained(tmp_path / "policy")
    from_path = ProcessRewardModel.from_policy(tmp_path / "policy")
    assert torch.equal(q_proj(from_path.model), q_proj(policy.model))
    assert from_path.score(PROMPTS[:1], RESPONSES[:1]) == pytest.approx([0.5])


def test_bce_training_moves_scores_toward_targets(tok):
    torch.manual_seed(2)
    prm = ProcessRewardModel.from_scratch(tok, build_config(tok))
    prompts = PROMPTS * 2
    responses = RESPONSES + ["look", "examine cabinet 1", "open drawer 2", "go to drawer 2"]
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    error_before = (torch.tensor(prm.score(prompts, responses)) - targets).abs().mean()
    optimizer = torch.optim.Adam(prm.model.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    prm.model.train()
    losses = []
    for _ in range(15):
        loss = loss_fn(prm.logits(prompts, responses), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    error_after = (torch.tensor(prm.score(prompts, responses)) - targets).abs().mean()
    assert losses[-1] < losses[0] - 0.1
    assert error_after < error_before - 0.05
    assert prm.model.training  # score() restores the caller's mode


def test_pad_equal_to_eos_still_pools_final_token(tok):
    """Tokenizers without a pad token fall back to EOS for padding; pooling must not skip the EOS."""
    from transformers import AutoModelForSequenceClassification

    cfg = build_config(tok)
    cfg.num_labels = 1
    cfg.pad_token_id = tok.eos_token_id
    torch.manual_seed(3)
    model = AutoModelForSequenceClassification.from_config(cfg)
    prm = ProcessRewardModel(model, tok)
    batched = prm.score(PROMPTS, RESPONSES)
    alone = [prm.score([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES)]
    assert alone == pytest.approx(batched, abs=1e-5)
    ids, mask = left_pad([[5, 6, tok.eos_token_id]], tok.eos_token_id)
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
        assert prm.forward_ids(ids, mask).item() == pytest.approx(model.score(hidden).item(), abs=1e-6)


def test_errors(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ProcessRewardModel.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="tokenizer"):
        from transformers import LlamaForCausalLM

        ProcessRewardModel.from_policy(LlamaForCausalLM(build_config(tok)))
    with pytest.raises(ValueError, match="score"):
        from transformers import LlamaForCausalLM

        ProcessRewardModel(LlamaForCausalLM(build_config(tok)), tok)
