"""Trajectory files: one JSON record per line, written durably and read back strictly.

The writer appends one line per episode and fsyncs it, so a killed rollout loses at most the episode in flight,
and a rerun can reopen the same file and continue. A kill mid-write leaves a torn last line (no trailing newline);
the writer refuses to append after one (that would glue two records into one bad line) unless asked to repair it.

The reader never drops data silently: by default any bad line raises ``CorruptFileError`` with ``path:line``;
with ``on_error="report"`` bad lines are skipped but listed in ``TrajectoryReader.problems`` and logged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple

from agentprm.data.records import RecordError, TrajectoryRecord

logger = logging.getLogger(__name__)

OnError = Literal["raise", "report"]


class CorruptFileError(ValueError):
    """A trajectory file has a bad line. The message starts with ``path:line``."""

    def __init__(self, path: str | os.PathLike[str], line_number: int, reason: str) -> None:
        self.path = str(path)
        self.line_number = line_number
        self.reason = reason
        super().__init__(f"{self.path}:{line_number}: {reason}")


class ReadProblem(NamedTuple):
    """One skipped line: its 1-based number and why it was rejected."""

    line_number: int
    reason: str


class TrajectoryWriter:
    """Append ``TrajectoryRecord``s to a JSONL file, one fsynced line per record.

    Raises ``CorruptFileError`` at construction if the existing file ends with a torn line, unless ``repair=True``:
    then the torn tail is truncated and its size is kept in ``repaired_bytes``.
    """

    def __init__(self, path: str | os.PathLike[str], repair: bool = False) -> None:
        self.path = Path(path)
        self.repaired_bytes = 0
        self.records_written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = _find_torn_tail(self.path)
        if torn is not None:
            offset, line_number = torn
            torn_bytes = self.path.stat().st_size - offset
            if not repair:
                raise CorruptFileError(
                    self.path,
                    line_number,
                    f"torn last line ({torn_bytes} bytes without a trailing newline, probably a killed writer); "
                    "refusing to append after it. Reopen with repair=True to truncate it.",
                )
            with open(self.path, "r+b") as file:
                file.truncate(offset)
                file.flush()
                os.fsync(file.fileno())
            self.repaired_bytes = torn_bytes
            logger.warning("%s:%d: truncated a torn last line of %d bytes", self.path, line_number, torn_bytes)
        # Binary append mode: no newline translation, and O_APPEND puts every write at the current end of file.
        self._file = open(self.path, "ab")

    def write(self, record: TrajectoryRecord) -> None:
        """Validate ``record``, append it as one line, and make it durable before returning."""
        if self._file.closed:
            raise ValueError(f"{self.path}: writer is closed")
        data = record.to_dict()
        # Validate before writing: a record the reader would reject must never reach the file.
        TrajectoryRecord.from_dict(data)
        line = json.dumps(data, ensure_ascii=False, allow_nan=False) + "\n"
        # One write call for the whole line keeps the torn-line window as small as possible.
        self._file.write(line.encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records_written += 1

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._file.close()

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class TrajectoryReader:
    """Iterate over the records of a JSONL trajectory file, validating every line.

    ``on_error="raise"`` (default) raises ``CorruptFileError`` at the first bad line. ``on_error="report"`` skips
    bad lines, records them in ``problems`` (reset at each iteration) and logs a warning once iteration ends.
    Blank lines are skipped anywhere.
    """

    def __init__(self, path: str | os.PathLike[str], on_error: OnError = "raise") -> None:
        if on_error not in ("raise", "report"):
            raise ValueError(f"on_error must be 'raise' or 'report', got {on_error!r}")
        self.path = Path(path)
        self.on_error = on_error
        self.problems: list[ReadProblem] = []

    def __iter__(self) -> Iterator[TrajectoryRecord]:
        self.problems = []
        # Binary iteration splits on b"\n" only; text mode would also split on a raw "\r" inside a string.
        with open(self.path, "rb") as file:
            for line_number, raw in enumerate(file, start=1):
                record_or_reason = _parse_line(raw)
                if isinstance(record_or_reason, TrajectoryRecord):
                    yield record_or_reason
                elif record_or_reason is not None:
                    self._problem(line_number, record_or_reason)
        if self.problems:
            lines = ", ".join(str(problem.line_number) for problem in self.problems)
            logger.warning("%s: skipped %d bad line(s): %s", self.path, len(self.problems), lines)

    def _problem(self, line_number: int, reason: str) -> None:
        if self.on_error == "raise":
            raise CorruptFileError(self.path, line_number, reason)
        self.problems.append(ReadProblem(line_number, reason))


def read_trajectories(path: str | os.PathLike[str], on_error: OnError = "raise") -> TrajectoryReader:
    """Iterable over the records in ``path``; with ``on_error="report"`` keep the result to read ``.problems``."""
    return TrajectoryReader(path, on_error=on_error)


def count_episodes(path: str | os.PathLike[str]) -> int:
    """Number of valid records in ``path`` (0 if it does not exist); raises ``CorruptFileError`` on a bad line."""
    if not Path(path).exists():
        return 0
    return sum(1 for _ in TrajectoryReader(path))


def _parse_line(raw: bytes) -> TrajectoryRecord | str | None:
    """A record, a reason the line is bad, or None for a blank line."""
    if not raw.strip():
        return None
    if not raw.endswith(b"\n"):
        return f"torn last line ({len(raw)} bytes without a trailing newline; the writer was probably killed)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"invalid UTF-8: {error}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return f"invalid JSON: {error}"
    try:
        return TrajectoryRecord.from_dict(data)
    except RecordError as error:
        return f"invalid record: {error}"


def _find_torn_tail(path: Path, block_size: int = 1 << 16) -> tuple[int, int] | None:
    """If ``path`` ends with a non-blank line lacking its newline, return (byte offset, 1-based line number) of it."""
    if not path.exists():
        return None
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "rb") as file:
        file.seek(size - 1)
        if file.read(1) == b"\n":
            return None
        # Walk back block by block to the last newline: the torn line starts right after it.
        end = size
        tail = b""
        while end > 0:
            start = max(0, end - block_size)
            file.seek(start)
            tail = file.read(end - start) + tail
            cut = tail.rfind(b"\n")
            if cut >= 0:
                offset = size - len(tail) + cut + 1
                break
            end = start
        else:
            offset = 0
        file.seek(offset)
        if not file.read().strip():
            return None  # trailing whitespace only: harmless, like the reader's blank lines
        file.seek(0)
        newlines = 0
        while offset - file.tell() > 0:
            newlines += file.read(min(block_size, offset - file.tell())).count(b"\n")
    return offset, newlines + 1
