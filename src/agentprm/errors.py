"""Damaged run folders: errors that name the file and the command that rebuilds it.

A run folder's stages are renamed into place only when complete (``pipeline.stages``), so damage means a file was
edited, truncated or copied by hand. Readers of stage outputs raise :class:`DamagedFileError` with
:func:`redo_hint`, never a traceback and never a silent reuse of what is left.
"""

from __future__ import annotations

import re
from pathlib import Path

STAGE_COMMANDS = {"rollouts": "rollout", "targets": "targets", "prm": "train-prm", "policy": "train-policy",
                  "eval": "eval"}


class DamagedFileError(ValueError):
    """A stage's output file is unreadable or incomplete; the message names it and says how to rebuild it."""


def redo_hint(path: str | Path) -> str:
    """How to rebuild the stage that wrote ``path``: ``agentprm <stage> RUN --iteration i --redo`` for a stage of an
    iteration i >= 1, else delete the stage folder and rerun ``agentprm run``."""
    parts = Path(path).parts
    for k, part in enumerate(parts):
        match = re.fullmatch(r"iter_(\d+)", part)
        if match and k + 1 < len(parts):
            stage, iteration = parts[k + 1], int(match.group(1))
            run = Path(*parts[:k]) if k else Path(".")
            command = STAGE_COMMANDS.get(stage)
            if command and (iteration >= 1 or stage == "eval"):
                return f"rebuild it with `agentprm {command} {run} --iteration {iteration} --redo`"
            return f"delete {Path(*parts[:k + 2])} and rerun `agentprm run` on {run} to rebuild it"
    for k, part in enumerate(parts):
        if part in ("games", "demos", "model_init") and k:
            return f"delete {Path(*parts[:k + 1])} and rerun `agentprm run` on {Path(*parts[:k])} to rebuild it"
    return "rebuild or restore it"


def damaged(path: str | Path, what: str) -> DamagedFileError:
    return DamagedFileError(f"{path}: {what}; {redo_hint(path)}")
