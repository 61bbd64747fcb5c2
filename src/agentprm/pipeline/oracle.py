"""Ground-truth Q^pi(s, a) in the engine, and PRMs graded against it (``benchmarks/prm_oracle.py`` drives this).

1. **Trajectories.** pi plays every game of a held-out split once (valid_seen for tuning; never the evaluation
   split) at ``temperature``, with ALFWorld's handcoded expert watching, so every state also has the expert's action.
2. **States.** ``states`` of those steps are drawn, spread over task types and episode progress: strata are
   (task type, third of the step budget), and a seeded round robin over the strata takes one state at a time
   (states with fewer than two admissible actions are skipped: nothing to rank).
3. **Ground truth.** At each state the ``actions`` most likely admissible actions under pi are each followed by
   ``continuations`` continuations of pi (:mod:`agentprm.pipeline.branching`: the prefix is replayed from reset and
   every replayed observation must equal the recorded one). Q(s, a) is the mean discounted return
   gamma^(T-1-t) R of its continuations; the two halves of the continuations give the split-half estimates.
4. **Rankers.** The policy's own log pi(a | s) and any PRM score every admissible action of every state
   (:func:`score_states`); :mod:`agentprm.algorithms.action_ranking` grades them.

The states file (:func:`save_states`) keeps everything graded later, so new PRMs are graded without replaying.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentprm.algorithms.action_ranking import GradedState
from agentprm.envs.base import Game
from agentprm.envs.runner import EpisodeResult, PolicyInput, PoolSpec, open_pool, run_episodes
from agentprm.models.prompts import PromptConfig, PromptState, format_response, render_prompt
from agentprm.pipeline.branching import Branch, discounted_return, play_branches

STATES_FORMAT = 1


@dataclass
class OracleSettings:
    states: int = 200
    actions: int = 4
    continuations: int = 8
    temperature: float = 0.3
    max_steps: int = 30
    gamma: float = 0.95
    num_envs: int = 64
    seed: int = 0

    def validate(self) -> None:
        for name in ("states", "max_steps", "num_envs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.actions < 2:
            raise ValueError(f"actions must be >= 2 (a ranking needs two), got {self.actions}")
        if self.continuations < 2:
            raise ValueError(f"continuations must be >= 2 (split-half agreement needs two), got {self.continuations}")
        if self.temperature < 0 or not 0 < self.gamma <= 1:
            raise ValueError("temperature must be >= 0 and gamma in (0, 1]")


@dataclass
class ExpertWatch:
    """Runner policy wrapper that keeps the expert's action the runner passed in at every (game, step)."""

    agent: Any
    expert: dict[tuple[str, int], str | None]

    def __call__(self, batch: list[PolicyInput]) -> list[str]:
        for item in batch:
            self.expert[(item.game.game_id, item.step)] = item.expert_action
        return self.agent(batch)


def play_trajectories(env_name: str, games: Sequence[Game], agent: Any, settings: OracleSettings,
                      workers: int | PoolSpec = 0) -> tuple[list[EpisodeResult], dict[tuple[str, int], str | None]]:
    """pi's episodes on ``games`` with the handcoded expert watching; returns them and the expert's actions."""
    watch = ExpertWatch(agent, {})
    options = {"expert": "handcoded"} if env_name == "alfworld" else None
    with open_pool(env_name, min(settings.num_envs, len(games)), workers, env_options=options) as pool:
        results = run_episodes(pool, list(games), watch, settings.max_steps, need_expert=True)
    return results, watch.expert


