"""Training the implicit PRM on episode outcomes (Yuan et al. 2024; the model: :mod:`agentprm.models.implicit_prm`).

For an episode tau = (s_0, a_0, ..., s_{T-1}, a_{T-1}) with outcome y in {0, 1} (won), the implicit outcome score
is the sum of its steps' process scores,

    r_phi(tau) = sum_t z(s_t, a_t),        z(s, a) = beta * [ log pi_phi(a | s) - log pi_ref(a | s) ],

and the loss is the episode cross-entropy (Yuan et al.'s CE objective):

    L = - mean_tau [ y log sigmoid(r_phi(tau)) + (1 - y) log(1 - sigmoid(r_phi(tau))) ].

Its gradient through step t of episode tau is beta * (sigmoid(r_phi(tau)) - y) * grad log pi_phi(a_t | s_t) / E,
so a micro-batch of E episodes is trained in two passes over its steps, chunked to bound memory: a forward pass
without gradient gives every r_phi(tau); then each chunk of steps backpropagates the surrogate
sum_t c_tau(t) log pi_phi(a_t | s_t) with the fixed coefficients c_tau = beta (sigmoid(r_phi(tau)) - y) / E, whose
gradient is exactly grad L. log pi_ref is computed once, before training.

``outcome: mean_bias`` (``prm.outcome``) scores an episode instead by a learnt offset plus the MEAN of its steps,

    r_phi(tau) = b + (1 / T_tau) sum_t z(s_t, a_t),        b initialised to logit(training win rate),

whose gradient through step t is beta (sigmoid(r) - y) grad log pi_phi(a_t | s_t) / (E T_tau), and through b
sum_tau (sigmoid(r) - y) / E. Why: with the sum, an action the policy takes at every step is pushed down by a
failed episode once per step and up by a win once per step, so where failures are longer than wins (in ALFWorld a
failure runs the 30-step budget, a win ends early) the policy's favoured actions drift down against the ones it
never takes, and with no offset the base rate of success can only be expressed through the actions' scores. With
the mean, each episode pushes its actions by the same total whatever its length, and b carries the base rate, so at
initialisation (sigmoid(r) = p for every episode) the net push on an action taken at a constant rate is
sum_tau (p - y_tau) = 0. b is not part of the process score z (a state's actions are ranked by z alone).

No process label is read: only outcomes. Steps replayed from an expert prefix or a branch's recorded prefix
(``extras["reset"]`` / ``extras["branch_prefix"]``) were not chosen by the policy there and are left out of the
sum. Episodes of validation games (``sft_data.in_validation``, the targets' split) are held out; the report on
the validation targets is the scalar PRM's (``prm_training.prm_validation_report``), so both kinds of PRM are
compared on the same diagnostics. One process (no ``accelerate launch`` sharding yet).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from agentprm.algorithms.sft import batch_order, lr_lambda
from agentprm.algorithms.sft_data import in_validation
from agentprm.data import TrajectoryRecord
from agentprm.metrics import MetricsLogger
from agentprm.models.device import autocast, resolve_device
from agentprm.models.policy import encode_responses, left_pad, position_ids_from_mask
from agentprm.models.prompts import PromptConfig, PromptState, encode_prompts_within, render_prompt

REPLAYED = ("reset", "branch_prefix")


@dataclass
class EpisodeSteps:
    """The policy-chosen steps of one episode as (prompt ids, response ids) and its outcome."""

    steps: list[tuple[list[int], list[int]]]
    won: bool
    game_id: str


OUTCOMES = ("sum", "mean_bias")


def episode_scores(step_scores: torch.Tensor, episode_of_step: torch.Tensor, episodes: int, outcome: str = "sum",
                   bias: torch.Tensor | float = 0.0) -> torch.Tensor:
    """r_e of every episode (E,): sum_t z_t ("sum"), or bias + mean_t z_t ("mean_bias"); step_scores (S,) = z,
    episode_of_step (S,) long in [0, E)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    r = torch.zeros(episodes, dtype=step_scores.dtype, device=step_scores.device)
    r = r.index_add(0, episode_of_step, step_scores)  # (E,)
    if outcome == "sum":
        return r
    return bias + r / episode_lengths(step_scores, episode_of_step, episodes)


