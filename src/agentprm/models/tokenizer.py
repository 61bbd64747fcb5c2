"""A byte-level BPE tokenizer trained on the environment's own text, in standard Hugging Face format.

The embedded model only ever reads text games (tasks, room descriptions, action lists), so a small vocabulary
learnt from that text is enough: on ALFWorld the merges saturate around ~950 tokens, i.e. roughly one token per
word, which keeps sequences short and the embedding table tiny.

Design choices, and why:

* **Byte level, all 256 bytes in the initial alphabet, no unknown token.** Any string encodes (an unseen word falls
  back to bytes), and ``decode(encode(s)) == s`` exactly, so nothing the environment or a user types is lost.
* **No normalizer** (no NFC, no lower-casing): normalisation would break the exact round trip.
* **``add_prefix_space=False``** (as GPT-2 and SmolLM2 do): a prefix space would be decoded back as a leading space,
  breaking the round trip; the price is that "go" at the start of a text and " go" inside it are different tokens,
  a few dozen extra vocabulary entries.
* **No special tokens added by ``encode``.** Prompt templates place ``<|bos|>`` / ``<|eos|>`` themselves, exactly as
  with hub tokenizers such as SmolLM2's, so one code path serves both.
* **Left padding** by default: batched generation needs the prompts right-aligned.
* **A ChatML-like chat template** over ``<|bos|>`` / ``<|eos|>``, so ``apply_chat_template`` works as for hub models.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from agentprm.data.records import TrajectoryRecord

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
# Ids 0, 1, 2 in this order, whatever the corpus.
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)

# ChatML's layout with this tokenizer's own markers: <|bos|>role\ncontent<|eos|>\n. Generation stops at <|eos|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|bos|>' + message['role'] + '\n' + message['content'] + '<|eos|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|bos|>assistant\n' }}{% endif %}"
)
# The role names the chat template writes, added to every corpus so each is one token.
CHAT_ROLE_TEXTS = ("system\n", "user\n", "assistant\n")
# Texts seen fewer times than the trainer's min_frequency (default 2) are never merged into tokens.
MIN_EXTRA_REPEATS = 2


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 2048,
    min_frequency: int = 2,
    chat_template: str | None = CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (consumed once, may be a generator).

    ``vocab_size`` is an upper bound including the 256 bytes and the three special tokens; on a small corpus the
    merges run out first (pairs seen fewer than ``min_frequency`` times are never merged). The result is
    deterministic for the same input sequence.
    """
    minimum = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (3 special tokens + 256 bytes), got {vocab_size}")
    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte is in the vocabulary even if the corpus never shows it: this is what makes any string encode.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_with_chat_roles(texts, chat_template), trainer=trainer)
    return wrap_tokenizer(backend, chat_template=chat_template)


def wrap_tokenizer(backend: Tokenizer, chat_template: str | None = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """A ``tokenizers.Tokenizer`` holding the special tokens, as a transformers tokenizer configured for generation."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        # transformers' default clean-up rewrites " ." as "." on decode, which would break the exact round trip.
        clean_up_tokenization_spaces=False,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def environment_corpus(records: Iterable[TrajectoryRecord], extra_texts: Iterable[str] = ()) -> Iterator[str]:
    """The environment text of ``records``, one string at a time, with ``extra_texts`` after each episode.

    Yields each episode's task, every step's observation, admissible actions and chosen action, and the final
    observation. The model's own responses are left out: they are not environment text and may be noise. Pass the
    fixed words of the prompt templates as ``extra_texts``: a prompt repeats them in every episode, so they are
    yielded once per episode (and at least ``MIN_EXTRA_REPEATS`` times), weighing in the merges as they will in use.
    """
    extra_texts = list(extra_texts)
    episodes = 0
    for record in records:
        episodes += 1
        yield record.task
        for step in record.steps:
            yield step.observation
            yield from step.admissible_actions
            yield step.action
        yield record.final_observation
        yield from extra_texts
    for _ in range(episodes, MIN_EXTRA_REPEATS):
        yield from extra_texts


def _with_chat_roles(texts: Iterable[str], chat_template: str | None) -> Iterator[str]:
    yield from texts
    if chat_template is not None:
        # Repeated so the role names pass min_frequency on any corpus.
        for _ in range(MIN_EXTRA_REPEATS):
            yield from CHAT_ROLE_TEXTS
