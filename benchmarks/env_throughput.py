"""Environment throughput: steps/s with random admissible actions, and cold vs warm reset cost.

Three settings, one process, CPU only:

* ``alfworld-small``: ALFWorld games generated with ``max_receptacles=6`` (the generator's default);
* ``alfworld-real``: ALFWorld games generated with ``max_receptacles=0`` (the whole real floor plan);
* ``twx-twc``: TextWorldExpress ``twc`` with default parameters, train fold seeds 0..N-1.

The ALFWorld games are generated into a temporary folder (seeded, task types dealt round-robin over the six ALFWorld
types, all in the ``train`` split) and deleted afterwards.

ALFWorld reset measurements (``AlfworldEnv`` without an expert, translation cache with no disk layer):

* **cold**: ``cache.clear_memory()``, plus clearing any TextWorld parse memo (``pddl_cache``'s or
  ``--prototype-fix``'s), then ``env.reset(game)`` for a game not loaded in this env: the game file is read, its
  grammar parsed, and the PDDL problem translated by fast-downward (a cache miss). A brand-new process is also
  measured (``--fresh-games``: import and env construction, then cold resets);
* **warm, same game**: ``env.reset(game)`` again right away; the env skips ``load`` and only rebuilds the PDDL state
  (translation from the cache);
* **warm, switch back**: after every game was loaded once, ``env.reset(game)`` for each game in turn, so that each
  reset follows a different game: the env loads the file again, the translation comes from the cache.

Per reset, the time inside translation, grammar parsing (``GameLogic``) and text derivation is reported, and the
process CPU time next to the wall time (the CPU time stays meaningful when other jobs share the machine). The
construction of the env is timed separately; for TWX the first reset (JVM start) is. Steps/s counts ``env.step`` calls only; the resets that start each episode are reported
separately. Episodes end when the game is won or after ``--max-episode-steps`` steps.

Usage (from the repository root):

    PYTHONPATH=src python benchmarks/env_throughput.py --out benchmarks/results/env_throughput.json
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import load_average
from machine import machine_info as shared_machine_info

from agentprm.envs import pddl_cache
from agentprm.envs.base import Game

SETTINGS = ("alfworld-small", "alfworld-real", "twx-twc")


# -- helpers --------------------------------------------------------------------------------------------------------


def _mean(xs):
    return statistics.fmean(xs) if xs else None


def _summary(xs: list[float]) -> dict:
    """Mean/median/min/max in seconds of a list of durations."""
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "mean_s": statistics.fmean(xs),
        "median_s": statistics.median(xs),
        "min_s": min(xs),
        "max_s": max(xs),
    }


class PhaseTimers:
    """Time spent inside a few engine functions, to say where a reset's time goes.

    ``translate``: fast-downward's PDDL-to-SAS translation (cache misses only); ``grammar_parse``: TextWorld's
    ``GameLogic`` construction on ``load`` (tatsu parse of the game's grammar); ``text_derive``: TextWorld's grammar
    derivations (the intro text and every admissible command; re-parses each template with tatsu). The wrappers
    are plain perf_counter calls around the originals and are removed by ``close()``.
    """

    def __init__(self, cache):
        import textworld.envs.pddl.logic as tw_logic
        from textworld.envs.pddl.textgen import ContextSensitiveGrammar

        self.totals = {"translate": 0.0, "grammar_parse": 0.0, "text_derive": 0.0}
        self._undo = []
        self._wrap(cache, "_translate", "translate", instance=True)
        self._wrap(tw_logic, "GameLogic", "grammar_parse")
        self._wrap(ContextSensitiveGrammar, "derive", "text_derive")

    def _wrap(self, owner, attr, label, instance=False):
        original = getattr(owner, attr)
        totals = self.totals

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - t

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original if instance or not isinstance(owner, type) else owner.__dict__[attr]))

    def snapshot(self) -> dict:
        return dict(self.totals)

    def since(self, before: dict, n: int) -> dict:
        return {f"{k}_mean_s": (self.totals[k] - before[k]) / n for k in self.totals}

    def close(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()


def machine_info() -> dict:
    return shared_machine_info(("agentprm", "alfworld", "textworld", "fast-downward-textworld", "textworld-express",
                                "py4j"))


def play_random(env, games: list[Game], total_steps: int, max_episode_steps: int, rng: random.Random,
                timers: PhaseTimers | None = None) -> dict:
    """Random admissible actions, games round-robin, until ``total_steps`` env.step calls have been made."""
    in_steps = {k: 0.0 for k in timers.totals} if timers else None
    step_times: list[float] = []
    reset_times: list[float] = []
    n_actions: list[int] = []
    episodes = won = 0
    i = 0
    while len(step_times) < total_steps:
        game = games[i % len(games)]
        i += 1
        t = time.perf_counter()
        obs = env.reset(game)
        reset_times.append(time.perf_counter() - t)
        episodes += 1
        for _ in range(max_episode_steps):
            if len(step_times) >= total_steps:
                break
            n_actions.append(len(obs.admissible_actions))
            action = rng.choice(obs.admissible_actions) if obs.admissible_actions else "look"
            before = timers.snapshot() if timers else None
            t = time.perf_counter()
            result = env.step(action)
            step_times.append(time.perf_counter() - t)
            if timers:
                for k in in_steps:
                    in_steps[k] += timers.totals[k] - before[k]
            obs = result.observation
            if result.done:
                won += int(result.won)
                break
    total = sum(step_times)
    extra = {"step_phases_mean_s": {f"{k}_mean_s": v / len(step_times) for k, v in in_steps.items()}} if timers else {}
    return {
        "steps": len(step_times),
        "episodes": episodes,
        "episodes_won": won,
        "step_time_total_s": total,
        "steps_per_s": len(step_times) / total if total else None,
        "step": _summary(step_times),
        "episode_reset": _summary(reset_times),
        "mean_admissible_actions": _mean(n_actions),
        **extra,
    }


# -- ALFWorld -------------------------------------------------------------------------------------------------------


PROTOTYPE_CLEARS: list = []  # with --prototype-fix: clears its memos too, so that cold resets stay cold


def _parse_memos() -> list:
    """TextWorld parse functions that ``pddl_cache.install()`` may have replaced by a memo (an object with
    ``_memory``)."""
    import textworld.envs.pddl.logic as tw_pddl_logic
    import textworld.envs.pddl.textgen as tw_textgen

    return [f for f in (tw_textgen._parse_and_convert, tw_pddl_logic._parse_and_convert) if hasattr(f, "_memory")]


def clear_memory(cache) -> None:
    """Forget everything a fresh process would not know: translations, and any memoised TextWorld parses."""
    cache.clear_memory()
    for memo in _parse_memos():
        memo._memory.clear()
    for clear in PROTOTYPE_CLEARS:
        clear()


def code_state() -> dict:
    """Which commit was measured, whether the env code differed from it, and which TextWorld memos were active."""
    root = Path(__file__).resolve().parents[1]

    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    pddl_cache.install()
    return {
        "git_head": git("rev-parse", "HEAD"),
        "envs_modified_vs_head": (git("status", "--porcelain", "src/agentprm/envs") or "").splitlines(),
        "textworld_parse_memo_installed_by_pddl_cache": bool(_parse_memos()),
    }


def apply_prototype_fix() -> None:
    """``--prototype-fix``: the parse memoisation proposed for ``pddl_cache.install()``, applied here to measure it.

    Not part of the package. TextWorld re-parses text with tatsu on every load, reset and step; all of it depends
    only on the text, so it can be memoised:

    1. ``textworld.envs.pddl.textgen._parse_and_convert(text, rule_name)``: grammar right-hand sides on load and
       every ``derive`` start symbol (the intro, each admissible command's template, each feedback rule). The
       symbols get a ``.context`` assigned during derivation, so a deep copy of the memoised list is returned.
    2. ``textworld.envs.pddl.logic._parse_and_convert(grammar, rule_name="pddlStart")``: the game's grammar on
       ``load``; ``GameLogic`` copies the parsed rules and actions into its own containers, so the result is shared.
    3. ``textworld.logic.Rule.parse_conjunctive_query(expr)``: grammar rule conditions, parsed on every derive.
    4. ``textworld.envs.pddl.textgen.copy_context``: shallow copies of ``variables``/``mapping`` instead of
       ``deepcopy`` (derivation only adds keys to these dicts; it never mutates their values).

    Items 1 and 2 are skipped when ``pddl_cache.install()`` already memoises the two parsers (its ``_ParseCache``).
    Observations and admissible actions were checked identical with and without this on 96 random-play
    observations of 6 small and 6 realistic games.
    """
    import copy
    import functools

    import textworld.envs.pddl.logic as tw_pddl_logic
    import textworld.envs.pddl.textgen as tw_textgen
    import textworld.logic as tw_logic

    pddl_cache.install()
    textgen_parse, logic_parse = tw_textgen._parse_and_convert, tw_pddl_logic._parse_and_convert

    @functools.lru_cache(maxsize=4096)
    def _textgen_memo(text, rule_name):
        return textgen_parse(text, rule_name=rule_name)

    def textgen_memo(text, rule_name=None, trace=False, **kwargs):
        if trace or kwargs:
            return textgen_parse(text, rule_name=rule_name, trace=trace, **kwargs)
        return copy.deepcopy(_textgen_memo(text, rule_name))

    @functools.lru_cache(maxsize=256)
    def _logic_memo(text, rule_name):
        return logic_parse(text, rule_name=rule_name)

    def logic_memo(text, rule_name=None, **kwargs):
        return logic_parse(text, rule_name=rule_name, **kwargs) if kwargs else _logic_memo(text, rule_name)

    def shallow_copy_context(context):
        return {"state": context["state"], "facts": context["facts"], "variables": dict(context["variables"]),
                "mapping": dict(context["mapping"]), "entity_infos": context["entity_infos"]}

    if not _parse_memos():  # pddl_cache.install() may already memoise the two parsers (items 1 and 2)
        PROTOTYPE_CLEARS.extend([_textgen_memo.cache_clear, _logic_memo.cache_clear])
        tw_textgen._parse_and_convert = textgen_memo
        tw_pddl_logic._parse_and_convert = logic_memo
    tw_textgen.copy_context = shallow_copy_context
    query = functools.lru_cache(maxsize=4096)(tw_logic.Rule.parse_conjunctive_query.__func__)
    PROTOTYPE_CLEARS.append(query.cache_clear)
    tw_logic.Rule.parse_conjunctive_query = classmethod(query)


def generate(root: Path, n: int, seed: int, max_receptacles: int) -> tuple[list[Game], dict, float]:
    from agentprm.envs.alfworld import alfworld_games
    from agentprm.envs.alfworld_build import generate_games

    t = time.perf_counter()
    manifest = generate_games(root, seed=seed, counts={"train": n}, max_receptacles=max_receptacles,
                              workers=1, progress=False)
    elapsed = time.perf_counter() - t
    games = alfworld_games(root, "train")
    return games, manifest, elapsed


def _problem_size(game: Game) -> dict:
    data = json.loads(Path(game.source).read_text())
    problem = data["pddl_problem"]
    objects = problem.split("(:objects", 1)[1].split("(:init", 1)[0] if "(:objects" in problem else ""
    return {
        "receptacles": objects.count(" - receptacle\n"),
        "objects": objects.count(" - object\n"),
        "problem_chars": len(problem),
    }


def timed_reset(env, game, cpu: list[float]) -> float:
    """Wall time of one reset; its CPU time (this process) is appended to ``cpu`` (robust to a busy machine)."""
    c, t = time.process_time(), time.perf_counter()
    env.reset(game)
    wall = time.perf_counter() - t
    cpu.append(time.process_time() - c)
    return wall


def bench_alfworld(name: str, games: list[Game], args, rng: random.Random) -> dict:
    from agentprm.envs.alfworld import AlfworldEnv

    cache = pddl_cache.install()
    cache.disk_dir = None  # no disk layer: every miss is a real translation

    t = time.perf_counter()
    env = AlfworldEnv(expert=None)
    env._env = env._build()  # engine construction (fast-downward library load), outside every reset figure
    build_s = time.perf_counter() - t

    sizes = [_problem_size(g) for g in games]
    per_game = []
    timers = PhaseTimers(cache)
    try:
        # Cold: nothing of this game in memory (the generator translated every game: clear the cache first).
        cold, warm_same = [], []
        cold_cpu, same_cpu, switch_cpu = [], [], []
        cold_phases = {k: 0.0 for k in timers.totals}
        same_phases = {k: 0.0 for k in timers.totals}
        for game in games:
            clear_memory(cache)
            misses0, hits0 = cache.misses, cache.hits
            before = timers.snapshot()
            cold_s = timed_reset(env, game, cold_cpu)
            for k, v in timers.since(before, 1).items():
                cold_phases[k[: -len("_mean_s")]] += v
            cold_misses, cold_hits = cache.misses - misses0, cache.hits - hits0
            cold.append(cold_s)
            same = []
            misses0 = cache.misses
            before = timers.snapshot()
            for _ in range(args.warm_repeats):
                same.append(timed_reset(env, game, same_cpu))
            for k, v in timers.since(before, 1).items():
                same_phases[k[: -len("_mean_s")]] += v
            if cache.misses != misses0:
                raise RuntimeError("a reset of the loaded game translated again: the cache is not used")
            warm_same.extend(same)
            per_game.append({"game_id": game.game_id, "task_type": game.task_type, **sizes[len(per_game)],
                             "cold_s": cold_s, "cold_cache_misses": cold_misses, "cold_cache_hits": cold_hits,
                             "warm_same_mean_s": _mean(same)})

        # Warm, switch back: load every game once (untimed) so that all translations are in memory, then reset
        # each game in turn: every reset follows a different game, so the env reloads the file.
        for game in games:
            env.reset(game)
        warm_switch = []
        misses0, hits0 = cache.misses, cache.hits
        before = timers.snapshot()
        for _ in range(args.warm_repeats):
            for k, game in enumerate(games):
                dt = timed_reset(env, game, switch_cpu)
                warm_switch.append(dt)
                per_game[k].setdefault("warm_switch_s", []).append(dt)
        switch_phases = timers.since(before, len(warm_switch))
        switch_misses, switch_hits = cache.misses - misses0, cache.hits - hits0
        if len(games) > 1 and switch_misses:
            raise RuntimeError(f"{switch_misses} translations missed the cache on switch-back resets")
        for row in per_game:
            row["warm_switch_mean_s"] = _mean(row.pop("warm_switch_s"))

        play = play_random(env, games, args.steps, args.max_episode_steps, rng, timers)
    finally:
        timers.close()
        env.close()

    cold_mean, same_mean, switch_mean = _mean(cold), _mean(warm_same), _mean(warm_switch)
    n_same = len(warm_same)
    return {
        "setting": name,
        "games": len(games),
        "task_types": dict(sorted(collections.Counter(g.task_type for g in games).items())),
        "receptacles_mean": _mean([s["receptacles"] for s in sizes]),
        "receptacles_range": [min(s["receptacles"] for s in sizes), max(s["receptacles"] for s in sizes)],
        "objects_mean": _mean([s["objects"] for s in sizes]),
        "env_build_s": build_s,
        "reset_cold": {**_summary(cold), "phases": {f"{k}_mean_s": v / len(cold) for k, v in cold_phases.items()}},
        "reset_warm_same": {**_summary(warm_same),
                            "phases": {f"{k}_mean_s": v / n_same for k, v in same_phases.items()}},
        "reset_warm_switch": {**_summary(warm_switch), "phases": switch_phases},
        "cold_over_warm_same": cold_mean / same_mean,
        "cold_over_warm_switch": cold_mean / switch_mean if len(games) > 1 else None,
        "cpu_time_mean_s": {"cold": _mean(cold_cpu), "warm_same": _mean(same_cpu), "warm_switch": _mean(switch_cpu)},
        "cpu_cold_over_warm_same": _mean(cold_cpu) / _mean(same_cpu),
        "cpu_cold_over_warm_switch": _mean(cold_cpu) / _mean(switch_cpu) if len(games) > 1 else None,
        "warm_switch_cache": {"misses": switch_misses, "hits": switch_hits},
        "play": play,
        "per_game": per_game,
    }


def fresh_process_probe(games: list[Game], n: int) -> list[dict]:
    """Cold resets in a brand-new Python process (nothing imported, no cache): import+build, then ``n`` resets."""
    sources = [g.source for g in games[:n]]
    code = (
        "import json, sys, time\n"
        "t0 = time.perf_counter()\n"
        "from agentprm.envs.alfworld import AlfworldEnv\n"
        "from agentprm.envs.base import Game\n"
        "env = AlfworldEnv(expert=None)\n"
        "env.cache.disk_dir = None\n"
        "env._env = env._build()\n"
        "t1 = time.perf_counter()\n"
        "resets = []\n"
        "for src in sys.argv[1:]:\n"
        "    t = time.perf_counter(); env.reset(Game('alfworld', src, src, 'train', '')); "
        "resets.append(time.perf_counter() - t)\n"
        "print(json.dumps({'import_and_build_s': t1 - t0, 'resets_s': resets, 'misses': env.cache.misses}))\n"
    )
    env_vars = dict(os.environ)
    env_vars["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1] / "src"),
                                                          env_vars.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", code, *sources], capture_output=True, text=True, env=env_vars,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- TextWorldExpress -----------------------------------------------------------------------------------------------


def bench_twx(n_games: int, args, rng: random.Random) -> dict:
    from agentprm.envs.twx import TWXEnv, twx_games

    games = twx_games("twc", "train", range(n_games))
    env = TWXEnv()
    t = time.perf_counter()
    env.reset(games[0])  # JVM start + first game
    first_s = time.perf_counter() - t

    first_time, same, switch = [], [], []
    for game in games[1:]:
        t = time.perf_counter()
        env.reset(game)
        first_time.append(time.perf_counter() - t)
    for game in games:
        for _ in range(args.warm_repeats):
            t = time.perf_counter()
            env.reset(game)
            same.append(time.perf_counter() - t)
    for _ in range(args.warm_repeats):
        for game in games:
            t = time.perf_counter()
            env.reset(game)
            switch.append(time.perf_counter() - t)

    play = play_random(env, games, args.steps, args.max_episode_steps, rng)
    env.close()
    return {
        "setting": "twx-twc",
        "games": len(games),
        "game_ids": [g.game_id for g in games],
        "params": "",
        "first_reset_with_jvm_start_s": first_s,
        "reset_first_time": _summary(first_time),
        "reset_same_game_again": _summary(same),
        "reset_switch_game": _summary(switch),
        "play": play,
    }


# -- report ---------------------------------------------------------------------------------------------------------


def _ms(x) -> str:
    return "-" if x is None else f"{1000 * x:.1f}"


def _grid(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def table(results: dict) -> str:
    rows = [("setting", "games", "recep.", "steps/s", "ms/step", "ms/ep.reset", "cold ms", "warm same ms",
             "warm switch ms", "cold/same", "cold/switch")]
    for key in SETTINGS:
        r = results["settings"].get(key)
        if r is None:
            continue
        play = r["play"]
        common = (f"{play['steps_per_s']:.1f}", _ms(play["step"]["mean_s"]), _ms(play["episode_reset"]["mean_s"]))
        if key.startswith("alfworld"):
            ratio_switch = r["cold_over_warm_switch"]
            rows.append((key, str(r["games"]), f"{r['receptacles_mean']:.1f}", *common,
                         _ms(r["reset_cold"]["mean_s"]), _ms(r["reset_warm_same"]["mean_s"]),
                         _ms(r["reset_warm_switch"]["mean_s"]), f"{r['cold_over_warm_same']:.1f}x",
                         "-" if ratio_switch is None else f"{ratio_switch:.1f}x"))
        else:
            rows.append((key, str(r["games"]), "-", *common, _ms(r["reset_first_time"]["mean_s"]),
                         _ms(r["reset_same_game_again"]["mean_s"]), _ms(r["reset_switch_game"]["mean_s"]), "-", "-"))
    lines = _grid(rows)

    phase_rows = [("ALFWorld reset/step (mean ms)", "total", "translate", "grammar parse", "text derive", "other")]
    for key in ("alfworld-small", "alfworld-real"):
        r = results["settings"].get(key)
        if r is None:
            continue
        for case in ("cold", "warm_same", "warm_switch"):
            block = r[f"reset_{case}"]
            ph = block["phases"]
            other = block["mean_s"] - ph["translate_mean_s"] - ph["grammar_parse_mean_s"] - ph["text_derive_mean_s"]
            phase_rows.append((f"{key} {case}", _ms(block["mean_s"]), _ms(ph["translate_mean_s"]),
                               _ms(ph["grammar_parse_mean_s"]), _ms(ph["text_derive_mean_s"]), _ms(other)))
        step, ph = r["play"]["step"], r["play"]["step_phases_mean_s"]
        other = step["mean_s"] - sum(ph.values())
        phase_rows.append((f"{key} step", _ms(step["mean_s"]), _ms(ph["translate_mean_s"]),
                           _ms(ph["grammar_parse_mean_s"]), _ms(ph["text_derive_mean_s"]), _ms(other)))
    if len(phase_rows) > 1:
        lines += [""] + _grid(phase_rows) + [""]

    for key in ("alfworld-small", "alfworld-real"):
        r = results["settings"].get(key)
        if r is None:
            continue
        cpu = r["cpu_time_mean_s"]
        switch_ratio = r["cpu_cold_over_warm_switch"]
        lines.append(f"{key} CPU time per reset: cold {_ms(cpu['cold'])}, warm same {_ms(cpu['warm_same'])}, "
                     f"warm switch {_ms(cpu['warm_switch'])} ms (cold/same {r['cpu_cold_over_warm_same']:.1f}x, "
                     f"cold/switch {'-' if switch_ratio is None else f'{switch_ratio:.1f}x'})")
    fresh = [(k, r["fresh_process"]) for k, r in results["settings"].items() if "fresh_process" in r]
    if fresh:
        for key, f in fresh:
            resets = ", ".join(_ms(x) for x in f["resets_s"])
            lines.append(f"{key} fresh process: import+build {_ms(f['import_and_build_s'])} ms, "
                         f"cold resets {resets} ms")
    twx = results["settings"].get("twx-twc")
    if twx:
        lines.append(f"twx-twc first reset incl. JVM start: {_ms(twx['first_reset_with_jvm_start_s'])} ms")
    notes = [
        "",
        "cold = clear caches + load + reset (fast-downward translation); warm same = reset of the loaded game;",
        "warm switch = reset of a game loaded earlier (reload, translation from the cache); ms/ep.reset = resets",
        "during the random-play run. TWX: the 'cold' column is the first reset of a seed (JVM up), then the same seed",
        "again, then switching seeds. text derive happens inside reset (intro text, every admissible command).",
    ]
    return "\n".join(lines + notes)


def main(argv=None) -> int:
    # Captured first: fast-downward's translator overwrites sys.argv (["translate.py", "domain", "task"]).
    cli = list(argv) if argv is not None else sys.argv[1:]
    command = "PYTHONPATH=src python " + shlex.join([sys.argv[0], *cli])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--games-small", type=int, default=12, help="ALFWorld games with max_receptacles=6")
    parser.add_argument("--games-real", type=int, default=6, help="ALFWorld games with the whole floor plan")
    parser.add_argument("--games-twx", type=int, default=10, help="TWX twc games (train seeds 0..N-1)")
    parser.add_argument("--fresh-games", type=int, default=2,
                        help="ALFWorld games reset in a brand-new process per setting (0: skip)")
    parser.add_argument("--steps", type=int, default=500, help="env.step calls per setting")
    parser.add_argument("--max-episode-steps", type=int, default=30)
    parser.add_argument("--warm-repeats", type=int, default=3, help="warm resets per game and case")
    parser.add_argument("--seed", type=int, default=0, help="game generation and random-action seed")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help="comma-separated subset of " + ",".join(SETTINGS))
    parser.add_argument("--prototype-fix", action="store_true",
                        help="measure with the proposed TextWorld parse memoisation (see apply_prototype_fix)")
    parser.add_argument("--out", default="benchmarks/results/env_throughput.json")
    args = parser.parse_args(cli)
    wanted = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; expected some of {SETTINGS}")

    if args.prototype_fix:
        apply_prototype_fix()
    t_start = time.perf_counter()
    results: dict = {
        "benchmark": "env_throughput",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(),
        "code": code_state(),
        "load_average_at_start": load_average(),
        "config": vars(args),
        "generation": {},
        "settings": {},
    }
    with tempfile.TemporaryDirectory(prefix="agentprm-bench-") as tmp:
        for key, n, max_rec in (("alfworld-small", args.games_small, 6), ("alfworld-real", args.games_real, 0)):
            if key not in wanted or n <= 0:
                continue
            print(f"[{key}] generating {n} games (max_receptacles={max_rec}, seed={args.seed}) ...", flush=True)
            games, manifest, gen_s = generate(Path(tmp) / key, n, args.seed, max_rec)
            results["generation"][key] = {"seconds": gen_s, "max_receptacles": max_rec, "counts": manifest["counts"],
                                          "expert_rejected_candidates": manifest["expert_rejected_candidates"]}
            print(f"[{key}] generated in {gen_s:.1f}s; benchmarking ...", flush=True)
            results["settings"][key] = bench_alfworld(key, games, args, random.Random(f"{args.seed}/{key}"))
            if args.fresh_games > 0:
                results["settings"][key]["fresh_process"] = fresh_process_probe(games, args.fresh_games)
    if "twx-twc" in wanted and args.games_twx > 0:
        print("[twx-twc] benchmarking ...", flush=True)
        results["settings"]["twx-twc"] = bench_twx(args.games_twx, args, random.Random(f"{args.seed}/twx-twc"))
    results["wall_time_s"] = time.perf_counter() - t_start
    results["load_average_at_end"] = load_average()

    print()
    print(table(results))
    print(f"\nwall time {results['wall_time_s']:.0f}s; load average start {results['load_average_at_start']}, "
          f"end {results['load_average_at_end']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
