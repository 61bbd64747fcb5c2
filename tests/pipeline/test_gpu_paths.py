"""The GPU recipe's code paths (configs/alfworld-gpu.yaml: bf16, the implicit PRM, the KL step), run end to end on
the CPU at toy size, so that CI covers what a GPU run executes; and the device checks that come before any work."""

import subprocess
import sys

import pytest
import torch
import yaml

from agentprm.config import load_config
from agentprm.pipeline.report import read_summary
from agentprm.pipeline.run_config import RunConfig
from test_run import finished_run, tiny_config  # tests/pipeline is on sys.path (no __init__.py)


@pytest.fixture(scope="module")
def bf16_run(alfworld_root, tmp_path_factory):
    root, _ = alfworld_root
    config = tiny_config(root)
    config |= {"device": "cpu", "precision": "bf16", "policy_step": "kl"}  # bf16 on a CPU is slow: keep it small
    config["sft"] |= {"max_steps": 6, "eval_every": 6, "save_every": 6}
    config["rollouts"] |= {"episodes_per_game": 1, "max_steps": 5}
    config["prm"] = {"kind": "implicit", "beta": 0.1, "lr": 0.001, "max_steps": 2, "batch_size": 4}
    config["kl"] = {"beta": 0.1, "lr": 1e-3, "steps": 1, "states_per_step": 4}
    config["eval"] |= {"max_steps": 5}
    config["dpo"]["monitor_every"] = 0
    config["eval"]["bon_logprob_weight"] = 0.03
    return finished_run(config, tmp_path_factory.mktemp("bf16"))


@pytest.mark.heavy  # the GPU kit's test (test_gpu_kit.py) runs the loop in bf16 at toy size in the default suite
def test_a_bf16_run_trains_every_stage_and_evaluates(bf16_run):
    resolved = yaml.safe_load((bf16_run / "config.yaml").read_text())
    assert resolved["precision"] == "bf16" and resolved["device"] == "cpu"
    assert (bf16_run / "iter_0/policy/model").is_dir()
    assert (bf16_run / "iter_1/prm/model/agentprm_prm.json").is_file()
    assert (bf16_run / "iter_1/policy/kl_summary.json").is_file()
    rows = read_summary(bf16_run / "summary.json")["rows"]
    assert {(r["agent"], r["kind"]) for r in rows} >= {("pi_0", "policy"), ("pi_1", "policy"), ("pi_1", "bon")}
    assert all(0.0 <= r["success"] <= 1.0 and r["episodes"] == 6 for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_device_cuda_without_a_gpu_stops_before_any_stage(tmp_path):
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump({"device": "cuda", "games": {"train": 2, "unseen": 2}}))
    done = subprocess.run([sys.executable, "-m", "agentprm.cli", "run", str(path), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "sees no GPU" in done.stderr + done.stdout and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "games").exists()


def test_device_and_precision_are_checked_at_load():
    with pytest.raises(Exception, match="device"):
        load_config(RunConfig, {"device": "tpu"})
    with pytest.raises(Exception, match="precision"):
        load_config(RunConfig, {"precision": "fp16"})
