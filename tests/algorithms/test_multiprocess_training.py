"""SFT and PRM training under `accelerate launch` with 2 processes on the CPU (gloo) give the losses and weights of
one process with the same global batch (the optimiser step's window of micro-batches split over the processes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TWO_PROCESSES = ["-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate/cpu-2proc.yaml")]


def launch(args, processes: int, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both sides compute with one thread per process
    if processes == 1:
        command = [sys.executable, *args]
    else:
        command = [sys.executable, *TWO_PROCESSES, "--main_process_port", str(_free_port()), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def losses(path: Path, name: str = "loss") -> list[float]:
    return [row["value"] for row in map(json.loads, path.read_text().splitlines()) if row["name"] == name]


def assert_same_weights(a: Path, b: Path):
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=1e-4, atol=1e-5, msg=key)


def test_sft_on_two_processes_matches_one_process(alfworld_demos, tiny_model, tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(alfworld_demos), "model": str(tiny_model), "max_steps": 4, "batch_size": 4, "grad_accum": 3,
        "lr": 3e-3, "warmup_steps": 1, "val_fraction": 0.0, "eval_every": 100, "save_every": 100,
        "progress": False}))
    for processes in (1, 2):
        launch(["-m", "agentprm.cli", "sft", str(config), f"out={tmp_path / f'p{processes}'}"], processes, tmp_path)
    one, two = losses(tmp_path / "p1" / "metrics.jsonl"), losses(tmp_path / "p2" / "metrics.jsonl")
    assert len(one) == len(two) == 4  # only the main process logs
    assert two == pytest.approx(one, rel=1e-4)
    assert one[-1] < one[0]
    assert_same_weights(tmp_path / "p1" / "model", tmp_path / "p2" / "model")


@pytest.mark.heavy
def test_prm_training_on_two_processes_matches_one_process(alfworld_demos, tiny_model, tmp_path):
    from agentprm.algorithms.mc_targets import mc_q_targets, targets_to_parquet
    from agentprm.data import read_trajectories

    targets = tmp_path / "targets.parquet"
    targets_to_parquet(mc_q_targets(read_trajectories(alfworld_demos), gamma=0.9, val_fraction=0.2), targets)
    for processes in (1, 2):
        # 3 micro-batches per step over 2 processes: rank 0 takes two, rank 1 one (a short last window of an epoch
        # can leave a rank with a zero-weight micro-batch)
        launch(["-m", "agentprm.algorithms.prm_training", str(targets), str(tiny_model), str(tmp_path / f"p{processes}"),
                "batch_size=8", "grad_accum=3", "epochs=2", "lr=1e-3", "eval_every=1000", "progress=false"],
               processes, tmp_path)
    one, two = losses(tmp_path / "p1" / "metrics.jsonl"), losses(tmp_path / "p2" / "metrics.jsonl")
    assert len(one) == len(two) >= 3
    assert two == pytest.approx(one, rel=1e-4)
    assert_same_weights(tmp_path / "p1" / "model", tmp_path / "p2" / "model")
    summaries = [json.loads((tmp_path / f"p{p}" / "prm_summary.json").read_text()) for p in (1, 2)]
    assert summaries[1]["val_bce"] == pytest.approx(summaries[0]["val_bce"], rel=1e-4)


@pytest.mark.heavy
def test_online_dpo_on_two_processes_matches_one_process(alfworld_demos, sft_model, tmp_path):
    from agentprm.models.prm import ProcessRewardModel

    torch.manual_seed(0)
    prm = tmp_path / "prm"
    ProcessRewardModel.from_policy(sft_model, head_init="normal").save_pretrained(prm)  # scores differ: pairs exist
    for processes in (1, 2):
        launch(["-m", "agentprm.algorithms.dpo_trainer", str(sft_model), str(prm), str(alfworld_demos),
                str(tmp_path / f"p{processes}"), "steps=3", "states_per_step=16", "samples_per_state=4", "lr=1e-3",
                "progress=false"], processes, tmp_path)
    one, two = losses(tmp_path / "p1" / "metrics.jsonl"), losses(tmp_path / "p2" / "metrics.jsonl")
    pairs = losses(tmp_path / "p1" / "metrics.jsonl", "pairs")
    # Steps with pairs log a loss; an odd number of pairs gives the processes unequal shares.
    assert len(one) == len(two) >= 2 and max(pairs) >= 3
    assert two == pytest.approx(one, rel=1e-4)
    assert losses(tmp_path / "p2" / "metrics.jsonl", "dpo_margin") == pytest.approx(
        losses(tmp_path / "p1" / "metrics.jsonl", "dpo_margin"), rel=1e-4, abs=1e-6)
    # Adam divides by sqrt(v): a parameter whose gradient is ~0 moves by up to lr on float noise, so the weights
    # are compared by distance: the two runs end 100x closer to each other than to where they started.
    start, one_w, two_w = (load_file(path / "model.safetensors")
                           for path in (Path(sft_model), tmp_path / "p1" / "model", tmp_path / "p2" / "model"))
    moved = sum(float(((one_w[k] - start[k]) ** 2).sum()) for k in one_w) ** 0.5
    apart = sum(float(((two_w[k] - one_w[k]) ** 2).sum()) for k in one_w) ** 0.5
    assert moved > 0 and apart < moved / 100, (apart, moved)


@pytest.mark.parametrize("module", ["prm_training", "dpo_trainer"])
def test_trainer_mains_refuse_a_bad_override_naming_the_key(module, tmp_path, capsys):
    """A wrong key or value exits with status 2 and the key's name, before any file is read or model loaded."""
    import importlib

    main = importlib.import_module(f"agentprm.algorithms.{module}").main
    args = ["missing.parquet", "missing-model", str(tmp_path / "out")]
    if module == "dpo_trainer":
        args = ["missing-policy", "missing-prm", "missing.jsonl", str(tmp_path / "out")]
    for override, key in (("lr=fast", "lr"), ("no_such_key=1", "no_such_key")):
        with pytest.raises(SystemExit) as exited:
            main([*args, override])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and key in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
