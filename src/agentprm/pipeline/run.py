"""``agentprm run``: games -> demonstrations -> initial model -> SFT pi_0 -> K AgentPRM iterations -> report.

Iteration i (1..K), as Algorithm 1 of the paper, with the paper's naming (Q_{i-1} is learned from pi_{i-1}):

    iter_i/rollouts   pi_{i-1} plays every training game ``episodes_per_game`` times
    iter_i/targets    Monte Carlo Q targets over the prefix tree (Parquet) + histogram
    iter_i/prm        Q_{i-1}: PRM initialised from pi_{i-1}, soft BCE on the targets
    iter_i/policy     pi_i: online DPO against Q_{i-1} with reference pi_{i-1}
    iter_i/eval       BoN(pi_{i-1}, Q_{i-1}), pi_i, BoN(pi_i, Q_{i-1}) on the fixed evaluation games

With ``algorithm: inverse_prm`` the targets stage builds InversePRM's expert-vs-learner transitions instead
(``run_stages.inverse_targets``, no outcome reward read) and the PRM stage fits Eq. 9 on them. With
``algorithm: rft`` or ``trajectory_dpo`` (outcome-only baselines) an iteration is rollouts, a policy step on the
episodes' outcomes (SFT on the won ones / DPO on won vs failed trajectories), evaluation.

which yields the rows of the paper's table: pi_0, BoN(pi_0, Q_0), pi_1, BoN(pi_1, Q_0), BoN(pi_1, Q_1), pi_2, ...
After the last iteration, ``final_eval`` measures the Best-of-N curve of the final policy with the last PRM.
Every stage is resumable (``stages.run_stage``); ``summary.json``, ``report.md`` and plots are rebuilt at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from agentprm.config import ConfigError, defaults_dict, to_dict
from agentprm.envs.base import Game
from agentprm.envs.registry import list_games
from agentprm.pipeline.run_config import RunConfig
from agentprm.pipeline.stages import run_stage, write_manifest


class RunContext:
    """Paths and shared objects of one run directory."""

    def __init__(self, config: RunConfig, run_dir: Path, log=print):
        from agentprm.models.device import resolve_device

        self.config, self.dir, self.log = config, run_dir, log
        self._games: dict[str, list[Game]] = {}
        self.device = resolve_device(config.device)  # `device: cuda` without a GPU fails here, before any stage
        self.precision = config.precision

    def load_policy(self, path: Path | str):
        """A policy checkpoint on the run's device, in the run's precision (rollouts, evaluation, monitors)."""
        from agentprm.models.policy import Policy

        return Policy.from_pretrained(path, device=self.device, precision=self.precision)

    def load_prm(self, path: Path | str):
        """A PRM of either kind on the run's device, in the run's precision (scores for the policy step and BoN)."""
        from agentprm.models.implicit_prm import load_prm

        return load_prm(path, device=self.device, precision=self.precision)

    def games(self, split: str) -> list[Game]:
        if split not in self._games:
            c = self.config.games
            root = os.path.expandvars(c.root) if c.root else str(self.dir / "games")
            limit = None
            if c.env == "twx":
                limit = {"train": c.train, "seen": c.seen, "unseen": c.unseen}.get(split, c.unseen)
            games = list_games(c.env, split, root=root, task_types=c.task_types or None, limit=limit,
                               twx_game=c.twx_game, twx_params=c.twx_params, first_seed=c.seed)
            if split == "train" and c.root and c.train:
                games = games[: c.train]
            self._games[split] = games
        return self._games[split]

    def eval_games(self) -> list[Game]:
        games = self.games(self.config.games.eval_split)
        return games[: self.config.games.eval_games] if self.config.games.eval_games else games

    def policy_path(self, iteration: int) -> Path:
        return self.dir / f"iter_{iteration}" / "policy" / "model"

    def prm_path(self, iteration: int) -> Path:
        """Q_{iteration}: learned from pi_{iteration}'s rollouts in iter_{iteration + 1}."""
        return self.dir / f"iter_{iteration + 1}" / "prm" / "model"


