"""Turn a model's free-text response into a command, matched against the admissible actions. Never raises.

A rollout runs thousands of generations; one odd output (empty, truncated, 100k characters, markdown, unicode)
must become an unparsable or unmatched step, not an exception. ``parse_response`` returns a
:class:`ParsedResponse` for *any* ``text`` (non-strings count as empty) and runs in linear time: the only regular
expressions are literal markers with a bounded character class, so nothing can backtrack catastrophically.

Conventions (see also ``agentprm.models.prompts`` for the prompt side):

``reason_action``
    The action is the rest of the line after the LAST ``ACTION:`` marker. Last, because the reasoning may quote a
    marker ("the ACTION: take apple failed, so ...") and a model that corrects itself puts its final answer last
    (generation should stop at the newline after the answer anyway). A marker is the word ``action`` in any case,
    not preceded by a letter, then optional spaces / ``*`` / ``_`` and a colon: ``ACTION:``, ``Action :``,
    ``**ACTION:**``, ``Next action:``. The reason is the text between the last ``REASON:`` marker before that
    ``ACTION:`` (or the start of the text, when there is none) and the ``ACTION:`` marker. No ``ACTION:`` marker
    means unparsable (the reason is still kept, e.g. from a truncated "REASON: I should go to the").
``action_only``
    The model was trained to write one bare command, so the action is its first non-empty line (a leading
    ``ACTION:`` marker on that line is removed); later lines -- often a runaway continuation that imitates the
    history, "ACTION: ..." lines included -- are ignored. If that first line starts with ``REASON:``, the text is
    parsed as ``reason_action``.

Cleaning: the command loses surrounding whitespace, quotes, backticks, ``*``/``_`` emphasis, a leading ``>`` prompt
sign and trailing punctuation (``.,;:!?``). ``raw_action`` keeps the extracted line as written (whitespace-stripped).

Matching, in order: ``exact`` (the cleaned command is in ``admissible``); ``normalized`` (case-folded, every
non-alphanumeric character read as a space, whitespace collapsed -- then, failing that, ALFWorld's old syntax
``put X in/on Y`` read as ``move X to Y``); otherwise ``none``. A match sets ``action`` to the admissible string
itself, the first one in the engine's order when several normalise alike, so ``matched`` implies
``action in admissible``. Without a match ``action`` is the cleaned command (best effort; the engine answers
invalid commands itself).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

MatchKind = Literal["exact", "normalized", "none"]
PARSE_TEMPLATES: tuple[str, ...] = ("reason_action", "action_only")

# Literal word, a class, a colon, closing emphasis ("**ACTION:**"): an attempt scans only the [ \t*_] run after one
# "action" and the [*_] run after its colon; distinct attempts scan disjoint runs, so finditer is linear.
_ACTION_MARKER = re.compile(r"(?<![^\W\d_])action[ \t*_]*:[*_]*", re.IGNORECASE)
_REASON_MARKER = re.compile(r"(?<![^\W\d_])reason[ \t*_]*:[*_]*", re.IGNORECASE)

_LEADING_JUNK = " \t\r\f\v*_`\"'>“”‘’«»"
_TRAILING_JUNK = " \t\r\f\v*_`\"'.,;:!?“”‘’«»"
_EMPHASIS = " \t\r\f\v*_"
# Old ALFWorld syntax "put X in/on Y" (normalised "put x in on y"); the longest separators are tried first.
_PUT_SEPARATORS = (" in on ", " into ", " onto ", " in ", " on ")


@dataclass
class ParsedResponse:
    """The outcome of parsing one response.

    ``action``: the admissible action matched, else the cleaned command ("" when unparsable). ``raw_action``: the
    command text as the model wrote it. ``matched``: ``action`` is one of the admissible actions. ``parsable``:
    a non-empty command could be extracted. ``match_kind``: "exact", "normalized" or "none".
    """

    reason: str
    action: str
    raw_action: str
    matched: bool
    parsable: bool
    match_kind: MatchKind


def parse_response(
    text: str, admissible: Sequence[str] | None = None, template: str = "reason_action"
) -> ParsedResponse:
    """Extract and match the action of ``text``; never raises for any ``text`` or ``admissible`` contents.

    ``template`` is a programming choice, not model output: an unknown name raises ``ValueError``.
    """
    if template not in PARSE_TEMPLATES:
        raise ValueError(f"Unknown template {template!r}; expected one of {list(PARSE_TEMPLATES)}")
    try:
        return _parse(text, admissible, template)
    except Exception:  # pragma: no cover - defensive: the contract is "never raises"; tests call _parse directly
        return ParsedResponse("", "", "", False, False, "none")


def _parse(text: object, admissible: Sequence[str] | None, template: str) -> ParsedResponse:
    text = text if isinstance(text, str) else ""
    reason, raw = _extract(text, template)
    raw = raw.strip()
    command = clean_command(raw)
    if not command:
        return ParsedResponse(reason, "", raw, False, False, "none")
    action, kind = match_action(command, admissible)
    return ParsedResponse(reason, action, raw, kind != "none", True, kind)


# -- extraction ------------------------------------------------------------------------------------------------------


def _extract(text: str, template: str) -> tuple[str, str]:
    """(reason, raw command line) for ``template``; the command is "" when there is none."""
    if template == "action_only":
        line = _first_nonempty_line(text)
        bare = line.lstrip(_EMPHASIS)
        if not _REASON_MARKER.match(bare):
            marker = _ACTION_MARKER.match(bare)
            return "", bare[marker.end() :] if marker else line
    return _extract_reason_action(text)


def _extract_reason_action(text: str) -> tuple[str, str]:
    action_marker = _last_match(_ACTION_MARKER, text, 0, len(text))
    if action_marker is None:
        reason_marker = _last_match(_REASON_MARKER, text, 0, len(text))
        return (_clean_reason(text[reason_marker.end() :]) if reason_marker else ""), ""
    reason_marker = _last_match(_REASON_MARKER, text, 0, action_marker.start())
    reason_start = reason_marker.end() if reason_marker else 0
    reason = _clean_reason(text[reason_start : action_marker.start()])
    return reason, _line_at(text, action_marker.end())


def extract_reason(text: object) -> str:
    """The reason of a REASON/ACTION answer: the text between the last ``REASON:`` marker before the last
    ``ACTION:`` marker (or the start) and that marker; after the last ``REASON:`` when there is no ``ACTION:``; the
    whole text when it has neither marker (a rationaliser that answers with a bare sentence). Never raises."""
    text = text if isinstance(text, str) else ""
    if _ACTION_MARKER.search(text) or _REASON_MARKER.search(text):
        return _extract_reason_action(text)[0]
    return _clean_reason(text)


def _last_match(pattern: re.Pattern[str], text: str, start: int, end: int) -> re.Match[str] | None:
    last = None
    for last in pattern.finditer(text, start, end):
        pass
    return last


def _line_at(text: str, start: int) -> str:
    """The text from ``start`` to the end of its line."""
    end = text.find("\n", start)
    line = text[start:] if end < 0 else text[start:end]
    parts = line.splitlines()  # other line breaks (\r, \u2028, ...) end the line too
    return parts[0] if parts else ""


def _first_nonempty_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _clean_reason(text: str) -> str:
    return text.strip(_EMPHASIS + "\n")


def clean_command(text: str) -> str:
    """A command as written, without quotes, backticks, emphasis, a leading ``>`` or trailing punctuation."""
    return text.lstrip(_LEADING_JUNK).rstrip(_TRAILING_JUNK)


# -- matching --------------------------------------------------------------------------------------------------------


def normalize_command(text: str) -> str:
    """Case-folded, every non-alphanumeric character read as a space, whitespace collapsed."""
    return " ".join("".join(ch if ch.isalnum() else " " for ch in text.casefold()).split())


def old_put_to_move(normalized: str) -> str | None:
    """ALFWorld's old ``put X in/on Y`` as the current ``move X to Y`` (on normalised text); None otherwise."""
    if not normalized.startswith("put "):
        return None
    body = normalized[len("put ") :]
    for separator in _PUT_SEPARATORS:
        obj, found, receptacle = body.partition(separator)
        if found and obj and receptacle:
            return f"move {obj} to {receptacle}"
    return None


def match_action(command: str, admissible: Sequence[str] | None) -> tuple[str, MatchKind]:
    """(admissible action, kind) for ``command``; (``command``, "none") when nothing matches."""
    candidates = [action for action in (admissible or ()) if isinstance(action, str)]
    if command in candidates:
        return command, "exact"
    by_norm: dict[str, str] = {}
    for action in candidates:
        by_norm.setdefault(normalize_command(action), action)
    normalized = normalize_command(command)
    if normalized and normalized in by_norm:
        return by_norm[normalized], "normalized"
    moved = old_put_to_move(normalized)
    if moved is not None and moved in by_norm:
        return by_norm[moved], "normalized"
    return command, "none"
