"""Run-to-run noise of an `agentprm run`'s evaluation: the same agents re-evaluated with other sampling seeds.

A run evaluates each agent once, with one seed, on its fixed evaluation games. Two sources of noise sit behind each
success rate: which games were drawn (the Wilson interval in the report covers that) and the agent's own sampling
(temperature 0.3 for the policy, 1.0 for Best-of-N candidates). This script measures the second one. It re-evaluates
agents of a finished run directory on the same games with ``--seeds``. It prints, per agent, the mean, standard
deviation and range of success over the seeds, and its success pooled over the seeds with a 95% bootstrap interval over
games. For pairs of agents (``--compare A/B``) it prints the difference on each seed (same games, same seed), and the
paired difference over games, d_g = mean_s A[s][g] - mean_s B[s][g], with a 95% bootstrap interval over games
(`agentprm.pipeline.results.paired_success_difference`): the interval that says whether A is better than B on games
like these, which the spread over 3 seeds cannot. The run's own stages are never touched.

``--recompute`` rewrites the summaries of an existing results file from the wins it holds, without playing again
(files written before the game ids were stored index their games by position: every run of one file played the same
games in the same order); ``--merge FILE ...`` first adds the runs of other results files on the same games, so that
agents evaluated by separate invocations can be paired.

Agents: ``pi_I`` (the policy of iteration I), ``bon:I:J:N`` (BoN(pi_I, Q_J) with N samples, ranked as the run's
config says) and ``bon:I:J:N:W`` (the same, ranked by Q + W log pi); ``mc:I:N:M``, ``mc:I:N:M:W`` and
``mc:I:N:M:W:T`` rank the same N candidates (drawn at temperature T, default the config's) by the engine's own
Monte Carlo Q^{pi_I} from M continuations of pi_I at the live state (``agentprm.agents.lookahead``): the ceiling
a perfect PRM would give Best-of-N, a measurement, never a result to report. ``mcobs:...`` (same fields) leaves the
decisions among ``go to`` actions only to the policy: the part of that ceiling not made of where the object lies.
With several named runs (``--run NAME=DIR``, repeatable) an agent is ``NAME.AGENT``, and A/B pairs may compare
agents of different runs on the same games.

    PYTHONPATH=src python benchmarks/eval_noise.py --run RUN --agents pi_0,pi_3,bon:3:2:16 --seeds 1,2,3 \\
        --compare pi_3/pi_0,bon:3:2:16/pi_3 --results benchmarks/results/eval_noise.json
    PYTHONPATH=src python benchmarks/eval_noise.py --recompute benchmarks/results/eval_noise.json --compare pi_3/pi_0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from agentprm.pipeline.results import paired_success_difference, pooled_success


def parse_agent(text: str) -> tuple[int, int | None, int, float | None]:
    """``pi_I`` -> (I, None, 1, None); ``bon:I:J:N`` -> (I, J, N, None); ``bon:I:J:N:W`` -> (I, J, N, W)."""
    if text.startswith("pi_"):
        return int(text[3:]), None, 1, None
    fields = text.split(":")
    if fields[0] != "bon" or len(fields) not in (4, 5):
        raise ValueError(f"agent {text!r}: expected pi_I, bon:I:J:N or bon:I:J:N:W")
    return int(fields[1]), int(fields[2]), int(fields[3]), float(fields[4]) if len(fields) == 5 else None


class Lookahead(NamedTuple):
    iteration: int
    n: int
    continuations: int
    weight: float = 0.0
    temperature: float | None = None
    policy_navigates: bool = False  # mcobs: decisions among go-to actions only are the policy's


def parse_lookahead(text: str) -> Lookahead | None:
    """``mc:I:N:M[:W[:T]]`` -> Lookahead(I, N, M, W or 0, T or None); ``mcobs:...`` the same with
    ``policy_navigates``; anything else -> None."""
    fields = text.split(":")
    if fields[0] not in ("mc", "mcobs"):
        return None
    if len(fields) not in (4, 5, 6):
        raise ValueError(f"agent {text!r}: expected {fields[0]}:I:N:M, {fields[0]}:I:N:M:W or {fields[0]}:I:N:M:W:T")
    weight = float(fields[4]) if len(fields) >= 5 else 0.0
    temperature = float(fields[5]) if len(fields) == 6 else None
    return Lookahead(int(fields[1]), int(fields[2]), int(fields[3]), weight, temperature, fields[0] == "mcobs")


def lookahead_agent(ctx, spec: Lookahead, seed: int, stack, referees: dict[str, str] | None = None,
                    referee_weight: float = 0.0):
    """BoN(pi_I, Monte Carlo Q^{pi_I}); its continuation pool is entered on ``stack`` (closed by the caller).
    ``referees`` (name -> PRM model folder) grade each PRM's choice at every decision against the estimate."""
    from agentprm.agents.lookahead import LookaheadBestOfN, MonteCarloQ
    from agentprm.agents.policy_agent import PolicyAgent, ScoreCache
    from agentprm.envs.runner import open_pool

    iteration, n, continuations, weight, temperature, policy_navigates = spec
    c = ctx.config
    policy = ctx.load_policy(ctx.policy_path(iteration))
    continuation = PolicyAgent(policy, prompt=c.prompt, mode=c.policy.mode, temperature=c.eval.temperature,
                               max_new_tokens=c.policy.max_new_tokens, seed=seed + 7919, score_cache=ScoreCache())
    pool = stack.enter_context(open_pool(c.games.env, c.num_envs, c.workers))
    q = MonteCarloQ(pool, continuation, continuations, max_steps=c.eval.max_steps, gamma=c.targets.gamma)
    return LookaheadBestOfN(policy, None, n=n, prompt=c.prompt, mode=c.policy.mode,
                            temperature=c.eval.candidate_temperature() if temperature is None else temperature,
                            logprob_weight=weight, max_new_tokens=c.policy.max_new_tokens, seed=seed, q=q,
                            referees={name: ctx.load_prm(path) for name, path in (referees or {}).items()},
                            referee_logprob_weight=referee_weight, policy_navigates=policy_navigates)


