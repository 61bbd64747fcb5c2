"""PRM-guided Best-of-N at test time: BoN(pi, Q) samples N responses per turn and executes the one Q ranks highest.

For every live slot and every turn:

1. sample N responses from the policy ``pi`` in one batched call (modes as :class:`PolicyAgent`: ``admissible``
   draws N candidates WITH replacement from softmax(log pi(a | s) / T) over the distinct admissible actions
   (``prompts.candidate_actions``, PolicyAgent's and DPO's rule), so duplicate samples are common; ``free`` generates N responses and parses each one);
2. keep the admissible ones (``filter_admissible``, on by default; if none is admissible all are kept, so the agent
   still acts);
3. reduce to distinct actions: each action is represented by its most likely response (then the first sampled);
4. score each distinct action once with the PRM, Q(s, response) in [0, 1], all slots in one ``prm.score`` call;
5. execute  argmax_a Q(s, a) + lambda log pi(a | s)  (``logprob_weight`` lambda, 0 by default: the paper's argmax
   of Q), ties broken by the higher policy log-probability, then by sampling order.

With lambda > 0 the PRM corrects the policy's preference instead of replacing it: lambda = beta orders the
candidates as the exact KL step's pi*(a|s) proportional to pi(a|s) exp(Q(s, a) / beta). Reducing to distinct actions
forgets how often the policy proposed each one; the log pi term puts that knowledge back. ``turns`` and
``distinct_candidates`` count the turns and the distinct (admissible) actions they offered, so a Best-of-N curve can
say how many candidates each N really gave.

Deviations from the reference code and why:

* The reference never checks admissibility (its defect 6): a confident PRM could pick a command the engine rejects.
* Identical actions are scored once, and a slot whose samples all agree is not scored at all (its choice cannot
  change): PRM forward passes are the cost of Best-of-N, and a confident policy at T = 0.3 often samples one action
  N times. ``prm_evaluations`` counts the (prompt, response) pairs actually scored; unscored candidates keep
  ``score=None`` in ``last_choices``.
* With N = 1 no PRM is consulted and the agent acts exactly as :class:`PolicyAgent` with the same seed.

The PRM reads the prompt rendered with its own tokenizer (its chat template, if any) and ``prm_prompt`` (default:
the policy's ``prompt``), followed by the response as the policy wrote it: the action text in admissible mode, the
raw generation in free mode, i.e. exactly the "raw response" of a trajectory record the PRM was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentprm.agents.policy_agent import MODES
from agentprm.envs.runner import PolicyInput
from agentprm.models.parser import parse_response
from agentprm.models.policy import Policy, Sample
from agentprm.models.prompts import PromptConfig, PromptState, candidate_actions, format_response, render_prompt


class Scorer(Protocol):
    """What Best-of-N needs from a PRM: Q(prompt, response) in [0, 1] per pair (``ProcessRewardModel.score``)."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...


@dataclass
class Candidate:
    """One of the N samples of a turn: the action it maps to, the response text, log pi and (once scored) Q."""

    action: str
    response: str
    logprob: float
    score: float | None = None


@dataclass
class Choice:
    """One slot's decision at one turn (kept in ``BestOfNAgent.last_choices`` for records and diagnostics)."""

    candidates: list[Candidate]
    chosen: int

    @property
    def scores(self) -> list[float | None]:
        return [candidate.score for candidate in self.candidates]

    @property
    def action(self) -> str:
        return self.candidates[self.chosen].action


# -- the pure selection rule -----------------------------------------------------------------------------------------


def representatives(candidates: Sequence[Candidate], admissible: Sequence[str],
                    filter_admissible: bool = True) -> list[int]:
    """Indices of the candidates to score: admissible ones only (unless none is, or the filter is off), one per
    distinct action -- the most likely response for that action, the first sampled among equals. Sampling order."""
    allowed = set(admissible)
    pool = list(range(len(candidates)))
    if filter_admissible:
        pool = [i for i in pool if candidates[i].action in allowed] or pool
    best: dict[str, int] = {}
    for i in pool:
        kept = best.get(candidates[i].action)
        if kept is None or candidates[i].logprob > candidates[kept].logprob:
            best[candidates[i].action] = i
    return sorted(best.values())


def select_best(candidates: Sequence[Candidate], admissible: Sequence[str], filter_admissible: bool = True,
                logprob_weight: float = 0.0) -> int:
    """Index of the candidate to execute: argmax of Q + ``logprob_weight`` * log pi over :func:`representatives`,
    ties by higher log-probability, then by sampling order. Only representatives' scores are read (duplicates may
    be unscored); a lone representative needs no score. Raises ``ValueError`` when there is no candidate or a
    representative is unscored.
    """
    if not candidates:
        raise ValueError("select_best needs at least one candidate")
    chosen = representatives(candidates, admissible, filter_admissible)
    if len(chosen) == 1:
        return chosen[0]
    unscored = [candidates[i].action for i in chosen if candidates[i].score is None]
    if unscored:
        raise ValueError(f"candidates {unscored} have no PRM score; score every representative before selecting")
    return max(chosen, key=lambda i: (candidates[i].score + logprob_weight * candidates[i].logprob,
                                      candidates[i].logprob, -i))


# -- the agent -------------------------------------------------------------------------------------------------------


