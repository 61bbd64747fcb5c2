"""`benchmarks/prm_oracle.py choose`: the results' "chosen" object comes from the rows already graded."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def metric(value, low, high, n=10):
    return {"value": value, "ci95": [low, high], "n": n}


def run_choose(path: Path, name: str):
    return subprocess.run([sys.executable, "prm_oracle.py", "choose", str(path), "--prm", name],
                          cwd=ROOT / "benchmarks", capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})


def test_choose_rewrites_chosen_from_the_graded_rows(tmp_path):
    rows = {"policy": {"what": "pi_0", "pairwise_accuracy": metric(0.6, 0.5, 0.7)},
            "a": {"what": "/x/a", "pairwise_accuracy": metric(0.55, 0.45, 0.65),
                  "minus_policy": metric(-0.05, -0.1, 0.0)},
            "b": {"what": "/x/b", "pairwise_accuracy": metric(0.75, 0.7, 0.8), "minus_policy": metric(0.15, 0.1, 0.2)}}
    path = tmp_path / "oracle.json"
    path.write_text(json.dumps({"rankers": rows, "chosen": {"prm": "a"}, "states": 3}))
    done = run_choose(path, "b")
    assert done.returncode == 0, done.stderr
    result = json.loads(path.read_text())
    assert result["states"] == 3 and result["rankers"] == rows
    assert result["chosen"] == {"prm": "b", "path": "/x/b", "pairs": 10, "pairwise_accuracy": 0.75,
                                "pairwise_ci95": [0.7, 0.8], "policy_pairwise_accuracy": 0.6,
                                "policy_pairwise_ci95": [0.5, 0.7], "minus_policy": metric(0.15, 0.1, 0.2)}


def test_choose_an_ungraded_ranker_fails_and_keeps_the_file(tmp_path):
    path = tmp_path / "oracle.json"
    text = json.dumps({"rankers": {"policy": {"what": "pi_0", "pairwise_accuracy": metric(0.6, 0.5, 0.7)}}})
    path.write_text(text)
    done = run_choose(path, "nope")
    assert done.returncode != 0 and "no such ranker" in done.stderr
    assert path.read_text() == text


def test_a_later_grade_keeps_the_rows_and_keys_of_earlier_ones(tmp_path):
    import argparse

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from prm_oracle import merge_results

    path = tmp_path / "oracle.json"
    policy = {"what": "pi_0", "pairwise_accuracy": metric(0.6, 0.5, 0.7)}
    path.write_text(json.dumps({"states_file": "s.json", "delta": 0.1, "rankers": {"policy": policy, "a": policy},
                                "variants": {"a": {"prm_seconds": 3}}}))
    args = argparse.Namespace(states="s.json", delta=0.1, chosen="")
    merge_results(path, args, {}, {"b": policy}, {"value": 0.9}, 5)
    result = json.loads(path.read_text())
    assert sorted(result["rankers"]) == ["a", "b", "policy"]
    assert result["variants"] == {"a": {"prm_seconds": 3}} and result["states"] == 5
    # other states: earlier rows do not mix in
    merge_results(path, argparse.Namespace(states="t.json", delta=0.1, chosen=""), {}, {"policy": policy}, {}, 2)
    assert sorted(json.loads(path.read_text())["rankers"]) == ["policy"]