def split_agent(agent: str) -> tuple[str, str]:
    """``NAME.AGENT`` -> (NAME, AGENT); ``AGENT`` -> ("", AGENT). The run name is what precedes a '.' in the
    agent's first field: a weight or a temperature (``bon:1:0:8:0.3``) has a '.' of its own."""
    return tuple(agent.split(".", 1)) if "." in agent.split(":")[0] else ("", agent)


def parse_run(text: str) -> tuple[str, Path]:
    """``DIR`` -> ("", DIR); ``NAME=DIR`` -> (NAME, DIR)."""
    name, sep, folder = text.partition("=")
    if not sep:
        return "", Path(text)
    if "." in name:
        raise SystemExit(f"eval_noise: run name {name!r} may not contain '.'")
    return name, Path(folder)


def summarize(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", default=[], help="a finished `agentprm run` directory, or "
                        "NAME=DIR (repeatable; then agents are NAME.pi_I, and all runs must evaluate the same games)")
    parser.add_argument("--agents", help="comma-separated: pi_I or bon:I:J:N (NAME.pi_I with named runs)")
    parser.add_argument("--recompute", metavar="RESULTS", help="rewrite RESULTS' summaries from its wins; no play")
    parser.add_argument("--merge", nargs="+", default=[], metavar="FILE", help="with --recompute: add the runs of "
                        "these results files (same games) to RESULTS first")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated evaluation seeds")
    parser.add_argument("--compare", default="", help="comma-separated A/B pairs of agents: differences per seed")
    parser.add_argument("--referee", action="append", default=[], metavar="NAME=PRM",
                        help="mc agents: also grade this PRM's choice at every decision against the Monte Carlo "
                             "ranking (repeatable)")
    parser.add_argument("--referee-weight", type=float, default=0.0, help="referees rank by Q + W log pi")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--results", help="JSON file to write")
    args = parser.parse_args(argv)
    pairs = [p.strip() for p in args.compare.split(",") if p.strip()]
    if args.recompute:
        path = Path(args.recompute)
        results = json.loads(path.read_text())
        for other in args.merge:  # runs of other files, on the same games, join this one's
            extra = json.loads(Path(other).read_text())
            if extra.get("game_ids") != results.get("game_ids") or extra.get("max_steps") != results.get("max_steps"):
                raise SystemExit(f"eval_noise: {other} holds other games or another step budget than {path}")
            known = {(r["agent"], r["seed"]) for r in results["runs"]}
            results["runs"] += [r for r in extra["runs"] if (r["agent"], r["seed"]) not in known]
            results.setdefault("merged", []).append(str(other))
        pairs = pairs or list(results.get("comparisons", {}))
        summarise(results, pairs)
        path.write_text(json.dumps(results, indent=1) + "\n")
        print_table(results)
        return 0
    if not (args.run and args.agents and args.results):
        parser.error("--run, --agents and --results are required (or --recompute RESULTS)")

    import torch

    from agentprm.config import load_config
    from agentprm.pipeline import run_stages
    from agentprm.pipeline.evaluate import evaluate_policy
    from agentprm.pipeline.run import RunContext
    from agentprm.pipeline.run_config import RunConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = dict(parse_run(text) for text in args.run)
    referees = dict(parse_run(text) for text in args.referee)
    if "" in referees:
        raise SystemExit("eval_noise: --referee takes NAME=PRM_FOLDER (a name for the verdicts)")
    agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    results = {"benchmark": "eval_noise", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "command": "python " + " ".join(sys.argv), "run": {k: str(v) for k, v in runs.items()}, "games": None,
               "game_ids": None, "max_steps": None, "seeds": seeds, "runs": []}
    if list(runs) == [""]:
        results["run"] = str(runs[""])
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    contexts = {}
    for agent in agents:
        label, name = split_agent(agent)
        if label not in runs:
            raise SystemExit(f"eval_noise: agent {agent!r} names run {label!r}; runs given: {sorted(runs)}")
        if label not in contexts:
            config = load_config(RunConfig, runs[label] / "config.yaml")
            contexts[label] = (config, RunContext(config, runs[label], log=lambda message: None))
        config, ctx = contexts[label]
        games = ctx.eval_games()
        lookahead = parse_lookahead(name)
        if lookahead is None:
            policy_iteration, prm_iteration, n, weight = parse_agent(name)
        for seed in seeds:
            started = time.perf_counter()
            with contextlib.ExitStack() as stack:
                if lookahead is None:
                    player = run_stages._agent(ctx, policy_iteration, prm_iteration, n, seed, logprob_weight=weight)
                else:
                    player = lookahead_agent(ctx, lookahead, seed, stack, referees, args.referee_weight)
                evaluation = evaluate_policy(config.games.env, games, player, agent, max_steps=config.eval.max_steps,
                                             num_envs=config.num_envs, workers=config.workers, seed=seed)
            played = sorted(evaluation.results, key=lambda r: r.game.game_id)
            ids = [r.game.game_id for r in played]
            if results["game_ids"] is None:
                results.update(game_ids=ids, games=len(ids), max_steps=config.eval.max_steps)
            elif ids != results["game_ids"] or config.eval.max_steps != results["max_steps"]:
                raise SystemExit(f"eval_noise: run {label!r} evaluates other games or another step budget")
            row = {"agent": agent, "seed": seed, "success": evaluation.success, "ci95": list(evaluation.ci95),
                   "wins": [bool(r.won) for r in played], "seconds": time.perf_counter() - started}
            if getattr(player, "turns", 0):  # Best-of-N: distinct actions its N samples offered per turn
                row["distinct_candidates"] = player.distinct_candidates / player.turns
            if lookahead is not None:
                row.update(q_estimates=player.estimates, continuations=player.q.branches,
                           continuation_steps=player.q.continuation_steps,
                           navigation_decisions=player.navigation_decisions,
                           verdicts={name: v.summary() for name, v in player.verdicts.items()})
                for name, verdict in row["verdicts"].items():
                    print(f"  {name}: {verdict['decisions']} decisions, {verdict['contested']} contested, agreement "
                          f"{verdict['agreement']:.1%}, regret {verdict['regret']:.4f}", flush=True)
            results["runs"].append(row)
            print(f"{agent} seed {seed}: {evaluation.success:.1%} ({time.perf_counter() - started:.0f} s)",
                  flush=True)
            out.write_text(json.dumps(results, indent=1) + "\n")  # partial results survive a kill

    summarise(results, pairs)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)
    return 0


