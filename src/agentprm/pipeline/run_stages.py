"""The stage bodies of ``agentprm run`` (see ``pipeline.run`` for the order). Each writes only into its ``out``
folder and reads earlier stages' finished folders, so any stage can be rerun alone after deleting its folder."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import time
from pathlib import Path

from agentprm.pipeline.run import RunContext


def _seed(ctx: RunContext, stage: str, iteration: int = 0) -> int:
    """A distinct, reproducible seed per stage and iteration."""
    offsets = {"sft": 1, "rollouts": 2, "prm": 3, "dpo": 4, "eval": 5, "bon_curve": 6}
    return ctx.config.seed * 1000 + offsets[stage] * 100 + iteration


# -- data and pi_0 ---------------------------------------------------------------------------------------------------


def generate(ctx: RunContext, out: Path) -> None:
    from agentprm.envs.alfworld_build import generate_games
    from agentprm.pipeline.run_config import worker_count

    c = ctx.config.games
    generate_games(out, seed=c.seed, counts={"train": c.train, "valid_seen": c.seen, "valid_unseen": c.unseen},
                   task_types=c.task_types or None, max_receptacles=c.max_receptacles,
                   workers=max(1, worker_count(ctx.config.workers) or 1), progress=ctx.config.progress)
    # The game list resolves paths under RUN/games, which exists only after this stage's rename.
    ctx._games.clear()


def demos(ctx: RunContext, out: Path) -> None:
    from agentprm.pipeline.demos import record_demos

    games = demo_games(ctx)
    table = record_demos(ctx.config.games.env, games, out / "demos.jsonl",
                         expert=ctx.config.demos.expert, max_steps=ctx.config.demos.max_steps,
                         workers=ctx.config.pool(), num_envs=ctx.config.num_envs, progress=ctx.config.progress)
    ctx.log(table.render("expert demonstrations"))


def demos_file(ctx: RunContext) -> Path:
    """The demonstrations every later stage learns from: RUN/rationales/demos.jsonl when ``rationalise.enabled``
    (the same episodes with a reason per step), else RUN/demos/demos.jsonl."""
    if ctx.config.rationalise.enabled:
        return ctx.dir / "rationales" / "demos.jsonl"
    return ctx.dir / "demos" / "demos.jsonl"


def rationales(ctx: RunContext, out: Path) -> None:
    from agentprm.pipeline.rationalise import rationalise_file, summary_line

    summary = rationalise_file(ctx.dir / "demos" / "demos.jsonl", out / "demos.jsonl", ctx.config.rationalise,
                               device=str(ctx.device), precision=ctx.precision, progress=ctx.config.progress)
    ctx.log(f"rationales: {summary_line(summary)}")


def init_model(ctx: RunContext, out: Path) -> None:
    from agentprm.data import read_trajectories
    from agentprm.models.embedded import init_embedded_model
    from agentprm.models.prompts import PromptConfig, PromptState, format_response, render_plain
    from agentprm.models.tokenizer import environment_corpus

    m = ctx.config.model
    if m.source == "path":
        (out / "source.json").write_text(json.dumps({"model": m.path}) + "\n")
        return
    if m.source == "smollm2":
        from agentprm.models.smollm2 import smollm2_checkpoint

        shutil.copytree(smollm2_checkpoint(), out / "model")
        return
    records = list(read_trajectories(demos_file(ctx)))
    template_texts = [render_plain(PromptState.from_trajectory(r, 0), PromptConfig(template=t))
                      + format_response(r.steps[0].action, "", PromptConfig(template=t))
                      for r in records[:20] if r.steps for t in ("action_only", "reason_action")]
    reasons = [step.reason for r in records for step in r.steps if step.reason]  # rationalised demos' words
    corpus = itertools.chain(environment_corpus(records, template_texts), reasons)
    init_embedded_model(out / "model", corpus, preset=m.preset,
                        vocab_size=m.vocab_size, seed=ctx.config.seed, overwrite=True)


def initial_model(ctx: RunContext) -> str:
    if ctx.config.model.source == "path":
        return ctx.config.model.path
    return str(ctx.dir / "model_init" / "model")


def sft(ctx: RunContext, out: Path) -> None:
    from agentprm.algorithms.sft import train_sft

    config = dataclasses.replace(ctx.config.sft, data=str(demos_file(ctx)),
                                 model=initial_model(ctx), out=str(out), prompt=ctx.config.prompt,
                                 seed=_seed(ctx, "sft"), progress=ctx.config.progress,
                                 mixed_precision=_sft_precision(ctx))
    train_sft(config, device=str(ctx.device))  # resumes from out/checkpoint when the stage was interrupted
    shutil.rmtree(out / "checkpoint", ignore_errors=True)  # the finished model is in out/model


def _sft_precision(ctx: RunContext) -> str:
    """SFT's accelerate precision: its own ``sft.mixed_precision`` when set, else the run's ``precision``."""
    own = ctx.config.sft.mixed_precision
    from agentprm.models.device import accelerate_precision

    return own if own != "no" else accelerate_precision(ctx.precision)


# -- one AgentPRM iteration ------------------------------------------------------------------------------------------


def rollouts(ctx: RunContext, out: Path, iteration: int) -> None:
    from agentprm.agents.policy_agent import PolicyAgent
    from agentprm.pipeline.rollouts import collect_rollouts

    c = ctx.config
    if c.policy.server_url:  # sampled by an inference server; log-probs from it or from the local copy
        from agentprm.models.server_policy import ServerPolicy

        policy = ServerPolicy.for_checkpoint(c.policy.server_url, str(ctx.policy_path(iteration - 1).resolve()),
                                             token_ids=c.policy.server_token_ids,
                                             max_tokens=c.policy.max_new_tokens, concurrency=c.num_envs)
    else:
        policy = ctx.load_policy(ctx.policy_path(iteration - 1))

    def make_agent(seed: int) -> PolicyAgent:
        return PolicyAgent(policy, prompt=c.prompt, mode=c.policy.mode, temperature=c.rollouts.temperature,
                           max_new_tokens=c.policy.max_new_tokens, seed=seed)

    def steer(agent: PolicyAgent, seed: int):
        """Steered exploration: the same policy with the hint in its prompt samples some of the steps."""
        from agentprm.pipeline.rollouts import SteeredAgent

        hinted = dataclasses.replace(c.prompt, hint=c.rollouts.hint)
        steered = dataclasses.replace(agent, prompt=hinted, seed=seed + 7919, last_samples={})
        return SteeredAgent(agent, steered, c.rollouts.steer_fraction, seed)

    games = rollout_games(rollout_pool(ctx), c.rollouts.games, iteration)
    seed = _seed(ctx, "rollouts", iteration)
    collect_rollouts(c.games.env, games, make_agent, out, c.rollouts.episodes_per_game,
                     c.rollouts.max_steps, policy_id=f"pi_{iteration - 1}", seed=seed,
                     num_envs=c.num_envs, workers=c.pool(), progress=c.progress,
                     prefixes=reset_shards(ctx, games, seed),
                     wrap_agent=steer if c.rollouts.steer_fraction else None,
                     branch_plan=branch_plan(ctx, policy, games, seed) if c.rollouts.branch_states else None,
                     template=c.prompt.template)


def branch_plan(ctx: RunContext, policy, games: list, seed: int):
    """Branching rollouts (``pipeline.branching.plan_branches``) from the base shards, actions drawn at the
    rollout temperature with the policy's own log-probabilities (one shared prompt pass per state)."""
    from agentprm.models.prompts import PromptState, candidate_actions, format_response, render_prompt
    from agentprm.pipeline.branching import BranchSettings, plan_branches

    c = ctx.config
    settings = BranchSettings(c.rollouts.branch_states, c.rollouts.branch_actions, c.rollouts.branch_continuations,
                              c.rollouts.temperature)

    def score(records: list, steps: list[int]) -> list:
        states = [PromptState.from_trajectory(r, t) for r, t in zip(records, steps)]
        actions = [candidate_actions(s.admissible_actions) for s in states]
        responses = [[format_response(a, "", c.prompt) for a in acts] for acts in actions]
        prompts = [render_prompt(s, c.prompt, policy.tokenizer) for s in states]
        return list(zip(actions, responses, policy.score_candidates(prompts, responses)))

    by_id = {game.game_id: game for game in games}
    return lambda records: plan_branches(records, by_id, settings, score, c.rollouts.max_steps, seed)


