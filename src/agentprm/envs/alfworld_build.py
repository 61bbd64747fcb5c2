"""Build a verified ALFWorld game set: sample, render, check solvable by the handcoded expert, write, manifest.

Game ``i`` of split ``s`` is drawn from ``random.Random(f"{seed}/{s}/{i}/{attempt}")``: it depends on nothing else,
so the same seed gives byte-identical files whatever the number of worker processes. A candidate the handcoded
expert does not solve within ``max_expert_steps`` is replaced by the next attempt; the manifest counts replacements
per split so that the filter's effect is visible. The expert is not deterministic (it picks a random admissible
action to break a loop): its stream is seeded with ``EXPERT_SEED``, the default of ``AlfworldEnv`` and so of the
demonstrations, so "solvable" means "solved by the expert as the demonstrations run it". Pick-two games are the
ones it fails most.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from agentprm.envs.alfworld import DATA_SUBDIR, AlfworldEnv, run_expert, validate_task_types
from agentprm.envs.alfworld_assets import alfworld_version, assets
from agentprm.envs.alfworld_gen import DEFAULT_MAX_RECEPTACLES, SPLITS, render_game, sample_spec
from agentprm.envs.base import EnvError, Game

MAX_ATTEMPTS = 200
EXPERT_SEED = 0
"""The handcoded expert breaks loops with ``random``; games are checked, and demonstrations recorded, with this seed."""
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BuildJob:
    seed: int
    split: str
    index: int
    task_type: str
    max_receptacles: int
    max_expert_steps: int


@dataclass
class BuiltGame:
    job: BuildJob
    folder: str  # relative to <out>/json_2.1.1
    files: dict[str, str]
    expert_steps: int
    rejected: int  # candidates the expert failed before this one


def _scenes(split: str) -> tuple[int, ...]:
    a = assets()
    return a.test_scenes if split == "valid_unseen" else a.train_scenes


_worker_env: AlfworldEnv | None = None


def _expert_env() -> AlfworldEnv:
    global _worker_env
    if _worker_env is None:
        _worker_env = AlfworldEnv(expert="handcoded", expert_seed=EXPERT_SEED)
    return _worker_env


def build_one(job: BuildJob) -> BuiltGame:
    """Sample candidates for one game slot until the handcoded expert solves one."""
    a = assets()
    rejected = 0
    with tempfile.TemporaryDirectory(prefix="agentprm-game-") as scratch:
        for attempt in range(MAX_ATTEMPTS):
            rng = random.Random(f"{job.seed}/{job.split}/{job.index}/{attempt}")
            spec = sample_spec(a, rng, rng.choice(_scenes(job.split)), job.task_type, job.max_receptacles)
            if spec is None:  # this room cannot host the task type: draw another room, not an expert failure
                continue
            game_text, traj_text, _ = render_game(a, spec)
            trial = Path(scratch) / f"attempt_{attempt}"
            trial.mkdir()
            (trial / "game.tw-pddl").write_text(game_text)
            (trial / "traj_data.json").write_text(traj_text)
            game = Game("alfworld", trial.name, str(trial / "game.tw-pddl"), job.split, job.task_type)
            won, commands = run_expert(_expert_env(), game, job.max_expert_steps)
            if won:
                folder = f"{job.split}/{spec.folder_name()}/trial_s{job.seed}_{job.index:05d}"
                files = {"game.tw-pddl": game_text, "traj_data.json": traj_text}
                return BuiltGame(job, folder, files, len(commands), rejected)
            rejected += 1
    raise EnvError(f"No solvable {job.task_type} game found for {job.split} #{job.index} in {MAX_ATTEMPTS} draws")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def generate_games(
    out: str | os.PathLike,
    seed: int = 0,
    counts: dict[str, int] | None = None,
    task_types=None,
    max_receptacles: int = DEFAULT_MAX_RECEPTACLES,
    max_expert_steps: int = 50,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Write ``counts[split]`` verified games per split under ``out/json_2.1.1`` and return the manifest.

    Task types are dealt round-robin within each split, so every type gets ``n // 6`` or one more games.
    """
    task_types = validate_task_types(task_types)
    counts = counts or {"train": 12, "valid_seen": 6, "valid_unseen": 6}
    unknown = [s for s in counts if s not in SPLITS]
    if unknown:
        raise EnvError(f"Unknown split(s) {unknown}; expected some of {list(SPLITS)}")
    jobs = [BuildJob(seed, split, i, task_types[i % len(task_types)], max_receptacles, max_expert_steps)
            for split in SPLITS for i in range(counts.get(split, 0))]

    root = Path(out) / DATA_SUBDIR
    for split in counts:
        if (root / split).exists():
            shutil.rmtree(root / split)  # a rebuild replaces a split whole: no stale games from another seed
    results: list[BuiltGame] = []
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            iterator = pool.imap(build_one, jobs)
            results = list(tqdm(iterator, total=len(jobs), desc="games", disable=not progress))
    else:
        results = [build_one(job) for job in tqdm(jobs, desc="games", disable=not progress)]

    for built in results:
        folder = root / built.folder
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in built.files.items():
            _write_atomic(folder / name, text)

    manifest = _manifest(seed, counts, task_types, max_receptacles, max_expert_steps, results)
    _write_atomic(Path(out) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _manifest(seed, counts, task_types, max_receptacles, max_expert_steps, results: list[BuiltGame]) -> dict:
    by_split: dict[str, Counter] = {split: Counter() for split in counts}
    rejected: Counter = Counter()
    steps: dict[str, list[int]] = {split: [] for split in counts}
    for built in results:
        by_split[built.job.split][built.job.task_type] += 1
        rejected[built.job.split] += built.rejected
        steps[built.job.split].append(built.expert_steps)
    return {
        "env": "alfworld",
        "alfworld_version": alfworld_version(),
        "generator": "agentprm.envs.alfworld_gen",
        "seed": seed,
        "task_types": list(task_types),
        "max_receptacles": max_receptacles,
        "max_expert_steps": max_expert_steps,
        "counts": {split: dict(sorted(c.items())) for split, c in by_split.items()},
        "totals": {split: sum(c.values()) for split, c in by_split.items()},
        "expert_rejected_candidates": {split: rejected[split] for split in counts},
        "expert_mean_steps": {split: (sum(s) / len(s) if s else 0.0) for split, s in steps.items()},
        "unseen_floor_plans_held_out": True,
    }


def read_manifest(out: str | os.PathLike) -> dict:
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise EnvError(f"No game manifest at {path}: run `agentprm games alfworld --out {out}`")
    return json.loads(path.read_text())