def wins_by_seed(results: dict, agent: str) -> dict[int, dict[str, bool]]:
    """wins[seed][game id] of one agent (game ids by position in files written before they were stored)."""
    rows = [r for r in results["runs"] if r["agent"] == agent]
    if not rows:
        raise SystemExit(f"eval_noise: no runs of agent {agent!r} in the results")
    ids = results.get("game_ids") or [str(i) for i in range(len(rows[0]["wins"]))]
    return {r["seed"]: dict(zip(ids, r["wins"], strict=True)) for r in rows}


def summarise(results: dict, pairs: list[str]) -> None:
    """Fill results["agents"] and results["comparisons"] (module doc) from results["runs"]."""
    agents = list(dict.fromkeys(r["agent"] for r in results["runs"]))
    results["agents"] = {}
    for agent in agents:
        stats = summarize([r["success"] for r in results["runs"] if r["agent"] == agent])
        results["agents"][agent] = {**stats, "pooled": pooled_success(wins_by_seed(results, agent))}
    results["comparisons"] = {}
    for pair in pairs:
        a, b = pair.split("/")
        wins_a, wins_b = wins_by_seed(results, a), wins_by_seed(results, b)
        diffs = [sum(wins_a[s].values()) / len(wins_a[s]) - sum(wins_b[s].values()) / len(wins_b[s])
                 for s in wins_b if s in wins_a]
        results["comparisons"][pair] = {**summarize(diffs), "paired": paired_success_difference(wins_a, wins_b)}


def print_table(results: dict) -> None:
    print("| agent | mean success | stdev over seeds | range | pooled over seeds and games [95% CI] |")
    print("|---|---|---|---|---|")
    for agent, stats in results["agents"].items():
        pooled = stats["pooled"]
        print(f"| {agent} | {stats['mean']:.1%} | {stats['stdev']:.1%} | {stats['min']:.1%}-{stats['max']:.1%} | "
              f"{pooled['success']:.1%} [{pooled['ci95'][0]:.1%}, {pooled['ci95'][1]:.1%}] |")
    for pair, stats in results["comparisons"].items():
        paired = stats["paired"]
        print(f"| {pair} (difference, same seed) | {stats['mean']:+.1%} | {stats['stdev']:.1%} | "
              f"{stats['min']:+.1%}..{stats['max']:+.1%} | paired over {paired['games']} games: "
              f"{paired['difference']:+.1%} [{paired['ci95'][0]:+.1%}, {paired['ci95'][1]:+.1%}] |")


if __name__ == "__main__":
    raise SystemExit(main())