def draw_states(results: Sequence[EpisodeResult], count: int, max_steps: int, seed: int) -> list[tuple[int, int]]:
    """(episode index, step index) of ``count`` states spread over (task type, third of the budget) strata."""
    strata: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for e, result in enumerate(results):
        for t, (observation, _, _) in enumerate(result.transitions):
            if len(set(observation.admissible_actions)) >= 2:
                strata.setdefault((result.game.task_type, min(3 * t // max_steps, 2)), []).append((e, t))
    rng = random.Random(seed)
    pools = [strata[key] for key in sorted(strata)]
    for members in pools:
        rng.shuffle(members)
    chosen: list[tuple[int, int]] = []
    while len(chosen) < count and any(pools):
        for members in pools:
            if members and len(chosen) < count:
                chosen.append(members.pop())
    return sorted(chosen)


def prompt_state(result: EpisodeResult, step: int) -> PromptState:
    observation = result.transitions[step][0]
    history = [(obs.text, action) for obs, action, _ in result.transitions[:step]]
    return PromptState(observation.task, observation.text, list(dict.fromkeys(observation.admissible_actions)),
                       history, result.game.task_type)


def policy_scores(policy: Any, prompt: PromptConfig, states: Sequence[PromptState]) -> list[dict[str, float]]:
    """log pi(a | s) of every admissible action (written as the policy writes it) at each state."""
    prompts = [render_prompt(s, prompt, policy.tokenizer) for s in states]
    texts = [[format_response(a, "", prompt) for a in s.admissible_actions] for s in states]
    scores = policy.score_candidates(prompts, texts)
    return [dict(zip(s.admissible_actions, lps)) for s, lps in zip(states, scores)]


def estimate_ground_truth(env_name: str, games: Sequence[Game], policy: Any, prompt: PromptConfig,
                          settings: OracleSettings, workers: int | PoolSpec = 0, log=print) -> dict[str, Any]:
    """Steps 1-3 of the module doc; returns the states file's content (``states`` holds one dict per state)."""
    from agentprm.agents.policy_agent import PolicyAgent, ScoreCache

    settings.validate()
    cache = ScoreCache()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    agent = PolicyAgent(policy, prompt=prompt, temperature=settings.temperature, seed=settings.seed,
                        score_cache=cache)
    results, expert = play_trajectories(env_name, games, agent, settings, workers)
    timings["trajectories_s"] = time.perf_counter() - start
    picks = draw_states(results, settings.states, settings.max_steps, settings.seed)
    states = [prompt_state(results[e], t) for e, t in picks]
    log_pi = policy_scores(policy, prompt, states)
    tops = [sorted(state.admissible_actions, key=lambda a: -lp[a])[: settings.actions]
            for state, lp in zip(states, log_pi)]  # the K most likely admissible actions of each state
    branches, owners = [], []
    for k, ((e, t), top) in enumerate(zip(picks, tops)):
        result = results[e]
        prefix = tuple(action for _, action, _ in result.transitions[:t])
        observations = tuple(obs.text for obs, _, _ in result.transitions[: t + 1])
        for a, action in enumerate(top):
            for m in range(settings.continuations):
                branches.append(Branch(result.game, prefix, observations, action,
                                       format_response(action, "", prompt), log_pi[k][action], m))
                owners.append((k, a))
    start = time.perf_counter()
    continuation_agent = PolicyAgent(policy, prompt=prompt, temperature=settings.temperature,
                                     seed=settings.seed + 1, score_cache=cache)
    returns: dict[tuple[int, int], list[float]] = {}
    steps = 0
    with open_pool(env_name, min(settings.num_envs, len(branches)), workers) as pool:
        played = play_branches(pool, branches, continuation_agent, settings.max_steps)
    for (k, a), branch, result in zip(owners, branches, played):
        returns.setdefault((k, a), []).append(discounted_return(result, branch.start, settings.gamma))
        steps += result.steps - branch.start
    timings["continuations_s"] = time.perf_counter() - start
    log(f"oracle: {len(states)} states, {len(branches)} continuations, {steps} policy steps, "
        f"score cache {cache.hits} hits / {cache.misses} misses")
    rows = []
    for k, ((e, t), state, top) in enumerate(zip(picks, states, tops)):
        per_action = [returns[(k, a)] for a in range(len(top))]
        rows.append({"game_id": results[e].game.game_id, "task_type": results[e].game.task_type, "step": t,
                     "episode_won": results[e].won, "state": asdict(state), "actions": top,
                     "returns": per_action, "expert_action": expert.get((results[e].game.game_id, t)),
                     "policy_logprobs": log_pi[k]})
    return {"format": STATES_FORMAT, "settings": asdict(settings), "env": env_name, "timings": timings,
            "continuation_steps": steps, "games": len(games), "states": rows}


def graded_states(data: dict[str, Any]) -> list[GradedState]:
    """The states file as :class:`GradedState` s (Q = mean return; halves = first and second half of the
    continuations), with the policy ranker's scores filled in under "policy"."""
    out = []
    for row in data["states"]:
        q = [sum(r) / len(r) for r in row["returns"]]
        half = [len(r) // 2 for r in row["returns"]]
        first = [sum(r[:h]) / h for r, h in zip(row["returns"], half)]
        second = [sum(r[h:]) / (len(r) - h) for r, h in zip(row["returns"], half)]
        state = GradedState(actions=list(row["actions"]), q=q, q_halves=(first, second),
                            admissible=list(row["state"]["admissible_actions"]),
                            scores={"policy": dict(row["policy_logprobs"])}, expert_action=row["expert_action"],
                            meta={"game_id": row["game_id"], "task_type": row["task_type"], "step": row["step"]})
        out.append(state)
    return out


def row_prompt_state(row: dict[str, Any]) -> PromptState:
    state = dict(row["state"])
    state["history"] = [tuple(pair) for pair in state["history"]]
    return PromptState(**state)


def score_states(data: dict[str, Any], states: list[GradedState], name: str, scorer: Any, tokenizer: Any,
                 prompt: PromptConfig) -> None:
    """Fill ``states[k].scores[name]`` with ``scorer.score`` (a PRM: Q(prompt, response)) of every admissible
    action, the prompt rendered with the scorer's ``tokenizer``."""
    prompts, responses, owners = [], [], []
    for k, row in enumerate(data["states"]):
        rendered = render_prompt(row_prompt_state(row), prompt, tokenizer)
        for action in states[k].admissible:
            prompts.append(rendered)
            responses.append(format_response(action, "", prompt))
            owners.append((k, action))
    values = scorer.score(prompts, responses)
    for (k, action), value in zip(owners, values):
        states[k].scores.setdefault(name, {})[action] = float(value)


def save_states(data: dict[str, Any], path: str | Path) -> None:
    from agentprm.atomic import write_text_atomic

    write_text_atomic(Path(path), json.dumps(data) + "\n")


def load_states(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable oracle states file ({error}); estimate it again") from None
    if not isinstance(data, dict) or data.get("format") != STATES_FORMAT or "states" not in data:
        raise ValueError(f"{path}: not an oracle states file of format {STATES_FORMAT}")
    return data
