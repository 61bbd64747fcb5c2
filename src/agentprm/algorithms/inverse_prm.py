"""InversePRM: a PRM learned from expert demonstrations and the learner's own rollouts, with NO outcome reward.

Inverse RL as a game (paper, Eq. 9): r_i = argmax_r E_expert[r] - E_{pi_0..i-1}[r], then pi_i = argmax_pi E_pi[r_i].
With the identity r(s, a) = Q(s, a) - gamma * E_{a' ~ pi}[Q(s', a')] the PRM is learned directly as a classifier
of transitions (s, a, s') on the logit difference

    d(s, a, s') = z(s, a) - gamma * z(s', a'),   a' ~ pi_{i-1}(. | s'),   z(s', a') = 0 when the episode ended at s'

(z = the PRM's head logit, Q_phi = sigmoid(z) for scoring), labelled 1 for expert transitions and 0 for learner
transitions aggregated over the rollouts of every past policy pi_0 .. pi_{i-1}, with balanced classes:

    L = - (1/B) sum_b w_b [ y_b log sigmoid(d_b) + (1 - y_b) log(1 - sigmoid(d_b)) ],   w = N / (2 N_class)

so each class carries half of the loss whatever the counts (the mean over the whole set is exactly
0.5 mean_expert + 0.5 mean_learner).

Deviations from the reference implementation, on purpose (paper.md, "Known defects"):
- a' is sampled from pi_{i-1} at the next state for BOTH expert and learner transitions (Eq. 9); the reference code
  resampled it only for experts;
- the train/validation split is by game.

The learner's outcome reward is never read: episodes enter through :func:`outcome_free`, which keeps the game, the
task and per step only the observation, the admissible actions, the action and the response. An episode "ends" at
its last recorded step, whether the expert finished or the learner ran out of steps (z(s', a') = 0 there); telling
the two apart would read the outcome.

The expert side (:func:`expert_transitions`) is the demonstrations SFT imitates: only the WON ones (SFT's
``only_successful``, on by default: a failed demonstration is not expert behaviour), the one outcome this path
reads, and only of the expert. Each expert response is written as the policy writes it, ``format_response(action, reason)``:
demonstrations store the bare command, learner rollouts the sampled response ("ACTION: <a>" under reason_action),
and the classifier must not tell the classes apart by format alone, a difference no response at DPO or Best-of-N
time ever has. In ``free`` mode a learner's generation may carry a REASON line that demonstrations (no reasons)
cannot match; ``admissible`` mode has no such difference.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

from agentprm.algorithms.sft_data import in_validation
from agentprm.models.prompts import PromptConfig, PromptState, candidate_actions, format_response, render_prompt

__all__ = ["OutcomeFreeStep", "OutcomeFreeEpisode", "InverseTransition", "outcome_free", "episode_transitions",
           "expert_episode", "expert_transitions", "class_weights", "inverse_prm_loss", "sample_next_responses"]


@dataclass(frozen=True)
class OutcomeFreeStep:
    observation: str
    admissible_actions: tuple[str, ...]
    action: str
    response: str


@dataclass(frozen=True)
class OutcomeFreeEpisode:
    """An episode without its outcome: what InversePRM may see."""

    game_id: str
    task: str
    task_type: str
    steps: tuple[OutcomeFreeStep, ...]


def outcome_free(record: Any) -> OutcomeFreeEpisode:
    """The outcome-free view of a ``TrajectoryRecord`` (no ``won``, ``reward``, ``done``, ``total_reward``)."""
    return OutcomeFreeEpisode(record.game_id, record.task, record.task_type, tuple(
        OutcomeFreeStep(s.observation, tuple(s.admissible_actions), s.action, s.response) for s in record.steps))


@dataclass
class InverseTransition:
    """One (s, a, s', a') of Eq. 9. ``next_state`` is None when the episode ended after ``a`` (z(s', a') = 0);
    ``next_response`` is a' ~ pi_{i-1}(. | s') once :func:`sample_next_responses` has filled it in.
    ``iteration``: for learner data, the iteration whose rollouts it came from (rollouts of pi_{iteration-1});
    0 for the expert."""

    game_id: str
    label: int
    split: str
    state: PromptState
    response: str
    next_state: PromptState | None
    next_response: str = ""
    iteration: int = 0


def _state(episode: OutcomeFreeEpisode, index: int) -> PromptState:
    steps = episode.steps
    return PromptState(episode.task, steps[index].observation, list(steps[index].admissible_actions),
                       [(s.observation, s.action) for s in steps[:index]], episode.task_type)


def episode_transitions(episode: OutcomeFreeEpisode, label: int, val_fraction: float = 0.1,
                        iteration: int = 0) -> list[InverseTransition]:
    """Every (s_t, a_t, s_{t+1}) of ``episode`` with ``label`` (1 expert, 0 learner), split by game."""
    if label not in (0, 1):
        raise ValueError(f"label must be 0 (learner) or 1 (expert), got {label}")
    split = "val" if in_validation(episode.game_id, val_fraction) else "train"
    count = len(episode.steps)
    return [InverseTransition(episode.game_id, label, split, _state(episode, t), episode.steps[t].response,
                              _state(episode, t + 1) if t + 1 < count else None, iteration=iteration)
            for t in range(count)]


def expert_episode(record: Any, prompt_config: PromptConfig) -> OutcomeFreeEpisode:
    """The outcome-free view of a demonstration with every response written as the policy writes it:
    ``format_response(action, reason, prompt_config)`` (a demonstration's own responses are the bare commands)."""
    episode = outcome_free(record)
    steps = tuple(dataclasses.replace(step, response=format_response(source.action, source.reason, prompt_config))
                  for step, source in zip(episode.steps, record.steps))
    return dataclasses.replace(episode, steps=steps)


def expert_transitions(records: Iterable[Any], prompt_config: PromptConfig, val_fraction: float = 0.1,
                       only_successful: bool = True) -> list[InverseTransition]:
    """The expert transitions of Eq. 9 (label 1): every step of every demonstration SFT imitates (the WON ones, as
    ``SFTConfig.only_successful``; pass the run's value), its response rendered by :func:`expert_episode`, split by
    game."""
    return [t for record in records if record.won or not only_successful
            for t in episode_transitions(expert_episode(record, prompt_config), 1, val_fraction)]


def class_weights(labels: Sequence[int]) -> list[float]:
    """w = N / (2 N_class) per item: each class carries half of the total weight N (a missing class: weight 1)."""
    count = len(labels)
    positives = sum(1 for y in labels if y)
    per_class = {1: count / (2 * positives) if positives and positives < count else 1.0,
                 0: count / (2 * (count - positives)) if positives and positives < count else 1.0}
    return [per_class[1 if y else 0] for y in labels]


def inverse_prm_loss(z: torch.Tensor, z_next: torch.Tensor, has_next: torch.Tensor, labels: torch.Tensor,
                     weights: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1/B) sum_b w_b BCE(sigmoid(z_b - gamma * has_next_b * z_next_b), y_b); all arguments (B,)."""
    d = z - gamma * has_next.to(z.dtype) * z_next
    losses = F.binary_cross_entropy_with_logits(d, labels.to(z.dtype), reduction="none")
    return (weights.to(z.dtype) * losses).sum() / len(losses)


def logit_differences(z: Sequence[float], z_next: Sequence[float | None], gamma: float) -> list[float]:
    """d = z - gamma * z_next (z_next None: the episode ended, 0)."""
    return [a - gamma * (b if b is not None else 0.0) for a, b in zip(z, z_next, strict=True)]


def sample_next_responses(policy: Any, transitions: Sequence[InverseTransition], prompt_config: PromptConfig,
                          mode: str = "admissible", temperature: float = 1.0, seed: int = 0,
                          max_new_tokens: int = 48, batch_size: int = 64) -> None:
    """Fill ``next_response`` = a' ~ pi_{i-1}(. | s') for every transition with a next state, in place.

    ``admissible`` mode samples among the next state's distinct admissible actions (``candidate_actions``, written
    as ``format_response``);
    ``free`` mode generates text. Batch b uses seed ``seed * 1_000_003 + b``: reproducible for a given order.
    """
    todo = [t for t in transitions if t.next_state is not None]
    for batch_index, start in enumerate(range(0, len(todo), batch_size)):
        part = todo[start:start + batch_size]
        states = [t.next_state for t in part]
        prompts = [render_prompt(s, prompt_config, policy.tokenizer) for s in states]
        batch_seed = seed * 1_000_003 + batch_index
        if mode == "admissible":
            candidates = [[format_response(a, "", prompt_config) for a in candidate_actions(s.admissible_actions)]
                          for s in states]
            drawn = policy.sample_admissible(prompts, candidates, n=1, temperature=temperature, seed=batch_seed)
        else:
            drawn = policy.generate(prompts, n=1, temperature=temperature, max_new_tokens=max_new_tokens,
                                    seed=batch_seed)
        for transition, samples in zip(part, drawn):
            transition.next_response = samples[0].text


def balanced_accuracy(d: Sequence[float], labels: Sequence[int]) -> float:
    """Mean over the two classes of the share classified right (d > 0 means expert); nan without both classes."""
    right = {0: [], 1: []}
    for value, y in zip(d, labels, strict=True):
        right[1 if y else 0].append((value > 0) == bool(y))
    if not right[0] or not right[1]:
        return math.nan
    return 0.5 * (sum(right[0]) / len(right[0]) + sum(right[1]) / len(right[1]))
