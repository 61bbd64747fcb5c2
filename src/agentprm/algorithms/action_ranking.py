"""Grading a ranker of actions against ground-truth Q^pi(s, a) (the PRM oracle benchmark's metrics, pure).

A PRM helps online DPO, the exact policy step and Best-of-N only where it orders the actions AT A STATE better than
the policy's own log-probability does. Each graded state s carries the candidate actions a_1..a_K, their Monte
Carlo estimates Q(s, a_k) from M continuations each (and the estimates of the two halves of the continuations),
and any number of rankers' scores of the same actions. Over the states:

* ``pairwise_accuracy``: over pairs (i, j) at one state with |Q_i - Q_j| >= delta, the share the ranker orders as
  Q does: 1 when sign(score_i - score_j) = sign(Q_i - Q_j), 1/2 on a score tie;
* ``top1_agreement``: over states whose Q spread max - min >= delta, the share where the ranker's top action is a
  Q-argmax (a tie for the ranker's top counts the share of its tied actions that are Q-argmaxes);
* ``spearman``: mean over states with a Q spread >= delta of Spearman's rho between scores and Q (average ranks for
  ties; 0 when the ranker's scores are all equal);
* ``expert_rank``: over states where the expert's action is admissible, its mean rank among ALL admissible actions
  by the ranker (1 = first, ties share the mean rank), and the share of states where it ranks first;
* ``split_half_agreement`` (of the estimate itself): over the pairs of ``pairwise_accuracy``, the share the two
  halves of the continuations order the same way (1/2 on a tie in either half): how far the ground truth is
  reproducible, hence the ceiling of any ranker's pairwise accuracy.

Intervals are 95% percentile bootstrap intervals over STATES (pairs at one state are not independent), seeded.
:func:`paired_difference` compares two rankers on the same pairs: the bootstrap resamples states once for both,
so the interval of acc(a) - acc(b) is far narrower than the two separate intervals suggest.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class GradedState:
    """One state: candidate actions with Q estimates (and per-half estimates), rankers' scores of every admissible
    action, and the expert's action (or None)."""

    actions: list[str]
    q: list[float]
    q_halves: tuple[list[float], list[float]]
    admissible: list[str] = field(default_factory=list)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # ranker -> action -> score
    expert_action: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _order_credit(a: float, b: float, truth: float) -> float:
    """1 if a - b has the sign of ``truth``, 1/2 if a == b, else 0."""
    return 0.5 if a == b else float(_sign(a - b) == _sign(truth))


def state_pairs(state: GradedState, delta: float) -> list[tuple[int, int]]:
    """Index pairs (i < j) of candidate actions whose Q estimates differ by at least ``delta``."""
    q = state.q
    return [(i, j) for i in range(len(q)) for j in range(i + 1, len(q)) if abs(q[i] - q[j]) >= delta]


def pair_credits(state: GradedState, ranker: str, delta: float) -> list[float]:
    """The ranker's credit on each of the state's pairs (see :func:`_order_credit`)."""
    scores = state.scores[ranker]
    return [_order_credit(scores[state.actions[i]], scores[state.actions[j]], state.q[i] - state.q[j])
            for i, j in state_pairs(state, delta)]


def split_half_credits(state: GradedState, delta: float) -> list[float]:
    """Agreement of the two halves' estimates on each of the state's pairs (1/2 when either half ties)."""
    first, second = state.q_halves
    credits = []
    for i, j in state_pairs(state, delta):
        a, b = first[i] - first[j], second[i] - second[j]
        credits.append(0.5 if a == 0 or b == 0 else float(_sign(a) == _sign(b)))
    return credits


def top1_credit(state: GradedState, ranker: str, delta: float) -> float | None:
    """Share of the ranker's top actions (ties) that are Q-argmaxes; None without a Q spread >= delta."""
    if max(state.q) - min(state.q) < delta:
        return None
    scores = [state.scores[ranker][a] for a in state.actions]
    top = [k for k, s in enumerate(scores) if s == max(scores)]
    best = max(state.q)
    return sum(state.q[k] == best for k in top) / len(top)


