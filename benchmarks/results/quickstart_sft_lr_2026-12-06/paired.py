"""Paired differences between the two quickstart runs of this folder (README), on the same 100 valid_seen games.

    python paired.py RUN_3e-3 RUN_1e-3     # writes wins.json and paired.json beside this file
    python paired.py                       # recomputes paired.json from the committed wins.json
"""
import json
import sys
from pathlib import Path

from agentprm.pipeline.results import paired_success_difference

HERE = Path(__file__).parent
AGENTS = {"pi_0": "iter_0/eval/pi_0.jsonl", "pi_1": "iter_1/eval/pi_1.jsonl",
          "BoN(pi_0,Q_0,N=8)": "iter_1/eval/BoN(pi_0,Q_0,N=8).jsonl",
          "BoN(pi_1,Q_0,N=8)": "iter_1/eval/BoN(pi_1,Q_0,N=8).jsonl"}


def read_wins(run: Path) -> dict[str, dict[str, bool]]:
    wins = {}
    for agent, relative in AGENTS.items():
        with open(run / relative) as episodes:
            wins[agent] = {record["game_id"]: bool(record["won"]) for record in map(json.loads, episodes)}
    return wins


def main(argv: list[str]) -> None:
    if argv:
        wins = {"lr3e-3": read_wins(Path(argv[0])), "lr1e-3": read_wins(Path(argv[1]))}
        (HERE / "wins.json").write_text(json.dumps(wins, indent=1, sort_keys=True))
    wins = json.loads((HERE / "wins.json").read_text())
    pairs = {"pi_0: lr1e-3 - lr3e-3": (wins["lr1e-3"]["pi_0"], wins["lr3e-3"]["pi_0"])}
    for lr in ("lr3e-3", "lr1e-3"):
        for agent in ("pi_1", "BoN(pi_0,Q_0,N=8)", "BoN(pi_1,Q_0,N=8)"):
            pairs[f"{lr}: {agent} - pi_0"] = (wins[lr][agent], wins[lr]["pi_0"])
    paired = {name: paired_success_difference({0: a}, {0: b}) for name, (a, b) in pairs.items()}
    (HERE / "paired.json").write_text(json.dumps(paired, indent=1))
    for name, stats in paired.items():
        low, high = stats["ci95"]
        print(f"| {name} | {stats['difference']:+.1%} [{low:+.1%}, {high:+.1%}] |")


if __name__ == "__main__":
    main(sys.argv[1:])