def episode_lengths(step_scores: torch.Tensor, episode_of_step: torch.Tensor, episodes: int) -> torch.Tensor:
    """T_e, the steps of every episode (E,), at least 1, in step_scores' dtype and device."""
    lengths = torch.zeros(episodes, dtype=step_scores.dtype, device=step_scores.device)
    return lengths.index_add(0, episode_of_step, torch.ones_like(step_scores)).clamp(min=1)


def outcome_loss(step_scores: torch.Tensor, episode_of_step: torch.Tensor, labels: torch.Tensor,
                 outcome: str = "sum", bias: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Episode cross-entropy: BCE(sigmoid(r_e), y_e) averaged over the E episodes, r_e by :func:`episode_scores`.
    step_scores (S,) = z, episode_of_step (S,) long in [0, E), labels (E,) in {0, 1}."""
    r = episode_scores(step_scores, episode_of_step, labels.shape[0], outcome, bias)
    return F.binary_cross_entropy_with_logits(r, labels.to(r.dtype))


def episode_steps(records: Sequence[TrajectoryRecord], tokenizer: Any, prompt: PromptConfig,
                  max_length: int) -> list[EpisodeSteps]:
    """Every record with at least one policy-chosen step, its steps tokenised as the policy reads them; a step that
    would exceed ``max_length`` shows fewer of the oldest history steps (``prompts.encode_prompts_within``, the
    rule of SFT and of the scalar PRM)."""
    out = []
    for record in records:
        chosen = [t for t, step in enumerate(record.steps) if not any(step.extras.get(k) for k in REPLAYED)]
        if not chosen:
            continue
        states = [PromptState.from_trajectory(record, t) for t in chosen]
        responses = encode_responses(tokenizer, [record.steps[t].response for t in chosen])
        budgets = [max_length - len(r) for r in responses]
        if min(budgets) < 2:
            raise ValueError(f"max_length {max_length} leaves no room for a prompt (response: "
                             f"{max_length - min(budgets)} tokens)")
        prompts = encode_prompts_within(states, prompt, tokenizer, budgets)
        out.append(EpisodeSteps(list(zip(prompts, responses)), record.won, record.game_id))
    return out


def response_logprobs(model: Any, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int,
                      device: Any, precision: str = "fp32") -> torch.Tensor:
    """sum_t log pi(response_t | prompt, response_<t) per (prompt ids, response ids) pair, with grad -> (B,).
    The definition of ``Policy.sequence_logprobs`` (temperature 1, raw logits); ``precision: bf16`` runs the
    forward pass under bf16 autocast (models/device.py)."""
    ids, mask = left_pad([p + r for p, r in pairs], pad_id, device)  # (B, L)
    resp_len = torch.tensor([len(r) for _, r in pairs], device=device)  # (B,)
    max_r = int(resp_len.max())
    with autocast(device, precision):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                       logits_to_keep=max_r + 1, use_cache=False).logits.float()  # (B, max_r + 1, V)
    targets = ids[:, -max_r:]  # (B, max_r)
    tok_lp = logits[:, :-1].log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, max_r)
    in_response = torch.arange(max_r, device=device).unsqueeze(0) >= (max_r - resp_len).unsqueeze(1)
    return (tok_lp * in_response).sum(-1)


def _flat_logprobs(model: Any, pairs: list[tuple[list[int], list[int]]], pad_id: int, device: Any,
                   chunk: int, precision: str = "fp32") -> torch.Tensor:
    """Log-probs of many pairs without gradient, length-sorted chunks -> (N,)."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    out = torch.zeros(len(pairs), dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(order), chunk):
            idx = order[start:start + chunk]
            out[idx] = response_logprobs(model, [pairs[i] for i in idx], pad_id, device, precision).double().cpu()
    return out


def outcome_backward(model: Any, pairs: list[tuple[list[int], list[int]]], owner: torch.Tensor,
                     labels: torch.Tensor, ref_logprobs: torch.Tensor, beta: float, weight: float, pad_id: int,
                     device: Any, chunk: int, precision: str = "fp32", outcome: str = "sum",
                     bias: torch.Tensor | None = None) -> float:
    """Accumulate ``weight`` * grad of :func:`outcome_loss` (z = beta (log pi_phi - log pi_ref) per step) into the
    model's gradients (and, for ``outcome="mean_bias"``, into ``bias.grad``, a scalar parameter), in the two chunked
    passes of the module doc; return the loss summed over the E episodes. ``owner`` (S,) maps steps to episodes,
    ``labels`` (E,), ``ref_logprobs`` (S,)."""
    z = beta * (_flat_logprobs(model, pairs, pad_id, device, chunk, precision) - ref_logprobs)  # (S,) f64, no grad
    episodes = labels.shape[0]
    offset = float(bias.detach()) if bias is not None else 0.0
    r = episode_scores(z, owner, episodes, outcome, offset)  # (E,)
    loss = float(F.binary_cross_entropy_with_logits(r, labels, reduction="sum"))
    d_r = weight * (torch.sigmoid(r) - labels) / episodes  # (E,): dL/dr_e
    if outcome == "mean_bias":
        if bias is not None:  # dL/db = sum_e dL/dr_e
            grad = d_r.sum().to(dtype=bias.dtype, device=bias.device).reshape(bias.shape)
            bias.grad = grad if bias.grad is None else bias.grad + grad
        d_r = d_r / episode_lengths(z, owner, episodes)
    coefficient = beta * d_r  # dL/dz of each episode's steps, times dz/dlog pi_phi
    for start in range(0, len(pairs), chunk):
        part = slice(start, start + chunk)
        lp = response_logprobs(model, pairs[part], pad_id, device, precision)  # (C,)
        (coefficient[owner[part]].to(device=device, dtype=lp.dtype) * lp).sum().backward()
    return loss


def train_implicit_prm(config: Any, records: Sequence[TrajectoryRecord], init_model_path: str | Path,
                       out_dir: str | Path, prompt: PromptConfig, val_targets: Sequence[Any] = (),
                       val_fraction: float = 0.1, metrics: MetricsLogger | None = None, iteration: int = 0,
                       device: str = "auto", precision: str = "fp32") -> dict:
    """Train phi (from ``init_model_path``, also the reference) on the outcomes of the training games' episodes;
    save the implicit PRM to ``out_dir/model``; report on ``val_targets`` as the scalar PRM does. ``config`` is a
    ``PRMTrainConfig`` (lr, epochs or max_steps, batch_size = EPISODES per micro-batch, grad_accum, warm-up,
    weight decay, clipping, eval_batch_size = sequences per chunk, seed, beta); on ``device`` in ``precision``
    (models/device.py)."""
    from tqdm import tqdm

    from agentprm.algorithms.prm_training import PRMTrainError

    from agentprm.models.implicit_prm import ImplicitPRM
    from agentprm.models.policy import Policy

    config.validate()
    out = Path(out_dir)
    torch.manual_seed(config.seed)
    device = resolve_device(device)
    reference = Policy.from_pretrained(init_model_path, device=device, precision=precision)
    phi = Policy.from_pretrained(init_model_path, device=device, precision=precision)
    device, pad_id = phi.device, phi.pad_id
    train_records = [r for r in records if not in_validation(r.game_id, val_fraction)]
    episodes = episode_steps(train_records, phi.tokenizer, prompt, config.max_length)
    if not episodes:
        raise PRMTrainError(f"no training episodes with a policy step ({len(records)} records, "
                            f"{len(train_records)} of training games)")
    flat = [pair for e in episodes for pair in e.steps]
    offsets = [0]
    for e in episodes:
        offsets.append(offsets[-1] + len(e.steps))
    ref_lp = _flat_logprobs(reference.model, flat, pad_id, device, config.eval_batch_size, precision)  # (N,)
    beta = config.beta

    model = phi.model
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    bias = None
    if config.outcome == "mean_bias":  # b starts at the logit of the training win rate (module doc)
        rate = min(max(sum(e.won for e in episodes) / len(episodes), 1e-3), 1 - 1e-3)
        bias = torch.nn.Parameter(torch.tensor(math.log(rate / (1 - rate)), dtype=torch.float64))
        groups.append({"params": [bias], "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(math.ceil(len(episodes) / config.batch_size) / config.grad_accum))
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, config.warmup_steps, total_steps, config.min_lr_ratio))
    own_metrics = metrics is None
    if own_metrics:
        metrics = MetricsLogger(out / "metrics.jsonl", "prm", iteration=iteration)
    start_time = time.perf_counter()
    losses: list[float] = []
    try:
        model.train()
        for step in tqdm(range(1, total_steps + 1), desc="implicit prm", disable=not config.progress):
            epoch, within = divmod(step - 1, steps_per_epoch)
            window = batch_order(len(episodes), config.batch_size, config.seed, epoch, None)
            window = window[within * config.grad_accum: (within + 1) * config.grad_accum]
            size = sum(len(batch) for batch in window)
            loss_sum = 0.0
            for batch in window:
                rows = [k for e in batch for k in range(offsets[e], offsets[e + 1])]
                owner = torch.tensor([j for j, e in enumerate(batch) for _ in range(offsets[e], offsets[e + 1])])
                labels = torch.tensor([float(episodes[e].won) for e in batch], dtype=torch.float64)
                loss_sum += outcome_backward(model, [flat[k] for k in rows], owner, labels, ref_lp[rows], beta,
                                             len(batch) / size, pad_id, device, config.eval_batch_size, precision,
                                             outcome=config.outcome, bias=bias)
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss_sum / size)
            metrics.log(step, loss=losses[-1], lr=scheduler.get_last_lr()[0])
    finally:
        if own_metrics:
            metrics.close()
    model.eval()
    prm = ImplicitPRM(phi, reference, beta)
    return _finish(prm, config, out, val_targets, prompt, losses, total_steps, len(episodes),
                   sum(e.won for e in episodes), time.perf_counter() - start_time, iteration,
                   None if bias is None else float(bias.detach()))


