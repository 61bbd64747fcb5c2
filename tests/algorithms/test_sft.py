"""SFT: exact pieces (schedule, batching, labels, loss) and a tiny real run on ALFWorld demonstrations."""

import json
import math

import pytest
import torch

from agentprm.algorithms.sft import SFTConfig, SFTError, batch_order, lr_lambda, train_sft
from agentprm.algorithms.sft_data import Example, collate, in_validation, response_nll
from agentprm.config import ConfigError, load_config
from agentprm.data import read_trajectories
from agentprm.metrics import read_metrics


def test_lr_schedule_warmup_then_cosine():
    assert lr_lambda(0, warmup=4, total=20, min_ratio=0.1) == pytest.approx(0.25)
    assert lr_lambda(3, warmup=4, total=20, min_ratio=0.1) == pytest.approx(1.0)
    assert lr_lambda(12, warmup=4, total=20, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way
    assert lr_lambda(20, warmup=4, total=20, min_ratio=0.1) == pytest.approx(0.1)


def test_batch_order_is_a_seeded_permutation():
    batches = batch_order(10, 4, seed=3, epoch=1)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert batches == batch_order(10, 4, seed=3, epoch=1)
    assert batches != batch_order(10, 4, seed=3, epoch=2)


def test_collate_labels_only_the_response():
    batch = collate([Example("g", [1, 5, 6], [7, 2]), Example("g", [1, 8], [9, 9, 2])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 2], [1, 8, 9, 9, 2]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 7, 2], [-100, -100, 9, 9, 2]]
    short = collate([Example("g", [1], [2]), Example("g", [1, 3], [4, 2])], pad_id=0)
    assert short["input_ids"].tolist() == [[1, 2, 0, 0], [1, 3, 4, 2]]
    assert short["labels"].tolist() == [[-100, 2, -100, -100], [-100, -100, 4, 2]]


def test_response_nll_by_hand():
    # vocab 2, one sequence [0, 1, 1] whose labels score positions 1 and 2.
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(4.0), 0.0], [0.0, 0.0]]])  # (1, 3, 2)
    labels = torch.tensor([[-100, 1, 0]])
    nll, count = response_nll(logits, labels)
    # position 0 predicts token 1 with p = 3/4; position 1 predicts token 0 with p = 4/5.
    assert count.item() == 2
    assert nll.item() == pytest.approx(-math.log(3 / 4) - math.log(4 / 5), rel=1e-6)


def test_validation_split_is_by_game():
    games = [f"train/game_{i}" for i in range(400)]
    held = [g for g in games if in_validation(g, 0.25)]
    assert 60 < len(held) < 140  # about a quarter
    assert held == [g for g in games if in_validation(g, 0.25)]
    assert not any(in_validation(g, 0.0) for g in games)


def test_a_smaller_validation_fraction_holds_out_a_subset_of_the_games():
    """What mc_targets' docstring claims of SFT's and the PRM's held-out games (alfworld-cpu.yaml: 0.05 and 0.1)."""
    games = [f"train/game_{i}" for i in range(400)]
    sft, prm = ({g for g in games if in_validation(g, f)} for f in (0.05, 0.1))
    assert sft < prm  # a strict subset: the PRM also holds out games SFT trained on


def test_over_long_examples_drop_the_oldest_history_steps_not_the_task(long_episode):
    from agentprm.algorithms.sft_data import build_examples
    from agentprm.models.policy import encode_prompts
    from agentprm.models.prompts import PromptState, render_prompt, render_prompt_within

    record, config, max_length, tokenizer = long_episode
    examples = build_examples([record], tokenizer, config, max_length)
    assert len(examples) == 61 and max(len(e) for e in examples) <= max_length
    early = PromptState.from_trajectory(record, 5)
    assert examples[5].prompt_ids == encode_prompts(tokenizer, [render_prompt(early, config, tokenizer)])[0]  # whole
    last, state = examples[60], PromptState.from_trajectory(record, 60)
    budget = max_length - len(last.response_ids)
    assert last.prompt_ids == encode_prompts(tokenizer, [render_prompt_within(state, config, tokenizer, budget)])[0]
    text = tokenizer.decode(last.prompt_ids)
    assert text.startswith("<|bos|>user\nYou are an agent playing a text-based game.\nTask: put a clean mug in ")
    assert "a mug 0," not in text and "a mug 59," in text  # the oldest steps went first
    assert tokenizer.decode(last.response_ids) == "REASON: the mug may be there\nACTION: go to cabinet 61<|eos|>"


def _config(tiny_model, demos, out, **overrides):
    values = {"data": str(demos), "model": str(tiny_model), "out": str(out), "batch_size": 8, "max_steps": 8,
              "warmup_steps": 2, "eval_every": 4, "save_every": 4, "val_fraction": 0.2, "progress": False,
              "prompt": {"use_chat_template": "never"}}
    values.update(overrides)
    return load_config(SFTConfig, values)


