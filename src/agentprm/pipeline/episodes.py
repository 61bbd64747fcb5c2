"""Finished episodes as trajectory records (the one place a runner result becomes a record)."""

from __future__ import annotations

from typing import Sequence

from agentprm.data import TrajectoryRecord
from agentprm.data.records import StepRecord
from agentprm.envs.registry import env_version
from agentprm.envs.runner import EpisodeResult


def _with_state_id(extra: dict, info: dict) -> dict:
    return {**extra, "state_id": info["state_id"]} if "state_id" in info else dict(extra)


def episode_record(
    result: EpisodeResult,
    env_name: str,
    policy_id: str,
    seed: int,
    meta: dict | None = None,
    responses: Sequence[str] | None = None,
    reasons: Sequence[str] | None = None,
    extras: Sequence[dict] | None = None,
) -> TrajectoryRecord:
    """The trajectory record of one finished episode.

    ``responses`` are the raw model outputs per step (default: the commands themselves, as for an expert);
    ``reasons`` the parsed reasoning; ``extras`` per-step data such as the sample's log-probability. An environment
    that exposes its true state (ALFWorld: ``obs.info["state_id"]``) has it copied into ``extras["state_id"]`` of
    the step taken from that observation; ``mc_targets`` pools visits by it.
    """
    n = len(result.transitions)
    responses = list(responses) if responses is not None else [action for _, action, _ in result.transitions]
    reasons = list(reasons) if reasons is not None else [""] * n
    extras = list(extras) if extras is not None else [{} for _ in range(n)]
    if not len(responses) == len(reasons) == len(extras) == n:
        raise ValueError(f"{n} steps but {len(responses)} responses, {len(reasons)} reasons, {len(extras)} extras")
    steps = [
        StepRecord(
            observation=obs.text,
            admissible_actions=list(obs.admissible_actions),
            response=response,
            reason=reason,
            action=action,
            admissible=action in obs.admissible_actions,
            reward=float(step.reward),
            done=bool(step.done),
            won=bool(step.won),
            extras=_with_state_id(extra, obs.info),
        )
        for (obs, action, step), response, reason, extra in zip(result.transitions, responses, reasons, extras)
    ]
    first = result.transitions[0][0] if result.transitions else result.final_observation
    return TrajectoryRecord(
        env=env_name,
        env_version=env_version(env_name),
        game_id=result.game.game_id,
        split=result.game.split,
        task=first.task,
        task_type=result.game.task_type,
        policy_id=policy_id,
        seed=seed,
        steps=steps,
        won=bool(result.won),
        total_reward=float(sum(s.reward for s in steps)),
        final_observation=result.final_observation.text,
        meta=dict(meta or {}),
    )
