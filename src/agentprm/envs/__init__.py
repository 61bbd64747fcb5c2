"""Multi-turn text environments behind one protocol (see ``base``): ALFWorld (``alfworld``) and TextWorldExpress
(``twx``), a batched runner (``runner``) and the registry that maps a backend name to its games (``registry``)."""

from agentprm.envs.base import EnvError, Game, Observation, Step, TextEnv, sanitize_command

__all__ = ["EnvError", "Game", "Observation", "Step", "TextEnv", "sanitize_command"]