def reset_shards(ctx: RunContext, games: list, seed: int) -> dict[int, dict[str, list[str]]]:
    """Reset distribution: the first round(reset_fraction * episodes_per_game) shards replay an expert prefix
    (``pipeline.rollouts.reset_prefixes``, one prefix per game and iteration) from RUN/demos."""
    from agentprm.data import read_trajectories
    from agentprm.pipeline.rollouts import reset_prefixes

    c = ctx.config.rollouts
    count = round(c.reset_fraction * c.episodes_per_game)
    if count == 0:
        return {}
    demos = {r.game_id: [s.action for s in r.steps] for r in read_trajectories(ctx.dir / "demos" / "demos.jsonl")
             if r.won}
    prefixes = reset_prefixes(demos, games, seed, max_prefix=c.max_steps - 1)  # replayed steps count in max_steps
    return {k: prefixes for k in range(count)}


def balanced_order(games: list) -> list:
    """The games dealt round-robin over their task types (type names sorted, each type's games in the given order),
    so that every prefix and every window holds the types in equal shares (+-1 while every type lasts).

    The game lists are sorted by id, which groups them by task type: without this, the first 96 of 192 quickstart
    games are all one type, and the 200-game rollout windows of 800 games each cover two or three of the six types."""
    by_type: dict[str, list] = {}
    for game in games:
        by_type.setdefault(str(getattr(game, "task_type", "") or ""), []).append(game)
    queues = [by_type[t] for t in sorted(by_type)]
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def demo_games(ctx: RunContext) -> list:
    """The training games with a demonstration: all of them, or the first ``demos.count`` in balanced order."""
    games = ctx.games("train")
    count = ctx.config.demos.count
    return balanced_order(games)[:count] if count and count < len(games) else games


