"""``agentprm demos``: expert demonstrations for a game set, written as trajectory records.

ALFWorld's expert is the handcoded one (explores like a person) or the planner (privileged, shortest plans);
TextWorldExpress's is the gold path. Episodes are played by the batched runner and each is appended to the JSONL
file as soon as it ends, so an interrupted run keeps what it finished; a rerun skips games already in the file.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from agentprm.data import TrajectoryWriter, read_trajectories
from agentprm.envs.base import Game
from agentprm.envs.runner import EpisodeResult, PoolSpec, expert_policy, open_pool, run_episodes
from agentprm.pipeline.episodes import episode_record
from agentprm.pipeline.results import SuccessTable


def record_demos(
    env_name: str,
    games: list[Game],
    out: str | Path,
    expert: str = "handcoded",
    max_steps: int = 50,
    workers: "int | PoolSpec" = 0,
    num_envs: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> SuccessTable:
    """Play ``games`` with the expert, append one record per episode to ``out``, and return the success table.

    Games whose id is already in ``out`` are not played again (resume); they count in the table as recorded.
    """
    out = Path(out)
    table = SuccessTable()
    done_ids: set[str] = set()
    if out.exists():
        for record in read_trajectories(out):
            done_ids.add(record.game_id)
            table.add(record.split, record.task_type, record.won, record.num_steps)
    todo = [g for g in games if g.game_id not in done_ids]
    policy_id = f"expert:{expert}" if env_name == "alfworld" else "expert:gold"
    env_options = {"expert": expert, "expert_seed": seed} if env_name == "alfworld" else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc=f"demos {env_name}", disable=not progress)
    with TrajectoryWriter(out) as writer, open_pool(env_name, min(num_envs, max(1, len(todo))), workers,
                                                    env_options) as pool:

        def on_episode(result: EpisodeResult) -> None:
            record = episode_record(result, env_name, policy_id, seed, {"source": result.game.source})
            writer.write(record)
            table.add(record.split, record.task_type, record.won, record.num_steps)
            bar.update(1)

        if todo:
            run_episodes(pool, todo, expert_policy, max_steps, on_episode=on_episode, need_expert=True)
    bar.close()
    return table
