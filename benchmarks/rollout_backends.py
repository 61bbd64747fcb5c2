"""Rollout throughput of the environment backends: local with 1 and 2 worker processes, Ray with 2 actors.

The same ``--games`` training games of a finished run are played by the same agent on each backend (in-process,
``workers=0``, as the reference): once by the random-admissible agent (environment cost alone) and once by the run's
pi_0 in admissible mode (the policy batched in the driver, as in the rollout stage). Every game is reset once
before timing (a warm PDDL cache in the driver; each worker process or actor builds its own, so the first reset of
every game in a worker is a cold one and counts: that is the real cost of a fresh stage). Reported: agent steps per
second of the whole ``run_episodes`` call (pool start-up excluded, measured separately as ``startup_s``), and the
ratio to the in-process backend. The trajectories of every backend are compared with the in-process ones.

    python benchmarks/rollout_backends.py --run runs/quickstart --results benchmarks/results/rollout_backends.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import load_average, machine_info  # noqa: E402

BACKENDS = {"local, in-process": (0, "local"), "local, 1 worker": (1, "local"), "local, 2 workers": (2, "local"),
            "ray, 2 actors": (2, "ray")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run directory (its training games and pi_0)")
    parser.add_argument("--games", type=int, default=48)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--num-envs", type=int, default=24)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/rollout_backends.json"))
    args = parser.parse_args()
    # Recorded before the imports below: one of them rewrites sys.argv.
    command = shlex.join(["python", "benchmarks/rollout_backends.py", *sys.argv[1:]])

    from agentprm.agents.policy_agent import PolicyAgent
    from agentprm.config import load_config
    from agentprm.envs.runner import PoolSpec, open_pool, random_admissible_policy, run_episodes
    from agentprm.models.policy import Policy
    from agentprm.pipeline.run import RunContext
    from agentprm.pipeline.run_config import RunConfig

    run = Path(args.run)
    config = load_config(RunConfig, run / "config.yaml")
    context = RunContext(config, run)
    games = context.games("train")[: args.games]
    env = config.games.env
    policy = Policy.from_pretrained(context.policy_path(0))
    agents = {"random": lambda: random_admissible_policy(0),
              "pi_0": lambda: PolicyAgent(policy, prompt=config.prompt, mode=config.policy.mode, temperature=1.0,
                                          seed=0)}
    with open_pool(env, args.num_envs, 0) as pool:  # warm the driver's translation cache
        run_episodes(pool, games, random_admissible_policy(0), 1)
    rows, reference = [], {}
    for agent_name, make_agent in agents.items():
        for backend, (workers, kind) in BACKENDS.items():
            load_before = load_average()
            started = time.perf_counter()
            with open_pool(env, args.num_envs, PoolSpec(workers, kind)) as pool:
                startup = time.perf_counter() - started
                started = time.perf_counter()
                results = run_episodes(pool, games, make_agent(), args.max_steps)
                seconds = time.perf_counter() - started
            steps = sum(r.steps for r in results)
            actions = [[a for _, a, _ in r.transitions] for r in results]
            reference.setdefault(agent_name, actions)
            row = {"agent": agent_name, "backend": backend, "agent_steps": steps, "seconds": round(seconds, 2),
                   "steps_per_s": round(steps / seconds, 2), "startup_s": round(startup, 2),
                   "same_trajectories": actions == reference[agent_name],
                   "load_average": [load_before, load_average()]}
            rows.append(row)
            print(f"{agent_name:7s} {backend:18s} {row['steps_per_s']:8.1f} agent steps/s  start-up "
                  f"{startup:5.1f} s  same trajectories: {row['same_trajectories']}", flush=True)
    for row in rows:
        base = next(r for r in rows if r["agent"] == row["agent"] and r["backend"] == "local, in-process")
        row["ratio_to_in_process"] = round(row["steps_per_s"] / base["steps_per_s"], 3)
    report = {"command": command,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(("agentprm", "torch", "transformers", "alfworld", "ray")), "run": str(run),
              "games": len(games), "max_steps": args.max_steps, "num_envs": args.num_envs, "rows": rows}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
