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


def test_runs_parse():
    assert eval_noise.parse_run("/tmp/a") == ("", Path("/tmp/a"))
    assert eval_noise.parse_run("w6=/tmp/a=b") == ("w6", Path("/tmp/a=b"))  # the first '=' ends the name
    assert eval_noise.parse_run("w6=/tmp/a") == ("w6", Path("/tmp/a"))
    with pytest.raises(SystemExit, match="may not contain"):
        eval_noise.parse_run("a.b=/tmp/a")
