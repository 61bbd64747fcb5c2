"""PRM training: losses, pair selection and validation metrics against hand-computed numbers; a tiny real run."""

import copy
import json
import math
import random

import pytest
import torch

from agentprm.algorithms.mc_targets import mc_q_targets, state_from_target
from agentprm.algorithms.prm_training import (
    PRMTrainConfig,
    PRMTrainError,
    auc,
    bradley_terry_loss,
    calibration_bins,
    listwise_loss,
    early_step_auc,
    early_step_scores,
    expected_calibration_error,
    prm_validation_report,
    same_state_ranking,
    select_bt_pairs,
    soft_bce_listwise_loss,
    soft_bce_loss,
    state_groups,
    train_prm,
    validation_bce,
)
from agentprm.config import ConfigError, load_config
from agentprm.data import StepRecord, TrajectoryRecord, read_trajectories
from agentprm.metrics import read_metrics
from agentprm.models.prompts import PromptConfig, render_prompt

LN2, LN3 = math.log(2.0), math.log(3.0)


def episode(game: str, actions: list[str], won: bool, observations: list[str] | None = None) -> TrajectoryRecord:
    observations = observations or [f"o{i}" for i in range(len(actions))]
    steps = [StepRecord(observation=obs, admissible_actions=[action], response=action, reason="", action=action,
                        admissible=True, reward=0.0, done=False, won=False)
             for obs, action in zip(observations, actions)]
    return TrajectoryRecord(env="alfworld", env_version="test", game_id=game, split="train", task="t",
                            task_type="pick_and_place_simple", policy_id="pi", seed=0, steps=steps, won=won,
                            total_reward=float(won), final_observation="")


# -- losses ----------------------------------------------------------------------------------------------------------


def test_soft_bce_by_hand_and_stable_at_large_logits():
    loss = soft_bce_loss(torch.tensor([0.0, LN3]), torch.tensor([0.5, 1.0]))  # sigmoid(ln 3) = 3/4
    assert loss.item() == pytest.approx((LN2 - math.log(0.75)) / 2, rel=1e-6)
    soft = soft_bce_loss(torch.tensor([LN3]), torch.tensor([0.25]))
    assert soft.item() == pytest.approx(-(0.25 * math.log(0.75) + 0.75 * math.log(0.25)), rel=1e-6)
    extreme = soft_bce_loss(torch.tensor([100.0, -100.0]), torch.tensor([1.0, 1.0]))
    assert extreme.item() == pytest.approx(50.0, rel=1e-6)  # (0 + 100) / 2, no inf or nan
    logits = torch.tensor([0.3], requires_grad=True)
    soft_bce_loss(logits, torch.tensor([0.8])).backward()
    assert logits.grad.item() == pytest.approx(torch.sigmoid(torch.tensor(0.3)).item() - 0.8, rel=1e-6)


def test_bradley_terry_by_hand():
    loss = bradley_terry_loss(torch.tensor([LN3, 1.0]), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx((-math.log(0.75) + LN2) / 2, rel=1e-6)
    assert bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([0.0])).item() == pytest.approx(200.0)


def test_bt_pairs_are_ordered_same_state_and_above_delta():
    records = [episode("g", ["a0"], True), episode("g", ["b0"], False), episode("g", ["c0"], True),
               episode("g", ["c0"], False), episode("g", ["d0", "x"], True), episode("h", ["e0"], False)]
    targets = mc_q_targets(records, gamma=0.99, val_fraction=0.0)
    assert [(t.action, t.q) for t in targets] == [("a0", 1.0), ("b0", 0.0), ("c0", 0.5), ("d0", 0.99), ("x", 1.0),
                                                  ("e0", 0.0)]
    assert select_bt_pairs(targets, 0.03) == [(0, 1), (0, 2), (2, 1), (3, 1), (3, 2)]  # x and e0: other states
    assert (0, 3) in select_bt_pairs(targets, 0.005)
    assert select_bt_pairs(targets, 0.6) == [(0, 1), (3, 1)]


