"""JSONL trajectory files: durable appends, torn-line detection and repair, strict and reporting reads."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentprm.data.jsonl import (
    CorruptFileError,
    ReadProblem,
    TrajectoryReader,
    TrajectoryWriter,
    count_episodes,
    read_trajectories,
)
from agentprm.data.records import RecordError, StepRecord, TrajectoryRecord

# A partial line as a killed writer leaves it: valid prefix, no closing brace, no newline.
TORN_TAIL = b'{"schema_version": 1, "env": "alfworld", "game_id": "caf\xc3\xa9'


def make_record(index: int, num_steps: int = 2) -> TrajectoryRecord:
    steps = [
        StepRecord(
            observation=f"obs {index}.{i}: café ☕",
            admissible_actions=["look", f"open drawer {i}"],
            response=f"ACTION: open drawer {i}",
            reason="",
            action=f"open drawer {i}",
            admissible=True,
            reward=float(i == num_steps - 1),
            done=i == num_steps - 1,
            won=i == num_steps - 1,
        )
        for i in range(num_steps)
    ]
    return TrajectoryRecord(
        env="twx",
        env_version="1.1.0",
        game_id=f"twc/train/{index}",
        split="train",
        task="tidy up",
        task_type="twc",
        policy_id="gpt-test",
        seed=index,
        steps=steps,
        won=True,
        total_reward=1.0,
        final_observation="Done.",
    )


def write_records(path: Path, indices: range) -> list[TrajectoryRecord]:
    records = [make_record(i) for i in indices]
    with TrajectoryWriter(path) as writer:
        for record in records:
            writer.write(record)
    return records


def test_write_then_read(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "episodes.jsonl"
    records = write_records(path, range(3))
    assert list(read_trajectories(path)) == records
    assert count_episodes(path) == 3
    assert count_episodes(tmp_path / "missing.jsonl") == 0
    lines = path.read_bytes().split(b"\n")
    assert len(lines) == 4 and lines[-1] == b""
    assert json.loads(lines[1])["game_id"] == "twc/train/1"


def test_non_ascii_is_stored_raw_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    [record] = write_records(path, range(1))
    assert "café ☕".encode() in path.read_bytes()
    [back] = read_trajectories(path)
    assert back.steps[0].observation == "obs 0.0: café ☕"
    assert back == record


def test_writer_appends_across_opens(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    first = write_records(path, range(2))
    second = write_records(path, range(2, 5))
    assert list(read_trajectories(path)) == first + second
    assert [r.game_id for r in read_trajectories(path)] == [f"twc/train/{i}" for i in range(5)]


def test_torn_last_line_raises_with_exact_line_number(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    write_records(path, range(2))
    with open(path, "ab") as file:
        file.write(TORN_TAIL)
    with pytest.raises(CorruptFileError) as caught:
        list(read_trajectories(path))
    assert caught.value.line_number == 3
    assert caught.value.path == str(path)
    assert f"{path}:3" in str(caught.value)
    assert "torn last line" in str(caught.value)
    with pytest.raises(CorruptFileError, match="torn last line"):
        count_episodes(path)


def test_report_mode_returns_good_records_and_lists_the_torn_line(tmp_path: Path, caplog) -> None:
    path = tmp_path / "episodes.jsonl"
    records = write_records(path, range(2))
    with open(path, "ab") as file:
        file.write(TORN_TAIL)
    reader = read_trajectories(path, on_error="report")
    with caplog.at_level(logging.WARNING, logger="agentprm.data.jsonl"):
        assert list(reader) == records
    assert [problem.line_number for problem in reader.problems] == [3]
    assert isinstance(reader.problems[0], ReadProblem)
    assert "torn last line" in reader.problems[0].reason
    assert "skipped 1 bad line(s): 3" in caplog.text


def test_writer_refuses_to_append_after_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    write_records(path, range(2))
    with open(path, "ab") as file:
        file.write(TORN_TAIL)
    size_before = path.stat().st_size
    with pytest.raises(CorruptFileError, match="repair=True") as caught:
        TrajectoryWriter(path)
    assert caught.value.line_number == 3
    assert f"{path}:3" in str(caught.value)
    assert path.stat().st_size == size_before  # refusing must not touch the file


def test_repair_truncates_the_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    records = write_records(path, range(2))
    size_good = path.stat().st_size
    with open(path, "ab") as file:
        file.write(TORN_TAIL)
    with TrajectoryWriter(path, repair=True) as writer:
        assert writer.repaired_bytes == len(TORN_TAIL)
        assert path.stat().st_size == size_good
        extra = make_record(9)
        writer.write(extra)
    reader = read_trajectories(path, on_error="report")
    assert list(reader) == records + [extra]
    assert reader.problems == []
    with TrajectoryWriter(path, repair=True) as writer:
        assert writer.repaired_bytes == 0


def test_torn_first_line_is_line_one(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    path.write_bytes(TORN_TAIL)
    with pytest.raises(CorruptFileError, match=f"{path}:1: torn"):
        TrajectoryWriter(path)
    with TrajectoryWriter(path, repair=True) as writer:
        assert writer.repaired_bytes == len(TORN_TAIL)
    assert path.read_bytes() == b""


def test_malformed_middle_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    good = [make_record(i) for i in range(3)]
    lines = [json.dumps(r.to_dict(), ensure_ascii=False) for r in good]
    bad_record = good[0].to_dict()
    bad_record["won"] = "yes"
    # Line 2: not JSON; line 4: JSON but not a valid record; line 3 and 6 are blank.
    content = "\n".join([lines[0], '{"schema_version": 1, "env": ', "", json.dumps(bad_record), lines[1], ""])
    path.write_text(content + "\n" + lines[2] + "\n\n\n", encoding="utf-8")

    with pytest.raises(CorruptFileError, match=f"{path}:2: invalid JSON") as caught:
        list(read_trajectories(path))
    assert caught.value.line_number == 2

    reader = TrajectoryReader(path, on_error="report")
    assert list(reader) == good
    assert [problem.line_number for problem in reader.problems] == [2, 4]
    assert reader.problems[0].reason.startswith("invalid JSON")
    assert reader.problems[1].reason == "invalid record: key 'won': expected bool, got str 'yes'"
    # Iterating again re-reads and resets the problems instead of accumulating them.
    assert len(list(reader)) == 3 and len(reader.problems) == 2


def test_invalid_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    write_records(path, range(1))
    with open(path, "ab") as file:
        file.write(b'{"env": "\xff\xfe"}\n')
    reader = read_trajectories(path, on_error="report")
    assert len(list(reader)) == 1
    assert reader.problems[0].line_number == 2 and reader.problems[0].reason.startswith("invalid UTF-8")


def test_writer_rejects_an_invalid_record_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    record = make_record(0)
    record.won = 1  # type: ignore[assignment]
    with TrajectoryWriter(path) as writer:
        with pytest.raises(RecordError, match="key 'won'"):
            writer.write(record)
        assert writer.records_written == 0
    assert path.read_bytes() == b""


def test_writing_after_close_fails(tmp_path: Path) -> None:
    writer = TrajectoryWriter(tmp_path / "episodes.jsonl")
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(make_record(0))


def test_on_error_is_checked() -> None:
    with pytest.raises(ValueError, match="on_error"):
        read_trajectories("x.jsonl", on_error="ignore")  # type: ignore[arg-type]


# Text biased towards what breaks line-based formats: newlines, carriage returns, unicode line separators, quotes.
_tricky_text = st.text(
    alphabet=st.one_of(
        st.characters(blacklist_categories=("Cs",)),
        st.sampled_from(["\n", "\r", "\u2028", "\u0085", '"', "\\", "\x00", "é", "☕", "𝔘"]),
    ),
    max_size=40,
)
_finite_floats = st.floats(allow_nan=False, allow_infinity=False)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _finite_floats | _tricky_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_tricky_text, children, max_size=3),
    max_leaves=8,
)
_steps = st.builds(
    StepRecord,
    observation=_tricky_text,
    admissible_actions=st.lists(_tricky_text, max_size=4),
    response=_tricky_text,
    reason=_tricky_text,
    action=_tricky_text,
    admissible=st.booleans(),
    reward=_finite_floats,
    done=st.booleans(),
    won=st.booleans(),
    extras=st.dictionaries(_tricky_text, _json_values, max_size=3),
)
records_strategy = st.builds(
    TrajectoryRecord,
    env=_tricky_text,
    env_version=_tricky_text,
    game_id=_tricky_text,
    split=_tricky_text,
    task=_tricky_text,
    task_type=_tricky_text,
    policy_id=_tricky_text,
    seed=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    steps=st.lists(_steps, max_size=4),
    won=st.booleans(),
    total_reward=_finite_floats,
    final_observation=_tricky_text,
    meta=st.dictionaries(_tricky_text, _json_values, max_size=3),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(records_strategy, min_size=1, max_size=4))
def test_random_records_round_trip_through_a_file(records: list[TrajectoryRecord]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "episodes.jsonl"
        with TrajectoryWriter(path) as writer:
            for record in records:
                writer.write(record)
        assert path.read_bytes().count(b"\n") == len(records)  # one line per record, whatever the text holds
        reader = read_trajectories(path, on_error="report")
        assert list(reader) == records
        assert reader.problems == []
