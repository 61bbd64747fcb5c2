"""Success tables: counts per (split, task type), success rates with Wilson 95% intervals, mean episode length.

Wilson score interval for k successes in n trials at z = 1.96:

    center = (p + z^2 / 2n) / (1 + z^2 / n),   half = z * sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)
"""

from __future__ import annotations

import math
from collections import defaultdict
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