def rollout_pool(ctx: RunContext) -> list:
    """The training games rollouts may play: all of them, or with ``rollouts.exclude_demo_games`` those without a
    demonstration, in id order.

    "Demonstrated" is read from the demos stage's records (RUN/demos/demos.jsonl), the games pi_0 was fitted to,
    not recomputed from ``demos.count``: the two agree for a run's own demos stage, and only the records stay true
    when the game pool grows after the demonstrations were recorded (``benchmarks/prm_variants.py``'s undemo
    variants add games to a finished base run and keep its demonstrations and pi_0)."""
    from agentprm.data import read_trajectories

    games = ctx.games("train")
    if not ctx.config.rollouts.exclude_demo_games:
        return games
    demonstrated = {record.game_id for record in read_trajectories(ctx.dir / "demos" / "demos.jsonl")}
    pool = [game for game in games if game.game_id not in demonstrated]
    if not pool:
        raise ValueError(f"rollouts.exclude_demo_games: every one of the {len(games)} training games has a "
                         f"demonstration in {ctx.dir / 'demos' / 'demos.jsonl'}; no game is left to play")
    return pool


def rollout_games(games: list, count: int, iteration: int) -> list:
    """The training games of iteration ``iteration``'s rollouts: all of them when ``count`` is 0 (or covers them),
    else the window ``balanced[(iteration - 1) * count : iteration * count]`` of the games in balanced order
    (``balanced_order``: every window holds every task type), taken cyclically, so successive iterations collect
    data on different games while the list lasts."""
    if count == 0 or count >= len(games):
        return list(games)
    games = balanced_order(games)
    start = (iteration - 1) * count
    return [games[(start + k) % len(games)] for k in range(count)]


