"""Parquet export: step and episode layouts, read back with pandas and datasets, exact episode round-trips."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agentprm.data.jsonl import CorruptFileError, TrajectoryWriter
from agentprm.data.parquet import read_parquet_records, trajectories_to_parquet
from agentprm.data.records import StepRecord, TrajectoryRecord


def make_record(index: int, num_steps: int) -> TrajectoryRecord:
    steps = [
        StepRecord(
            observation=f"episode {index} step {i}: un café ☕\nOn the table 1, you see a mug.",
            admissible_actions=["look", "inventory", f"take mug {i} from table 1"],
            response=f"THINK: grab it\nACTION: take mug {i} from table 1",
            reason="grab it",
            action=f"take mug {i} from table 1",
            admissible=i % 2 == 0,
            reward=0.5 * i,
            done=i == num_steps - 1,
            won=index == 0 and i == num_steps - 1,
            extras={"prm_score": 0.1 * i} if i else {},
        )
        for i in range(num_steps)
    ]
    return TrajectoryRecord(
        env="alfworld",
        env_version="0.4.2",
        game_id=f"valid_seen/game_{index}",
        split="valid_seen",
        task=f"put a mug in the shelf ({index})",
        task_type="pick_and_place",
        policy_id="llama-3b-bon4",
        seed=100 + index,
        steps=steps,
        won=index == 0,
        total_reward=sum(step.reward for step in steps),
        final_observation="Nothing happens.",
        meta={"prompt": "react-v1", "index": index},
    )


@pytest.fixture
def records() -> list[TrajectoryRecord]:
    return [make_record(0, 3), make_record(1, 2), make_record(2, 0)]


def load_with_datasets(path: Path, tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    return datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))


def test_step_level(records: list[TrajectoryRecord], tmp_path: Path) -> None:
    path = tmp_path / "out" / "steps.parquet"
    assert trajectories_to_parquet(records, path, level="step") == 5
    assert [name for name in tmp_path.joinpath("out").iterdir()] == [path]  # no temp file left behind

    schema = pq.read_schema(path)
    assert schema.field("admissible_actions").type == pa.list_(pa.string())
    assert schema.field("seed").type == pa.int64()

    frame = pd.read_parquet(path)
    assert len(frame) == 5
    assert list(frame["episode_index"]) == [0, 0, 0, 1, 1]
    assert list(frame["step_index"]) == [0, 1, 2, 0, 1]
    row = frame.iloc[4]
    assert row["observation"] == "episode 1 step 1: un café ☕\nOn the table 1, you see a mug."
    assert list(row["admissible_actions"]) == ["look", "inventory", "take mug 1 from table 1"]
    assert row["game_id"] == "valid_seen/game_1" and row["seed"] == 101 and row["policy_id"] == "llama-3b-bon4"
    assert not row["episode_won"] and not row["admissible"] and row["done"] and row["reward"] == 0.5
    assert row["extras_json"] == '{"prm_score": 0.1}'
    assert frame.iloc[2]["won"] and frame.iloc[2]["episode_won"]

    dataset = load_with_datasets(path, tmp_path)
    assert dataset.num_rows == 5
    assert dataset[4]["observation"] == row["observation"]
    assert dataset[4]["admissible_actions"] == ["look", "inventory", "take mug 1 from table 1"]
    assert dataset[2]["action"] == "take mug 2 from table 1"


def test_episode_level_round_trip(records: list[TrajectoryRecord], tmp_path: Path) -> None:
    path = tmp_path / "episodes.parquet"
    assert trajectories_to_parquet(records, path, level="episode") == 3
    assert read_parquet_records(path) == records

    frame = pd.read_parquet(path)
    assert len(frame) == 3
    assert list(frame["num_steps"]) == [3, 2, 0]
    first_steps = frame.iloc[0]["steps"]
    assert first_steps[1]["observation"] == records[0].steps[1].observation
    assert list(first_steps[2]["admissible_actions"]) == records[0].steps[2].admissible_actions

    dataset = load_with_datasets(path, tmp_path)
    assert dataset.num_rows == 3
    assert dataset[0]["task"] == "put a mug in the shelf (0)"
    steps = dataset[0]["steps"]
    # datasets may present a list of structs as a list of dicts or as a dict of lists, depending on its version.
    observations = steps["observation"] if isinstance(steps, dict) else [step["observation"] for step in steps]
    actions_lists = (
        steps["admissible_actions"] if isinstance(steps, dict) else [step["admissible_actions"] for step in steps]
    )
    assert observations == [step.observation for step in records[0].steps]
    assert actions_lists[2] == ["look", "inventory", "take mug 2 from table 1"]


def test_jsonl_paths_and_records_can_be_mixed(records: list[TrajectoryRecord], tmp_path: Path) -> None:
    jsonl = tmp_path / "episodes.jsonl"
    with TrajectoryWriter(jsonl) as writer:
        for record in records[:2]:
            writer.write(record)
    path = tmp_path / "episodes.parquet"
    assert trajectories_to_parquet([jsonl, records[2]], path, level="episode") == 3
    assert read_parquet_records(path) == records
    assert trajectories_to_parquet(str(jsonl), tmp_path / "steps.parquet") == 5


def test_corrupt_jsonl_input_fails_and_leaves_no_output(records: list[TrajectoryRecord], tmp_path: Path) -> None:
    jsonl = tmp_path / "episodes.jsonl"
    with TrajectoryWriter(jsonl) as writer:
        writer.write(records[0])
    with open(jsonl, "ab") as file:
        file.write(b'{"schema_version": 1')
    out = tmp_path / "out.parquet"
    with pytest.raises(CorruptFileError, match=f"{jsonl}:2"):
        trajectories_to_parquet([jsonl], out)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["episodes.jsonl"]


def test_failed_write_keeps_the_previous_file(records: list[TrajectoryRecord], tmp_path: Path) -> None:
    path = tmp_path / "episodes.parquet"
    trajectories_to_parquet(records, path, level="episode")
    with pytest.raises(TypeError, match="expected a TrajectoryRecord or a JSONL path"):
        trajectories_to_parquet([records[0], 42], path, level="episode")  # type: ignore[list-item]
    assert read_parquet_records(path) == records
    assert [p.name for p in tmp_path.iterdir()] == ["episodes.parquet"]


def test_empty_input_writes_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    assert trajectories_to_parquet([], path, level="episode") == 0
    assert read_parquet_records(path) == []
    assert trajectories_to_parquet([], tmp_path / "empty_steps.parquet", level="step") == 0
    assert len(pd.read_parquet(tmp_path / "empty_steps.parquet")) == 0


def test_step_level_file_is_not_read_as_episodes(records: list[TrajectoryRecord], tmp_path: Path) -> None:
    path = tmp_path / "steps.parquet"
    trajectories_to_parquet(records, path, level="step")
    with pytest.raises(ValueError, match="not an episode-level trajectory file"):
        read_parquet_records(path)


def test_unknown_level(records: list[TrajectoryRecord], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="level must be"):
        trajectories_to_parquet(records, tmp_path / "x.parquet", level="turn")  # type: ignore[arg-type]
