"""A model behind an OpenAI-compatible chat API as a runner policy: the paper's GPT-4o / Claude rows.

Each live episode's state is rendered with the paper's prompt (``reason_action`` by default: task, earlier
observation/action pairs, current observation, valid actions, "REASON: ... ACTION: ...") and sent as one user
message; the reply is parsed by ``models.parser`` (which never throws): a matching admissible action is executed,
anything else is sent to the engine as written and gets the engine's own answer ("Nothing happens."), as a
malformed answer would in the paper's evaluation. The requests of a batch run concurrently (``api.concurrency``).

``last_steps`` holds, per slot, what the records keep for the step: the prompt, the raw reply, the parsed reason
and the request's token counts.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from agentprm.envs.runner import PolicyInput
from agentprm.models.api_client import ChatClient
from agentprm.models.parser import parse_response
from agentprm.models.prompts import PromptConfig, PromptState, render_plain


@dataclass
class ApiAgent:
    """Callable as a runner policy: ``agent(batch) -> actions``."""

    client: ChatClient
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(template="reason_action", history_window=-1))
    temperature: float = 0.3
    seed: int = 0
    last_steps: dict[int, dict] = field(default_factory=dict)
    _calls: int = 0

    def messages(self, item: PolicyInput) -> list[dict[str, str]]:
        text = render_plain(PromptState.from_policy_input(item), self.prompt).removesuffix("\n")
        return [{"role": "user", "content": text}]

    def __call__(self, batch: list[PolicyInput]) -> list[str]:
        requests = [self.messages(item) for item in batch]
        seed = self.seed * 1_000_003 + self._calls
        self._calls += 1
        with ThreadPoolExecutor(max_workers=max(1, min(self.client.settings.concurrency, len(batch)))) as pool:
            replies = list(pool.map(lambda args: self.client.chat(args[1], self.temperature, seed=seed + args[0]),
                                    enumerate(requests)))
        actions, self.last_steps = [], {}
        for item, messages, reply in zip(batch, requests, replies):
            parsed = parse_response(reply.text, item.observation.admissible_actions, self.prompt.template)
            actions.append(parsed.action)
            self.last_steps[item.slot] = {
                "prompt": messages[0]["content"], "response": reply.text, "reason": parsed.reason,
                "extras": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                           "finish_reason": reply.finish_reason, "parsable": parsed.parsable}}
        return actions
