"""What the ``alfworld`` wheel ships that our offline game generator is built from.

ALFWorld's official game sets cannot be downloaded here, but the wheel carries everything a game is made of: the
PDDL domain (``data/alfred.pddl``), the TextWorld grammar (``data/alfred.twl2``), the goal library
(``gen/goal_library.py``: PDDL goal and English task sentence per task type), the object/receptacle compatibility
table (``gen/constants.py``: ``VAL_RECEPTACLE_OBJECTS``, ``VAL_ACTION_OBJECTS``) and 120 real AI2-THOR floor plans
(``gen/layouts/FloorPlan*-openable.json``: every receptacle instance with its ALFRED id and the agent pose that
faces it; ``*-objects.json``: the object types present in the room).

Names follow ALFRED's mangling (``PlannedGameState.fix_pddl_str_chars``) so that ALFWorld's ``AlfredDemangler``
prints them the way the official games do ("apple 1", "sinkbasin 1").
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import re
from dataclasses import dataclass
from pathlib import Path

from agentprm.envs.base import EnvError

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
"""The six ALFWorld task types, in ALFWorld's own numbering order (1..6 in ``AlfredTWEnv.TASK_TYPES``)."""

TASK_TYPE_SHORT = {
    "pick_and_place_simple": "pick",
    "look_at_obj_in_light": "look",
    "pick_clean_then_place_in_recep": "clean",
    "pick_heat_then_place_in_recep": "heat",
    "pick_cool_then_place_in_recep": "cool",
    "pick_two_obj_and_place": "pick2",
}

_MANGLE = {"-": "_minus_", "#": "-", "|": "_bar_", "+": "_plus_", ".": "_dot_", ",": "_comma_"}
_MANGLE_RE = re.compile("|".join(re.escape(k) for k in _MANGLE))


def mangle(text: str) -> str:
    """ALFRED's PDDL name mangling: ``Apple|+01.00|-00.50`` -> ``Apple_bar__plus_01_dot_00_bar__minus_00_dot_50``.

    All characters are replaced in one pass (``#`` stands for ``-`` in goal templates, so it must not be re-mangled).
    """
    return _MANGLE_RE.sub(lambda m: _MANGLE[m.group(0)], text)


def alfworld_version() -> str:
    try:
        return importlib.metadata.version("alfworld")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _require_alfworld():
    try:
        import alfworld  # noqa: F401
    except ImportError as error:
        raise EnvError(
            "The ALFWorld backend needs the `alfworld` package: pip install -e '.[alfworld]' (alfworld==0.4.2)"
        ) from error
    return Path(alfworld.__file__).parent


@dataclass(frozen=True)
class FloorPlan:
    """One AI2-THOR room: receptacle instances (ALFRED id -> agent pose facing it) and the object types present."""

    scene: int
    receptacles: dict[str, tuple[float, float, int, int]]
    object_types: frozenset[str]

    @property
    def name(self) -> str:
        return f"FloorPlan{self.scene}"


def receptacle_type(receptacle_id: str) -> str:
    """``Cabinet|+00.68|...`` -> ``Cabinet``; ``Sink|...|SinkBasin`` -> ``SinkBasin`` (the basin is the receptacle)."""
    parts = receptacle_id.split("|")
    return parts[-1] if len(parts) == 5 else parts[0]


@functools.cache
def assets() -> "AlfworldAssets":
    return AlfworldAssets(_require_alfworld())


class AlfworldAssets:
    """Read-only access to the wheel's domain, grammar, goal library, constants and floor plans (loaded once)."""

    def __init__(self, root: Path):
        import alfworld.gen.constants as constants
        import alfworld.gen.goal_library as goal_library

        self.root = root
        self.domain = (root / "data" / "alfred.pddl").read_text()
        self.grammar = (root / "data" / "alfred.twl2").read_text()
        self.goals = goal_library.gdict
        self.val_receptacle_objects: dict[str, set[str]] = constants.VAL_RECEPTACLE_OBJECTS
        self.val_action_objects: dict[str, set[str]] = constants.VAL_ACTION_OBJECTS
        self.openable_types = set(constants.OPENABLE_CLASS_SET)
        self.movable_receptacles = set(constants.MOVABLE_RECEPTACLES)
        self.train_scenes = tuple(constants.TRAIN_SCENE_NUMBERS)
        self.test_scenes = tuple(constants.TEST_SCENE_NUMBERS)

    @functools.cache
    def floor_plan(self, scene: int) -> FloorPlan:
        layouts = self.root / "gen" / "layouts"
        openable = json.loads((layouts / f"FloorPlan{scene}-openable.json").read_text())
        object_types = json.loads((layouts / f"FloorPlan{scene}-objects.json").read_text())
        receptacles = {rid: (float(p[0]), float(p[1]), int(p[2]), int(p[3])) for rid, p in sorted(openable.items())}
        return FloorPlan(scene, receptacles, frozenset(object_types))

    def can_contain(self, receptacle: str, obj: str) -> bool:
        return obj in self.val_receptacle_objects.get(receptacle, ())

    def goal_pddl(self, task_type: str, obj: str, recep: str, toggle: str) -> str:
        """The goal library's PDDL goal for one task, with ALFRED's ``#`` placeholder turned into ``-``."""
        template = self.goals[task_type]["pddl"]
        return template.format(obj=obj, recep=recep, toggle=toggle, mrecep="").replace("#", "-")

    def task_sentence(self, task_type: str, obj: str, recep: str, toggle: str, choice: int) -> str:
        """One of the goal library's English templates, lower-cased names as ALFWorld fills them."""
        templates = self.goals[task_type]["templates"]
        template = templates[choice % len(templates)]
        return template.format(obj=obj.lower(), recep=recep.lower(), toggle=toggle.lower(), mrecep="")
