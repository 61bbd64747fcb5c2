"""Trajectory-level preference optimisation: an outcome-only baseline for what process rewards buy.

From the rollouts of pi_{i-1}, pair a won episode tau_w with a failed episode tau_l of the SAME game (each episode in
at most one pair) and minimise the sigmoid DPO loss on whole trajectories, with reference pi_ref = pi_{i-1}:

    log pi(tau) = sum over the policy's own steps t of log pi(y_t | s_t)      (y_t = the recorded response)
    h = beta * [ (log pi(tau_w) - log pi_ref(tau_w)) - (log pi(tau_l) - log pi_ref(tau_l)) ]
    L = - mean_pairs log sigmoid(h)

The environment dynamics cancel in the likelihood ratio, so this is the DPO objective for trajectory preferences.
It uses only the episode outcome: one bit per episode, where AgentPRM turns the same rollouts into per-step
targets. Steps replayed from an expert prefix (``extras["reset"]``) are not the policy's and are left out.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agentprm.algorithms.dpo import dpo_loss, sequence_logprobs_with_grad
from agentprm.config import above, at_least
from agentprm.metrics import MetricsLogger
from agentprm.models.policy import Policy, encode_prompts, encode_responses
from agentprm.models.prompts import PromptConfig, PromptState, render_prompt

__all__ = ["TrajectoryDPOConfig", "trajectory_pairs", "train_trajectory_dpo"]


@dataclass
class TrajectoryDPOConfig:
    steps: int = field(default=100, metadata={"range": at_least(1), "help": "optimiser steps"})
    pairs_per_step: int = field(default=4, metadata={
        "range": at_least(1), "help": "(won, failed) trajectory pairs per step"})
    lr: float = field(default=1e-4, metadata={"range": above(0), "help": "AdamW learning rate"})
    beta: float = field(default=0.1, metadata={"range": above(0), "help": "DPO temperature"})
    max_grad_norm: float = field(default=1.0, metadata={"range": at_least(0), "help": "gradient clipping (0 = off)"})
    seed: int = field(default=0, metadata={"range": at_least(0), "help": "seeds the pairing and the pair order"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def validate(self) -> None:
        if self.steps < 1 or self.pairs_per_step < 1:
            raise ValueError("steps and pairs_per_step must be >= 1")
        if self.lr <= 0 or self.beta <= 0 or self.max_grad_norm < 0:
            raise ValueError("lr and beta must be > 0, max_grad_norm >= 0")


def trajectory_pairs(records: Sequence[Any], seed: int = 0) -> list[tuple[int, int]]:
    """(won index, failed index) pairs: per game (first-appearance order), the won and the failed episodes are each
    shuffled with ``random.Random(seed)`` and zipped, so min(#won, #failed) pairs and no episode twice."""
    games: dict[str, tuple[list[int], list[int]]] = {}
    for index, record in enumerate(records):
        games.setdefault(record.game_id, ([], []))[0 if record.won else 1].append(index)
    rng = random.Random(seed)
    pairs = []
    for won, lost in games.values():
        rng.shuffle(won)
        rng.shuffle(lost)
        pairs += list(zip(won, lost))
    return pairs


def _episode_rows(record: Any, policy: Policy, prompt_config: PromptConfig) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) of every step the policy took (replayed reset steps left out)."""
    steps = [t for t, step in enumerate(record.steps) if not step.extras.get("reset")]
    prompts = [render_prompt(PromptState.from_trajectory(record, t), prompt_config, policy.tokenizer) for t in steps]
    return list(zip(encode_prompts(policy.tokenizer, prompts),
                    encode_responses(policy.tokenizer, [record.steps[t].response for t in steps])))


def _trajectory_logps(model: Any, episodes: Sequence[list[tuple[list[int], list[int]]]], pad_id: int) -> torch.Tensor:
    """log pi(tau) per episode, (E,), one padded pass over all their steps."""
    rows = [row for episode in episodes for row in episode]
    per_step = sequence_logprobs_with_grad(model, [p for p, _ in rows], [r for _, r in rows], pad_id)
    sizes = [len(episode) for episode in episodes]
    return torch.stack([part.sum() for part in per_step.split(sizes)])


def train_trajectory_dpo(config: TrajectoryDPOConfig, policy_path: str | Path, records: Sequence[Any],
                         out_dir: str | Path, prompt_config: PromptConfig, metrics: MetricsLogger) -> dict:
    """pi_i from the checkpoint ``policy_path`` (also the frozen reference) on trajectory pairs of ``records``.

    Saves ``out_dir/model`` atomically and returns a summary; with no pair (no game with both a won and a failed
    episode) the policy is saved unchanged and the summary says so.
    """
    from tqdm import tqdm

    from agentprm.algorithms.dpo_trainer import _save_model_atomic

    config.validate()
    policy, reference = Policy.from_pretrained(policy_path), Policy.from_pretrained(policy_path)
    reference.model.eval().requires_grad_(False)
    policy.model.eval()
    pairs = trajectory_pairs(records, config.seed)
    summary: dict[str, Any] = {"pairs": len(pairs), "episodes": len(records),
                               "won": sum(bool(r.won) for r in records), "steps": 0}
    start = time.perf_counter()
    if pairs:
        rows = {i: _episode_rows(records[i], policy, prompt_config) for pair in pairs for i in pair}
        rows = {i: r for i, r in rows.items() if r}
        pairs = [(w, lost) for w, lost in pairs if w in rows and lost in rows]
    if pairs:
        with torch.no_grad():
            ref = {i: float(_trajectory_logps(reference.model, [rows[i]], reference.pad_id)[0]) for i in rows}
        optimizer = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=config.lr,
                                      weight_decay=0.0)
        rng = random.Random(config.seed + 1)
        order: list[tuple[int, int]] = []
        for step in tqdm(range(1, config.steps + 1), desc="trajectory dpo", disable=not config.progress):
            batch = []
            while len(batch) < min(config.pairs_per_step, len(pairs)):
                if not order:
                    order = rng.sample(pairs, len(pairs))
                batch.append(order.pop())
            logps = _trajectory_logps(policy.model, [rows[w] for w, _ in batch] + [rows[lost] for _, lost in batch],
                                      policy.pad_id)
            loss, stats = dpo_loss(logps[: len(batch)], logps[len(batch):], torch.tensor([ref[w] for w, _ in batch]),
                                   torch.tensor([ref[lost] for _, lost in batch]), config.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(policy.model.parameters(), config.max_grad_norm)
            optimizer.step()
            metrics.log(step, loss=loss.item(), dpo_margin=stats["reward_margin"], dpo_accuracy=stats["accuracy"])
        summary |= {"steps": config.steps, "final_loss": loss.item(), "final_margin": stats["reward_margin"]}
    summary["seconds"] = time.perf_counter() - start
    info = {"reference": str(policy_path), "objective": "trajectory_dpo", "pairs": len(pairs)}
    _save_model_atomic(Path(out_dir) / "model", policy, info)
    return summary
