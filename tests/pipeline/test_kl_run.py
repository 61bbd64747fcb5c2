"""The exact KL step as the policy step of a tiny `agentprm run` (real games), and its config checks."""

import json

import pytest

from agentprm.config import ConfigError, load_config
from agentprm.metrics import read_metrics
from agentprm.pipeline.report import read_summary
from agentprm.pipeline.run_config import RunConfig
from test_run import finished_run, tiny_config  # tests/pipeline is on sys.path (no __init__.py)


@pytest.fixture(scope="module")
def kl_run(alfworld_root, tmp_path_factory):
    root, _ = alfworld_root
    config = tiny_config(root)
    config["policy_step"] = "kl"
    config["kl"] = {"beta": 0.2, "lr": 1e-3, "steps": 3, "states_per_step": 4, "log_every": 1, "monitor_every": 2}
    config["dpo"]["monitor_every"] = 0
    config["prm"] |= {"kind": "residual", "policy_weight": 0.5}  # the KL step and Best-of-N score with it
    return finished_run(config, tmp_path_factory.mktemp("kl_config"))


def test_the_kl_step_trains_pi_1_against_the_prm(kl_run):
    summary = json.loads((kl_run / "iter_1/policy/kl_summary.json").read_text())
    assert summary["steps"] == 3 and summary["states"] > 0
    assert (kl_run / "iter_1/policy/model/agentprm_kl.json").is_file()
    assert not (kl_run / "iter_1/policy/dpo_summary.json").exists()
    losses = read_metrics(kl_run / "iter_1/policy/metrics.jsonl", "kl", "loss")
    assert len(losses) == 3
    rows = read_summary(kl_run / "summary.json")["rows"]
    assert {(r["agent"], r["kind"]) for r in rows} >= {("pi_1", "policy"), ("pi_1", "bon")}
    card = json.loads((kl_run / "iter_1/prm/model/agentprm_prm.json").read_text())  # prm.kind: residual
    prm_summary = json.loads((kl_run / "iter_1/prm/prm_summary.json").read_text())
    assert card["kind"] == "residual" and card["policy_weight"] == prm_summary["policy_weight"]
    assert (kl_run / "iter_1/prm/model/reference/config.json").is_file()
    assert "KL step" in (kl_run / "report.md").read_text()
    # the monitor read the 3 seen games at steps 0, 2 and 3 and kept the best reading's weights
    monitor = summary["monitor"]
    assert [r["step"] for r in monitor["readings"]] == [0, 2, 3] and monitor["kept"] == "best"
    best = max(r["success"] for r in monitor["readings"])
    assert monitor["selected_step"] == next(r["step"] for r in monitor["readings"] if r["success"] == best)
    assert (kl_run / "plots/reward_hacking.png").exists()


def test_kl_step_config_is_checked_before_any_work():
    with pytest.raises((ValueError, ConfigError), match="admissible"):
        load_config(RunConfig, {"policy_step": "kl", "policy": {"mode": "free"}}).validate()
    with pytest.raises((ValueError, ConfigError), match="agentprm"):
        load_config(RunConfig, {"policy_step": "kl", "kl": {"q_source": "mc"}, "algorithm": "inverse_prm"}).validate()
    with pytest.raises((ValueError, ConfigError), match="beta"):
        load_config(RunConfig, {"policy_step": "kl", "kl": {"beta": 0}}).validate()


def test_the_step_budget_must_be_the_evaluation_budget():
    with pytest.raises((ValueError, ConfigError), match="step_budget"):
        load_config(RunConfig, {"prompt": {"step_budget": 20}, "eval": {"max_steps": 30}}).validate()
    load_config(RunConfig, {"prompt": {"step_budget": 30}, "eval": {"max_steps": 30}}).validate()


def test_eval_noise_pairs_agents_over_games_and_recomputes(kl_run, tmp_path):
    """benchmarks/eval_noise.py on the tiny run: per-seed rows, the paired interval over games, --recompute, and
    named runs (the same run under two names: the paired difference of an agent with itself is exactly 0)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": str(root / "src"), "PATH": ""}
    out = tmp_path / "noise.json"
    done = subprocess.run([sys.executable, "benchmarks/eval_noise.py", "--run", str(kl_run), "--agents", "pi_0,pi_1",
                           "--seeds", "1,2", "--compare", "pi_1/pi_0", "--results", str(out)],
                          cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    games = results["games"]
    assert games == len(results["game_ids"]) > 0
    assert [(r["agent"], r["seed"]) for r in results["runs"]] == [("pi_0", 1), ("pi_0", 2), ("pi_1", 1), ("pi_1", 2)]
    wins = {(r["agent"], r["seed"]): r["wins"] for r in results["runs"]}
    by_hand = sum((wins["pi_1", 1][g] + wins["pi_1", 2][g] - wins["pi_0", 1][g] - wins["pi_0", 2][g]) / 2
                  for g in range(games)) / games
    paired = results["comparisons"]["pi_1/pi_0"]["paired"]
    assert paired["difference"] == pytest.approx(by_hand) and paired["games"] == games
    assert paired["ci95"][0] <= by_hand <= paired["ci95"][1]
    pooled = results["agents"]["pi_0"]["pooled"]
    assert pooled["success"] == pytest.approx(sum(wins["pi_0", 1] + wins["pi_0", 2]) / (2 * games))

    before = out.read_text()
    done = subprocess.run([sys.executable, "benchmarks/eval_noise.py", "--recompute", str(out)], cwd=root, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == json.loads(before)
    assert "paired over" in done.stdout

    named = tmp_path / "named.json"
    done = subprocess.run([sys.executable, "benchmarks/eval_noise.py", "--run", f"a={kl_run}", "--run", f"b={kl_run}",
                           "--agents", "a.pi_0,b.pi_0", "--seeds", "1", "--compare", "b.pi_0/a.pi_0",
                           "--results", str(named)], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    same = json.loads(named.read_text())["comparisons"]["b.pi_0/a.pi_0"]["paired"]
    assert same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0]

    # Best-of-N ranked by the engine's Monte Carlo Q: N = 1 is the policy itself (same seed, nothing estimated);
    # with 4 candidates at temperature 1 it estimates Q by continuations in a second pool
    lookahead = tmp_path / "lookahead.json"
    done = subprocess.run([sys.executable, "benchmarks/eval_noise.py", "--run", str(kl_run), "--agents",
                           "pi_0,mc:0:1:2,mc:0:4:1:0:1.0", "--seeds", "1", "--results", str(lookahead),
                           "--referee", f"q0={kl_run}/iter_1/prm/model"],
                          cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = {r["agent"]: r for r in json.loads(lookahead.read_text())["runs"]}
    assert rows["mc:0:1:2"]["wins"] == rows["pi_0"]["wins"] == wins["pi_0", 1]
    assert rows["mc:0:1:2"]["q_estimates"] == 0 == rows["mc:0:1:2"]["continuations"]
    wide = rows["mc:0:4:1:0:1.0"]
    assert wide["q_estimates"] > 0 and wide["continuations"] == wide["q_estimates"] and wide["continuation_steps"] > 0
    assert set(wide["verdicts"]) == {"policy", "q0"} and wide["verdicts"]["q0"]["decisions"] > 0
    done = subprocess.run([sys.executable, "benchmarks/eval_noise.py", "--run", f"a={kl_run}", "--agents", "c.pi_0",
                           "--results", str(tmp_path / "x.json")], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "names run 'c'" in done.stderr
