"""Resumable stages of a run directory.

A stage writes into ``<name>.partial`` and renames it to ``<name>`` when it completes. A completed stage is skipped
on rerun; a ``.partial`` folder left by an interrupted stage is handed back to the stage, which may resume from what
it contains (rollout shards, an SFT checkpoint) or start over. So ``agentprm run`` on an interrupted run directory
continues where it stopped and loses no finished work.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Callable


def run_stage(folder: Path, build: Callable[[Path], None], log: Callable[[str], None] = print) -> Path:
    """Run ``build(partial_folder)`` unless ``folder`` is already complete; return ``folder``."""
    if folder.is_dir():
        if not (folder / "stage.json").is_file():  # renamed into place only with its marker: edited by hand
            from agentprm.errors import damaged

            raise damaged(folder, "a stage folder without its completion marker stage.json (copied or edited by "
                                  "hand?), so it is not reused")
        log(f"[skip] {folder.name} (complete)")
        return folder
    partial = folder.with_name(folder.name + ".partial")
    resumed = partial.is_dir()
    partial.mkdir(parents=True, exist_ok=True)
    log(f"[{'resume' if resumed else 'start'}] {folder.parent.name}/{folder.name}")
    started = time.perf_counter()
    build(partial)
    (partial / "stage.json").write_text(json.dumps({"seconds": time.perf_counter() - started,
                                                    "resumed": resumed}) + "\n")
    os.replace(partial, folder)
    return folder


def stage_seconds(folder: Path) -> float:
    try:
        return float(json.loads((folder / "stage.json").read_text())["seconds"])
    except (FileNotFoundError, KeyError, ValueError):
        return 0.0


def versions() -> dict[str, str]:
    import importlib.metadata as metadata

    found = {"python": sys.version.split()[0]}
    for package in ("agentprm", "torch", "transformers", "accelerate", "peft", "alfworld", "textworld",
                    "textworld-express"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


RUN_FORMAT = 1  # the layout of run and evaluation folders; bump it when a reader could misread an older one


class IncompatibleRunError(ValueError):
    """A run or evaluation folder written in a layout this version cannot read."""


def check_run_format(folder: Path) -> None:
    """Refuse a folder whose ``manifest.json`` declares a newer layout than :data:`RUN_FORMAT` (or is unreadable).
    Folders written before the format was recorded are format 1."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return
    try:
        manifest = json.loads(path.read_text())
        found = manifest.get("format", 1)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise IncompatibleRunError(f"{path} is not a readable manifest; the folder may be damaged") from None
    if not isinstance(found, int) or isinstance(found, bool) or not 1 <= found <= RUN_FORMAT:
        written_by = manifest.get("versions", {}).get("agentprm", "an unknown version")
        raise IncompatibleRunError(
            f"{folder} was written by agentprm {written_by} in folder format {found!r}; this agentprm reads format "
            f"{RUN_FORMAT}: use the agentprm version that wrote it, or run it again")


def write_manifest(run_dir: Path, seed: int, started: float, finished: float | None) -> None:
    """``manifest.json``: folder format, versions, seed, host and times; ``started`` is kept from the first
    invocation."""
    path = run_dir / "manifest.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    manifest = {
        "format": RUN_FORMAT,
        "versions": versions(),
        "seed": seed,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "started": previous.get("started", started),
        "finished": finished,
        "invocations": previous.get("invocations", 0) + (1 if finished is None else 0),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
