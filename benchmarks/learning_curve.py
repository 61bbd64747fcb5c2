"""Learning curve of the SFT policy pi_0: success on unseen ALFWorld games vs demonstration count and model size.

Question: which number of expert demonstrations and which embedded-model preset give a pi_0 that is clearly better
than a random-admissible agent but not perfect (the paper's SFT pi_0: 65% on unseen games)?

Pipeline (CPU only, nothing downloaded):

1. **Games** (cached): ``generate_games(OUT/games, seed, {"train": 800, "valid_unseen": 120}, max_receptacles=6)``,
   all six task types dealt round-robin. Skipped when ``OUT/games/manifest.json`` exists with the same seed, counts
   and room size. The unseen games are only ever evaluated on, never used to choose anything.
2. **Demonstrations** (cached, resumable): the handcoded expert plays the train games (``record_demos``, 2 worker
   processes, 8 envs) into ``OUT/demos_train.jsonl``. The games are passed **interleaved by task type** (game i of
   type 1, game i of type 2, ...), so the file's "first N episodes" are a balanced mix of the six types rather than
   the first N games in id order (ids sort by task type: the first 50 would all be ``look_at_obj_in_light``).
3. **Initial models** (cached, deterministic): one per preset, as ``agentprm init-model`` builds it: byte-level BPE
   tokenizer trained on the environment text of all train demonstrations plus the prompt templates' words (the
   first 20 episodes rendered with both templates), Llama model of the preset, seed 0. Every demo count of a preset
   starts from the same initial weights and tokenizer.
4. **SFT** (always re-run, so its wall time is measured): ``train_sft`` on the first N episodes
   (``max_episodes=N``), ``action_only`` prompt, ``val_fraction=0.1`` (by game hash), batch 16, a FIXED number of
   optimiser steps per preset (``--steps``, the same for every N, so the curve compares equal compute: small N means
   more epochs), AdamW, warm-up ``max(10, steps // 20)``, cosine to 0.1 x lr, validation loss only at the end.
5. **Evaluation**: the first ``--eval-games`` unseen games (taken round-robin by task type, so a subset stays
   balanced; all 120 by default), ``PolicyAgent`` in ``admissible`` mode (softmax over the admissible actions'
   log-probabilities at temperature 0.3, seed 0), 30 steps, 16 envs in this process. The random-admissible agent is
   evaluated on the same games.

Run folders are ``OUT/runs/<preset>-n<demos>-s<steps>`` (``model/``, ``metrics.jsonl``, ``eval_unseen.jsonl``).
``--extra preset:demos:steps`` adds runs outside the grid; ``--reuse a.json,b.json`` copies runs (and the random
baseline) measured by earlier invocations with identical settings instead of re-running them, so results of several
invocations can be assembled into one file (each run keeps the command that produced it). Results are written after
every run, so a killed invocation keeps the runs it finished.

Token counts: ``train_sft`` reports ``tokens_per_s`` over padded micro-batches (pad tokens included), averaged over
its loop plus its final train/validation evaluations. This script also replays the same batch schedule to count
real (non-pad) tokens, and reports ``real_tokens_per_s_wall`` = real tokens / the whole ``train_sft`` call (model
load, tokenisation of the examples, final evaluations and saving included) and ``loop_tokens_per_s`` = the library's
padded figure logged at the last optimiser step (loop only: no evaluation happened before it).

Usage (from the repository root, venv active):

    python benchmarks/learning_curve.py --demo-counts 50 --presets tiny --eval-games 24 --results /tmp/lc-smoke.json
    python benchmarks/learning_curve.py --threads 1 --results benchmarks/results/learning_curve.json

(the exact invocations behind ``benchmarks/results/learning_curve.json`` are listed in ``benchmarks/LEARNING_CURVE.md``)
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
from collections import defaultdict
from pathlib import Path

import torch
from machine import load_average
from machine import machine_info as shared_machine_info

from agentprm.envs.base import Game

DEFAULT_STEPS = {"tiny": 600, "small": 300}
DEFAULT_LR = {"tiny": 3e-3, "small": 1e-3, "base": 5e-4}


# -- helpers ---------------------------------------------------------------------------------------------------------


def machine_info() -> dict:
    return {**shared_machine_info(("agentprm", "torch", "transformers", "accelerate", "alfworld", "textworld",
                                   "tokenizers")),
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "load_average_at_start": load_average()}


def interleave_by_task_type(games: list[Game]) -> list[Game]:
    """Game 0 of every task type, then game 1 of every type, ... (types in sorted order, games in id order)."""
    groups: dict[str, list[Game]] = defaultdict(list)
    for game in games:
        groups[game.task_type].append(game)
    ordered = []
    for i in range(max((len(g) for g in groups.values()), default=0)):
        for task_type in sorted(groups):
            if i < len(groups[task_type]):
                ordered.append(groups[task_type][i])
    return ordered


def parse_per_preset(text: str, cast, presets: list[str], defaults: dict) -> dict:
    """``"600"`` (every preset) or ``"tiny=600,small=300"``; presets not named keep their default."""
    values = {p: defaults.get(p) for p in presets}
    text = (text or "").strip()
    if not text:
        return values
    if "=" not in text:
        return {p: cast(text) for p in presets}
    for part in text.split(","):
        name, value = part.split("=", 1)
        values[name.strip()] = cast(value)
    return values


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- stages ----------------------------------------------------------------------------------------------------------


def prepare_games(out_dir: Path, seed: int, n_train: int, n_unseen: int, max_receptacles: int) -> dict:
    from agentprm.envs.alfworld_build import MANIFEST, generate_games

    root = out_dir / "games"
    manifest_path = root / MANIFEST
    wanted = {"train": n_train, "valid_unseen": n_unseen}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if (manifest.get("seed") == seed and manifest.get("totals") == wanted
                and manifest.get("max_receptacles") == max_receptacles):
            log(f"games: cached {wanted} in {root}")
            return {"cached": True, "seconds": None, "manifest": manifest}
        raise SystemExit(f"{manifest_path} was built with other settings (seed {manifest.get('seed')}, totals "
                         f"{manifest.get('totals')}, max_receptacles {manifest.get('max_receptacles')}); "
                         f"delete {root} or pick another --out-dir")
    log(f"games: generating {wanted} (seed {seed}, max_receptacles {max_receptacles}) into {root}")
    start = time.perf_counter()
    manifest = generate_games(root, seed=seed, counts=wanted, max_receptacles=max_receptacles, workers=2,
                              progress=False)
    seconds = time.perf_counter() - start
    log(f"games: done in {seconds:.0f} s")
    return {"cached": False, "seconds": seconds, "manifest": manifest}


def prepare_demos(out_dir: Path, train_games: list[Game]) -> dict:
    from agentprm.data import count_episodes
    from agentprm.pipeline.demos import record_demos

    path = out_dir / "demos_train.jsonl"
    before = count_episodes(path) if path.exists() else 0
    if before >= len(train_games):
        log(f"demos: cached {before} episodes in {path}")
        table = record_demos("alfworld", [], path, progress=False)  # only reads the file back
        return {"cached": True, "seconds": None, "episodes": before, "success": table.success(),
                "mean_steps": table.mean_steps()}
    log(f"demos: recording {len(train_games) - before} episodes (resuming after {before}) into {path}")
    start = time.perf_counter()
    table = record_demos("alfworld", interleave_by_task_type(train_games), path, workers=2, num_envs=8,
                         progress=False)
    seconds = time.perf_counter() - start
    log(f"demos: done in {seconds:.0f} s, expert success {table.success():.1%}")
    return {"cached": before > 0, "seconds": seconds, "episodes_recorded_now": len(train_games) - before,
            "episodes": count_episodes(path), "success": table.success(), "mean_steps": table.mean_steps()}


def prepare_init_model(out_dir: Path, preset: str, demos: Path) -> tuple[Path, dict]:
    """The initial checkpoint of ``preset`` built exactly as ``agentprm init-model --records demos`` does."""
    from agentprm.data import read_trajectories
    from agentprm.models.embedded import init_embedded_model, read_model_info
    from agentprm.models.prompts import PromptConfig, PromptState, format_response, render_plain
    from agentprm.models.tokenizer import environment_corpus

    path = out_dir / "models" / f"init-{preset}"
    if not (path / "config.json").is_file():
        records = list(read_trajectories(demos))
        template_texts = [render_plain(PromptState.from_trajectory(r, 0), PromptConfig(template=t))
                          + format_response(r.steps[0].action, "", PromptConfig(template=t))
                          for r in records[:20] if r.steps for t in ("action_only", "reason_action")]
        init_embedded_model(path, environment_corpus(records, template_texts), preset=preset, seed=0,
                            overwrite=True)
    info = read_model_info(path) or {}
    log(f"model {preset}: {info.get('parameters', 0):,} parameters, vocabulary {info.get('vocab_size')}")
    return path, info


def token_counts(config, tokenizer, total_steps: int) -> dict:
    """Replay ``train_sft``'s batch schedule and count real and padded tokens."""
    from agentprm.algorithms.sft import batch_order, load_examples

    train, val = load_examples(config, tokenizer)
    micro_per_epoch = math.ceil(len(train) / config.batch_size)
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / config.grad_accum))
    real = padded = 0
    grouping = [len(e) for e in train] if getattr(config, "group_by_length", False) else None
    for step in range(total_steps):
        epoch, within = divmod(step, steps_per_epoch)
        batches = batch_order(len(train), config.batch_size, config.seed, epoch, grouping)
        for ids in batches[within * config.grad_accum: (within + 1) * config.grad_accum]:
            lengths = [len(train[i]) for i in ids]
            real += sum(lengths)
            padded += max(lengths) * len(lengths)
    lengths = [len(e) for e in train]
    return {"train_examples": len(train), "val_examples": len(val), "epochs": total_steps / steps_per_epoch,
            "steps_per_epoch": steps_per_epoch, "real_tokens": real, "padded_tokens": padded,
            "mean_example_tokens": sum(lengths) / len(lengths), "max_example_tokens": max(lengths)}