def prepare_run_dir(config: RunConfig, run_dir: Path) -> None:
    """Write the resolved config; refuse a run directory whose config differs (its stages would not match) or that
    an incompatible version wrote."""
    from agentprm.pipeline.stages import check_run_format

    check_run_format(run_dir)
    check_out_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump(to_dict(config), sort_keys=True)
    path = run_dir / "config.yaml"
    if path.is_file() and path.read_text() != resolved:
        changed = [key for key in config_changes(yaml.safe_load(path.read_text()) or {}, to_dict(config),
                                                 defaults=defaults_dict(RunConfig))
                   if key.split(" ")[0] != "progress"]
        if changed:
            raise ConfigError(f"{run_dir} was started with a different config (changed: {', '.join(changed)}); "
                             f"use a new --out folder or restore the config")
    path.write_text(resolved)


def check_out_dir(run_dir: Path) -> None:
    """Refuse an ``--out`` that is a file, or a folder (or the nearest existing parent of one) not writable."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a run directory; choose another --out")
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {run_dir}: {existing} is not writable; choose another --out")


def config_changes(old: dict, new: dict, prefix: str = "", defaults: dict | None = None) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, sorted; a key only one side has is marked
    "(new key)" or "(removed key)": a run started by an older version lacks the keys added since, and its finished
    stages ran without them. With ``defaults`` (the resolved default config), a new key still at its default is no
    change: options are added off by default, so the older version behaved as the default does."""
    changes = []
    defaults = defaults or {}
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        if key not in old:
            if key not in defaults or new[key] != defaults[key]:
                changes.append(f"{name} (new key)")
        elif key not in new:
            changes.append(f"{name} (removed key)")
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            nested = defaults.get(key)
            changes.extend(config_changes(old[key], new[key], f"{name}.",
                                          nested if isinstance(nested, dict) else None))
        elif old[key] != new[key]:
            changes.append(name)
    return changes


OUTCOME_ONLY = ("rft", "trajectory_dpo")  # baselines without a PRM: no targets, PRM or Best-of-N stages


@dataclass
class PlannedStage:
    """One stage of a run: its folder (relative name such as ``iter_1/prm``), how to build it, and the
    subcommand that runs it alone (``agentprm <command> RUN --iteration i``; empty: only ``agentprm run``)."""

    name: str
    build: Callable[[Path], None]
    command: str = ""
    iteration: int | None = None


def stage_plan(ctx: RunContext) -> list[PlannedStage]:
    """Every stage of the run in execution order; each reads only the folders of stages before it."""
    from agentprm.pipeline import run_stages as s

    config = ctx.config
    plan = []
    if not config.games.root and config.games.env == "alfworld":
        plan.append(PlannedStage("games", lambda out: s.generate(ctx, out)))
    plan.append(PlannedStage("demos", lambda out: s.demos(ctx, out)))
    if config.rationalise.enabled:
        plan.append(PlannedStage("rationales", lambda out: s.rationales(ctx, out)))
    plan += [PlannedStage("model_init", lambda out: s.init_model(ctx, out)),
             PlannedStage("iter_0/policy", lambda out: s.sft(ctx, out)),
             PlannedStage("iter_0/eval", lambda out: s.evaluate_rows(ctx, out, [("policy", 0, None)]), "eval", 0)]
    inverse = config.algorithm == "inverse_prm"
    targets = s.inverse_targets if inverse else s.targets
    train_prm = s.train_inverse_prm if inverse else s.train_prm
    for i in range(1, config.iterations + 1):
        if config.algorithm in OUTCOME_ONLY:  # no PRM: rollouts, then a policy step on the outcomes
            policy_step = s.rft_policy if config.algorithm == "rft" else s.trajectory_dpo_policy
            plan += [
                PlannedStage(f"iter_{i}/rollouts", lambda out, i=i: s.rollouts(ctx, out, i), "rollout", i),
                PlannedStage(f"iter_{i}/policy", lambda out, i=i, f=policy_step: f(ctx, out, i), "train-policy", i),
                PlannedStage(f"iter_{i}/eval", lambda out, i=i: s.evaluate_rows(ctx, out, [("policy", i, None)]),
                             "eval", i),
            ]
            continue
        rows = [("bon", i - 1, i - 1), ("policy", i, None), ("bon", i, i - 1)]
        plan += [
            PlannedStage(f"iter_{i}/rollouts", lambda out, i=i: s.rollouts(ctx, out, i), "rollout", i),
            PlannedStage(f"iter_{i}/targets", lambda out, i=i: targets(ctx, out, i), "targets", i),
            PlannedStage(f"iter_{i}/prm", lambda out, i=i: train_prm(ctx, out, i), "train-prm", i),
            PlannedStage(f"iter_{i}/policy", lambda out, i=i: s.train_policy(ctx, out, i), "train-policy", i),
            PlannedStage(f"iter_{i}/eval", lambda out, rows=rows: s.evaluate_rows(ctx, out, rows), "eval", i),
        ]
    if config.iterations >= 1 and config.algorithm not in OUTCOME_ONLY:
        plan.append(PlannedStage("final_eval", lambda out: s.bon_curve(ctx, out), "eval", None))
    return plan


