"""Tests for agentprm.models.policy on a tiny locally built Llama (no hub downloads)."""

from __future__ import annotations

import math

import pytest
import torch

from agentprm.models.policy import (
    Policy,
    Sample,
    _top_p_filter,
    encode_prompts,
    encode_responses,
    fork_cache,
    length_groups,
    tokenizer_adds_bos,
)

GAME_TEXT = [
    "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a drawer 2.",
    "Your task is to: put a clean apple in fridge.",
    "go to cabinet 1", "go to drawer 2", "open drawer 2", "close drawer 2", "take apple 1 from countertop 1",
    "put apple 1 in/on fridge 1", "clean apple 1 with sinkbasin 1", "examine cabinet 1", "look", "inventory",
    "You arrive at cabinet 1. On the cabinet 1, you see a mug 1.", "Nothing happens.",
    "You open the drawer 2. The drawer 2 is open. In it, you see nothing.",
    "You pick up the apple 1 from the countertop 1.", "> go to fridge 1", "Observation: the fridge 1 is closed.",
]
PROMPTS = ["Observation: You are in the middle of a room.\n> ", "Your task is to: put a clean apple in fridge.\n> "]
CANDS = [
    ["go to cabinet 1", "open drawer 2", "look", "take apple 1 from countertop 1", ""],
    ["inventory", "put apple 1 in/on fridge 1"],
]


def build_tokenizer(with_bos: bool = True):
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
    if with_bos:
        bos = tk.token_to_id("<|bos|>")
        tk.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>", padding_side="left"
    )


def build_model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def policy(tok):
    return Policy(build_model(tok), tok)


@pytest.fixture(scope="module")
def eos_policy(tok):
    """Same tiny model with +3 added to the EOS logit so generations end at varied lengths."""
    model = build_model(tok)
    eos = tok.eos_token_id

    def boost_eos(_module, _inputs, output):
        bias = torch.zeros(output.shape[-1])
        bias[eos] = 3.0
        return output + bias

    model.lm_head.register_forward_hook(boost_eos)
    return Policy(model, tok)


def reference_logprob(policy: Policy, prompt_ids: list[int], resp_ids: list[int]) -> float:
    """Unpadded, uncached teacher-forced sum log-prob computed directly from the model."""
    ids = torch.tensor([prompt_ids + resp_ids])
    with torch.no_grad():
        logp = policy.model(input_ids=ids).logits[0].float().log_softmax(-1)  # (L, V)
    start = len(prompt_ids)
    return sum(float(logp[start + t - 1, tok_id]) for t, tok_id in enumerate(resp_ids))


# ----------------------------------------------------------------------------- tokenisation


def test_encoding_convention(tok):
    assert tokenizer_adds_bos(tok)
    p = encode_prompts(tok, ["go to cabinet 1"])[0]
    assert p[0] == tok.bos_token_id and tok.eos_token_id not in p
    r = encode_responses(tok, ["go to cabinet 1", ""])
    assert r[0][-1] == tok.eos_token_id and r[0][:-1] == p[1:]
    assert r[1] == [tok.eos_token_id]
    no_bos = build_tokenizer(with_bos=False)
    assert not tokenizer_adds_bos(no_bos)
    assert encode_prompts(no_bos, ["go to cabinet 1"])[0] == p[1:]


# ----------------------------------------------------------------------------- teacher forcing


def test_score_responses_matches_unpadded_reference(policy, tok):
    responses = [["go to cabinet 1", "look", ""], ["put apple 1 in/on fridge 1"]]
    got = policy.score_responses(PROMPTS, responses, batch_size=2)
    for prompt, resps, scores in zip(PROMPTS, responses, got):
        p_ids = encode_prompts(tok, [prompt])[0]
        for r_ids, s in zip(encode_responses(tok, resps), scores):
            assert s == pytest.approx(reference_logprob(policy, p_ids, r_ids), abs=1e-4)


# ----------------------------------------------------------------------------- generation


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_generate_logprob_is_unwarped_model_logprob(eos_policy, tok, temperature, top_p):
    out = eos_policy.generate(PROMPTS, n=4, temperature=temperature, top_p=top_p, max_new_tokens=12, seed=3)
    assert [len(row) for row in out] == [4, 4]
    samples = [s for row in out for s in row]
    assert any(s.finished for s in samples) and any(not s.finished for s in samples)
    pairs = []
    for prompt, row in zip(PROMPTS, out):
        p_ids = encode_prompts(tok, [prompt])[0]
        for s in row:
            assert isinstance(s, Sample)
            if s.finished:
                assert s.token_ids[-1] == tok.eos_token_id and tok.eos_token_id not in s.token_ids[:-1]
            else:
                assert len(s.token_ids) == 12 and tok.eos_token_id not in s.token_ids
            assert s.text == tok.decode(s.token_ids, skip_special_tokens=True)
            pairs.append((p_ids, s.token_ids))
    recomputed = eos_policy.sequence_logprobs(pairs)
    for s, ref in zip(samples, recomputed):
        assert s.logprob == pytest.approx(ref, abs=1e-4)
    # spot-check against the independent unpadded reference as well
    assert samples[0].logprob == pytest.approx(reference_logprob(eos_policy, *pairs[0]), abs=1e-4)


