"""Policy throughput on CPU: batched vs one-at-a-time agent steps, admissible scoring vs a naive baseline, SFT tokens/s.

Measurements (one process, CPU, ALFWorld envs in this process: ``workers=0``):

1. **Agent steps/s, admissible mode.** ``evaluate_policy`` plays the same ``--games`` unseen games with
   ``PolicyAgent(mode="admissible", temperature=0.3)`` and ``num_envs`` = 64 (one policy call decides every live
   game's action) and ``num_envs`` = 1 (one call per game step), each episode capped at ``--max-steps`` actions.
   Reported: agent steps / wall time of the whole evaluation (env resets and steps included), and policy-only
   decisions/s (agent steps / time spent inside the agent's calls). Ratio = batched / one-at-a-time. Before any
   timing every game is reset once (one step, random agent) so that the per-process PDDL translation cache is warm
   for every setting; the first reset of each fresh env (~80 ms here) stays in the wall time, since running 64 envs
   means building 64 of them.
2. **The same in free-generation mode** (``mode="free"``, ``max_new_tokens=16``): the response is parsed, and an
   unparsable one still goes to the engine, so trajectories (and step counts) differ from (1).
3. **Admissible scoring vs naive.** Decision states (prompt + admissible candidates) are collected from the games of
   (1) by the random-admissible agent (the first ``--states`` states in play order). Timed on the same states:
   ``Policy.sample_admissible`` on all prompts in one call (batched), ``sample_admissible`` one prompt per call, and
   the naive baseline ``Policy.score_responses([prompt], [[candidate]])`` once per (prompt, candidate): one full
   forward pass over prompt + candidate each. The largest |difference| between the two log-probabilities is
   reported as a correctness check. Then ``sample_admissible`` is timed on groups of 1, 4, 16 and 64 states per
   call, in play order and sorted by prompt length (a group's prompts are left-padded to its longest one). Then the
   PRM: every admissible action of every state scored by ``ProcessRewardModel.score`` (one prompt pass per state)
   vs one full sequence per pair (the implementation before the shared pass), a PRM built from the policy.
4. **SFT training tokens/s** for each preset: a short dedicated ``train_sft`` run (``--sft-steps`` optimiser steps,
   batch 16, the first ``--sft-episodes`` demonstrations) from the initial checkpoints built by
   ``learning_curve.py``; tokens/s as logged by the library at the last step (padded micro-batches, loop only) and
   real (non-pad) tokens/s over the same loop time, with random batches and with batches grouped by length
   (``group_by_length``, the default since this benchmark). The learning-curve runs' figures are copied alongside when
   ``--learning-curve`` points at its JSON.

Every timing is wall-clock on a shared 2-core machine: other jobs may run concurrently (the load average before and
after each measurement is recorded).

Usage (after ``benchmarks/learning_curve.py`` has built its cache):

    python benchmarks/policy_throughput.py --results benchmarks/results/policy_throughput.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import interleave_by_task_type, log, machine_info  # noqa: E402
from machine import load_average  # noqa: E402


class TimedAgent:
    """Wraps a runner policy and accumulates the time spent inside it."""

    def __init__(self, agent):
        self.agent = agent
        self.seconds = 0.0
        self.calls = 0
        self.decisions = 0

    def __call__(self, batch):
        start = time.perf_counter()
        actions = self.agent(batch)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.decisions += len(batch)
        return actions


def agent_throughput(policy, games, mode: str, num_envs: int, max_steps: int, max_new_tokens: int) -> dict:
    from agentprm.agents.policy_agent import PolicyAgent
    from agentprm.models.prompts import PromptConfig
    from agentprm.pipeline.evaluate import evaluate_policy

    agent = TimedAgent(PolicyAgent(policy, prompt=PromptConfig(template="action_only"), mode=mode, temperature=0.3,
                                   max_new_tokens=max_new_tokens, seed=0))
    load_before = load_average()
    evaluation = evaluate_policy("alfworld", games, agent, f"{mode}-{num_envs}", max_steps=max_steps,
                                 num_envs=num_envs, workers=0)
    return {
        "mode": mode, "num_envs": num_envs, "games": len(games), "max_steps": max_steps,
        "agent_steps": evaluation.agent_steps, "wall_s": evaluation.seconds,
        "steps_per_s": evaluation.steps_per_second, "policy_s": agent.seconds, "policy_calls": agent.calls,
        "policy_decisions_per_s": agent.decisions / agent.seconds if agent.seconds else None,
        "env_and_runner_s": evaluation.seconds - agent.seconds, "success": evaluation.success,
        "load_before": load_before, "load_after": load_average(),
    }


def collect_states(games, n_states: int, max_steps: int) -> list[tuple[str, list[str]]]:
    """(observation, history, task...) states from the random-admissible agent, first ``n_states`` in play order."""
    from agentprm.envs.runner import random_admissible_policy
    from agentprm.pipeline.evaluate import evaluate_policy

    states = []
    rand = random_admissible_policy(0)

    def recorder(batch):
        for item in batch:
            if len(states) < n_states:
                states.append(item)
        return rand(batch)

    evaluate_policy("alfworld", games, recorder, "random", max_steps=max_steps, num_envs=16)
    return states


def best_of(fn, repeats: int):
    """(fastest wall time of ``repeats`` calls of ``fn``, the last call's value)."""
    best, value = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def scoring_comparison(policy, states, repeats: int) -> dict:
    from agentprm.models.prompts import PromptConfig, PromptState, render_prompt

    config = PromptConfig(template="action_only")
    prompts = [render_prompt(PromptState.from_policy_input(s), config, policy.tokenizer) for s in states]
    candidates = [s.observation.admissible_actions or ["look"] for s in states]
    n_candidates = sum(len(c) for c in candidates)

    def timed(fn):
        return best_of(fn, repeats)

    load_before = load_average()
    batched_s, _ = timed(lambda: policy.sample_admissible(prompts, candidates, n=1, temperature=0.3, seed=0))
    single_s, _ = timed(lambda: [policy.sample_admissible([p], [c], n=1, temperature=0.3, seed=0)
                                 for p, c in zip(prompts, candidates)])
    shared_scores = policy.score_candidates(prompts, candidates)
    naive_s, naive_scores = timed(lambda: [[policy.score_responses([p], [[a]])[0][0] for a in c]
                                           for p, c in zip(prompts, candidates)])
    diff = max(abs(a - b) for xs, ys in zip(shared_scores, naive_scores) for a, b in zip(xs, ys))
    # Per-decision cost against the number of states scored per call, in the given order and sorted by prompt length
    # (a group's prompts are left-padded to its longest one, and every candidate row gets its own copy of its
    # prompt's KV cache).
    lengths = [len(policy.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    by_length = sorted(range(len(prompts)), key=lambda i: lengths[i])
    group_sweep = []
    for sort in (False, True):
        order = by_length if sort else list(range(len(prompts)))
        ps, cs = [prompts[i] for i in order], [candidates[i] for i in order]
        for group in (1, 4, 16, 64):
            seconds, _ = timed(lambda: [policy.sample_admissible(ps[i: i + group], cs[i: i + group], n=1,
                                                                 temperature=0.3, seed=0)
                                        for i in range(0, len(ps), group)])
            group_sweep.append({"group": group, "sorted_by_length": sort,
                                "ms_per_decision": 1000 * seconds / len(ps)})
    prompt_tokens = lengths
    n = len(states)
    return {
        "states": n, "candidates_total": n_candidates, "candidates_per_state": n_candidates / n,
        "prompt_tokens_mean": sum(prompt_tokens) / n, "repeats_best_of": repeats,
        "sample_admissible_batched_s": batched_s, "sample_admissible_batched_ms_per_decision": 1000 * batched_s / n,
        "sample_admissible_single_s": single_s, "sample_admissible_single_ms_per_decision": 1000 * single_s / n,
        "naive_score_responses_s": naive_s, "naive_ms_per_decision": 1000 * naive_s / n,
        "ratio_naive_over_single": naive_s / single_s, "ratio_naive_over_batched": naive_s / batched_s,
        "max_abs_logprob_diff": diff, "group_sweep": group_sweep,
        "prompt_tokens_min": min(lengths), "prompt_tokens_max": max(lengths),
        "load_before": load_before, "load_after": load_average(),
    }


def prm_scoring_comparison(model_dir: Path, states, repeats: int) -> dict:
    """PRM scoring of every admissible action of every state (Best-of-N's and DPO's shape): ``score`` (one prompt
    pass per state, responses on its cache) vs one full sequence per (state, action), the implementation before
    the shared pass (length-sorted batches of 32 through ``logits``)."""
    import torch

    from agentprm.models.prm import ProcessRewardModel
    from agentprm.models.prompts import PromptConfig, PromptState, render_prompt

    torch.manual_seed(0)
    prm = ProcessRewardModel.from_policy(model_dir, head_init="normal")  # a random head: timing only
    config = PromptConfig(template="action_only")
    prompts, responses = [], []
    for state in states:
        prompt = render_prompt(PromptState.from_policy_input(state), config, prm.tokenizer)
        for action in state.observation.admissible_actions or ["look"]:
            prompts.append(prompt)
            responses.append(action)

    def full_sequences() -> list[float]:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(responses[i]))
        out = [0.0] * len(prompts)
        with torch.no_grad():
            for start in range(0, len(order), 32):
                idx = order[start:start + 32]
                q = torch.sigmoid(prm.logits([prompts[i] for i in idx], [responses[i] for i in idx]))
                for i, value in zip(idx, q.tolist()):
                    out[i] = value
        return out

    def timed(fn):
        return best_of(fn, repeats)

    load_before = load_average()
    prm.model.eval()
    shared_s, shared = timed(lambda: prm.score(prompts, responses))
    full_s, full = timed(full_sequences)
    return {"states": len(states), "pairs": len(prompts), "shared_s": shared_s, "full_s": full_s,
            "shared_ms_per_state": 1000 * shared_s / len(states), "full_ms_per_state": 1000 * full_s / len(states),
            "ratio_full_over_shared": full_s / shared_s,
            "max_abs_score_diff": max(abs(a - b) for a, b in zip(shared, full)),
            "load_before": load_before, "load_after": load_average()}


def sft_throughput(out_dir: Path, preset: str, demos: Path, steps: int, episodes: int, lr: float,
                   group_by_length: bool) -> dict:
    from transformers import AutoTokenizer

    from agentprm.algorithms.sft import SFTConfig, train_sft
    from agentprm.config import load_config
    from agentprm.metrics import read_metrics
    from learning_curve import token_counts

    init = out_dir / "models" / f"init-{preset}"
    if not (init / "config.json").is_file():
        raise SystemExit(f"{init} is missing: run benchmarks/learning_curve.py first")
    run = out_dir / "throughput" / f"sft-{preset}"
    if run.exists():
        shutil.rmtree(run)
    config = load_config(SFTConfig, {
        "data": str(demos), "model": str(init), "out": str(run), "max_episodes": episodes, "val_fraction": 0.1,
        "max_steps": steps, "batch_size": 16, "lr": lr, "warmup_steps": 10, "eval_every": steps,
        "save_every": steps, "seed": 0, "progress": False, "group_by_length": group_by_length,
    })
    load_before = load_average()
    start = time.perf_counter()
    train_sft(config)
    wall = time.perf_counter() - start
    counts = token_counts(config, AutoTokenizer.from_pretrained(init), steps)
    tps = read_metrics(run / "metrics.jsonl", name="tokens_per_s")
    loop_padded = tps[-1]["value"]
    loop_s = counts["padded_tokens"] / loop_padded
    shutil.rmtree(run)
    return {"preset": preset, "group_by_length": group_by_length, "steps": steps, "episodes": episodes,
            "wall_s": wall, "loop_s": loop_s,
            "padded_tokens_per_s": loop_padded, "real_tokens_per_s": counts["real_tokens"] / loop_s,
            "padding_overhead": counts["padded_tokens"] / counts["real_tokens"] - 1,
            "mean_example_tokens": counts["mean_example_tokens"], "load_before": load_before, "load_after": load_average()}


def render(results: dict) -> str:
    lines = ["| measurement | setting | agent steps | wall s | steps/s (wall) | policy decisions/s | policy share |",
             "|---|---|---|---|---|---|---|"]
    for row in results["agent"]:
        lines.append(f"| {row['mode']} | num_envs={row['num_envs']} | {row['agent_steps']} | {row['wall_s']:.1f} | "
                     f"{row['steps_per_s']:.1f} | {row['policy_decisions_per_s']:.1f} | "
                     f"{row['policy_s'] / row['wall_s']:.0%} |")
    for mode, ratio in results["ratios"].items():
        lines.append(f"| {mode} | ratio 64 / 1 | | | {ratio['steps_per_s']:.2f}x | "
                     f"{ratio['policy_decisions_per_s']:.2f}x | |")
    s = results.get("scoring")
    if s:
        lines += ["", f"Admissible scoring, {s['states']} states, {s['candidates_per_state']:.1f} candidates each, "
                      f"prompt {s['prompt_tokens_mean']:.0f} tokens (best of {s['repeats_best_of']}):", "",
                  "| method | ms per decision | vs naive |", "|---|---|---|",
                  f"| sample_admissible, all states in one call | {s['sample_admissible_batched_ms_per_decision']:.1f}"
                  f" | {s['ratio_naive_over_batched']:.1f}x faster |",
                  f"| sample_admissible, one state per call | {s['sample_admissible_single_ms_per_decision']:.1f} | "
                  f"{s['ratio_naive_over_single']:.1f}x faster |",
                  f"| naive score_responses per candidate | {s['naive_ms_per_decision']:.1f} | 1x |",
                  f"| max abs log-prob difference | {s['max_abs_logprob_diff']:.2e} | |",
                  "", "sample_admissible cost vs states per call (ms per decision):", "",
                  "| states per call | " + " | ".join(str(g["group"]) for g in s["group_sweep"]
                                                      if not g["sorted_by_length"]) + " |",
                  "|---|" + "---|" * sum(not g["sorted_by_length"] for g in s["group_sweep"])]
        for sort in (False, True):
            label = "sorted by prompt length" if sort else "play order"
            lines.append(f"| {label} | " + " | ".join(f"{g['ms_per_decision']:.1f}" for g in s["group_sweep"]
                                                      if g["sorted_by_length"] == sort) + " |")
    if results.get("prm_scoring"):
        r = results["prm_scoring"]
        lines += ["", f"PRM scoring of every admissible action, {r['states']} states, {r['pairs']} pairs:", "",
                  "| method | ms per state | speed-up |", "|---|---|---|",
                  f"| shared prompt pass (`ProcessRewardModel.score`) | {r['shared_ms_per_state']:.1f} | "
                  f"{r['ratio_full_over_shared']:.1f}x |",
                  f"| one full sequence per pair | {r['full_ms_per_state']:.1f} | 1x |",
                  f"| max abs score difference | {r['max_abs_score_diff']:.1e} | |"]
    if results.get("sft"):
        lines += ["", "| SFT preset | batches | steps | padded tokens/s | real tokens/s | padding overhead | loop s |",
                  "|---|---|---|---|---|---|---|"]
        for r in results["sft"]:
            batches = "grouped by length" if r.get("group_by_length") else "random"
            lines.append(f"| {r['preset']} | {batches} | {r['steps']} | {r['padded_tokens_per_s']:.0f} | "
                         f"{r['real_tokens_per_s']:.0f} | {r['padding_overhead']:.0%} | {r['loop_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default="/tmp/agentprm-bench", help="learning_curve.py's cache")
    parser.add_argument("--model", default="", help="policy checkpoint (default: OUT/runs/tiny-n800-s3000/model)")
    parser.add_argument("--games", type=int, default=64, help="unseen games (round-robin by task type)")
    parser.add_argument("--batch-envs", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=10, help="actions per episode in the throughput runs")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--states", type=int, default=64, help="decision states for the scoring comparison")
    parser.add_argument("--repeats", type=int, default=2, help="scoring timings: best of this many")
    parser.add_argument("--sft-presets", default="tiny,small")
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--sft-episodes", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: agent,free,scoring,sft")
    parser.add_argument("--learning-curve", default="benchmarks/results/learning_curve.json")
    parser.add_argument("--results", default="benchmarks/results/policy_throughput.json")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from agentprm.envs.registry import list_games
    from agentprm.models.policy import Policy

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    out_dir = Path(args.out_dir)
    model = Path(args.model) if args.model else out_dir / "runs" / "tiny-n800-s3000" / "model"
    if not (model / "config.json").is_file():
        raise SystemExit(f"{model} is missing: run benchmarks/learning_curve.py first (or pass --model)")
    games = interleave_by_task_type(list_games("alfworld", "valid_unseen", root=str(out_dir / "games")))[: args.games]
    policy = Policy.from_pretrained(model)
    started = time.perf_counter()
    results: dict = {
        "benchmark": "policy_throughput",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": machine_info(), "config": vars(args), "model": str(model),
        "parameters": sum(p.numel() for p in policy.model.parameters()),
        "agent": [], "ratios": {},
    }

    def save():
        results["total_s"] = time.perf_counter() - started
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(results, indent=1) + "\n")

    # Warm-up: one step of every game, so the PDDL translation cache (per process) is filled before any timing and
    # no setting pays the first translations. The per-env cost of a fresh env's first reset is NOT removed: it is
    # part of running more envs.
    from agentprm.envs.runner import random_admissible_policy
    from agentprm.pipeline.evaluate import evaluate_policy

    warm = evaluate_policy("alfworld", games, random_admissible_policy(0), "warm-up", max_steps=1, num_envs=1)
    results["warm_up_s"] = warm.seconds
    log(f"warm-up: {len(games)} games in {warm.seconds:.1f} s")

    for mode in ("admissible", "free"):
        if (mode == "admissible" and "agent" in skip) or (mode == "free" and "free" in skip):
            continue
        rows = {}
        for num_envs in (args.batch_envs, 1):
            log(f"{mode}: {len(games)} games, num_envs={num_envs}, max {args.max_steps} steps")
            rows[num_envs] = agent_throughput(policy, games, mode, num_envs, args.max_steps, args.max_new_tokens)
            log(f"  {rows[num_envs]['steps_per_s']:.1f} steps/s, "
                f"{rows[num_envs]['policy_decisions_per_s']:.1f} policy decisions/s")
            results["agent"].append(rows[num_envs])
            save()
        big, one = rows[args.batch_envs], rows[1]
        results["ratios"][mode] = {
            "steps_per_s": big["steps_per_s"] / one["steps_per_s"],
            "policy_decisions_per_s": big["policy_decisions_per_s"] / one["policy_decisions_per_s"],
        }
        save()

    if "scoring" not in skip:
        log(f"scoring: collecting {args.states} states")
        states = collect_states(games, args.states, args.max_steps)
        results["scoring"] = scoring_comparison(policy, states, args.repeats)
        log(f"  naive / single {results['scoring']['ratio_naive_over_single']:.1f}x")
        save()
        results["prm_scoring"] = prm_scoring_comparison(model, states, args.repeats)
        log(f"  PRM full sequences / shared prompt {results['prm_scoring']['ratio_full_over_shared']:.1f}x")
        save()

    if "sft" not in skip:
        results["sft"] = []
        for preset in (p.strip() for p in args.sft_presets.split(",") if p.strip()):
            lr = {"tiny": 3e-3, "small": 1e-3}.get(preset, 1e-3)
            for grouped in (False, True):
                log(f"sft {preset}: {args.sft_steps} steps, group_by_length={grouped}")
                results["sft"].append(sft_throughput(out_dir, preset, out_dir / "demos_train.jsonl",
                                                     args.sft_steps, args.sft_episodes, lr, grouped))
                save()
        curve = Path(args.learning_curve)
        if curve.is_file():
            data = json.loads(curve.read_text())
            results["sft_from_learning_curve"] = [
                {"preset": r["preset"], "demos": r["demos"], "steps": r["sft"]["steps"],
                 "loop_padded_tokens_per_s": r["sft"]["loop_tokens_per_s"],
                 "real_tokens_per_s_wall": r["sft"]["real_tokens_per_s_wall"], "wall_s": r["sft"]["wall_s"]}
                for r in data.get("runs", [])]

    results["table"] = render(results)
    save()
    print(results["table"])
    print(f"total {results['total_s']:.0f} s; results in {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
