"""Ablation table of the paper's directions and the outcome-only baselines, each one `agentprm run` of one config.

Every variant is the base config (default ``configs/quickstart.yaml`` with ``--base-overrides``) plus its own
overrides; it runs one iteration (pi_0 -> pi_1) with the same rollout budget, or two for the ``*_2_iterations``
variants (InversePRM after 1 and 2 iterations against AgentPRM at the same number of environment steps). A base run
is made first; the variants copy its games, demonstrations, initial model and pi_0 (stages whose settings every
variant shares, so they would be rebuilt identically) and run the rest: rollouts, targets, PRM, policy step,
evaluation. A 2-iteration variant also copies iteration 1 of its 1-iteration variant (``REUSE``), identical stages.
Reported per variant: pi_1 (and pi_2) success on the base's unseen evaluation games with Wilson intervals, the
Best-of-N rows, the environment steps of all rollouts (and the validation episodes the reward-hacking monitor
played, if on), and the wall time of the variant's own stages (copied stages count where they were run).

    PYTHONPATH=src python benchmarks/ablations.py --out /tmp/ablations \\
        --base-overrides games.unseen=60 games.seen=24 eval.bon_curve=[] \\
        --results benchmarks/results/ablations.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from machine import load_average, machine_info

VARIANTS: dict[str, list[str]] = {
    "agentprm": [],
    "relative_loss": ["prm.loss=bradley_terry"],
    "reset_distribution": ["rollouts.reset_fraction=0.5"],
    "steered_exploration": ["rollouts.steer_fraction=0.5"],
    "reward_shaping": ["targets.shaping=true"],
    "monitor_keep_best": ["dpo.monitor_every=10", "monitor.games=24"],
    "inverse_prm": ["algorithm=inverse_prm"],
    "rft": ["algorithm=rft"],
    "trajectory_dpo": ["algorithm=trajectory_dpo"],
    "agentprm_2_iterations": ["iterations=2"],
    "inverse_prm_2_iterations": ["algorithm=inverse_prm", "iterations=2"],
}
REUSE = {"agentprm_2_iterations": "agentprm", "inverse_prm_2_iterations": "inverse_prm"}  # iteration 1 is identical
SHARED_STAGES = ("games", "demos", "model_init", "iter_0")


def run(config: str, out: Path, overrides: list[str]) -> float:
    start = time.perf_counter()
    command = [sys.executable, "-m", "agentprm.cli", "run", config, "--out", str(out), *overrides]
    done = subprocess.run(command, capture_output=True, text=True)
    (out.parent / f"{out.name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed; see {out.parent / (out.name + '.log')}")
    return time.perf_counter() - start


def rollout_steps(run_dir: Path) -> dict:
    """Episodes and environment steps of every rollout (replayed reset-prefix steps counted apart), in all and per
    iteration (``iter_<i>`` holds pi_{i-1}'s rollouts, so pi_k was trained on those of iterations 1..k)."""
    episodes = steps = replayed = 0
    by_iteration: dict[str, int] = {}
    for shard in sorted(run_dir.glob("iter_*/rollouts/shard_*.jsonl")):
        iteration = shard.parent.parent.name
        for line in shard.read_text().splitlines():
            record = json.loads(line)
            episodes += 1
            steps += record["num_steps"]
            by_iteration[iteration] = by_iteration.get(iteration, 0) + record["num_steps"]
            replayed += sum(1 for s in record["steps"] if s.get("extras", {}).get("reset"))
    return {"episodes": episodes, "env_steps": steps, "replayed_steps": replayed, "env_steps_by_iteration": by_iteration}


def own_seconds(run_dir: Path) -> float:
    """Seconds of every stage after pi_0 (iteration >= 1 and the final evaluation)."""
    total = 0.0
    for stage in run_dir.glob("iter_*/*/stage.json"):
        if stage.parent.parent.name != "iter_0":
            total += json.loads(stage.read_text())["seconds"]
    final = run_dir / "final_eval" / "stage.json"
    return total + (json.loads(final.read_text())["seconds"] if final.is_file() else 0.0)


def variant_row(name: str, run_dir: Path, overrides: list[str]) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = {(r["agent"], r["kind"], r["prm"], r["n"]): r for r in summary["rows"]}
    policy = rows[("pi_1", "policy", None, 1)]
    policies = {key[0]: {k: r[k] for k in ("success", "ci95", "episodes")} for key, r in rows.items()
                if key[1] == "policy"}
    bon = [r for key, r in rows.items() if key[0] != "pi_0" and key[1] == "bon"]
    monitor = {}
    dpo = run_dir / "iter_1" / "policy" / "dpo_summary.json"
    if dpo.is_file() and "monitor" in json.loads(dpo.read_text()):
        m = json.loads(dpo.read_text())["monitor"]
        monitor = {"readings": len(m["readings"]), "selected_step": m["selected_step"],
                   "hacking_warnings": m["hacking_warnings"]}
    return {"variant": name, "overrides": overrides, "pi_1": {k: policy[k] for k in ("success", "ci95", "episodes")},
            "policies": policies,
            "bon": [{k: r[k] for k in ("agent", "prm", "n", "success", "ci95")} for r in bon],
            **rollout_steps(run_dir), "monitor": monitor, "prm": prm_diagnostics(run_dir),
            "seconds": own_seconds(run_dir)}


PRM_KEYS = ("same_state_pairs", "same_state_pair_accuracy", "step_auc",  # outcome-trained PRMs (validation.json)
            "balanced_accuracy", "expert_auc")  # InversePRM's expert-vs-learner classifier (prm_summary.json)


def prm_diagnostics(run_dir: Path) -> dict[str, dict]:
    """Per PRM Q_j (``iter_<j+1>/prm``): how well it ranks actions at one state on held-out games, or for InversePRM
    how well it separates held-out expert from learner transitions."""
    found = {}
    for folder in sorted(run_dir.glob("iter_*/prm")):
        values = {}
        for name in ("validation.json", "prm_summary.json"):
            if (folder / name).is_file():
                values.update({k: v for k, v in json.loads((folder / name).read_text()).items() if k in PRM_KEYS})
        found[f"Q_{int(folder.parent.name.split('_')[1]) - 1}"] = values
    return found


def percent(p: dict) -> str:
    return f"{100 * p['success']:.1f} [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}]"


def bon_cell(rows: list[dict], agent: str) -> str:
    """The N = 8 Best-of-N successes of ``agent``, one per PRM."""
    return ", ".join(f"{b['prm']}: {100 * b['success']:.1f}" for b in rows if b["agent"] == agent and b["n"] == 8)


def markdown_table(report: dict) -> str:
    """The ablation table as Markdown: one row per variant and policy it trained."""
    lines = ["| variant | policy | success % [95% CI] | BoN(policy, PRM, N=8) | PRM diagnostic | rollout env steps "
             "| own stages |", "|---|---|---|---|---|---|---|"]
    lines.append(f"| base (SFT on the demonstrations) | pi_0 | {percent(report['pi_0'])} | "
                 f"{bon_cell(report.get('pi_0_bon', []), 'pi_0')} | | 0 | |")
    for row in report["variants"]:
        if "error" in row:
            lines.append(f"| {row['variant']} | | failed: {row['error']} | | | | |")
            continue
        for agent, p in row["policies"].items():
            if agent == "pi_0":
                continue
            k = int(agent.split("_")[1])
            steps = sum(row.get("env_steps_by_iteration", {}).get(f"iter_{i}", 0) for i in range(1, k + 1))
            lines.append(f"| {row['variant']} | {agent} | {percent(p)} | {bon_cell(row['bon'], agent)} | "
                         f"{diagnostic(row.get('prm', {}).get(f'Q_{k - 1}', {}))} | {steps or row['env_steps']:,} | "
                         f"{row['seconds']:,.0f} s |")
    return "\n".join(lines)


def diagnostic(values: dict) -> str:
    if "expert_auc" in values:
        return f"expert AUC {values['expert_auc']:.2f}, balanced acc. {values['balanced_accuracy']:.2f}"
    if values.get("same_state_pairs") and values.get("same_state_pair_accuracy") is not None:
        auc = values.get("step_auc")
        return (f"same-state pairs {100 * values['same_state_pair_accuracy']:.0f}% of {values['same_state_pairs']}"
                + (f", step AUC {auc:.2f}" if auc is not None else ""))
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--out", type=Path, help="folder for the run directories (required unless --table)")
    parser.add_argument("--base-overrides", nargs="*", default=[])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/ablations.json"))
    parser.add_argument("--table", type=Path, help="print the Markdown table of a results file and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    if args.out is None:
        parser.error("--out is required (the folder for the run directories)")

    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / "base"
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if (base / "summary.json").is_file():  # a finished base is reused as it is (a rerun adds variants)
        print(f"base run: {base} is complete", flush=True)
    else:
        print(f"base run: {run(args.config, base, args.base_overrides):.0f} s", flush=True)
    base_rows = json.loads((base / "summary.json").read_text())["rows"]
    pi_0 = base_rows[0]
    pi_0_bon = [{k: r[k] for k in ("agent", "prm", "n", "success", "ci95")} for r in base_rows
                if r["agent"] == "pi_0" and r["kind"] == "bon"]
    results = []
    for name in args.variants.split(","):
        overrides = VARIANTS[name]
        target = args.out / name
        if not (target / "summary.json").is_file():
            target.mkdir(exist_ok=True)
            for stage in SHARED_STAGES:
                if (base / stage).exists() and not (target / stage).exists():
                    shutil.copytree(base / stage, target / stage,
                                    ignore=shutil.ignore_patterns("eval") if stage == "iter_0" else None)
            first = args.out / REUSE.get(name, "") / "iter_1"
            if name in REUSE and (first / "eval").is_dir() and not (target / "iter_1").exists():
                shutil.copytree(first, target / "iter_1")
            if (base / "iter_0" / "eval").is_dir() and not (target / "iter_0" / "eval").exists():
                shutil.copytree(base / "iter_0" / "eval", target / "iter_0" / "eval")
            try:
                run(args.config, target, args.base_overrides + overrides)
            except RuntimeError as error:  # a variant that cannot run is a row too, with its reason
                log = (args.out / f"{name}.log").read_text().strip().splitlines()
                results.append({"variant": name, "overrides": overrides, "error": log[-1] if log else str(error)})
                print(f"{name:22s} failed: {results[-1]['error']}", flush=True)
                continue
        row = variant_row(name, target, overrides)
        results.append(row)
        shown = "  ".join(f"{agent} {100 * p['success']:5.1f}% [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}]"
                          for agent, p in row["policies"].items() if agent != "pi_0")
        print(f"{name:26s} {shown}  env steps {row['env_steps']:6d}  {row['seconds']:5.0f} s", flush=True)
    report = {"command": " ".join(["python", "benchmarks/ablations.py", *sys.argv[1:]]), "started": started,
              "machine": machine_info(("agentprm", "torch", "transformers", "alfworld")),
              "load_average_end": load_average(), "config": args.config,
              "base_overrides": args.base_overrides, "pi_0": {k: pi_0[k] for k in ("success", "ci95", "episodes")},
              "pi_0_bon": pi_0_bon,
              "variants": results}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(report))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
