"""Command line of the trainer modules run outside ``agentprm run`` (``python -m agentprm.algorithms.prm_training``,
``... .dpo_trainer``), usually under ``accelerate launch``: ``POSITIONAL ... [key=value ...] [--template T]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TypeVar

from agentprm.config import ConfigError, load_config
from agentprm.models.prompts import PromptConfig

T = TypeVar("T")


def trainer_arguments(module: str, doc: str | None, config_cls: type[T], positionals: Sequence[tuple[str, str]],
                      argv: Sequence[str] | None) -> tuple[argparse.Namespace, T, PromptConfig]:
    """Parse a trainer's arguments: the named positionals, then ``key=value`` overrides of ``config_cls`` and the
    policy's prompt template. Returns (arguments, config, prompt config); a bad key or value exits with status 2
    and one line on stderr naming the key, before any file is read or model loaded (as ``agentprm``'s commands)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, text in positionals:
        parser.add_argument(name, help=text)
    parser.add_argument("overrides", nargs="*", help=f"{config_cls.__name__} key=value overrides")
    parser.add_argument("--template", default="action_only", help="prompt template (action_only, reason_action)")
    args = parser.parse_args(argv)
    try:
        config = load_config(config_cls, {}, args.overrides)
    except ConfigError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return args, config, PromptConfig(template=args.template)
