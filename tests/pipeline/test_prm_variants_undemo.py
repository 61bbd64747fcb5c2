"""`benchmarks/prm_variants.py --undemonstrated-games N`: variants whose rollouts play training games beyond the
base's, none of them demonstrated, with the base's demonstrations, pi_0 and held-out games kept."""

import sys
from pathlib import Path

import pytest

from agentprm.data import StepRecord, TrajectoryRecord, TrajectoryWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from prm_variants import (UNDEMONSTRATED, VARIANTS, build_games, check_games_extend, games_donor,  # noqa: E402
                          rollout_key, undemonstrated_overrides)


def run_folder(path: Path, train: int, seed: int = 1, demos: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(f"games:\n  env: alfworld\n  seed: {seed}\n  train: {train}\n  seen: 1\n"
                                      f"  unseen: 1\nworkers: 0\nprogress: false\n")
    if demos:
        step = StepRecord(observation="o", admissible_actions=["look"], response="look", reason="", action="look",
                          admissible=True, reward=1.0, done=True, won=True)
        with TrajectoryWriter(path / "demos" / "demos.jsonl") as writer:
            for k in range(demos):
                writer.write(TrajectoryRecord(env="alfworld", env_version="0.4.2", game_id=f"train/g{k}",
                                              split="train", task="t", task_type="p", policy_id="expert:handcoded",
                                              seed=0, steps=[step], won=True, total_reward=1.0,
                                              final_observation="done"))
    return path


def test_the_marker_becomes_a_grown_pool_the_base_demonstrations_and_the_exclusion(tmp_path):
    base = run_folder(tmp_path / "base", train=8, demos=3)
    assert undemonstrated_overrides([UNDEMONSTRATED, "prm.kind=implicit"], base, 5) == [
        "games.train=13", "demos.count=3", "rollouts.exclude_demo_games=true", "prm.kind=implicit"]
    assert undemonstrated_overrides(["prm.kind=implicit"], base, 0) == ["prm.kind=implicit"]  # no marker: as is
    with pytest.raises(SystemExit, match="--undemonstrated-games"):
        undemonstrated_overrides([UNDEMONSTRATED], base, 0)
    empty = run_folder(tmp_path / "empty", train=8)
    (empty / "demos").mkdir()
    with pytest.raises(SystemExit, match="no demonstrations"):
        undemonstrated_overrides([UNDEMONSTRATED], empty, 5)


def test_every_variant_validates_against_a_base(tmp_path):
    from agentprm.config import load_config
    from agentprm.pipeline.run_config import RunConfig

    base = run_folder(tmp_path / "base", train=8, demos=8)
    for name in VARIANTS:
        overrides = undemonstrated_overrides(VARIANTS[name], base, 4)
        load_config(RunConfig, base / "config.yaml", overrides).validate()


def test_rollouts_are_shared_only_within_one_pool_and_games_across_rollout_settings(tmp_path):
    pool = ["games.train=13", "demos.count=3"]
    four, once = rollout_key(pool + ["prm.kind=implicit"]), rollout_key(pool + ["rollouts.games=0"])
    assert four != once and four != rollout_key(["prm.kind=implicit"])
    assert four == ("demos.count=3", "games.train=13")
    donors = {four: tmp_path / "a"}
    assert games_donor(donors, once) == tmp_path / "a"  # same games, other rollouts: the games are reused
    assert games_donor(donors, rollout_key(["games.train=20"])) is None
    assert games_donor(donors, rollout_key(["prm.kind=implicit"])) is None  # the base's games: copied, not built


def test_grown_games_extend_the_base_and_other_seeds_are_refused(tmp_path):
    """Real games: a game is a function of (seed, split, index), so a pool of 4 holds the base's 2."""
    from agentprm.config import load_config
    from agentprm.pipeline.run import RunContext
    from agentprm.pipeline.run_config import RunConfig
    from agentprm.pipeline.run_stages import generate
    from agentprm.pipeline.stages import run_stage

    base = run_folder(tmp_path / "base", train=2)
    run_stage(base / "games", lambda out: generate(RunContext(load_config(RunConfig, base / "config.yaml"), base),
                                                   out), log=lambda _: None)
    grown = run_folder(tmp_path / "grown", train=4)
    build_games(base, grown, None)
    assert (grown / "games" / "stage.json").is_file()
    copy = run_folder(tmp_path / "copy", train=4)
    build_games(base, copy, grown)  # from a donor: hard links
    some = next(p for p in (grown / "games").rglob("game.tw-pddl"))
    assert (copy / "games" / some.relative_to(grown / "games")).samefile(some)
    other_seed = run_folder(tmp_path / "other_seed", train=3, seed=2)
    with pytest.raises(SystemExit, match="lacks"):
        build_games(base, other_seed, None)
    check_games_extend(base, grown)