def test_listwise_loss_by_hand():
    def loss(z, q, groups, tau):
        return listwise_loss(torch.tensor(z), torch.tensor(q), groups, tau).item()

    # p_hat = softmax(1, 0) but log softmax(0, 0) = -ln 2 for both actions: ln 2 whatever p_hat
    assert loss([0.0, 0.0], [1.0, 0.0], [[0, 1]], 1.0) == pytest.approx(LN2, rel=1e-6)
    # q / tau = (ln 3, 0): p_hat = (3/4, 1/4); z = (ln 3, 0): softmax (3/4, 1/4): the entropy H(3/4)
    assert loss([LN3, 0.0], [1.0, 0.0], [[0, 1]], 1 / LN3) == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rel=1e-6)
    # tau -> 0: p_hat one-hot on the best action; singletons take no part; mean over the groups
    assert loss([LN3, 0.0], [1.0, 0.9], [[0, 1]], 1e-3) == pytest.approx(-math.log(0.75), rel=1e-6)
    three = loss([0.0, 0.0, 7.0, 0.0, 0.0, LN2], [1.0, 0.0, 0.3, 0.5, 0.5, 0.5], [[0, 1], [2], [3, 4, 5]], 1.0)
    assert three == pytest.approx((LN2 + (2 * math.log(4) + LN2) / 3) / 2, rel=1e-6)  # softmax (1/4, 1/4, 1/2)
    assert loss([3.0, -1.0], [1.0, 0.0], [[0], [1]], 0.1) == 0.0
    # d/dz = softmax(z) - p_hat
    logits = torch.zeros(2, requires_grad=True)
    listwise_loss(logits, torch.tensor([1.0, 0.0]), [[0, 1]], 1.0).backward()
    e = math.e
    assert logits.grad.tolist() == pytest.approx([0.5 - e / (1 + e), 0.5 - 1 / (1 + e)], rel=1e-6)
    combined = soft_bce_listwise_loss(torch.zeros(3), torch.tensor([1.0, 0.0, 0.5]), [[0, 1], [2]], 0.5, 1.0)
    assert combined.item() == pytest.approx(LN2 + 0.5 * LN2, rel=1e-6)  # BCE at z = 0 is ln 2 for any q


def located(game: str, visits: list[tuple[str, str, str]], won: bool) -> TrajectoryRecord:
    """An episode of (observation, action, state id) steps, the ids as ALFWorld records them."""
    record = episode(game, [action for _, action, _ in visits], won, [obs for obs, _, _ in visits])
    for step, (_, _, state_id) in zip(record.steps, visits):
        step.extras["state_id"] = state_id
    return record


def test_pairs_groups_and_ranking_follow_the_true_state():
    # Two paths reach the world state "sy" (with other text) and take different actions there.
    records = [located("g", [("start", "go to x", "s0"), ("at x", "go to y", "sx"), ("at y", "take", "sy")], True),
               located("g", [("start", "go to y", "s0"), ("at y, directly", "drop", "sy")], False)]
    by_prefix = mc_q_targets(records, gamma=0.9, val_fraction=0.0, key="prefix")
    pooled = mc_q_targets(records, gamma=0.9, val_fraction=0.0, key="state")
    for targets in (by_prefix, pooled):  # the same five (state, action) visits, q by hand
        assert [(t.action, t.q) for t in targets] == [("go to x", pytest.approx(0.81)), ("go to y", 0.9),
                                                      ("take", 1.0), ("go to y", 0.0), ("drop", 0.0)]
    assert state_groups(by_prefix) == [[0, 3], [1], [2], [4]] and select_bt_pairs(by_prefix, 0.03) == [(0, 3)]
    assert state_groups(pooled) == [[0, 3], [1], [2, 4]] and select_bt_pairs(pooled, 0.03) == [(0, 3), (2, 4)]
    scores = [0.6, 0.5, 0.9, 0.6, 0.2]  # (0, 3) a tie, (2, 4) right
    assert same_state_ranking(pooled, scores) == {"states": 3, "multi_action_states": 2, "pairs": 2,
                                                  "pair_accuracy": 0.75}
    assert same_state_ranking(by_prefix, scores) == {"states": 4, "multi_action_states": 1, "pairs": 1,
                                                     "pair_accuracy": 0.5}


# -- validation metrics ----------------------------------------------------------------------------------------------


