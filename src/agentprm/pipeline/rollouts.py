"""Rollouts (AgentPRM stage 1): pi_{i-1} plays every training game ``episodes_per_game`` times.

Shard k holds the k-th episode of every game, played with agent seed ``seed + k`` (so two rollouts of a game differ
while the whole stage stays reproducible). A shard is written to ``shard_KKK.jsonl.partial`` and renamed when
complete; a rerun skips complete shards and replays only the shard that was interrupted, so finished work is never
lost and nothing is counted twice.

Every step keeps the sampled response text and its log-probability under the policy (``extras["logprob"]``): the
targets stage keys states by these responses, and nothing is re-tokenised. Its ``reason`` is the response's
reasoning as the never-throwing parser reads it (``parse_response(text, admissible, template)`` with the agent's
prompt template), so rejection-sampling fine-tuning (``sft_data.build_examples``: ``format_response(action,
reason)``) trains reason_action rollouts with their reasoning.

Reset distribution (paper Section 4, ``prefixes``): in a reset shard, a game's episode first replays a prefix of an
expert demonstration in the environment, then the policy takes over. Replayed steps are marked
``extras["reset"] = True`` (response = the expert action, log-prob 0) and ``meta["reset_step"]`` is the prefix
length; the targets stage gives no target to replayed steps. :func:`reset_prefixes` draws the prefix length of each
game once per iteration, so the reset episodes of a game branch from the same state: several actions at one state,
the contrast a PRM needs to rank actions.

Branching rollouts (``branch_plan``, :mod:`agentprm.pipeline.branching`): after the base shards, the plan chooses
branch points in the base episodes and K distinct actions at each; every (action, continuation) replays the
episode's prefix in the engine (each observation checked against the record), takes the action and lets the
policy continue. They go to ``shard_branch.jsonl``: replayed steps are flagged ``extras["branch_prefix"]`` (no
target), the branch step ``extras["branch"]``, and ``meta`` holds the base episode's seed and the branch step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from tqdm import tqdm

from agentprm.data import TrajectoryRecord, TrajectoryWriter, read_trajectories
from agentprm.envs.base import Game
from agentprm.envs.runner import EpisodeResult, PolicyInput, PoolSpec, open_pool, run_episodes
from agentprm.models.parser import parse_response
from agentprm.models.policy import Sample
from agentprm.pipeline.episodes import episode_record


@dataclass
class SampleRecorder:
    """Wraps an agent that exposes ``last_samples`` and keeps every episode's samples, keyed by game id.

    A game appears once per ``run_episodes`` call, and ``PolicyInput.step == 0`` marks its first turn.
    """

    agent: object
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    flags: dict[str, list[dict]] = field(default_factory=dict)

    def __call__(self, batch: list[PolicyInput]) -> list[str]:
        actions = self.agent(batch)
        step_flags = getattr(self.agent, "last_flags", {})
        for item in batch:
            if item.step == 0:
                self.samples[item.game.game_id] = []
                self.flags[item.game.game_id] = []
            self.samples[item.game.game_id].append(self.agent.last_samples[item.slot])
            self.flags[item.game.game_id].append(dict(step_flags.get(item.slot, {})))
        return actions

    def pop(self, game_id: str) -> list[Sample]:
        return self.samples.pop(game_id, [])

    def pop_flags(self, game_id: str) -> list[dict]:
        """Per-step flags the agent reported in ``last_flags`` (e.g. ``{"steered": True}``)."""
        return self.flags.pop(game_id, [])


@dataclass
class SteeredAgent:
    """Steered exploration (paper Section 4): each (game, step) samples from ``steered`` (the same policy with a
    hint in its prompt) with probability ``fraction``, else from ``nominal``; the draw depends on (seed, game id,
    step) alone. Steered steps are flagged ``{"steered": True}`` in ``last_flags``. The records keep the state, not
    the prompt, so every later stage renders the NOMINAL prompt: sampled with the hint, trained without it."""

    nominal: object
    steered: object
    fraction: float
    seed: int = 0
    last_samples: dict[int, Sample] = field(default_factory=dict)
    last_flags: dict[int, dict] = field(default_factory=dict)

    def is_steered(self, game_id: str, step: int) -> bool:
        digest = hashlib.sha256(f"{self.seed}:{game_id}:{step}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.fraction

    def __call__(self, batch: list[PolicyInput]) -> list[str]:
        steer = {item.slot: self.is_steered(item.game.game_id, item.step) for item in batch}
        actions: dict[int, str] = {}
        self.last_samples, self.last_flags = {}, {}
        for agent, flag in ((self.nominal, False), (self.steered, True)):
            part = [item for item in batch if steer[item.slot] == flag]
            if part:
                for item, action in zip(part, agent(part)):
                    actions[item.slot] = action
                    self.last_samples[item.slot] = agent.last_samples[item.slot]
                    if flag:
                        self.last_flags[item.slot] = {"steered": True}
        return [actions[item.slot] for item in batch]


@dataclass
class ResetAgent:
    """Replays ``prefixes[game id]`` (expert actions) for the first steps of each episode, then lets ``agent`` act.

    ``last_samples`` holds the agent's samples, and for a replayed step a stand-in sample (the expert action, no
    tokens, log-prob 0) that :func:`rollout_record` marks as replayed.
    """

    agent: object
    prefixes: Mapping[str, Sequence[str]]
    last_samples: dict[int, Sample] = field(default_factory=dict)
    last_flags: dict[int, dict] = field(default_factory=dict)  # the wrapped agent's, passed on

    def __call__(self, batch: list[PolicyInput]) -> list[str]:
        replayed = [item for item in batch if item.step < len(self.prefixes.get(item.game.game_id, ()))]
        acting = [item for item in batch if item.step >= len(self.prefixes.get(item.game.game_id, ()))]
        actions: dict[int, str] = {}
        samples: dict[int, Sample] = {}
        self.last_flags = {}
        if acting:
            for item, action in zip(acting, self.agent(acting)):
                actions[item.slot], samples[item.slot] = action, self.agent.last_samples[item.slot]
            self.last_flags = dict(getattr(self.agent, "last_flags", {}))
        for item in replayed:
            action = self.prefixes[item.game.game_id][item.step]
            actions[item.slot] = action
            samples[item.slot] = Sample(text=action, token_ids=[], logprob=0.0, finished=True)
        self.last_samples = samples
        return [actions[item.slot] for item in batch]


def reset_prefixes(demos: Mapping[str, Sequence[str]], games: Sequence[Game], seed: int,
                   max_prefix: int | None = None) -> dict[str, list[str]]:
    """Game id -> the expert prefix a reset episode replays: the first k actions of the game's demonstration with
    k uniform in [1, min(len(demo) - 1, max_prefix)] (so the policy acts at least once, within the step budget
    when ``max_prefix`` = max_steps - 1), drawn from (seed, game id) alone. Games without a demonstration of two
    or more actions are left out (their episodes start from the beginning)."""
    if max_prefix is not None and max_prefix < 1:
        raise ValueError(f"max_prefix must be >= 1, got {max_prefix}")
    prefixes = {}
    for game in games:
        demo = list(demos.get(game.game_id, ()))
        if len(demo) >= 2:
            digest = hashlib.sha256(f"{seed}:{game.game_id}".encode()).digest()
            longest = min(len(demo) - 1, max_prefix or len(demo))
            k = 1 + int.from_bytes(digest[:8], "big") % longest
            prefixes[game.game_id] = demo[:k]
    return prefixes


def rollout_record(result: EpisodeResult, samples: list[Sample], env_name: str, policy_id: str, seed: int,
                   meta: dict, reset_step: int = 0, flags: Sequence[dict] | None = None,
                   template: str = "action_only") -> TrajectoryRecord:
    """The record of one rollout; the first ``reset_step`` steps were replayed from an expert prefix; ``flags``
    (per step) are merged into the steps' extras; each step's reason is parsed from its response with the agent's
    prompt ``template`` (a replayed step's response is a bare command: no reason)."""
    extras = [{"logprob": float(s.logprob), "finished": bool(s.finished)} for s in samples]
    for extra, flag in zip(extras, flags or []):
        extra.update(flag)
    for extra in extras[:reset_step]:
        extra["reset"] = True
    if reset_step:
        meta = {**meta, "reset_step": reset_step}
    reasons = [parse_response(s.text, obs.admissible_actions, template).reason
               for (obs, _, _), s in zip(result.transitions, samples)]
    return episode_record(result, env_name, policy_id, seed, meta, responses=[s.text for s in samples],
                          reasons=reasons, extras=extras)


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
    workers: "int | PoolSpec" = 0,
    progress: bool = True,
    prefixes: Mapping[int, Mapping[str, Sequence[str]]] | None = None,
    wrap_agent=None,
    branch_plan=None,
    template: str = "action_only",
) -> list[Path]:
    """Write ``episodes_per_game`` shards of rollouts under ``out_dir``; return the shard paths.

    ``make_agent(seed)`` builds a fresh runner policy with ``last_samples`` (e.g. a ``PolicyAgent``).
    ``prefixes``: shard index -> game id -> expert actions replayed before the policy acts (reset distribution).
    ``wrap_agent(agent, seed)``: an optional wrapper around each shard's agent (e.g. a ``SteeredAgent``).
    ``branch_plan(records) -> list[Branch]``: branching rollouts from the base shards' records, written to
    ``shard_branch.jsonl`` (played with ``make_agent(seed + episodes_per_game)``).
    ``template``: the agents' prompt template (``PromptConfig.template``), to parse each response's reason.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    bar = tqdm(total=episodes_per_game * len(games), desc="rollouts", disable=not progress)
    with open_pool(env_name, num_envs if branch_plan else min(num_envs, max(1, len(games))), workers) as pool:
        for k in range(episodes_per_game):
            shard = out_dir / f"shard_{k:03d}.jsonl"
            shards.append(shard)
            if shard.exists():
                bar.update(len(games))
                continue
            partial = shard.with_name(shard.name + ".partial")
            partial.unlink(missing_ok=True)  # an interrupted shard is replayed whole: its seed fixes its content
            resets = (prefixes or {}).get(k, {})
            agent = make_agent(seed + k)
            if wrap_agent is not None:
                agent = wrap_agent(agent, seed + k)
            recorder = SampleRecorder(ResetAgent(agent, resets) if resets else agent)
            with TrajectoryWriter(partial) as writer:

                def on_episode(result: EpisodeResult) -> None:
                    meta = {"rollout": k, "source": result.game.source}
                    reset_step = len(resets.get(result.game.game_id, ()))
                    game_id = result.game.game_id
                    writer.write(rollout_record(result, recorder.pop(game_id), env_name, policy_id, seed + k, meta,
                                                reset_step, recorder.pop_flags(game_id), template))
                    bar.update(1)

                run_episodes(pool, games, recorder, max_steps, on_episode=on_episode)
            partial.rename(shard)
        bar.close()
        if branch_plan is not None:
            shards.append(_branch_shard(pool, out_dir, shards, branch_plan, make_agent, env_name, max_steps,
                                        policy_id, seed + episodes_per_game, progress, template))
    return shards


def _branch_shard(pool, out_dir: Path, shards: list[Path], branch_plan, make_agent, env_name: str, max_steps: int,
                  policy_id: str, seed: int, progress: bool, template: str) -> Path:
    from agentprm.pipeline.branching import branch_id, play_branches

    shard = out_dir / "shard_branch.jsonl"
    if shard.exists():
        return shard
    partial = shard.with_name(shard.name + ".partial")
    partial.unlink(missing_ok=True)
    base = [record for path in shards for record in read_trajectories(path)]
    branches = branch_plan(base)
    recorders: list[SampleRecorder] = []

    def record(agent) -> SampleRecorder:
        recorders.append(SampleRecorder(agent))
        return recorders[-1]

    bar = tqdm(total=len(branches), desc="branches", disable=not progress)
    with TrajectoryWriter(partial) as writer:

        def on_episode(k: int, result: EpisodeResult) -> None:
            branch = branches[k]
            flags = [{"branch_prefix": True}] * branch.start + [{"branch": True}]
            meta = {"rollout": "branch", "source": result.game.source, "branch_step": branch.start,
                    "branch_continuation": branch.continuation}
            unique = branch_id(branch, k)
            recorder = recorders[0]
            writer.write(rollout_record(result, recorder.pop(unique), env_name, policy_id, seed, meta, 0,
                                        flags + recorder.pop_flags(unique)[branch.start + 1:], template))
            bar.update(1)

        if branches:
            play_branches(pool, branches, make_agent(seed), max_steps, on_episode=on_episode, wrap=record)
    bar.close()
    partial.rename(shard)
    return shard


def read_rollouts(out_dir: str | Path) -> list[TrajectoryRecord]:
    """Every episode of every complete shard, in shard order (partial shards are not read)."""
    records = []
    for shard in sorted(Path(out_dir).glob("shard_*.jsonl")):
        records += list(read_trajectories(shard))
    return records
