"""Prompt rendering: exact output of both templates, history window and cutting, actions, chat wrapping, config."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from agentprm.data.records import StepRecord
from agentprm.envs.base import Game, Observation
from agentprm.models.prompts import (
    PromptConfig,
    PromptState,
    candidate_actions,
    cut_words,
    encode_prompts_within,
    format_response,
    history_within,
    load_template,
    prepare_actions,
    render_plain,
    render_prompt,
    render_prompt_within,
    select_history,
    strip_filler,
    visited_places,
    with_recent_history,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

STATE = PromptState(
    task="put a vase in coffeetable.",
    observation="You arrive at shelf 1. On the shelf 1, you see a vase 2.",
    admissible_actions=["take vase 2 from shelf 1", "go to coffeetable 1", "examine shelf 1", "look"],
    history=[
        ("-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. You see a shelf 1.", "look"),
        ("You are in the middle of a room. Looking quickly around you, you see a coffeetable 1.", "go to shelf 2"),
        ("You arrive at shelf 2. On the shelf 2, you see nothing.", "go to shelf 1"),
    ],
)

ACTION_ONLY_EXPECTED = (
    "Task: put a vase in coffeetable.\n"
    "Obs: You are in the middle of a room. Looking quickly around you, you see a coffeetable 1.\n"
    "ACTION: go to shelf 2\n"
    "Obs: You arrive at shelf 2. On the shelf 2, you see nothing.\n"
    "ACTION: go to shelf 1\n"
    "Obs: You arrive at shelf 1. On the shelf 1, you see a vase 2.\n"
    "Valid: examine shelf 1, go to coffeetable 1, look, take vase 2 from shelf 1\n"
    "ACTION:\n"
)

REASON_ACTION_EXPECTED = (
    "You are an agent playing a text-based game.\n"
    "Task: put a vase in coffeetable.\n"
    "Previous observations and actions:\n"
    "Observation: You are in the middle of a room. Looking quickly around you, you see a coffeetable 1.\n"
    "ACTION: go to shelf 2\n"
    "Observation: You arrive at shelf 2. On the shelf 2, you see nothing.\n"
    "ACTION: go to shelf 1\n"
    "Current observation: You arrive at shelf 1. On the shelf 1, you see a vase 2.\n"
    "Valid actions:\n"
    "- examine shelf 1\n"
    "- go to coffeetable 1\n"
    "- look\n"
    "- take vase 2 from shelf 1\n"
    "Think step by step, then choose exactly one valid action. Answer as:\n"
    "REASON: <your reasoning>\n"
    "ACTION: <one valid action>\n"
)


def _tokenizer(chat_template: str | None) -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "go": 1, "to": 2, "shelf": 3, "1": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


# -- exact output ----------------------------------------------------------------------------------------------------


def test_action_only_exact():
    assert render_prompt(STATE, PromptConfig()) == ACTION_ONLY_EXPECTED
    assert render_prompt(STATE) == ACTION_ONLY_EXPECTED  # the default config is action_only


def test_reason_action_exact():
    assert render_prompt(STATE, PromptConfig(template="reason_action")) == REASON_ACTION_EXPECTED


def test_reason_action_without_history_or_actions():
    state = PromptState("heat an egg.", "You see a microwave 1.", ["look"], [])
    config = PromptConfig(template="reason_action", show_actions=False)
    assert render_prompt(state, config) == (
        "You are an agent playing a text-based game.\n"
        "Task: heat an egg.\n"
        "Current observation: You see a microwave 1.\n"
        "Think step by step, then choose exactly one valid action. Answer as:\n"
        "REASON: <your reasoning>\n"
        "ACTION: <one valid action>\n"
    )


@pytest.mark.parametrize("template", ["action_only", "reason_action"])
def test_prompt_ends_with_exactly_one_newline(template):
    for window in (0, 2, -1):
        text = render_prompt(STATE, PromptConfig(template=template, history_window=window))
        assert text.endswith("\n") and not text.endswith("\n\n") and not text.endswith(" \n")
        assert all(line == line.strip() and line for line in text.split("\n")[:-1])


def test_rendering_is_deterministic_and_does_not_mutate_state():
    before = (list(STATE.admissible_actions), list(STATE.history))
    first = render_prompt(STATE, PromptConfig(template="reason_action"))
    assert render_prompt(STATE, PromptConfig(template="reason_action")) == first
    assert (STATE.admissible_actions, STATE.history) == before


def test_templates_load_from_package_data():
    import importlib.resources

    folder = importlib.resources.files("agentprm").joinpath("models", "templates")
    assert {"action_only.jinja", "reason_action.jinja"} <= {entry.name for entry in folder.iterdir()}
    assert load_template("action_only") is load_template("action_only")  # compiled once
    with pytest.raises(ValueError, match="template"):
        load_template("nope")


# -- history ---------------------------------------------------------------------------------------------------------


def test_history_window_zero():
    text = render_prompt(STATE, PromptConfig(history_window=0))
    assert text == (
        "Task: put a vase in coffeetable.\n"
        "Obs: You arrive at shelf 1. On the shelf 1, you see a vase 2.\n"
        "Valid: examine shelf 1, go to coffeetable 1, look, take vase 2 from shelf 1\n"
        "ACTION:\n"
    )


def test_history_window_all_strips_the_banner():
    text = render_prompt(STATE, PromptConfig(history_window=-1))
    assert text.startswith(
        "Task: put a vase in coffeetable.\n"
        "Obs: You are in the middle of a room. You see a shelf 1.\n"
        "ACTION: look\n"
        "Obs: You are in the middle of a room. Looking quickly around you, you see a coffeetable 1.\n"
    )
    assert "Welcome" not in text
    assert text.count("ACTION: ") == 3


def test_banner_kept_without_filler_stripping():
    text = render_prompt(STATE, PromptConfig(history_window=-1, strip_filler=False))
    assert "Obs: -= Welcome to TextWorld, ALFRED! =- You are in the middle of a room. You see a shelf 1.\n" in text


def test_select_history():
    pairs = [("a", "1"), ("b", "2"), ("c", "3")]
    assert select_history(pairs, 0) == []
    assert select_history(pairs, 2) == [("b", "2"), ("c", "3")]
    assert select_history(pairs, 5) == pairs
    assert select_history(pairs, -1) == pairs


def test_history_observations_are_cut_but_current_is_not():
    long_obs = " ".join(f"w{i}" for i in range(40))
    state = PromptState("t", long_obs, ["look"], [(long_obs, "look")])
    text = render_prompt(state, PromptConfig(history_obs_words=3, show_actions=False))
    assert text == f"Task: t\nObs: w0 w1 w2...\nACTION: look\nObs: {long_obs}\nACTION:\n"
    uncut = render_prompt(state, PromptConfig(history_obs_words=0, show_actions=False))
    assert uncut == f"Task: t\nObs: {long_obs}\nACTION: look\nObs: {long_obs}\nACTION:\n"


def test_cut_words():
    assert cut_words("a b c", 3) == "a b c"
    assert cut_words("a  b\nc d", 3) == "a b c..."
    assert cut_words("a b c d", 0) == "a b c d"
    assert cut_words("", 5) == ""


def test_strip_filler():
    assert strip_filler("-= Welcome to TextWorld, ALFRED! =-\n\nYou are here.").strip() == "You are here."


def test_multiline_values_become_single_lines():
    state = PromptState("find\nthe key", "You see:\n  a key\n\na box \n", ["take  key", "open\nbox"], [])
    text = render_prompt(state, PromptConfig(history_window=0))
    assert text == "Task: find the key\nObs: You see: a key a box\nValid: open box, take key\nACTION:\n"


# -- actions ---------------------------------------------------------------------------------------------------------


def test_actions_sorted_unsorted_and_hidden():
    unsorted = render_prompt(STATE, PromptConfig(sort_actions=False, history_window=0))
    assert "Valid: take vase 2 from shelf 1, go to coffeetable 1, examine shelf 1, look\n" in unsorted
    hidden = render_prompt(STATE, PromptConfig(show_actions=False, history_window=0))
    assert "Valid" not in hidden
    assert hidden.endswith("Obs: You arrive at shelf 1. On the shelf 1, you see a vase 2.\nACTION:\n")


def test_prepare_actions_drops_duplicates_and_empties():
    assert prepare_actions(["look", "b", "", "look", " a "], sort=True) == ["a", "b", "look"]
    assert prepare_actions(["look", "b", "look", "a"], sort=False) == ["look", "b", "a"]


def test_candidate_actions_drop_repeats_in_the_engine_order():
    assert candidate_actions(["look", "go to desk 1", "look", "inventory"]) == ["look", "go to desk 1", "inventory"]
    assert candidate_actions([]) == ["look"]


# -- states ----------------------------------------------------------------------------------------------------------


def _step(obs: str, action: str) -> StepRecord:
    return StepRecord(
        observation=obs,
        admissible_actions=[f"after {obs}", "look"],
        response=action,
        reason="",
        action=action,
        admissible=True,
        reward=0.0,
        done=False,
        won=False,
    )


def test_from_step_records_indices():
    steps = [_step("o0", "a0"), _step("o1", "a1"), _step("o2", "a2")]
    first = PromptState.from_step_records("task", steps, 0, task_type="pick")
    assert first == PromptState("task", "o0", ["after o0", "look"], [], "pick")
    last = PromptState.from_step_records("task", steps, 2)
    assert last == PromptState("task", "o2", ["after o2", "look"], [("o0", "a0"), ("o1", "a1")], "")
    assert PromptState.from_step_records("task", steps, 1).history == [("o0", "a0")]
    for bad in (3, -1, True):
        with pytest.raises(IndexError):
            PromptState.from_step_records("task", steps, bad)


def test_from_step_records_state_renders_like_runner_state():
    steps = [_step("o0", "a0"), _step("o1", "a1")]
    from_records = PromptState.from_step_records("task", steps, 1, "pick")
    observation = Observation(task="task", text="o1", admissible_actions=["after o1", "look"], task_type="pick")
    from_env = PromptState.from_observation(observation, [("o0", "a0")])
    assert from_env == from_records

    class Item:  # the fields of runner.PolicyInput that matter
        game = Game("alfworld", "g", "src", "train", "pick")
        history = [("o0", "a0")]

    Item.observation = Observation(task="task", text="o1", admissible_actions=["after o1", "look"])
    assert PromptState.from_policy_input(Item()) == from_records


# -- chat templates --------------------------------------------------------------------------------------------------


def test_chat_template_wraps_one_user_message():
    tokenizer = _tokenizer(CHAT_TEMPLATE)
    text = render_prompt(STATE, PromptConfig(), tokenizer)
    assert text == "<|user|>" + ACTION_ONLY_EXPECTED.removesuffix("\n") + "<|assistant|>"
    always = render_prompt(STATE, PromptConfig(template="reason_action", use_chat_template="always"), tokenizer)
    assert always == "<|user|>" + REASON_ACTION_EXPECTED.removesuffix("\n") + "<|assistant|>"


def test_never_mode_ignores_the_chat_template():
    tokenizer = _tokenizer(CHAT_TEMPLATE)
    assert render_prompt(STATE, PromptConfig(use_chat_template="never"), tokenizer) == ACTION_ONLY_EXPECTED


def test_auto_mode_without_chat_template_is_plain():
    assert render_prompt(STATE, PromptConfig(), _tokenizer(None)) == ACTION_ONLY_EXPECTED
    assert render_prompt(STATE, PromptConfig(), None) == ACTION_ONLY_EXPECTED


def test_always_mode_requires_a_chat_template():
    for tokenizer in (None, _tokenizer(None)):
        with pytest.raises(ValueError, match="use_chat_template"):
            render_prompt(STATE, PromptConfig(use_chat_template="always"), tokenizer)


def test_prompt_and_response_tokenize_apart():
    """Whitespace pre-tokenization splits prompt + response exactly at the boundary."""
    tokenizer = _tokenizer(None)
    prompt = render_plain(STATE, PromptConfig())
    response = format_response("go to shelf 1")
    joint = tokenizer(prompt + response, add_special_tokens=False)["input_ids"]
    apart = tokenizer(prompt, add_special_tokens=False)["input_ids"] + tokenizer(response)["input_ids"]
    assert joint == apart
    assert joint[-4:] == [1, 2, 3, 4]


# -- token budgets --------------------------------------------------------------------------------------------------

# Words of BUDGET_STATE's prompt; the whitespace pre-tokenizer splits "Task:" into "Task", ":".
BUDGET_WORDS = ["[UNK]", "[EOS]", "Task", ":", "put", "mug", "Obs", "ACTION", "Valid", "look",
                "o0", "o1", "o2", "o3", "a0", "a1", "a2"]
BUDGET_STATE = PromptState("put mug", "o3", ["look"], [("o0", "a0"), ("o1", "a1"), ("o2", "a2")])
FULL_HISTORY = PromptConfig(history_window=-1)


def _word_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(BUDGET_WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="[EOS]")


def test_history_within_drops_the_oldest_steps_first_by_hand():
    # "Task: put mug" 4 ids + 6 per step ("Obs: oN" and "ACTION: aN") + "Obs: o3" 3 + "Valid: look" 3 + "ACTION:" 2
    # = 12 + 6 k ids for k history steps (no BOS): 30, 24, 18, 12.
    tokenizer = _word_tokenizer()
    found = {budget: history_within(BUDGET_STATE, FULL_HISTORY, tokenizer, budget)
             for budget in (100, 30, 29, 24, 23, 18, 17, 12, 11)}
    assert found == {100: 3, 30: 3, 29: 2, 24: 2, 23: 1, 18: 1, 17: 0, 12: 0, 11: 0}
    assert history_within(BUDGET_STATE, PromptConfig(history_window=2), tokenizer, 100) == 2  # the window's 2
    assert render_prompt_within(BUDGET_STATE, FULL_HISTORY, tokenizer, 23) == (
        "Task: put mug\nObs: o2\nACTION: a2\nObs: o3\nValid: look\nACTION:\n")
    assert render_prompt_within(BUDGET_STATE, FULL_HISTORY, tokenizer, 30) == render_prompt(BUDGET_STATE, FULL_HISTORY)
    assert with_recent_history(BUDGET_STATE, 0).history == [] and BUDGET_STATE.history[0] == ("o0", "a0")


def test_encode_prompts_within_renders_again_and_cuts_left_only_as_a_last_resort():
    tokenizer = _word_tokenizer()
    ids = encode_prompts_within([BUDGET_STATE] * 3, FULL_HISTORY, tokenizer, [30, 23, 11])
    task, step2, rest = [2, 3, 4, 5], [6, 3, 12, 7, 3, 16], [6, 3, 13, 8, 3, 9, 7, 3]
    assert ids[0] == task + [6, 3, 10, 7, 3, 14, 6, 3, 11, 7, 3, 15] + step2 + rest  # fits whole
    assert ids[1] == task + step2 + rest  # 18 ids: o0 and o1 dropped
    assert ids[2] == (task + rest)[1:]  # 12 ids without history > 11: the old left cut, the last resort
    with pytest.raises(ValueError, match="budgets"):
        encode_prompts_within([BUDGET_STATE], FULL_HISTORY, tokenizer, [])


def test_a_prompt_longer_than_max_length_keeps_the_task_and_the_chat_header(long_episode):
    """configs/alfworld-llama3b.yaml: full history, reason_action, chat template, 2,048 tokens."""
    from agentprm.models.policy import encode_prompts

    record, config, max_length, tokenizer = long_episode
    state = PromptState.from_trajectory(record, 60)  # at cabinet 60, 60 history steps
    assert len(encode_prompts(tokenizer, [render_prompt(state, config, tokenizer)])[0]) > max_length
    kept = history_within(state, config, tokenizer, max_length)
    prompt = render_prompt_within(state, config, tokenizer, max_length)
    assert 0 < kept < 60 and prompt == render_prompt(with_recent_history(state, kept), config, tokenizer)
    assert prompt.startswith("<|bos|>user\nYou are an agent playing a text-based game.\nTask: put a clean mug in ")
    assert prompt.endswith("ACTION: <one valid action><|eos|>\n<|bos|>assistant\n")
    assert f"you see a mug {60 - kept}," in prompt and f"you see a mug {59 - kept}," not in prompt  # oldest first
    assert "ACTION: go to cabinet 60\n" in prompt  # the most recent step stays
    assert len(encode_prompts(tokenizer, [prompt])[0]) <= max_length
    longer = render_prompt(with_recent_history(state, kept + 1), config, tokenizer)
    assert len(encode_prompts(tokenizer, [longer])[0]) > max_length  # as few steps dropped as possible
    assert encode_prompts_within([state], config, tokenizer, [max_length]) == encode_prompts(tokenizer, [prompt])


# -- responses -------------------------------------------------------------------------------------------------------


def test_format_response():
    reason_action = PromptConfig(template="reason_action")
    assert format_response("go to shelf 1") == "go to shelf 1"
    assert format_response(" go to\nshelf 1 ", "ignored", PromptConfig()) == "go to shelf 1"
    assert format_response("go to shelf 1", "The vase is on a shelf.", reason_action) == (
        "REASON: The vase is on a shelf.\nACTION: go to shelf 1"
    )
    assert format_response("go to shelf 1", "", reason_action) == "ACTION: go to shelf 1"
    assert format_response("go to shelf 1", "  \n ", reason_action) == "ACTION: go to shelf 1"
    assert format_response("look", "first\nsecond ", reason_action) == "REASON: first second\nACTION: look"


def test_format_response_round_trips_through_the_parser():
    from agentprm.models.parser import parse_response

    for template, reason in (("reason_action", "The vase is here."), ("reason_action", ""), ("action_only", "")):
        response = format_response("take vase 2 from shelf 1", reason, PromptConfig(template=template))
        parsed = parse_response(response, STATE.admissible_actions, template)
        assert (parsed.action, parsed.reason, parsed.match_kind) == ("take vase 2 from shelf 1", reason, "exact")


# -- configuration ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("template", "chat"),
        ("template", None),
        ("history_window", -2),
        ("history_window", 1.5),
        ("history_window", True),
        ("history_obs_words", -1),
        ("history_obs_words", "25"),
        ("sort_actions", 1),
        ("show_actions", "yes"),
        ("strip_filler", None),
        ("use_chat_template", "sometimes"),
        ("use_chat_template", True),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        PromptConfig(**{field: value})


def test_valid_config_values():
    for window in (-1, 0, 2, 100):
        PromptConfig(history_window=window)
    for mode in ("auto", "never", "always"):
        PromptConfig(use_chat_template=mode)


def test_step_budget_shows_the_steps_left_in_every_template():
    state = PromptState("put a mug in the cabinet.", "You see a mug.", ["look"],
                        [("obs 1", "look"), ("obs 2", "inventory"), ("obs 3", "look")])
    for template in ("action_only", "reason_action"):
        shown = render_prompt(state, PromptConfig(template=template, step_budget=30, history_window=1,
                                                  use_chat_template="never"))
        assert "Steps left: 27" in shown  # the whole history counts, not the window shown
        plain = render_prompt(state, PromptConfig(template=template, use_chat_template="never"))
        assert "Steps left" not in plain
    late = PromptState("t", "o", ["look"], [("o", "look")] * 40)
    assert "Steps left: 0" in render_prompt(late, PromptConfig(step_budget=30, use_chat_template="never"))
    with pytest.raises(ValueError, match="step_budget"):
        PromptConfig(step_budget=-1)


def test_visited_places_lists_each_place_gone_to_once_in_first_visit_order():
    history = [("o0", "go to drawer 1"), ("o1", "open drawer 1"), ("o2", "go to shelf 1"), ("o3", "go to drawer 1"),
               ("o4", "go  to sofa 1"), ("o5", "go to\ncabinet 2"), ("o6", "move north")]
    # actions are read as the prompt shows them (whitespace collapsed); "move north" is no "go to"
    assert visited_places(history) == ["drawer 1", "shelf 1", "sofa 1", "cabinet 2"]
    assert visited_places([]) == [] and visited_places([("o", "look")]) == []


def test_show_visited_line_counts_the_whole_history_in_every_template():
    state = PromptState("put a mug in the cabinet.", "You arrive at shelf 1.", ["look"],
                        [("o1", "go to drawer 1"), ("o2", "open drawer 1"), ("o3", "go to shelf 1")])
    for template in ("action_only", "reason_action"):
        config = PromptConfig(template=template, show_visited=True, history_window=1, use_chat_template="never")
        shown = render_prompt(state, config)
        # the line follows the task line; "drawer 1" is outside the 1-step window and still listed
        assert "Task: put a mug in the cabinet.\nVisited: drawer 1, shelf 1\n" in shown
        assert "Obs: o1" not in shown and "Observation: o1" not in shown
        assert "Visited: none\n" in render_prompt(PromptState("t", "o", ["look"]), config)
        assert "Visited" not in render_prompt(state, PromptConfig(template=template, use_chat_template="never"))
    assert render_prompt(state, PromptConfig(show_visited=True, use_chat_template="never")) == (
        "Task: put a mug in the cabinet.\nVisited: drawer 1, shelf 1\nObs: o2\nACTION: open drawer 1\n"
        "Obs: o3\nACTION: go to shelf 1\nObs: You arrive at shelf 1.\nValid: look\nACTION:\n")
    with pytest.raises(ValueError, match="show_visited"):
        PromptConfig(show_visited="yes")


def test_a_token_budget_drops_history_lines_but_not_the_steps_left_or_visited_facts():
    state = PromptState("t", "o", ["look"], [("o1", "go to drawer 1"), ("o2", "look"), ("o3", "go to sofa 1")])
    config = PromptConfig(show_visited=True, step_budget=30, history_window=-1, use_chat_template="never")
    cut = with_recent_history(state, 1)
    assert cut.history == [("o3", "go to sofa 1")] and cut.dropped_history == state.history[:2]
    assert cut.whole_history() == state.history
    assert with_recent_history(cut, 0).history == [] and with_recent_history(cut, 0).whole_history() == state.history
    assert with_recent_history(state, 9).history == state.history  # keeping more than there is keeps all
    shown = render_prompt(cut, config)
    assert "Steps left: 27\n" in shown and "Visited: drawer 1, sofa 1\n" in shown and "o1" not in shown
