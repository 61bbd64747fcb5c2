"""Branches: continuations of a policy from a recorded state, replayed in the real engine.

A :class:`Branch` is a game, a prefix of actions recorded in an earlier episode, the first action to take at the
state the prefix reaches, and an index among that action's continuations. :func:`play_branches` resets the game,
replays the prefix (checking that every observation equals the recorded one: the engine must be deterministic for a
replayed state to be the recorded state), takes the branch's action, and lets the policy play on until the episode
ends or the episode's step budget, which counts the prefix, runs out.

With M continuations for each of K actions at a state s, the discounted returns estimate

    Q^pi(s, a) = E_pi[ gamma^(T-1-t) R | s_t = s, a_t = a ]        (t = len(prefix), R in {0, 1})

which is what the ground-truth benchmark (``benchmarks/prm_oracle.py``) grades PRMs against and what branching
rollouts (``rollouts.branch_*``) add to the training data: several actions at one state, each with several visits.

Every branch plays as its own episode under a unique game id (``<game id>#b<k>``), so the runner's per-game
bookkeeping (sample recording, replay) never mixes two branches; results carry the original :class:`Game`.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agentprm.data import TrajectoryRecord
from agentprm.envs.base import EnvError, Game
from agentprm.envs.runner import EpisodeResult, PolicyInput, run_episodes
from agentprm.models.policy import Sample


class ReplayMismatch(EnvError):
    """A replayed prefix led to another observation than the recorded one (the engine is not deterministic here,
    or the record does not belong to this game)."""


@dataclass(frozen=True)
class Branch:
    """Replay ``prefix`` from reset (``observations[k]`` is the recorded observation before ``prefix[k]``, and
    ``observations[len(prefix)]`` the one at the branch state), then take ``action`` (written as ``response``,
    with log pi ``logprob``), then continue with the policy."""

    game: Game
    prefix: tuple[str, ...]
    observations: tuple[str, ...]
    action: str
    response: str = ""
    logprob: float = 0.0
    continuation: int = 0

    def __post_init__(self) -> None:
        if len(self.observations) != len(self.prefix) + 1:
            raise ValueError(f"a branch needs {len(self.prefix) + 1} recorded observations (one per prefix step "
                             f"and the branch state), got {len(self.observations)}")

    @property
    def start(self) -> int:
        """The step index of the branch state (where ``action`` is taken)."""
        return len(self.prefix)


@dataclass
class BranchAgent:
    """Runner policy: replays each branch's prefix and action, then lets ``agent`` act (``last_samples`` holds a
    stand-in sample for a replayed step: the action, no tokens, log-prob 0; and for the branch step the branch's
    response and log-prob)."""

    agent: Callable[[list[PolicyInput]], list[str]]
    branches: dict[str, Branch]
    last_samples: dict[int, Sample] = field(default_factory=dict)
    last_flags: dict[int, dict] = field(default_factory=dict)

    def __call__(self, batch: list[PolicyInput]) -> list[str]:
        actions: dict[int, str] = {}
        samples: dict[int, Sample] = {}
        acting = []
        for item in batch:
            branch = self.branches[item.game.game_id]
            if item.step > branch.start:
                acting.append(item)
                continue
            _check_replay(branch, item)
            if item.step < branch.start:
                actions[item.slot] = branch.prefix[item.step]
                samples[item.slot] = Sample(text=branch.prefix[item.step], token_ids=[], logprob=0.0, finished=True)
            else:
                actions[item.slot] = branch.action
                samples[item.slot] = Sample(text=branch.response or branch.action, token_ids=[],
                                            logprob=branch.logprob, finished=True)
        if acting:
            own = getattr(self.agent, "last_samples", None)  # a plain runner policy keeps no samples
            for item, action in zip(acting, self.agent(acting)):
                actions[item.slot] = action
                samples[item.slot] = (self.agent.last_samples[item.slot] if own is not None
                                      else Sample(text=action, token_ids=[], logprob=0.0, finished=True))
        self.last_samples = samples
        self.last_flags = {}
        return [actions[item.slot] for item in batch]


def _check_replay(branch: Branch, item: PolicyInput) -> None:
    expected = branch.observations[item.step]
    if item.observation.text != expected:
        raise ReplayMismatch(f"game {branch.game.game_id}: replaying its recorded prefix gave another observation "
                             f"at step {item.step} ({item.observation.text[:80]!r} instead of {expected[:80]!r}); "
                             f"the engine or the game files changed since the episode was recorded")


def branch_id(branch: Branch, k: int) -> str:
    """The unique game id branch ``k`` plays under."""
    return f"{branch.game.game_id}#b{k}"


def branch_games(branches: Sequence[Branch]) -> list[Game]:
    """One unique game per branch (same source, id ``<game id>#b<k>``)."""
    return [replace(branch.game, game_id=branch_id(branch, k)) for k, branch in enumerate(branches)]


def play_branches(pool, branches: Sequence[Branch], agent, max_steps: int,
                  on_episode: Callable[[int, EpisodeResult], None] | None = None,
                  wrap: Callable[[BranchAgent], Any] | None = None) -> list[EpisodeResult]:
    """Play every branch once (see the module doc); results in branch order, each with its original game.
    ``on_episode(k, result)`` is called as branch k finishes. ``max_steps`` is the whole episode's budget.
    ``wrap``: wraps the runner policy (e.g. a ``SampleRecorder``, which then sees every step of every branch
    under its unique id :func:`branch_id`)."""
    games = branch_games(branches)
    index = {game.game_id: k for k, game in enumerate(games)}
    by_id = {game.game_id: branch for game, branch in zip(games, branches)}
    too_long = [b for b in branches if b.start >= max_steps]
    if too_long:
        raise ValueError(f"a branch starts at step {too_long[0].start}, at or past max_steps={max_steps}")
    runner_agent = BranchAgent(agent, by_id)
    if wrap is not None:
        runner_agent = wrap(runner_agent)

    def finished(result: EpisodeResult) -> None:
        k = index[result.game.game_id]
        result.game = branches[k].game
        if on_episode is not None:
            on_episode(k, result)

    results = run_episodes(pool, games, runner_agent, max_steps, on_episode=finished)
    for k, result in enumerate(results):
        result.game = branches[k].game
    return results


def discounted_return(result: EpisodeResult, start: int, gamma: float) -> float:
    """gamma^(T-1-start) * R of an episode of T steps with outcome R, from step ``start`` on (MC target, Eq. 1)."""
    return gamma ** (result.steps - 1 - start) if result.won else 0.0


# -- branching rollouts: where to branch and which actions ----------------------------------------------------------


def _rng(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big"))


def branch_points(record: TrajectoryRecord, count: int, max_steps: int, seed: int) -> list[int]:
    """Up to ``count`` distinct step indices of an episode to branch at, uniform (seeded by seed and game id)
    among the steps the policy chose (not replayed), with two or more distinct admissible actions and at least one
    step of budget left after the branch action; sorted."""
    eligible = [t for t, step in enumerate(record.steps)
                if t < max_steps - 1 and len(set(step.admissible_actions)) >= 2
                and not step.extras.get("reset") and not step.extras.get("branch_prefix")]
    rng = _rng(seed, record.game_id, record.seed)
    return sorted(rng.sample(eligible, min(count, len(eligible))))


def distinct_actions(logprobs: Sequence[float], k: int, temperature: float, rng: random.Random) -> list[int]:
    """``k`` distinct indices drawn from softmax(logprobs / T) WITHOUT replacement (Gumbel top-k: the indices of
    the k largest logprob / T + Gumbel noise; T = 0 takes the k most likely), in draw order."""
    if temperature == 0:
        keys = list(logprobs)
    else:
        keys = [lp / temperature - math.log(-math.log(1.0 - rng.random())) for lp in logprobs]
    return sorted(range(len(keys)), key=lambda i: -keys[i])[:k]


def episode_branches(record: TrajectoryRecord, game: Game, t: int, actions: Sequence[str],
                     responses: Sequence[str], logprobs: Sequence[float], continuations: int) -> list[Branch]:
    """The branches at step ``t`` of a recorded episode: each action x ``continuations``."""
    prefix = tuple(step.action for step in record.steps[:t])
    observations = tuple(step.observation for step in record.steps[: t + 1])
    return [Branch(game, prefix, observations, action, response, logprob, m)
            for action, response, logprob in zip(actions, responses, logprobs) for m in range(continuations)]


@dataclass(frozen=True)
class BranchSettings:
    """Branching rollouts: at ``states`` points of every base episode, ``actions`` distinct actions drawn from pi
    at ``temperature`` without replacement, each followed by ``continuations`` continuations."""

    states: int
    actions: int
    continuations: int
    temperature: float


def plan_branches(records: Sequence[TrajectoryRecord], games: dict[str, Game], settings: BranchSettings,
                  score: Callable[[list[TrajectoryRecord], list[int]], list[tuple[list[str], list[str], list[float]]]],
                  max_steps: int, seed: int) -> list[Branch]:
    """Every branch of every base episode (:func:`branch_points`, :func:`distinct_actions`).
    ``score(records, steps)`` gives, per (record, step), the admissible actions, their responses as the policy
    writes them and their log pi."""
    points = [(record, t) for record in records if record.game_id in games
              for t in branch_points(record, settings.states, max_steps, seed)]
    if not points:
        return []
    scored = score([r for r, _ in points], [t for _, t in points])
    branches: list[Branch] = []
    for (record, t), (actions, responses, logprobs) in zip(points, scored):
        rng = _rng(seed, "actions", record.game_id, record.seed, t)
        picks = distinct_actions(logprobs, settings.actions, settings.temperature, rng)
        branches += episode_branches(record, games[record.game_id], t, [actions[i] for i in picks],
                                     [responses[i] for i in picks], [logprobs[i] for i in picks],
                                     settings.continuations)
    return branches
