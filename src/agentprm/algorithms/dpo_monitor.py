"""Reward-hacking monitor for online DPO: the PRM's opinion of the policy against the truth, every M steps.

The paper leaves open whether optimising a learned PRM eventually exploits its errors ("reward hacking") and
suggests returning the best policy on a validation set. During online DPO the trainer takes a reading at step 0
(the reference pi_{i-1}), every ``monitor_every`` steps and at the last step:

    prm_score(t) = mean over validation states s of Q_phi(s, a), a ~ pi_t(. | s)   (what DPO maximises)
    success(t)   = success rate of pi_t on a small set of validation games           (what we want)

Validation states come from the PRM's held-out games, validation games from a split that is never the evaluation
split. The monitor keeps

    best = argmax_t success(t), ties to the EARLIEST step (the policy closest to the reference),

and warns at a reading t when the PRM prefers it to the best checkpoint while the truth does not:

    prm_score(t) > prm_score(best)  and  success(t) < success(best) - tolerance.

With ``keep_best`` the trainer returns the weights of ``best`` (step 0 means DPO did not help and pi_i = pi_{i-1}),
unless ``keep_margin`` m > 0 asks for evidence first: it keeps ``best`` only when

    success(best) >= success(last) + m,

and the last reading otherwise. A reading of n games has a standard error of about sqrt(p (1 - p) / n), 0.07 at
n = 50: with m = 0 the maximum of several readings of an unchanged policy is kept (a lucky step 0 discards the
whole step), while a margin of about two standard errors still catches a collapse (26 points in the monitor's runs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["MonitorReading", "RewardHackingMonitor"]


@dataclass(frozen=True)
class MonitorReading:
    step: int
    prm_score: float
    success: float


@dataclass
class RewardHackingMonitor:
    """Keeps the readings, the best one and the reward-hacking warnings (see the module docstring)."""

    tolerance: float = 0.0
    readings: list[MonitorReading] = field(default_factory=list)
    warnings: list[int] = field(default_factory=list)
    best: MonitorReading | None = None

    def observe(self, reading: MonitorReading) -> tuple[bool, bool]:
        """Record ``reading``; return (is the new best, is a reward-hacking warning)."""
        if self.readings and reading.step <= self.readings[-1].step:
            raise ValueError(f"readings must come in increasing step order: {reading.step} after "
                             f"{self.readings[-1].step}")
        self.readings.append(reading)
        best = self.best
        warning = (best is not None and reading.prm_score > best.prm_score
                   and reading.success < best.success - self.tolerance)
        if warning:
            self.warnings.append(reading.step)
        improved = best is None or reading.success > best.success
        if improved:
            self.best = reading
        return improved, warning

    def kept(self, keep_best: bool = True, margin: float = 0.0) -> MonitorReading | None:
        """The reading whose policy the trainer returns (see the module docstring); None before any reading."""
        if not self.readings:
            return None
        last = self.readings[-1]
        return self.best if keep_best and self.best.success >= last.success + margin else last

    def summary(self, keep_best: bool = True, margin: float = 0.0) -> dict:
        kept = self.kept(keep_best, margin)
        return {"selected_step": kept.step if kept else None, "best_step": self.best.step if self.best else None,
                "kept": "best" if keep_best and kept is not None and kept is self.best else "last",
                "readings": [asdict(r) for r in self.readings], "hacking_warnings": list(self.warnings)}
