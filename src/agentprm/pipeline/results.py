"""Success tables: counts per (split, task type), success rates with Wilson 95% intervals, mean episode length.

Wilson score interval for k successes in n trials at z = 1.96:

    center = (p + z^2 / 2n) / (1 + z^2 / n),   half = z * sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)

Paired difference of two agents on the same games, each played with one or more sampling seeds (``wins[seed][game]``):

    d_g = mean_s A[s][g] - mean_s B[s][g],    difference = mean_g d_g,

with a 95% percentile bootstrap interval over games (the games are the unit that was drawn; the seeds of one game
are averaged first, so a game counts once however many seeds played it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ((0, 1) when there are no trials)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def _per_game_success(wins: Mapping[int, Mapping[str, bool]], name: str) -> dict[str, float]:
    """mean over seeds of each game's win; every seed must have played the same games."""
    if not wins:
        raise ValueError(f"{name}: no seeds")
    games = {seed: set(by_game) for seed, by_game in wins.items()}
    first = next(iter(games.values()))
    if any(g != first for g in games.values()):
        raise ValueError(f"{name}: the seeds played different games")
    return {game: sum(float(wins[seed][game]) for seed in wins) / len(wins) for game in sorted(first)}


def paired_success_difference(wins_a: Mapping[int, Mapping[str, bool]], wins_b: Mapping[int, Mapping[str, bool]],
                              resamples: int = 2000, seed: int = 0) -> dict:
    """A minus B on the same games (module doc): {"difference", "ci95", "games", "seeds_a", "seeds_b"}.

    ``wins_x[seed][game_id]``: whether agent x won that game with that sampling seed. Raises ``ValueError`` when the
    two agents did not play the same games."""
    a = _per_game_success(wins_a, "A")
    b = _per_game_success(wins_b, "B")
    if set(a) != set(b):
        raise ValueError(f"A and B played different games ({len(set(a) ^ set(b))} not in both)")
    diffs = [a[game] - b[game] for game in a]
    return {"difference": sum(diffs) / len(diffs), "ci95": _bootstrap_mean_ci(diffs, resamples, seed),
            "games": len(diffs), "seeds_a": sorted(wins_a), "seeds_b": sorted(wins_b)}


def pooled_success(wins: Mapping[int, Mapping[str, bool]], resamples: int = 2000, seed: int = 0) -> dict:
    """One agent's success pooled over its seeds, mean_g mean_s wins[s][g], with the same bootstrap over games:
    {"success", "ci95", "games", "seeds"}."""
    per_game = list(_per_game_success(wins, "the agent").values())
    return {"success": sum(per_game) / len(per_game), "ci95": _bootstrap_mean_ci(per_game, resamples, seed),
            "games": len(per_game), "seeds": sorted(wins)}


def _bootstrap_mean_ci(values: list[float], resamples: int, seed: int) -> list[float]:
    """95% percentile interval of the mean of ``values`` resampled with replacement (each value one unit)."""
    from agentprm.algorithms.action_ranking import bootstrap_ci

    return bootstrap_ci([(v, 1) for v in values], resamples, seed)


@dataclass
class SuccessTable:
    """Success counts per task type, printed as the demos' (and the quickstart's) result table."""

    wins: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    totals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    steps: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, split: str, task_type: str, won: bool, num_steps: int) -> None:
        key = (split, task_type)
        self.totals[key] += 1
        self.wins[key] += int(won)
        self.steps[key] += num_steps

    def counts(self, split: str | None = None) -> tuple[int, int]:
        """(successes, episodes) over one split, or all."""
        keys = [k for k in self.totals if split is None or k[0] == split]
        return sum(self.wins[k] for k in keys), sum(self.totals[k] for k in keys)

    def success(self, split: str | None = None) -> float:
        wins, total = self.counts(split)
        return wins / total if total else 0.0

    def mean_steps(self, split: str | None = None) -> float:
        keys = [k for k in self.totals if split is None or k[0] == split]
        total = sum(self.totals[k] for k in keys)
        return sum(self.steps[k] for k in keys) / total if total else 0.0

    def by_task_type(self, split: str | None = None) -> dict[str, float]:
        types = sorted({t for s, t in self.totals if split is None or s == split})
        result = {}
        for task_type in types:
            keys = [k for k in self.totals if k[1] == task_type and (split is None or k[0] == split)]
            result[task_type] = sum(self.wins[k] for k in keys) / sum(self.totals[k] for k in keys)
        return result

    def render(self, title: str) -> str:
        rows = [title, f"{'split':<14}{'task type':<34}{'games':>7}{'solved':>8}{'success':>9}{'mean steps':>12}"]
        splits = sorted({split for split, _ in self.totals})
        for split in splits + ["all"]:
            keys = sorted(k for k in self.totals if split == "all" or k[0] == split)
            groups = [(k[1], [k]) for k in keys] if split != "all" else []
            groups.append(("all", keys))
            for label, group in groups:
                total = sum(self.totals[k] for k in group)
                wins, steps = sum(self.wins[k] for k in group), sum(self.steps[k] for k in group)
                rows.append(f"{split:<14}{label:<34}{total:>7}{wins:>8}{wins / total:>9.1%}{steps / total:>12.1f}")
        return "\n".join(rows)
