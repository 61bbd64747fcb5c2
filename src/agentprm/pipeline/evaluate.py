"""Play a fixed list of games with any runner policy and tabulate success (the evaluation protocol's core).

Every agent compared is run on the same games with the same step budget (default 30 actions, as in the paper);
episodes are optionally written as trajectory records. ``random`` is the random-admissible baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from agentprm.data import TrajectoryWriter
from agentprm.envs.base import Game
from agentprm.envs.runner import EnvPool, EpisodeResult, Policy, run_episodes
from agentprm.pipeline.episodes import episode_record
from agentprm.pipeline.results import SuccessTable, wilson_interval


@dataclass
class Evaluation:
    table: SuccessTable
    results: list[EpisodeResult]
    seconds: float
    agent_steps: int

    @property
    def success(self) -> float:
        return self.table.success()

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(*self.table.counts())

    @property
    def steps_per_second(self) -> float:
        return self.agent_steps / self.seconds if self.seconds > 0 else 0.0


def evaluate_policy(
    env_name: str,
    games: list[Game],
    policy: Policy,
    policy_id: str,
    max_steps: int = 30,
    num_envs: int = 16,
    workers: int = 0,
    records: str | Path | None = None,
    seed: int = 0,
) -> Evaluation:
    """Play every game once with ``policy``; return the success table and the episodes."""
    table = SuccessTable()
    writer = TrajectoryWriter(records) if records else None

    def on_episode(result: EpisodeResult) -> None:
        table.add(result.game.split, result.game.task_type, result.won, result.steps)
        if writer is not None:
            writer.write(episode_record(result, env_name, policy_id, seed))

    start = time.perf_counter()
    try:
        with EnvPool(env_name, min(num_envs, max(1, len(games))), workers=workers) as pool:
            results = run_episodes(pool, games, policy, max_steps, on_episode=on_episode)
    finally:
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - start
    return Evaluation(table, results, seconds, sum(r.steps for r in results))
