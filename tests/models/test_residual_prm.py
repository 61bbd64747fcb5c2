"""The residual PRM: sigmoid(h + w log pi_ref); with a zero head it ranks a state's actions exactly as the policy."""

import json
import math

import pytest

from agentprm.models.implicit_prm import load_prm
from agentprm.models.policy import Policy
from agentprm.models.prm import ProcessRewardModel, sigmoid
from agentprm.models.residual_prm import ResidualPRM

PROMPTS = ["You are in a kitchen. Your task is to: put a mug in the sink.\n> ",
           "You are in a bedroom. Your task is to: find a book.\n> "]
ACTIONS = [["go to sink 1", "take mug 1 from countertop 1", "look", "inventory"],
           ["go to desk 1", "examine bed 1", "look"]]


def test_sigmoid_is_stable():
    assert sigmoid(0.0) == 0.5 and sigmoid(math.log(3.0)) == pytest.approx(0.75)
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0


def test_zero_head_scores_sigmoid_of_w_log_pi_and_ranks_as_the_policy(sft_model, tmp_path):
    policy = Policy.from_pretrained(sft_model)
    prm = ResidualPRM(ProcessRewardModel.from_policy(sft_model), Policy.from_pretrained(sft_model), 0.7)
    prompts = [p for p, actions in zip(PROMPTS, ACTIONS) for _ in actions]
    responses = [a for actions in ACTIONS for a in actions]
    by_policy = policy.score_responses(PROMPTS, ACTIONS)  # full forward passes, one per sequence
    ell = [value for row in by_policy for value in row]
    assert policy.score_pairs(prompts, responses) == pytest.approx(ell, abs=1e-4)  # pairs grouped by prompt
    scores = prm.score(prompts, responses)
    assert scores == pytest.approx([1 / (1 + math.exp(-0.7 * e)) for e in ell], abs=1e-5)
    start = 0
    for row in by_policy:  # the same order of every state's actions as log pi
        mine = scores[start:start + len(row)]
        assert sorted(range(len(row)), key=lambda i: -mine[i]) == sorted(range(len(row)), key=lambda i: -row[i])
        start += len(row)

    prm.save_pretrained(tmp_path / "r", {"iteration": 1})
    card = json.loads((tmp_path / "r" / "agentprm_prm.json").read_text())
    assert card == {"iteration": 1, "kind": "residual", "policy_weight": 0.7}
    reloaded = load_prm(tmp_path / "r")
    assert isinstance(reloaded, ResidualPRM) and reloaded.policy_weight == 0.7
    assert reloaded.score(prompts, responses) == pytest.approx(scores, abs=1e-6)


def test_a_broken_folder_is_reported(sft_model, tmp_path):
    prm = ResidualPRM(ProcessRewardModel.from_policy(sft_model), Policy.from_pretrained(sft_model), 1.0)
    prm.save_pretrained(tmp_path / "r")
    import shutil

    shutil.rmtree(tmp_path / "r" / "reference")
    with pytest.raises(FileNotFoundError, match="no reference"):
        load_prm(tmp_path / "r")
    (tmp_path / "r" / "agentprm_prm.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_prm(tmp_path / "r")
    with pytest.raises(ValueError, match="not a residual PRM"):
        ResidualPRM.from_pretrained(tmp_path / "nothing")
