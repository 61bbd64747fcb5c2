"""The exact KL-regularised policy step over a finite action set (AgentPRM stage 3, Eq. 3 in closed form).

Eq. 3 at one state s, for a policy constrained to the admissible actions A(s) (``policy.mode: admissible``):

    max_pi  J(pi) = sum_a pi(a) Q(s, a) - beta * sum_a pi(a) log(pi(a) / pi_prev(a)),   sum_a pi(a) = 1.

Setting the derivative of the Lagrangian J - mu (sum_a pi(a) - 1) to zero,

    Q(a) - beta (log(pi(a) / pi_prev(a)) + 1) - mu = 0   =>   pi*(a) = pi_prev(a) exp(Q(a) / beta) / Z(s),
    Z(s) = sum_b pi_prev(b) exp(Q(b) / beta),   J(pi*) = beta log Z(s) >= J(pi_prev) = E_{pi_prev}[Q].

J is strictly concave in pi, so pi* is the unique maximiser. Limits: beta -> infinity leaves pi_prev; beta -> 0 puts
pi_prev's mass on the Q-argmax actions only (renormalised among tied maxima). pi* orders actions by
Q + beta log pi_prev: the "Q + lambda log pi" ranking with lambda = beta.

pi_i is fitted to pi* on the rollouts' states by the cross-entropy

    L(theta) = - mean_s sum_{a in A(s)} pi*(a|s) log pi_theta(a|s),
    pi_theta(a|s) = softmax_{a in A(s)} log p_theta(a|s),

with log p_theta(a|s) the response's full log-probability (the admissible-constrained policy at temperature 1, the
agents' definition). L = KL(pi* || pi_theta) + H(pi*), minimised exactly at pi_theta = pi*. Online DPO reaches the
same optimum only in the limit of infinite samples and a correct sigmoid weighting; this step uses every admissible
action's Q at every state, so nothing is skipped as a tie.

Q comes from a PRM (``q_source: prm``: every admissible action scored once per state) or, as the control that shows
what the PRM's generalisation adds, from the rollouts' own Monte Carlo estimates (``q_source: mc``): only the
actions with an estimate form A(s), and the step is exact on that subset (pi_prev and pi_theta renormalised over
it), leaving the total mass of the unestimated actions to the cross-entropy's indifference.

Logged (stage ``kl``, means over ``log_every`` steps): ``loss`` (the cross-entropy), ``kl_to_target``
(KL(pi* || pi_theta)), ``target_kl`` (KL(pi* || pi_prev): how far the target moves), ``target_q_gain``
(E_{pi*}[Q] - E_{pi_prev}[Q]), ``q_gain`` (E_{pi_theta}[Q] - E_{pi_prev}[Q]), ``kl_to_reference``
(KL(pi_theta || pi_prev), exact on the action set), ``objective_gain`` (J(pi_theta) - J(pi_prev)), ``actions``
(mean |A(s)|) and ``grad_norm``. With ``monitor_every`` and a ``DPOValidation``, online DPO's reward-hacking monitor
takes its readings at step 0, every ``monitor_every`` steps and at the end, and ``keep_best`` returns the best
reading's policy (the paper's "best policy on a validation set"; step 0 is pi_{i-1}), with ``keep_margin`` only when
its success is that much above the last reading's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, Sequence

import torch
from torch import Tensor

from agentprm.algorithms.dpo import sequence_logprobs_with_grad
from agentprm.config import above, at_least
from agentprm.metrics import MetricsLogger
from agentprm.models.device import resolve_device
from agentprm.models.policy import Policy, encode_prompts, encode_responses
from agentprm.models.prompts import PromptConfig, PromptState, candidate_actions, format_response, render_prompt

__all__ = ["KLStepConfig", "KLState", "kl_target", "kl_objective", "target_cross_entropy", "kl_step_loop",
           "train_kl_policy"]


class ResponseScorer(Protocol):
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Sequence[float]: ...


@dataclass
class KLStepConfig:
    beta: float = field(default=0.1, metadata={
        "range": above(0), "help": "KL strength: pi* = pi_prev exp(Q / beta) / Z; small beta follows Q, large beta "
                                   "stays at pi_{i-1}"})
    lr: float = field(default=1e-4, metadata={"range": above(0), "help": "AdamW learning rate"})
    steps: int = field(default=150, metadata={"range": at_least(1), "help": "optimiser steps"})
    states_per_step: int = field(default=16, metadata={
        "range": at_least(1), "help": "states per optimiser step (every admissible action of each is scored and "
                                      "trained)"})
    rows_per_forward: int = field(default=256, metadata={
        "range": at_least(1), "help": "(state, action) rows per forward/backward pass; gradients accumulate over the "
                                      "step"})
    q_source: Literal["prm", "mc"] = field(default="prm", metadata={
        "help": "prm: Q from the iteration's PRM for every admissible action; mc: the rollouts' Monte Carlo "
                "estimates, only where a state has two or more estimated actions (the no-PRM control)"})
    max_grad_norm: float = field(default=1.0, metadata={"range": at_least(0), "help": "gradient clipping (0 = off)"})
    seed: int = field(default=0, metadata={"range": at_least(0), "help": "seeds the state draws"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    log_every: int = field(default=10, metadata={
        "range": at_least(1), "help": "log the means of the metrics every N steps"})
    monitor_every: int = field(default=0, metadata={"range": at_least(0), "help": "validation readings (PRM score "
                                                    "and true success, as online DPO's monitor) every N steps "
                                                    "(0 = off)"})
    keep_best: bool = field(default=True, metadata={"help": "with the monitor on, return the policy of the reading "
                                                            "with the best validation success"})
    monitor_tolerance: float = field(default=0.0, metadata={"range": at_least(0), "help": "reward-hacking warning "
                                                            "tolerance (as dpo.monitor_tolerance)"})
    keep_margin: float = field(default=0.0, metadata={"range": at_least(0), "help": "keep the best reading only when "
                                                      "its success is at least this above the last one's (as "
                                                      "dpo.keep_margin)"})

    def validate(self) -> None:
        if not self.beta > 0 or not self.lr > 0:
            raise ValueError(f"kl.beta and kl.lr must be > 0, got beta={self.beta}, lr={self.lr}")
        for name in ("steps", "states_per_step", "rows_per_forward", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"kl.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_grad_norm < 0:
            raise ValueError(f"kl.max_grad_norm must be >= 0, got {self.max_grad_norm}")
        if self.q_source not in ("prm", "mc"):
            raise ValueError(f"kl.q_source must be 'prm' or 'mc', got {self.q_source!r}")


@dataclass
class KLState:
    """One training state: its prompt state, the action set A(s) and, when known (``q_source: mc``), Q per action."""

    state: PromptState
    actions: list[str]
    q: list[float] | None = None

    def __post_init__(self) -> None:
        if len(self.actions) < 1:
            raise ValueError("a KL-step state needs at least one action")
        if self.q is not None and len(self.q) != len(self.actions):
            raise ValueError(f"{len(self.q)} Q values for {len(self.actions)} actions")


# ------------------------------------------------------------------------------------------------ the closed form


def kl_target(prev_logp: Tensor, q: Tensor, beta: float) -> Tensor:
    """pi*(a) = pi_prev(a) exp(Q(a) / beta) / Z over the last dimension; ``prev_logp`` are log-probabilities up to a
    constant (unnormalised is fine). ``beta = inf`` returns pi_prev."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    logits = prev_logp if math.isinf(beta) else prev_logp + q / beta
    return torch.softmax(logits.double(), -1).to(prev_logp.dtype)


