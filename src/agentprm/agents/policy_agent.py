"""The policy agent: a language-model policy acting in the batched runner.

For every live episode the agent renders the prompt (``models.prompts``) and picks an action in one of two modes:

- ``admissible`` (default for small models): sample among the admissible actions with probability
  softmax(log pi(a | s) / T), every candidate scored in one shared prompt pass (``Policy.sample_admissible``).
  A candidate is written as the response SFT trained on (``format_response(action)``: the bare action for the
  action-only template, "ACTION: <a>" for REASON/ACTION), so sampling, training and DPO score the same text;
- ``free``: free generation (the paper's mode for large models), parsed by ``models.parser``; an unparsable or
  non-admissible response is still sent to the engine as it is (and gets "Nothing happens.").

Either way the sample keeps its text, token ids and log-probability in ``last_samples`` (and the prompt in
``last_prompts``) for callers that record them (rollouts for training, evaluation records), so nothing is ever
re-tokenised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentprm.envs.runner import PolicyInput
from agentprm.models.parser import parse_response
from agentprm.models.policy import Policy, Sample
from agentprm.models.prompts import PromptConfig, PromptState, format_response, render_prompt

MODES = ("admissible", "free")


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
            actions_per_slot = [item.observation.admissible_actions or ["look"] for item in batch]
            # Candidates are written as SFT taught the model to answer (format_response), then mapped back.
            candidates = [[format_response(a, "", self.prompt) for a in actions] for actions in actions_per_slot]
            drawn = self.policy.sample_admissible(prompts, candidates, n=1, temperature=self.temperature, seed=seed)
            samples = [s[0] for s in drawn]
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
