"""PRM training (AgentPRM stage 2): fit Q_phi(s, a) = sigmoid(z_phi(s, a)) to the Monte Carlo targets Q_hat.

Absolute loss (Eq. 2, default), soft binary cross-entropy against the soft label Q_hat in [0, 1]:

    L_BCE = - mean[ Q_hat * log sigmoid(z) + (1 - Q_hat) * log(1 - sigmoid(z)) ]

Relative loss (paper Section 4, "relative loss"): Bradley-Terry on ordered pairs (a1, a2) of actions at the SAME
state (``mc_targets.state_key``: same game, history and observation under prefix keys, same true state under state
keys) with Q_hat(s, a1) - Q_hat(s, a2) >= delta (0.03):

    L_BT = - mean[ log sigmoid(z(s, a1) - z(s, a2)) ]

Absolute plus within-state loss (``soft_bce+listwise``, not in the paper): the PRM's job at inference (Best-of-N,
online DPO) is to rank the actions at one state, which soft BCE alone constrains only through the targets' values.
For a micro-batch of STATES (groups of one state's training targets, ``mc_targets.state_key``; singletons too):

    L = mean_{targets (s, a)} BCE(z(s, a), Q_hat(s, a))
        + lambda * mean_{states s with >= 2 targets} [ - sum_a p_hat(a | s) log softmax_a z(s, a) ]
    p_hat(a | s) = softmax_a( Q_hat(s, a) / tau )

the ListNet top-one cross-entropy (Cao et al., 2007) with lambda = ``within_weight`` and tau = ``list_temperature``
(Q_hat in [0, 1]: tau 0.1 makes a gap of 0.1 worth a factor e). Few states have two actions under the paper's prefix
keys; pooling targets by the true state (``targets.key: state``) gives the term something to rank. Here the
trainer's items are the states: ``batch_size`` counts states (each brings all its targets, so a micro-batch holds
at least ``batch_size`` sequences), length grouping uses a state's longest sequence, and a window of several
micro-batches averages their losses weighted by their number of states.

``kind: residual`` (``models.residual_prm``) trains the same head with any of these losses on the logit

    z(s, a) = h_theta(s, a) + w * log pi_ref(a | s),        w a learnt scalar started at ``policy_weight``,

log pi_ref the frozen initial policy's log-probability of ``response + EOS``, computed once per target before
training: with the zero head the first scores rank each state's actions exactly as the policy does.

The PRM reads ``render_prompt(state) + response`` (``ProcessRewardModel``'s sequence) and is initialised from the
policy's backbone with a zero head (every initial score 0.5) or from scratch. AdamW, linear warm-up then cosine decay
(``sft.lr_lambda``), gradient clipping, seeded batch order (``sft.batch_order``); trains on the "train" split of the
targets (split BY GAME in ``mc_targets``) and validates on the "val" split:

* ``validation_bce``: L_BCE of the scores against Q_hat;
* ``early_step_auc``: per validation EPISODE, the mean PRM score of its first ``first_steps`` steps predicts whether
  the episode was won (Mann-Whitney AUC; "can the PRM tell success from the first steps?");
* ``calibration_bins`` / ``expected_calibration_error``: equal-width bins of the score, mean score vs mean Q_hat.

Outputs in ``out_dir``: ``model/`` (``save_pretrained``, written atomically), ``validation.json`` (the report, with
the calibration bins the report module plots), ``val_predictions.jsonl`` (key, q, score per validation target),
``prm_summary.json`` and ``metrics.jsonl`` (unless a logger is passed in). No mid-run checkpoint: a PRM run is one
pipeline stage that is redone whole when interrupted.
"""

from __future__ import annotations

import contextlib

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from agentprm.algorithms.mc_targets import QTarget, state_counts, state_from_target, state_key, target_histogram
from agentprm.algorithms.sft import batch_order, lr_lambda, process_share
from agentprm.config import above, at_least, between
from agentprm.metrics import MetricsLogger
from agentprm.models.device import resolve_device
from agentprm.models.policy import encode_responses, eval_no_grad, left_pad
from agentprm.models.prompts import PromptConfig, encode_prompts_within, render_prompt


