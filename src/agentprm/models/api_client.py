"""A client for OpenAI-compatible chat APIs (vLLM, SGLang, ``transformers serve``, llama.cpp's server, hosted APIs).

One request is ``POST {base_url}/chat/completions`` with ``{"model", "messages", "max_tokens", "temperature"}``;
the reply's ``choices[0].message.content`` is the text and ``usage`` its token counts. Only the standard library is
used, so the client adds no dependency and behaves the same against every server.

Failures and how they are handled:

* connection refused / reset, timeouts (``timeout`` seconds per request), HTTP 408, 409, 429 and 5xx are retried up to
  ``max_retries`` times with exponential backoff ``min(max_backoff, backoff * 2**k)`` before retry ``k + 1``, or the
  server's ``Retry-After`` (seconds) when it sends one with a 429/503 (capped at ``max_backoff``);
* any other HTTP error (400 bad request, 401 bad key, 404 unknown model) is not retried: a retry cannot fix it;
* after the last attempt :class:`EndpointError` names the URL, the attempts and the last error: bounded, never a hang.

``requests_per_minute`` (0 = unlimited) spaces request starts at least ``60 / rpm`` seconds apart across threads,
so a hosted API's rate limit is respected before it has to answer 429. Usage is counted per client (thread-safe):
requests, retries, prompt and completion tokens, and the cost at the configured prices per million tokens.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

from agentprm.config import above, at_least

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class EndpointError(RuntimeError):
    """The endpoint could not give an answer (unreachable after bounded retries, or a non-retryable error)."""


@dataclass
class ApiSettings:
    base_url: str = field(default="", metadata={"help": "the API's base URL ending in /v1, e.g. "
                                                        "http://127.0.0.1:8000/v1"})
    model: str = field(default="", metadata={"help": "model name as the server knows it"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "environment variable holding the API key (the key never goes into a config or a record); unset "
                "or empty: no Authorization header"})
    max_tokens: int = field(default=128, metadata={"range": at_least(1), "help": "completion cap per turn"})
    timeout: float = field(default=60.0, metadata={
        "range": above(0), "help": "seconds per request before it counts as failed"})
    max_retries: int = field(default=4, metadata={
        "range": at_least(0), "help": "retries of a failed request (connection errors, timeouts, 429, 5xx) before the "
                                      "evaluation stops"})
    backoff: float = field(default=1.0, metadata={
        "range": at_least(0), "help": "first retry delay (s); doubles each retry"})
    max_backoff: float = field(default=30.0, metadata={
        "range": at_least(0), "help": "longest retry delay (s), Retry-After included"})
    requests_per_minute: float = field(default=0.0, metadata={
        "range": at_least(0), "help": "client-side rate limit (0 = none)"})
    concurrency: int = field(default=4, metadata={
        "range": at_least(1), "help": "requests in flight at once (one per live episode)"})
    price_input_per_mtok: float = field(default=0.0, metadata={
        "range": at_least(0), "help": "cost per million prompt tokens"})
    price_output_per_mtok: float = field(default=0.0, metadata={
        "range": at_least(0), "help": "cost per million completion tokens"})

    def check_settings(self, where: str = "api") -> None:
        """Raise ValueError naming the key of a bad setting (called for API agents only)."""
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"{where}.base_url must start with http:// or https://, got {self.base_url!r}")
        if not self.model:
            raise ValueError(f"{where}.model is required (the name the server serves)")
        if self.max_tokens < 1 or self.timeout <= 0 or self.max_retries < 0 or self.concurrency < 1:
            raise ValueError(f"{where}: max_tokens and concurrency must be >= 1, timeout > 0, max_retries >= 0")
        if self.backoff < 0 or self.max_backoff < 0 or self.requests_per_minute < 0:
            raise ValueError(f"{where}: backoff, max_backoff and requests_per_minute must be >= 0")
        if self.price_input_per_mtok < 0 or self.price_output_per_mtok < 0:
            raise ValueError(f"{where}: prices must be >= 0")


@dataclass
class ChatReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    seconds: float
    attempts: int


@dataclass
class Usage:
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def cost(self, settings: ApiSettings) -> float:
        return (self.prompt_tokens * settings.price_input_per_mtok
                + self.completion_tokens * settings.price_output_per_mtok) / 1e6

    def as_dict(self, settings: ApiSettings) -> dict:
        return {"requests": self.requests, "retries": self.retries, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "seconds": round(self.seconds, 3),
                "cost": self.cost(settings)}


class ChatClient:
    """Thread-safe chat-completions client with bounded retries, backoff, a rate limit and usage accounting."""

    def __init__(self, settings: ApiSettings, sleep: Callable[[float], None] = time.sleep):
        settings.check_settings()
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self.usage = Usage()
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_start = 0.0

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.settings.api_key_env, "") if self.settings.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _wait_for_slot(self) -> None:
        """Client-side rate limit: request starts at least 60 / requests_per_minute seconds apart."""
        if not self.settings.requests_per_minute:
            return
        interval = 60.0 / self.settings.requests_per_minute
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + interval
        if start > now:
            self._sleep(start - now)

    def check(self) -> list[str]:
        """``GET {base_url}/models`` with the same retries: the served model ids. Run before any work, so a wrong
        URL fails at once instead of after the first game; raises :class:`EndpointError`."""
        url = self.settings.base_url.rstrip("/") + "/models"
        body = self._request(urllib.request.Request(url, headers=self._headers(), method="GET"))[0]
        try:
            return [str(item.get("id")) for item in json.loads(body).get("data", [])]
        except (json.JSONDecodeError, AttributeError, TypeError):
            raise EndpointError(f"{url} answered with something that is not a model list: {body[:200]!r}") from None

    def chat(self, messages: list[dict[str, str]], temperature: float = 0.0, max_tokens: int | None = None,
             seed: int | None = None) -> ChatReply:
        """One chat completion; malformed replies give empty text (the agent's parser handles that), never a crash."""
        payload = {"model": self.settings.model, "messages": messages, "temperature": temperature,
                   "max_tokens": max_tokens or self.settings.max_tokens}
        if seed is not None:
            payload["seed"] = seed
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode("utf-8"), headers=self._headers(),
                                         method="POST")
        started = time.perf_counter()
        body, attempts = self._request(request)
        seconds = time.perf_counter() - started
        text, finish, prompt_tokens, completion_tokens = _parse_reply(body)
        with self._lock:
            self.usage.requests += 1
            self.usage.retries += attempts - 1
            self.usage.prompt_tokens += prompt_tokens
            self.usage.completion_tokens += completion_tokens
            self.usage.seconds += seconds
        return ChatReply(text, prompt_tokens, completion_tokens, finish, seconds, attempts)

    def post(self, path: str, payload: dict) -> dict:
        """``POST {base_url}{path}`` with a JSON payload and the same retries; the decoded JSON object (a body that
        is not a JSON object raises :class:`EndpointError`). Counts a request and its usage like :meth:`chat`."""
        url = self.settings.base_url.rstrip("/") + path
        request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), headers=self._headers(),
                                         method="POST")
        started = time.perf_counter()
        body, attempts = self._request(request)
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise EndpointError(f"{url} answered with something that is not a JSON object: {body[:200]!r}")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        with self._lock:
            self.usage.requests += 1
            self.usage.retries += attempts - 1
            self.usage.prompt_tokens += _count(usage.get("prompt_tokens"))
            self.usage.completion_tokens += _count(usage.get("completion_tokens"))
            self.usage.seconds += time.perf_counter() - started
        return data

    def _request(self, request: urllib.request.Request) -> tuple[str, int]:
        """(response body, attempts used); retries what a retry can fix, raises EndpointError otherwise."""
        s = self.settings
        last = ""
        for attempt in range(s.max_retries + 1):
            self._wait_for_slot()
            delay = min(s.max_backoff, s.backoff * 2 ** attempt)
            try:
                with urllib.request.urlopen(request, timeout=s.timeout) as response:
                    return response.read().decode("utf-8", errors="replace"), attempt + 1
            except urllib.error.HTTPError as error:
                detail = error.read().decode("utf-8", errors="replace")[:300]
                last = f"HTTP {error.code}: {detail}"
                if error.code not in RETRY_STATUS:
                    raise EndpointError(f"{request.full_url} refused the request ({last}); not retried") from None
                retry_after = _retry_after(error.headers.get("Retry-After") if error.headers else None)
                if retry_after is not None:
                    delay = min(s.max_backoff, retry_after)
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as error:
                last = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
            if attempt < s.max_retries:
                self._sleep(delay)
        raise EndpointError(f"{request.full_url} unreachable after {s.max_retries + 1} attempts "
                            f"(timeout {s.timeout:g} s each); last error: {last}")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _parse_reply(body: str) -> tuple[str, str | None, int, int]:
    """(text, finish reason, prompt tokens, completion tokens) of a chat-completions body; missing parts are
    empty / zero (a server without ``usage`` counts no tokens)."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return "", None, 0, 0
    if not isinstance(data, dict):
        return "", None, 0, 0
    text, finish = "", None
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        text = content if isinstance(content, str) else ""
        finish = choices[0].get("finish_reason")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return text, finish, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