def run_sft(out_dir: Path, preset: str, init: Path, demos: Path, n_demos: int, steps: int, lr: float,
            batch_size: int) -> tuple[Path, dict]:
    from transformers import AutoTokenizer

    from agentprm.algorithms.sft import SFTConfig, train_sft
    from agentprm.config import load_config
    from agentprm.metrics import read_metrics

    run = out_dir / "runs" / f"{preset}-n{n_demos}-s{steps}"
    if run.exists():
        shutil.rmtree(run)  # always retrain: the wall time is one of the measurements
    config = load_config(SFTConfig, {
        "data": str(demos), "model": str(init), "out": str(run), "max_episodes": n_demos, "val_fraction": 0.1,
        "max_steps": steps, "batch_size": batch_size, "lr": lr, "warmup_steps": max(10, steps // 20),
        "min_lr_ratio": 0.1, "eval_every": steps, "save_every": steps, "seed": 0, "progress": False,
    })
    log(f"sft {preset} n={n_demos}: {steps} steps, lr {lr:g}, batch {batch_size}")
    start = time.perf_counter()
    summary = train_sft(config)
    wall = time.perf_counter() - start
    counts = token_counts(config, AutoTokenizer.from_pretrained(init), steps)
    loop_tps = [m["value"] for m in read_metrics(run / "metrics.jsonl", name="tokens_per_s")]
    losses = [m["value"] for m in read_metrics(run / "metrics.jsonl", name="loss")]
    result = {
        "steps": steps, "lr": lr, "batch_size": batch_size, "warmup_steps": config.warmup_steps,
        "wall_s": wall, "train_loss": summary["train_loss"], "val_loss": summary["val_loss"],
        "last_step_batch_loss": losses[-1] if losses else None,
        "library_tokens_per_s": summary["tokens_per_s"],
        "loop_tokens_per_s": loop_tps[-1] if loop_tps else None,
        "real_tokens_per_s_wall": counts["real_tokens"] / wall,
        **counts,
    }
    log(f"sft {preset} n={n_demos}: {wall:.0f} s, train loss {result['train_loss']:.3f}, val loss "
        f"{result['val_loss']:.3f}, {result['loop_tokens_per_s']:.0f} padded tok/s in the loop")
    return run / "model", result


def summarize_eval(evaluation, seconds: float) -> dict:
    wins, total = evaluation.table.counts()
    low, high = evaluation.ci95
    return {"games": total, "wins": wins, "success": evaluation.success, "ci95": [low, high],
            "by_task_type": evaluation.table.by_task_type(), "mean_steps": evaluation.table.mean_steps(),
            "eval_s": seconds, "agent_steps": evaluation.agent_steps,
            "steps_per_s": evaluation.steps_per_second}


def evaluate_model(model_dir: Path, games: list[Game], num_envs: int, records: Path | None) -> dict:
    from agentprm.agents.policy_agent import PolicyAgent
    from agentprm.models.policy import Policy
    from agentprm.models.prompts import PromptConfig
    from agentprm.pipeline.evaluate import evaluate_policy

    policy = Policy.from_pretrained(model_dir)
    agent = PolicyAgent(policy, prompt=PromptConfig(template="action_only"), mode="admissible", temperature=0.3,
                        seed=0)
    start = time.perf_counter()
    evaluation = evaluate_policy("alfworld", games, agent, f"sft:{model_dir.parent.name}", max_steps=30,
                                 num_envs=num_envs, records=records)
    return summarize_eval(evaluation, time.perf_counter() - start)


def evaluate_random(games: list[Game], num_envs: int) -> dict:
    from agentprm.envs.runner import random_admissible_policy
    from agentprm.pipeline.evaluate import evaluate_policy

    start = time.perf_counter()
    evaluation = evaluate_policy("alfworld", games, random_admissible_policy(0), "random", max_steps=30,
                                 num_envs=num_envs)
    return summarize_eval(evaluation, time.perf_counter() - start)


# -- output ----------------------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def render_table(results: dict) -> str:
    abbreviations = {"look_at_obj_in_light": "look", "pick_and_place_simple": "pick",
                     "pick_clean_then_place_in_recep": "clean", "pick_cool_then_place_in_recep": "cool",
                     "pick_heat_then_place_in_recep": "heat", "pick_two_obj_and_place": "two"}
    types = list(abbreviations)
    header = ("| agent | demos | steps (epochs) | success % [95% CI] | "
              + " | ".join(abbreviations[t] for t in types)
              + " | mean steps | train / val loss | SFT s | tok/s (real, wall) | eval s |")
    rows = [header, "|" + "---|" * (header.count("|") - 1)]

    def row(name, demos, sft, ev):
        per_type = " | ".join(_pct(ev["by_task_type"][t]) if t in ev["by_task_type"] else "-" for t in types)
        ci = f"{_pct(ev['success'])} [{_pct(ev['ci95'][0])}, {_pct(ev['ci95'][1])}]"
        if sft:
            sched = f"{sft['steps']} ({sft['epochs']:.1f})"
            loss = f"{sft['train_loss']:.3f} / {sft['val_loss']:.3f}"
            extra = f"{sft['wall_s']:.0f} | {sft['real_tokens_per_s_wall']:.0f}"
        else:
            sched, loss, extra = "-", "-", "- | -"
        return (f"| {name} | {demos} | {sched} | {ci} ({ev['wins']}/{ev['games']}) | {per_type} | "
                f"{ev['mean_steps']:.1f} | {loss} | {extra} | {ev['eval_s']:.0f} |")

    if "random" in results:
        rows.append(row("random-admissible", "-", None, results["random"]))
    for run in results["runs"]:
        name = f"{run['preset']} ({run['parameters'] / 1e6:.2f}M){' (extra)' if run.get('extra') else ''}"
        rows.append(row(name, run["demos"], run["sft"], run["eval"]))
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default="/tmp/agentprm-bench", help="cache: games, demos, models, runs")
    parser.add_argument("--demo-counts", default="50,200,800")
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--eval-games", type=int, default=120, help="unseen games evaluated (round-robin by type)")
    parser.add_argument("--steps", default="", help="SFT optimiser steps: one number for every preset or "
                        "'tiny=600,small=300' (default: " + ",".join(f"{k}={v}" for k, v in DEFAULT_STEPS.items())
                        + ")")
    parser.add_argument("--lr", default="", help="peak lr per preset, same syntax (default: "
                        + ",".join(f"{k}={v:g}" for k, v in DEFAULT_LR.items()) + ")")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-games", type=int, default=800)
    parser.add_argument("--unseen-games", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0, help="game generation seed")
    parser.add_argument("--max-receptacles", type=int, default=6)
    parser.add_argument("--num-envs", type=int, default=16, help="episodes played at once during evaluation")
    parser.add_argument("--skip-random", action="store_true")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default, one per core). On a shared machine 1 avoids "
                             "the OpenMP oversubscription slow-down (measured up to ~10x with 2 threads under load)")
    parser.add_argument("--extra", default="",
                        help="additional runs outside the grid, comma-separated preset:demos:steps "
                             "(e.g. tiny:800:3000)")
    parser.add_argument("--reuse", default="",
                        help="comma-separated result files of earlier invocations: a run (or the random baseline) "
                             "with the same preset, demos, steps, lr, batch size and evaluation games is copied "
                             "from there (with its command) instead of being trained and evaluated again")
    parser.add_argument("--results", default="benchmarks/results/learning_curve.json")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from agentprm.envs.registry import list_games

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    demo_counts = [int(n) for n in args.demo_counts.split(",") if n.strip()]
    steps = parse_per_preset(args.steps, int, presets, DEFAULT_STEPS)
    lrs = parse_per_preset(args.lr, float, presets, DEFAULT_LR)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {
        "benchmark": "learning_curve",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": machine_info(),
        "config": {**vars(args), "steps": steps, "lr": lrs, "prompt_template": "action_only",
                   "agent": {"mode": "admissible", "temperature": 0.3, "seed": 0, "max_steps": 30},
                   "sft": {"val_fraction": 0.1, "min_lr_ratio": 0.1, "weight_decay": 0.01, "max_length": 512,
                           "warmup_steps": "max(10, steps // 20)", "seed": 0}},
        "runs": [],
    }
    timings: dict = {}

    t = time.perf_counter()
    results["games"] = prepare_games(out_dir, args.seed, args.train_games, args.unseen_games, args.max_receptacles)
    games_root = str(out_dir / "games")
    train_games = list_games("alfworld", "train", root=games_root)
    unseen = interleave_by_task_type(list_games("alfworld", "valid_unseen", root=games_root))[: args.eval_games]
    timings["games_s"] = time.perf_counter() - t

    t = time.perf_counter()
    results["demos"] = prepare_demos(out_dir, train_games)
    demos = out_dir / "demos_train.jsonl"
    timings["demos_s"] = time.perf_counter() - t
    results["eval_games"] = {"count": len(unseen), "task_types": dict(sorted(
        {tt: sum(g.task_type == tt for g in unseen) for tt in {g.task_type for g in unseen}}.items()))}

    earlier = []  # (file, results) of --reuse files
    for name in (f.strip() for f in args.reuse.split(",") if f.strip()):
        earlier.append((name, json.loads(Path(name).read_text())))

    if not args.skip_random:
        reused = next(((f, r) for f, r in earlier
                       if r.get("random") and r["random"]["games"] == len(unseen)), None)
        if reused:
            results["random"] = {**reused[1]["random"], "reused_from": reused[0], "command": reused[1]["command"]}
            log(f"random: reused from {reused[0]}")
        else:
            t = time.perf_counter()
            results["random"] = evaluate_random(unseen, args.num_envs)
            log(f"random: {results['random']['success']:.1%} in {time.perf_counter() - t:.0f} s")

    plan = [(preset, n, steps[preset], False) for preset in presets for n in demo_counts]
    for item in (x.strip() for x in args.extra.split(",") if x.strip()):
        preset, n, k = item.split(":")
        plan.append((preset, int(n), int(k), True))
    for preset, n, k, extra in plan:
        lr = lrs.get(preset) or DEFAULT_LR[preset]
        reused = next(((f, run, r["command"]) for f, r in earlier for run in r.get("runs", [])
                       if run["preset"] == preset and run["demos"] == n and run["sft"]["steps"] == k
                       and run["sft"]["lr"] == lr and run["sft"]["batch_size"] == args.batch_size
                       and run["eval"]["games"] == len(unseen)), None)
        if reused:
            log(f"{preset} n={n} steps={k}: reused from {reused[0]}")
            results["runs"].append({**reused[1], "extra": extra, "reused_from": reused[0],
                                    "command": reused[1].get("command", reused[2])})
        else:
            t = time.perf_counter()
            init, info = prepare_init_model(out_dir, preset, demos)
            timings.setdefault(f"init_{preset}_s", time.perf_counter() - t)
            model_dir, sft = run_sft(out_dir, preset, init, demos, n, k, lr, args.batch_size)
            ev = evaluate_model(model_dir, unseen, args.num_envs, model_dir.parent / "eval_unseen.jsonl")
            log(f"eval {preset} n={n}: {ev['success']:.1%} [{ev['ci95'][0]:.1%}, {ev['ci95'][1]:.1%}], "
                f"{ev['eval_s']:.0f} s")
            results["runs"].append({"preset": preset, "parameters": info.get("parameters"),
                                    "vocab_size": info.get("vocab_size"), "demos": n, "model_dir": str(model_dir),
                                    "extra": extra, "command": results["command"], "sft": sft, "eval": ev})
            timings["total_s"] = time.perf_counter() - started
            results["timings"] = timings
            Path(args.results).parent.mkdir(parents=True, exist_ok=True)
            Path(args.results).write_text(json.dumps(results, indent=1) + "\n")  # partial results survive a kill

    timings["total_s"] = time.perf_counter() - started
    results["timings"] = timings
    results["table"] = render_table(results)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=1) + "\n")
    print(results["table"])
    print(f"total {timings['total_s']:.0f} s; results in {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
