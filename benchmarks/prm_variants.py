"""PRM variants at equal environment steps, graded against ground-truth Q (``prm_oracle.py``).

Every variant starts from the same base run (its games, demonstrations and pi_0, copied) and builds only iteration
1's rollouts, targets and PRM with its own overrides (``agentprm rollout / targets / train-prm RUN --iteration 1``);
variants with the same rollout settings share one rollout stage (copied from the first that built it). Then every
PRM, and the policy's own log-probability, is graded on one states file of held-out games:

    PYTHONPATH=src python benchmarks/prm_variants.py --base RUN --out /tmp/prm_variants \\
        --states /tmp/oracle_states.json --results benchmarks/results/prm_oracle.json [--variants a b ...]

Reported per variant: the rollouts' episodes and environment steps (policy-chosen and replayed apart), the
targets' states and multi-action states, the PRM's own validation diagnostics, its training time, and the oracle
grade (printed by ``prm_oracle.py grade``, merged into ``--results``).

``--prm-init LABEL=MODEL`` also trains each variant's PRM from another initial model (for instance a larger
preset's pi_0, SFT on the same demonstrations) on the SAME rollouts and targets, in ``OUT/VARIANT@LABEL``: the
capacity test, PRM size apart from data. The rollouts, and so the ground truth's policy, stay the base's pi_0;
only the PRM's initialisation (for the implicit PRM also its reference pi_ref) changes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BRANCHING = ["rollouts.episodes_per_game=1", "rollouts.branch_states=1", "rollouts.branch_actions=3",
             "rollouts.branch_continuations=1"]
SCALAR = ["prm.kind=scalar"]  # explicit: a base config may default to the implicit PRM
VARIANTS: dict[str, list[str]] = {
    "prefix_bce": SCALAR + ["targets.key=prefix", "prm.loss=soft_bce"],
    "state_bce": SCALAR + ["targets.key=state", "prm.loss=soft_bce"],
    "state_listwise": SCALAR + ["targets.key=state", "prm.loss=soft_bce+listwise"],
    "implicit": ["prm.kind=implicit"],
    "branch_prefix_bce": BRANCHING + SCALAR + ["targets.key=prefix", "prm.loss=soft_bce"],
    "branch_state_listwise": BRANCHING + SCALAR + ["targets.key=state", "prm.loss=soft_bce+listwise"],
    "branch_implicit": BRANCHING + ["prm.kind=implicit"],
}
SHARED = ("games", "demos", "model_init", "iter_0")
STAGES = ("rollout", "targets", "train-prm")


def rollout_key(overrides: list[str]) -> tuple[str, ...]:
    return tuple(sorted(o for o in overrides if o.startswith("rollouts.")))


def copy_base(base: Path, folder: Path, overrides: list[str], shared: tuple[str, ...], copy_function=shutil.copy2
              ) -> None:
    """A variant's run folder: the base's config with ``iterations=1`` and the overrides (validated), and the
    base's finished stages ``shared`` (paths under the run folder) copied with ``copy_function`` (``os.link``: hard
    links, for stages no variant rewrites)."""
    import yaml

    from agentprm.config import load_config, to_dict
    from agentprm.pipeline.run_config import RunConfig

    config = load_config(RunConfig, base / "config.yaml", ["iterations=1", *overrides])
    config.validate()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=True))
    for name in shared:
        if not (folder / name).exists():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(base / name, folder / name, symlinks=True, copy_function=copy_function)


def prepare(base: Path, folder: Path, overrides: list[str], donor: Path | None) -> None:
    """The variant's run folder (:func:`copy_base`) and the donor's rollouts when a variant with the same rollout
    settings built them already."""
    copy_base(base, folder, overrides, SHARED)
    if donor is not None and not (folder / "iter_1" / "rollouts").exists():
        shutil.copytree(donor / "iter_1" / "rollouts", folder / "iter_1" / "rollouts")


def prepare_with_init(source: Path, folder: Path, init: Path) -> None:
    """``folder``: the finished variant ``source`` (config, shared stages, iteration 1's rollouts and targets, hard
    links) with ``init`` in place of pi_0, so that its ``train-prm`` starts from ``init``; nothing of ``source``
    is modified (hard-linked files are only read)."""
    if not (init / "config.json").is_file():
        raise SystemExit(f"--prm-init: {init} is not a model folder (no config.json)")
    if (folder / "iter_1" / "prm").is_dir():
        return
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "config.yaml", folder / "config.yaml")
    for name in (*SHARED, "iter_1/rollouts", "iter_1/targets"):
        target = folder / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source / name, target, symlinks=True, copy_function=os.link)
    policy = folder / "iter_0" / "policy" / "model"
    shutil.rmtree(policy)
    shutil.copytree(init, policy, copy_function=os.link)


def run_stages(folder: Path) -> float:
    start = time.perf_counter()
    for stage in STAGES:
        if (folder / "iter_1" / {"rollout": "rollouts", "targets": "targets", "train-prm": "prm"}[stage]).is_dir():
            continue
        command = [sys.executable, "-m", "agentprm.cli", stage, str(folder), "--iteration", "1"]
        done = subprocess.run(command, capture_output=True, text=True)
        (folder / f"{stage}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed; see {folder / (stage + '.log')}")
    return time.perf_counter() - start


def rollout_counts(folder: Path) -> dict:
    """Episodes and environment steps of iteration 1's rollouts, policy-chosen and replayed apart."""
    episodes = chosen = replayed = 0
    for shard in sorted((folder / "iter_1" / "rollouts").glob("shard_*.jsonl")):
        for line in shard.read_text().splitlines():
            steps = json.loads(line)["steps"]
            episodes += 1
            flagged = sum(1 for s in steps if s.get("extras", {}).get("branch_prefix") or s.get("extras", {}).get("reset"))
            replayed += flagged
            chosen += len(steps) - flagged
    return {"episodes": episodes, "policy_steps": chosen, "replayed_steps": replayed, "env_steps": chosen + replayed}


