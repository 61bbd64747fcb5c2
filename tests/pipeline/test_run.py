"""`agentprm run` end to end at toy scale, and the resume contract: kill after the PRM stage, rerun, same summary."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from agentprm.config import ConfigError, load_config
from agentprm.pipeline.report import read_summary
from agentprm.pipeline.run_config import RunConfig


def tiny_config(root) -> dict:
    return {
        "games": {"root": str(root), "train": 6, "eval_split": "unseen", "eval_games": 6},
        "model": {"source": "embedded", "preset": "tiny", "vocab_size": 1024},
        "sft": {"max_steps": 20, "batch_size": 8, "val_fraction": 0.0, "eval_every": 10, "save_every": 10},
        "iterations": 1,
        "rollouts": {"episodes_per_game": 2, "temperature": 1.0, "max_steps": 8},
        "prm": {"lr": 0.001, "max_steps": 8, "batch_size": 16, "eval_every": 4},
        "dpo": {"lr": 0.0001, "steps": 3, "states_per_step": 4, "samples_per_state": 2, "temperature": 1.0,
                "monitor_every": 2},
        "monitor": {"split": "seen", "games": 3, "states": 8},
        "eval": {"max_steps": 8, "bon_n": 2, "bon_curve": [1, 2]},
        "num_envs": 6,
        "seed": 0,
        "progress": False,
    }


def run_cli(config_path, out, **popen):
    return subprocess.Popen([sys.executable, "-m", "agentprm.cli", "run", str(config_path), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finished_run(config: dict, folder) -> Path:
    """``agentprm run`` of ``config`` (written to ``folder/config_in.yaml``) into ``folder/run``, to the end."""
    path = Path(folder) / "config_in.yaml"
    path.write_text(yaml.safe_dump(config))
    process = run_cli(path, Path(folder) / "run")
    output, _ = process.communicate(timeout=1800)
    assert process.returncode == 0, output
    return Path(folder) / "run"


@pytest.fixture(scope="module")
def config_file(alfworld_root, tmp_path_factory):
    root, _ = alfworld_root
    path = tmp_path_factory.mktemp("run_config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(root)))
    return path


@pytest.fixture(scope="module")
def straight_run(config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "straight"
    process = run_cli(config_file, out)
    output, _ = process.communicate(timeout=1800)
    assert process.returncode == 0, output
    return out, output


def test_a_run_produces_the_papers_table_shape(straight_run):
    out, output = straight_run
    summary = read_summary(out / "summary.json")
    labels = [(r["agent"], r["kind"], r["prm"], r["n"]) for r in summary["rows"]]
    assert labels == [("pi_0", "policy", None, 1), ("pi_0", "bon", "Q_0", 2), ("pi_1", "policy", None, 1),
                      ("pi_1", "bon", "Q_0", 2), ("pi_1", "bon", "Q_0", 1)]
    assert summary["eval_games"] == 6 and summary["max_steps"] == 8
    # BoN candidates are drawn at the evaluation temperature: BoN(N=1) is the policy row, episode for episode
    pi_1, bon_1 = summary["rows"][2], summary["rows"][4]
    assert (bon_1["success"], bon_1["mean_actions"]) == (pi_1["success"], pi_1["mean_actions"])
    assert bon_1["distinct_candidates"] == 1.0 and 1.0 <= summary["rows"][3]["distinct_candidates"] <= 2.0
    # the curve's points at N = 1 and N = bon_n are the evaluation stage's episodes, relabelled, not replayed
    assert "not replayed" in output
    curve = [json.loads(line) for line in (out / "final_eval/BoN(pi_1,Q_0,N=1).jsonl").read_text().splitlines()]
    policy = [json.loads(line) for line in (out / "iter_1/eval/pi_1.jsonl").read_text().splitlines()]
    assert [r["policy_id"] for r in curve] == ["BoN(pi_1,Q_0,N=1)"] * 6
    assert [[s["action"] for s in r["steps"]] for r in curve] == [[s["action"] for s in r["steps"]] for r in policy]
    for row in summary["rows"]:
        assert 0 <= row["ci95"][0] <= row["success"] <= row["ci95"][1] <= 1 and row["episodes"] == 6
    report = (out / "report.md").read_text()
    assert "BoN(pi_1, Q_0), N=2" in report and "success_per_iteration.png" in report
    for name in ("config.yaml", "manifest.json", "metrics.jsonl", "iter_1/targets/targets.parquet",
                 "iter_1/prm/model/config.json", "iter_1/policy/model/config.json", "plots/best_of_n.png"):
        assert (out / name).exists(), name
    stages = {json.loads(line)["stage"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert {"sft", "targets", "prm", "dpo"} <= stages
    # the reward-hacking monitor played the 3 seen games at DPO steps 0, 2 and 3 and kept the best reading
    monitor = json.loads((out / "iter_1/policy/dpo_summary.json").read_text())["monitor"]
    assert [r["step"] for r in monitor["readings"]] == [0, 2, 3]
    assert all(r["success"] in (0, 1 / 3, 2 / 3, 1) for r in monitor["readings"])
    best = max(r["success"] for r in monitor["readings"])
    assert monitor["selected_step"] == next(r["step"] for r in monitor["readings"] if r["success"] == best)
    assert (out / "plots/reward_hacking.png").exists() and "Reward hacking" in report
    assert not list(out.rglob("*.partial"))


def test_killed_after_the_prm_stage_resumes_to_the_same_summary(config_file, straight_run, tmp_path):
    out = tmp_path / "killed"
    process = run_cli(config_file, out, start_new_session=True)
    deadline = time.time() + 1800
    while not (out / "iter_1" / "prm").is_dir():  # the PRM stage has just completed (renamed)
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "summary.json").exists()

    resumed = run_cli(config_file, out)
    output, _ = resumed.communicate(timeout=1800)
    assert resumed.returncode == 0, output
    assert "[skip] prm (complete)" in output and "[skip] rollouts (complete)" in output
    straight, again = read_summary(straight_run[0] / "summary.json"), read_summary(out / "summary.json")

    def results(summary):  # everything but wall-clock speed
        return [{k: v for k, v in row.items() if k != "agent_steps_per_s"} for row in summary["rows"]]

    assert results(again) == results(straight)


def test_a_changed_config_is_refused_in_an_existing_run(config_file, straight_run):
    out, _ = straight_run
    process = subprocess.run([sys.executable, "-m", "agentprm.cli", "run", str(config_file), "--out", str(out),
                              "iterations=2"], capture_output=True, text=True, timeout=300)
    assert process.returncode == 2 and "different config (changed: iterations)" in process.stderr


def test_shipped_configs_load_and_validate():
    from pathlib import Path

    from agentprm.pipeline.eval_suite import EvalConfig

    configs = sorted(Path(__file__).parents[2].joinpath("configs").glob("*.yaml"))
    assert configs
    for path in configs:  # evaluation configs are eval-*.yaml, every other one is a run
        load_config(EvalConfig if path.name.startswith("eval-") else RunConfig, path)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(RunConfig, {"prm": {"learning_rate": 1}})
    with pytest.raises(ConfigError, match="InversePRM's trainer does not read log pi_ref"):
        load_config(RunConfig, {"algorithm": "inverse_prm", "prm": {"kind": "residual"}})
    assert load_config(RunConfig, {"prm": {"kind": "residual"}}).prm.policy_weight == 1.0


def test_workers_are_a_count_or_a_backend_and_servers_need_free_generation():
    from agentprm.envs.runner import PoolSpec

    assert load_config(RunConfig, {"workers": 2}).pool() == PoolSpec(2)
    ray = load_config(RunConfig, {"workers": {"count": 4, "backend": "ray"}, "ray": {"address": "auto"}})
    assert ray.pool() == PoolSpec(4, "ray", "auto")
    with pytest.raises(ConfigError, match="workers"):
        load_config(RunConfig, {"workers": {"count": 2, "backend": "slurm"}})
    with pytest.raises(ConfigError, match="policy.server_url needs policy.mode: free"):
        load_config(RunConfig, {"policy": {"server_url": "http://127.0.0.1:8000/v1"}})
    served = load_config(RunConfig, {"policy": {"server_url": "http://h:8000/v1", "mode": "free"}})
    assert served.policy.server_url == "http://h:8000/v1"


def test_rollout_games_windows_cycle_through_the_training_games():
    from agentprm.pipeline.run_stages import rollout_games

    games = list("abcde")
    assert rollout_games(games, 0, 1) == games and rollout_games(games, 9, 3) == games
    assert rollout_games(games, 2, 1) == ["a", "b"]
    assert rollout_games(games, 2, 2) == ["c", "d"]
    assert rollout_games(games, 2, 3) == ["e", "a"]  # wraps around
    with pytest.raises(ConfigError, match="rollouts.games"):
        load_config(RunConfig, {"rollouts": {"games": -1}})


def test_config_changes_name_nested_keys():
    from agentprm.pipeline.run import config_changes

    old = {"iterations": 1, "sft": {"lr": 0.1, "steps": 5}, "seed": 0}
    new = {"iterations": 1, "sft": {"lr": 0.2, "steps": 5, "group_by_length": True}, "seed": 0, "extra": {}}
    assert config_changes(old, new) == ["extra (new key)", "sft.group_by_length (new key)", "sft.lr"]
    assert config_changes(new, old) == ["extra (removed key)", "sft.group_by_length (removed key)", "sft.lr"]
    assert config_changes(old, old) == []


def test_a_run_from_an_older_version_resumes_when_its_new_keys_are_at_their_defaults(tmp_path):
    """A config.yaml written before keys were added: still the same run while they are at their defaults (the
    older version behaved as the default does), a different run as soon as one is set."""
    import yaml

    from agentprm.config import defaults_dict, to_dict
    from agentprm.pipeline.run import config_changes, prepare_run_dir

    config = load_config(RunConfig, {})
    old = to_dict(config)
    del old["ray"], old["policy"]["server_url"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=True))
    assert config_changes(old, to_dict(config), defaults=defaults_dict(RunConfig)) == []
    prepare_run_dir(config, tmp_path)  # resumes, and writes the current resolved config
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == to_dict(config)

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=True))
    served = load_config(RunConfig, {"policy": {"server_url": "http://h:8000/v1", "mode": "free"}})
    with pytest.raises(ConfigError, match=r"changed: policy.mode, policy.server_url \(new key\)"):
        prepare_run_dir(served, tmp_path)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == old  # a refused run rewrites nothing


@pytest.mark.heavy
def test_stage_subcommands_rebuild_one_stage_of_a_run(straight_run, tmp_path):
    import shutil

    import pandas as pd

    out, _ = straight_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)

    def stage(*args):
        return subprocess.run([sys.executable, "-m", "agentprm.cli", *map(str, args)], capture_output=True,
                              text=True, timeout=600)

    kept = stage("targets", copy, "--iteration", 1)
    assert kept.returncode == 0 and "[skip] targets (complete)" in kept.stdout

    bad = stage("train-prm", copy, "--iteration", 5)
    assert bad.returncode == 2 and "no stage for iteration 5" in bad.stderr and "--iteration 1" in bad.stderr

    shutil.rmtree(copy / "iter_1" / "targets")
    blocked = stage("train-prm", copy, "--iteration", 1, "--redo")
    assert blocked.returncode == 2 and "iter_1/targets not complete" in blocked.stderr
    assert (copy / "iter_1" / "prm" / "model").is_dir()  # a refused command touches nothing

    rebuilt = stage("targets", copy, "--iteration", 1)
    assert rebuilt.returncode == 0, rebuilt.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(copy / "iter_1" / "targets" / "targets.parquet"),
                                  pd.read_parquet(out / "iter_1" / "targets" / "targets.parquet"))

    redone = stage("eval", copy, "--iteration", 1, "--redo")
    assert redone.returncode == 0, redone.stderr
    assert "final_eval were built from the old iter_1/eval" in redone.stdout

    def rows(run):  # everything but the timing
        return [{k: v for k, v in row.items() if k != "agent_steps_per_s"}
                for row in json.loads((run / "iter_1" / "eval" / "rows.json").read_text())]

    assert rows(copy) == rows(out)

    rebuilt_report = stage("report", copy)
    assert rebuilt_report.returncode == 0, rebuilt_report.stderr
    assert "report rebuilt by `agentprm report`" in (copy / "report.md").read_text()
    original, again = read_summary(out / "summary.json"), read_summary(copy / "summary.json")
    assert [row["agent"] for row in again["rows"]] == [row["agent"] for row in original["rows"]]
    assert [row["success"] for row in again["rows"]] == [row["success"] for row in original["rows"]]


def test_the_monitor_refuses_the_evaluation_split_and_missing_games(alfworld_root):
    from agentprm.config import ConfigError, load_config

    root, _ = alfworld_root
    bad = tiny_config(root) | {"monitor": {"split": "unseen", "games": 3}}
    with pytest.raises(ConfigError, match="monitor.split must not be the evaluation split"):
        load_config(RunConfig, bad)
    generated = tiny_config(root)
    generated["games"] = {"train": 6, "seen": 0, "unseen": 6}
    with pytest.raises(ConfigError, match=r"set games.seen > 0"):
        load_config(RunConfig, generated)


def test_the_rollout_stage_samples_from_an_inference_server(straight_run, model_server, tmp_path):
    import math

    from agentprm.models.api_client import ApiSettings, ChatClient
    from agentprm.pipeline import run_stages
    from agentprm.pipeline.rollouts import read_rollouts
    from agentprm.pipeline.run import RunContext

    run, _ = straight_run
    config = load_config(RunConfig, run / "config.yaml", [
        f"policy.server_url={model_server}", "policy.mode=free", "policy.max_new_tokens=8", "rollouts.games=2",
        "rollouts.episodes_per_game=1", "rollouts.max_steps=3"])
    out = tmp_path / "rollouts"
    out.mkdir()
    run_stages.rollouts(RunContext(config, run), out, 1)
    records = read_rollouts(out)
    assert len(records) == 2 and all(r.policy_id == "pi_0" for r in records)
    for record in records:  # free generation: raw text, parsed action, a finite log-prob from the local copy
        for step in record.steps:
            assert math.isfinite(step.extras["logprob"]) and step.extras["logprob"] < 0
    served = ChatClient(ApiSettings(base_url=model_server, model="any")).check()
    assert str((run / "iter_0" / "policy" / "model").resolve()) in served  # the server loaded pi_0's folder


def test_targets_stage_pools_by_the_true_state_when_asked(straight_run, tmp_path):
    """targets.key=state on the run's own rollouts: no more keys or states than the prefix keys (a prefix fixes the
    world state it reaches), and targets.json names the keying and counts the states."""
    from agentprm.algorithms.mc_targets import state_counts, targets_from_parquet
    from agentprm.pipeline.run import RunContext
    from agentprm.pipeline.run_stages import targets

    out, _ = straight_run
    data = yaml.safe_load((out / "config.yaml").read_text())
    stats = {}
    for key in ("prefix", "state"):
        data["targets"]["key"] = key
        folder = tmp_path / key
        folder.mkdir()
        targets(RunContext(load_config(RunConfig, data), out), folder, 1)
        stats[key] = json.loads((folder / "targets.json").read_text())
        found = targets_from_parquet(folder / "targets.parquet")
        assert stats[key]["key"] == key and stats[key]["keys"] == len(found)
        assert {k: stats[key][k] for k in ("states", "multi_action_states")} == state_counts(found)
    assert stats["prefix"] == json.loads((out / "iter_1" / "targets" / "targets.json").read_text())
    assert stats["state"]["keys"] <= stats["prefix"]["keys"] and stats["state"]["states"] <= stats["prefix"]["states"]
