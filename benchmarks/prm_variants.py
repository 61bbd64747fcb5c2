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

``--undemonstrated-games N`` enables the ``undemo_*`` variants: their rollouts play N training games that have no
demonstration (pi_0 was not fitted to them, as it was not fitted to the held-out games the PRM is graded on). The
variant's pool is the base's training games plus the next N of the same seed (a game is a function of seed, split
and index, so the base's games are the new pool's first ones; checked), with the base's demonstrations and pi_0
kept and ``rollouts.exclude_demo_games`` set. ``undemo_*`` plays ``rollouts.games`` of them (the base's episode
count); ``undemo_wide_*`` all N once each (the same episode count when N = rollouts.games x episodes_per_game);
``undemo_all_*`` all N, ``rollouts.episodes_per_game`` each. ``all_*``: the base's whole pool, every game
``episodes_per_game`` times (the data-volume test on the base's own games).
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
# The ground truth's own quantity on training games: one episode of pi_0 per game at its evaluation temperature
# (0.3, so the states are those it visits when evaluated), and at 3 of its states the 3 most likely actions (distinct
# draws at T = 0.3) each continued once at T = 0.3: the targets estimate Q^{pi_0 @ 0.3}, as the oracle does.
EVAL_BRANCHING = ["rollouts.episodes_per_game=1", "rollouts.temperature=0.3", "rollouts.branch_states=3",
                  "rollouts.branch_actions=3", "rollouts.branch_continuations=1"]
SCALAR = ["prm.kind=scalar"]  # explicit: a base config may default to the implicit PRM
RESIDUAL = ["prm.kind=residual"]
UNDEMONSTRATED = "<undemonstrated games>"  # resolved by undemonstrated_overrides from the base and N
WIDE = ["rollouts.games=0", "rollouts.episodes_per_game=1"]
VARIANTS: dict[str, list[str]] = {
    "prefix_bce": SCALAR + ["targets.key=prefix", "prm.loss=soft_bce"],
    "state_bce": SCALAR + ["targets.key=state", "prm.loss=soft_bce"],
    "state_listwise": SCALAR + ["targets.key=state", "prm.loss=soft_bce+listwise"],
    # for a base with prompt.show_visited: pool by the true state and the places visited (what its prompt shows)
    "visited_bce": SCALAR + ["targets.key=state_visited", "prm.loss=soft_bce"],
    "visited_listwise": SCALAR + ["targets.key=state_visited", "prm.loss=soft_bce+listwise"],
    "implicit": ["prm.kind=implicit"],
    "implicit_mean": ["prm.kind=implicit", "prm.outcome=mean_bias"],  # b + mean_t z: no length bias
    "branch_prefix_bce": BRANCHING + SCALAR + ["targets.key=prefix", "prm.loss=soft_bce"],
    "branch_state_listwise": BRANCHING + SCALAR + ["targets.key=state", "prm.loss=soft_bce+listwise"],
    "branch_implicit": BRANCHING + ["prm.kind=implicit"],
    "undemo_implicit": [UNDEMONSTRATED, "prm.kind=implicit"],
    "undemo_state_bce": [UNDEMONSTRATED] + SCALAR + ["targets.key=state", "prm.loss=soft_bce"],
    "undemo_wide_implicit": [UNDEMONSTRATED] + WIDE + ["prm.kind=implicit"],
    "undemo_wide_state_bce": [UNDEMONSTRATED] + WIDE + SCALAR + ["targets.key=state", "prm.loss=soft_bce"],
    # data volume: every game of the pool, rollouts.episodes_per_game each (800 games x 4 = 4x the base's episodes)
    "all_implicit": ["rollouts.games=0", "prm.kind=implicit"],
    "all_state_bce": ["rollouts.games=0"] + SCALAR + ["targets.key=state", "prm.loss=soft_bce"],
    "undemo_all_implicit": [UNDEMONSTRATED, "rollouts.games=0", "prm.kind=implicit"],
    "undemo_all_state_bce": [UNDEMONSTRATED, "rollouts.games=0"] + SCALAR + ["targets.key=state", "prm.loss=soft_bce"],
    "undemo_all_state_listwise": [UNDEMONSTRATED, "rollouts.games=0"] + SCALAR
    + ["targets.key=state", "prm.loss=soft_bce+listwise"],  # the within-state loss where multi-action states abound
    # the head sees w log pi_ref(a|s): it starts at the policy's ranking and learns a correction (residual_prm.py)
    "state_residual": RESIDUAL + ["targets.key=state", "prm.loss=soft_bce"],
    "undemo_all_state_residual": [UNDEMONSTRATED, "rollouts.games=0"] + RESIDUAL
    + ["targets.key=state", "prm.loss=soft_bce"],
    "undemo_all_state_residual_listwise": [UNDEMONSTRATED, "rollouts.games=0"] + RESIDUAL
    + ["targets.key=state", "prm.loss=soft_bce+listwise"],
    # w0 = 0.1: log pi's spread within a state (several nats) no longer swamps what the head can learn in one epoch
    "state_residual_0.1": RESIDUAL + ["prm.policy_weight=0.1", "targets.key=state", "prm.loss=soft_bce"],
    "undemo_all_state_residual_0.1": [UNDEMONSTRATED, "rollouts.games=0"] + RESIDUAL
    + ["prm.policy_weight=0.1", "targets.key=state", "prm.loss=soft_bce"],
    "undemo_evalbranch_state_bce": [UNDEMONSTRATED, "rollouts.games=0"] + EVAL_BRANCHING + SCALAR
    + ["targets.key=state", "prm.loss=soft_bce"],
    "undemo_evalbranch_state_listwise": [UNDEMONSTRATED, "rollouts.games=0"] + EVAL_BRANCHING + SCALAR
    + ["targets.key=state", "prm.loss=soft_bce+listwise"],
}
SHARED = ("games", "demos", "model_init", "iter_0")
STAGES = ("rollout", "targets", "train-prm")


def rollout_key(overrides: list[str]) -> tuple[str, ...]:
    """What a variant's rollouts depend on: its rollout settings and the game pool (games.*, demos.*)."""
    return tuple(sorted(o for o in overrides if o.startswith(("rollouts.", "games.", "demos."))))


def undemonstrated_overrides(overrides: list[str], base: Path, extra_games: int) -> list[str]:
    """``overrides`` with the UNDEMONSTRATED marker replaced by a pool of the base's training games plus
    ``extra_games`` more, the base's demonstrations counted as ``demos.count`` and ``rollouts.exclude_demo_games``
    on (the pool then holds exactly the new games: ``run_stages.rollout_pool`` reads the demos records)."""
    if UNDEMONSTRATED not in overrides:
        return list(overrides)
    if extra_games < 1:
        raise SystemExit("the undemo_* variants need --undemonstrated-games N (N >= 1 training games to add)")
    from agentprm.config import load_config
    from agentprm.data import count_episodes
    from agentprm.pipeline.run_config import RunConfig

    config = load_config(RunConfig, base / "config.yaml")
    demonstrated = count_episodes(base / "demos" / "demos.jsonl")
    if demonstrated < 1:
        raise SystemExit(f"{base / 'demos' / 'demos.jsonl'} holds no demonstrations")
    rest = [o for o in overrides if o != UNDEMONSTRATED]
    return [f"games.train={config.games.train + extra_games}", f"demos.count={demonstrated}",
            "rollouts.exclude_demo_games=true", *rest]


def games_donor(donors: dict[tuple[str, ...], Path], key: tuple[str, ...]) -> Path | None:
    """A finished variant whose game pool (its ``games.*`` overrides) is ``key``'s, if there is one."""
    pool = [o for o in key if o.startswith("games.")]
    if not pool:
        return None
    return next((folder for other, folder in donors.items() if [o for o in other if o.startswith("games.")] == pool),
                None)


def build_games(base: Path, folder: Path, donor: Path | None) -> None:
    """The variant's own games stage (its ``games.*`` differ from the base's): hard links to ``donor``'s when a
    variant with the same pool built it, else generated; then checked to extend the base's, so that the base's
    demonstrations, pi_0 and the held-out games (valid_seen, valid_unseen) stay what they were."""
    from agentprm.config import load_config
    from agentprm.pipeline.run import RunContext
    from agentprm.pipeline.run_config import RunConfig
    from agentprm.pipeline.run_stages import generate
    from agentprm.pipeline.stages import run_stage

    if not (folder / "games").is_dir():
        if donor is not None:
            shutil.copytree(donor / "games", folder / "games", symlinks=True, copy_function=os.link)
        else:
            ctx = RunContext(load_config(RunConfig, folder / "config.yaml"), folder)
            run_stage(folder / "games", lambda out: generate(ctx, out))
    check_games_extend(base, folder)


def check_games_extend(base: Path, folder: Path) -> None:
    """Raise unless ``folder``'s training games include every one of ``base``'s and its held-out splits are the
    base's."""
    from agentprm.config import load_config
    from agentprm.pipeline.run import RunContext
    from agentprm.pipeline.run_config import RunConfig

    old, new = (RunContext(load_config(RunConfig, run / "config.yaml"), run) for run in (base, folder))

    def ids(ctx: RunContext, split: str) -> set[str]:
        return {g.game_id for g in ctx.games(split)}

    missing = ids(old, "train") - ids(new, "train")
    if missing:
        raise SystemExit(f"{folder / 'games'} lacks {len(missing)} of the base's training games "
                         f"(e.g. {sorted(missing)[0]}): not the same seed and generator?")
    for split in ("seen", "unseen"):
        if ids(old, split) != ids(new, split):
            raise SystemExit(f"{folder / 'games'}: the {split} games differ from the base's")


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


def prepare(base: Path, folder: Path, overrides: list[str], donor: Path | None, games_donor: Path | None = None
            ) -> None:
    """The variant's run folder (:func:`copy_base`; its own games stage when it changes ``games.*``, from
    ``games_donor`` when a variant with the same pool built it) and the donor's rollouts when a variant with the
    same rollout settings built them already."""
    own_games = any(o.startswith("games.") for o in overrides)
    copy_base(base, folder, overrides, tuple(n for n in SHARED if not (own_games and n == "games")))
    if own_games:
        build_games(base, folder, games_donor)
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
    parser.add_argument("--states", default="", help="oracle states file (prm_oracle.py estimate); without it the "
                        "variants are built and listed but not graded")
    parser.add_argument("--results", default="", help="JSON to merge the grades into (prm_oracle.py grade)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--chosen", default="", help="the variant the configs use")
    parser.add_argument("--prm-init", default="", metavar="LABEL=MODEL",
                        help="also train every variant's PRM from MODEL on the same rollouts (OUT/VARIANT@LABEL)")
    parser.add_argument("--undemonstrated-games", type=int, default=0, metavar="N",
                        help="the undemo_* variants' pool: N training games beyond the base's, none demonstrated")
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
        overrides = undemonstrated_overrides(VARIANTS[name], base, args.undemonstrated_games)
        key = rollout_key(overrides)
        prepare(base, folder, overrides, donors.get(key), games_donor(donors, key))
        seconds = run_stages(folder)
        donors.setdefault(key, folder)
        rows.append(variant_row(name, folder, overrides, seconds))
        print(json.dumps(rows[-1]), flush=True)
        if init_model:
            other = out / f"{name}@{init_label}"
            prepare_with_init(folder, other, Path(init_model))
            seconds = run_stages(other)
            rows.append({**variant_row(f"{name}@{init_label}", other, overrides, seconds),
                         "prm_init": init_model})
            print(json.dumps(rows[-1]), flush=True)
    (out / "variants.json").write_text(json.dumps(rows, indent=2) + "\n")
    if not args.states:
        return
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
