"""Online DPO against a process reward model: the policy step of AgentPRM (stage 3, Eq. 3 of the paper).

The stage maximises E_{s~D, a~pi}[Q_phi(s, a)] - beta * KL(pi || pi_ref) with pi_ref = pi_{i-1}, by online DPO:
for each drawn state s, sample K >= 2 responses from the CURRENT policy, let the PRM score them, take the best as
chosen y_c and the worst as rejected y_r, and minimise the sigmoid DPO loss

    h(s) = beta * [ (log pi(y_c | s) - log pi_ref(y_c | s)) - (log pi(y_r | s) - log pi_ref(y_r | s)) ]
    L    = - mean_pairs log sigmoid(h(s))

with log pi(y | s) = sum over the response tokens (EOS included when produced) of the log-softmax of the UNMODIFIED
model (temperature 1, no top-p, no admissible renormalisation): exactly ``Sample.logprob`` of
:mod:`agentprm.models.policy`. The implicit rewards are r_c = beta (log pi - log pi_ref)(y_c), r_r likewise; the
margin is h = r_c - r_r and the accuracy the fraction of pairs with h > 0.

Scores: a response that is unparsable, not an admissible action or did not finish (no EOS within
``max_new_tokens``) is never shown to the PRM; it scores ``INVALID_SCORE`` = -1 (the paper's value for an
unfinished response) and ranks below every scored response whatever the scorer's range.

The trainer lives in :mod:`agentprm.algorithms.dpo_trainer`; this module holds the pure pieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch.nn.functional as F
from torch import Tensor

from agentprm.algorithms.sft_data import IGNORE_INDEX, Example, collate
from agentprm.models.device import autocast

__all__ = [
    "INVALID_SCORE",
    "ScoredResponse",
    "Pair",
    "dpo_loss",
    "select_dpo_pairs",
    "sequence_logprobs_with_grad",
    "sampled_kl_estimate",
]

INVALID_SCORE = -1.0


@dataclass(frozen=True)
class ScoredResponse:
    """One sampled response to a state, with its score.

    ``token_ids``: the sampled ids (EOS included when produced), used as they are for the loss (never
    re-tokenised). ``score``: the PRM's score, or ``INVALID_SCORE`` when ``valid`` is False (unparsable,
    non-admissible or unfinished). ``logprob``: the sampling-time log-prob under the current policy.
    """

    text: str
    token_ids: tuple[int, ...]
    score: float
    valid: bool = True
    logprob: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "token_ids", tuple(self.token_ids))
        if not self.valid:
            object.__setattr__(self, "score", INVALID_SCORE)

    @property
    def rank_key(self) -> tuple[bool, float]:
        """Sort key: every valid response ranks above every invalid one, then by score."""
        return (self.valid, self.score)


@dataclass(frozen=True)
class Pair:
    """A preference pair at state ``state_index``; the indices point into that state's sampled responses."""

    state_index: int
    chosen_index: int
    rejected_index: int
    chosen: ScoredResponse
    rejected: ScoredResponse


def dpo_loss(
    policy_chosen_logp: Tensor,
    policy_rejected_logp: Tensor,
    ref_chosen_logp: Tensor,
    ref_rejected_logp: Tensor,
    beta: float,
) -> tuple[Tensor, dict[str, float]]:
    """Sigmoid DPO loss over a batch of pairs; every input is ``(P,)``.

        r_c = beta * (logp_c - ref_c),  r_r = beta * (logp_r - ref_r),  h = r_c - r_r
        L   = - mean log sigmoid(h)

    Returns ``(L, stats)`` with stats ``reward_margin`` = mean h, ``accuracy`` = fraction of pairs with h > 0,
    ``chosen_reward`` = mean r_c and ``rejected_reward`` = mean r_r (floats, no grad).
    """
    if policy_chosen_logp.numel() == 0:
        raise ValueError("dpo_loss needs at least one pair")
    chosen_reward = beta * (policy_chosen_logp - ref_chosen_logp)  # (P,)
    rejected_reward = beta * (policy_rejected_logp - ref_rejected_logp)  # (P,)
    margin = chosen_reward - rejected_reward  # (P,)
    loss = -F.logsigmoid(margin).mean()
    stats = {
        "reward_margin": margin.detach().mean().item(),
        "accuracy": (margin.detach() > 0).float().mean().item(),
        "chosen_reward": chosen_reward.detach().mean().item(),
        "rejected_reward": rejected_reward.detach().mean().item(),
    }
    return loss, stats