def variant_row(name: str, folder: Path, overrides: list[str], seconds: float) -> dict:
    iteration = folder / "iter_1"
    targets = json.loads((iteration / "targets" / "targets.json").read_text())
    validation = json.loads((iteration / "prm" / "validation.json").read_text())
    summary = json.loads((iteration / "prm" / "prm_summary.json").read_text())
    return {"variant": name, "overrides": overrides, **rollout_counts(folder),
            "targets": {k: targets.get(k) for k in ("keys", "states", "multi_action_states", "key")},
            "validation": {k: validation.get(k) for k in ("same_state_pairs", "same_state_pair_accuracy",
                                                          "step_auc", "bce")},
            "prm_seconds": summary.get("seconds"), "stages_seconds": seconds,
            "prm": str(iteration / "prm" / "model")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="base run directory (games, demos, pi_0)")
    parser.add_argument("--out", required=True, help="folder of the variants' run directories")
    parser.add_argument("--states", required=True, help="oracle states file (prm_oracle.py estimate)")
    parser.add_argument("--results", default="", help="JSON to merge the grades into (prm_oracle.py grade)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--chosen", default="", help="the variant the configs use")
    parser.add_argument("--prm-init", default="", metavar="LABEL=MODEL",
                        help="also train every variant's PRM from MODEL on the same rollouts (OUT/VARIANT@LABEL)")
    args = parser.parse_args()
    init_label, _, init_model = args.prm_init.partition("=")
    if args.prm_init and not (init_label and init_model):
        raise SystemExit(f"--prm-init must be LABEL=MODEL, got {args.prm_init!r}")
    base, out = Path(args.base), Path(args.out)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    rows, donors = [], {}
    for name in args.variants:
        folder = out / name
        key = rollout_key(VARIANTS[name])
        prepare(base, folder, VARIANTS[name], donors.get(key))
        seconds = run_stages(folder)
        donors.setdefault(key, folder)
        rows.append(variant_row(name, folder, VARIANTS[name], seconds))
        print(json.dumps(rows[-1]), flush=True)
        if init_model:
            other = out / f"{name}@{init_label}"
            prepare_with_init(folder, other, Path(init_model))
            seconds = run_stages(other)
            rows.append({**variant_row(f"{name}@{init_label}", other, VARIANTS[name], seconds),
                         "prm_init": init_model})
            print(json.dumps(rows[-1]), flush=True)
    (out / "variants.json").write_text(json.dumps(rows, indent=2) + "\n")
    here = Path(__file__).parent
    command = [sys.executable, str(here / "prm_oracle.py"), "grade", args.states,
               *[f"--prm={row['variant']}={row['prm']}" for row in rows]]
    if args.results:
        command += ["--results", args.results]
    if args.chosen:
        command += ["--chosen", args.chosen]
    subprocess.run(command, check=True)
    if args.results:
        results = json.loads(Path(args.results).read_text())
        results["variants"] = {**results.get("variants", {}), **{row["variant"]: row for row in rows}}
        Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
