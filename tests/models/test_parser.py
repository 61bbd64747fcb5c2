"""Response parsing: exact results for well-formed, sloppy, truncated and hostile outputs; never raises."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentprm.models.parser import (
    ParsedResponse,
    _parse,
    clean_command,
    normalize_command,
    old_put_to_move,
    parse_response,
)

ALFWORLD = [
    "go to countertop 1",
    "go to fridge 1",
    "take apple 1 from countertop 1",
    "move apple 1 to fridge 1",
    "heat apple 1 with microwave 1",
    "open drawer 2",
    "examine sofa 1",
    "inventory",
    "look",
]
TWC = ["take red shirt", "put red shirt in wardrobe", "open door to kitchen", "move south", "look around"]


def _ok(action: str, raw: str, reason: str = "", kind: str = "exact") -> ParsedResponse:
    return ParsedResponse(reason=reason, action=action, raw_action=raw, matched=True, parsable=True, match_kind=kind)


UNPARSABLE = ParsedResponse(reason="", action="", raw_action="", matched=False, parsable=False, match_kind="none")


# -- reason_action ---------------------------------------------------------------------------------------------------


def test_well_formed():
    text = "REASON: The apple should be cold, so I go to the fridge.\nACTION: go to fridge 1"
    assert parse_response(text, ALFWORLD) == _ok(
        "go to fridge 1", "go to fridge 1", "The apple should be cold, so I go to the fridge."
    )


def test_lowercase_spaced_and_markdown_markers():
    assert parse_response("reason: cold\naction: look", ALFWORLD) == _ok("look", "look", "cold")
    assert parse_response("Reason : cold\nAction : look", ALFWORLD) == _ok("look", "look", "cold")
    assert parse_response("**REASON:** cold\n**ACTION:** `look`", ALFWORLD) == _ok("look", "`look`", "cold")
    assert parse_response("**Reason**: cold\n**Action**: look", ALFWORLD) == _ok("look", "look", "cold")
    assert parse_response("Next action: look", ALFWORLD) == _ok("look", "look", "Next")


def test_action_on_the_same_line_as_the_reason():
    assert parse_response("REASON: nothing here. ACTION: look", ALFWORLD) == _ok("look", "look", "nothing here.")


def test_no_reason_marker_keeps_the_text_before_the_action_as_reason():
    assert parse_response("I should look.\nACTION: look", ALFWORLD) == _ok("look", "look", "I should look.")
    assert parse_response("ACTION: look", ALFWORLD) == _ok("look", "look", "")


def test_empty_reason():
    assert parse_response("REASON:\nACTION: inventory", ALFWORLD) == _ok("inventory", "inventory", "")


def test_last_action_marker_wins():
    text = "REASON: the ACTION: take apple failed, so\nACTION: look\nACTION: inventory"
    reason = "the ACTION: take apple failed, so\nACTION: look"
    assert parse_response(text, ALFWORLD) == _ok("inventory", "inventory", reason)
    quoted = "REASON: the ACTION: take apple 1 failed before\nACTION: go to fridge 1"
    assert parse_response(quoted, ALFWORLD) == _ok(
        "go to fridge 1", "go to fridge 1", "the ACTION: take apple 1 failed before"
    )


def test_reason_is_taken_from_the_last_reason_marker_before_the_action():
    text = "REASON: first try\nREASON: second thought\nACTION: look"
    assert parse_response(text, ALFWORLD).reason == "second thought"


def test_text_after_the_action_line_is_ignored():
    text = "REASON: r\nACTION: go to fridge 1\nObservation: You arrive at fridge 1.\nThe fridge is closed."
    assert parse_response(text, ALFWORLD) == _ok("go to fridge 1", "go to fridge 1", "r")
    assert parse_response("ACTION: look\r\nmore", ALFWORLD) == _ok("look", "look")


def test_quotes_punctuation_backticks_and_prompt_sign_are_stripped():
    assert parse_response('ACTION: "go to fridge 1".', ALFWORLD) == _ok("go to fridge 1", '"go to fridge 1".')
    assert parse_response("ACTION: > look", ALFWORLD) == _ok("look", "> look")
    assert parse_response("ACTION: ```open drawer 2```", ALFWORLD) == _ok("open drawer 2", "```open drawer 2```")
    assert parse_response("ACTION: 'inventory'!", ALFWORLD) == _ok("inventory", "'inventory'!")
    assert parse_response("ACTION: *look*", ALFWORLD) == _ok("look", "*look*")


def test_truncated_outputs_are_unparsable():
    assert parse_response("REASON: I should go to the", ALFWORLD) == ParsedResponse(
        reason="I should go to the", action="", raw_action="", matched=False, parsable=False, match_kind="none"
    )
    assert parse_response("REASON: go\nACTION:", ALFWORLD) == ParsedResponse(
        reason="go", action="", raw_action="", matched=False, parsable=False, match_kind="none"
    )
    assert parse_response("REASON: go\nACT", ALFWORLD).parsable is False


def test_action_marker_followed_by_only_junk_is_unparsable():
    assert parse_response("ACTION: ...", ALFWORLD) == ParsedResponse(
        reason="", action="", raw_action="...", matched=False, parsable=False, match_kind="none"
    )
    assert parse_response("ACTION:\ngo to fridge 1", ALFWORLD).parsable is False  # the rest of the marker line


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "None", "\x00\x01", "ACTIONS", "reaction: look", "���"])
def test_garbage_without_marker_is_unparsable(text):
    assert parse_response(text, ALFWORLD) == UNPARSABLE


def test_non_string_input_is_treated_as_empty():
    for value in (None, 3, b"ACTION: look", ["ACTION: look"]):
        assert parse_response(value, ALFWORLD) == UNPARSABLE  # type: ignore[arg-type]


def test_unmatched_command_is_kept_best_effort():
    assert parse_response("ACTION: fly to the moon.", ALFWORLD) == ParsedResponse(
        reason="", action="fly to the moon", raw_action="fly to the moon.", matched=False, parsable=True,
        match_kind="none",
    )


def test_without_admissible_list_nothing_matches():
    for admissible in (None, []):
        assert parse_response("ACTION: look", admissible) == ParsedResponse(
            reason="", action="look", raw_action="look", matched=False, parsable=True, match_kind="none"
        )


def test_unicode():
    assert parse_response("REASON: il fait froid ❄️\nACTION: « look »", ALFWORLD) == _ok(
        "look", "« look »", "il fait froid ❄️"
    )
    assert parse_response("ACTION: 去冰箱", ALFWORLD) == ParsedResponse(
        reason="", action="去冰箱", raw_action="去冰箱", matched=False, parsable=True, match_kind="none"
    )
    assert parse_response("ＡＣＴＩＯＮ: look", ALFWORLD) == UNPARSABLE  # full-width letters are not a marker
    assert parse_response("ACTION: \u2028look", ALFWORLD).parsable is False  # a unicode line break ends the line


# -- matching --------------------------------------------------------------------------------------------------------


def test_normalized_matches():
    assert parse_response("ACTION: Go To Fridge 1", ALFWORLD) == _ok(
        "go to fridge 1", "Go To Fridge 1", kind="normalized"
    )
    assert parse_response("ACTION: go  to\tfridge 1", ALFWORLD) == _ok(
        "go to fridge 1", "go  to\tfridge 1", kind="normalized"
    )
    assert parse_response("ACTION: go to fridge-1", ALFWORLD) == _ok(
        "go to fridge 1", "go to fridge-1", kind="normalized"
    )
    assert parse_response("ACTION: LOOK AROUND!!", TWC) == _ok("look around", "LOOK AROUND!!", kind="normalized")


def test_exact_match_beats_normalized():
    admissible = ["Look", "look"]
    assert parse_response("ACTION: look", admissible).action == "look"
    assert parse_response("ACTION: LOOK", admissible) == _ok("Look", "LOOK", kind="normalized")  # engine order


def test_old_put_syntax_maps_to_move():
    assert parse_response("ACTION: put apple 1 in/on fridge 1", ALFWORLD) == _ok(
        "move apple 1 to fridge 1", "put apple 1 in/on fridge 1", kind="normalized"
    )
    assert parse_response("ACTION: put apple 1 in fridge 1", ALFWORLD).action == "move apple 1 to fridge 1"
    assert parse_response("ACTION: Put apple 1 on fridge 1.", ALFWORLD).action == "move apple 1 to fridge 1"
    # TextWorldExpress's own "put ... in ..." is matched exactly, not rewritten.
    assert parse_response("ACTION: put red shirt in wardrobe", TWC) == _ok(
        "put red shirt in wardrobe", "put red shirt in wardrobe"
    )
    # An old-syntax command whose "move" form is not admissible stays unmatched.
    assert parse_response("ACTION: put apple 1 in sink 1", ALFWORLD).matched is False


def test_helpers():
    assert normalize_command("  Go,  TO: Fridge-1. ") == "go to fridge 1"
    assert normalize_command("...") == ""
    assert old_put_to_move("put apple 1 in on fridge 1") == "move apple 1 to fridge 1"
    assert old_put_to_move("put apple 1 into fridge 1") == "move apple 1 to fridge 1"
    assert old_put_to_move("put apple 1") is None
    assert old_put_to_move("take apple 1 in fridge 1") is None
    assert clean_command('> "look".') == "look"


def test_non_string_admissible_entries_are_ignored():
    assert parse_response("ACTION: look", [None, 3, "look"]) == _ok("look", "look")  # type: ignore[list-item]


# -- action_only -----------------------------------------------------------------------------------------------------


def test_action_only_first_nonempty_line():
    assert parse_response("go to fridge 1", ALFWORLD, "action_only") == _ok("go to fridge 1", "go to fridge 1")
    assert parse_response("\n  \n go to fridge 1 \nlook", ALFWORLD, "action_only") == _ok(
        "go to fridge 1", "go to fridge 1"
    )


def test_action_only_ignores_a_runaway_continuation():
    text = "go to fridge 1\nObs: You arrive at fridge 1.\nACTION: look"
    assert parse_response(text, ALFWORLD, "action_only") == _ok("go to fridge 1", "go to fridge 1")


def test_action_only_strips_a_leading_marker():
    assert parse_response("ACTION: look", ALFWORLD, "action_only") == _ok("look", "look")
    assert parse_response("**Action:** `look`", ALFWORLD, "action_only") == _ok("look", "`look`")


def test_action_only_falls_back_to_reason_action_format():
    text = "REASON: it is dark\nACTION: look\nACTION: inventory"
    assert parse_response(text, ALFWORLD, "action_only") == _ok("inventory", "inventory", "it is dark\nACTION: look")


def test_action_only_unparsable():
    assert parse_response("", ALFWORLD, "action_only") == UNPARSABLE
    assert parse_response(" \n\t\n", ALFWORLD, "action_only") == UNPARSABLE
    assert parse_response("ACTION:", ALFWORLD, "action_only") == UNPARSABLE


def test_unknown_template_is_a_programming_error():
    with pytest.raises(ValueError, match="template"):
        parse_response("look", ALFWORLD, "chat")


# -- scale -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a" * 100_000,
        "ACTION" * 20_000,
        "action " * 15_000,
        "action" + " " * 100_000 + "x",
        "REASON:" * 15_000,
        "ACTION: " + "go to fridge 1 " * 7_000,
        ("reason " + "\t" * 50) * 2_000,
        "\n" * 100_000,
        "ACTION: " + "*" * 100_000 + "look" + "." * 100_000,
        "ACTION: look" * 10_000,
    ],
)
def test_very_long_inputs_take_linear_time(text):
    for template in ("reason_action", "action_only"):
        start = time.perf_counter()
        parsed = _parse(text, ALFWORLD, template)
        assert time.perf_counter() - start < 1.0
        assert not parsed.matched or parsed.action in ALFWORLD


def test_long_stars_and_dots_still_match():
    assert parse_response("ACTION: " + "*" * 100_000 + "look" + "." * 100_000, ALFWORLD).action == "look"


# -- properties ------------------------------------------------------------------------------------------------------

_PIECES = st.sampled_from(
    ["ACTION:", "action :", "**ACTION:**", "REASON:", "reason:", "\n", "\r\n", " ", ".", '"', "`", "> ", "put ",
     " in/on ", "look", "go to fridge 1", "apple 1", "\u2028", "❄", "\x00"]
)
_TEXTS = st.one_of(st.text(), st.lists(st.one_of(_PIECES, st.text(max_size=5)), max_size=30).map("".join))
_ADMISSIBLE = st.one_of(st.none(), st.lists(st.one_of(st.sampled_from(ALFWORLD + TWC), st.text(max_size=12))))


@settings(max_examples=400, deadline=None)
@given(text=_TEXTS, admissible=_ADMISSIBLE, template=st.sampled_from(["reason_action", "action_only"]))
def test_never_raises_and_matched_implies_admissible(text, admissible, template):
    parsed = _parse(text, admissible, template)  # the unguarded core, so a bug cannot hide behind the fallback
    assert parse_response(text, admissible, template) == parsed
    assert isinstance(parsed.action, str) and isinstance(parsed.reason, str) and isinstance(parsed.raw_action, str)
    assert parsed.matched == (parsed.match_kind != "none")
    if parsed.matched:
        assert parsed.parsable and parsed.action in admissible
    if not parsed.parsable:
        assert parsed.action == "" and not parsed.matched
    assert "\n" not in parsed.action and "\n" not in parsed.raw_action


@settings(max_examples=200, deadline=None)
@given(action=st.sampled_from(ALFWORLD + TWC), reason=st.text(alphabet=st.characters(categories=["L", "N", "Zs"])))
def test_formatted_responses_parse_back(action, reason):
    from agentprm.models.prompts import PromptConfig, format_response

    admissible = ALFWORLD + TWC
    response = format_response(action, reason, PromptConfig(template="reason_action"))
    parsed = parse_response(response, admissible)
    assert (parsed.action, parsed.match_kind) == (action, "exact")
    assert parsed.reason == " ".join(reason.split())