def select_dpo_pairs(candidates_per_state: Sequence[Sequence[ScoredResponse]], min_gap: float = 0.0) -> list[Pair]:
    """At most one (chosen, rejected) pair per state: the best and the worst of its responses.

    Identical responses (same token ids) collapse to their first sample. Chosen is the response with the
    highest ``rank_key`` (valid first, then score), rejected the lowest; among equal keys the first sampled
    wins both ways, so the choice is deterministic. A state is skipped when the best and worst keys tie (all
    responses identical, all equally scored, or all invalid), when both are valid and their scores differ by
    less than ``min_gap`` (a PRM's noise is no preference), or when it has fewer than two responses.
    """
    pairs: list[Pair] = []
    for state_index, responses in enumerate(candidates_per_state):
        first_of: dict[tuple[int, ...], int] = {}
        for index, response in enumerate(responses):
            first_of.setdefault(response.token_ids, index)
        distinct = list(first_of.values())
        if len(distinct) < 2:
            continue
        best = max(distinct, key=lambda i: responses[i].rank_key)  # max/min return the first extreme
        worst = min(distinct, key=lambda i: responses[i].rank_key)
        if responses[best].rank_key == responses[worst].rank_key:
            continue
        if responses[worst].valid and responses[best].score - responses[worst].score < min_gap:
            continue
        pairs.append(Pair(state_index, best, worst, responses[best], responses[worst]))
    return pairs


def sequence_logprobs_with_grad(
    model: Any, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int = 0,
    precision: str = "fp32",
) -> Tensor:
    """``log pi(response | prompt)`` per row, ``(B,)`` float32, differentiable w.r.t. ``model``'s parameters.

        logp_b = sum_{k in response_b} log softmax(logits_{k-1})[x_k]

    Teacher forced on ``prompt + response`` ids, right-padded as :func:`sft_data.collate` (labels -100 outside
    the response). No attention mask: with right padding a causal model never lets a real token see the pads
    after it. The model's train/eval mode is left as the caller set it (the trainer uses eval: no dropout).
    ``precision: bf16`` runs the forward pass under bf16 autocast (models/device.py); the sums stay fp32.
    """
    if len(prompt_ids) != len(response_ids) or not prompt_ids:
        raise ValueError(f"need equally many prompts and responses (>= 1), got {len(prompt_ids)}, {len(response_ids)}")
    if any(len(r) == 0 for r in response_ids):
        raise ValueError("every response must contain at least one token")
    batch = collate([Example("", list(p), list(r)) for p, r in zip(prompt_ids, response_ids)], pad_id)
    device = next(model.parameters()).device
    input_ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)  # (B, L)
    first = min(len(p) for p in prompt_ids) - 1  # no response token is predicted before this column
    with autocast(device, precision):
        logits = model(input_ids=input_ids).logits[:, first:-1].float()  # (B, L - 1 - first, V)
    targets = labels[:, first + 1:]  # (B, L - 1 - first)
    in_response = targets != IGNORE_INDEX
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    token_logp = picked - logits.logsumexp(-1)  # (B, T)
    return (token_logp * in_response).sum(-1)  # (B,)


def sampled_kl_estimate(policy_logps: Sequence[float], reference_logps: Sequence[float]) -> float:
    """KL(pi || pi_ref) estimated on sampled responses: mean over y of (log pi(y|s) - log pi_ref(y|s)).

    Unbiased only when y ~ pi itself; the trainer samples at temperature ``config.temperature`` (and, in
    admissible mode, among the admissible actions), so this is a monitoring signal, not the exact KL (it can
    even be negative). 0 while the policy equals the reference.
    """
    if len(policy_logps) != len(reference_logps):
        raise ValueError(f"{len(policy_logps)} policy log-probs but {len(reference_logps)} reference ones")
    if not policy_logps:
        return float("nan")
    return sum(p - r for p, r in zip(policy_logps, reference_logps)) / len(policy_logps)
