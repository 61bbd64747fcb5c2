"""Contrastive data and a PRM from the policy's knowledge in one tiny `agentprm run` (real games): branching
rollouts, targets pooled by the true state, and the implicit PRM used by online DPO and Best-of-N."""

import json

import pytest

from agentprm.algorithms.mc_targets import targets_from_parquet
from agentprm.models.implicit_prm import ImplicitPRM, load_prm
from agentprm.pipeline.report import read_summary
from agentprm.pipeline.rollouts import read_rollouts
from test_run import finished_run, tiny_config  # tests/pipeline is on sys.path (no __init__.py)

pytestmark = pytest.mark.heavy  # a whole tiny run: in the full suite (README), not the default one


@pytest.fixture(scope="module")
def contrastive_run(alfworld_root, tmp_path_factory):
    root, _ = alfworld_root
    config = tiny_config(root)
    config["rollouts"] |= {"episodes_per_game": 1, "branch_states": 1, "branch_actions": 2,
                           "branch_continuations": 2}
    config["targets"] = {"key": "state", "val_fraction": 0.0}
    config["prm"] |= {"kind": "implicit", "beta": 0.5, "batch_size": 4, "eval_batch_size": 16}
    config["dpo"]["monitor_every"] = 0
    return finished_run(config, tmp_path_factory.mktemp("contrastive_config"))


def test_branches_give_same_state_contrasts_under_state_keys(contrastive_run):
    records = read_rollouts(contrastive_run / "iter_1/rollouts")
    branches = [r for r in records if r.meta["rollout"] == "branch"]
    assert len(branches) == 6 * 2 * 2  # 6 games x 1 branch point x 2 actions x 2 continuations
    assert all(s.extras.get("state_id") for r in records for s in r.steps)
    stats = json.loads((contrastive_run / "iter_1/targets/targets.json").read_text())
    assert stats["key"] == "state" and stats["multi_action_states"] >= 6
    targets = targets_from_parquet(contrastive_run / "iter_1/targets/targets.parquet")
    assert all(t.state_id.startswith("state:") for t in targets)


def test_the_implicit_prm_is_trained_saved_and_used_downstream(contrastive_run):
    summary = json.loads((contrastive_run / "iter_1/prm/prm_summary.json").read_text())
    assert summary["kind"] == "implicit" and summary["train_episodes"] == 6 + 24
    assert isinstance(load_prm(contrastive_run / "iter_1/prm/model"), ImplicitPRM)
    rows = read_summary(contrastive_run / "summary.json")["rows"]
    assert {(r["agent"], r["kind"]) for r in rows} >= {("pi_1", "policy"), ("pi_1", "bon")}
    assert (contrastive_run / "iter_1/policy/model/config.json").is_file()