def kl_objective(pi: Tensor, prev: Tensor, q: Tensor, beta: float) -> Tensor:
    """J(pi) = E_pi[Q] - beta KL(pi || pi_prev) over the last dimension (``pi``, ``prev`` probabilities)."""
    ratio = torch.where(pi > 0, pi * (pi.clamp_min(1e-300).log() - prev.clamp_min(1e-300).log()), 0.0)
    return (pi * q).sum(-1) - beta * ratio.sum(-1)


def target_cross_entropy(logp: Tensor, target: Tensor) -> Tensor:
    """- sum_a target(a) log softmax(logp)(a): the fitting loss of one state (``logp`` unnormalised, with grad)."""
    return -(target * torch.log_softmax(logp, -1)).sum(-1)


def _kl(p: Tensor, q: Tensor) -> float:
    return float(torch.where(p > 0, p * (p.clamp_min(1e-300).log() - q.clamp_min(1e-300).log()), 0.0).sum())


# ------------------------------------------------------------------------------------------------ the trainer


def _draw(count: int, size: int, generator: torch.Generator) -> list[int]:
    if size <= count:
        return torch.randperm(count, generator=generator)[:size].tolist()
    return torch.randint(count, (size,), generator=generator).tolist()


def _targets(batch: Sequence[KLState], prompts: list[str], responses: list[list[str]], reference: Policy,
             prm: ResponseScorer | None, beta: float) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """pi_prev, Q and pi* per state (no grad): one shared-prompt pass of the reference, one PRM call."""
    prev_logps = reference.score_candidates(prompts, responses)
    needed = [(k, j) for k, s in enumerate(batch) if s.q is None for j in range(len(s.actions))]
    scored: dict[tuple[int, int], float] = {}
    if needed:
        if prm is None:
            raise ValueError("states without Q values need a PRM")
        values = list(prm.score([prompts[k] for k, _ in needed], [responses[k][j] for k, j in needed]))
        if len(values) != len(needed):
            raise ValueError(f"the PRM returned {len(values)} scores for {len(needed)} responses")
        scored = {key: float(v) for key, v in zip(needed, values)}
    prevs, qs, stars = [], [], []
    for k, s in enumerate(batch):
        q = torch.tensor(s.q if s.q is not None else [scored[(k, j)] for j in range(len(s.actions))],
                         dtype=torch.float64)
        prev_logp = torch.tensor(prev_logps[k], dtype=torch.float64)
        prevs.append(torch.softmax(prev_logp, -1))
        qs.append(q)
        stars.append(kl_target(prev_logp, q, beta))
    return prevs, qs, stars


