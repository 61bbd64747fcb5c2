"""Process reward shaping (paper Section 4): PRM targets shaped with the value V^mu of a reference policy mu.

Value targets (Monte Carlo, from mu's rollouts): the state s_t = (game, history, o_t) without the action, and

    V_hat(s) = mean over every visit of s of gamma^(T-1-t) * R = sum_a N(s, a) Q_hat(s, a) / sum_a N(s, a)

(the visit-weighted mean of the Q targets of its actions, so it needs nothing but :func:`mc_q_targets`). A value
model V^mu is trained on them with the PRM trainer (same loss, empty response).

Shaped target (potential-based, Phi = V^mu, V^mu = 0 after the last step of an episode):

    Q_shaped(s_t, a_t) = Q_hat(s_t, a_t) + gamma * V^mu(s_{t+1}) - V^mu(s_t)        in [-1, 1 + gamma]

The PRM's soft BCE needs a label in [0, 1], so it learns the increasing affine image
(Q_shaped + 1) / (2 + gamma): every ranking of actions (all that Best-of-N and online DPO use) is that of Q_shaped.
s_{t+1} is the state after a_t in the key's first visit: the key holds the whole prefix and the environment is
deterministic, so every visit of a key has the same next state (and the same end).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from agentprm.algorithms.mc_targets import QTarget, state_key
from agentprm.models.prompts import PromptState

__all__ = ["value_targets", "shaped_value", "to_unit_interval", "shape_targets"]


def value_targets(targets: Sequence[QTarget]) -> list[QTarget]:
    """One target per state: V_hat = visit-weighted mean of its actions' Q_hat; response and action empty.

    First-appearance order; the fields of the state's first target are kept (split, indices, state), visits and
    episode lists are the union over its actions."""
    groups: dict[str, list[QTarget]] = {}
    for target in targets:
        groups.setdefault(state_key(target), []).append(target)
    out = []
    for key, members in groups.items():
        visits = sum(t.visits for t in members)
        value = sum(t.visits * t.q for t in members) / visits
        first = members[0]
        out.append(dataclasses.replace(
            first, response="", action="", q=value, visits=visits, key=key,
            episode_indices=[e for t in members for e in t.episode_indices],
            episode_won=[w for t in members for w in t.episode_won]))
    return out


def shaped_value(q: float, v_state: float, v_next: float | None, gamma: float) -> float:
    """Q_hat + gamma * V(s') - V(s), with V(s') = 0 when the episode ended (``v_next`` None)."""
    return q + gamma * (v_next if v_next is not None else 0.0) - v_state


def to_unit_interval(value: float, gamma: float) -> float:
    """The increasing affine map [-1, 1 + gamma] -> [0, 1] applied to shaped targets."""
    return (value + 1.0) / (2.0 + gamma)


def _next_state(target: QTarget, records: Sequence[Any]) -> PromptState | None:
    record = records[target.episode_index]
    t = target.step_index + 1
    return PromptState.from_trajectory(record, t) if t < len(record.steps) else None


def shape_targets(targets: Sequence[QTarget], records: Sequence[Any],
                  value: Callable[[list[PromptState]], Sequence[float]], gamma: float) -> list[QTarget]:
    """The targets with q = to_unit_interval(Q_shaped); ``records`` are the episodes the targets came from (in
    the same order, so ``episode_index`` points into them); ``value(states)`` returns V^mu per state."""
    from agentprm.algorithms.mc_targets import state_from_target

    states = [state_from_target(t) for t in targets]
    following = [_next_state(t, records) for t in targets]
    present = [s for s in following if s is not None]
    values = list(value(states + present))
    if len(values) != len(states) + len(present):
        raise ValueError(f"value() returned {len(values)} values for {len(states) + len(present)} states")
    v_state, v_next_iter = values[: len(states)], iter(values[len(states):])
    v_next = [next(v_next_iter) if s is not None else None for s in following]
    return [dataclasses.replace(t, q=to_unit_interval(shaped_value(t.q, v, vn, gamma), gamma))
            for t, v, vn in zip(targets, v_state, v_next)]
