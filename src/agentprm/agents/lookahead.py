"""Best-of-N ranked by the engine itself: the ceiling a perfect PRM would give (a benchmark agent, not a method).

A PRM of iteration i is trained to predict Q^{pi_i}(s, a), the discounted success of taking a at s and following
pi_i after. :class:`MonteCarloQ` measures that quantity directly: the episode's action prefix is replayed from reset
in a second pool of real environments (:mod:`agentprm.pipeline.branching`, which checks every replayed observation
against the live one), ``a`` is taken, and ``continuations`` continuations of pi play on until the episode's step
budget (which counts the prefix) runs out:

    Q_hat(s, a) = (1 / M) sum_m gamma^(T_m - 1 - t) R_m           (t = the step of s, R_m in {0, 1})

:class:`LookaheadBestOfN` is :class:`agentprm.agents.best_of_n.BestOfNAgent` with that estimate in place of the PRM:
the same N candidates (same seeds, so N = 1 is the policy), the same reduction to distinct admissible actions, the
same rule argmax Q + lambda log pi with the same ties. Only the scores differ, so BoN(pi, MC) minus pi is what
Best-of-N with these candidates can gain from a ranker that knows Q^pi up to Monte Carlo noise, and BoN(pi, Q_i)
minus pi is how much of that the learnt PRM recovers. It plays the evaluation games with the environment's help
(continuations from the live state): it is a measurement on held-out games, never an agent to report as a result.

**Referees.** With ``referees`` (name -> PRM), every decision (a turn whose candidates are two or more distinct
actions) is also ranked by each referee with the same rule (Q + lambda log pi over the same representatives), and by
the policy alone (the most likely representative). The agent still acts on the Monte Carlo ranking; per ranker
:class:`Verdicts` counts the decisions, the contested ones (Q_hat not equal for all candidates), the share of contested
decisions where it picks an action of highest Q_hat (agreement), and its regret, the mean over all decisions of
max Q_hat - Q_hat(its pick). Referees rank by Q + ``referee_logprob_weight`` log pi. This grades a PRM at the decisions Best-of-N
actually faces, on the states the policy reaches, which the ground-truth benchmark's random states do not.

**Navigation left to the policy.** With ``policy_navigates``, a decision whose distinct candidates are all
``go to`` actions is not estimated: every candidate scores 0, so the rule's tie-break executes the policy's most
likely one. Which receptacle to walk to first depends largely on where the object lies, which the continuations
know and the observation does not; the rest of the ceiling (take, open, put, use, and navigation against another
kind of action) is what a PRM that sees only the prompt could in principle recover. The difference between the two
agents measures how much of the ceiling navigation holds (``benchmarks/README.md``: little, at T = 1.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentprm.agents.best_of_n import BestOfNAgent, Candidate, representatives, select_best
from agentprm.envs.runner import PolicyInput
from agentprm.models.prompts import PromptState
from agentprm.pipeline.branching import Branch, discounted_return, play_branches


def is_navigation(action: str) -> bool:
    """An ALFWorld move between receptacles (``go to cabinet 3``)."""
    return action.startswith("go to ")


@dataclass
class MonteCarloQ:
    """Q^pi(s, a) at live states by ``continuations`` continuations of ``agent`` (a runner policy: pi) each, played
    in ``pool`` (open, owned by the caller). ``branches`` and ``continuation_steps`` count what it played."""

    pool: Any
    agent: Any
    continuations: int = 4
    max_steps: int = 30
    gamma: float = 0.95
    branches: int = 0
    continuation_steps: int = 0

    def __post_init__(self) -> None:
        if self.continuations < 1:
            raise ValueError(f"continuations must be >= 1, got {self.continuations}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")

    def estimate(self, items: Sequence[PolicyInput], actions: Sequence[str]) -> list[float]:
        """Q_hat(s_j, a_j) for the state of ``items[j]`` (its history is the whole episode so far) and
        ``actions[j]``, all pairs' continuations in one :func:`play_branches` call."""
        if len(items) != len(actions):
            raise ValueError(f"{len(items)} states for {len(actions)} actions")
        branches = [self.branch(item, action, m) for item, action in zip(items, actions)
                    for m in range(self.continuations)]
        if not branches:
            return []
        played = play_branches(self.pool, branches, self.agent, self.max_steps)
        self.branches += len(branches)
        returns = [0.0] * len(items)
        for k, (branch, result) in enumerate(zip(branches, played)):
            returns[k // self.continuations] += discounted_return(result, branch.start, self.gamma)
            self.continuation_steps += result.steps - branch.start
        return [total / self.continuations for total in returns]

    @staticmethod
    def branch(item: PolicyInput, action: str, m: int) -> Branch:
        if len(item.history) != item.step:
            raise ValueError(f"game {item.game.game_id}: the state at step {item.step} carries {len(item.history)} "
                             "steps of history; a replay needs the whole episode")
        prefix = tuple(a for _, a in item.history)
        observations = tuple(text for text, _ in item.history) + (item.observation.text,)
        return Branch(item.game, prefix, observations, action, action, 0.0, m)


@dataclass
class Verdicts:
    """One ranker's record against the Monte Carlo ranking (see the module doc)."""

    decisions: int = 0
    contested: int = 0
    agreements: int = 0
    regret: float = 0.0

    def add(self, values: Sequence[float], pick: int) -> None:
        self.decisions += 1
        if max(values) > min(values):  # the estimate tells the candidates apart
            self.contested += 1
            self.agreements += values[pick] >= max(values)
        self.regret += max(values) - values[pick]

    def summary(self) -> dict[str, float | int]:
        return {"decisions": self.decisions, "contested": self.contested,
                "agreement": self.agreements / self.contested if self.contested else 0.0,
                "regret": self.regret / self.decisions if self.decisions else 0.0}


@dataclass
class LookaheadBestOfN(BestOfNAgent):
    """BoN(pi, Q_hat): :class:`BestOfNAgent` with :class:`MonteCarloQ` ``q`` as its ranker (``prm`` is unused and
    may be None). A slot whose candidates are one distinct action is not estimated (its choice cannot change)."""

    q: MonteCarloQ | None = None
    referees: dict[str, Any] = field(default_factory=dict)
    referee_logprob_weight: float = 0.0
    policy_navigates: bool = False
    verdicts: dict[str, Verdicts] = field(default_factory=dict)
    estimates: int = 0
    navigation_decisions: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.q is None:
            raise ValueError("LookaheadBestOfN needs q, a MonteCarloQ")
        if "policy" in self.referees:
            raise ValueError("'policy' is the policy's own verdict; name the referee PRMs otherwise")
        self.verdicts = {name: Verdicts() for name in ["policy", *self.referees]}

    def _score(self, states: list[PromptState], prompts: list[str], batch: list[PolicyInput],
               candidates: list[list[Candidate]]) -> None:
        decisions = {}  # position -> its representatives, where there are two or more (a choice to make)
        for position, (item, slot) in enumerate(zip(batch, candidates)):
            chosen = representatives(slot, item.observation.admissible_actions, self.filter_admissible)
            if len(chosen) < 2:
                continue
            if self.policy_navigates and all(is_navigation(slot[i].action) for i in chosen):
                for i in chosen:  # all tied: select_best's tie-break is the policy's most likely candidate
                    slot[i].score = 0.0
                self.navigation_decisions += 1
                continue
            decisions[position] = chosen
        if not decisions:
            return
        picks = self._referee_picks(states, prompts, batch, candidates, decisions)
        jobs = [(position, candidates[position][i].action) for position, chosen in decisions.items() for i in chosen]
        values = self.q.estimate([batch[p] for p, _ in jobs], [action for _, action in jobs])
        self.estimates += len(jobs)
        for (position, action), value in zip(jobs, values):
            for candidate in candidates[position]:
                if candidate.action == action:
                    candidate.score = float(value)
        for position, by_ranker in picks.items():
            chosen = decisions[position]
            q_values = [candidates[position][i].score for i in chosen]
            for name, pick in by_ranker.items():
                self.verdicts[name].add(q_values, chosen.index(pick))

    def _referee_picks(self, states, prompts, batch, candidates, decisions) -> dict[int, dict[str, int]]:
        """position -> ranker -> the representative it would execute, at every decision."""
        picks = {position: {"policy": max(chosen, key=lambda i: (candidates[position][i].logprob, -i))}
                 for position, chosen in decisions.items()}  # the policy alone: most likely, first sampled
        for name, prm in self.referees.items():
            self.prm = prm
            try:
                BestOfNAgent._score(self, states, prompts, batch, candidates)
            finally:
                self.prm = None
            for position in decisions:
                slot = candidates[position]
                picks[position][name] = select_best(slot, batch[position].observation.admissible_actions,
                                                    self.filter_admissible, self.referee_logprob_weight)
                for candidate in slot:
                    candidate.score = None
        return picks
