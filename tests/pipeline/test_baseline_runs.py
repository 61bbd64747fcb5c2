"""Outcome-only baselines through `agentprm run`: rejection-sampling fine-tuning (pi_i = SFT of pi_{i-1} on its won
rollouts) and trajectory-level preference optimisation (DPO on won vs failed episodes of a game)."""

import json
import shutil

import pytest
import torch

from agentprm.pipeline.report import read_summary
from test_run import finished_run, tiny_config  # tests/pipeline is on sys.path (no __init__.py)

pytestmark = pytest.mark.heavy  # a whole tiny run: in the full suite (README), not the default one


@pytest.fixture(scope="module")
def rft_run(alfworld_root, tmp_path_factory):
    root, _ = alfworld_root
    config = tiny_config(root) | {"algorithm": "rft", "rft": {"max_steps": 6, "batch_size": 4}}
    return finished_run(config, tmp_path_factory.mktemp("rft_config"))


def test_an_rft_run_has_policy_rows_only(rft_run):
    rows = read_summary(rft_run / "summary.json")["rows"]
    assert [(r["agent"], r["kind"]) for r in rows] == [("pi_0", "policy"), ("pi_1", "policy")]
    assert not (rft_run / "iter_1/prm").exists() and not (rft_run / "final_eval").exists()
    won = json.loads((rft_run / "iter_1/policy/rft.json").read_text())["won_rollouts"]
    episodes = sum(1 for shard in (rft_run / "iter_1/rollouts").glob("shard_*.jsonl")
                   for _ in shard.read_text().splitlines())
    assert 0 <= won <= episodes and (rft_run / "iter_1/policy/model/config.json").is_file()


def test_rft_trains_on_the_won_episodes(rft_run, alfworld_demos, tmp_path):
    from agentprm.models.policy import Policy
    from agentprm.pipeline.run import run_one_stage

    run = tmp_path / "run"
    shutil.copytree(rft_run, run)
    for shard in (run / "iter_1/rollouts").glob("shard_*.jsonl"):
        shard.unlink()
    shutil.copy(alfworld_demos, run / "iter_1/rollouts/shard_000.jsonl")  # expert episodes: all won
    run_one_stage(run, "train-policy", 1, redo=True, log=lambda *_: None)
    assert json.loads((run / "iter_1/policy/rft.json").read_text())["won_rollouts"] == 12
    before = Policy.from_pretrained(run / "iter_0/policy/model").model.state_dict()
    after = Policy.from_pretrained(run / "iter_1/policy/model").model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # six SFT steps moved the weights
    assert (run / "iter_1/policy/metrics.jsonl").is_file()


def test_a_trajectory_dpo_run_has_policy_rows_only(alfworld_root, tmp_path):
    root, _ = alfworld_root
    config = tiny_config(root) | {"algorithm": "trajectory_dpo", "trajectory_dpo": {"steps": 3, "pairs_per_step": 2},
                                  "rollouts": {"episodes_per_game": 3, "temperature": 1.0, "max_steps": 8}}
    run = finished_run(config, tmp_path)
    rows = read_summary(run / "summary.json")["rows"]
    assert [(r["agent"], r["kind"]) for r in rows] == [("pi_0", "policy"), ("pi_1", "policy")]
    summary = json.loads((run / "iter_1/policy/dpo_summary.json").read_text())
    assert summary["episodes"] == 18 and summary["steps"] in (0, 3)  # 0 when no game had a win and a loss
    assert (run / "iter_1/policy/model/config.json").is_file()