def _update(model, optimizer, accelerator, batch_rows, stars, config: KLStepConfig, pad_id: int,
            num_states: int, precision: str = "fp32") -> tuple[list[Tensor], float]:
    """One optimiser step: forward/backward over groups of whole states (<= rows_per_forward rows when a state
    allows); returns each local state's log p_theta (detached) and the gradient norm."""
    groups: list[list[int]] = [[]]
    for k, rows in enumerate(batch_rows):
        if groups[-1] and sum(len(batch_rows[i]) for i in groups[-1]) + len(rows) > config.rows_per_forward:
            groups.append([])
        groups[-1].append(k)
    optimizer.zero_grad(set_to_none=True)
    logps: list[Tensor] = [torch.empty(0)] * len(batch_rows)
    scale = accelerator.num_processes / num_states
    for g, group in enumerate(groups):
        if not group:
            continue
        rows = [row for k in group for row in batch_rows[k]]
        context = accelerator.no_sync(model) if g < len(groups) - 1 else contextlib.nullcontext()
        with context:
            flat = sequence_logprobs_with_grad(model, [p for p, _ in rows], [r for _, r in rows], pad_id,
                                               precision)  # (R,)
            loss, start = flat.new_zeros(()), 0
            for k in group:
                part = flat[start:start + len(batch_rows[k])].double()
                start += len(batch_rows[k])
                loss = loss + target_cross_entropy(part, stars[k].to(part.device))
                logps[k] = part.detach().cpu()
            accelerator.backward(loss * scale)
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm or float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return logps, float(grad_norm)


class _NoScore:
    """The monitor's PRM reading when the step has no PRM (``q_source: mc``): 0 for every response."""

    def score(self, prompts, responses):
        return [0.0] * len(responses)


