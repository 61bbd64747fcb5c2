"""Best-of-N cost: agent steps per second at N = 1, 4, 16, scoring each distinct action once vs every sample.

For each N, ``BestOfNAgent(pi, Q, n=N)`` plays the same ``--games`` evaluation games of a finished run (its policy
``pi_<policy>`` and PRM ``Q_<prm>``, admissible mode, candidate temperature ``--temperature``) twice with the same
seed: as shipped (identical actions scored once, a slot whose N samples agree not scored at all) and with
``score_duplicates=True`` (every sample scored: the naive cost). Both make the same choices, so the episodes are
identical (checked) and the ratio is the saving alone. Reported per N: agent steps/s over the whole evaluation (env
steps included), PRM (prompt, response) pairs scored, and the ratio deduplicated / naive. Environments run in this
process (``workers=0``), ``--num-envs`` games at once. Every game is reset once before timing (warm PDDL cache).

    python benchmarks/best_of_n_cost.py --run runs/quickstart --results benchmarks/results/best_of_n_cost.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import load_average, machine_info  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run directory (policy and PRM checkpoints)")
    parser.add_argument("--policy", type=int, default=1, help="policy iteration i (pi_i)")
    parser.add_argument("--prm", type=int, default=0, help="PRM index j (Q_j)")
    parser.add_argument("--n", default="1,4,16", help="comma-separated N values")
    parser.add_argument("--games", type=int, default=24, help="first games of the run's evaluation split")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--num-envs", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=1.0, help="candidate sampling temperature")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/best_of_n_cost.json"))
    args = parser.parse_args()
    # Recorded before the imports below: one of them rewrites sys.argv.
    command = shlex.join(["python", "benchmarks/best_of_n_cost.py", *sys.argv[1:]])

    import torch

    from agentprm.agents.best_of_n import BestOfNAgent
    from agentprm.config import load_config
    from agentprm.envs.runner import random_admissible_policy
    from agentprm.models.policy import Policy
    from agentprm.models.prm import ProcessRewardModel
    from agentprm.pipeline.evaluate import evaluate_policy
    from agentprm.pipeline.run import RunContext
    from agentprm.pipeline.run_config import RunConfig

    run = Path(args.run)
    config = load_config(RunConfig, run / "config.yaml")
    context = RunContext(config, run)
    games = context.eval_games()[: args.games]
    env = config.games.env
    policy = Policy.from_pretrained(context.policy_path(args.policy))
    prm = ProcessRewardModel.from_pretrained(context.prm_path(args.prm))
    evaluate_policy(env, games, random_admissible_policy(0), "warm-up", max_steps=1, num_envs=args.num_envs)
    results = []
    for n in [int(x) for x in args.n.split(",")]:
        row = {"n": n}
        actions = {}
        for variant, score_duplicates in (("deduplicated", False), ("naive", True)):
            agent = BestOfNAgent(policy, prm, n=n, prompt=config.prompt, mode=config.policy.mode,
                                 temperature=args.temperature, seed=0, score_duplicates=score_duplicates)
            load_before = load_average()
            evaluation = evaluate_policy(env, games, agent, variant, max_steps=args.max_steps,
                                         num_envs=args.num_envs)
            actions[variant] = [[a for _, a, _ in r.transitions] for r in evaluation.results]
            row[variant] = {"agent_steps": evaluation.agent_steps, "seconds": round(evaluation.seconds, 2),
                            "agent_steps_per_s": round(evaluation.steps_per_second, 2),
                            "prm_pairs_scored": agent.prm_evaluations, "prm_calls": agent.prm_calls,
                            "success": evaluation.success, "load_average": [load_before, load_average()]}
            print(f"N={n:3d} {variant:13s} {evaluation.steps_per_second:7.2f} agent steps/s  "
                  f"{agent.prm_evaluations:7d} PRM pairs  success {evaluation.success:.1%}", flush=True)
        row["same_episodes"] = actions["deduplicated"] == actions["naive"]
        row["speedup"] = round(row["deduplicated"]["agent_steps_per_s"] / row["naive"]["agent_steps_per_s"], 3)
        print(f"N={n:3d} deduplicated / naive = {row['speedup']:.2f}x, same episodes: {row['same_episodes']}",
              flush=True)
        results.append(row)
    report = {"command": command,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(("agentprm", "torch", "transformers", "alfworld")),
              "torch_threads": torch.get_num_threads(), "run": str(run), "games": len(games),
              "max_steps": args.max_steps, "num_envs": args.num_envs, "temperature": args.temperature,
              "rows": results}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
