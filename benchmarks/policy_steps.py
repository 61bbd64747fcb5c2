"""Policy steps side by side: pi_1 from one base iteration (its rollouts, targets and PRM), each step its own way.

Every variant copies the base run's finished stages (games, demonstrations, pi_0, iteration 1's rollouts, targets
and PRM; hard links, nothing is rebuilt), sets its overrides and trains only pi_1 (``agentprm train-policy RUN
--iteration 1``). Then pi_0 and every pi_1 play the base run's evaluation games (tune with a base whose
``games.eval_split`` is ``seen``: valid_seen, never the unseen evaluation games) with each of ``--seeds``:

    PYTHONPATH=src python benchmarks/policy_steps.py --base RUN --out /tmp/policy_steps --seeds 1,2,3 \\
        --results benchmarks/results/policy_steps.json [--variants dpo kl_0.1 ...]

Reported per variant: success (mean over seeds), the paired difference pi_1 - pi_0 over the same games and seeds
with a 95% bootstrap interval over games, the step's own diagnostics (pair fraction, KL, expected Q gain) and its
training time. The variant ``phi`` takes an implicit PRM's phi (``iter_1/prm/model/policy``) as pi_1 unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "dpo": ["policy_step=dpo"],  # explicit: a base config may default to the KL step
    "dpo_distinct_gap": ["policy_step=dpo", "dpo.distinct=true", "dpo.min_gap=0.02"],
    "kl_0.03": ["policy_step=kl", "kl.beta=0.03"],
    "kl_0.1": ["policy_step=kl", "kl.beta=0.1"],
    "kl_0.3": ["policy_step=kl", "kl.beta=0.3"],
    "kl_1": ["policy_step=kl", "kl.beta=1.0"],
    "kl_0.1_steps90": ["policy_step=kl", "kl.beta=0.1", "kl.steps=90"],
    "kl_mc": ["policy_step=kl", "kl.q_source=mc", "kl.beta=0.3"],
    "kl_mc_0.1": ["policy_step=kl", "kl.q_source=mc", "kl.beta=0.1"],
    # outcome-only baselines on the same rollouts (no targets or PRM used): SFT on the won episodes, episode DPO
    "rft": ["algorithm=rft"],
    "trajectory_dpo": ["algorithm=trajectory_dpo"],
    "phi": [],
}
SHARED = ("games", "demos", "model_init", "iter_0", "iter_1/rollouts", "iter_1/targets", "iter_1/prm")


def prepare(base: Path, folder: Path, overrides: list[str]) -> None:
    """The variant's run folder: the base's stages up to iteration 1's PRM as hard links (no variant rewrites them)."""
    from prm_variants import copy_base

    copy_base(base, folder, overrides, SHARED, copy_function=os.link)


def train(folder: Path, name: str) -> float:
    started = time.perf_counter()
    if name == "phi":
        target = folder / "iter_1" / "policy" / "model"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(folder / "iter_1" / "prm" / "model" / "policy", target)
            (folder / "iter_1" / "policy" / "stage.json").write_text(json.dumps({"stage": "phi"}) + "\n")
        return time.perf_counter() - started
    if not (folder / "iter_1" / "policy").is_dir():
        log = (folder / "train-policy.log").open("w")
        subprocess.run([sys.executable, "-m", "agentprm.cli", "train-policy", str(folder), "--iteration", "1"],
                       check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def evaluate(folder: Path, iteration: int, seeds: list[int]) -> dict[int, dict[str, bool]]:
    """wins[seed][game_id] of pi_iteration on the run's evaluation games."""
    from agentprm.config import load_config
    from agentprm.pipeline import run_stages
    from agentprm.pipeline.evaluate import evaluate_policy
    from agentprm.pipeline.run import RunContext
    from agentprm.pipeline.run_config import RunConfig

    config = load_config(RunConfig, folder / "config.yaml")
    ctx = RunContext(config, folder, log=lambda message: None)
    games = ctx.eval_games()
    out = {}
    for seed in seeds:
        agent = run_stages._agent(ctx, iteration, None, 1, seed)
        evaluation = evaluate_policy(config.games.env, games, agent, f"pi_{iteration}", max_steps=config.eval.max_steps,
                                     num_envs=config.num_envs, workers=config.workers, seed=seed)
        out[seed] = {r.game.game_id: bool(r.won) for r in evaluation.results}
    return out


def paired(wins: dict[int, dict[str, bool]], base: dict[int, dict[str, bool]]) -> dict:
    """Mean over games of (mean over seeds of win - base win), with a 95% bootstrap interval over games
    (`agentprm.pipeline.results.paired_success_difference`)."""
    from agentprm.pipeline.results import paired_success_difference

    result = paired_success_difference(wins, base)
    return {"value": result["difference"], "ci95": result["ci95"], "games": result["games"]}


def success(wins: dict[int, dict[str, bool]]) -> float:
    values = [sum(w.values()) / len(w) for w in wins.values()]
    return sum(values) / len(values)


def diagnostics(folder: Path) -> dict:
    policy = folder / "iter_1" / "policy"
    for name in ("dpo_summary.json", "kl_summary.json", "rft.json"):
        if (policy / name).is_file():
            data = json.loads((policy / name).read_text())
            return {k: v for k, v in {**data, **data.get("final", {})}.items() if isinstance(v, (int, float))}
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="a run with iteration 1's rollouts, targets and PRM")
    parser.add_argument("--out", required=True, help="folder of the variants' runs")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--results", required=True)
    args = parser.parse_args(argv)
    base, out, results_path = Path(args.base), Path(args.out), Path(args.results)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if results.get("base") != str(base) or results.get("seeds") != seeds:
        results = {"base": str(base), "seeds": seeds, "variants": {}}
    results.update(benchmark="policy_steps", command="python " + " ".join(sys.argv),
                   date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    results_path.parent.mkdir(parents=True, exist_ok=True)
    if "pi_0" not in results:
        started = time.perf_counter()
        results["pi_0"] = {"wins": evaluate(base, 0, seeds), "seconds": time.perf_counter() - started}
        results_path.write_text(json.dumps(results, indent=1) + "\n")
    pi_0 = {int(s): w for s, w in results["pi_0"]["wins"].items()}
    print(f"pi_0: {success(pi_0):.1%} over seeds {seeds}", flush=True)
    for name in args.variants:
        folder = out / name
        prepare(base, folder, VARIANTS[name])
        seconds = train(folder, name)
        started = time.perf_counter()
        wins = evaluate(folder, 1, seeds)
        row = {"overrides": VARIANTS[name], "success": success(wins), "minus_pi_0": paired(wins, pi_0),
               "train_seconds": seconds, "eval_seconds": time.perf_counter() - started,
               "diagnostics": diagnostics(folder), "wins": wins}
        results["variants"][name] = row
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        gap = row["minus_pi_0"]
        print(f"{name}: {row['success']:.1%}, minus pi_0 {gap['value']:+.1%} [{gap['ci95'][0]:+.1%}, "
              f"{gap['ci95'][1]:+.1%}] ({seconds:.0f} s training)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
