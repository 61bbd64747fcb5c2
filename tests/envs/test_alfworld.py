"""ALFWorld backend and offline generator, on the real engine."""

import filecmp
import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from agentprm.envs.alfworld import AlfworldEnv, alfworld_games, run_expert, split_intro
from agentprm.envs.alfworld_assets import TASK_TYPES, assets, mangle
from agentprm.envs.alfworld_build import generate_games, read_manifest
from agentprm.envs.base import EnvError
from agentprm.envs.registry import list_games

from conftest import SESSION_COUNTS  # tests/conftest.py


def test_mangle_matches_alfred():
    assert mangle("Apple|+01.00|+00.90|-01.50") == "Apple_bar__plus_01_dot_00_bar__plus_00_dot_90_bar__minus_01_dot_50"
    assert mangle("loc|-4|8|1|30") == "loc_bar__minus_4_bar_8_bar_1_bar_30"
    assert mangle("?r # receptacle") == "?r - receptacle"


def test_manifest_counts_every_task_type_in_every_split(alfworld_root):
    root, manifest = alfworld_root
    assert manifest == read_manifest(root)
    assert manifest["alfworld_version"] == "0.4.2"
    assert manifest["seed"] == 7
    for split, total in SESSION_COUNTS.items():
        assert manifest["totals"][split] == total
        assert manifest["counts"][split] == {task_type: 1 for task_type in TASK_TYPES}


@pytest.mark.parametrize("split", ["train", "valid_seen", "valid_unseen"])
def test_expert_solves_every_generated_game(alfworld_root, split):
    root, _ = alfworld_root
    games = alfworld_games(root, split)
    assert sorted(g.task_type for g in games) == sorted(TASK_TYPES)
    with AlfworldEnv(expert="handcoded") as env:
        for game in games:
            won, commands = run_expert(env, game, max_steps=50)
            assert won, f"expert failed {game.game_id} after {commands}"


def test_unseen_split_uses_only_held_out_floor_plans(alfworld_root):
    root, _ = alfworld_root
    a = assets()
    scenes = {}
    for split in ("train", "valid_seen", "valid_unseen"):
        scenes[split] = {
            json.loads((Path(g.source).parent / "traj_data.json").read_text())["scene"]["scene_num"]
            for g in alfworld_games(root, split)
        }
    assert scenes["valid_unseen"] <= set(a.test_scenes)
    assert not scenes["valid_unseen"] & set(a.train_scenes)
    assert (scenes["train"] | scenes["valid_seen"]) <= set(a.train_scenes)


