"""A run folder damaged by hand gives one line naming the file and the command that rebuilds it: never a traceback,
never a silent reuse. And an --out that cannot be a run folder fails before any work."""

import os
import shutil
import subprocess
import sys

import pytest

from test_run import finished_run, tiny_config  # tests/pipeline is on sys.path (no __init__.py)


@pytest.fixture(scope="module")
def run_folder(alfworld_root, tmp_path_factory):
    root, _ = alfworld_root
    config = tiny_config(root)
    config["dpo"]["monitor_every"] = 0
    config["eval"]["bon_curve"] = [1]
    return finished_run(config, tmp_path_factory.mktemp("damaged"))


def agentprm(*args):
    return subprocess.run([sys.executable, "-m", "agentprm.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def damaged_copy(run_folder, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_folder, copy)
    return copy


def assert_one_line(process, *fragments):
    assert process.returncode == 2, process.stdout + process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in process.stderr, process.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_a_stage_folder_without_its_marker_is_not_reused(run_folder, tmp_path):
    run = damaged_copy(run_folder, tmp_path)
    (run / "iter_1/prm/stage.json").unlink()
    (run / "summary.json").unlink()
    process = agentprm("run", run / "config.yaml", "--out", run)
    assert_one_line(process, f"{run / 'iter_1/prm'}", "stage.json", f"agentprm train-prm {run} --iteration 1 --redo")
    assert not (run / "summary.json").exists()


def test_a_torn_metrics_file_is_named(run_folder, tmp_path):
    run = damaged_copy(run_folder, tmp_path)
    path = run / "iter_1/prm/metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0][: len(lines[0]) // 2]] + lines[1:]) + "\n")
    process = agentprm("report", run)
    assert_one_line(process, str(path), "line 1", f"agentprm train-prm {run} --iteration 1 --redo")


def test_a_corrupt_parquet_file_is_named(run_folder, tmp_path):
    run = damaged_copy(run_folder, tmp_path)
    path = run / "iter_1/targets/targets.parquet"
    path.write_bytes(path.read_bytes()[:100])
    process = agentprm("train-prm", run, "--iteration", 1, "--redo")
    assert_one_line(process, str(path), "Parquet", f"agentprm targets {run} --iteration 1 --redo")


def test_a_truncated_checkpoint_is_named(run_folder, tmp_path):
    run = damaged_copy(run_folder, tmp_path)
    weights = run / "iter_1/prm/model/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    process = agentprm("train-policy", run, "--iteration", 1, "--redo")
    assert_one_line(process, str(run / "iter_1/prm/model"), "unreadable checkpoint",
                    f"agentprm train-prm {run} --iteration 1 --redo")


def test_an_out_that_is_a_file_fails_before_work(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("iterations: 0\n")
    target = tmp_path / "a_file"
    target.write_text("not a run\n")
    assert_one_line(agentprm("run", config, "--out", target), "is a file")
    assert_one_line(agentprm("run", config, "--out", target / "below"), "not writable")
    assert target.read_text() == "not a run\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_out_in_a_read_only_folder_fails_before_work(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("iterations: 0\n")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert_one_line(agentprm("run", config, "--out", locked / "run"), "not writable")
        assert not (locked / "run").exists()
    finally:
        locked.chmod(0o755)
