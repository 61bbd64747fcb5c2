"""Offline ALFWorld game generator: real floor plans -> ``game.tw-pddl`` + ``traj_data.json`` in ALFWorld's layout.

A game is sampled as plain data (``GameSpec``) and rendered to text, so the same seed always gives byte-identical
files. Sampling one game of task type T in floor plan F:

1. target object type: present in F, pickupable, and able to undergo T's state change (``VAL_ACTION_OBJECTS``);
2. parent receptacle type (not for look_at_obj_in_light): present in F and allowed to hold the object
   (``VAL_RECEPTACLE_OBJECTS``), never the appliance of the task (sink / microwave / fridge);
3. receptacles: the parent, the appliance, the lamp's host (look) and the targets' hosts, filled up with random other
   receptacles of F to ``max_receptacles`` (0 keeps the whole floor plan);
4. objects: 1-2 targets (2-3 for pick_two), never already in a parent-type receptacle (the goal must not hold at
   the start), and a few distractor objects of F's other types;
5. the agent starts at a pose that faces no receptacle ("You are in the middle of a room").

Splits follow ALFWorld: ``train`` and ``valid_seen`` use the training floor plans, ``valid_unseen`` only the held-out
ones (ALFRED's test scenes 1-6, 201-206, 301-306, 401-406), which never appear in the other splits.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from agentprm.envs.alfworld_assets import AlfworldAssets, receptacle_type, mangle

SPLITS = ("train", "valid_seen", "valid_unseen")

APPLIANCE = {
    "pick_clean_then_place_in_recep": "SinkBasin",
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
}
ACTION_PROPERTY = {
    "pick_clean_then_place_in_recep": "Cleanable",
    "pick_heat_then_place_in_recep": "Heatable",
    "pick_cool_then_place_in_recep": "Coolable",
}
LAMPS = ("DeskLamp", "FloorLamp")
LAMP_HOSTS = ("Desk", "SideTable", "Dresser", "Shelf", "CoffeeTable", "DiningTable", "TVStand")
"""Receptacle types a lamp may stand on or next to (ALFRED's lamps are not in VAL_RECEPTACLE_OBJECTS)."""

DEFAULT_MAX_RECEPTACLES = 6


@dataclass(frozen=True)
class GameSpec:
    """Everything that defines one game, as plain data. Rendering it is deterministic."""

    scene: int
    task_type: str
    object_target: str
    parent_target: str
    toggle_target: str
    receptacles: tuple[str, ...]
    placements: tuple[tuple[str, str], ...]  # (object id, receptacle id), ALFRED ids (unmangled)
    agent_pose: tuple[int, int, int, int]
    sentence_choice: int
    seed: str = field(default="")

    def folder_name(self) -> str:
        parent = self.parent_target or "None"
        obj = self.object_target if not self.toggle_target else f"{self.object_target}-{self.toggle_target}"
        return f"{self.task_type}-{obj}-None-{parent}-{self.scene}"


def pickupable_types(assets: AlfworldAssets) -> set[str]:
    every = set().union(*assets.val_receptacle_objects.values())
    return {t for t in every if "Sliced" not in t}


def location_name(pose: tuple[float, float, int, int]) -> str:
    """ALFRED's discretised agent pose: x, z on a 0.25 m grid, rotation in quarter turns, camera horizon."""
    x, z, rotation, horizon = pose
    return f"loc|{round(x / 0.25)}|{round(z / 0.25)}|{int(rotation) // 90 % 4}|{int(horizon)}"


def _object_id(rng: random.Random, object_type: str, host: str, taken: set[str]) -> str:
    x, y, z = (float(v) for v in host.split("|")[1:4])
    while True:
        oid = "{}|{:+06.2f}|{:+06.2f}|{:+06.2f}".format(
            object_type, x + rng.uniform(-0.3, 0.3), y + rng.uniform(0.0, 0.2), z + rng.uniform(-0.3, 0.3)
        )
        if oid not in taken:
            taken.add(oid)
            return oid


def sample_spec(
    assets: AlfworldAssets, rng: random.Random, scene: int, task_type: str, max_receptacles: int
) -> GameSpec | None:
    """Sample one game of ``task_type`` in floor plan ``scene``, or None when the room cannot host that task."""
    plan = assets.floor_plan(scene)
    by_type: dict[str, list[str]] = {}
    for rid in plan.receptacles:
        by_type.setdefault(receptacle_type(rid), []).append(rid)
    present_types = sorted(by_type)
    pickupable = pickupable_types(assets)

    candidates = sorted(t for t in plan.object_types if t in pickupable)
    if task_type in ACTION_PROPERTY:
        if APPLIANCE[task_type] not in by_type:
            return None
        candidates = [t for t in candidates if t in assets.val_action_objects[ACTION_PROPERTY[task_type]]]
    toggle = ""
    if task_type == "look_at_obj_in_light":
        lamps = sorted(t for t in LAMPS if t in plan.object_types)
        hosts = sorted(r for t in LAMP_HOSTS for r in by_type.get(t, []))
        if not lamps or not hosts:
            return None
        toggle = rng.choice(lamps)
    rng.shuffle(candidates)

    for object_target in candidates:
        forbidden = {APPLIANCE.get(task_type, "")}
        parents = [t for t in present_types if assets.can_contain(t, object_target) and t not in forbidden]
        if task_type == "look_at_obj_in_light":
            parents = [""]
        if not parents:
            continue
        parent_target = rng.choice(parents)
        sources = [r for r in plan.receptacles
                   if assets.can_contain(receptacle_type(r), object_target) and receptacle_type(r) != parent_target]
        if not sources:
            continue
        return _fill_room(assets, rng, plan, by_type, task_type, object_target, parent_target, toggle,
                          sources, max_receptacles)
    return None


def _fill_room(assets, rng, plan, by_type, task_type, object_target, parent_target, toggle, sources,
               max_receptacles) -> GameSpec:
    required: list[str] = []
    if parent_target:
        required.append(rng.choice(by_type[parent_target]))
    if task_type in APPLIANCE:
        required.append(rng.choice(by_type[APPLIANCE[task_type]]))
    lamp_host = ""
    if toggle:
        lamp_host = rng.choice(sorted(r for t in LAMP_HOSTS for r in by_type.get(t, [])))
        required.append(lamp_host)
    n_targets = rng.randint(2, 3) if task_type == "pick_two_obj_and_place" else rng.randint(1, 2)
    target_hosts = [rng.choice(sources) for _ in range(n_targets)]
    required += target_hosts

    chosen = list(dict.fromkeys(required))
    others = [r for r in plan.receptacles if r not in chosen]
    rng.shuffle(others)
    room_size = len(plan.receptacles) if max_receptacles <= 0 else max(max_receptacles, len(chosen))
    chosen += others[: max(0, room_size - len(chosen))]
    chosen.sort()

    taken: set[str] = set()
    placements = [(_object_id(rng, object_target, host, taken), host) for host in target_hosts]
    if toggle:
        placements.append((_object_id(rng, toggle, lamp_host, taken), lamp_host))
    distractor_types = sorted(t for t in plan.object_types if t in pickupable_types(assets) and t != object_target)
    rng.shuffle(distractor_types)
    for object_type in distractor_types[: rng.randint(2, 4)]:
        hosts = [r for r in chosen if assets.can_contain(receptacle_type(r), object_type)]
        if hosts:
            host = rng.choice(hosts)
            placements.append((_object_id(rng, object_type, host, taken), host))

    occupied = {location_name(plan.receptacles[r]) for r in chosen}
    while True:
        pose = (rng.randint(-12, 12), rng.randint(-12, 12), rng.randint(0, 3), 30)
        if f"loc|{pose[0]}|{pose[1]}|{pose[2]}|{pose[3]}" not in occupied:
            break
    return GameSpec(plan.scene, task_type, object_target, parent_target, toggle, tuple(chosen),
                    tuple(placements), pose, rng.randint(0, 1))


def render_problem(assets: AlfworldAssets, spec: GameSpec) -> str:
    """The PDDL problem of a game, laid out as ALFRED's ``PlannedGameState.state_to_pddl`` writes it."""
    plan = assets.floor_plan(spec.scene)
    rtypes = sorted({receptacle_type(r) for r in spec.receptacles})
    otypes = sorted({oid.split("|")[0] for oid, _ in spec.placements})
    agent_location = "loc|{}|{}|{}|{}".format(*spec.agent_pose)
    recep_location = {r: location_name(plan.receptacles[r]) for r in spec.receptacles}
    locations = sorted(set(recep_location.values()) | {agent_location})

    objects = ["agent1 # agent"]
    objects += [f"{t}Type # otype" for t in otypes]
    objects += [f"{t}Type # rtype" for t in rtypes]
    objects += [f"{oid} # object" for oid, _ in spec.placements]
    objects += [f"{r} # receptacle" for r in spec.receptacles]
    objects += [f"{loc} # location" for loc in locations]

    init = ["(= (totalCost) 0)"]
    init += [f"(canContain {rt}Type {ot}Type)" for rt in rtypes for ot in otypes if assets.can_contain(rt, ot)]
    init.append(f"(atLocation agent1 {agent_location})")
    for r in spec.receptacles:
        init.append(f"(receptacleType {r} {receptacle_type(r)}Type)")
        if receptacle_type(r) in assets.openable_types:
            init.append(f"(openable {r})")
        init.append(f"(receptacleAtLocation {r} {recep_location[r]})")
    properties = {"Cleanable": "cleanable", "Heatable": "heatable", "Coolable": "coolable"}
    for oid, host in spec.placements:
        otype = oid.split("|")[0]
        init.append(f"(objectType {oid} {otype}Type)")
        if otype in LAMPS:
            init.append(f"(toggleable {oid})")
        else:
            init.append(f"(pickupable {oid})")
        if otype in assets.movable_receptacles:
            init.append(f"(isReceptacleObject {oid})")
        for key, predicate in properties.items():
            if otype in assets.val_action_objects[key]:
                init.append(f"({predicate} {oid})")
        init.append(f"(inReceptacle {oid} {host})")
        init.append(f"(objectAtLocation {oid} {recep_location[host]})")

    goal = assets.goal_pddl(spec.task_type, spec.object_target, spec.parent_target, spec.toggle_target)
    text = (
        f"\n(define (problem plan_{spec.folder_name()})\n    (:domain alfred)\n    (:objects\n        "
        + "\n        ".join(mangle(o) for o in objects)
        + "\n    )\n    (:init\n        "
        + "\n        ".join(mangle(f) for f in init)
        + "\n    )\n"
    )
    # The goal library's text closes the (define ...) form itself.
    return text + goal


def render_game(assets: AlfworldAssets, spec: GameSpec) -> tuple[str, str, str]:
    """(game.tw-pddl text, traj_data.json text, task sentence) of a game, byte-identical for the same spec."""
    sentence = assets.task_sentence(spec.task_type, spec.object_target, spec.parent_target, spec.toggle_target,
                                    spec.sentence_choice)
    game = {
        "pddl_domain": assets.domain,
        "grammar": assets.grammar.replace("UNKNOWN GOAL", sentence),
        "pddl_problem": render_problem(assets, spec),
        "solvable": True,
        "walkthrough": None,
    }
    traj_data = {
        "task_id": spec.seed,
        "task_type": spec.task_type,
        "pddl_params": {
            "object_target": spec.object_target,
            "parent_target": spec.parent_target,
            "toggle_target": spec.toggle_target,
            "mrecep_target": "",
            "object_sliced": False,
        },
        "scene": {"floor_plan": f"FloorPlan{spec.scene}", "scene_num": spec.scene, "random_seed": spec.seed},
        "turk_annotations": {"anns": [{"task_desc": sentence, "high_descs": [], "assignment_id": "agentprm"}]},
        "agentprm": {"generator": "agentprm.envs.alfworld_gen", "receptacles": len(spec.receptacles)},
    }
    dump = lambda d: json.dumps(d, indent=2, sort_keys=True) + "\n"  # noqa: E731
    return dump(game), dump(traj_data), sentence
