"""`agentprm eval CONFIG`: every agent kind on the same real ALFWorld games, records, report, compare, show, errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from agentprm.config import ConfigError, load_config
from agentprm.data import read_trajectories
from agentprm.pipeline.eval_suite import EvalConfig, evaluate_suite
from agentprm.pipeline.report import read_summary

pytestmark = pytest.mark.slow


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "agentprm.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900, **kwargs)


@pytest.fixture(scope="module")
def prm_model(sft_model, tmp_path_factory):
    """A PRM with a random head on the SFT backbone: untrained, but its scores differ between actions."""
    from agentprm.models.prm import ProcessRewardModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("prm") / "model"
    ProcessRewardModel.from_policy(sft_model, head_init="normal").save_pretrained(out)
    return out


def suite_config(root, policy, prm) -> dict:
    return {
        "games": {"root": str(root)}, "splits": ["seen", "unseen"], "eval_games": 3, "max_steps": 12, "num_envs": 3,
        "agents": [
            {"kind": "policy", "name": "sft", "policy": str(policy), "temperature": 1.0},
            {"kind": "bon", "name": "sft", "policy": str(policy), "prm": str(prm), "prm_name": "Q_rand",
             "n": [1, 3], "temperature": 1.0},
            {"kind": "random"},
            {"kind": "expert"},
        ],
    }


@pytest.fixture(scope="module")
def evaluation(alfworld_root, sft_model, prm_model, tmp_path_factory):
    root, _ = alfworld_root
    folder = tmp_path_factory.mktemp("eval")
    config_path = folder / "eval.yaml"
    config_path.write_text(yaml.safe_dump(suite_config(root, sft_model, prm_model)))
    done = cli("eval", config_path, "--out", folder / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    return folder / "out", config_path, done.stdout


def episodes(out: Path, split: str, label: str) -> list:
    return list(read_trajectories(out / "episodes" / split / f"{label}.jsonl"))


def test_every_agent_plays_the_same_games_on_every_split(evaluation, alfworld_demos):
    out, _, stdout = evaluation
    summary = read_summary(out / "summary.json")
    got = [(r["split"], r["label"], r["kind"], r["n"]) for r in summary["rows"]]
    labels = [("sft", "policy", 1), ("BoN(sft,Q_rand,N=1)", "bon", 1), ("BoN(sft,Q_rand,N=3)", "bon", 3),
              ("random", "random", 1), ("expert", "expert", 1)]
    assert got == [(split, *label) for split in ("seen", "unseen") for label in labels]
    for split in ("seen", "unseen"):
        games = {label: [e.game_id for e in episodes(out, split, label)] for label, _, _ in labels}
        assert len({tuple(sorted(ids)) for ids in games.values()}) == 1 and len(games["sft"]) == 3
    for row in summary["rows"]:
        played = episodes(out, row["split"], row["label"])
        assert row["success"] == pytest.approx(sum(e.won for e in played) / len(played))
        assert row["mean_actions"] == pytest.approx(sum(len(e.steps) for e in played) / len(played))
    # The expert is ALFWorld's handcoded one with the same seed as the demonstrations: the same actions, cut at 12.
    demos = {d.game_id: [s.action for s in d.steps] for d in read_trajectories(alfworld_demos)}
    for episode in episodes(out, "seen", "expert"):
        assert [s.action for s in episode.steps] == demos[episode.game_id][:12]
        assert episode.won == (len(demos[episode.game_id]) <= 12)
    assert "| expert | seen |" in stdout and "| random | unseen |" in stdout


def test_best_of_n_with_one_sample_acts_exactly_as_the_policy(evaluation):
    out, _, _ = evaluation
    for split in ("seen", "unseen"):
        policy = {e.game_id: [s.action for s in e.steps] for e in episodes(out, split, "sft")}
        bon_1 = {e.game_id: [s.action for s in e.steps] for e in episodes(out, split, "BoN(sft,Q_rand,N=1)")}
        assert policy == bon_1


def test_records_keep_prompts_candidates_and_prm_scores(evaluation, sft_model):
    from transformers import AutoTokenizer

    from agentprm.models.prompts import PromptConfig, PromptState, render_prompt

    out, _, _ = evaluation
    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    scored = 0
    for episode in episodes(out, "unseen", "BoN(sft,Q_rand,N=3)"):
        for t, step in enumerate(episode.steps):
            extras = step.extras
            assert extras["prompt"] == render_prompt(PromptState.from_trajectory(episode, t), PromptConfig(), tokenizer)
            assert len(extras["candidates"]) == 3
            chosen = extras["candidates"][extras["chosen"]]
            assert chosen["action"] == step.action and chosen["response"] == step.response
            distinct = {c["action"] for c in extras["candidates"]}
            if len(distinct) > 1:  # every distinct action was scored once; the executed one has the best score
                scores = {c["action"]: c["score"] for c in extras["candidates"]}
                assert all(0.0 < s < 1.0 for s in scores.values())
                assert chosen["score"] == max(scores.values())
                scored += 1
    assert scored > 0
    for step in episodes(out, "seen", "sft")[0].steps:
        assert "prompt" in step.extras and step.extras["logprob"] <= 0.0
    for step in episodes(out, "seen", "random")[0].steps:
        assert step.response == step.action and set(step.extras) == {"state_id"}  # ALFWorld's true state only


def test_report_plots_and_rebuild_from_the_folder(evaluation):
    out, _, _ = evaluation
    report = (out / "report.md").read_text()
    assert "| Agent | Split | Success % (95% CI)" in report and "BoN(sft, Q_rand), N=3" in report
    for plot in ("best_of_n.png", "task_types.png", "calibration.png"):
        assert (out / "plots" / plot).is_file(), plot
    assert not (out / "plots" / "success_per_iteration.png").exists()  # no row is an iteration of a run
    before = (out / "summary.json").read_text()
    (out / "summary.json").unlink()
    (out / "report.md").unlink()
    done = cli("report", out)
    assert done.returncode == 0, done.stderr
    assert (out / "summary.json").read_text() == before and (out / "report.md").is_file()


def test_rerun_resumes_only_the_missing_rows(evaluation):
    out, config_path, _ = evaluation
    row = out / "rows" / "unseen" / "random.json"
    kept = row.read_text()
    row.unlink()
    done = cli("eval", config_path, "--out", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("[skip]") == 9 and "unseen/random: success" in done.stdout
    new, old = json.loads(row.read_text()), json.loads(kept)
    for timed in (new, old):
        del timed["seconds"], timed["agent_steps_per_s"]
    assert new == old  # the same seed replays the same episodes


def test_worker_processes_give_the_same_episodes(evaluation, alfworld_root, sft_model, prm_model, tmp_path):
    out, _, _ = evaluation
    root, _ = alfworld_root
    config = suite_config(root, sft_model, prm_model)
    config.update(splits=["unseen"], workers=2, agents=[config["agents"][0], *config["agents"][2:]])
    evaluate_suite(load_config(EvalConfig, config), tmp_path / "out", log=lambda _: None)
    for label in ("sft", "random", "expert"):
        here = {e.game_id: [(s.action, s.observation) for s in e.steps] for e in episodes(out, "unseen", label)}
        there = {e.game_id: [(s.action, s.observation) for s in e.steps]
                 for e in episodes(tmp_path / "out", "unseen", label)}
        assert here == there, label


def test_compare_and_show(evaluation, tmp_path):
    out, _, _ = evaluation
    other = tmp_path / "other"
    other.mkdir()
    summary = json.loads((out / "summary.json").read_text())
    summary["rows"] = [r for r in summary["rows"] if r["kind"] == "expert"]
    (other / "summary.json").write_text(json.dumps(summary))
    done = cli("compare", out, other)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"| Split | Agent | {out} | {other} |"
    expert = next(r for r in summary["rows"] if r["split"] == "unseen")
    cell = f"{100 * expert['success']:.1f} ({100 * expert['ci95'][0]:.1f}–{100 * expert['ci95'][1]:.1f})"
    assert f"| unseen | expert | {cell} | {cell} |" in lines
    assert "| seen | random |" in done.stdout and done.stdout.count("| – |") == 8

    records = out / "episodes" / "unseen" / "BoN(sft,Q_rand,N=3).jsonl"
    first = next(iter(read_trajectories(records)))
    shown = cli("show", f"{records}:0")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0].startswith(first.game_id)
    assert "candidates (N=3): PRM score, samples, log pi" in shown.stdout
    assert f"-> {first.steps[0].action}" in shown.stdout
    by_game = cli("show", records, "--game", first.game_id, "--prompts")
    assert by_game.returncode == 0 and "| ACTION:" in by_game.stdout
    missing = cli("show", records, "--game", "no-such-game")
    assert missing.returncode == 2 and "no episode of game 'no-such-game'" in missing.stderr


def test_bad_agents_fail_before_any_game_is_played(alfworld_root, sft_model, prm_model, tmp_path):
    root, _ = alfworld_root
    config = suite_config(root, sft_model, prm_model)
    config["agents"][1]["prm"] = str(tmp_path / "no-prm")
    with pytest.raises(ConfigError, match=r"agents\[1\]\.prm: model path .*no-prm.* does not exist"):
        evaluate_suite(load_config(EvalConfig, config), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    config["agents"] = [{"kind": "bon", "policy": "pi_1", "prm": "Q_0"}]
    with pytest.raises(ConfigError, match=r"agents\[0\]\.policy: 'pi_1' names a checkpoint of a run"):
        evaluate_suite(load_config(EvalConfig, config), tmp_path / "out")
    config["agents"] = [{"kind": "random"}, {"kind": "random"}]
    with pytest.raises(ConfigError, match=r"two agents give the same row \['random'\]"):
        load_config(EvalConfig, config)
    config["agents"] = [{"kind": "api", "api": {"base_url": "localhost:8000"}}]
    with pytest.raises(ConfigError, match=r"agents\[0\]\.api\.base_url must start with http"):
        load_config(EvalConfig, config)


def test_an_unreachable_endpoint_fails_after_bounded_retries(alfworld_root, tmp_path):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root, _ = alfworld_root
    config = tmp_path / "api.yaml"
    config.write_text(yaml.safe_dump({"games": {"root": str(root)}, "agents": [{"kind": "api", "api": {
        "base_url": f"http://127.0.0.1:{port}/v1", "model": "m", "max_retries": 2, "backoff": 0.05,
        "timeout": 2}}]}))
    done = cli("eval", config, "--out", tmp_path / "out")
    assert done.returncode == 2
    assert f"http://127.0.0.1:{port}/v1/models unreachable after 3 attempts" in done.stderr
    assert not (tmp_path / "out").exists()


def test_folders_of_an_incompatible_version_are_refused(evaluation, tmp_path):
    out, _, _ = evaluation
    newer = tmp_path / "newer"
    newer.mkdir()
    for name in ("eval.yaml", "summary.json"):
        (newer / name).write_text((out / name).read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == 1
    (newer / "manifest.json").write_text(json.dumps({**manifest, "format": 2}))
    for command in (("report", newer), ("compare", out, newer)):
        done = cli(*command)
        assert done.returncode == 2 and "in folder format 2; this agentprm reads format 1" in done.stderr, command
    old = tmp_path / "old"
    old.mkdir()
    summary = json.loads((out / "summary.json").read_text())
    (old / "summary.json").write_text(json.dumps({**summary, "schema_version": 0}))
    done = cli("compare", old)
    assert done.returncode == 2 and "incompatible agentprm version (schema_version 0" in done.stderr


def test_an_api_model_behind_a_real_server_plays_with_the_papers_prompt(alfworld_root, chat_server, tmp_path):
    from agentprm.models.parser import parse_response
    from agentprm.models.prompts import PromptConfig, PromptState, render_plain

    root, _ = alfworld_root
    base_url, model = chat_server
    config = {"games": {"root": str(root)}, "eval_games": 2, "max_steps": 2, "num_envs": 2, "agents": [
        {"kind": "api", "name": "smollm2", "api": {"base_url": base_url, "model": model, "max_tokens": 40,
                                                   "concurrency": 2, "price_input_per_mtok": 1.0,
                                                   # the server runs one request at a time; on a loaded 2-core
                                                   # machine the queued one waited past the 60 s default
                                                   "timeout": 600}}]}
    summary = evaluate_suite(load_config(EvalConfig, config), tmp_path / "out", log=lambda _: None)
    (row,) = summary["rows"]
    assert (row["agent"], row["kind"], row["n"], row["prm"], row["episodes"]) == ("smollm2", "api", 1, None, 2)
    played = episodes(tmp_path / "out", "unseen", "smollm2")
    steps = sum(len(e.steps) for e in played)
    usage = row["usage"]
    assert usage["requests"] == steps and usage["retries"] == 0
    assert usage["prompt_tokens"] == sum(s.extras["prompt_tokens"] for e in played for s in e.steps) > 100 * steps
    assert usage["cost"] == pytest.approx(usage["prompt_tokens"] / 1e6)
    paper_prompt = PromptConfig(template="reason_action")
    for episode in played:
        for t, step in enumerate(episode.steps):
            state = PromptState.from_trajectory(episode, t)
            assert step.extras["prompt"] == render_plain(state, paper_prompt).removesuffix("\n")
            parsed = parse_response(step.response, state.admissible_actions, "reason_action")
            assert step.action == parsed.action and step.extras["parsable"] == parsed.parsable
    assert "## API usage" in (tmp_path / "out" / "report.md").read_text()


def test_an_eval_folder_from_an_older_version_resumes_while_new_keys_are_at_their_defaults(tmp_path):
    """Its eval config lacks the keys added since: the same evaluation while they are at their defaults, refused
    (naming the key, rewriting nothing) once one is set."""
    from agentprm.config import to_dict
    from agentprm.pipeline.eval_suite import EVAL_CONFIG, write_eval_config

    config = load_config(EvalConfig, {"games": {"root": "g"}, "agents": [{"kind": "random"}]})
    old = to_dict(config)
    del old["ray"], old["calibration_bins"]
    (tmp_path / EVAL_CONFIG).write_text(yaml.safe_dump(old, sort_keys=True))
    write_eval_config(config, tmp_path)
    assert yaml.safe_load((tmp_path / EVAL_CONFIG).read_text()) == to_dict(config)

    (tmp_path / EVAL_CONFIG).write_text(yaml.safe_dump(old, sort_keys=True))
    changed = load_config(EvalConfig, {"games": {"root": "g"}, "agents": [{"kind": "random"}], "calibration_bins": 5})
    with pytest.raises(ConfigError, match=r"changed: calibration_bins \(new key\)"):
        write_eval_config(changed, tmp_path)
    assert yaml.safe_load((tmp_path / EVAL_CONFIG).read_text()) == old
