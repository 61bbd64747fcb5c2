"""The policy agent: a language-model policy acting in the batched runner.

For every live episode the agent renders the prompt (``models.prompts``) and picks an action in one of two modes:

- ``admissible`` (default for small models): sample among the admissible actions (``prompts.candidate_actions``:
  each distinct action once, as in every stage that samples them) with probability softmax(log pi(a | s) / T), every candidate scored in one shared prompt pass (``Policy.sample_admissible``).
  A candidate is written as the response SFT trained on (``format_response(action)``: the bare action for the
  action-only template, "ACTION: <a>" for REASON/ACTION), so sampling, training and DPO score the same text;
- ``free``: free generation (the paper's mode for large models), parsed by ``models.parser``; an unparsable or
  non-admissible response is still sent to the engine as it is (and gets "Nothing happens.").

Either way the sample keeps its text, token ids and log-probability in ``last_samples`` (and the prompt in
``last_prompts``) for callers that record them (rollouts for training, evaluation records), so nothing is ever
re-tokenised.

``score_cache`` (admissible mode, optional): a :class:`ScoreCache` of candidate log-probabilities by prompt. With a
short history window the same prompt recurs across the episodes of a game (many continuations of one state take
the same path), and a cached prompt costs no forward pass. The draws are the uncached path's: one generator seeded
per call, one draw per prompt in batch order, from softmax(log pi / T).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentprm.envs.runner import PolicyInput
from agentprm.models.parser import parse_response
from agentprm.models.policy import Policy, Sample, _make_generator, _sample_indices, encode_responses
from agentprm.models.prompts import PromptConfig, PromptState, candidate_actions, format_response, render_prompt

MODES = ("admissible", "free")


class ScoreCache:
    """Prompt -> log pi(candidate | prompt) for each candidate text, at most ``max_entries`` prompts (cleared
    whole when full: entries are cheap to recompute and a bounded dict keeps memory flat)."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self.entries: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        self.hits = 0
        self.misses = 0

    def scores(self, policy: Policy, prompts: list[str], candidates: list[list[str]]) -> list[list[float]]:
        """Log-probs of every prompt's candidates, scoring only the (prompt, candidates) not seen before."""
        keys = [(prompt, tuple(cands)) for prompt, cands in zip(prompts, candidates)]
        known = {key: self.entries[key] for key in keys if key in self.entries}  # read before any clearing
        missing = [key for key in dict.fromkeys(keys) if key not in known]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = policy.score_candidates([p for p, _ in missing], [list(c) for _, c in missing])
            known.update(zip(missing, fresh))
            if len(self.entries) + len(missing) > self.max_entries:
                self.entries.clear()
            self.entries.update(zip(missing, fresh))
        return [known[key] for key in keys]


@dataclass
class PolicyAgent:
    """Callable as a runner policy: ``agent(batch) -> actions``."""

    policy: Policy
    prompt: PromptConfig = field(default_factory=PromptConfig)
    mode: str = "admissible"
    temperature: float = 0.3
    top_p: float = 1.0
    max_new_tokens: int = 48
    seed: int = 0
    last_samples: dict[int, Sample] = field(default_factory=dict)
    last_prompts: dict[int, str] = field(default_factory=dict)
    score_cache: ScoreCache | None = None
    _calls: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    def prompts(self, batch: list[PolicyInput]) -> list[str]:
        return [render_prompt(PromptState.from_policy_input(item), self.prompt, self.policy.tokenizer)
                for item in batch]

    def __call__(self, batch: list[PolicyInput]) -> list[str]:
        prompts = self.prompts(batch)
        # A fresh seed per call keeps the run reproducible without repeating the same draw every turn.
        seed = self.seed * 1_000_003 + self._calls
        self._calls += 1
        if self.mode == "admissible":
            actions_per_slot = [candidate_actions(item.observation.admissible_actions) for item in batch]
            # Candidates are written as SFT taught the model to answer (format_response), then mapped back.
            candidates = [[format_response(a, "", self.prompt) for a in actions] for actions in actions_per_slot]
            samples = self._sample_admissible(prompts, candidates, seed)
            actions = [actions[texts.index(s.text)]
                       for s, texts, actions in zip(samples, candidates, actions_per_slot)]
        else:
            samples = [s[0] for s in self.policy.generate(prompts, n=1, temperature=self.temperature,
                                                          top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                                                          seed=seed)]
            actions = [parse_response(s.text, item.observation.admissible_actions, self.prompt.template).action
                       for s, item in zip(samples, batch)]
        self.last_samples = {item.slot: sample for item, sample in zip(batch, samples)}
        self.last_prompts = {item.slot: prompt for item, prompt in zip(batch, prompts)}
        return actions

    def _sample_admissible(self, prompts: list[str], candidates: list[list[str]], seed: int) -> list[Sample]:
        if self.score_cache is None:
            drawn = self.policy.sample_admissible(prompts, candidates, n=1, temperature=self.temperature, seed=seed)
            return [s[0] for s in drawn]
        import torch

        scores = self.score_cache.scores(self.policy, prompts, candidates)
        gen = _make_generator(seed, torch.device("cpu"))
        samples = []
        for texts, lps in zip(candidates, scores):
            pick = _sample_indices(torch.tensor(lps, dtype=torch.float64), 1, self.temperature, gen)[0]
            ids = encode_responses(self.policy.tokenizer, [texts[pick]])[0]
            samples.append(Sample(text=texts[pick], token_ids=ids, logprob=lps[pick], finished=True))
        return samples
