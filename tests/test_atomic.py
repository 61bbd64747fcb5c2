"""Atomic folder and file writes: the final name holds the old or the new content, never a half-written one."""

import pytest

from agentprm.atomic import atomic_directory, write_text_atomic


def test_atomic_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        (staging / "weights").write_text("v1")
    assert (target / "weights").read_text() == "v1"
    with pytest.raises(FileExistsError):
        with atomic_directory(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(target, overwrite=True) as staging:
            (staging / "weights").write_text("half")
            raise RuntimeError("killed while writing")
    assert (target / "weights").read_text() == "v1"  # the old version survives a failed write
    with atomic_directory(target, overwrite=True) as staging:
        (staging / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or old folders left


def test_write_text_atomic(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    write_text_atomic(path, "{}\n")
    write_text_atomic(path, '{"a": 1}\n')
    assert path.read_text() == '{"a": 1}\n'
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]