def test_generate_seeded_is_reproducible(eos_policy):
    a = eos_policy.generate(PROMPTS, n=3, max_new_tokens=10, seed=7)
    b = eos_policy.generate(PROMPTS, n=3, max_new_tokens=10, seed=7)
    c = eos_policy.generate(PROMPTS, n=3, max_new_tokens=10, seed=8)
    assert a == b
    assert a != c


def test_greedy_matches_uncached_argmax_and_is_batch_invariant(policy, tok):
    steps = 6
    out = policy.generate(PROMPTS, n=2, temperature=0.0, max_new_tokens=steps)
    for prompt, row in zip(PROMPTS, out):
        assert row[0] == row[1]
        ids = encode_prompts(tok, [prompt])[0]
        expected: list[int] = []
        with torch.no_grad():
            for _ in range(steps):  # full recompute each step: no cache, no padding
                nxt = int(policy.model(input_ids=torch.tensor([ids + expected])).logits[0, -1].argmax())
                expected.append(nxt)
                if nxt == tok.eos_token_id:
                    break
        assert row[0].token_ids == expected
    alone = policy.generate(PROMPTS[1:], temperature=0.0, max_new_tokens=steps)
    assert alone[0][0].token_ids == out[1][0].token_ids
    assert alone[0][0].logprob == pytest.approx(out[1][0].logprob, abs=1e-4)


def test_top_p_filter_keeps_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_top_p_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(_top_p_filter(logits, 1e-6)).sum() == 1


def test_invalid_sampling_arguments(policy):
    with pytest.raises(ValueError):
        policy.generate(PROMPTS, temperature=-1.0)
    with pytest.raises(ValueError):
        policy.generate(PROMPTS, top_p=0.0)


# ----------------------------------------------------------------------------- admissible decoding


@pytest.mark.parametrize("batch_size", [64, 2])
def test_score_candidates_equals_score_responses(policy, batch_size):
    shared = policy.score_candidates(PROMPTS, CANDS, batch_size=batch_size)
    reference = policy.score_responses(PROMPTS, CANDS)
    for got, ref in zip(shared, reference):
        assert got == pytest.approx(ref, abs=1e-4)


def test_length_groups_hand_computed():
    lengths = [10, 3, 4, 12, 3]  # sorted: 1 (3), 4 (3), 2 (4), 0 (10), 3 (12)
    # [1, 4, 2]: 3 x 4 = 12 <= 1.25 x 10; then the size cap; [0, 3]: 2 x 12 = 24 <= 1.25 x 22
    assert length_groups(lengths, max_size=3) == [[1, 4, 2], [0, 3]]
    # without the cap, adding 0 would pad to 4 x 10 = 40 > 1.25 x 20
    assert length_groups(lengths, max_size=5) == [[1, 4, 2], [0, 3]]
    assert length_groups(lengths, max_size=5, max_padding=0.0) == [[1, 4], [2], [0], [3]]
    assert length_groups([], max_size=4) == []
    with pytest.raises(ValueError, match="max_size"):
        length_groups([1], max_size=0)


def test_fork_cache_leaves_the_original_intact(policy, tok):
    _, mask, cache = policy._prefill(encode_prompts(tok, PROMPTS))
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    fork = fork_cache(cache)
    fork.batch_select_indices(torch.tensor([1, 1, 0]))
    ids = torch.full((3, 1), tok.eos_token_id)
    policy._forward(ids, torch.cat([mask[[1, 1, 0]], torch.ones(3, 1, dtype=mask.dtype)], 1),
                    mask[[1, 1, 0]].sum(-1, keepdim=True), fork)
    assert fork.get_seq_length() == mask.shape[1] + 1 and fork.layers[0].keys.shape[0] == 3
    assert cache.get_seq_length() == mask.shape[1]
    for layer, (keys, values) in zip(cache.layers, before):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)


def test_score_candidates_with_mixed_prompt_lengths_keeps_order(policy):
    prompts = [PROMPTS[0] * 6, PROMPTS[1], PROMPTS[0] * 3, PROMPTS[0]]
    candidates = [CANDS[0], CANDS[1], CANDS[1][:1], CANDS[0][:3]]
    shared = policy.score_candidates(prompts, candidates, batch_size=3)
    reference = policy.score_responses(prompts, candidates)
    for got, ref in zip(shared, reference):
        assert got == pytest.approx(ref, abs=1e-4)


