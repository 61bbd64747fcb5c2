"""Every CLI command as a user runs it: a subprocess at toy scale, real engines."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from agentprm.data import read_trajectories

COMMANDS = [[], ["games"], ["games", "alfworld"], ["demos"], ["play"], ["parquet"], ["init-model"], ["sft"], ["run"],
            ["rollout"], ["targets"], ["train-prm"], ["train-policy"], ["eval"], ["report"]]


def agentprm(*args, stdin=None, check=True):
    result = subprocess.run([sys.executable, "-m", "agentprm.cli", *map(str, args)], input=stdin,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"agentprm {args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(command):
    result = agentprm(*command, "--help")
    assert "usage: agentprm" in result.stdout


@pytest.fixture(scope="module")
def game_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_games")
    result = agentprm("games", "alfworld", "--out", out, "--seed", 3, "--train", 6, "--seen", 0, "--unseen", 6,
                      "--workers", 2, "--quiet")
    assert "Wrote 12 ALFWorld games" in result.stdout
    return out


def test_games_writes_manifest(game_dir):
    manifest = json.loads((game_dir / "manifest.json").read_text())
    assert manifest["totals"] == {"train": 6, "valid_seen": 0, "valid_unseen": 6}
    assert len(list((game_dir / "json_2.1.1").rglob("game.tw-pddl"))) == 12


def test_demos_records_every_game_and_resumes(game_dir, tmp_path):
    out = tmp_path / "demos.jsonl"
    result = agentprm("demos", "--games", game_dir, "--split", "train,unseen", "--out", out, "--quiet")
    assert "all           all                                    12      12   100.0%" in result.stdout
    records = list(read_trajectories(out))
    assert len(records) == 12 and all(r.won and r.policy_id == "expert:handcoded" for r in records)
    assert {r.split for r in records} == {"train", "valid_unseen"}
    assert all(step.admissible for r in records for step in r.steps)

    # An interrupted file (last episode torn by a kill) is reported, not silently extended.
    text = out.read_text()
    out.write_text(text[: len(text) - 40])
    failed = agentprm("demos", "--games", game_dir, "--split", "train,unseen", "--out", out, check=False)
    assert failed.returncode == 2 and f"{out}:12" in failed.stderr

    # A rerun on a complete file plays nothing new and reports the same table.
    out.write_text(text)
    again = agentprm("demos", "--games", game_dir, "--split", "train,unseen", "--out", out, "--quiet")
    assert len(list(read_trajectories(out))) == 12
    assert "100.0%" in again.stdout


def test_demos_on_textworld_express(tmp_path):
    out = tmp_path / "twc.jsonl"
    agentprm("demos", "--env", "twx", "--twx-game", "twc", "--twx-params", "numLocations=1,includeDoors=0",
             "--split", "train", "--limit", 4, "--out", out, "--quiet")
    records = list(read_trajectories(out))
    assert sorted(r.game_id for r in records) == [f"twc/train/{i}" for i in range(4)]  # completion order
    assert all(r.won and r.policy_id == "expert:gold" for r in records)


def test_parquet_conversion(game_dir, tmp_path):
    demos = tmp_path / "demos.jsonl"
    agentprm("demos", "--games", game_dir, "--split", "unseen", "--limit", 2, "--out", demos, "--quiet")
    parquet = tmp_path / "demos.parquet"
    result = agentprm("parquet", demos, parquet)
    records = list(read_trajectories(demos))
    rows = sum(r.num_steps for r in records)
    assert f"Wrote {rows} step rows" in result.stdout
    frame = pd.read_parquet(parquet)
    assert len(frame) == rows and frame["action"].iloc[0] == records[0].steps[0].action


def test_play_in_the_terminal(game_dir):
    # 2 picks the second admissible action, free text gets the engine's answer, then quit.
    result = agentprm("play", "--games", game_dir, "--split", "unseen", "--index", 0,
                      stdin="2\nfly to the moon\nexpert\nlook\nquit\n")
    assert "Task: " in result.stdout and "  1. " in result.stdout
    assert "Nothing happens." in result.stdout
    assert "expert suggests:" in result.stdout and "Stopped." in result.stdout


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, monkeypatch):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    missing = agentprm("demos", "--games", tmp_path / "none", "--out", tmp_path / "d.jsonl", check=False)
    assert missing.returncode == 2 and "agentprm games alfworld" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_type = agentprm("games", "alfworld", "--out", tmp_path, "--task-types", "juggle", check=False)
    assert bad_type.returncode == 2 and "Unknown ALFWorld task type" in bad_type.stderr
    bad_env = agentprm("demos", "--env", "nethack", "--out", tmp_path / "d.jsonl", check=False)
    assert bad_env.returncode == 2 and "invalid choice" in bad_env.stderr


@pytest.mark.heavy
def test_init_model_then_sft_then_resume_message(alfworld_demos, tmp_path):
    model = tmp_path / "tiny"
    built = agentprm("init-model", "--records", alfworld_demos, "--out", model, "--preset", "tiny")
    assert "Embedded model (tiny" in built.stdout and (model / "config.json").is_file()
    again = agentprm("init-model", "--records", alfworld_demos, "--out", model, check=False)
    assert again.returncode == 2 and "exists" in again.stderr

    out = tmp_path / "sft"
    trained = agentprm("sft", f"data={alfworld_demos}", f"model={model}", f"out={out}", "max_steps=6",
                       "batch_size=8", "progress=false", "prompt.history_window=1")
    assert "SFT finished at step 6" in trained.stdout
    assert (out / "model" / "config.json").is_file() and (out / "metrics.jsonl").is_file()

    config = tmp_path / "sft.yaml"
    config.write_text(f"data: {alfworld_demos}\nmodel: {model}\nout: {tmp_path / 'sft2'}\nmax_steps: 2\n"
                      "progress: false\n")
    assert "SFT finished at step 2" in agentprm("sft", config, "batch_size=4").stdout
    assert "lr (float, > 0, default 0.003)" in agentprm("sft", "--describe").stdout


def test_sft_errors_name_the_problem(alfworld_demos, tmp_path):
    bad_key = agentprm("sft", f"data={alfworld_demos}", "model=x", "out=y", "learning_rate=1", check=False)
    assert bad_key.returncode == 2 and "unknown key(s) learning_rate" in bad_key.stderr
    no_model = agentprm("sft", f"data={alfworld_demos}", f"model={tmp_path / 'none'}", f"out={tmp_path}",
                        check=False)
    assert no_model.returncode == 2 and "does not exist" in no_model.stderr
    no_records = agentprm("init-model", "--out", tmp_path / "m", check=False)
    assert no_records.returncode == 2 and "--records is required" in no_records.stderr
