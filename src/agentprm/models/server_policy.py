"""Sampling from an inference server: ``Policy.generate`` behind an OpenAI-compatible completions endpoint.

At scale the policy is served by vLLM or SGLang on GPUs while the driver runs the environments. :class:`ServerPolicy`
renders nothing itself: agents render prompts with its ``tokenizer`` exactly as for a local policy (chat template
included) and it sends each prompt to ``POST {base_url}/completions`` with ``n``, ``temperature``, ``top_p``,
``max_tokens``, ``seed`` and ``logprobs: 0``, and with ``token_ids=True`` (vLLM) ``return_tokens_as_token_ids:
true``, so that the server returns the sampled token ids (``"token_id:123"``) and their log-probabilities: the
sample is then exactly what the server drew, nothing re-tokenised. (A strict server refuses the vLLM field, so it
is off by default.) Start vLLM with ``--logprobs-mode raw_logprobs`` (its
default) so the log-probabilities are the unmodified model's, as :class:`agentprm.models.policy.Sample` defines.

A server that returns text only (``transformers serve``, or a server without logprobs) gets the fallback: token ids
from this policy's tokenizer (text + EOS when the server stopped by itself) and, when ``scorer`` is a local copy of
the same checkpoint, the log-probability from a teacher-forced pass; without a scorer the log-probability is NaN.
A server that returns fewer than ``n`` choices (``transformers serve`` ignores ``n``) is asked again with the next
seeds until there are ``n``. Only free generation is served: admissible mode needs every candidate's likelihood,
which OpenAI-compatible servers do not return.

Checkpoints between iterations: the request's ``model`` is the checkpoint the server should use. ``transformers
serve`` without a fixed model loads a checkpoint folder on first use, so naming iteration i's folder is the
reload (tested); vLLM reloads with ``POST /v1/load_lora_adapter`` (LoRA) or a restart on the new folder; SGLang
with ``POST /update_weights_from_disk {"model_path": ...}``. The folder must be readable by the server.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentprm.models.api_client import ApiSettings, ChatClient
from agentprm.models.policy import Sample, encode_responses


class ServerPolicy:
    """The sampling half of :class:`agentprm.models.policy.Policy`, served (see the module docstring)."""

    def __init__(self, settings: ApiSettings, tokenizer: Any, scorer: Any = None, token_ids: bool = False):
        self.client = ChatClient(settings)
        self.token_ids = token_ids
        self.settings = settings
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.eos_id = int(tokenizer.eos_token_id)

    @classmethod
    def for_checkpoint(cls, base_url: str, checkpoint: str, score_locally: bool = True, token_ids: bool = False,
                       **settings: Any):
        """A server policy whose model is ``checkpoint`` (the folder the server loads), with its tokenizer and,
        with ``score_locally``, a local copy to score log-probabilities the server does not return."""
        from transformers import AutoTokenizer

        from agentprm.models.policy import Policy

        scorer = Policy.from_pretrained(checkpoint) if score_locally else None
        tokenizer = scorer.tokenizer if scorer is not None else AutoTokenizer.from_pretrained(checkpoint)
        return cls(ApiSettings(base_url=base_url, model=str(checkpoint), **settings), tokenizer, scorer, token_ids)

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 32, seed: int | None = None) -> list[list[Sample]]:
        """``n`` samples per prompt (prompt-major), as ``Policy.generate``; requests run concurrently."""
        base = 0 if seed is None else seed

        def one(index: int) -> list[Sample]:
            samples: list[Sample] = []
            attempt = 0
            while len(samples) < n:
                payload = {"model": self.settings.model, "prompt": prompts[index], "n": n - len(samples),
                           "temperature": temperature, "top_p": top_p, "max_tokens": max_new_tokens,
                           "seed": base + 7919 * index + attempt, "logprobs": 0}
                if self.token_ids:
                    payload["return_tokens_as_token_ids"] = True
                choices = self.client.post("/completions", payload).get("choices") or []
                if not choices:
                    raise ValueError(f"{self.client.settings.base_url}/completions returned no choices")
                samples += [self._sample(prompts[index], choice) for choice in choices[: n - len(samples)]]
                attempt += 1
            return samples

        with ThreadPoolExecutor(max_workers=max(1, min(self.settings.concurrency, len(prompts)))) as pool:
            return list(pool.map(one, range(len(prompts))))

    def sample_admissible(self, *args: Any, **kwargs: Any):
        raise NotImplementedError("a served policy samples in free mode (policy.mode: free): OpenAI-compatible "
                                  "servers do not return the likelihood of every admissible action")

    def _sample(self, prompt: str, choice: dict) -> Sample:
        text = choice.get("text") if isinstance(choice.get("text"), str) else ""
        finished = choice.get("finish_reason") == "stop"
        logprobs = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else {}
        tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
        if tokens and values and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
            ids = [int(t.split(":", 1)[1]) for t in tokens]
            return Sample(text, ids, float(sum(v for v in values if v is not None)), finished)
        ids = encode_responses(self.tokenizer, [text])[0]
        if not finished:
            ids = ids[:-1]  # the server stopped at max_tokens: no EOS was generated
        logprob = math.nan
        if self.scorer is not None:
            logprob = self.scorer.sequence_logprobs([(self._prompt_ids(prompt), ids)])[0]
        return Sample(text, ids, logprob, finished)

    def _prompt_ids(self, prompt: str) -> list[int]:
        from agentprm.models.policy import encode_prompts

        return encode_prompts(self.tokenizer, [prompt])[0]