def test_validation_bce_by_hand():
    assert validation_bce([0.5, 0.75], [0.5, 1.0]) == pytest.approx((LN2 - math.log(0.75)) / 2)
    assert validation_bce([0.0], [1.0]) == pytest.approx(-math.log(1e-7))  # clipped, finite
    assert math.isnan(validation_bce([], []))


def test_auc_mann_whitney_with_ties():
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auc([0.2, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx(3.5 / 4)  # the tie counts 1/2
    assert auc([0.5, 0.5], [True, False]) == 0.5
    assert auc([0.9, 0.1], [False, True]) == 0.0
    assert math.isnan(auc([0.1, 0.2], [1, 1]))
    rng = random.Random(0)
    scores = [rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(40)]
    labels = [rng.random() < 0.5 for _ in range(40)]
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    brute = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))
    assert auc(scores, labels) == pytest.approx(brute)


def test_early_step_auc_is_per_episode():
    records = [episode("g1", ["a0", "a1", "a2", "a3"], True), episode("g1", ["a0", "b1", "b2"], False),
               episode("g2", ["c0", "c1"], False)]
    targets = mc_q_targets(records, gamma=0.9, val_fraction=0.0)
    by_action = {"a0": 0.6, "a1": 0.8, "b1": 0.2, "c0": 0.5, "c1": 0.95, "a2": 0.0, "a3": 0.0, "b2": 1.0}
    scores = [by_action[t.action] for t in targets]
    episode_scores, won = early_step_scores(targets, scores, first_steps=2)
    assert episode_scores == pytest.approx([0.7, 0.4, 0.725]) and won == [True, False, False]
    assert early_step_auc(targets, scores, first_steps=2) == pytest.approx(0.5)
    assert early_step_auc(targets, scores, first_steps=1) == pytest.approx(0.75)  # 0.6 vs (0.6, 0.5)


def test_calibration_bins_and_ece_by_hand():
    scores, q = [0.05, 0.15, 0.12, 1.0, 0.95], [0.0, 0.5, 0.1, 1.0, 0.0]
    rows = calibration_bins(scores, q, bins=4)
    assert [(r["lo"], r["hi"], r["count"]) for r in rows] == [(0, 0.25, 3), (0.25, 0.5, 0), (0.5, 0.75, 0),
                                                              (0.75, 1.0, 2)]
    assert rows[0]["mean_pred"] == pytest.approx(0.32 / 3) and rows[0]["mean_target"] == pytest.approx(0.2)
    assert rows[1]["mean_pred"] is None and rows[3]["mean_target"] == pytest.approx(0.5)
    expected = 0.6 * abs(0.32 / 3 - 0.2) + 0.4 * abs(0.975 - 0.5)
    assert expected_calibration_error(scores, q, bins=4) == pytest.approx(expected)
    assert math.isnan(expected_calibration_error([], []))


def test_report_is_json_ready():
    records = [episode("g", ["a0", "a1"], True), episode("g", ["b0"], False)]
    targets = mc_q_targets(records, gamma=0.5, val_fraction=0.0)
    report = prm_validation_report(targets, [0.4, 0.9, 0.1], bins=2, first_steps=1)
    assert report["num_targets"] == 3 and report["num_episodes"] == 2 and report["early_step_auc"] == 1.0
    assert report["bce"] == pytest.approx(validation_bce([0.4, 0.9, 0.1], [0.5, 1.0, 0.0]))
    assert [r["count"] for r in report["calibration"]] == [2, 1]
    json.dumps(report, allow_nan=False)
    single = prm_validation_report(targets[:2], [0.4, 0.9], first_steps=1)
    assert single["early_step_auc"] is None and single["step_auc"] is None


def test_config_is_validated():
    assert load_config(PRMTrainConfig, {}).loss == "soft_bce"
    with pytest.raises(ConfigError, match="loss"):
        load_config(PRMTrainConfig, {"loss": "hinge"})
    with pytest.raises(ConfigError, match="bt_delta"):
        load_config(PRMTrainConfig, {"bt_delta": 0.0})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(PRMTrainConfig, {"learning_rate": 1e-3})
    assert load_config(PRMTrainConfig, {"loss": "soft_bce+listwise"}).list_temperature == 0.1
    with pytest.raises(ConfigError, match="within_weight"):
        load_config(PRMTrainConfig, {"within_weight": -0.1})
    with pytest.raises(ConfigError, match="list_temperature"):
        load_config(PRMTrainConfig, {"list_temperature": 0.0})


