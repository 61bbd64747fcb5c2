"""Online DPO trainer: pi_i from pi_{i-1} and a PRM Q_i (AgentPRM stage 3). Equations: :mod:`agentprm.algorithms.dpo`.

One optimiser step (``config.steps`` of them):

1. draw ``states_per_step`` states (seeded by (seed, step); without replacement when there are enough);
2. render their prompts and sample K = ``samples_per_state`` responses each from the CURRENT policy, no grad:
   ``admissible`` mode samples among the admissible actions (``Policy.sample_admissible``), ``free`` mode
   generates up to ``max_new_tokens`` tokens (``Policy.generate``) and parses them (``parse_response``);
3. score with the PRM (valid responses only; unparsable / non-admissible / unfinished get ``INVALID_SCORE``);
4. ``select_dpo_pairs`` (best vs worst; ties and gaps under ``min_gap`` skipped), the reference log-probs of every
   sample (no grad), the policy log-probs of the pairs (with grad), the sigmoid DPO loss, clip, AdamW step.

Logged (stage ``dpo``, means over ``log_every`` steps): ``prm_reward`` (mean score of the sampled responses,
invalid ones counting INVALID_SCORE), ``valid_fraction``, ``kl_to_reference`` (``sampled_kl_estimate``: the mean of
log pi - log pi_ref over the sampled responses, with log pi the sampling-time log-prob), ``pairs``, ``skipped_ties``,
``pair_fraction`` (the share of the step's states that gave a pair; also in the summary, over all steps) and, on
steps that update, ``loss``, ``dpo_margin``, ``dpo_accuracy``, ``chosen_reward``, ``rejected_reward``,
``grad_norm`` and ``logprob_mismatch`` (max |recomputed log pi - sampling log pi| over the pair responses: ~1e-5 in
fp32; large values mean the loss and the sampler disagree about the tokens).

Deliberate choices and deviations from the reference implementation:

- The reference policy is pi_{i-1} (the checkpoint this stage starts from), frozen, as in Eq. 3.
- The paper's -1 for an unfinished response is extended to unparsable and non-admissible ones (DESIGN.md), and
  such responses rank below every PRM-scored one.
- Ties are skipped instead of pairing an argmax with an argmin that scored the same: a tied pair carries no
  preference. A step without any usable pair makes no update but still counts towards ``steps``, so the number
  of sampling rounds (and the compute) is fixed by the config.
- The policy runs in eval mode (no dropout) while training, so the loss's log-probs are the sampling definition.
- ``admissible`` mode (the default for small models, not in the paper) samples K actions among the distinct
  admissible ones (``prompts.candidate_actions``, the agents' rule), formatted with ``format_response``
  (``"ACTION: <a>"`` for the reason_action template).
- The loss uses the sampled token ids as they are (never re-tokenised text).
- Reward-hacking monitor (``monitor_every`` > 0 and a ``DPOValidation``): readings at step 0, every
  ``monitor_every`` steps and at the end, logged as ``val_prm_score``, ``val_success`` and ``reward_hacking``
  (:mod:`agentprm.algorithms.dpo_monitor`); with ``keep_best`` the returned policy is the reading with the best
  validation success (the paper's "return the best policy on a validation set"), which may be step 0 = pi_{i-1}.
- Several processes (``accelerate launch``): every process draws the same states and samples (same seeds, same
  weights), then the step's pairs are split over the processes; each scales its pairs' loss by
  ``P / len(pairs)`` and DDP averages, so the update is the one-process update. A process left without a pair runs
  one with weight 0, so no process skips the gradient all-reduce its peers wait on. Sampling is not split (every
  process samples the whole step), only the loss's forward and backward passes are.

PRM protocol: any object with ``score(prompts: Sequence[str], responses: Sequence[str]) -> Sequence[float]``
(``ProcessRewardModel`` is one); a response is the text appended to the prompt (the PRM's training format).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Protocol, Sequence

import torch

from agentprm.algorithms.dpo import (
    ScoredResponse,
    dpo_loss,
    sampled_kl_estimate,
    select_dpo_pairs,
    sequence_logprobs_with_grad,
)
from agentprm.algorithms.dpo_monitor import MonitorReading, RewardHackingMonitor
from agentprm.config import above, at_least
from agentprm.metrics import MetricsLogger
from agentprm.models.device import resolve_device
from agentprm.models.parser import parse_response
from agentprm.models.policy import Policy, Sample, encode_prompts
from agentprm.models.prompts import PromptConfig, PromptState, candidate_actions, format_response, render_prompt

__all__ = ["DPOConfig", "DPOValidation", "ResponseScorer", "train_online_dpo", "online_dpo_loop", "sample_responses",
           "score_samples"]


class ResponseScorer(Protocol):
    """What the trainer needs from a PRM: one score per (prompt, response); higher is better."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Sequence[float]: ...