def test_candidates_share_one_prompt_pass(policy):
    calls: list[tuple[int, ...]] = []
    handle = policy.model.register_forward_hook(lambda m, args, kw, out: calls.append(tuple(kw["input_ids"].shape)),
                                                with_kwargs=True)
    try:
        policy.score_candidates(PROMPTS, CANDS)
    finally:
        handle.remove()
    n_cands = sum(len(c) for c in CANDS)
    assert len(calls) == 2  # one prompt pass for both prompts, one batched pass for all candidates
    assert calls[0][0] == len(PROMPTS) and calls[1][0] == n_cands


def test_sample_admissible_samples_and_logprobs(policy, tok):
    out = policy.sample_admissible(PROMPTS, CANDS, n=5, temperature=1.0, seed=0)
    reference = policy.score_responses(PROMPTS, CANDS)
    for cands, ref, row in zip(CANDS, reference, out):
        assert len(row) == 5
        for s in row:
            i = cands.index(s.text)
            assert s.finished
            assert s.token_ids == encode_responses(tok, [s.text])[0]
            assert s.logprob == pytest.approx(ref[i], abs=1e-4)
    greedy = policy.sample_admissible(PROMPTS, CANDS, n=3, temperature=0.0)
    for cands, ref, row in zip(CANDS, reference, greedy):
        best = cands[max(range(len(ref)), key=lambda i: ref[i])]
        assert [s.text for s in row] == [best] * 3
    assert policy.sample_admissible(PROMPTS, CANDS, n=4, seed=1) == policy.sample_admissible(
        PROMPTS, CANDS, n=4, seed=1
    )


def test_sample_admissible_frequencies_follow_softmax(policy):
    cands = CANDS[0][:4]
    logps = policy.score_candidates(PROMPTS[:1], [cands])[0]
    temperature = max(1.0, (max(logps) - min(logps)) / 2)  # keep every candidate reasonably likely
    draws = 4000
    row = policy.sample_admissible(PROMPTS[:1], [cands], n=draws, temperature=temperature, seed=123)[0]
    counts = [sum(s.text == c for s in row) for c in cands]
    weights = [math.exp(lp / temperature) for lp in logps]
    expected = [draws * w / sum(weights) for w in weights]
    assert min(expected) > 20
    chi2 = sum((o - e) ** 2 / e for o, e in zip(counts, expected))
    assert chi2 < 16.3  # df = 3, p = 0.001


def test_sample_admissible_without_replacement_draws_distinct_actions(policy):
    cands = CANDS[0][:4]
    logps = policy.score_candidates(PROMPTS[:1], [cands])[0]
    rows = [policy.sample_admissible(PROMPTS[:1], [cands], n=3, temperature=1.0, seed=s, replacement=False)[0]
            for s in range(100)]
    assert all(len({x.text for x in row}) == 3 for row in rows)
    whole = policy.sample_admissible(PROMPTS[:1], [cands], n=9, seed=0, replacement=False)[0]
    assert sorted(x.text for x in whole) == sorted(cands)  # n above the candidates: each one once
    # the first draw follows softmax(log pi / T), as a draw with replacement does
    temperature = max(1.0, (max(logps) - min(logps)) / 2)
    firsts = [policy.sample_admissible(PROMPTS[:1], [cands], n=2, temperature=temperature, seed=s,
                                       replacement=False)[0][0].text for s in range(800)]
    weights = [math.exp(lp / temperature) for lp in logps]
    expected = [800 * w / sum(weights) for w in weights]
    chi2 = sum((sum(t == c for t in firsts) - e) ** 2 / e for c, e in zip(cands, expected))
    assert chi2 < 16.3  # df = 3, p = 0.001
    greedy = policy.sample_admissible(PROMPTS[:1], [cands], n=2, temperature=0.0, replacement=False)[0]
    order = sorted(range(4), key=lambda i: -logps[i])
    assert [x.text for x in greedy] == [cands[order[0]], cands[order[1]]]


def test_sample_admissible_rejects_empty_candidates(policy):
    with pytest.raises(ValueError, match="no candidate actions"):
        policy.sample_admissible(PROMPTS, [["look"], []])
    with pytest.raises(ValueError, match="candidate lists"):
        policy.sample_admissible(PROMPTS, [["look"]])


# ----------------------------------------------------------------------------- persistence


def test_save_load_round_trip(policy, tmp_path):
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    for a, b in zip(loaded.score_responses(PROMPTS, CANDS), policy.score_responses(PROMPTS, CANDS)):
        assert a == pytest.approx(b, abs=1e-6)
    assert encode_prompts(loaded.tokenizer, PROMPTS) == encode_prompts(policy.tokenizer, PROMPTS)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        Policy.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        Policy.from_pretrained(tmp_path / "empty")