def targets(ctx: RunContext, out: Path, iteration: int) -> None:
    from agentprm.algorithms.mc_targets import mc_q_targets, state_counts, target_histogram, targets_to_parquet
    from agentprm.metrics import MetricsLogger
    from agentprm.pipeline.rollouts import read_rollouts

    records = read_rollouts(ctx.dir / f"iter_{iteration}" / "rollouts")
    settings = ctx.config.targets
    found = mc_q_targets(records, settings.gamma, settings.val_fraction, key=settings.key)
    if ctx.config.targets.shaping:
        found = shape(ctx, out, iteration, found, records)
    targets_to_parquet(found, out / "targets.parquet")
    histogram = target_histogram(found, bins=10)
    wins = sum(r.won for r in records)
    stats = {"episodes": len(records), "episode_success": wins / max(len(records), 1), "keys": len(found),
             "train_keys": sum(t.split == "train" for t in found), "val_keys": sum(t.split == "val" for t in found),
             "histogram": histogram, "mean_q": sum(t.q for t in found) / max(len(found), 1),
             "key": settings.key, **state_counts(found)}
    (out / "targets.json").write_text(json.dumps(stats, indent=2) + "\n")
    with MetricsLogger(out / "metrics.jsonl", "targets", iteration) as metrics:
        metrics.log(0, rollout_success=stats["episode_success"], keys=len(found), mean_q=stats["mean_q"])
        for b, count in enumerate(histogram):
            metrics.log(b, q_histogram=count)


def shape(ctx: RunContext, out: Path, iteration: int, found: list, records: list) -> list:
    """Process reward shaping (``algorithms.shaping``): V^mu with mu = pi_0 is trained once, in iteration 1's
    targets stage (``value/``), on the value targets of pi_0's rollouts; every iteration shapes with it."""
    from agentprm.algorithms.prm_training import train_prm as fit_prm
    from agentprm.algorithms.shaping import shape_targets, value_targets
    from agentprm.models.prm import ProcessRewardModel
    from agentprm.models.prompts import render_prompt

    if iteration == 1:
        config = dataclasses.replace(ctx.config.prm, kind="scalar", loss="soft_bce", seed=_seed(ctx, "prm", 0),
                                     progress=ctx.config.progress)
        fit_prm(config, value_targets(found), str(ctx.policy_path(0)), out / "value", ctx.config.prompt)
        folder = out / "value" / "model"
    else:
        folder = ctx.dir / "iter_1" / "targets" / "value" / "model"
    value_model = ProcessRewardModel.from_pretrained(folder, device=ctx.device, precision=ctx.precision)

    def value(states: list) -> list[float]:
        prompts = [render_prompt(s, ctx.config.prompt, value_model.tokenizer) for s in states]
        return list(value_model.score(prompts, [""] * len(prompts)))

    return shape_targets(found, records, value, ctx.config.targets.gamma)


def train_prm(ctx: RunContext, out: Path, iteration: int) -> None:
    from agentprm.algorithms.mc_targets import targets_from_parquet
    from agentprm.algorithms.prm_training import train_prm as fit_prm

    found = targets_from_parquet(ctx.dir / f"iter_{iteration}" / "targets" / "targets.parquet")
    config = dataclasses.replace(ctx.config.prm, seed=_seed(ctx, "prm", iteration), progress=ctx.config.progress)
    if config.kind == "implicit":  # trained on the rollouts' outcomes; validated on the same held-out targets
        from agentprm.algorithms.implicit_prm import train_implicit_prm
        from agentprm.pipeline.rollouts import read_rollouts

        records = read_rollouts(ctx.dir / f"iter_{iteration}" / "rollouts")
        train_implicit_prm(config, records, str(ctx.policy_path(iteration - 1)), out, ctx.config.prompt,
                           [t for t in found if t.split == "val"], ctx.config.targets.val_fraction,
                           iteration=iteration, device=str(ctx.device), precision=ctx.precision)
        return
    fit_prm(config, found, str(ctx.policy_path(iteration - 1)), out, ctx.config.prompt, iteration=iteration,
            device=str(ctx.device), precision=ctx.precision)


def _policy_states(ctx: RunContext, iteration: int) -> dict[str, list]:
    """States of the latest rollouts, each distinct state once: "train" for DPO, "val" (held-out games) for the
    monitor. AgentPRM reads them from the targets, InversePRM from its learner transitions of this iteration."""
    from agentprm.algorithms.inverse_prm_training import transitions_from_jsonl
    from agentprm.algorithms.mc_targets import state_from_target, targets_from_parquet

    folder = ctx.dir / f"iter_{iteration}" / "targets"
    if ctx.config.algorithm == "inverse_prm":
        found = [(t.game_id, t.split, t.state) for t in transitions_from_jsonl(folder / "policy_states.jsonl")]
    else:
        found = [(t.game_id, t.split, state_from_target(t)) for t in targets_from_parquet(folder / "targets.parquet")]
    seen, states = set(), {"train": [], "val": []}
    for game_id, split, state in found:
        key = (game_id, state.observation, tuple(map(tuple, state.history)))
        if key not in seen:
            seen.add(key)
            states[split].append(state)
    return states