@dataclass
class DPOConfig:
    beta: float = field(default=0.03, metadata={
        "range": above(0), "help": "DPO temperature: strength of the KL leash to pi_{i-1} (paper 0.03)"})
    lr: float = field(default=8e-7, metadata={
        "range": above(0), "help": "AdamW learning rate (paper 8e-7 for Llama-3.2-3B; tiny from-scratch models need "
                                   "~1e-4)"})
    steps: int = field(default=400, metadata={
        "range": at_least(1), "help": "optimiser steps (paper 400); steps without a usable pair count but make no "
                                      "update"})
    states_per_step: int = field(default=8, metadata={"range": at_least(1), "help": "states (prompts) drawn per step"})
    samples_per_state: int = field(default=2, metadata={
        "range": at_least(2), "help": "K responses sampled per state (>= 2; paper 2)"})
    temperature: float = field(default=0.7, metadata={
        "range": above(0), "help": "sampling temperature for the pairs (paper 0.7)"})
    mode: Literal["admissible", "free"] = field(default="admissible", metadata={
        "help": "admissible: sample among the admissible actions; free: generate text and parse it"})
    distinct: bool = field(default=False, metadata={"help": "admissible mode: the K samples of a state are "
                                                            "distinct actions (drawn without replacement), so any "
                                                            "state with two admissible actions gives two"})
    min_gap: float = field(default=0.0, metadata={
        "range": at_least(0), "help": "a pair needs its PRM scores at least this far apart (0 = any difference)"})
    max_new_tokens: int = field(default=64, metadata={
        "range": at_least(1), "help": "free mode: response length limit; a response without EOS by then is invalid "
                                      "(paper 64)"})
    pairs_per_forward: int = field(default=0, metadata={
        "range": at_least(0), "help": "pairs per forward/backward pass, gradients accumulated over the step (0 = all "
                                      "at once)"})
    max_grad_norm: float = field(default=1.0, metadata={"range": at_least(0), "help": "gradient clipping (0 = off)"})
    seed: int = field(default=0, metadata={"range": at_least(0), "help": "seeds the state draws and the sampling"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    log_every: int = field(default=1, metadata={
        "range": at_least(1), "help": "log the means of the metrics every N steps"})
    monitor_every: int = field(default=0, metadata={
        "range": at_least(0), "help": "reward-hacking monitor: PRM score and true success on validation data every N "
                                      "steps (0 = off)"})
    keep_best: bool = field(default=True, metadata={"help": "with the monitor on, return the policy of the "
                                                            "reading with the best validation success"})
    monitor_tolerance: float = field(default=0.0, metadata={
        "range": at_least(0), "help": "warn of reward hacking when the PRM score beats the best reading's while "
                                      "success is more than this below it"})
    keep_margin: float = field(default=0.0, metadata={
        "range": at_least(0), "help": "with keep_best, return the best reading only when its validation success is "
                                      "at least this above the last reading's, else the last (0 = always the best; "
                                      "a reading of 50 games has a standard error of ~0.07)"})

    def validate(self) -> None:
        if self.monitor_every < 0 or self.monitor_tolerance < 0:
            raise ValueError("monitor_every and monitor_tolerance must be >= 0")
        for name in ("steps", "states_per_step", "max_new_tokens", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.samples_per_state < 2:
            raise ValueError(f"samples_per_state must be >= 2 (a pair needs two samples), got {self.samples_per_state}")
        if self.beta <= 0 or self.lr <= 0:
            raise ValueError(f"beta and lr must be > 0, got beta={self.beta}, lr={self.lr}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (0 would sample K identical responses), got {self.temperature}")
        if self.pairs_per_forward < 0 or self.max_grad_norm < 0 or self.min_gap < 0:
            raise ValueError("pairs_per_forward, max_grad_norm and min_gap must be >= 0")
        if self.distinct and self.mode != "admissible":
            raise ValueError("distinct: true draws among the admissible actions: it needs mode: admissible")
        if self.mode not in ("admissible", "free"):
            raise ValueError(f"mode must be 'admissible' or 'free', got {self.mode!r}")


@dataclass
class DPOValidation:
    """What the reward-hacking monitor measures: the PRM's mean score of one sampled response per state of
    ``states`` (held-out states), and ``success(policy)``, the true success rate on validation games (never the
    evaluation games)."""

    states: Sequence[PromptState]
    success: Callable[[Policy], float]


# ----------------------------------------------------------------------------------------------- sampling, scoring


def sample_responses(policy: Policy, states: Sequence[PromptState], prompts: list[str], config: DPOConfig,
                     prompt_config: PromptConfig, seed: int) -> list[list[Sample]]:
    """K samples per prompt from ``policy`` (no grad), in ``config.mode``."""
    k, temperature = config.samples_per_state, config.temperature
    if config.mode == "admissible":
        candidates = [[format_response(a, "", prompt_config) for a in candidate_actions(s.admissible_actions)]
                      for s in states]
        return policy.sample_admissible(prompts, candidates, n=k, temperature=temperature, seed=seed,
                                        replacement=not config.distinct)
    return policy.generate(prompts, n=k, temperature=temperature, max_new_tokens=config.max_new_tokens, seed=seed)


def score_samples(prm: ResponseScorer, states: Sequence[PromptState], prompts: list[str],
                  samples: list[list[Sample]], template: str) -> list[list[ScoredResponse]]:
    """Validity check (finished, parsable, admissible) then one PRM call over the distinct valid texts."""
    valid = [[s.finished and parse_response(s.text, state.admissible_actions, template).matched for s in row]
             for state, row in zip(states, samples)]
    keys = list(dict.fromkeys((i, s.text) for i, row in enumerate(samples)
                              for s, ok in zip(row, valid[i]) if ok))
    scores = list(prm.score([prompts[i] for i, _ in keys], [t for _, t in keys])) if keys else []
    if len(scores) != len(keys):
        raise ValueError(f"the PRM returned {len(scores)} scores for {len(keys)} responses")
    by_key = {key: float(value) for key, value in zip(keys, scores)}
    return [[ScoredResponse(s.text, tuple(s.token_ids), by_key.get((i, s.text), 0.0), ok, s.logprob)
             for s, ok in zip(row, valid[i])] for i, row in enumerate(samples)]


def _draw_states(num_states: int, count: int, generator: torch.Generator) -> list[int]:
    if count <= num_states:
        return torch.randperm(num_states, generator=generator)[:count].tolist()
    return torch.randint(num_states, (count,), generator=generator).tolist()


def _usable_states(states: Sequence[PromptState], mode: str) -> list[PromptState]:
    kept = [s for s in states if s.admissible_actions] if mode == "admissible" else list(states)
    if not kept:
        raise ValueError("online DPO needs at least one state (with admissible actions in admissible mode); "
                         "take states from the latest rollouts")
    return kept


# ----------------------------------------------------------------------------------------------- log-probs, update


def _logprobs_no_grad(model: torch.nn.Module, rows: list[tuple[list[int], tuple[int, ...]]], pad_id: int,
                      chunk: int = 32, precision: str = "fp32") -> list[float]:
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            out += sequence_logprobs_with_grad(model, [p for p, _ in part], [r for _, r in part], pad_id,
                                               precision).tolist()
    return out


def _dpo_update(model, optimizer, accelerator, pairs, prompt_ids, ref_logps, config: DPOConfig,
                pad_id: int, precision: str = "fp32") -> dict[str, float]:
    """One optimiser step on ``pairs`` (this process's share of them); returns the step's loss and DPO statistics
    over all pairs."""
    from agentprm.algorithms.sft import process_share

    ref_c = torch.tensor([ref_logps[p.state_index][p.chosen_index] for p in pairs])  # (P,)
    ref_r = torch.tensor([ref_logps[p.state_index][p.rejected_index] for p in pairs])  # (P,)
    share, factor = process_share(list(range(len(pairs))), accelerator)
    size = config.pairs_per_forward or len(share)
    chunks = [share[start:start + size] for start in range(0, len(share), size)]
    logp_c, logp_r = torch.zeros(len(pairs)), torch.zeros(len(pairs))  # this process's pairs filled in
    optimizer.zero_grad(set_to_none=True)
    for k, part in enumerate(chunks):
        index = torch.tensor(part)
        with contextlib.nullcontext() if k == len(chunks) - 1 else accelerator.no_sync(model):
            prompts = [prompt_ids[pairs[i].state_index] for i in part]
            logps = sequence_logprobs_with_grad(model, prompts * 2, [pairs[i].chosen.token_ids for i in part]
                                                + [pairs[i].rejected.token_ids for i in part], pad_id,
                                                precision).cpu()  # (2c,)
            loss, _ = dpo_loss(logps[:len(part)], logps[len(part):], ref_c[index], ref_r[index], config.beta)
            accelerator.backward(loss * len(part) * factor * accelerator.num_processes / len(pairs))
        if factor:
            logp_c[index], logp_r[index] = logps[:len(part)].detach(), logps[len(part):].detach()
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm or float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if accelerator.num_processes > 1:  # every pair's log-probs, for statistics over the whole step
        logp_c, logp_r = accelerator.reduce(logp_c, reduction="sum"), accelerator.reduce(logp_r, reduction="sum")
    loss, stats = dpo_loss(logp_c, logp_r, ref_c, ref_r, config.beta)
    sampled = torch.tensor([[p.chosen.logprob, p.rejected.logprob] for p in pairs])  # (P, 2)
    mismatch = (torch.stack([logp_c, logp_r], 1) - sampled).abs().max().item()
    return {"loss": loss.item(), "dpo_margin": stats["reward_margin"], "dpo_accuracy": stats["accuracy"],
            "chosen_reward": stats["chosen_reward"], "rejected_reward": stats["rejected_reward"],
            "grad_norm": float(grad_norm), "logprob_mismatch": mismatch}


# ----------------------------------------------------------------------------------------------- the loop


def validation_prm_score(policy: Policy, prm: ResponseScorer, states: Sequence[PromptState], config: DPOConfig,
                         prompt_config: PromptConfig, seed: int) -> float:
    """Mean PRM score of one response per state sampled from ``policy`` (invalid ones count INVALID_SCORE).

    The same ``seed`` at every reading (common random numbers), so readings differ by the policy, not the draw.
    """
    prompts = [render_prompt(s, prompt_config, policy.tokenizer) for s in states]
    one = dataclasses.replace(config, samples_per_state=1)
    scored = score_samples(prm, states, prompts, sample_responses(policy, states, prompts, one, prompt_config, seed),
                           prompt_config.template)
    flat = [r.score for row in scored for r in row]
    return sum(flat) / len(flat)


def _one_step(step, policy, reference, prm, states, config, prompt_config, optimizer, accelerator,
              train_model) -> dict:
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    batch = [states[i] for i in _draw_states(len(states), config.states_per_step, generator)]
    prompts = [render_prompt(s, prompt_config, policy.tokenizer) for s in batch]
    sample_seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    samples = sample_responses(policy, batch, prompts, config, prompt_config, sample_seed)
    scored = score_samples(prm, batch, prompts, samples, prompt_config.template)
    pairs = select_dpo_pairs(scored, config.min_gap)

    prompt_ids = encode_prompts(policy.tokenizer, prompts)
    rows = [(prompt_ids[i], r.token_ids) for i, row in enumerate(scored) for r in row]
    flat_ref = _logprobs_no_grad(reference.model, rows, reference.pad_id, precision=reference.precision)
    offsets = [0]
    for row in scored:
        offsets.append(offsets[-1] + len(row))
    ref_logps = [flat_ref[a:b] for a, b in zip(offsets, offsets[1:])]  # per state, like ``scored``
    flat = [r for row in scored for r in row]
    values = {"prm_reward": sum(r.score for r in flat) / len(flat),
              "valid_fraction": sum(r.valid for r in flat) / len(flat),
              "kl_to_reference": sampled_kl_estimate([r.logprob for r in flat], flat_ref),
              "pairs": float(len(pairs)), "skipped_ties": float(len(batch) - len(pairs)),
              "pair_fraction": len(pairs) / len(batch)}
    if pairs:
        values |= _dpo_update(train_model, optimizer, accelerator, pairs, prompt_ids, ref_logps, config,
                              policy.pad_id, policy.precision)
    return values


def online_dpo_loop(config: DPOConfig, policy: Policy, reference: Policy, prm: ResponseScorer,
                    states: Sequence[PromptState], prompt_config: PromptConfig | None,
                    metrics: MetricsLogger, validation: DPOValidation | None = None) -> dict:
    """Train ``policy`` in place against ``prm`` with ``reference`` frozen; returns a summary (no saving).

    With ``config.monitor_every`` and ``validation``, readings of the reward-hacking monitor are logged and, with
    ``config.keep_best``, ``policy`` ends with the weights of the best reading (``summary["monitor"]``)."""
    from accelerate import Accelerator
    from tqdm import tqdm

    config.validate()
    prompt_config = prompt_config or PromptConfig()
    states = _usable_states(states, config.mode)
    accelerator = Accelerator(cpu=policy.device.type == "cpu")
    reference.model.eval().requires_grad_(False)
    policy.model.eval()  # no dropout: the loss's log-probs are the sampler's
    optimizer = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=0.0)
    # ``train_model`` (DDP-wrapped under several processes) computes the loss; ``policy.model``, the same weights,
    # samples. One process: they are the same object.
    train_model, optimizer = accelerator.prepare(policy.model, optimizer)
    window: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    totals = {"updates": 0, "pairs": 0, "skipped_ties": 0}
    start = time.perf_counter()
    watch = _Watch(config, policy, prm, validation, prompt_config, metrics) if validation and config.monitor_every \
        else None
    if watch:
        watch.read(0)
    bar = tqdm(range(1, config.steps + 1), desc="dpo", disable=not config.progress)
    for step in bar:
        values = _one_step(step, policy, reference, prm, states, config, prompt_config, optimizer, accelerator,
                           train_model)
        totals["updates"] += int(values["pairs"] > 0)
        totals["pairs"] += int(values["pairs"])
        totals["skipped_ties"] += int(values["skipped_ties"])
        for name, value in values.items():
            window.setdefault(name, []).append(value)
        if step % config.log_every == 0 or step == config.steps:
            last = {name: sum(v) / len(v) for name, v in window.items()}
            metrics.log(step, **last)
            bar.set_postfix(reward=f"{last['prm_reward']:.3f}", kl=f"{last['kl_to_reference']:.3f}")
            window = {}
        if watch and (step % config.monitor_every == 0 or step == config.steps):
            watch.read(step)
    bar.close()
    policy.model = accelerator.unwrap_model(policy.model)
    pair_fraction = totals["pairs"] / (config.steps * config.states_per_step)
    summary = {"steps": config.steps, **totals, "pair_fraction": pair_fraction,
               "seconds": time.perf_counter() - start, "final": last}
    if watch:
        summary["monitor"] = watch.finish()
    return summary


class _Watch:
    """Takes the monitor's readings during the loop and keeps a copy of the best weights."""

    def __init__(self, config: DPOConfig, policy: Policy, prm: ResponseScorer, validation: DPOValidation,
                 prompt_config: PromptConfig, metrics: MetricsLogger):
        self.config, self.policy, self.prm, self.validation = config, policy, prm, validation
        self.prompt_config, self.metrics = prompt_config, metrics
        self.monitor = RewardHackingMonitor(config.monitor_tolerance)
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.seed = config.seed * 1_000_003 + 999_983

    def read(self, step: int) -> None:
        states = list(self.validation.states)
        score = validation_prm_score(self.policy, self.prm, states, self.config, self.prompt_config, self.seed) \
            if states else 0.0
        success = float(self.validation.success(self.policy))
        improved, warning = self.monitor.observe(MonitorReading(step, score, success))
        self.metrics.log(step, val_prm_score=score, val_success=success, reward_hacking=float(warning))
        if warning:
            best = self.monitor.best
            print(f"reward hacking? policy step {step}: PRM score {score:.3f} > {best.prm_score:.3f} at step "
                  f"{best.step}, validation success {success:.1%} < {best.success:.1%}", flush=True)
        if improved and self.config.keep_best:
            model = self.policy.model
            model = getattr(model, "module", model)
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def finish(self) -> dict:
        """Load the kept reading's weights (the best one, ``keep_best`` and ``keep_margin``) and return the monitor's
        summary."""
        summary = self.monitor.summary(self.config.keep_best, self.config.keep_margin)
        if summary["selected_step"] != self.monitor.readings[-1].step:
            self.policy.model.load_state_dict(self.best_weights)
        return summary


def train_online_dpo(config: DPOConfig, policy_path: str | Path, prm: ResponseScorer,
                     states: Sequence[PromptState], out_dir: str | Path,
                     prompt_config: PromptConfig | None = None, metrics: MetricsLogger | None = None,
                     validation: DPOValidation | None = None, device: str = "auto",
                     precision: str = "fp32") -> dict:
    """pi_i = online DPO from the checkpoint ``policy_path`` (also the frozen reference pi_{i-1}) against ``prm``,
    on ``device`` in ``precision`` (models/device.py).

    Writes ``out_dir/model`` (``save_pretrained`` model + tokenizer, atomically), ``out_dir/dpo_summary.json``
    and, unless ``metrics`` is given, ``out_dir/metrics.jsonl`` and ``out_dir/tensorboard``. Returns the summary.
    """
    config.validate()
    device = resolve_device(device)
    torch.manual_seed(config.seed)
    policy = Policy.from_pretrained(policy_path, device=device, precision=precision)
    reference = Policy.from_pretrained(policy_path, device=device, precision=precision)
    out = Path(out_dir)
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu")  # as the loop's Accelerator: the first one made sets the process group
    own_metrics = metrics is None
    if metrics is None:
        metrics = MetricsLogger(out / "metrics.jsonl", "dpo", tensorboard_dir=out / "tensorboard",
                                enabled=state.is_main_process)
    try:
        summary = online_dpo_loop(config, policy, reference, prm, states, prompt_config, metrics, validation)
    finally:
        if own_metrics:
            metrics.close()
    summary["model"] = "model"  # relative to the summary's folder, which a run renames when the stage completes
    if state.is_main_process:
        _save_model_atomic(out / "model", policy, {"reference": str(policy_path), **dataclasses.asdict(config)})
        (out / "dpo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    state.wait_for_everyone()
    return summary


def _save_model_atomic(folder: Path, policy: Policy, info: dict, card: str = "agentprm_dpo.json") -> None:
    """``save_pretrained`` into a staging folder, then rename: an interrupted save never leaves a half model."""
    from agentprm.atomic import atomic_directory

    with atomic_directory(folder, overwrite=True) as staging:
        policy.save_pretrained(staging)
        (staging / card).write_text(json.dumps(info, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Online DPO outside a run, e.g. on several processes::

        accelerate launch --config_file configs/accelerate/ddp.yaml -m agentprm.algorithms.dpo_trainer \\
            RUN/iter_0/policy/model RUN/iter_1/prm/model RUN/iter_1/rollouts/shard_000.jsonl OUT steps=100

    The states are every step of the trajectory records (JSONL); ``key=value`` overrides set :class:`DPOConfig`
    fields; ``--template`` is the policy's prompt template.
    """
    from agentprm.algorithms.trainer_cli import trainer_arguments
    from agentprm.data import read_trajectories
    from agentprm.models.implicit_prm import load_prm

    args, config, prompt = trainer_arguments("agentprm.algorithms.dpo_trainer", main.__doc__, DPOConfig, [
        ("policy", "pi_{i-1}: the starting policy and the frozen reference"),
        ("prm", "the PRM checkpoint to optimise against"),
        ("records", "trajectory JSONL whose steps are the training states"),
        ("out", "output folder (model/, dpo_summary.json, metrics.jsonl)")], argv)
    states = [PromptState.from_trajectory(record, t) for record in read_trajectories(args.records)
              for t in range(len(record.steps))]
    summary = train_online_dpo(config, args.policy, load_prm(args.prm), states, args.out,
                               prompt)
    print(json.dumps({k: v for k, v in summary.items() if isinstance(v, (int, float, str))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
