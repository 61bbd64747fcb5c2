"""benchmarks/eval_noise.py's agent and run arguments."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("eval_noise", ROOT / "benchmarks" / "eval_noise.py")
eval_noise = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eval_noise)


def test_agents_parse():
    assert eval_noise.parse_agent("pi_3") == (3, None, 1, None)
    assert eval_noise.parse_agent("bon:3:2:16") == (3, 2, 16, None)
    assert eval_noise.parse_agent("bon:1:0:8:0.3") == (1, 0, 8, 0.3)
    for bad in ("bon:1:0", "best:1:0:8", "bon:1:0:8:0.3:1"):
        with pytest.raises(ValueError, match="expected pi_I"):
            eval_noise.parse_agent(bad)


def test_lookahead_agents_parse():
    assert eval_noise.parse_lookahead("mc:0:16:4") == (0, 16, 4, 0.0, None, False)
    assert eval_noise.parse_lookahead("mc:1:8:2:0.1") == (1, 8, 2, 0.1, None, False)
    assert eval_noise.parse_lookahead("mc:1:8:2:0:1.0") == (1, 8, 2, 0.0, 1.0, False)
    assert eval_noise.parse_lookahead("mcobs:0:16:4:0:1.0") == (0, 16, 4, 0.0, 1.0, True)
    assert eval_noise.parse_lookahead("bon:1:0:8") is None and eval_noise.parse_lookahead("pi_0") is None
    for bad in ("mc:1:8", "mc:1:8:2:0:1:9"):
        with pytest.raises(ValueError, match="expected mc:I:N:M"):
            eval_noise.parse_lookahead(bad)


def test_run_names_are_split_from_agents_with_dotted_weights():
    assert eval_noise.split_agent("w6.pi_1") == ("w6", "pi_1")
    assert eval_noise.split_agent("bon:1:0:8:0.3") == ("", "bon:1:0:8:0.3")
    assert eval_noise.split_agent("a.mc:0:16:4:0:1.0") == ("a", "mc:0:16:4:0:1.0")
    assert eval_noise.split_agent("pi_0") == ("", "pi_0")


def test_runs_parse():
    assert eval_noise.parse_run("/tmp/a") == ("", Path("/tmp/a"))
    assert eval_noise.parse_run("w6=/tmp/a=b") == ("w6", Path("/tmp/a=b"))  # the first '=' ends the name
    assert eval_noise.parse_run("w6=/tmp/a") == ("w6", Path("/tmp/a"))
    with pytest.raises(SystemExit, match="may not contain"):
        eval_noise.parse_run("a.b=/tmp/a")


def test_recompute_merges_files_on_the_same_games(tmp_path):
    """--recompute --merge: runs of another file join; the paired difference is then computed by hand."""
    import json
    import subprocess
    import sys

    base = {"game_ids": ["g0", "g1", "g2", "g3"], "max_steps": 30, "runs": [
        {"agent": "a.pi_0", "seed": 1, "success": 0.25, "wins": [True, False, False, False]},
        {"agent": "a.pi_0", "seed": 2, "success": 0.5, "wins": [True, True, False, False]}]}
    other = {"game_ids": base["game_ids"], "max_steps": 30, "runs": [
        {"agent": "b.pi_0", "seed": 1, "success": 0.75, "wins": [True, True, True, False]}]}
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(base))
    second.write_text(json.dumps(other))
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": ""}
    done = subprocess.run([sys.executable, "benchmarks/eval_noise.py", "--recompute", str(first), "--merge",
                           str(second), "--compare", "b.pi_0/a.pi_0"], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    merged = json.loads(first.read_text())
    # a per game: 1, .5, 0, 0; b: 1, 1, 1, 0 -> d = 0, .5, 1, 0 -> mean .375
    assert merged["comparisons"]["b.pi_0/a.pi_0"]["paired"]["difference"] == pytest.approx(0.375)
    assert merged["merged"] == [str(second)] and len(merged["runs"]) == 3
    other["game_ids"] = ["g0", "g1", "g2", "x"]
    second.write_text(json.dumps(other))
    done = subprocess.run([sys.executable, "benchmarks/eval_noise.py", "--recompute", str(first), "--merge",
                           str(second)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "other games" in done.stderr
