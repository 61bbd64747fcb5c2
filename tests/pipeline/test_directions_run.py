"""The paper's directions switched on together in one tiny `agentprm run` (two iterations, real games):
reset distribution, steered exploration, process reward shaping and the reward-hacking monitor."""

import json

import pytest

from agentprm.algorithms.mc_targets import mc_q_targets, targets_from_parquet
from agentprm.pipeline.report import read_summary
from agentprm.pipeline.rollouts import read_rollouts
from test_run import finished_run, tiny_config  # tests/pipeline is on sys.path (no __init__.py)

pytestmark = pytest.mark.heavy  # a whole tiny run: in the full suite (README), not the default one


@pytest.fixture(scope="module")
def directions_run(alfworld_root, tmp_path_factory):
    root, _ = alfworld_root
    config = tiny_config(root)
    config["iterations"] = 2
    config["rollouts"] |= {"episodes_per_game": 2, "reset_fraction": 0.5, "steer_fraction": 0.5, "max_steps": 10}
    config["targets"] = {"shaping": True, "val_fraction": 0.0}
    return finished_run(config, tmp_path_factory.mktemp("directions_config"))


def test_reset_and_steered_rollouts_are_recorded(directions_run):
    records = read_rollouts(directions_run / "iter_1/rollouts")
    reset = [r for r in records if r.meta.get("reset_step")]
    assert reset and all(r.meta["rollout"] == 0 for r in reset)  # round(0.5 * 2) = 1 reset shard: shard 0
    assert all(s.extras.get("reset") for r in reset for s in r.steps[: r.meta["reset_step"]])
    steered = [s for r in records for s in r.steps if s.extras.get("steered")]
    policy_steps = [s for r in records for s in r.steps if not s.extras.get("reset")]
    assert 0 < len(steered) < len(policy_steps)


def test_targets_are_shaped_by_a_value_model_learned_once(directions_run):
    assert (directions_run / "iter_1/targets/value/model/config.json").is_file()
    assert not (directions_run / "iter_2/targets/value").exists()  # iteration 2 reuses pi_0's value model
    shaped = targets_from_parquet(directions_run / "iter_1/targets/targets.parquet")
    plain = mc_q_targets(read_rollouts(directions_run / "iter_1/rollouts"), 0.95, 0.0)
    assert [t.key for t in shaped] == [t.key for t in plain]  # replayed steps have no target in either
    assert all(0.0 <= t.q <= 1.0 for t in shaped)
    assert any(abs(s.q - p.q) > 1e-6 for s, p in zip(shaped, plain))
    rows = read_summary(directions_run / "summary.json")["rows"]
    assert [r["agent"] for r in rows if r["kind"] == "policy"] == ["pi_0", "pi_1", "pi_2"]
    monitor = json.loads((directions_run / "iter_2/policy/dpo_summary.json").read_text())["monitor"]
    assert monitor["readings"][0]["step"] == 0