def average_ranks(values: Sequence[float], descending: bool = False) -> list[float]:
    """1-based ranks (ascending values, or descending), ties sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda k: -values[k] if descending else values[k])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end < len(order) and values[order[end]] == values[order[start]]:
            end += 1
        for k in order[start:end]:
            ranks[k] = (start + 1 + end) / 2
        start = end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (Pearson correlation of average ranks); 0 when either side is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return 0.0 if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def spearman_credit(state: GradedState, ranker: str, delta: float) -> float | None:
    if max(state.q) - min(state.q) < delta:
        return None
    return spearman([state.scores[ranker][a] for a in state.actions], state.q)


def expert_rank(state: GradedState, ranker: str) -> float | None:
    """Rank (1 = best, ties share the mean rank) of the expert's action among the admissible actions."""
    if state.expert_action is None or state.expert_action not in state.admissible:
        return None
    scores = state.scores[ranker]
    ranks = average_ranks([scores[a] for a in state.admissible], descending=True)
    return ranks[state.admissible.index(state.expert_action)]


# -- aggregation with bootstrap intervals ----------------------------------------------------------------------------


def _ratio(parts: Sequence[tuple[float, int]]) -> float:
    total = sum(n for _, n in parts)
    return sum(s for s, _ in parts) / total if total else math.nan


def bootstrap_ci(parts: Sequence[tuple[float, int]], resamples: int = 2000, seed: int = 0,
                 statistic: Callable[[Sequence[tuple[float, int]]], float] = _ratio) -> list[float]:
    """95% percentile interval of ``statistic`` over states resampled with replacement; ``parts`` holds one
    (sum of credits, count) per state. [nan, nan] without data."""
    if not parts or not sum(n for _, n in parts):
        return [math.nan, math.nan]
    rng = random.Random(seed)
    values = sorted(statistic([parts[rng.randrange(len(parts))] for _ in parts]) for _ in range(resamples))
    values = [v for v in values if not math.isnan(v)]
    return [values[int(0.025 * (len(values) - 1))], values[int(math.ceil(0.975 * (len(values) - 1)))]]


def _summary(parts: list[tuple[float, int]], seed: int, resamples: int) -> dict[str, Any]:
    return {"value": _ratio(parts), "ci95": bootstrap_ci(parts, resamples, seed), "n": sum(n for _, n in parts)}


def grade_ranker(states: Sequence[GradedState], ranker: str, delta: float = 0.1, seed: int = 0,
                 resamples: int = 2000) -> dict[str, Any]:
    """Every metric of the module doc for one ranker, each {"value", "ci95", "n"} (n: pairs or states)."""
    pairs = [(sum(c), len(c)) for c in (pair_credits(s, ranker, delta) for s in states)]
    top1 = [(v, 1) for v in (top1_credit(s, ranker, delta) for s in states) if v is not None]
    rho = [(v, 1) for v in (spearman_credit(s, ranker, delta) for s in states) if v is not None]
    ranks = [v for v in (expert_rank(s, ranker) for s in states) if v is not None]
    return {"pairwise_accuracy": _summary(pairs, seed, resamples),
            "top1_agreement": _summary(top1, seed, resamples),
            "spearman": _summary(rho, seed, resamples),
            "expert_mean_rank": _summary([(r, 1) for r in ranks], seed, resamples),
            "expert_first": _summary([(float(r == 1.0), 1) for r in ranks], seed, resamples)}


def rank_agreement(states: Sequence[GradedState], ranker: str, other: str, seed: int = 0,
                   resamples: int = 2000) -> dict[str, Any]:
    """Mean over states of Spearman(ranker, other) across ALL admissible actions, with its interval: whether a PRM
    orders the actions as the policy does (> 0), independently of it (0), or against it (< 0). No ground truth."""
    rho = [(spearman([s.scores[ranker][a] for a in s.admissible], [s.scores[other][a] for a in s.admissible]), 1)
           for s in states if len(s.admissible) >= 2]
    return _summary(rho, seed, resamples)