def inverse_targets(ctx: RunContext, out: Path, iteration: int) -> None:
    """InversePRM data of iteration i (Eq. 9): expert transitions from the won demonstrations, the ones SFT
    imitates, with responses written as the policy writes them (label 1, ``expert_transitions``), learner
    transitions from the rollouts of pi_0 .. pi_{i-1} (label 0, aggregated), at most
    ``inverse.transitions_per_class`` of each (seeded), and a' ~ pi_{i-1}(. | s') for every one of them. Rollouts
    are read through ``outcome_free``: no outcome reward of the learner on this path."""
    import random

    from agentprm.algorithms.inverse_prm import (
        episode_transitions,
        expert_transitions,
        outcome_free,
        sample_next_responses,
    )
    from agentprm.algorithms.inverse_prm_training import transitions_to_jsonl
    from agentprm.data import read_trajectories
    from agentprm.metrics import MetricsLogger
    from agentprm.pipeline.rollouts import read_rollouts

    c = ctx.config
    val = c.targets.val_fraction
    expert = expert_transitions(read_trajectories(demos_file(ctx)), c.prompt, val,
                                only_successful=c.sft.only_successful)  # the demonstrations SFT imitates
    learner, latest = [], []
    for j in range(1, iteration + 1):
        for record in read_rollouts(ctx.dir / f"iter_{j}" / "rollouts"):
            found = episode_transitions(outcome_free(record), 0, val, iteration=j)
            learner += found
            latest += found if j == iteration else []
    # the DPO stage's states: only s is used there
    transitions_to_jsonl([dataclasses.replace(t, next_state=None) for t in latest], out / "policy_states.jsonl")
    rng = random.Random(_seed(ctx, "prm", iteration))
    cap = c.inverse.transitions_per_class
    kept = []
    for group in (expert, learner):
        train = [t for t in group if t.split == "train"]
        held = [t for t in group if t.split == "val"]
        if cap:
            train = rng.sample(train, min(cap, len(train)))
            held = rng.sample(held, min(max(1, round(cap * val)), len(held)))
        kept += train + held
    policy = ctx.load_policy(ctx.policy_path(iteration - 1))
    sample_next_responses(policy, kept, c.prompt, c.policy.mode, c.inverse.next_action_temperature,
                          seed=_seed(ctx, "prm", iteration), max_new_tokens=c.policy.max_new_tokens)
    transitions_to_jsonl(kept, out / "transitions.jsonl")
    counts = {"expert_available": len(expert), "learner_available": len(learner),
              "expert": sum(t.label for t in kept), "learner": sum(1 - t.label for t in kept),
              "train": sum(t.split == "train" for t in kept), "val": sum(t.split == "val" for t in kept),
              "learner_iterations": iteration}
    (out / "transitions.json").write_text(json.dumps(counts, indent=2) + "\n")
    with MetricsLogger(out / "metrics.jsonl", "targets", iteration) as metrics:
        metrics.log(0, **{k: float(v) for k, v in counts.items()})


def train_inverse_prm(ctx: RunContext, out: Path, iteration: int) -> None:
    from agentprm.algorithms.inverse_prm_training import train_inverse_prm as fit, transitions_from_jsonl

    transitions = transitions_from_jsonl(ctx.dir / f"iter_{iteration}" / "targets" / "transitions.jsonl")
    config = dataclasses.replace(ctx.config.prm, seed=_seed(ctx, "prm", iteration), progress=ctx.config.progress)
    fit(config, transitions, ctx.config.targets.gamma, str(ctx.policy_path(iteration - 1)), out, ctx.config.prompt,
        iteration=iteration)


