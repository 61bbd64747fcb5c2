"""Ground-truth Q benchmark: how well does a PRM rank the actions at a state, against the policy's own ranking?

Two steps (``agentprm.pipeline.oracle`` does the work, ``agentprm.algorithms.action_ranking`` the metrics):

    # 1. estimate Q^pi(s, a) in the engine on held-out games (valid_seen; never the evaluation split)
    PYTHONPATH=src python benchmarks/prm_oracle.py estimate --run RUN --out /tmp/oracle_states.json
    # 2. grade any PRMs (scalar-head or implicit) and the policy's log-probability on those states
    PYTHONPATH=src python benchmarks/prm_oracle.py grade /tmp/oracle_states.json \\
        --prm Q_0=RUN/iter_1/prm/model --chosen Q_0 --results benchmarks/results/prm_oracle.json

``estimate`` takes the run's games, prompt, discount and evaluation budget; the policy is ``--policy`` (default:
the run's pi_0). Defaults: 200 states, the 4 most likely admissible actions at each, 8 continuations of pi per
action at the run's evaluation temperature. ``grade`` prints one row per ranker (pairwise accuracy on pairs with
|dQ| >= delta, top-1 agreement, Spearman per state, the expert action's rank, each with a 95% bootstrap interval
over states) and the estimate's split-half agreement, and merges the rows into ``--results`` (rows of earlier
grades of the same states file are kept, so PRMs can be added one at a time). ``choose`` sets the results'
top-level "chosen" object (the ranker the configs use) from rows already graded:

    PYTHONPATH=src python benchmarks/prm_oracle.py choose benchmarks/results/prm_oracle.json --prm implicit
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from machine import load_average, machine_info

COMMAND = " ".join(["python", *sys.argv])


def estimate(args: argparse.Namespace) -> None:
    from agentprm.config import load_config
    from agentprm.models.policy import Policy
    from agentprm.pipeline.oracle import OracleSettings, estimate_ground_truth, save_states
    from agentprm.pipeline.run import RunContext
    from agentprm.pipeline.run_config import RunConfig

    run_dir = Path(args.run)
    config = load_config(RunConfig, run_dir / "config.yaml")
    if args.split == config.games.eval_split and not args.allow_eval_split:
        raise SystemExit(f"--split {args.split} is the run's evaluation split: grade PRMs on held-out games that "
                         f"no result is reported on (valid_seen), or pass --allow-eval-split")
    ctx = RunContext(config, run_dir)
    games = ctx.games(args.split)[: args.games or None]
    policy = Policy.from_pretrained(args.policy or ctx.policy_path(0))
    settings = OracleSettings(states=args.states, actions=args.actions, continuations=args.continuations,
                              temperature=config.eval.temperature if args.temperature is None else args.temperature,
                              max_steps=config.eval.max_steps, gamma=config.targets.gamma, num_envs=args.num_envs,
                              seed=args.seed)
    start = time.perf_counter()
    data = estimate_ground_truth(config.games.env, games, policy, config.prompt, settings, workers=args.workers)
    data.update(command=COMMAND, run=str(run_dir), policy=str(args.policy or ctx.policy_path(0)), split=args.split,
                seconds=time.perf_counter() - start, machine=machine_info(("agentprm", "torch", "transformers", "alfworld")), load_average=load_average(),
                date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    save_states(data, args.out)
    print(f"{len(data['states'])} states, {data['continuation_steps']} continuation steps in "
          f"{data['seconds']:.0f} s -> {args.out}")


def grade(args: argparse.Namespace) -> None:
    from agentprm.algorithms.action_ranking import (
        crossfit_weight,
        estimate_agreement,
        grade_ranker,
        mix_scores,
        paired_difference,
        rank_agreement,
    )
    from agentprm.config import load_config
    from agentprm.models.implicit_prm import load_prm
    from agentprm.models.policy import Policy
    from agentprm.pipeline.oracle import graded_states, load_states, score_states
    from agentprm.pipeline.run_config import RunConfig

    data = load_states(args.states)
    states = graded_states(data)
    prompt = load_config(RunConfig, Path(data["run"]) / "config.yaml").prompt
    rows = {"policy": {"ranker": "policy", "what": f"log pi(a|s) of {data['policy']}"}}
    for spec, kind in [(spec, "prm") for spec in args.prm] + [(spec, "policy") for spec in args.policy]:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--{kind} takes NAME=PATH, got {spec!r}")
        start = time.perf_counter()
        scorer = load_prm(path) if kind == "prm" else PolicyLogProb(Policy.from_pretrained(path))
        score_states(data, states, name, scorer, scorer.tokenizer, prompt)
        rows[name] = {"ranker": name, "what": path if kind == "prm" else f"log pi(a|s) of {path}",
                      "scoring_s": time.perf_counter() - start}
    for spec in args.mix:
        name, terms = parse_mix(spec, states)
        mix_scores(states, name, terms)
        rows[name] = {"ranker": name, "what": spec.partition("=")[2], "terms": terms}
    for spec in args.crossfit:
        name, terms = parse_mix(spec, states)
        if len(terms) != 2 or terms[0][1] != 1.0:
            raise SystemExit(f"--crossfit takes NAME=BASE+EXTRA, got {spec!r}")
        (base, _), (extra, _) = terms
        weights = crossfit_weight(states, name, base, extra, args.grid, delta=args.delta)
        rows[name] = {"ranker": name, "what": f"{base} + w * {extra}, w tuned on the other fold of games "
                                              f"(grid {args.grid})", "fold_weights": weights}
    for name, row in rows.items():
        row.update(grade_ranker(states, name, delta=args.delta, seed=args.seed))
        if name != "policy":
            row["minus_policy"] = paired_difference(states, name, "policy", delta=args.delta, seed=args.seed)
            row["spearman_with_policy"] = rank_agreement(states, name, "policy", seed=args.seed)
    agreement = estimate_agreement(states, delta=args.delta, seed=args.seed)
    print(f"{len(states)} states, {agreement['n']} pairs with |dQ| >= {args.delta}; split-half agreement "
          f"{fmt(agreement)}")
    print("| ranker | pairwise accuracy | minus the policy's (paired) | top-1 agreement | Spearman | expert rank "
          "| expert first | Spearman with the policy (all admissible) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        gap = fmt(row["minus_policy"]) if "minus_policy" in row else ""
        with_policy = fmt(row["spearman_with_policy"], False) if "spearman_with_policy" in row else ""
        print(f"| {name} | {fmt(row['pairwise_accuracy'])} | {gap} | {fmt(row['top1_agreement'])} | "
              f"{fmt(row['spearman'], False)} | {fmt(row['expert_mean_rank'], False)} | {fmt(row['expert_first'])} "
              f"| {with_policy} |")
    if args.results:
        merge_results(Path(args.results), args, data, rows, agreement, len(states))


def parse_mix(spec: str, states) -> tuple[str, list[tuple[str, float]]]:
    """'NAME=A+0.1*B' -> ("NAME", [("A", 1.0), ("B", 0.1)]); every ranker must be scored already."""
    name, _, expr = spec.partition("=")
    if not name or not expr:
        raise SystemExit(f"a combined ranker is NAME=RANKER+W*RANKER, got {spec!r}")
    terms = []
    for part in expr.split("+"):
        weight, _, ranker = part.rpartition("*")
        try:
            terms.append((ranker.strip(), float(weight) if weight else 1.0))
        except ValueError:
            raise SystemExit(f"{spec!r}: {weight!r} is not a number") from None
    known = set(states[0].scores) if states else set()
    unknown = [r for r, _ in terms if r not in known]
    if unknown:
        raise SystemExit(f"{spec!r}: no ranker {unknown} (scored: {sorted(known)})")
    return name, terms


class PolicyLogProb:
    """A policy checkpoint as a ranker: its log pi(response | prompt) (e.g. an implicit PRM's phi)."""

    def __init__(self, policy) -> None:
        self.policy, self.tokenizer = policy, policy.tokenizer

    def score(self, prompts, responses):
        return self.policy.score_pairs(prompts, responses)


def fmt(metric: dict, percent: bool = True) -> str:
    """'value [low, high]': percentages with one decimal, or plain numbers with two."""
    scale, digits = (100.0, 1) if percent else (1.0, 2)
    value, (low, high) = metric["value"], metric["ci95"]
    if value != value:  # nan
        return "-"
    return f"{value * scale:.{digits}f} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def chosen_summary(rankers: dict, name: str) -> dict:
    """The results' top-level "chosen" object: ranker NAME's pairwise accuracy beside the policy's own."""
    if name not in rankers:
        raise SystemExit(f"chosen {name!r}: no such ranker ({', '.join(rankers)})")
    row, policy = rankers[name], rankers["policy"]
    return {"prm": name, "path": row["what"], "pairs": row["pairwise_accuracy"]["n"],
            "pairwise_accuracy": row["pairwise_accuracy"]["value"],
            "pairwise_ci95": row["pairwise_accuracy"]["ci95"],
            "policy_pairwise_accuracy": policy["pairwise_accuracy"]["value"],
            "policy_pairwise_ci95": policy["pairwise_accuracy"]["ci95"],
            "minus_policy": row.get("minus_policy")}


def choose(args: argparse.Namespace) -> None:
    """Rewrite a results file's "chosen" object from its graded rows (no regrading)."""
    path = Path(args.results)
    result = json.loads(path.read_text())
    result["chosen"] = chosen_summary(result["rankers"], args.prm)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"chosen {args.prm}: {result['chosen']['pairwise_accuracy']:.3f} of {result['chosen']['pairs']} pairs "
          f"(policy {result['chosen']['policy_pairwise_accuracy']:.3f}) -> {path}")


