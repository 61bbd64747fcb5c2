"""InversePRM through `agentprm run` (two iterations, a few real games) and proof that no outcome is read."""

import dataclasses
import json
import shutil

import pytest

from agentprm.pipeline.report import read_summary
from test_run import finished_run, tiny_config  # tests/pipeline is on sys.path (no __init__.py)

pytestmark = pytest.mark.heavy  # a whole tiny run: in the full suite (README), not the default one


@pytest.fixture(scope="module")
def inverse_run(alfworld_root, tmp_path_factory):
    root, _ = alfworld_root
    config = tiny_config(root) | {"algorithm": "inverse_prm", "iterations": 2,
                                  "inverse": {"transitions_per_class": 40}}
    config["dpo"] = {k: v for k, v in config["dpo"].items() if k != "monitor_every"}  # no success read on this path
    return finished_run(config, tmp_path_factory.mktemp("inverse_config"))


def test_an_inverse_run_aggregates_learner_data_and_reports_the_table(inverse_run):
    out = inverse_run
    labels = [(r["agent"], r["kind"], r["prm"]) for r in read_summary(out / "summary.json")["rows"]]
    assert labels[:6] == [("pi_0", "policy", None), ("pi_0", "bon", "Q_0"), ("pi_1", "policy", None),
                          ("pi_1", "bon", "Q_0"), ("pi_1", "bon", "Q_1"), ("pi_2", "policy", None)]
    first = json.loads((out / "iter_1/targets/transitions.json").read_text())
    second = json.loads((out / "iter_2/targets/transitions.json").read_text())
    assert first["learner_available"] > 0 and second["learner_available"] > first["learner_available"]  # aggregated
    assert first["expert"] <= 40 + 4 and first["learner"] <= 40 + 4  # capped per class (train + held-out share)
    from agentprm.algorithms.inverse_prm_training import transitions_from_jsonl

    transitions = transitions_from_jsonl(out / "iter_2/targets/transitions.jsonl")
    assert {t.label for t in transitions} == {0, 1} and {t.iteration for t in transitions if not t.label} == {1, 2}
    assert all(t.next_response for t in transitions if t.next_state is not None)  # a' for expert AND learner
    assert any(t.next_state is None for t in transitions)
    summary = json.loads((out / "iter_1/prm/prm_summary.json").read_text())
    assert summary["loss"] == "inverse_prm" and summary["train_expert"] > 0 and summary["train_learner"] > 0
    assert (out / "iter_2/policy/model/config.json").is_file() and not (out / "iter_1/targets/targets.parquet").exists()


def test_flipping_every_outcome_changes_nothing_in_the_inverse_prm(inverse_run, tmp_path):
    from agentprm.data import TrajectoryWriter, read_trajectories
    from agentprm.pipeline.run import run_one_stage

    copies = {}
    for name in ("same", "flipped"):
        run = tmp_path / name
        shutil.copytree(inverse_run, run, ignore=shutil.ignore_patterns("iter_2", "final_eval"))
        for stage in ("targets", "prm", "policy", "eval"):
            shutil.rmtree(run / "iter_1" / stage)
        copies[name] = run
    for shard in sorted((copies["flipped"] / "iter_1/rollouts").glob("shard_*.jsonl")):
        records = list(read_trajectories(shard))
        shard.unlink()
        with TrajectoryWriter(shard) as writer:
            for r in records:
                steps = [dataclasses.replace(s, won=not s.won, reward=1.0 - s.reward, done=not s.done)
                         for s in r.steps]
                writer.write(dataclasses.replace(r, steps=steps, won=not r.won, total_reward=1.0 - r.total_reward))
    def outcomes(run):
        return [r.won for shard in sorted((run / "iter_1/rollouts").glob("shard_*.jsonl"))
                for r in read_trajectories(shard)]

    assert outcomes(copies["flipped"]) == [not won for won in outcomes(copies["same"])]
    for run in copies.values():
        run_one_stage(run, "targets", 1, log=lambda *_: None)
        run_one_stage(run, "train-prm", 1, log=lambda *_: None)
    same, flipped = copies["same"] / "iter_1", copies["flipped"] / "iter_1"
    assert (same / "targets/transitions.jsonl").read_bytes() == (flipped / "targets/transitions.jsonl").read_bytes()
    assert (same / "prm/validation.json").read_text() == (flipped / "prm/validation.json").read_text()
    weights = sorted((same / "prm/model").glob("*.safetensors"))
    assert weights and all(w.read_bytes() == (flipped / "prm/model" / w.name).read_bytes() for w in weights)