def test_sft_loss_falls_and_the_checkpoint_reloads_and_samples(tiny_model, alfworld_demos, tmp_path):
    from transformers import AutoModelForCausalLM

    from agentprm.models.policy import Policy
    from agentprm.models.prompts import PromptConfig, PromptState, render_prompt

    config = _config(tiny_model, alfworld_demos, tmp_path / "sft", max_steps=30, lr=3e-3)
    summary = train_sft(config)
    losses = [m["value"] for m in read_metrics(tmp_path / "sft" / "metrics.jsonl", "sft", "loss")]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert summary["step"] == 30 and math.isfinite(summary["val_loss"])
    assert list((tmp_path / "sft" / "tensorboard").iterdir())

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft" / "model")
    assert model.num_parameters() > 0
    policy = Policy.from_pretrained(tmp_path / "sft" / "model")
    record = next(iter(read_trajectories(alfworld_demos)))
    prompt = render_prompt(PromptState.from_trajectory(record, 0), PromptConfig(use_chat_template="never"))
    samples = policy.sample_admissible([prompt], [record.steps[0].admissible_actions], n=2, seed=0)
    assert all(s.text in record.steps[0].admissible_actions and s.logprob < 0 for s in samples[0])


def test_resumed_run_matches_an_uninterrupted_one(tiny_model, alfworld_demos, tmp_path):
    straight = train_sft(_config(tiny_model, alfworld_demos, tmp_path / "straight"))
    interrupted = _config(tiny_model, alfworld_demos, tmp_path / "resumed")
    first = train_sft(interrupted, stop_after=3)
    assert first["step"] == 3 and not (tmp_path / "resumed" / "model").exists()
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 3
    resumed = train_sft(interrupted)
    assert resumed["step"] == straight["step"] == 8

    def losses(run):
        return [(m["step"], m["value"]) for m in read_metrics(tmp_path / run / "metrics.jsonl", "sft", "loss")]

    resumed_losses, straight_losses = losses("resumed"), losses("straight")
    assert [s for s, _ in resumed_losses] == [s for s, _ in straight_losses] == list(range(1, 9))
    assert [v for _, v in resumed_losses] == pytest.approx([v for _, v in straight_losses], rel=1e-5)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_lora_trains_and_saves_a_merged_plain_checkpoint(tiny_model, alfworld_demos, tmp_path):
    from transformers import AutoModelForCausalLM

    config = _config(tiny_model, alfworld_demos, tmp_path / "lora", max_steps=4, lora={"enabled": True, "r": 4})
    train_sft(config)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    names = [n for n, _ in merged.named_parameters()]
    assert names == [n for n, _ in base.named_parameters()]  # no adapter modules left
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert changed and all("proj" in n for n in changed)


def test_bad_input_fails_before_training(tiny_model, alfworld_demos, tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        _config(tiny_model, alfworld_demos, tmp_path / "x", learning_rate=1.0)
    with pytest.raises(SFTError, match="does not exist"):
        train_sft(_config(tmp_path / "no_model", alfworld_demos, tmp_path / "x"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SFTError, match="no episodes"):
        train_sft(_config(tiny_model, empty, tmp_path / "x"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(alfworld_demos.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(ValueError, match=f"{broken}:2"):
        train_sft(_config(tiny_model, broken, tmp_path / "x"))
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").glob("checkpoint*"))


def test_batch_order_grouped_by_length_by_hand():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4]
    batches = batch_order(8, 2, seed=3, epoch=0, lengths=lengths, group_batches=2)
    order = batch_order(8, 8, seed=3, epoch=0)[0]  # the same seeded permutation, uncut
    expected = []
    for window in (order[:4], order[4:]):  # windows of 2 batches x 2 examples, each sorted longest first
        ranked = sorted(window, key=lambda i: -lengths[i])
        expected += [ranked[:2], ranked[2:]]
    assert sorted(batches) == sorted(expected)  # the same batches, in a shuffled order
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert batches == batch_order(8, 2, seed=3, epoch=0, lengths=lengths, group_batches=2)
    with pytest.raises(ValueError, match="lengths"):
        batch_order(8, 2, seed=3, epoch=0, lengths=[1, 2])


def test_grouping_by_length_cuts_padding():
    lengths = [int(x) for x in torch.randint(20, 300, (640,), generator=torch.Generator().manual_seed(0))]

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    plain = padded(batch_order(640, 16, seed=0, epoch=0))
    grouped = padded(batch_order(640, 16, seed=0, epoch=0, lengths=lengths))
    assert grouped < 0.8 * plain and grouped >= sum(lengths)