def _finish(prm: Any, config: Any, out: Path, val_targets: Sequence[Any], prompt: PromptConfig, losses: list[float],
            total_steps: int, episodes: int, won: int, seconds: float, iteration: int,
            bias: float | None = None) -> dict:
    """Validation report on the targets (as the scalar PRM's), summary, and the saved model."""
    from agentprm.algorithms.mc_targets import state_from_target
    from agentprm.algorithms.prm_training import prm_validation_report
    from agentprm.atomic import atomic_directory, write_text_atomic

    val = list(val_targets)
    scores = prm.score([render_prompt(state_from_target(t), prompt, prm.tokenizer) for t in val],
                       [t.response for t in val]) if val else []
    report = prm_validation_report(val, scores, config.calibration_bins, config.first_steps)
    summary = {"kind": "implicit", "beta": config.beta, "outcome": config.outcome, "bias": bias,
               "steps": total_steps, "train_episodes": episodes, "train_won": won,
               "val_targets": len(val), "first_loss": losses[0], "final_loss": losses[-1], "val_bce": report["bce"],
               "early_step_auc": report["early_step_auc"], "ece": report["ece"], "seconds": seconds,
               "model": "model"}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out / "model", overwrite=True) as staging:
        prm.save_pretrained(staging, {"config": asdict(config), "iteration": iteration})
    write_text_atomic(out / "validation.json", json.dumps(report, indent=2) + "\n")
    lines = [json.dumps({"key": t.key, "game_id": t.game_id, "step_index": t.step_index, "q": t.q, "score": s})
             for t, s in zip(val, scores)]
    write_text_atomic(out / "val_predictions.jsonl", "".join(line + "\n" for line in lines))
    write_text_atomic(out / "prm_summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