@dataclass
class PRMTrainConfig:
    kind: Literal["scalar", "implicit", "residual"] = field(default="scalar", metadata={
        "help": "scalar: a scalar head on the policy's backbone fit to the MC targets (the paper); implicit: "
                "Q(s, a) = sigmoid(beta log pi_phi(a|s) / pi_ref(a|s)) with phi initialised to the policy, trained "
                "by episode cross-entropy on the rollouts' outcomes (Yuan et al. 2024; batch_size counts "
                "episodes, eval_batch_size sequences per chunk; loss is not used); residual: the scalar PRM plus "
                "w log pi_ref(a|s), the frozen initial policy's log-probability as a feature, w learnt from "
                "policy_weight (starts at the policy's ranking; models/residual_prm.py)"})
    policy_weight: float = field(default=1.0, metadata={
        "range": above(0), "help": "residual PRM: the initial weight w of log pi_ref(a|s) in the logit"})
    beta: float = field(default=0.1, metadata={"range": above(0), "help": "implicit PRM: beta of the log-ratio score"})
    outcome: Literal["sum", "mean_bias"] = field(default="sum", metadata={
        "help": "implicit PRM: an episode's outcome logit from its steps' scores z: sum (Yuan et al.: sum_t z_t) or "
                "mean_bias (b + mean_t z_t, b learnt from the logit of the win rate: long failed episodes no longer "
                "push the policy's favoured actions down; algorithms/implicit_prm.py)"})
    loss: Literal["soft_bce", "bradley_terry", "soft_bce+listwise"] = field(
        default="soft_bce", metadata={"help": "soft_bce: absolute loss on Q_hat (paper default); bradley_terry: "
                                              "relative loss on pairs of actions at the same state; "
                                              "soft_bce+listwise: soft BCE plus a ListNet term ranking the actions "
                                              "of each state (batches are states)"})
    bt_delta: float = field(default=0.03, metadata={
        "range": at_least(0), "help": "Bradley-Terry pairs need Q_hat(a1) - Q_hat(a2) >= this"})
    within_weight: float = field(default=1.0, metadata={
        "range": at_least(0), "help": "soft_bce+listwise: lambda, the weight of the within-state listwise term"})
    list_temperature: float = field(default=0.1, metadata={
        "range": above(0), "help": "soft_bce+listwise: tau of the target distribution softmax(Q_hat / tau) over a "
                                   "state's actions"})
    lr: float = field(default=5e-5, metadata={
        "range": above(0), "help": "peak learning rate (pretrained models: 5e-5 as in the paper; tiny from-scratch "
                                   "models want ~1e-3)"})
    min_lr_ratio: float = field(default=0.1, metadata={
        "range": between(0, 1), "help": "final lr of the cosine decay, as a fraction of lr"})
    epochs: float = field(default=1.0, metadata={
        "range": above(0), "help": "passes over the training targets (or pairs)"})
    max_steps: int = field(default=0, metadata={"range": at_least(0), "help": "optimiser steps (0 = from epochs)"})
    batch_size: int = field(default=16, metadata={
        "range": at_least(1), "help": "targets (pairs; states for soft_bce+listwise, each with all its targets) per "
                                      "micro-batch"})
    grad_accum: int = field(default=1, metadata={"range": at_least(1), "help": "micro-batches per optimiser step"})
    max_length: int = field(default=512, metadata={
        "range": at_least(1), "help": "tokens per sequence; longer prompts show fewer of the oldest history steps"})
    group_by_length: bool = field(default=True, metadata={"help": "batches of sequences (pairs) of similar length "
                                                                  "(less padding; see sft.batch_order)"})
    warmup_steps: int = field(default=10, metadata={"range": at_least(0), "help": "linear warm-up steps"})
    weight_decay: float = field(default=0.01, metadata={"range": at_least(0), "help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"range": at_least(0), "help": "gradient clipping (0 = off)"})
    seed: int = field(default=0, metadata={
        "range": at_least(0), "help": "seeds the head / scratch init and the batch order"})
    init: Literal["policy", "scratch"] = field(
        default="policy", metadata={"help": "policy: copy the policy's backbone (as in AgentPRM); scratch: random "
                                            "backbone with the policy's architecture and tokenizer"})
    eval_every: int = field(default=50, metadata={
        "range": at_least(1), "help": "validation BCE every N steps (and at the end)"})
    eval_batch_size: int = field(default=32, metadata={
        "range": at_least(1), "help": "sequences per batch when scoring"})
    calibration_bins: int = field(default=10, metadata={
        "range": at_least(1), "help": "equal-width score bins in the calibration report"})
    first_steps: int = field(default=3, metadata={
        "range": at_least(0), "help": "early-step AUC uses each episode's first N steps"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def validate(self) -> None:
        for name in ("batch_size", "grad_accum", "max_length", "eval_every", "eval_batch_size", "calibration_bins",
                     "first_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.epochs <= 0:
            raise ValueError("lr and epochs must be > 0")
        if self.bt_delta <= 0:
            raise ValueError(f"bt_delta must be > 0 (pairs need a strict preference), got {self.bt_delta}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.policy_weight <= 0:
            raise ValueError(f"policy_weight must be > 0, got {self.policy_weight}")
        if self.kind == "residual" and self.init != "policy":
            raise ValueError("kind: residual needs init: policy (its feature is the initial policy's log pi)")
        if self.within_weight < 0:
            raise ValueError(f"within_weight must be >= 0, got {self.within_weight}")
        if self.list_temperature <= 0:
            raise ValueError(f"list_temperature must be > 0, got {self.list_temperature}")
        if self.max_steps < 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("max_steps and warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")


class PRMTrainError(ValueError):
    """Bad input detected before training starts (missing model, no training targets or pairs)."""


# -- losses (pure) ---------------------------------------------------------------------------------------------------


def soft_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-mean[q log sigmoid(z) + (1 - q) log(1 - sigmoid(z))]; logits (B,) and soft targets q (B,) in [0, 1]."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def bradley_terry_loss(logit_a: torch.Tensor, logit_b: torch.Tensor) -> torch.Tensor:
    """-mean log sigmoid(z_a - z_b) for pairs (B,) where a is the preferred action."""
    return -F.logsigmoid(logit_a - logit_b).mean()


def listwise_loss(logits: torch.Tensor, q: torch.Tensor, groups: Sequence[Sequence[int]],
                  temperature: float) -> torch.Tensor:
    """ListNet cross-entropy, mean over the groups with >= 2 members of -sum_a p_hat(a) log softmax_a(z_a) with
    p_hat = softmax(q / temperature) over the group; logits and q (B,), ``groups`` index into them. 0 (still a
    function of ``logits``) when no group has two members."""
    terms = []
    for members in groups:
        if len(members) < 2:
            continue
        index = torch.tensor(list(members), device=logits.device)
        target = torch.softmax(q[index].to(logits.dtype) / temperature, dim=0)  # (group,)
        terms.append(-(target * torch.log_softmax(logits[index], dim=0)).sum())
    return torch.stack(terms).mean() if terms else logits.sum() * 0.0


def soft_bce_listwise_loss(logits: torch.Tensor, q: torch.Tensor, groups: Sequence[Sequence[int]],
                           within_weight: float, temperature: float) -> torch.Tensor:
    """L = soft_bce(z, q) over every target + within_weight * listwise_loss over the groups (module doc)."""
    return soft_bce_loss(logits, q) + within_weight * listwise_loss(logits, q, groups, temperature)


def state_groups(targets: Sequence[QTarget]) -> list[list[int]]:
    """Indices of the targets of each state (``state_key``), states by first appearance, members in order."""
    groups: dict[str, list[int]] = {}
    for index, target in enumerate(targets):
        groups.setdefault(state_key(target), []).append(index)
    return list(groups.values())


def select_bt_pairs(targets: Sequence[QTarget], delta: float) -> list[tuple[int, int]]:
    """Every ordered pair (i, j) of targets at the same state with q_i - q_j >= delta (i preferred).

    Order: states by first appearance, then i, then j in target order.
    """
    return [(i, j) for members in state_groups(targets) for i in members for j in members
            if targets[i].q - targets[j].q >= delta]


# -- validation metrics (pure) ---------------------------------------------------------------------------------------


def validation_bce(scores: Sequence[float], targets: Sequence[float], eps: float = 1e-7) -> float:
    """-mean[q log p + (1 - q) log(1 - p)] for scores p (clipped to [eps, 1 - eps]) and Q_hat q; nan if empty."""
    if len(scores) != len(targets):
        raise ValueError(f"{len(scores)} scores but {len(targets)} targets")
    if not scores:
        return math.nan
    total = 0.0
    for p, q in zip(scores, targets):
        p = min(max(p, eps), 1 - eps)
        total -= q * math.log(p) + (1 - q) * math.log(1 - p)
    return total / len(scores)


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Mann-Whitney AUC = P(score_pos > score_neg) + 1/2 P(tie); nan without both classes."""
    n_pos = sum(bool(label) for label in labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranked = sorted(zip(scores, (bool(label) for label in labels)))
    rank_sum, start = 0.0, 0
    while start < len(ranked):  # tied scores share the average of their 1-based ranks
        end = start
        while end < len(ranked) and ranked[end][0] == ranked[start][0]:
            end += 1
        rank_sum += (start + 1 + end) / 2 * sum(label for _, label in ranked[start:end])
        start = end
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def early_step_scores(targets: Sequence[QTarget], scores: Sequence[float],
                      first_steps: int = 3) -> tuple[list[float], list[bool]]:
    """Per episode (every episode visiting the targets): mean score of its first ``first_steps`` steps, and won."""
    sums: dict[int, list[float]] = {}
    won: dict[int, bool] = {}
    for target, score in zip(targets, scores, strict=True):
        if target.step_index >= first_steps:
            continue
        for episode, episode_won in zip(target.episode_indices, target.episode_won):
            sums.setdefault(episode, []).append(score)
            won[episode] = episode_won
    episodes = sorted(sums)
    return [sum(sums[e]) / len(sums[e]) for e in episodes], [won[e] for e in episodes]


def early_step_auc(targets: Sequence[QTarget], scores: Sequence[float], first_steps: int = 3) -> float:
    """AUC of predicting each episode's success from the mean PRM score of its first ``first_steps`` steps."""
    return auc(*early_step_scores(targets, scores, first_steps))


def same_state_ranking(targets: Sequence[QTarget], scores: Sequence[float], delta: float = 0.03) -> dict[str, Any]:
    """How well the PRM orders actions at the same state -- the comparison online DPO and Best-of-N make.

    Over the pairs of :func:`select_bt_pairs` (same state, q_i - q_j >= delta): ``pair_accuracy`` = share of pairs
    with score_i > score_j (ties count 1/2; nan without pairs). Also ``states``, ``multi_action_states`` (states
    with at least two distinct actions among the targets) and ``pairs``: with few branching states the PRM is
    trained mostly as a value function and its ranking of alternatives is barely constrained.
    """
    if len(targets) != len(scores):
        raise ValueError(f"{len(targets)} targets but {len(scores)} scores")
    pairs = select_bt_pairs(targets, delta)
    correct = sum(1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0 for i, j in pairs)
    return {**state_counts(targets), "pairs": len(pairs), "pair_accuracy": correct / len(pairs) if pairs else math.nan}


def calibration_bins(scores: Sequence[float], targets: Sequence[float], bins: int = 10) -> list[dict[str, Any]]:
    """Equal-width score bins [lo, hi) (the last closed) with count, mean score and mean Q_hat (None when empty)."""
    if len(scores) != len(targets):
        raise ValueError(f"{len(scores)} scores but {len(targets)} targets")
    members: list[list[tuple[float, float]]] = [[] for _ in range(bins)]
    for p, q in zip(scores, targets):
        members[min(max(int(p * bins), 0), bins - 1)].append((p, q))
    rows = []
    for index, pairs in enumerate(members):
        count = len(pairs)
        rows.append({"lo": index / bins, "hi": (index + 1) / bins, "count": count,
                     "mean_pred": sum(p for p, _ in pairs) / count if count else None,
                     "mean_target": sum(q for _, q in pairs) / count if count else None})
    return rows


def expected_calibration_error(scores: Sequence[float], targets: Sequence[float], bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) |mean score_b - mean Q_hat_b| over the bins of :func:`calibration_bins`; nan if empty."""
    if not scores:
        return math.nan
    rows = calibration_bins(scores, targets, bins)
    return sum(r["count"] / len(scores) * abs(r["mean_pred"] - r["mean_target"]) for r in rows if r["count"])


def prm_validation_report(targets: Sequence[QTarget], scores: Sequence[float], bins: int = 10,
                          first_steps: int = 3) -> dict[str, Any]:
    """Every validation metric in one JSON-ready dict (non-finite values become None)."""
    q = [t.q for t in targets]
    episode_scores, episode_won = early_step_scores(targets, scores, first_steps)
    report = {
        "num_targets": len(targets), "num_games": len({t.game_id for t in targets}),
        "num_episodes": len(episode_won), "episode_success": _mean([float(w) for w in episode_won]),
        "bce": validation_bce(scores, q), "mean_score": _mean(scores), "mean_target": _mean(q),
        "step_auc": auc(scores, [value > 0 for value in q]),  # does the key lead to any success?
        "early_step_auc": auc(episode_scores, episode_won), "first_steps": first_steps,
        "ece": expected_calibration_error(scores, q, bins), "calibration": calibration_bins(scores, q, bins),
        "target_histogram": target_histogram(targets, bins),
        **{f"same_state_{k}": v for k, v in same_state_ranking(targets, scores).items()},
    }
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in report.items()}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# -- trainer ---------------------------------------------------------------------------------------------------------


class _LogitModule(torch.nn.Module):
    """The PRM's HF model as an ``nn.Module`` whose forward is ``ProcessRewardModel.forward_ids`` (our pooling), so
    accelerate/DDP wrap the call that actually computes the logits. With ``policy_weight`` (the residual PRM) it
    also holds the learnt scalar w and adds ``w * features`` (ell = log pi_ref per row) to the head's logits."""

    def __init__(self, prm: Any, policy_weight: float | None = None) -> None:
        super().__init__()
        self.model = prm.model
        self._forward_ids = prm.forward_ids
        self.policy_weight = None if policy_weight is None else torch.nn.Parameter(
            torch.tensor(float(policy_weight), device=prm.device))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:  # (B, L) [, (B,)] -> (B,)
        logits = self._forward_ids(ids, mask)
        if self.policy_weight is None:
            return logits
        if features is None:
            raise ValueError("a residual PRM's logits need the rows' log pi_ref features")
        return logits + self.policy_weight * features


def encode_targets(targets: Sequence[QTarget], tokenizer: Any, prompt_config: PromptConfig,
                   max_length: int) -> list[list[int]]:
    """Token ids of render_prompt(state) + response + EOS per target (:func:`encode_sequences`)."""
    return encode_sequences([state_from_target(t) for t in targets], [t.response for t in targets], tokenizer,
                            prompt_config, max_length)


def encode_sequences(states: Sequence[Any], responses: Sequence[str], tokenizer: Any, prompt_config: PromptConfig,
                     max_length: int) -> list[list[int]]:
    """Token ids of render_prompt(state) + response + EOS per (state, response); a sequence that would exceed
    ``max_length`` shows fewer of the oldest history steps (``prompts.encode_prompts_within``, the rule of SFT and
    of every other stage)."""
    response_ids = encode_responses(tokenizer, list(responses))
    budgets = [max_length - len(response) for response in response_ids]
    if budgets and min(budgets) < 2:
        raise PRMTrainError(f"max_length {max_length} leaves no room for a prompt (response: "
                            f"{max_length - min(budgets)})")
    prompt_ids = encode_prompts_within(list(states), prompt_config, tokenizer, budgets)
    return [prompt + response for prompt, response in zip(prompt_ids, response_ids)]


def predict_scores(module: torch.nn.Module, sequences: Sequence[list[int]], pad_id: int, device: Any,
                   batch_size: int = 32, features: Sequence[float] | None = None) -> list[float]:
    """sigmoid(logit) per sequence, no grad, eval mode, length-sorted batches (``features``: the residual PRM's
    log pi_ref per sequence)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    scores = [0.0] * len(sequences)
    with eval_no_grad(module):
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            logits = module(*left_pad([sequences[i] for i in chunk], pad_id, device),
                            *_features(features, chunk, device))
            for i, value in zip(chunk, torch.sigmoid(logits).tolist()):
                scores[i] = value
    return scores


def _load_prm(config: PRMTrainConfig, init_model_path: str | Path, device: Any, precision: str = "fp32") -> Any:
    from transformers import AutoConfig, AutoTokenizer

    from agentprm.models.checkpoints import check_model_source
    from agentprm.models.prm import ProcessRewardModel

    try:
        source = check_model_source(init_model_path)
    except (FileNotFoundError, ValueError) as error:
        raise PRMTrainError(f"PRM init model: {error}") from None
    torch.manual_seed(config.seed)
    if config.init == "policy":
        return ProcessRewardModel.from_policy(source, device=device, precision=precision)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return ProcessRewardModel.from_scratch(tokenizer, AutoConfig.from_pretrained(source), device=device,
                                           precision=precision)


def training_items(config: PRMTrainConfig, train: Sequence[QTarget]) -> list:
    """What the trainer batches: target indices (soft_bce), (preferred, other) pairs (bradley_terry) or the
    targets' state groups (soft_bce+listwise)."""
    if config.loss == "soft_bce":
        return list(range(len(train)))
    if config.loss == "bradley_terry":
        return select_bt_pairs(train, config.bt_delta)
    return state_groups(train)


def _features(features: Sequence[float] | None, rows: Sequence[int], device: Any) -> tuple:
    """``(tensor of the rows' features,)`` for a residual PRM's module call, ``()`` without features."""
    if features is None:
        return ()
    return (torch.tensor([features[i] for i in rows], dtype=torch.float32, device=device),)


def _loss(module, items, batch, sequences, q, config, pad_id, device, features=None) -> torch.Tensor:
    """Loss of one micro-batch: ``batch`` indexes ``items`` (see :func:`training_items`); ``features``: the
    residual PRM's log pi_ref per target."""

    def logits_of(rows: list[int]) -> torch.Tensor:  # (len(rows),)
        return module(*left_pad([sequences[i] for i in rows], pad_id, device), *_features(features, rows, device))

    if config.loss == "soft_bce":
        rows = [items[k] for k in batch]
        logits = logits_of(rows)  # (B,)
        return soft_bce_loss(logits, torch.tensor([q[i] for i in rows], device=device))
    if config.loss == "soft_bce+listwise":
        groups = [items[k] for k in batch]
        rows = [i for members in groups for i in members]
        logits = logits_of(rows)  # (targets of the states,)
        positions, start = [], 0  # each state's rows in the concatenated batch
        for members in groups:
            positions.append(list(range(start, start + len(members))))
            start += len(members)
        return soft_bce_listwise_loss(logits, torch.tensor([q[i] for i in rows], device=device), positions,
                                      config.within_weight, config.list_temperature)
    pairs = [items[k] for k in batch]
    logits = logits_of([a for a, _ in pairs] + [b for _, b in pairs])  # (2B,): preferred first, then the others
    return bradley_terry_loss(logits[: len(pairs)], logits[len(pairs):])


def _write_json_atomic(path: Path, data: Any) -> None:
    from agentprm.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _save_model_atomic(prm: Any, folder: Path, card: dict[str, Any]) -> None:
    from agentprm.atomic import atomic_directory
    from agentprm.models.residual_prm import ResidualPRM

    with atomic_directory(folder, overwrite=True) as staging:
        if isinstance(prm, ResidualPRM):  # writes its own card (kind, w) over ``card``
            prm.save_pretrained(staging, card)
        else:
            prm.save_pretrained(staging)
            (staging / "agentprm_prm.json").write_text(json.dumps(card, indent=2) + "\n")


def train_prm(config: PRMTrainConfig, targets: list[QTarget], init_model_path: str | Path, out_dir: str | Path,
              prompt_config: PromptConfig, metrics: MetricsLogger | None = None, iteration: int = 0,
              device: str = "auto", precision: str = "fp32") -> dict:
    """Train a PRM on the "train" targets, validate on the "val" ones, save ``out_dir/model``; return a summary.
    Runs on ``device`` in ``precision`` (models/device.py: bf16 autocast in every forward pass).

    ``metrics``: a logger to write to (e.g. the run's); default ``out_dir/metrics.jsonl`` with stage "prm" and
    ``iteration``.
    """
    from accelerate import Accelerator

    config.validate()
    out = Path(out_dir)
    train = [t for t in targets if t.split == "train"]
    val = [t for t in targets if t.split == "val"]
    items = training_items(config, train)
    if not items:
        raise PRMTrainError(f"no training {'pairs' if config.loss == 'bradley_terry' else 'targets'} "
                            f"({len(train)} train targets; bt_delta={config.bt_delta})")
    accelerator = Accelerator(cpu=resolve_device(device).type == "cpu")
    device = accelerator.device
    prm = _load_prm(config, init_model_path, device, precision)
    train_seqs = encode_targets(train, prm.tokenizer, prompt_config, config.max_length)
    lengths = None
    if config.group_by_length:  # a pair or a state group costs as much as its longest sequence
        lengths = [len(train_seqs[i]) if isinstance(i, int) else max(len(train_seqs[j]) for j in i) for i in items]
    val_seqs = encode_targets(val, prm.tokenizer, prompt_config, config.max_length)
    train_q, val_q = [t.q for t in train], [t.q for t in val]
    reference = train_features = val_features = None
    if config.kind == "residual":  # ell = log pi_ref(a|s) of the frozen initial policy, once per target
        from agentprm.models.policy import Policy

        reference = Policy.from_pretrained(init_model_path, device=device, precision=precision)
        train_features, val_features = (
            reference.score_pairs([render_prompt(state_from_target(t), prompt_config, reference.tokenizer)
                                   for t in split], [t.response for t in split], config.eval_batch_size)
            for split in (train, val))

    own_metrics = metrics is None
    if own_metrics:
        metrics = MetricsLogger(out / "metrics.jsonl", "prm", iteration=iteration, tensorboard_dir=out / "tensorboard",
                                enabled=accelerator.is_main_process)

    def micro_batch_loss(module: torch.nn.Module, batch: list[int]) -> torch.Tensor:
        return _loss(module, items, batch, train_seqs, train_q, config, prm.pad_id, device, train_features)

    def val_scores(module: torch.nn.Module) -> list[float]:
        return predict_scores(module, val_seqs, prm.pad_id, device, config.eval_batch_size, val_features)

    start_time = time.perf_counter()
    try:
        module, losses, total_steps = fit_prm_module(
            config, prm, accelerator, len(items), lengths, micro_batch_loss, metrics,
            (lambda module: {"val_bce": validation_bce(val_scores(module), val_q)}) if val else None,
            policy_weight=config.policy_weight if reference is not None else None)
    finally:
        if own_metrics:
            metrics.close()

    # -- validation report, summary, save ----------------------------------------------------------------------------
    scores = val_scores(module)
    report = prm_validation_report(val, scores, config.calibration_bins, config.first_steps)
    sample = list(range(0, len(train), math.ceil(len(train) / 128) or 1))  # at most 128 train targets
    train_scores = predict_scores(module, [train_seqs[i] for i in sample], prm.pad_id, device, config.eval_batch_size,
                                  None if train_features is None else [train_features[i] for i in sample])
    summary = {"steps": total_steps, "loss": config.loss, "train_targets": len(train), "val_targets": len(val),
               "train_items": len(items), "train_multi_action_states": state_counts(train)["multi_action_states"],
               "first_loss": losses[0], "final_loss": losses[-1],
               "train_bce": validation_bce(train_scores, [train_q[i] for i in sample]), "val_bce": report["bce"],
               "early_step_auc": report["early_step_auc"], "ece": report["ece"],
               "seconds": time.perf_counter() - start_time, "model": "model"}  # relative: the run renames the folder
    if reference is not None:
        from agentprm.models.residual_prm import ResidualPRM

        weight = float(accelerator.unwrap_model(module).policy_weight.detach())
        summary.update(kind="residual", policy_weight_init=config.policy_weight, policy_weight=weight)
        prm = ResidualPRM(prm, reference, weight)
    if accelerator.is_main_process:
        _write_outputs(out, prm, config, report, summary, val, scores, iteration)
    accelerator.wait_for_everyone()
    return summary


def fit_prm_module(config: PRMTrainConfig, prm: Any, accelerator: Any, num_items: int, lengths: list[int] | None,
                   micro_batch_loss: Any, metrics: MetricsLogger, evaluate: Any = None,
                   desc: str = "prm", policy_weight: float | None = None) -> tuple[torch.nn.Module, list[float], int]:
    """The optimisation shared by the PRM trainers: AdamW, linear warm-up then cosine decay, ``num_items`` items in
    seeded (length-grouped when ``lengths``) batches of ``config.batch_size``, ``config.grad_accum`` micro-batches
    per step, clipping; logs ``loss`` and ``lr`` every step and ``evaluate(module)``'s dict every ``eval_every``
    steps and at the end. ``micro_batch_loss(module, batch)`` gives the mean loss of a micro-batch of item indices
    (an item is a target, a pair or a state: :func:`training_items`). Returns the (prepared) module, the per-step
    losses and the number of steps. ``policy_weight``: the residual PRM's initial w (a parameter of the module,
    without weight decay)."""
    from tqdm import tqdm

    steps_per_epoch = max(1, math.ceil(math.ceil(num_items / config.batch_size) / config.grad_accum))
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    module = _LogitModule(prm, policy_weight)
    groups = [{"params": [p for p in module.model.parameters() if p.requires_grad]}]
    if module.policy_weight is not None:
        groups.append({"params": [module.policy_weight], "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, config.warmup_steps, total_steps, config.min_lr_ratio))
    # The scheduler stays outside accelerate, which would step it once per process: one step per optimiser step.
    module, optimizer = accelerator.prepare(module, optimizer)
    losses: list[float] = []
    module.train()
    for step in tqdm(range(1, total_steps + 1), desc=desc, disable=not config.progress):
        epoch, within = divmod(step - 1, steps_per_epoch)
        window = batch_order(num_items, config.batch_size, config.seed, epoch, lengths)
        window = window[within * config.grad_accum: (within + 1) * config.grad_accum]
        losses.append(_optimiser_step(window, lambda batch: micro_batch_loss(module, batch), module, optimizer,
                                      scheduler, accelerator, config.max_grad_norm))
        metrics.log(step, loss=losses[-1], lr=scheduler.get_last_lr()[0])
        if evaluate is not None and (step % config.eval_every == 0 or step == total_steps):
            metrics.log(step, **evaluate(module))
    return module, losses, total_steps


def _optimiser_step(window, micro_batch_loss, module, optimizer, scheduler, accelerator, max_grad_norm) -> float:
    """One update over the micro-batches of ``window``; returns the window's mean loss.

    The window is split over the processes (:func:`process_share`). Each micro-batch b contributes
    ``loss_b * |b| * P / |window|`` to its process's backward pass; DDP averages gradients over the P processes, so
    the update is that of the window's mean loss, exactly as one process would compute it over the whole window."""
    window_size = sum(len(batch) for batch in window)
    share, factor = process_share(window, accelerator)
    scale = factor * accelerator.num_processes / window_size
    loss_sum = torch.zeros((), device=accelerator.device)
    for index, batch in enumerate(share):
        sync = index == len(share) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(module):
            loss = micro_batch_loss(batch)
            accelerator.backward(loss * len(batch) * scale)  # window mean = one large batch's mean
        loss_sum += loss.detach() * len(batch) * factor
    loss_sum = accelerator.reduce(loss_sum, reduction="sum") if accelerator.num_processes > 1 else loss_sum
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_(module.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss_sum) / window_size


def _write_outputs(out: Path, prm: Any, config: PRMTrainConfig, report: dict, summary: dict,
                   val: Sequence[QTarget], val_scores: Sequence[float], iteration: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _save_model_atomic(prm, out / "model", {"config": asdict(config), "iteration": iteration,
                                            "train_targets": summary["train_targets"]})
    _write_json_atomic(out / "validation.json", report)
    lines = [json.dumps({"key": t.key, "game_id": t.game_id, "step_index": t.step_index, "q": t.q, "score": s})
             for t, s in zip(val, val_scores)]
    tmp = out / ".val_predictions.jsonl.tmp"
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, out / "val_predictions.jsonl")
    _write_json_atomic(out / "prm_summary.json", summary)


def main(argv: Sequence[str] | None = None) -> int:
    """Train a PRM from a targets Parquet file outside a run, e.g. on several processes::

        accelerate launch --config_file configs/accelerate/ddp.yaml -m agentprm.algorithms.prm_training \\
            RUN/iter_1/targets/targets.parquet RUN/iter_0/policy/model OUT lr=1e-5 batch_size=32

    ``key=value`` overrides set :class:`PRMTrainConfig` fields; ``--template`` the prompt template the policy uses.
    """
    from agentprm.algorithms.mc_targets import targets_from_parquet
    from agentprm.algorithms.trainer_cli import trainer_arguments

    args, config, prompt = trainer_arguments("agentprm.algorithms.prm_training", main.__doc__, PRMTrainConfig, [
        ("targets", "targets Parquet file (a run's iter_i/targets/targets.parquet)"),
        ("model", "initial model: a policy checkpoint (the PRM gets a new scalar head)"),
        ("out", "output folder (model/, validation.json, prm_summary.json, metrics.jsonl)")], argv)
    summary = train_prm(config, targets_from_parquet(args.targets), args.model, args.out, prompt)
    print(json.dumps({k: v for k, v in summary.items() if isinstance(v, (int, float, str))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
