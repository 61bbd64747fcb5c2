"""Rollouts (AgentPRM stage 1): pi_{i-1} plays every training game ``episodes_per_game`` times.

Shard k holds the k-th episode of every game, played with agent seed ``seed + k`` (so two rollouts of a game differ
while the whole stage stays reproducible). A shard is written to ``shard_KKK.jsonl.partial`` and renamed when
complete; a rerun skips complete shards and replays only the shard that was interrupted, so finished work is never
lost and nothing is counted twice.

Every step keeps the sampled response text and its log-probability under the policy (``extras["logprob"]``): the
targets stage keys states by these responses, and nothing is re-tokenised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from agentprm.data import TrajectoryRecord, TrajectoryWriter, read_trajectories
from agentprm.envs.base import Game
from agentprm.envs.runner import EnvPool, EpisodeResult, PolicyInput, run_episodes
from agentprm.models.policy import Sample
from agentprm.pipeline.episodes import episode_record


@dataclass
class SampleRecorder:
    """Wraps an agent that exposes ``last_samples`` and keeps every episode's samples, keyed by game id.

    A game appears once per ``run_episodes`` call, and ``PolicyInput.step == 0`` marks its first turn.
    """

    agent: object
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def __call__(self, batch: list[PolicyInput]) -> list[str]:
        actions = self.agent(batch)
        for item in batch:
            if item.step == 0:
                self.samples[item.game.game_id] = []
            self.samples[item.game.game_id].append(self.agent.last_samples[item.slot])
        return actions

    def pop(self, game_id: str) -> list[Sample]:
        return self.samples.pop(game_id, [])


def rollout_record(result: EpisodeResult, samples: list[Sample], env_name: str, policy_id: str, seed: int,
                   meta: dict) -> TrajectoryRecord:
    return episode_record(
        result, env_name, policy_id, seed, meta,
        responses=[s.text for s in samples],
        extras=[{"logprob": float(s.logprob), "finished": bool(s.finished)} for s in samples],
    )


def collect_rollouts(
    env_name: str,
    games: list[Game],
    make_agent,
    out_dir: str | Path,
    episodes_per_game: int,
    max_steps: int,
    policy_id: str,
    seed: int = 0,
    num_envs: int = 16,
    workers: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Write ``episodes_per_game`` shards of rollouts under ``out_dir``; return the shard paths.

    ``make_agent(seed)`` builds a fresh runner policy with ``last_samples`` (e.g. a ``PolicyAgent``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    bar = tqdm(total=episodes_per_game * len(games), desc="rollouts", disable=not progress)
    with EnvPool(env_name, min(num_envs, max(1, len(games))), workers=workers) as pool:
        for k in range(episodes_per_game):
            shard = out_dir / f"shard_{k:03d}.jsonl"
            shards.append(shard)
            if shard.exists():
                bar.update(len(games))
                continue
            partial = shard.with_name(shard.name + ".partial")
            partial.unlink(missing_ok=True)  # an interrupted shard is replayed whole: its seed fixes its content
            recorder = SampleRecorder(make_agent(seed + k))
            with TrajectoryWriter(partial) as writer:

                def on_episode(result: EpisodeResult) -> None:
                    meta = {"rollout": k, "source": result.game.source}
                    writer.write(rollout_record(result, recorder.pop(result.game.game_id), env_name, policy_id,
                                                seed + k, meta))
                    bar.update(1)

                run_episodes(pool, games, recorder, max_steps, on_episode=on_episode)
            partial.rename(shard)
    bar.close()
    return shards


def read_rollouts(out_dir: str | Path) -> list[TrajectoryRecord]:
    """Every episode of every complete shard, in shard order (partial shards are not read)."""
    records = []
    for shard in sorted(Path(out_dir).glob("shard_*.jsonl")):
        records += list(read_trajectories(shard))
    return records
