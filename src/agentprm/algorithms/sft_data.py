"""Behaviour-cloning examples from trajectory records: one example per step, loss on the response tokens only.

For step t of an episode, the example is

    prompt   = render_prompt(state before step t)          (task, history window, observation, admissible actions)
    response = format_response(action_t, reason_t) + EOS

(when prompt + response would exceed ``max_length``, the prompt shows fewer of the oldest history steps:
``prompts.render_prompt_within``, the one truncation rule of every stage) and the loss is the mean negative
log-likelihood of the response tokens:

    L = - (1 / |R|) * sum_{k in R} log pi(y_k | prompt, y_<k)

where R are the response positions of every example in the micro-batch (a token-level mean: long responses weigh
as much per token as short ones). Prompt and response are tokenised separately and concatenated as ids, the same
split the policy samples with, so no token ever straddles the boundary.

Train / validation split is BY GAME (a game's episodes are all on one side), decided by a hash of the game id so it
does not depend on file order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import torch

from agentprm.data import TrajectoryRecord
from agentprm.models.policy import encode_responses
from agentprm.models.prompts import PromptConfig, PromptState, encode_prompts_within, format_response

IGNORE_INDEX = -100


@dataclass
class Example:
    """Token ids of one (prompt, response) pair; ``response_ids`` ends with EOS."""

    game_id: str
    prompt_ids: list[int]
    response_ids: list[int]

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


def in_validation(game_id: str, fraction: float) -> bool:
    """Deterministic by-game split: the game's hash decides, not its position in a file."""
    if fraction <= 0:
        return False
    bucket = int(hashlib.sha256(game_id.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < fraction


def build_examples(
    records: Iterable[TrajectoryRecord],
    tokenizer,
    prompt_config: PromptConfig,
    max_length: int,
    only_successful: bool = True,
) -> list[Example]:
    """One example per step of every (successful) episode. A prompt that would make the example longer than
    ``max_length`` loses its oldest history steps (``prompts.encode_prompts_within``, the rule every stage uses)."""
    examples = []
    for record in records:
        if only_successful and not record.won:
            continue
        states = [PromptState.from_trajectory(record, i) for i in range(len(record.steps))]
        responses = [format_response(step.action, step.reason, prompt_config) for step in record.steps]
        # The policy's own encoders: training sees exactly the ids that sampling produces and scores.
        response_ids = encode_responses(tokenizer, responses)
        budgets = [max_length - len(response) for response in response_ids]
        if states and min(budgets) < 2:
            raise ValueError(f"max_length {max_length} leaves no room for a prompt (response has "
                             f"{max_length - min(budgets)} tokens)")
        prompt_ids = encode_prompts_within(states, prompt_config, tokenizer, budgets)
        examples += [Example(record.game_id, prompt, response) for prompt, response in zip(prompt_ids, response_ids)]
    return examples


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch. Labels are -100 on prompt and pad positions.

    No attention mask is passed: with right padding and a causal model, real tokens never attend to the pads that
    follow them, and pad positions carry no loss, so the mask changes nothing but costs speed (measured: an SDPA
    padding mask in fp32 cut training throughput about 3x on CPU).
    """
    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (batch, seq)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (batch, seq)
    for row, example in enumerate(examples):
        ids = example.prompt_ids + example.response_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, len(example.prompt_ids): len(ids)] = torch.tensor(example.response_ids)
    return {"input_ids": input_ids, "labels": labels}


def response_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token NLL, number of response tokens) for next-token prediction.

    logits: (batch, seq, vocab); labels: (batch, seq) with -100 outside responses.
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)), shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum",
    )
    return nll, (shifted_labels != IGNORE_INDEX).sum()
