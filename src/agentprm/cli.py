"""The ``agentprm`` command line: a thin layer that parses arguments and calls the library.

    agentprm games alfworld --out DIR [--seed S --train N --seen N --unseen N ...]
    agentprm demos --env alfworld --games DIR --split train --out demos.jsonl
    agentprm play --env alfworld --games DIR --split train --index 0
    agentprm parquet demos.jsonl demos.parquet [--level step|episode]

Every user-facing error (unknown environment, missing games, corrupt file) is printed as one line on stderr with
exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

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

    parquet = sub.add_parser("parquet", help="convert trajectory JSONL to Parquet",
                             description="Convert a trajectory JSONL file to Parquet (datasets/pandas readable).")
    parquet.add_argument("input", help="trajectory JSONL file")
    parquet.add_argument("output", help="Parquet file to write")
    parquet.add_argument("--level", default="step", choices=["step", "episode"], help="one row per step or episode")
    parquet.set_defaults(func=cmd_parquet)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from agentprm.data.jsonl import CorruptFileError
    from agentprm.data.records import RecordError

    try:
        return args.func(args)
    except (EnvError, CorruptFileError, RecordError, FileNotFoundError) as error:
        print(f"agentprm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"agentprm {args.command}: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
