"""The data layer: trajectory records, durable JSONL files, and Parquet tables for analysis and training.

The Parquet names are imported lazily so that rollout workers, which only write JSONL, do not pay for pyarrow.
"""

from __future__ import annotations

from typing import Any

from agentprm.data.jsonl import (
    CorruptFileError,
    ReadProblem,
    TrajectoryReader,
    TrajectoryWriter,
    count_episodes,
    read_trajectories,
)
from agentprm.data.records import SCHEMA_VERSION, RecordError, StepRecord, TrajectoryRecord

_PARQUET_NAMES = ("trajectories_to_parquet", "read_parquet_records", "STEP_SCHEMA", "EPISODE_SCHEMA")

__all__ = [
    "SCHEMA_VERSION",
    "CorruptFileError",
    "ReadProblem",
    "RecordError",
    "StepRecord",
    "TrajectoryReader",
    "TrajectoryRecord",
    "TrajectoryWriter",
    "count_episodes",
    "read_trajectories",
    *_PARQUET_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _PARQUET_NAMES:
        from agentprm.data import parquet

        return getattr(parquet, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