def run(config: RunConfig, run_dir: str | Path, log=print) -> dict:
    """Run (or resume) the whole pipeline in ``run_dir``; return the summary."""
    from agentprm.pipeline import run_stages as s

    run_dir = Path(run_dir)
    prepare_run_dir(config, run_dir)
    started = time.time()
    write_manifest(run_dir, config.seed, started, None)
    ctx = RunContext(config, run_dir, log)
    for stage in stage_plan(ctx):
        run_stage(run_dir / stage.name, stage.build, log)
    summary = s.finish(ctx, started)
    write_manifest(run_dir, config.seed, started, time.time())
    return summary


def run_one_stage(run_dir: str | Path, command: str, iteration: int | None, redo: bool = False,
                  log=print) -> Path:
    """Run the stage of an existing run directory that ``agentprm <command> RUN --iteration i`` names (``eval``
    without an iteration: the final Best-of-N curve), with the run's own ``config.yaml``.

    Every stage before it must be complete (each reads its predecessors' folders); a complete stage is kept
    unless ``redo``, which deletes it and builds it again. Stages after it are not touched: after a redo they may
    no longer match it, which the message says.
    """
    from agentprm.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml); start one with `agentprm run`")
    config = load_config(RunConfig, run_dir / "config.yaml")
    plan = stage_plan(RunContext(config, run_dir, log))
    matches = [k for k, stage in enumerate(plan) if stage.command == command and stage.iteration == iteration]
    if not matches:
        known = ", ".join(f"--iteration {stage.iteration}" if stage.iteration is not None else "(no --iteration)"
                          for stage in plan if stage.command == command)
        raise ConfigError(f"`{command}` has no stage for iteration {iteration} in {run_dir} "
                          f"(iterations: {config.iterations}); valid: {known or 'none'}")
    index = matches[0]
    missing = [stage.name for stage in plan[:index] if not (run_dir / stage.name).is_dir()]
    if missing:
        raise ConfigError(f"{plan[index].name} needs the earlier stages first ({', '.join(missing)} not complete): "
                          f"run `agentprm run {run_dir / 'config.yaml'} --out {run_dir}` or their subcommands")
    folder = run_dir / plan[index].name
    if redo and folder.is_dir():
        shutil.rmtree(folder)
        later = [stage.name for stage in plan[index + 1:] if (run_dir / stage.name).is_dir()]
        if later:
            log(f"note: {', '.join(later)} were built from the old {plan[index].name}; redo them too if they "
                f"depend on it")
    return run_stage(folder, plan[index].build, log)


def clean_partial(run_dir: Path) -> list[Path]:
    """Remove every ``.partial`` stage folder (to restart interrupted stages from scratch)."""
    removed = sorted(run_dir.rglob("*.partial"))
    for folder in removed:
        shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
    return removed


def load_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())