def _watch(config: KLStepConfig, policy: Policy, prm, validation, prompt_config: PromptConfig,
           metrics: MetricsLogger):
    """Online DPO's monitor (:class:`agentprm.algorithms.dpo_trainer._Watch`) over this step's policy: readings
    sample one admissible action per held-out state at temperature 1."""
    from agentprm.algorithms.dpo_trainer import DPOConfig, _Watch

    settings = DPOConfig(temperature=1.0, mode="admissible", monitor_every=config.monitor_every,
                         keep_best=config.keep_best, keep_margin=config.keep_margin,
                         monitor_tolerance=config.monitor_tolerance, seed=config.seed)
    return _Watch(settings, policy, prm if prm is not None else _NoScore(), validation, prompt_config, metrics)


def kl_step_loop(config: KLStepConfig, policy: Policy, reference: Policy, prm: ResponseScorer | None,
                 states: Sequence[KLState], prompt_config: PromptConfig | None, metrics: MetricsLogger,
                 validation=None) -> dict:
    """Train ``policy`` in place towards pi* of ``reference`` (pi_{i-1}, frozen) and Q; returns a summary.

    Several processes (``accelerate launch``) draw the same states and split each step's states between them;
    the loss is scaled so that DDP's average is the one-process gradient."""
    from accelerate import Accelerator
    from tqdm import tqdm

    config.validate()
    if not states:
        raise ValueError("the KL step needs at least one state; take states from the latest rollouts")
    prompt_config = prompt_config or PromptConfig()
    accelerator = Accelerator(cpu=policy.device.type == "cpu")
    reference.model.eval().requires_grad_(False)
    policy.model.eval()  # no dropout: the fitted log-probs are the agents'
    optimizer = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=0.0)
    train_model, optimizer = accelerator.prepare(policy.model, optimizer)
    window: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    start = time.perf_counter()
    watch = _watch(config, policy, prm, validation, prompt_config, metrics) if validation and config.monitor_every \
        else None
    if watch:
        watch.read(0)
    bar = tqdm(range(1, config.steps + 1), desc="kl step", disable=not config.progress)
    for step in bar:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        batch = [states[i] for i in _draw(len(states), config.states_per_step, generator)]
        share = list(range(accelerator.process_index, len(batch), accelerator.num_processes))
        local = [batch[i] for i in share] or batch[:1]
        weight = 1.0 if share else 0.0
        prompts = [render_prompt(s.state, prompt_config, policy.tokenizer) for s in local]
        responses = [[format_response(a, "", prompt_config) for a in s.actions] for s in local]
        prevs, qs, stars = _targets(local, prompts, responses, reference, prm, config.beta)
        prompt_ids = encode_prompts(policy.tokenizer, prompts)
        rows = [[(prompt_ids[k], ids) for ids in encode_responses(policy.tokenizer, responses[k])]
                for k in range(len(local))]
        stars_weighted = [s * weight for s in stars]
        logps, grad_norm = _update(train_model, optimizer, accelerator, rows, stars_weighted, config, policy.pad_id,
                                   len(batch), policy.precision)
        values = _step_values(prevs, qs, stars, logps, config.beta) if share else {}
        values = _mean_over_processes(accelerator, values, len(share))
        values["grad_norm"] = grad_norm
        for name, value in values.items():
            window.setdefault(name, []).append(value)
        if step % config.log_every == 0 or step == config.steps:
            last = {name: sum(v) / len(v) for name, v in window.items()}
            metrics.log(step, **last)
            bar.set_postfix(loss=f"{last['loss']:.3f}", kl=f"{last['kl_to_reference']:.3f}")
            window = {}
        if watch and (step % config.monitor_every == 0 or step == config.steps):
            watch.read(step)
    bar.close()
    policy.model = accelerator.unwrap_model(policy.model)
    summary = {"steps": config.steps, "states": len(states), "seconds": time.perf_counter() - start, "final": last}
    if watch:
        summary["monitor"] = watch.finish()
    return summary


_VALUES = ("loss", "kl_to_target", "target_kl", "target_q_gain", "q_gain", "kl_to_reference", "objective_gain",
           "actions")