# -- a tiny real run -------------------------------------------------------------------------------------------------


def demo_targets(demos_path, val_fraction=0.3, key="prefix"):
    """Expert episodes (won) plus, per game, failed branches that take a wrong action and stop (q = 0 there)."""
    records = list(read_trajectories(demos_path))
    failures = []
    for record in records:
        for cut in (1, len(record.steps) // 2):
            failed = copy.deepcopy(record)
            failed.steps = failed.steps[: cut + 1]
            last = failed.steps[-1]
            last.action = last.response = next(a for a in last.admissible_actions if a != last.action)
            failed.won, failed.total_reward = False, 0.0
            failures.append(failed)
    return mc_q_targets(records + failures, gamma=0.9, val_fraction=val_fraction, key=key)


def test_over_long_sequences_drop_the_oldest_history_steps_not_the_task(long_episode):
    from agentprm.algorithms.prm_training import encode_sequences
    from agentprm.models.policy import encode_prompts, encode_responses
    from agentprm.models.prompts import PromptState, render_prompt_within

    record, config, max_length, tokenizer = long_episode
    state, response = PromptState.from_trajectory(record, 60), record.steps[60].response
    [sequence] = encode_sequences([state], [response], tokenizer, config, max_length)
    response_ids = encode_responses(tokenizer, [response])[0]
    prompt_ids = encode_prompts(tokenizer, [render_prompt_within(state, config, tokenizer,
                                                                  max_length - len(response_ids))])[0]
    assert sequence == prompt_ids + response_ids and len(sequence) <= max_length
    text = tokenizer.decode(sequence)
    assert text.startswith("<|bos|>user\nYou are an agent playing a text-based game.\nTask: put a clean mug in ")
    assert "a mug 0," not in text and "a mug 59," in text and text.endswith("ACTION: go to cabinet 61<|eos|>")
    with pytest.raises(PRMTrainError, match="no room"):
        encode_sequences([state], [response], tokenizer, config, len(response_ids) + 1)


def test_prm_trains_validates_saves_and_reloads(sft_model, alfworld_demos, tmp_path):
    from agentprm.models.prm import ProcessRewardModel

    targets = demo_targets(alfworld_demos)
    val_games = {t.game_id for t in targets if t.split == "val"}
    assert 0 < len(val_games) < len({t.game_id for t in targets})
    assert any(t.q == 0 for t in targets) and any(t.q > 0.5 for t in targets)
    prompt_config = PromptConfig(use_chat_template="never")
    config = load_config(PRMTrainConfig, {"lr": 2e-3, "max_steps": 12, "batch_size": 8, "warmup_steps": 2,
                                          "eval_every": 6, "progress": False})
    summary = train_prm(config, targets, sft_model, tmp_path / "prm", prompt_config, iteration=1)

    # The zero-initialised head scores 0.5 everywhere, so the first loss is exactly ln 2 whatever the targets.
    losses = [m["value"] for m in read_metrics(tmp_path / "prm" / "metrics.jsonl", "prm", "loss")]
    assert len(losses) == 12 and losses[0] == pytest.approx(LN2, rel=1e-6)
    assert sum(losses[-6:]) / 6 < LN2 - 0.02 and summary["train_bce"] < LN2 - 0.02
    assert len(read_metrics(tmp_path / "prm" / "metrics.jsonl", "prm", "val_bce")) == 2
    assert read_metrics(tmp_path / "prm" / "metrics.jsonl", "prm", "lr")[0]["iter"] == 1
    report = json.loads((tmp_path / "prm" / "validation.json").read_text())
    assert math.isfinite(report["bce"]) and math.isfinite(report["early_step_auc"]) and math.isfinite(report["ece"])
    assert report["num_games"] == len(val_games) and len(report["calibration"]) == 10
    assert summary["steps"] == 12 and summary["first_loss"] == pytest.approx(LN2, rel=1e-6)

    predictions = [json.loads(line) for line in (tmp_path / "prm" / "val_predictions.jsonl").read_text().splitlines()]
    val = [t for t in targets if t.split == "val"]
    assert [p["key"] for p in predictions] == [t.key for t in val]
    reloaded = ProcessRewardModel.from_pretrained(tmp_path / "prm" / "model")
    prompts = [render_prompt(state_from_target(t), prompt_config, reloaded.tokenizer) for t in val]
    scores = reloaded.score(prompts, [t.response for t in val])
    assert scores == pytest.approx([p["score"] for p in predictions], abs=1e-5)
    assert len(set(round(s, 4) for s in scores)) > 1  # the head learned something input-dependent


def test_bradley_terry_run_and_bad_inputs(sft_model, alfworld_demos, tmp_path):
    targets = demo_targets(alfworld_demos)
    games = sorted({t.game_id for t in targets if t.split == "train"})[:2] + [next(t.game_id for t in targets
                                                                                if t.split == "val")]
    targets = [t for t in targets if t.game_id in games]
    config = load_config(PRMTrainConfig, {"loss": "bradley_terry", "lr": 1e-3, "max_steps": 2, "batch_size": 2,
                                          "warmup_steps": 0, "init": "scratch", "progress": False})
    summary = train_prm(config, targets, sft_model, tmp_path / "bt", PromptConfig(use_chat_template="never"))
    assert summary["train_items"] > 0 and math.isfinite(summary["final_loss"])
    assert (tmp_path / "bt" / "model" / "agentprm_prm.json").is_file()
    with pytest.raises(PRMTrainError, match="no training"):
        train_prm(config, [t for t in targets if t.split == "val"], sft_model, tmp_path / "x", PromptConfig())
    with pytest.raises(PRMTrainError, match="does not exist"):
        train_prm(load_config(PRMTrainConfig, {"progress": False}), targets, tmp_path / "missing", tmp_path / "x",
                  PromptConfig())


def test_same_state_ranking_by_hand():
    records = [episode("g", ["a0"], True), episode("g", ["b0"], False), episode("g", ["c0"], True),
               episode("g", ["c0"], False), episode("g", ["d0", "x"], True), episode("h", ["e0"], False)]
    targets = mc_q_targets(records, gamma=0.99, val_fraction=0.0)
    # q: a0 1.0, b0 0.0, c0 0.5, d0 0.99, x 1.0, e0 0.0; pairs (0,1) (0,2) (2,1) (3,1) (3,2) as in the BT test
    scores = [0.9, 0.2, 0.2, 0.1, 0.5, 0.3]  # (0,1) right, (0,2) right, (2,1) tie, (3,1) wrong, (3,2) wrong
    found = same_state_ranking(targets, scores)
    assert found == {"states": 3, "multi_action_states": 1, "pairs": 5, "pair_accuracy": pytest.approx(2.5 / 5)}
    assert math.isnan(same_state_ranking(targets[4:], scores[4:])["pair_accuracy"])
    report = prm_validation_report(targets, scores)
    assert report["same_state_pairs"] == 5 and report["same_state_pair_accuracy"] == pytest.approx(0.5)


def test_listwise_run_on_true_state_targets(sft_model, alfworld_demos, tmp_path):
    """soft_bce+listwise on targets pooled by ALFWorld's recorded state ids; batches are states."""
    from agentprm.models.prm import ProcessRewardModel

    records = list(read_trajectories(alfworld_demos))
    assert all(step.extras["state_id"] for record in records for step in record.steps)  # episode_record kept them
    targets = [t for t in demo_targets(alfworld_demos, key="state") if t.split == "train"]
    games = sorted({t.game_id for t in targets})[:3]
    targets = [t for t in targets if t.game_id in games]
    train_groups = state_groups(targets)
    multi = [len(g) for g in train_groups if len(g) > 1]
    assert multi  # the failed branches add a second action at a state of the expert's path
    config = load_config(PRMTrainConfig, {"loss": "soft_bce+listwise", "within_weight": 0.5, "lr": 2e-3,
                                          "max_steps": 3, "batch_size": 10_000, "warmup_steps": 0,
                                          "progress": False})
    summary = train_prm(config, targets, sft_model, tmp_path / "list", PromptConfig(use_chat_template="never"))
    losses = [m["value"] for m in read_metrics(tmp_path / "list" / "metrics.jsonl", "prm", "loss")]
    # one micro-batch holds every state; the zero head gives BCE ln 2 and ln(n) per state of n actions
    assert losses[0] == pytest.approx(LN2 + 0.5 * sum(math.log(n) for n in multi) / len(multi), rel=1e-5)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert summary["train_items"] == len(train_groups) and summary["train_multi_action_states"] == len(multi)
    reloaded = ProcessRewardModel.from_pretrained(tmp_path / "list" / "model")
    state = state_from_target(targets[0])
    prompt = render_prompt(state, PromptConfig(use_chat_template="never"), reloaded.tokenizer)
    assert 0.0 < reloaded.score([prompt], [targets[0].response])[0] < 1.0
    card = json.loads((tmp_path / "list" / "model" / "agentprm_prm.json").read_text())
    assert card["config"]["loss"] == "soft_bce+listwise" and card["config"]["within_weight"] == 0.5


def test_residual_config_is_validated():
    assert load_config(PRMTrainConfig, {"kind": "residual"}).policy_weight == 1.0
    with pytest.raises(ConfigError, match="policy_weight"):
        load_config(PRMTrainConfig, {"kind": "residual", "policy_weight": 0.0})
    with pytest.raises(ConfigError, match="init: policy"):
        load_config(PRMTrainConfig, {"kind": "residual", "init": "scratch"})


def test_residual_run_starts_at_the_policy_and_reloads(sft_model, alfworld_demos, tmp_path):
    """kind: residual: the zero head's first loss is the soft BCE of w0 * log pi_ref by hand; w is learnt, saved in
    the card, and the reloaded PRM scores the validation targets as the trainer did."""
    from agentprm.models.implicit_prm import load_prm
    from agentprm.models.policy import Policy
    from agentprm.models.residual_prm import ResidualPRM

    targets = demo_targets(alfworld_demos)
    prompt_config = PromptConfig(use_chat_template="never")
    config = load_config(PRMTrainConfig, {"kind": "residual", "policy_weight": 0.5, "lr": 2e-3, "max_steps": 4,
                                          "batch_size": 10_000, "warmup_steps": 0, "progress": False})
    summary = train_prm(config, targets, sft_model, tmp_path / "res", prompt_config)

    policy = Policy.from_pretrained(sft_model)
    train = [t for t in targets if t.split == "train"]
    prompts = [render_prompt(state_from_target(t), prompt_config, policy.tokenizer) for t in train]
    ell = [row[0] for row in policy.score_responses(prompts, [[t.response] for t in train])]  # full forward passes
    by_hand = -sum(t.q * math.log(1 / (1 + math.exp(-0.5 * e))) + (1 - t.q) * math.log(1 - 1 / (1 + math.exp(-0.5 * e)))
                   for t, e in zip(train, ell)) / len(train)
    losses = [m["value"] for m in read_metrics(tmp_path / "res" / "metrics.jsonl", "prm", "loss")]
    assert losses[0] == pytest.approx(by_hand, rel=1e-4)
    assert summary["kind"] == "residual" and summary["policy_weight_init"] == 0.5
    assert summary["policy_weight"] != 0.5 and losses[-1] < losses[0]  # w moved, the loss fell

    folder = tmp_path / "res" / "model"
    card = json.loads((folder / "agentprm_prm.json").read_text())
    assert card["kind"] == "residual" and card["policy_weight"] == pytest.approx(summary["policy_weight"])
    assert card["config"]["kind"] == "residual" and (folder / "reference" / "config.json").is_file()
    reloaded = load_prm(folder)
    assert isinstance(reloaded, ResidualPRM)
    val = [t for t in targets if t.split == "val"]
    predictions = [json.loads(line) for line in (tmp_path / "res" / "val_predictions.jsonl").read_text().splitlines()]
    scores = reloaded.score([render_prompt(state_from_target(t), prompt_config, reloaded.tokenizer) for t in val],
                            [t.response for t in val])
    assert scores == pytest.approx([p["score"] for p in predictions], abs=1e-5)