def train_policy(ctx: RunContext, out: Path, iteration: int) -> None:
    from agentprm.algorithms.dpo_trainer import train_online_dpo
    from agentprm.metrics import MetricsLogger

    if ctx.config.policy_step == "kl":
        kl_policy(ctx, out, iteration)
        return
    states = _policy_states(ctx, iteration)
    prm = ctx.load_prm(ctx.prm_path(iteration - 1))
    seed = _seed(ctx, "dpo", iteration)
    config = dataclasses.replace(ctx.config.dpo, seed=seed, progress=ctx.config.progress,
                                 mode=ctx.config.policy.mode)
    validation = monitor_validation(ctx, states["val"], seed) if config.monitor_every else None
    with MetricsLogger(out / "metrics.jsonl", "dpo", iteration, tensorboard_dir=out / "tensorboard") as metrics:
        train_online_dpo(config, ctx.policy_path(iteration - 1), prm, states["train"], out, ctx.config.prompt,
                         metrics, validation, device=str(ctx.device), precision=ctx.precision)


def kl_policy(ctx: RunContext, out: Path, iteration: int) -> None:
    """pi_i = the exact KL step (``algorithms.kl_step``) from pi_{i-1} on the latest rollouts' training states, with Q
    from Q_{i-1} for every admissible action, or (``kl.q_source: mc``) the rollouts' own Monte Carlo estimates."""
    from agentprm.algorithms.kl_step import mc_states, prm_states, train_kl_policy
    from agentprm.algorithms.mc_targets import targets_from_parquet
    from agentprm.metrics import MetricsLogger

    c = ctx.config
    config = dataclasses.replace(c.kl, seed=_seed(ctx, "dpo", iteration), progress=c.progress)
    policy_states = _policy_states(ctx, iteration)
    if config.q_source == "mc":
        states = mc_states(targets_from_parquet(ctx.dir / f"iter_{iteration}" / "targets" / "targets.parquet"))
        prm = None
        if not states:
            raise ValueError(f"kl.q_source: mc found no state with two estimated actions in iteration {iteration}'s "
                             f"targets; use branching rollouts (rollouts.branch_states) or targets.key: state")
    else:
        states, prm = prm_states(policy_states["train"]), ctx.load_prm(ctx.prm_path(iteration - 1))
    validation = monitor_validation(ctx, policy_states["val"], config.seed) if config.monitor_every else None
    with MetricsLogger(out / "metrics.jsonl", "kl", iteration, tensorboard_dir=out / "tensorboard") as metrics:
        train_kl_policy(config, ctx.policy_path(iteration - 1), prm, states, out, c.prompt, metrics, validation,
                        device=str(ctx.device), precision=ctx.precision)


def monitor_validation(ctx: RunContext, val_states: list, seed: int):
    """The reward-hacking monitor's data: ``monitor.states`` held-out states (a seeded draw) and the success of the
    policy on the first ``monitor.games`` games of ``monitor.split`` (played like the evaluation: same step budget
    and temperature, the same agent seed at every reading)."""
    import random

    from agentprm.agents.policy_agent import PolicyAgent
    from agentprm.algorithms.dpo_trainer import DPOValidation
    from agentprm.pipeline.evaluate import evaluate_policy

    c = ctx.config
    games = ctx.games(c.monitor.split)
    games = games[: c.monitor.games] if c.monitor.games else games
    if not games:
        raise ValueError(f"the reward-hacking monitor found no games in split {c.monitor.split!r}")
    picked = random.Random(seed).sample(val_states, min(c.monitor.states, len(val_states)))

    def success(policy) -> float:
        agent = PolicyAgent(policy, prompt=c.prompt, mode=c.policy.mode, temperature=c.eval.temperature,
                            max_new_tokens=c.policy.max_new_tokens, seed=seed)
        return evaluate_policy(c.games.env, games, agent, "monitor", max_steps=c.eval.max_steps,
                               num_envs=c.num_envs, workers=c.pool(), seed=seed).success

    return DPOValidation(states=picked, success=success)