def _step_values(prevs, qs, stars, logps, beta: float) -> dict[str, float]:
    sums = dict.fromkeys(_VALUES, 0.0)
    for prev, q, star, logp in zip(prevs, qs, stars, logps):
        pi = torch.softmax(logp.double(), -1)
        entropy = -float(torch.where(star > 0, star * star.clamp_min(1e-300).log(), 0.0).sum())
        cross = float(target_cross_entropy(logp.double(), star))
        sums["loss"] += cross
        sums["kl_to_target"] += cross - entropy
        sums["target_kl"] += _kl(star, prev)
        sums["target_q_gain"] += float((star - prev) @ q)
        sums["q_gain"] += float((pi - prev) @ q)
        sums["kl_to_reference"] += _kl(pi, prev)
        sums["objective_gain"] += float(kl_objective(pi, prev, q, beta) - kl_objective(prev, prev, q, beta))
        sums["actions"] += len(q)
    return {name: value / len(prevs) for name, value in sums.items()}


def _mean_over_processes(accelerator, values: dict[str, float], count: int) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return values
    totals = torch.tensor([values.get(name, 0.0) * count for name in _VALUES] + [float(count)],
                          device=accelerator.device)
    totals = accelerator.reduce(totals, reduction="sum").cpu()
    return {name: float(totals[i] / max(float(totals[-1]), 1.0)) for i, name in enumerate(_VALUES)}


# ------------------------------------------------------------------------------------------------ states, saving


def prm_states(states: Sequence[PromptState]) -> list[KLState]:
    """Every state with at least one admissible action, A(s) = its distinct admissible actions (the agents' rule)."""
    return [KLState(s, candidate_actions(s.admissible_actions)) for s in states if s.admissible_actions]


def mc_states(targets: Sequence) -> list[KLState]:
    """The no-PRM control: training-split targets grouped by state (``mc_targets.state_key``); states with two or
    more estimated actions, each action's Q its Monte Carlo estimate."""
    from agentprm.algorithms.mc_targets import state_from_target, state_key

    groups: dict[str, dict[str, float]] = {}
    first: dict[str, object] = {}
    for target in targets:
        if target.split != "train":
            continue
        key = state_key(target)
        groups.setdefault(key, {})[target.action] = float(target.q)
        first.setdefault(key, target)
    out = []
    for key, by_action in groups.items():
        if len(by_action) >= 2:
            actions = list(by_action)
            out.append(KLState(state_from_target(first[key]), actions, [by_action[a] for a in actions]))
    return out


def train_kl_policy(config: KLStepConfig, policy_path: str | Path, prm: ResponseScorer | None,
                    states: Sequence[KLState], out_dir: str | Path, prompt_config: PromptConfig | None = None,
                    metrics: MetricsLogger | None = None, validation=None, device: str = "auto",
                    precision: str = "fp32") -> dict:
    """pi_i = the exact KL step from the checkpoint ``policy_path`` (also the frozen pi_{i-1}) with Q from ``prm``
    (or the states' own Q), on ``device`` in ``precision`` (models/device.py). Writes ``out_dir/model``
    (atomically) and ``out_dir/kl_summary.json``."""
    from accelerate import PartialState

    from agentprm.algorithms.dpo_trainer import _save_model_atomic

    config.validate()
    device = resolve_device(device)
    torch.manual_seed(config.seed)
    policy = Policy.from_pretrained(policy_path, device=device, precision=precision)
    reference = Policy.from_pretrained(policy_path, device=device, precision=precision)
    out = Path(out_dir)
    state = PartialState(cpu=device.type == "cpu")
    own_metrics = metrics is None
    if metrics is None:
        metrics = MetricsLogger(out / "metrics.jsonl", "kl", enabled=state.is_main_process)
    try:
        summary = kl_step_loop(config, policy, reference, prm, states, prompt_config, metrics, validation)
    finally:
        if own_metrics:
            metrics.close()
    summary["model"] = "model"
    if state.is_main_process:
        _save_model_atomic(out / "model", policy, {"reference": str(policy_path), "policy_step": "kl",
                                                   **dataclasses.asdict(config)}, card="agentprm_kl.json")
        (out / "kl_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    state.wait_for_everyone()
    return summary
