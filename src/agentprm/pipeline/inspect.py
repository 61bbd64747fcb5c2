"""Looking at results: ``agentprm compare`` (runs side by side) and ``agentprm show`` (one episode, step by step).

``compare_table`` puts the ``summary.json`` rows of several run or evaluation folders in one markdown table: one
line per (split, agent) in order of first appearance, one success column per folder ("–" where a folder lacks the
row). ``render_episode`` prints a recorded episode with, at each step, the candidates Best-of-N sampled and the
PRM's score of each (the executed one marked ``>``), so a failure can be traced to the step where the PRM preferred
the wrong action.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentprm.data import read_trajectories
from agentprm.data.records import TrajectoryRecord
from agentprm.pipeline.report import read_summary, row_label
from agentprm.pipeline.stages import check_run_format


def load_summaries(folders: Sequence[str | Path]) -> list[tuple[str, dict]]:
    """(folder name, validated summary) per folder; a folder of an incompatible version is refused by name."""
    found = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a run or evaluation folder")
        check_run_format(folder)
        found.append((str(folder), read_summary(folder / "summary.json")))
    return found


def compare_table(summaries: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Markdown table: (split, agent) lines, one "success % (95% CI)" column per summary."""
    keys: list[tuple[str, str]] = []
    cells: dict[tuple[str, str, int], str] = {}
    for column, (_, summary) in enumerate(summaries):
        for row in summary["rows"]:
            key = (str(row.get("split", summary["split"])), row_label(row))
            if key not in keys:
                keys.append(key)
            lo, hi = row["ci95"]
            cells[(*key, column)] = f"{100 * row['success']:.1f} ({100 * lo:.1f}–{100 * hi:.1f})"
    names = [name for name, _ in summaries]
    lines = ["| Split | Agent | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for split, label in keys:
        row = [cells.get((split, label, column), "–") for column in range(len(summaries))]
        lines.append(f"| {split} | {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def find_episode(path: str | Path, game: str | None = None, index: int = 0) -> TrajectoryRecord:
    """The episode of ``game`` (a game id, or a unique part of one) in a records file, or its ``index``-th episode."""
    records = list(read_trajectories(path))
    if not records:
        raise FileNotFoundError(f"{path} holds no episodes")
    if game is None:
        if not 0 <= index < len(records):
            raise IndexError(f"{path} holds {len(records)} episodes; --index {index} is out of range")
        return records[index]
    matches = [r for r in records if r.game_id == game] or [r for r in records if game in r.game_id]
    if len(matches) != 1:
        found = "no episode" if not matches else f"{len(matches)} episodes"
        raise KeyError(f"{path}: {found} of game {game!r}; game ids look like {records[0].game_id!r}")
    return matches[0]


def render_episode(record: TrajectoryRecord, prompts: bool = False, width: int = 160) -> str:
    """One episode as text: task, then per step the observation, the scored candidates and the executed action."""
    outcome = f"WON in {len(record.steps)} steps" if record.won else f"FAILED after {len(record.steps)} steps"
    lines = [f"{record.game_id}  ({record.split}, {record.task_type})  agent {record.policy_id}: {outcome}",
             f"Task: {record.task}"]
    for t, step in enumerate(record.steps):
        lines.append(f"[{t}] {_cut(step.observation, width)}")
        if prompts and step.extras.get("prompt"):
            lines += ["    | " + line for line in str(step.extras["prompt"]).splitlines()]
        candidates, chosen = step.extras.get("candidates"), step.extras.get("chosen")
        if candidates:
            lines += _candidate_lines(candidates, chosen)
        elif step.response and step.response != step.action:
            lines.append(f"    response: {_cut(step.response, width)}")
        note = "" if step.admissible else "  (not admissible)"
        lines.append(f"    -> {step.action}{note}")
    lines.append(f"Final: {_cut(record.final_observation, width)}")
    return "\n".join(lines)


def _candidate_lines(candidates: Sequence[Mapping[str, Any]], chosen: int | None) -> list[str]:
    """Distinct candidate actions, best PRM score first: score, how many of the N samples, log-probability."""
    by_action: dict[str, dict] = {}
    for index, candidate in enumerate(candidates):
        entry = by_action.setdefault(candidate["action"], {"score": candidate.get("score"), "count": 0,
                                                           "logprob": candidate.get("logprob"), "chosen": False})
        entry["count"] += 1
        entry["chosen"] = entry["chosen"] or index == chosen
    ordered = sorted(by_action.items(), key=lambda kv: -(kv[1]["score"] if kv[1]["score"] is not None else -1))
    lines = [f"    candidates (N={len(candidates)}): PRM score, samples, log pi"]
    for action, entry in ordered:
        score = f"{entry['score']:.3f}" if entry["score"] is not None else "  -  "
        logprob = f"{entry['logprob']:.2f}" if entry["logprob"] is not None else "-"
        lines.append(f"    {'>' if entry['chosen'] else ' '} {score}  x{entry['count']:<3d} {logprob:>7s}  {action}")
    return lines


def _cut(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."
