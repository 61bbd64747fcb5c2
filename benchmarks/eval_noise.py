"""Run-to-run noise of an `agentprm run`'s evaluation: the same agents re-evaluated with other sampling seeds.

A run evaluates each agent once, with one seed, on its fixed evaluation games. Two sources of noise sit behind each
success rate: which games were drawn (the Wilson interval in the report covers that) and the agent's own sampling
(temperature 0.3 for the policy, 1.0 for Best-of-N candidates). This script measures the second one. It re-evaluates
agents of a finished run directory on the same games with ``--seeds``. It prints, per agent, the mean, standard
deviation and range of success over the seeds. For pairs of agents (``--compare A/B``) it prints the difference on each
seed (same games, same seed) and its mean and standard deviation. The run's own stages are never touched.

Agents: ``pi_I`` (the policy of iteration I) and ``bon:I:J:N`` (BoN(pi_I, Q_J) with N samples).

    PYTHONPATH=src python benchmarks/eval_noise.py --run RUN --agents pi_0,pi_3,bon:3:2:16 --seeds 1,2,3 \\
        --compare pi_3/pi_0,bon:3:2:16/pi_3 --results benchmarks/results/eval_noise.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def parse_agent(text: str) -> tuple[int, int | None, int]:
    """``pi_I`` -> (I, None, 1); ``bon:I:J:N`` -> (I, J, N)."""
    if text.startswith("pi_"):
        return int(text[3:]), None, 1
    kind, policy, prm, n = text.split(":")
    if kind != "bon":
        raise ValueError(f"agent {text!r}: expected pi_I or bon:I:J:N")
    return int(policy), int(prm), int(n)


def summarize(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a finished `agentprm run` directory")
    parser.add_argument("--agents", required=True, help="comma-separated: pi_I or bon:I:J:N")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated evaluation seeds")
    parser.add_argument("--compare", default="", help="comma-separated A/B pairs of agents: differences per seed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--results", required=True, help="JSON file to write")
    args = parser.parse_args(argv)

    import torch

    from agentprm.config import load_config
    from agentprm.pipeline import run_stages
    from agentprm.pipeline.evaluate import evaluate_policy
    from agentprm.pipeline.run import RunContext
    from agentprm.pipeline.run_config import RunConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run)
    config = load_config(RunConfig, run_dir / "config.yaml")
    ctx = RunContext(config, run_dir, log=lambda message: None)
    games = ctx.eval_games()
    agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    results = {"benchmark": "eval_noise", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "command": "python " + " ".join(sys.argv), "run": str(run_dir), "games": len(games),
               "max_steps": config.eval.max_steps, "seeds": seeds, "runs": []}
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    for agent in agents:
        policy_iteration, prm_iteration, n = parse_agent(agent)
        for seed in seeds:
            started = time.perf_counter()
            player = run_stages._agent(ctx, policy_iteration, prm_iteration, n, seed)
            evaluation = evaluate_policy(config.games.env, games, player, agent, max_steps=config.eval.max_steps,
                                         num_envs=config.num_envs, workers=config.workers, seed=seed)
            wins = [bool(r.won) for r in sorted(evaluation.results, key=lambda r: r.game.game_id)]
            results["runs"].append({"agent": agent, "seed": seed, "success": evaluation.success,
                                    "ci95": list(evaluation.ci95), "wins": wins,
                                    "seconds": time.perf_counter() - started})
            print(f"{agent} seed {seed}: {evaluation.success:.1%} ({time.perf_counter() - started:.0f} s)",
                  flush=True)
            out.write_text(json.dumps(results, indent=1) + "\n")  # partial results survive a kill

    by_agent = {a: [r for r in results["runs"] if r["agent"] == a] for a in agents}
    results["agents"] = {a: summarize([r["success"] for r in rows]) for a, rows in by_agent.items()}
    results["comparisons"] = {}
    for pair in (p.strip() for p in args.compare.split(",") if p.strip()):
        a, b = pair.split("/")
        per_seed = {r["seed"]: r["success"] for r in by_agent[a]}
        diffs = [per_seed[r["seed"]] - r["success"] for r in by_agent[b] if r["seed"] in per_seed]
        results["comparisons"][pair] = summarize(diffs)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print("| agent | mean success | stdev over seeds | range |")
    print("|---|---|---|---|")
    for agent, stats in results["agents"].items():
        print(f"| {agent} | {stats['mean']:.1%} | {stats['stdev']:.1%} | {stats['min']:.1%}-{stats['max']:.1%} |")
    for pair, stats in results["comparisons"].items():
        print(f"| {pair} (difference, same seed) | {stats['mean']:+.1%} | {stats['stdev']:.1%} | "
              f"{stats['min']:+.1%}..{stats['max']:+.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