@dataclass
class BestOfNAgent:
    """BoN(policy, prm), callable as a runner policy: ``agent(batch) -> actions``.

    ``last_samples`` holds each slot's executed sample (text, token ids, log-prob), ``last_choices`` each slot's
    N candidates with their scores and the chosen index, ``last_prompts`` each slot's policy prompt;
    ``score_duplicates=True`` scores every sample, duplicates and unanimous slots included (the naive cost the
    benchmark compares against; the choices are the same); ``prm_evaluations`` counts scored (prompt, response)
    pairs and ``prm_calls`` batched ``prm.score`` calls since construction.
    """

    policy: Policy
    prm: Scorer
    n: int = 16
    prompt: PromptConfig = field(default_factory=PromptConfig)
    prm_prompt: PromptConfig | None = None
    mode: str = "admissible"
    filter_admissible: bool = True
    score_duplicates: bool = False
    temperature: float = 0.3
    logprob_weight: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    seed: int = 0
    last_samples: dict[int, Sample] = field(default_factory=dict)
    last_choices: dict[int, Choice] = field(default_factory=dict)
    last_prompts: dict[int, str] = field(default_factory=dict)
    prm_evaluations: int = 0
    prm_calls: int = 0
    turns: int = 0
    distinct_candidates: int = 0
    _calls: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        if not self.logprob_weight >= 0:
            raise ValueError(f"logprob_weight must be >= 0, got {self.logprob_weight!r}")

    def __call__(self, batch: list[PolicyInput]) -> list[str]:
        states = [PromptState.from_policy_input(item) for item in batch]
        prompts = [render_prompt(state, self.prompt, self.policy.tokenizer) for state in states]
        samples = self._sample(prompts, batch)
        candidates = [self._candidates(item, slot_samples) for item, slot_samples in zip(batch, samples)]
        self._score(states, prompts, batch, candidates)
        self.last_choices, self.last_samples = {}, {}
        self.last_prompts = {item.slot: prompt for item, prompt in zip(batch, prompts)}
        actions = []
        for item, slot_candidates, slot_samples in zip(batch, candidates, samples):
            admissible = item.observation.admissible_actions
            chosen = select_best(slot_candidates, admissible, self.filter_admissible, self.logprob_weight)
            self.turns += 1
            self.distinct_candidates += len(representatives(slot_candidates, admissible, self.filter_admissible))
            self.last_choices[item.slot] = Choice(slot_candidates, chosen)
            self.last_samples[item.slot] = slot_samples[chosen]
            actions.append(slot_candidates[chosen].action)
        return actions

    def _sample(self, prompts: list[str], batch: list[PolicyInput]) -> list[list[Sample]]:
        """N samples per slot in one policy call; the seed schedule is PolicyAgent's, so N = 1 reproduces it."""
        seed = self.seed * 1_000_003 + self._calls
        self._calls += 1
        if self.mode == "admissible":
            # Written as SFT responses (as PolicyAgent does), so the PRM reads what it was trained on.
            candidates = [[format_response(a, "", self.prompt) for a in _actions(item)] for item in batch]
            return self.policy.sample_admissible(prompts, candidates, n=self.n, temperature=self.temperature,
                                                 seed=seed)
        return self.policy.generate(prompts, n=self.n, temperature=self.temperature, top_p=self.top_p,
                                    max_new_tokens=self.max_new_tokens, seed=seed)

    def _candidates(self, item: PolicyInput, samples: list[Sample]) -> list[Candidate]:
        if self.mode == "admissible":
            action_of = {format_response(a, "", self.prompt): a for a in _actions(item)}
            return [Candidate(action_of[s.text], s.text, s.logprob) for s in samples]
        admissible = item.observation.admissible_actions
        return [Candidate(parse_response(s.text, admissible, self.prompt.template).action, s.text, s.logprob)
                for s in samples]

    def _score(self, states: list[PromptState], prompts: list[str], batch: list[PolicyInput],
               candidates: list[list[Candidate]]) -> None:
        """Score every slot's distinct actions in one PRM call and copy each score to the action's duplicates."""
        jobs: list[tuple[int, int]] = []  # (slot position in batch, representative index)
        for position, (item, slot_candidates) in enumerate(zip(batch, candidates)):
            if self.score_duplicates:
                jobs.extend((position, i) for i in range(len(slot_candidates)))
                continue
            chosen = representatives(slot_candidates, item.observation.admissible_actions, self.filter_admissible)
            if len(chosen) > 1:
                jobs.extend((position, i) for i in chosen)
        if not jobs:
            return
        prm_prompts = self._prm_prompts(states, prompts)
        scores = self.prm.score([prm_prompts[p] for p, _ in jobs], [candidates[p][i].response for p, i in jobs])
        if len(scores) != len(jobs):
            raise ValueError(f"the PRM returned {len(scores)} scores for {len(jobs)} (prompt, response) pairs")
        self.prm_calls += 1
        self.prm_evaluations += len(jobs)
        for (position, i), score in zip(jobs, scores):
            if self.score_duplicates:
                candidates[position][i].score = float(score)
                continue
            action = candidates[position][i].action
            for candidate in candidates[position]:
                if candidate.action == action:
                    candidate.score = float(score)

    def _prm_prompts(self, states: list[PromptState], prompts: list[str]) -> list[str]:
        """Prompts as the PRM was trained to read them; the policy's own when tokenizer and config are the same."""
        tokenizer: Any = getattr(self.prm, "tokenizer", self.policy.tokenizer)
        config = self.prm_prompt or self.prompt
        if tokenizer is self.policy.tokenizer and config == self.prompt:
            return prompts
        return [render_prompt(state, config, tokenizer) for state in states]


def _actions(item: PolicyInput) -> list[str]:
    return candidate_actions(item.observation.admissible_actions)
