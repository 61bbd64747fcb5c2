"""``agentprm play``: a person plays any game in the terminal.

Each turn shows the task, the observation and the numbered admissible actions; the player types a number or any
free text (sent to the engine as it is, so invalid commands get the engine's own answer). ``expert`` shows the
expert's suggestion when the backend has one; ``quit`` or end of input stops.
"""

from __future__ import annotations

import sys
from typing import TextIO

from agentprm.envs.base import Game, Observation, TextEnv


def _show(obs: Observation, out: TextIO, step: int) -> None:
    out.write(f"\n[step {step}] {obs.text}\n")
    for number, action in enumerate(obs.admissible_actions, 1):
        out.write(f"  {number:>3}. {action}\n")
    out.write("> ")
    out.flush()


def parse_choice(line: str, admissible: list[str]) -> str:
    """A number picks an admissible action (1-based); anything else is a free-text command."""
    text = line.strip()
    if text.isdigit() and 1 <= int(text) <= len(admissible):
        return admissible[int(text) - 1]
    return text


def play(env: TextEnv, game: Game, max_steps: int = 50, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> bool:
    """Play one episode interactively; return whether it was won."""
    obs = env.reset(game)
    out.write(f"Game: {game.game_id} ({game.task_type}, {game.split})\nTask: {obs.task}\n")
    for step in range(1, max_steps + 1):
        _show(obs, out, step)
        line = stdin.readline()
        if not line or line.strip() == "quit":
            out.write("\nStopped.\n")
            return False
        if line.strip() == "expert":
            out.write(f"expert suggests: {env.expert_action()}\n")
            line = stdin.readline()
            if not line:
                return False
        action = parse_choice(line, obs.admissible_actions)
        out.write(f"{action}\n")
        result = env.step(action)
        obs = result.observation
        if result.done:
            out.write(f"\n{obs.text}\n{'You won!' if result.won else 'The episode ended.'} ({step} steps)\n")
            return result.won
    out.write(f"\nOut of steps ({max_steps}).\n")
    return False