def rft_policy(ctx: RunContext, out: Path, iteration: int) -> None:
    """Outcome-only baseline: pi_i = SFT of pi_{i-1} on the won episodes of its own rollouts (rejection sampling
    fine-tuning), with the ``rft`` step budget; the rollouts are the same stage as AgentPRM's, so both use the
    same environment steps. Each step is trained as ``format_response(action, reason)`` with the reason the
    rollouts parsed from the sampled response, so reason_action rollouts keep their reasoning."""
    from agentprm.algorithms.sft import train_sft

    from agentprm.pipeline.rollouts import read_rollouts

    folder = ctx.dir / f"iter_{iteration}" / "rollouts"
    won = sum(r.won for r in read_rollouts(folder))
    (out / "rft.json").write_text(json.dumps({"won_rollouts": won}) + "\n")
    if won == 0:  # nothing to imitate: pi_i = pi_{i-1}
        ctx.log(f"  rft: no won rollout in iteration {iteration}; pi_{iteration} = pi_{iteration - 1}")
        shutil.copytree(ctx.policy_path(iteration - 1), out / "model")
        return
    r = ctx.config.rft
    config = dataclasses.replace(
        ctx.config.sft, data=",".join(str(p) for p in sorted(folder.glob("shard_*.jsonl"))),
        model=str(ctx.policy_path(iteration - 1)), out=str(out), prompt=ctx.config.prompt, only_successful=True,
        max_steps=r.max_steps, lr=r.lr, batch_size=r.batch_size, warmup_steps=r.warmup_steps,
        save_every=max(r.max_steps // 4, 1), eval_every=max(r.max_steps // 4, 1), seed=_seed(ctx, "sft", iteration),
        progress=ctx.config.progress, mixed_precision=_sft_precision(ctx))
    train_sft(config, device=str(ctx.device))
    shutil.rmtree(out / "checkpoint", ignore_errors=True)


def trajectory_dpo_policy(ctx: RunContext, out: Path, iteration: int) -> None:
    """Outcome-only baseline: pi_i = trajectory-level DPO of pi_{i-1} on (won, failed) episode pairs of the same
    game from its rollouts (``algorithms.trajectory_dpo``)."""
    from agentprm.algorithms.trajectory_dpo import train_trajectory_dpo
    from agentprm.metrics import MetricsLogger
    from agentprm.pipeline.rollouts import read_rollouts

    records = read_rollouts(ctx.dir / f"iter_{iteration}" / "rollouts")
    config = dataclasses.replace(ctx.config.trajectory_dpo, seed=_seed(ctx, "dpo", iteration),
                                 progress=ctx.config.progress)
    with MetricsLogger(out / "metrics.jsonl", "trajectory_dpo", iteration) as metrics:
        summary = train_trajectory_dpo(config, ctx.policy_path(iteration - 1), records, out, ctx.config.prompt,
                                       metrics)
    summary["model"] = "model"
    (out / "dpo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")


# -- evaluation ------------------------------------------------------------------------------------------------------


def _agent(ctx: RunContext, policy_iteration: int, prm_iteration: int | None, n: int, seed: int,
           logprob_weight: float | None = None):
    """pi_I, or BoN(pi_I, Q_J) with N candidates ranked by Q + logprob_weight log pi (default: the config's)."""
    from agentprm.agents.best_of_n import BestOfNAgent
    from agentprm.agents.policy_agent import PolicyAgent

    c = ctx.config
    policy = ctx.load_policy(ctx.policy_path(policy_iteration))
    if prm_iteration is None:
        return PolicyAgent(policy, prompt=c.prompt, mode=c.policy.mode, temperature=c.eval.temperature,
                           max_new_tokens=c.policy.max_new_tokens, seed=seed)
    prm = ctx.load_prm(ctx.prm_path(prm_iteration))
    return BestOfNAgent(policy, prm, n=n, prompt=c.prompt, mode=c.policy.mode,
                        temperature=c.eval.candidate_temperature(),
                        logprob_weight=c.eval.bon_logprob_weight if logprob_weight is None else logprob_weight,
                        max_new_tokens=c.policy.max_new_tokens, seed=seed)


def _evaluate(ctx: RunContext, out: Path, label: str, policy_iteration: int, prm_iteration: int | None,
              n: int) -> dict:
    from agentprm.pipeline.evaluate import evaluate_policy
    from agentprm.pipeline.report import summary_row

    c = ctx.config
    seed = _seed(ctx, "eval", policy_iteration)
    agent = _agent(ctx, policy_iteration, prm_iteration, n, seed)
    evaluation = evaluate_policy(c.games.env, ctx.eval_games(), agent, label, max_steps=c.eval.max_steps,
                                 num_envs=c.num_envs, workers=c.pool(), records=out / f"{label}.jsonl", seed=seed)
    kind = "policy" if prm_iteration is None else "bon"
    row = summary_row(f"pi_{policy_iteration}", policy_iteration, kind, 1 if prm_iteration is None else n,
                      None if prm_iteration is None else f"Q_{prm_iteration}", evaluation.table)
    row["agent_steps_per_s"] = evaluation.steps_per_second
    if prm_iteration is not None:  # how many distinct actions N samples really offered the PRM
        row["distinct_candidates"] = agent.turns and agent.distinct_candidates / agent.turns
    ctx.log(f"  {label}: success {row['success']:.1%} (95% CI {row['ci95'][0]:.1%}-{row['ci95'][1]:.1%}), "
            f"mean actions {row['mean_actions']:.1f}")
    return row


def row_label(kind: str, policy_iteration: int, prm_iteration: int | None, n: int) -> str:
    if kind == "policy":
        return f"pi_{policy_iteration}"
    return f"BoN(pi_{policy_iteration},Q_{prm_iteration},N={n})"


def evaluate_rows(ctx: RunContext, out: Path, rows: list[tuple[str, int, int | None]]) -> None:
    """Evaluate (kind, policy iteration, PRM iteration) rows on the fixed evaluation games; write rows.json."""
    results = []
    for kind, policy_iteration, prm_iteration in rows:
        n = ctx.config.eval.bon_n
        label = row_label(kind, policy_iteration, prm_iteration, n)
        results.append(_evaluate(ctx, out, label, policy_iteration, prm_iteration, n))
    (out / "rows.json").write_text(json.dumps(results, indent=2) + "\n")


def bon_curve(ctx: RunContext, out: Path) -> None:
    """Best-of-N success of the final policy with the last PRM for every N of ``eval.bon_curve``.

    A point the last iteration's evaluation already played is copied, not replayed (same agent, games and seed:
    the same episodes): BoN at ``eval.bon_n``, and N = 1 in admissible mode with candidates at the evaluation
    temperature, which is the policy row episode for episode (no PRM is consulted)."""
    last = ctx.config.iterations
    earlier = ctx.dir / f"iter_{last}" / "eval"
    rows = json.loads((earlier / "rows.json").read_text()) if (earlier / "rows.json").is_file() else []
    results = []
    for n in ctx.config.eval.bon_curve:
        label = row_label("bon", last, last - 1, n)
        results.append(_reused_row(ctx, earlier, rows, out, label, last, n)
                       or _evaluate(ctx, out, label, last, last - 1, n))
    (out / "rows.json").write_text(json.dumps(results, indent=2) + "\n")


def _reused_row(ctx: RunContext, earlier: Path, rows: list[dict], out: Path, label: str, last: int,
                n: int) -> dict | None:
    """The curve's point at N from the evaluation stage's rows and episode records, relabelled; None to play it."""
    c = ctx.config
    prm = f"Q_{last - 1}"
    same = [r for r in rows if r["agent"] == f"pi_{last}" and r["kind"] == "bon" and r["prm"] == prm and r["n"] == n]
    source = row_label("bon", last, last - 1, n)
    if not same and n == 1 and c.policy.mode == "admissible" and c.eval.candidate_temperature() == c.eval.temperature:
        same = [{**r, "kind": "bon", "n": 1, "prm": prm, "distinct_candidates": 1.0} for r in rows
                if r["agent"] == f"pi_{last}" and r["kind"] == "policy"]
        source = row_label("policy", last, None, 1)
    if not same or not (earlier / f"{source}.jsonl").is_file():
        return None
    records = []
    for line in (earlier / f"{source}.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            record["policy_id"] = label
            records.append(json.dumps(record))
    (out / f"{label}.jsonl").write_text("\n".join(records) + "\n")
    row = dict(same[0])
    ctx.log(f"  {label}: success {row['success']:.1%} (the evaluation stage's episodes, not replayed)")
    return row


# -- summary and report ----------------------------------------------------------------------------------------------


def finish(ctx: RunContext, started: float) -> dict:
    from agentprm.pipeline.run_report import write_run_report

    return write_run_report(ctx.dir, ctx.config, time.time() - started)