def test_same_seed_gives_byte_identical_games(tmp_path, alfworld_root):
    root, _ = alfworld_root
    again = tmp_path / "again"
    generate_games(again, seed=7, counts={"valid_unseen": 6}, workers=1, progress=False)
    left, right = root / "json_2.1.1" / "valid_unseen", again / "json_2.1.1" / "valid_unseen"
    files = sorted(p.relative_to(left) for p in left.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(right) for p in right.rglob("*") if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(left, right, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors and len(match) == len(files)

    other = tmp_path / "other"
    generate_games(other, seed=8, counts={"valid_unseen": 6}, workers=1, progress=False)
    other_problems = {p.read_text() for p in (other / "json_2.1.1").rglob("game.tw-pddl")}
    assert other_problems.isdisjoint({p.read_text() for p in left.rglob("game.tw-pddl")})


def test_game_files_follow_alfworld_layout(alfworld_root):
    root, _ = alfworld_root
    game = alfworld_games(root, "train")[0]
    folder = Path(game.source).parent
    data = json.loads((folder / "game.tw-pddl").read_text())
    assert set(data) == {"pddl_domain", "grammar", "pddl_problem", "solvable", "walkthrough"}
    traj = json.loads((folder / "traj_data.json").read_text())
    sentence = traj["turk_annotations"]["anns"][0]["task_desc"]
    assert f"Your task is to: {sentence}." in data["grammar"]
    assert set(traj["pddl_params"]) >= {"object_target", "parent_target", "toggle_target", "mrecep_target"}
    assert folder.parent.parent.name == "train" and folder.parent.parent.parent.name == "json_2.1.1"


def test_alfworlds_own_loader_reads_generated_games(alfworld_root):
    """ALFWorld's batch loader (AlfredTWEnv) finds and plays the folders we write, expert included."""
    from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv

    root, _ = alfworld_root
    config = {
        "dataset": {"data_path": str(root / "json_2.1.1" / "train"), "eval_id_data_path": "", "eval_ood_data_path": "",
                    "num_train_games": -1, "num_eval_games": -1},
        "env": {"task_types": [1, 2, 3, 4, 5, 6], "goal_desc_human_anns_prob": 0.0, "domain_randomization": False,
                "expert_type": "handcoded"},
        "general": {"training_method": "dagger"},
        "dagger": {"training": {"max_nb_steps_per_episode": 50}},
    }
    loader = AlfredTWEnv(config, train_eval="train")
    assert loader.num_games == SESSION_COUNTS["train"]
    env = loader.init_env(batch_size=1)
    try:
        obs, infos = env.reset()
        assert "Your task is to: " in obs[0]
        assert infos["admissible_commands"][0] and infos["extra.expert_plan"][0]
        obs, _, _, infos = env.step([infos["extra.expert_plan"][0][0]])
        assert obs[0] != "Nothing happens."
    finally:
        env.close()


def test_first_observation_splits_room_and_task(alfworld_root):
    root, _ = alfworld_root
    game = alfworld_games(root, "train", task_types=["pick_and_place_simple"])[0]
    with AlfworldEnv() as env:
        obs = env.reset(game)
    assert obs.text.startswith("You are in the middle of a room.")
    assert obs.task.startswith("put ") and obs.task.endswith(".")
    assert obs.task_type == "pick_and_place_simple"
    assert all(a == a.strip() for a in obs.admissible_actions) and "look" in obs.admissible_actions
    assert split_intro("-= Welcome to TextWorld, ALFRED! =-\n\nRoom.\n\nYour task is to: put a x in y.") == (
        "Room.", "put a x in y.")


def test_warm_reset_does_not_translate_again(alfworld_root):
    root, _ = alfworld_root
    first, second = alfworld_games(root, "valid_seen")[:2]
    with AlfworldEnv() as env:
        env.cache.clear_memory()
        env.reset(first)
        misses = env.cache.misses
        env.reset(first)  # same game again
        env.reset(second)
        misses_after_second = env.cache.misses
        env.reset(first)  # switching back reloads the game, but the translation comes from the cache
        assert env.cache.misses == misses_after_second
        assert misses_after_second > misses


def test_disk_cache_survives_a_new_process_state(tmp_path, alfworld_root):
    root, _ = alfworld_root
    game = alfworld_games(root, "valid_unseen")[0]
    with AlfworldEnv(cache_dir=tmp_path / "cache") as env:
        env.reset(game)
        assert list((tmp_path / "cache").glob("*.pkl"))
        env.cache.clear_memory()
        misses = env.cache.misses
        env.close()
        obs = env.reset(game)
        assert env.cache.misses == misses and obs.admissible_actions
    env.cache.disk_dir = None  # the cache is process-wide: leave it as other tests expect


@pytest.fixture(scope="module")
def fuzz_env(alfworld_root):
    root, _ = alfworld_root
    game = alfworld_games(root, "train", task_types=["pick_heat_then_place_in_recep"])[0]
    env = AlfworldEnv()
    env.reset(game)
    yield env, game
    env.close()


@settings(max_examples=80, deadline=None)
@given(command=st.one_of(
    st.text(alphabet=st.characters(exclude_categories=())),
    st.sampled_from(["", " ", "x" * 10000, "go to\nlook", "\x00", "☕ café", "go to nowhere 99", "take"]),
))
def test_any_command_is_a_step_and_never_crashes(fuzz_env, command):
    env, game = fuzz_env
    before = env.reset(game)
    step = env.step(command)
    if command.strip() not in before.admissible_actions:
        assert step.observation.text == "Nothing happens."
        assert step.observation.admissible_actions == before.admissible_actions
    assert not step.won and step.reward == 0.0
    follow = env.step("look")  # the episode goes on
    assert follow.observation.text != "Nothing happens."


def test_expert_gives_up_cleanly_off_its_path(alfworld_root):
    root, _ = alfworld_root
    game = alfworld_games(root, "train", task_types=["pick_and_place_simple"])[0]
    with AlfworldEnv(expert="handcoded") as env:
        env.reset(game)
        for _ in range(5):
            env.step("not a command")
        action = env.expert_action()
        assert action is None or action in env.step("look").observation.admissible_actions


def test_clear_errors_for_bad_requests(tmp_path, alfworld_root, monkeypatch):
    root, _ = alfworld_root
    with pytest.raises(EnvError, match="Unknown ALFWorld task type"):
        alfworld_games(root, "train", task_types=["juggle"])
    with pytest.raises(EnvError, match="Unknown ALFWorld split"):
        alfworld_games(root, "test")
    with pytest.raises(EnvError, match="agentprm games alfworld"):
        alfworld_games(tmp_path / "nothing", "train")
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    with pytest.raises(EnvError, match="ALFWORLD_DATA"):
        alfworld_games(None, "train")
    with pytest.raises(EnvError, match="Unknown environment"):
        list_games("nethack", "train")
    with pytest.raises(EnvError, match="step\\(\\) before reset"):
        AlfworldEnv().step("look")


def test_alfworld_data_variable_points_at_a_game_set(alfworld_root, monkeypatch):
    """With ALFWORLD_DATA set (as for the official data), games are found with no other change."""
    root, _ = alfworld_root
    monkeypatch.setenv("ALFWORLD_DATA", str(root))
    games = list_games("alfworld", "unseen")
    assert len(games) == SESSION_COUNTS["valid_unseen"] and all(g.split == "valid_unseen" for g in games)


def test_planner_expert_solves_with_shortest_plans(alfworld_root):
    """The privileged planner (fast-downward) solves every game, never in more steps than the exploring expert."""
    root, _ = alfworld_root
    with AlfworldEnv(expert="planner") as planner, AlfworldEnv(expert="handcoded") as handcoded:
        for game in alfworld_games(root, "valid_unseen"):
            won, plan = run_expert(planner, game, max_steps=50)
            _, explored = run_expert(handcoded, game, max_steps=50)
            assert won and len(plan) <= len(explored), (game.game_id, plan)


def test_grammar_parse_cache_serves_warm_resets_with_identical_text(alfworld_root):
    from textworld.envs.pddl import textgen

    root, _ = alfworld_root
    first, second = alfworld_games(root, "valid_seen")[:2]
    with AlfworldEnv() as env:
        before = [env.reset(first), env.reset(second)]
        hits = textgen._parse_and_convert.hits
        after = [env.reset(first), env.reset(second)]
        assert textgen._parse_and_convert.hits > hits
        for a, b in zip(before, after):
            assert (a.text, a.task, a.admissible_actions) == (b.text, b.task, b.admissible_actions)
        step = env.step(after[1].admissible_actions[0])
        assert step.observation.text != "Nothing happens."


# -- the true state id -------------------------------------------------------------------------------------------------


def test_world_state_id_is_a_digest_of_the_sorted_positive_world_facts():
    import hashlib

    from textworld.logic import Proposition, Variable

    from agentprm.envs.alfworld import world_state_id

    agent, drawer, loc = Variable("agent1", "agent"), Variable("drawer_1", "receptacle"), Variable("loc_2", "location")
    facts = [Proposition("opened", [drawer]), Proposition("atlocation", [agent, loc])]
    expected = hashlib.sha256(b"atlocation(agent1,loc_2)\nopened(drawer_1)").hexdigest()[:16]
    assert world_state_id(facts) == world_state_id(facts[::-1]) == expected
    elsewhere = Proposition("atlocation", [agent, Variable("loc_9", "location")])
    noise = [Proposition("checked", [drawer]), elsewhere.negate()]
    assert world_state_id(facts + noise) == expected  # bookkeeping and negated facts are no part of the world
    assert world_state_id(facts[:1]) != expected


def test_checked_is_bookkeeping_in_the_generated_domain(alfworld_root):
    """No precondition, goal or grammar rule reads a BOOKKEEPING_PREDICATES fact, so dropping it loses nothing."""
    import re

    from agentprm.envs.alfworld import BOOKKEEPING_PREDICATES

    root, _ = alfworld_root
    for game in alfworld_games(root, "train"):
        data = json.loads(Path(game.source).read_text())
        domain = re.sub(r";[^\n]*", "", data["pddl_domain"].lower())  # PDDL comments run to the end of the line
        actions = domain.split("(:action")[1:]
        assert len(actions) > 10 and all(":effect" in action for action in actions)
        preconditions = " ".join(action.split(":effect")[0] for action in actions)
        goal = data["pddl_problem"].lower().split("(:goal")[1]
        for predicate in BOOKKEEPING_PREDICATES:
            assert predicate in domain and predicate not in preconditions + goal + data["grammar"].lower()


def _goto(obs) -> list[str]:
    return [a for a in obs.admissible_actions if a.startswith("go to ")]


def test_state_id_is_the_same_world_reached_by_another_path(alfworld_root):
    root, _ = alfworld_root
    game = alfworld_games(root, "train", task_types=["pick_and_place_simple"])[0]
    with AlfworldEnv() as env:
        start = env.reset(game)
        first, second = _goto(start)[:2]
        env.step(first)
        via_first = env.step(second).observation
        unchanged = [env.step(command).observation for command in ("look", "inventory", "help")]
        again = env.reset(game)
        direct = env.step(second).observation
    with AlfworldEnv() as fresh:  # a new engine: object naming comes from a new load
        reloaded = fresh.reset(game)
    assert via_first.info["state_id"] == direct.info["state_id"] != start.info["state_id"]
    assert {o.info["state_id"] for o in unchanged} == {direct.info["state_id"]}  # "look" changes no world fact
    assert start.info["state_id"] == again.info["state_id"] == reloaded.info["state_id"]
    assert len(start.info["state_id"]) == 16 and int(start.info["state_id"], 16) >= 0


def test_state_id_separates_worlds_behind_the_same_text(alfworld_root):
    root, _ = alfworld_root
    with AlfworldEnv() as env:
        start = env.reset(alfworld_games(root, "train", task_types=["pick_and_place_simple"])[0])
        here = env.step("not a command").observation
        env.step(_goto(start)[0])
        there = env.step("not a command").observation
        assert here.text == there.text == "Nothing happens."
        assert here.info["state_id"] == start.info["state_id"] != there.info["state_id"]


        # open then close gives back the world before the open (the engine's not_opened / checked facts dropped)
        found = None
        for game in alfworld_games(root, "train"):
            obs = env.reset(game)
            for command in _goto(obs):
                closed = env.step(command).observation
                openers = [a for a in closed.admissible_actions if a.startswith("open ")]
                if openers:
                    found = openers[0]
                    break
            if found:
                break
        assert found, "no openable receptacle in the session's train games"
        opened = env.step(found).observation
        reclosed = env.step(found.replace("open ", "close ", 1)).observation
        assert opened.info["state_id"] != closed.info["state_id"] == reclosed.info["state_id"]
