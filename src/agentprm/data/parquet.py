"""Trajectory records as Parquet tables, for pandas, ``datasets`` and SQL engines.

Two layouts:

* ``level="step"``: one row per step, each carrying its episode's fields, for step-level analysis and PRM training;
* ``level="episode"``: one row per episode with ``steps`` as a list of structs; it round-trips exactly through
  ``read_parquet_records``.

``meta`` and ``extras`` are free-form dicts with no fixed Arrow type, so they are stored as JSON strings
(``meta_json``, ``extras_json``). Files are written with an explicit schema and atomically (temp file, then
``os.replace``), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from agentprm.data.jsonl import read_trajectories
from agentprm.data.records import SCHEMA_VERSION, TrajectoryRecord

Level = Literal["step", "episode"]
RecordsOrPaths = Iterable[TrajectoryRecord | str | os.PathLike[str]] | str | os.PathLike[str]

_METADATA_LEVEL = b"agentprm.level"
_METADATA_VERSION = b"agentprm.schema_version"
_ROWS_PER_BATCH = 4096

_STEP_STRUCT_FIELDS = [
    pa.field("observation", pa.string(), nullable=False),
    pa.field("admissible_actions", pa.list_(pa.string()), nullable=False),
    pa.field("response", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("action", pa.string(), nullable=False),
    pa.field("admissible", pa.bool_(), nullable=False),
    pa.field("reward", pa.float64(), nullable=False),
    pa.field("done", pa.bool_(), nullable=False),
    pa.field("won", pa.bool_(), nullable=False),
    pa.field("extras_json", pa.string(), nullable=False),
]

STEP_SCHEMA = pa.schema(
    [
        pa.field("game_id", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("task_type", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("policy_id", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("env", pa.string(), nullable=False),
        pa.field("env_version", pa.string(), nullable=False),
        pa.field("episode_won", pa.bool_(), nullable=False),
        pa.field("episode_index", pa.int64(), nullable=False),
        pa.field("step_index", pa.int64(), nullable=False),
        *_STEP_STRUCT_FIELDS,
    ],
    metadata={_METADATA_LEVEL: b"step", _METADATA_VERSION: str(SCHEMA_VERSION).encode()},
)

EPISODE_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int64(), nullable=False),
        pa.field("env", pa.string(), nullable=False),
        pa.field("env_version", pa.string(), nullable=False),
        pa.field("game_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("task_type", pa.string(), nullable=False),
        pa.field("policy_id", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("won", pa.bool_(), nullable=False),
        pa.field("total_reward", pa.float64(), nullable=False),
        pa.field("num_steps", pa.int64(), nullable=False),
        pa.field("final_observation", pa.string(), nullable=False),
        pa.field("meta_json", pa.string(), nullable=False),
        pa.field("steps", pa.list_(pa.struct(_STEP_STRUCT_FIELDS)), nullable=False),
    ],
    metadata={_METADATA_LEVEL: b"episode", _METADATA_VERSION: str(SCHEMA_VERSION).encode()},
)


def trajectories_to_parquet(
    records_or_paths: RecordsOrPaths, out_path: str | os.PathLike[str], level: Level = "step"
) -> int:
    """Write records (and/or the records of JSONL files, read strictly) to ``out_path``; return the row count.

    ``episode_index`` in the step layout is the episode's position in the input, counted across all inputs.
    """
    if level not in ("step", "episode"):
        raise ValueError(f"level must be 'step' or 'episode', got {level!r}")
    schema = STEP_SCHEMA if level == "step" else EPISODE_SCHEMA
    records = _iter_records(records_or_paths)
    rows = _step_rows(records) if level == "step" else _episode_rows(records)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(handle)
    os.chmod(temp_name, 0o644)  # mkstemp makes the file private; the output is an ordinary data file
    row_count = 0
    try:
        with pq.ParquetWriter(temp_name, schema) as writer:
            # Batches keep memory bounded for large rollout directories.
            batch: list[dict[str, Any]] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= _ROWS_PER_BATCH:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    row_count += len(batch)
                    batch = []
            if batch or row_count == 0:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                row_count += len(batch)
        _fsync_file(temp_name)
        os.replace(temp_name, out_path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return row_count


def read_parquet_records(path: str | os.PathLike[str]) -> list[TrajectoryRecord]:
    """Read the records back from an episode-level file written by ``trajectories_to_parquet``."""
    parquet_file = pq.ParquetFile(path)
    metadata = parquet_file.schema_arrow.metadata or {}
    level = metadata.get(_METADATA_LEVEL)
    if level != b"episode":
        found = level.decode() if level else "none"
        raise ValueError(
            f"{path}: not an episode-level trajectory file (level: {found}); write it with level='episode'"
        )
    records = []
    for batch in parquet_file.iter_batches():
        for row in batch.to_pylist():
            records.append(_record_from_episode_row(row))
    return records


def _iter_records(records_or_paths: RecordsOrPaths) -> Iterator[TrajectoryRecord]:
    if isinstance(records_or_paths, (str, os.PathLike)):
        records_or_paths = [records_or_paths]
    for item in records_or_paths:
        if isinstance(item, TrajectoryRecord):
            yield item
        elif isinstance(item, (str, os.PathLike)):
            yield from read_trajectories(item, on_error="raise")
        else:
            raise TypeError(f"expected a TrajectoryRecord or a JSONL path, got {type(item).__name__}")


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _step_struct(step_dict: dict[str, Any]) -> dict[str, Any]:
    step = dict(step_dict)
    step["extras_json"] = _json(step.pop("extras"))
    return step


def _step_rows(records: Iterable[TrajectoryRecord]) -> Iterator[dict[str, Any]]:
    for episode_index, record in enumerate(records):
        record.validate()
        episode = {
            "game_id": record.game_id,
            "task": record.task,
            "task_type": record.task_type,
            "split": record.split,
            "policy_id": record.policy_id,
            "seed": record.seed,
            "env": record.env,
            "env_version": record.env_version,
            "episode_won": record.won,
            "episode_index": episode_index,
        }
        for step_index, step in enumerate(record.steps):
            yield {**episode, "step_index": step_index, **_step_struct(step.to_dict())}


def _episode_rows(records: Iterable[TrajectoryRecord]) -> Iterator[dict[str, Any]]:
    for record in records:
        record.validate()
        row = record.to_dict()
        row["meta_json"] = _json(row.pop("meta"))
        row["steps"] = [_step_struct(step) for step in row["steps"]]
        yield row


def _record_from_episode_row(row: dict[str, Any]) -> TrajectoryRecord:
    data = dict(row)
    data["meta"] = json.loads(data.pop("meta_json"))
    steps = []
    for step in data["steps"]:
        step = dict(step)
        step["extras"] = json.loads(step.pop("extras_json"))
        steps.append(step)
    data["steps"] = steps
    return TrajectoryRecord.from_dict(data)


def _fsync_file(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
