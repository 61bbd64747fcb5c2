"""Atomic writes: a folder or file appears complete under its final name, or not at all.

Every model, checkpoint and stage output of agentprm is written through these helpers, so a run killed at any moment
leaves either the previous version or the new one, never half of one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on success it is renamed to ``target``, on error removed.

    The staging folder lives in the same parent so the final step is a rename on one filesystem, never a copy.
    With ``overwrite`` an existing ``target`` is moved aside first and deleted after the new one is in place.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite=True to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        _replace_directory(staging, target, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_directory(staging: Path, target: Path, overwrite: bool) -> None:
    old: Path | None = None
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target} appeared while it was being built")
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        target.rename(old / target.name)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