def merge_results(path: Path, args: argparse.Namespace, data: dict, rows: dict, agreement: dict, count: int) -> None:
    old = json.loads(path.read_text()) if path.is_file() else {}
    if old.get("states_file") != str(args.states) or old.get("delta") != args.delta:
        old = {}
    merged = {**old.get("rankers", {}), **rows}
    # keys other scripts add (prm_variants.py's "variants") survive a later grade of the same states
    result = {**old, "states_file": str(args.states), "delta": args.delta, "states": count,
              "estimate": {k: data[k] for k in ("command", "run", "policy", "split", "settings", "seconds", "timings",
                                                "continuation_steps", "games", "machine", "date") if k in data},
              "split_half_agreement": agreement, "rankers": merged,
              "grade_command": COMMAND}
    chosen = args.chosen or old.get("chosen", {}).get("prm")
    if chosen:
        result["chosen"] = chosen_summary(merged, chosen)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    est = sub.add_parser("estimate", help="estimate Q^pi(s, a) in the engine")
    est.add_argument("--run", required=True, help="run directory (games, config, pi_0)")
    est.add_argument("--out", required=True, help="states file to write (JSON)")
    est.add_argument("--policy", default="", help="policy checkpoint (default: the run's pi_0)")
    est.add_argument("--split", default="seen", help="held-out split (default valid_seen)")
    est.add_argument("--allow-eval-split", action="store_true", help="allow the run's evaluation split")
    est.add_argument("--games", type=int, default=0, help="first N games of the split (0 = all)")
    est.add_argument("--states", type=int, default=200)
    est.add_argument("--actions", type=int, default=4, help="K most likely admissible actions per state")
    est.add_argument("--continuations", type=int, default=8, help="M continuations per action")
    est.add_argument("--temperature", type=float, default=None, help="pi's temperature (default: the run's eval)")
    est.add_argument("--num-envs", type=int, default=64)
    est.add_argument("--workers", type=int, default=0)
    est.add_argument("--seed", type=int, default=0)
    gr = sub.add_parser("grade", help="grade PRMs and the policy on a states file")
    gr.add_argument("states", help="states file written by `estimate`")
    gr.add_argument("--prm", action="append", default=[], help="NAME=PRM_FOLDER (repeatable)")
    gr.add_argument("--policy", action="append", default=[],
                    help="NAME=POLICY_FOLDER: a policy's log-probability as a ranker (repeatable), e.g. an implicit "
                         "PRM's phi (PRM_FOLDER/policy)")
    gr.add_argument("--mix", action="append", default=[],
                    help="NAME=A+W*B: a weighted sum of rankers scored above, e.g. Q_0+0.1*policy (Q + lambda log pi)")
    gr.add_argument("--crossfit", action="append", default=[],
                    help="NAME=BASE+EXTRA: BASE + w * EXTRA with w from --grid chosen on the other fold of games")
    gr.add_argument("--grid", type=lambda text: [float(v) for v in text.split(",")],
                    default=[0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0], help="weights tried by --crossfit (comma list)")
    gr.add_argument("--delta", type=float, default=0.1, help="pairs need |dQ| >= delta")
    gr.add_argument("--chosen", default="", help="the ranker the configs use (written as 'chosen')")
    gr.add_argument("--results", default="", help="JSON file to merge the rows into")
    gr.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ch = sub.add_parser("choose", help="set the ranker the configs use in a graded results file")
    ch.add_argument("results", help="JSON file written by `grade --results`")
    ch.add_argument("--prm", required=True, help="a ranker graded in it")
    args = parser.parse_args(argv)
    {"estimate": estimate, "grade": grade, "choose": choose}[args.command](args)


if __name__ == "__main__":
    main()
