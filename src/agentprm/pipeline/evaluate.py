"""Play a fixed list of games with any runner policy and tabulate success (the evaluation protocol's core).

Every agent compared is run on the same games with the same step budget (default 30 actions, as in the paper);
episodes are optionally written as trajectory records. ``random`` is the random-admissible baseline.

A record's steps keep what the agent saw and did (:class:`StepLog`): ``response`` is the raw model output (the
action itself for the random agent and the expert), ``reason`` the parsed reasoning, and ``extras`` the prompt
(``prompt``), the response's log-probability (``logprob``), for Best-of-N every candidate with its PRM score
(``candidates``: ``[{"action", "response", "logprob", "score"}]``, ``score`` null for an unscored duplicate or a
lone candidate) and the executed one (``chosen``), and for an API model the request's token counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentprm.data import TrajectoryWriter
from agentprm.envs.base import Game
from agentprm.envs.runner import EpisodeResult, Policy, PolicyInput, PoolSpec, open_pool, run_episodes
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


@dataclass
class StepLog:
    """Wraps a runner policy and keeps, per game, each step's (response, reason, extras) for its record.

    Reads what the agent exposes after a call: ``last_steps`` (API agents: prompt, response, reason, extras),
    ``last_choices`` (Best-of-N candidates and scores), ``last_samples`` (sampled text and log-prob) and
    ``last_prompts``; a plain function (random, expert) logs its action as the response.
    """

    agent: Any
    prompts: bool = True
    steps: dict[str, list[tuple[str, str, dict]]] = field(default_factory=dict)

    def __call__(self, batch: list[PolicyInput]) -> list[str]:
        actions = self.agent(batch)
        for item, action in zip(batch, actions):
            if item.step == 0:
                self.steps[item.game.game_id] = []
            self.steps[item.game.game_id].append(self._step(item.slot, action))
        return actions

    def _step(self, slot: int, action: str) -> tuple[str, str, dict]:
        agent = self.agent
        logged = getattr(agent, "last_steps", {}).get(slot)
        if logged is not None:
            extras = dict(logged.get("extras", {}))
            if self.prompts:
                extras["prompt"] = logged["prompt"]
            return logged["response"], logged.get("reason", ""), extras
        extras: dict[str, Any] = {}
        prompt = getattr(agent, "last_prompts", {}).get(slot)
        if self.prompts and prompt is not None:
            extras["prompt"] = prompt
        sample = getattr(agent, "last_samples", {}).get(slot)
        if sample is None:
            return action, "", extras
        extras["logprob"] = float(sample.logprob)
        choice = getattr(agent, "last_choices", {}).get(slot)
        if choice is not None:
            extras["candidates"] = [{"action": c.action, "response": c.response, "logprob": float(c.logprob),
                                     "score": c.score} for c in choice.candidates]
            extras["chosen"] = choice.chosen
        return sample.text, "", extras

    def pop(self, game_id: str) -> tuple[list[str], list[str], list[dict]] | None:
        steps = self.steps.pop(game_id, None)
        if steps is None:
            return None
        return [s[0] for s in steps], [s[1] for s in steps], [s[2] for s in steps]


def evaluate_policy(
    env_name: str,
    games: list[Game],
    policy: Policy,
    policy_id: str,
    max_steps: int = 30,
    num_envs: int = 16,
    workers: int | PoolSpec = 0,
    records: str | Path | None = None,
    seed: int = 0,
    record_prompts: bool = True,
    need_expert: bool = False,
    env_options: dict | None = None,
) -> Evaluation:
    """Play every game once with ``policy``; return the success table and the episodes. With ``records``, every
    episode is appended to that JSONL file with its steps' responses, scores and (``record_prompts``) prompts.
    ``need_expert`` asks the environment for the expert's action at every step (for ``expert_policy``; ALFWorld
    needs ``env_options={"expert": "handcoded"}`` too)."""
    table = SuccessTable()
    writer = TrajectoryWriter(records) if records else None
    log = StepLog(policy, prompts=record_prompts) if records else None

    def on_episode(result: EpisodeResult) -> None:
        table.add(result.game.split, result.game.task_type, result.won, result.steps)
        if writer is not None:
            logged = log.pop(result.game.game_id)
            responses, reasons, extras = logged if logged and len(logged[0]) == result.steps else (None, None, None)
            writer.write(episode_record(result, env_name, policy_id, seed, responses=responses, reasons=reasons,
                                        extras=extras))

    start = time.perf_counter()
    try:
        with open_pool(env_name, min(num_envs, max(1, len(games))), workers, env_options) as pool:
            results = run_episodes(pool, games, log or policy, max_steps, on_episode=on_episode,
                                   need_expert=need_expert)
    finally:
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - start
    return Evaluation(table, results, seconds, sum(r.steps for r in results))
