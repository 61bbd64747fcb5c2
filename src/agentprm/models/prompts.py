"""Policy prompts: one place that turns an agent's state into the text a language model reads, and a step's
action (and reasoning) into the text it is trained to write.

Two templates, both Jinja files shipped as package data (``agentprm/models/templates/*.jinja``):

* ``reason_action`` -- the paper's prompt (task, earlier observation/action pairs, current observation, valid
  actions); the model answers ``REASON: <thinking>`` then ``ACTION: <command>``. For pretrained LLMs.
* ``action_only`` (default) -- a compact prompt for small models trained from scratch (last 2 pairs, older
  observations cut to 25 words, sorted valid actions); the model answers with the bare command.

The templates only lay text out. Everything that changes content happens here, in Python, so it can be tested:
choosing the history window, cutting history observations to ``history_obs_words`` words (plus ``"..."``), sorting
and de-duplicating actions, removing filler (ALFWorld's ``-= Welcome to TextWorld, ALFRED! =-`` banner) and
collapsing every run of whitespace -- newlines included -- to one space, so each observation is exactly one line.

The prompt/response boundary (training and inference must agree on it):

* Plain prompts (no chat template) end with exactly one ``"\\n"``: ``action_only`` with the line ``"ACTION:"``,
  ``reason_action`` with the answer-format line. Nothing else trails: no space after a colon, no blank line.
* Chat prompts are ``tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
  add_generation_prompt=True)`` where ``body`` is the plain prompt without its final ``"\\n"``; the prompt ends with
  the tokenizer's own generation prompt, unchanged.
* The response (:func:`format_response`) is the same in both modes, never starts or ends with whitespace and is
  appended directly: ``full_text = prompt + response`` (the end-of-sequence token, if any, is the trainer's job).
  ``action_only``: ``"go to cabinet 1"``. ``reason_action``: ``"REASON: <reason>\\nACTION: <action>"``, or just
  ``"ACTION: <action>"`` when there is no reason (expert demonstrations carry none; an invented filler reason would
  teach the model to write filler).

Token budgets (:func:`render_prompt_within`, :func:`encode_prompts_within`): when a prompt plus its response would
exceed a model's ``max_length``, the OLDEST history steps are dropped, as few as possible, and the prompt is
rendered again -- the task line, the chat header, the current observation and the valid actions always stay (short of
:func:`encode_prompts_within`'s last resort), so a shortened prompt has the shape of every other prompt. One rule for every path that has a budget: SFT and RFT
examples (``sft_data.build_examples``), the scalar PRM and InversePRM (``prm_training.encode_sequences``) and the
implicit PRM (``implicit_prm.episode_steps``), each with budget ``max_length - len(response ids)``. Sampling and
scoring at inference (``PolicyAgent``, ``BestOfNAgent``, online DPO, ``ProcessRewardModel.score``) know no maximum
length and render the whole prompt (``render_prompt``); a caller that has one calls :func:`render_prompt_within`,
which gives the prompt training built for the same budget.

Because the prompt ends in a newline and the response starts with a non-space character, whitespace-splitting and
GPT-2-style byte-level BPE tokenizers split ``prompt + response`` exactly at the boundary (the pre-tokenizer never
merges ``"\\n"`` with a following letter). For tokenizers that add a prefix space (SentencePiece), tokenize the
prompt and the response separately and concatenate the ids -- that is also exactly what generation sees.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jinja2

from agentprm.config import at_least

TEMPLATES: tuple[str, ...] = ("reason_action", "action_only")
CHAT_TEMPLATE_MODES: tuple[str, ...] = ("auto", "never", "always")

# Text that carries no information for the policy; removed when ``PromptConfig.strip_filler`` is on.
FILLER_TEXTS: tuple[str, ...] = ("-= Welcome to TextWorld, ALFRED! =-",)
ELLIPSIS = "..."

TemplateName = Literal["reason_action", "action_only"]
ChatMode = Literal["auto", "never", "always"]


# -- state and configuration -----------------------------------------------------------------------------------------


@dataclass
class PromptState:
    """What the policy knows before acting: the goal, the current observation, the valid commands and the episode
    so far as (observation shown, action taken) pairs, oldest first."""

    task: str
    observation: str
    admissible_actions: list[str]
    history: list[tuple[str, str]] = field(default_factory=list)
    task_type: str = ""
    # Steps before ``history`` that a token budget dropped (:func:`with_recent_history`): never shown, but still
    # counted by the "Steps left" and "Visited" lines, so that a shortened prompt states the same facts.
    dropped_history: list[tuple[str, str]] = field(default_factory=list)

    def whole_history(self) -> list[tuple[str, str]]:
        """Every earlier (observation, action) pair of the episode, the dropped ones included."""
        return list(self.dropped_history) + list(self.history)

    @classmethod
    def from_step_records(cls, task: str, steps: Sequence[Any], index: int, task_type: str = "") -> PromptState:
        """The state before step ``index`` (0-based) of an episode of ``StepRecord``s.

        The observation and admissible actions are those of ``steps[index]``; the history holds
        ``(steps[i].observation, steps[i].action)`` for every ``i < index``. Negative indices are not accepted.
        """
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(steps):
            raise IndexError(f"step index {index!r} out of range for an episode of {len(steps)} steps")
        current = steps[index]
        history = [(step.observation, step.action) for step in steps[:index]]
        return cls(task, current.observation, list(current.admissible_actions), history, task_type)

    @classmethod
    def from_trajectory(cls, record: Any, index: int) -> PromptState:
        """The state before step ``index`` of a ``TrajectoryRecord`` (task and task type taken from the record)."""
        return cls.from_step_records(record.task, record.steps, index, record.task_type)

    @classmethod
    def from_observation(cls, observation: Any, history: Iterable[tuple[str, str]] = ()) -> PromptState:
        """The state for an environment ``Observation`` and the (observation text, action) pairs before it."""
        return cls(
            observation.task,
            observation.text,
            list(observation.admissible_actions),
            [(obs, action) for obs, action in history],
            observation.task_type,
        )

    @classmethod
    def from_policy_input(cls, item: Any) -> PromptState:
        """The state for one slot of the batched runner (``agentprm.envs.runner.PolicyInput``)."""
        state = cls.from_observation(item.observation, item.history)
        state.task_type = state.task_type or item.game.task_type
        return state


@dataclass
class PromptConfig:
    """How states become prompts. Invalid values raise ``ValueError`` naming the field.

    ``history_window``: number of most recent (observation, action) pairs shown; 0 shows none, -1 shows all.
    ``history_obs_words``: history observations longer than this many words are cut and end in ``"..."``; 0 keeps
    them whole (the current observation is never cut). ``sort_actions``: list valid actions sorted (else in the
    engine's order); duplicates are always dropped. ``show_actions``: list them at all. ``use_chat_template``:
    "auto" wraps the prompt with the tokenizer's chat template when it has one, "never" ignores it, "always"
    requires it. ``strip_filler``: remove ``FILLER_TEXTS`` from observations. ``hint``: when set, a line
    ``Hint: <hint>`` before the answer line (steered exploration samples with it; training never sees it).
    ``step_budget``: when > 0, a line ``Steps left: <budget - steps taken>`` after the observation (the steps taken
    are the state's whole history, shown or not); set it to the episodes' step budget (``eval.max_steps``) so that
    every stage renders the same number for the same state. ``show_visited``: a line ``Visited: <places>`` after
    the task, the places the agent went to over the whole episode (:func:`visited_places`), so that a short
    history window still shows where it has already been; ``Visited: none`` before the first move.
    """

    template: TemplateName = field(default="action_only", metadata={
        "help": "action_only (compact, for small models) or reason_action (the paper's REASON/ACTION)"})
    history_window: int = field(default=2, metadata={"range": at_least(-1), "help": "recent (observation, action) "
                                                     "pairs shown; 0 none, -1 all"})
    history_obs_words: int = field(default=25, metadata={"range": at_least(0), "help": "history observations cut "
                                                         "to this many words (0 = whole)"})
    sort_actions: bool = field(default=True, metadata={"help": "list the valid actions sorted"})
    show_actions: bool = field(default=True, metadata={"help": "list the valid actions at all"})
    use_chat_template: ChatMode = field(default="auto", metadata={"help": "wrap with the tokenizer's chat "
                                                                          "template: auto, never, always"})
    strip_filler: bool = field(default=True, metadata={"help": "remove engine boilerplate from observations"})
    hint: str = field(default="", metadata={"help": "a 'Hint:' line (steered exploration only)"})
    step_budget: int = field(default=0, metadata={"range": at_least(0), "help": "> 0: a 'Steps left' line, "
                                                  "budget - steps taken (set it to eval.max_steps)"})
    show_visited: bool = field(default=False, metadata={"help": "a 'Visited:' line: the places gone to over the "
                                                        "whole episode"})

    def __post_init__(self) -> None:
        if not isinstance(self.hint, str):
            raise ValueError(f"PromptConfig.hint must be a string, got {self.hint!r}")
        _check_choice("template", self.template, TEMPLATES)
        _check_int("history_window", self.history_window, minimum=-1)
        _check_int("history_obs_words", self.history_obs_words, minimum=0)
        _check_int("step_budget", self.step_budget, minimum=0)
        for name in ("sort_actions", "show_actions", "strip_filler", "show_visited"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"PromptConfig.{name} must be a bool, got {getattr(self, name)!r}")
        _check_choice("use_chat_template", self.use_chat_template, CHAT_TEMPLATE_MODES)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"PromptConfig.{name} must be one of {list(choices)}, got {value!r}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"PromptConfig.{name} must be an int >= {minimum}, got {value!r}")


# -- text clean-up ---------------------------------------------------------------------------------------------------


def one_line(text: str) -> str:
    """Collapse every run of whitespace (newlines included) to one space and strip the ends."""
    return " ".join(str(text).split())


def strip_filler(text: str) -> str:
    """Remove engine boilerplate (``FILLER_TEXTS``) that carries nothing for the policy."""
    for filler in FILLER_TEXTS:
        text = text.replace(filler, " ")
    return text


def cut_words(text: str, max_words: int) -> str:
    """The first ``max_words`` words of ``text`` followed by ``"..."`` when it is longer; 0 means no cut."""
    words = text.split()
    if max_words <= 0 or len(words) <= max_words:
        return " ".join(words)
    return " ".join(words[:max_words]) + ELLIPSIS


def select_history(history: Sequence[tuple[str, str]], window: int) -> list[tuple[str, str]]:
    """The last ``window`` pairs (0: none, -1: all)."""
    if window == 0:
        return []
    return list(history) if window < 0 else list(history[-window:])


MOVE_PREFIX = "go to "


def visited_places(history: Iterable[tuple[str, str]]) -> list[str]:
    """The places of the ``go to <place>`` actions in ``history``, each once, in the order first gone to.

    ALFWorld moves only by ``go to <receptacle>``; an environment without such actions (TextWorldExpress moves by
    ``move <direction>``) gives an empty list, and its prompt says ``Visited: none``.
    """
    moves = (one_line(action) for _, action in history)
    places = (move[len(MOVE_PREFIX):] for move in moves if move.startswith(MOVE_PREFIX))
    return list(dict.fromkeys(place for place in places if place))


def prepare_actions(actions: Iterable[str], sort: bool) -> list[str]:
    """Valid actions as shown: one line each, empty ones and duplicates dropped, optionally sorted."""
    unique = list(dict.fromkeys(one_line(action) for action in actions))
    unique = [action for action in unique if action]
    return sorted(unique) if sort else unique


def candidate_actions(actions: Iterable[str]) -> list[str]:
    """The actions an ``admissible``-mode sampler draws from: the engine's list with repeats dropped (first
    occurrence kept, engine's order), or ``["look"]`` when it is empty.

    One rule for every stage that samples among admissible actions (``PolicyAgent``, ``BestOfNAgent``, online
    DPO, InversePRM's a', branching rollouts): a repeated action would otherwise count twice in
    softmax(log pi / T), so the same state would have different action distributions in different stages.
    """
    return list(dict.fromkeys(actions)) or ["look"]


def _clean_observation(text: str, config: PromptConfig) -> str:
    return one_line(strip_filler(text) if config.strip_filler else text)


def template_variables(state: PromptState, config: PromptConfig) -> dict[str, Any]:
    """The values the Jinja templates see, already cut, sorted and cleaned."""
    history = [
        {
            "observation": cut_words(_clean_observation(obs, config), config.history_obs_words),
            "action": one_line(action),
        }
        for obs, action in select_history(state.history, config.history_window)
    ]
    whole = state.whole_history()
    return {
        "task": one_line(state.task),
        "task_type": state.task_type,
        "observation": _clean_observation(state.observation, config),
        "history": history,
        "show_actions": config.show_actions,
        "actions": prepare_actions(state.admissible_actions, config.sort_actions),
        "hint": one_line(config.hint),
        "steps_left": max(config.step_budget - len(whole), 0) if config.step_budget else None,
        "visited": (", ".join(visited_places(whole)) or "none") if config.show_visited else None,
    }


# -- rendering -------------------------------------------------------------------------------------------------------


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@functools.cache
def load_template(name: str) -> jinja2.Template:
    """The compiled template ``name`` from package data (read and compiled once per process)."""
    if name not in TEMPLATES:
        raise ValueError(f"Unknown prompt template {name!r}; expected one of {list(TEMPLATES)}")
    source = importlib.resources.files("agentprm").joinpath("models", "templates", f"{name}.jinja").read_text("utf-8")
    return _environment().from_string(source)


def compile_template(source: str) -> jinja2.Template:
    """A template from its source, with the policy templates' settings (strict variables, trimmed blocks); for
    template files beside the packaged ones (``pipeline.rationalise``)."""
    return _environment().from_string(source)


def uses_chat_template(config: PromptConfig, tokenizer: Any = None) -> bool:
    """Whether :func:`render_prompt` wraps the prompt with ``tokenizer``'s chat template under ``config``."""
    has_template = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if config.use_chat_template == "never":
        return False
    if config.use_chat_template == "always" and not has_template:
        raise ValueError("PromptConfig.use_chat_template is 'always' but the tokenizer has no chat template")
    return has_template


def render_plain(state: PromptState, config: PromptConfig) -> str:
    """The prompt without chat wrapping; always ends with exactly one newline."""
    return load_template(config.template).render(**template_variables(state, config))


def render_prompt(state: PromptState, config: PromptConfig | None = None, tokenizer: Any = None) -> str:
    """The prompt for ``state``; append :func:`format_response`'s text directly after it (see module docstring)."""
    config = config or PromptConfig()
    text = render_plain(state, config)
    if not uses_chat_template(config, tokenizer):
        return text
    messages = [{"role": "user", "content": text.removesuffix("\n")}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def format_response(action: str, reason: str = "", config: PromptConfig | None = None) -> str:
    """The training target for one step, appended directly after the prompt.

    ``action_only``: the command. ``reason_action``: ``"REASON: <reason>\\nACTION: <action>"``, or
    ``"ACTION: <action>"`` when ``reason`` is empty. Both are cleaned to single lines, so the response never
    starts or ends with whitespace and is at most two lines.
    """
    config = config or PromptConfig()
    action = one_line(action)
    if config.template == "action_only":
        return action
    reason = one_line(reason)
    return f"REASON: {reason}\nACTION: {action}" if reason else f"ACTION: {action}"


# -- token budgets ---------------------------------------------------------------------------------------------------


def with_recent_history(state: PromptState, keep: int) -> PromptState:
    """A copy of ``state`` whose history shows only its last ``keep`` steps (``keep`` >= 0); the others move to
    ``dropped_history``, so the "Steps left" and "Visited" lines still count them."""
    cut = max(len(state.history) - keep, 0) if keep > 0 else len(state.history)
    return dataclasses.replace(state, history=list(state.history[cut:]),
                               dropped_history=list(state.dropped_history) + list(state.history[:cut]))


def prompt_length(prompt: str, tokenizer: Any) -> int:
    """Number of prompt ids the policy feeds for ``prompt`` (``policy.encode_prompts``: BOS, if any, + text)."""
    from agentprm.models.policy import encode_prompts  # lazy: rendering alone needs no torch

    return len(encode_prompts(tokenizer, [prompt])[0])


def history_within(state: PromptState, config: PromptConfig, tokenizer: Any, budget: int) -> int:
    """How many of the most recent history steps the prompt can show within ``budget`` prompt ids: the largest
    ``k`` <= the steps ``config.history_window`` shows with ``prompt_length(render_prompt(last k steps)) <= budget``;
    0 when even the prompt without history is too long (the caller decides what to do then).

    Every history step adds whole lines to the prompt, so its length grows with ``k`` and a binary search finds
    ``k`` in about log2(steps) renderings.
    """
    shown = len(select_history(state.history, config.history_window))

    def fits(keep: int) -> bool:
        return prompt_length(render_prompt(with_recent_history(state, keep), config, tokenizer), tokenizer) <= budget

    if fits(shown):
        return shown
    low, high = 0, shown - 1  # the answer is in [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def render_prompt_within(state: PromptState, config: PromptConfig, tokenizer: Any, budget: int) -> str:
    """:func:`render_prompt` with the oldest history steps dropped, as few as possible, so that the prompt's ids
    number at most ``budget``; the prompt without history when even that is too long."""
    return render_prompt(with_recent_history(state, history_within(state, config, tokenizer, budget)), config,
                         tokenizer)


def encode_prompts_within(states: Sequence[PromptState], config: PromptConfig, tokenizer: Any,
                          budgets: Sequence[int]) -> list[list[int]]:
    """Prompt ids (``policy.encode_prompts``) of ``render_prompt_within(state, config, tokenizer, budget)`` per
    (state, budget), the training side of the module's token-budget rule. A prompt that fits whole costs one batched
    tokenisation; only the others are rendered again with fewer history steps.

    Last resort, when even the prompt without history exceeds its budget (task, current observation and valid
    actions alone are too long): the oldest ids are cut from the left, after the BOS the tokenizer adds. That loses
    the task line, so it is kept only so that one oversized state cannot stop a run.
    """
    from agentprm.models.policy import encode_prompts, tokenizer_adds_bos

    if len(states) != len(budgets):
        raise ValueError(f"{len(states)} states but {len(budgets)} budgets")
    encoded = encode_prompts(tokenizer, [render_prompt(state, config, tokenizer) for state in states])
    keep_bos = tokenizer_adds_bos(tokenizer)
    for i, (state, budget) in enumerate(zip(states, budgets)):
        if len(encoded[i]) <= budget:
            continue
        ids = encode_prompts(tokenizer, [render_prompt_within(state, config, tokenizer, budget)])[0]
        if len(ids) > budget:  # last resort (see docstring): the old left cut
            ids = ids[:1] + ids[len(ids) - budget + 1:] if keep_bos else ids[len(ids) - budget:]
        encoded[i] = ids
    return encoded