def estimate_agreement(states: Sequence[GradedState], delta: float = 0.1, seed: int = 0,
                       resamples: int = 2000) -> dict[str, Any]:
    """Split-half agreement of the ground truth on the graded pairs, with its interval."""
    return _summary([(sum(c), len(c)) for c in (split_half_credits(s, delta) for s in states)], seed, resamples)


def paired_difference(states: Sequence[GradedState], ranker: str, baseline: str, delta: float = 0.1, seed: int = 0,
                      resamples: int = 2000) -> dict[str, Any]:
    """Pairwise accuracy of ``ranker`` minus that of ``baseline`` on the same pairs, with a paired bootstrap
    interval over states ({"value", "ci95", "n"})."""
    parts = [(sum(a) - sum(b), len(a)) for a, b in
             ((pair_credits(s, ranker, delta), pair_credits(s, baseline, delta)) for s in states)]
    return _summary(parts, seed, resamples)


# -- combined rankers: a PRM corrected by the policy's own log-probability ------------------------------------------


def mix_scores(states: Sequence[GradedState], name: str, terms: Sequence[tuple[str, float]]) -> None:
    """Add the ranker ``name`` = sum_r w_r * score_r(a) over ``terms`` [(ranker, w_r)] to every state.

    ``Q + lambda log pi`` is [(prm, 1), ("policy", lambda)]: Best-of-N's combined rule, and the order of the exact
    KL-regularised step's target pi*(a|s) proportional to pi(a|s) exp(Q(s, a)/beta), which ranks actions by
    Q + beta log pi.
    """
    for state in states:
        state.scores[name] = {a: sum(w * state.scores[r][a] for r, w in terms) for a in state.admissible}


def _fold(state: GradedState) -> int:
    """0 or 1 by the state's game (a stable digest of ``meta["game_id"]``): a game's states share one fold."""
    import hashlib

    return hashlib.sha256(str(state.meta.get("game_id", "")).encode()).digest()[0] % 2


def crossfit_weight(states: Sequence[GradedState], name: str, base: str, extra: str, grid: Sequence[float],
                    delta: float = 0.1) -> list[float]:
    """``base + w * extra`` with w chosen on the OTHER fold of games (two folds by game, :func:`_fold`): the weight
    maximising pairwise accuracy on fold 1 scores fold 0's states and vice versa (ties: the first in ``grid``).
    Writes the ranker ``name`` into every state and returns the two chosen weights [for fold 0, for fold 1], so
    the graded accuracy of ``name`` is that of a tuned combination, free of the tuning's optimism."""
    if not grid:
        raise ValueError("crossfit_weight needs a non-empty grid of weights")
    folds = [[s for s in states if _fold(s) == f] for f in (0, 1)]

    def accuracy(group: Sequence[GradedState], w: float) -> float:
        credits = [c for s in group for c in _mixed_credits(s, base, extra, w, delta)]
        return sum(credits) / len(credits) if credits else 0.0

    chosen = []
    for f in (0, 1):
        other = folds[1 - f]
        best = max(grid, key=lambda w: (accuracy(other, w), -list(grid).index(w)))
        chosen.append(best)
        mix_scores(folds[f], name, [(base, 1.0), (extra, best)])
    return chosen


def _mixed_credits(state: GradedState, base: str, extra: str, w: float, delta: float) -> list[float]:
    b, e = state.scores[base], state.scores[extra]
    value = {a: b[a] + w * e[a] for a in state.actions}
    return [_order_credit(value[state.actions[i]], value[state.actions[j]], state.q[i] - state.q[j])
            for i, j in state_pairs(state, delta)]
