"""A batched runner: many live episodes stepped together, so one policy call decides every slot's next action.

Why batches: the policy will be a neural network, which costs about the same for one prompt as for a batch, so the
runner keeps ``num_envs`` episodes live and asks the policy for all of their actions at once.

Why processes: both engines are CPU-bound (ALFWorld is pure-Python PDDL search plus its expert; TextWorldExpress is
a JVM behind a synchronous py4j bridge), so threads would not overlap. ``EnvPool(workers=k)`` spreads the slots over
``k`` "spawn" processes (spawn, not fork: the parent may hold a JVM gateway or CUDA state that must not be copied).
Each worker builds its own environments with ``make_env`` so only plain data (games, actions, observations, steps)
crosses the Pipes. A request is sent to every involved worker before any reply is read, so workers run in parallel.
``workers=0`` runs the same slots in this process, which is simpler to debug and has no start-up cost.

Determinism: an environment's answers depend only on its game and the actions taken (ALFWorld's handcoded expert,
which draws from the global ``random``, gets a private stream restarted at every reset by ``AlfworldEnv``), and which
slot plays which game is decided in the parent alone. With a policy whose choice depends only on its input, such as
:func:`random_admissible_policy` (one RNG per (seed, game, step)), results are identical for any worker count.

Failures: an exception in a worker comes back as text and is raised as ``EnvError`` naming the slot and game; a
worker that exits is noticed by polling with a timeout while checking ``is_alive``, so the parent never hangs.
After an ``EnvError`` the slots involved are in an undefined state: reset them (or close the pool).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import signal
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentprm.envs.base import EnvError, Game, Observation, Step, TextEnv
from agentprm.envs.registry import make_env

_POLL_SECONDS = 0.2  # how often a waiting parent re-checks that the worker is still alive


@dataclass
class PolicyInput:
    """One live slot's state as the policy sees it. ``history`` holds (observation text, action) of earlier steps."""

    slot: int
    game: Game
    observation: Observation
    history: list[tuple[str, str]]
    step: int
    expert_action: str | None = None


@dataclass
class EpisodeResult:
    """One finished episode: every (observation before acting, action, Step), the outcome and the last observation."""

    game: Game
    transitions: list[tuple[Observation, str, Step]] = field(default_factory=list)
    won: bool = False
    steps: int = 0
    final_observation: Observation | None = None


Policy = Callable[[list[PolicyInput]], list[str]]


class WorkerLost(EnvError):
    """A pool lost some slots' environments with their worker and replaced it; ``results`` holds the answers of
    the other slots of the request. ``run_episodes`` plays the lost slots' games again from the start."""

    def __init__(self, message: str, slots: list[int], results: dict[int, Any]):
        super().__init__(message)
        self.slots, self.results = slots, results


@dataclass(frozen=True)
class PoolSpec:
    """Where environments run: ``backend`` local (this process or ``workers`` processes) or ray (``workers``
    actors, default 2; ``address`` "" = a local Ray instance, "auto" = the running cluster, or an address)."""

    workers: int = 0
    backend: str = "local"
    address: str = ""


def open_pool(name: str, num_envs: int, workers: "int | PoolSpec" = 0, env_options: dict[str, Any] | None = None):
    """An :class:`EnvPool` (local) or a ``RayEnvPool`` with the same interface, from a worker count or a spec."""
    spec = workers if isinstance(workers, PoolSpec) else PoolSpec(int(workers))
    if spec.backend == "ray":
        from agentprm.envs.ray_pool import RayEnvPool

        return RayEnvPool(name, num_envs, actors=spec.workers or 2, env_options=env_options, address=spec.address)
    if spec.backend != "local":
        raise EnvError(f"unknown worker backend {spec.backend!r}; expected local or ray")
    return EnvPool(name, num_envs, workers=spec.workers, env_options=env_options)


# -- the slots of one process ----------------------------------------------------------------------------------------


class _Slots:
    """The environments of the slots owned by one process; errors are re-raised naming the slot and its game."""

    def __init__(self, name: str, env_options: dict[str, Any], slots: Iterable[int]):
        self.envs: dict[int, TextEnv] = {slot: make_env(name, **dict(env_options)) for slot in slots}
        self.games: dict[int, Game] = {}

    def handle(self, command: str, payload: dict[int, Any]) -> dict[int, Any]:
        """``payload`` maps slot -> Game ("reset"), action ("step") or None ("expert")."""
        results = {}
        for slot, arg in payload.items():
            if command == "reset":
                self.games[slot] = arg
            results[slot] = self._call(slot, command, arg)
        return results

    def _call(self, slot: int, command: str, arg: Any) -> Any:
        env = self.envs[slot]
        try:
            if command == "reset":
                return env.reset(arg)
            return env.step(arg) if command == "step" else env.expert_action()
        except Exception as error:
            game = self.games.get(slot)
            game_id = game.game_id if game else "<none>"
            raise EnvError(f"slot {slot} (game {game_id}): {type(error).__name__}: {error}") from error

    def close(self) -> None:
        for env in self.envs.values():
            try:
                env.close()
            except Exception:  # closing is best effort; a broken engine is being discarded anyway
                pass


def _worker_main(conn, name: str, env_options: dict[str, Any], slots: list[int]) -> None:
    """Worker loop: build the slots, then answer ("ok", results) or ("error", text) to each request until "close"."""
    # Ctrl-C goes to the whole process group; the parent decides how to shut down, not each worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        group = _Slots(name, env_options, slots)
    except Exception as error:
        conn.send(("error", f"building {name} environments for slots {slots}: {type(error).__name__}: {error}"))
        return
    conn.send(("ok", None))
    try:
        while True:
            try:
                command, payload = conn.recv()
            except EOFError:  # the parent is gone
                command = "close"
            if command == "close":
                return
            try:
                conn.send(("ok", group.handle(command, payload)))
            except Exception as error:
                conn.send(("error", str(error)))
    finally:
        group.close()


# -- the pool --------------------------------------------------------------------------------------------------------


class SlotRequests:
    """The pool interface on top of ``_request(command, {slot: argument})``, shared by the local and Ray pools."""

    def _request(self, command: str, payload: dict[int, Any]) -> dict[int, Any]:
        raise NotImplementedError

    def reset(self, slot_games: dict[int, Game]) -> dict[int, Observation]:
        return self._request("reset", dict(slot_games))

    def step(self, slot_actions: dict[int, str]) -> dict[int, Step]:
        return self._request("step", dict(slot_actions))

    def expert_actions(self, slots: Iterable[int]) -> dict[int, str | None]:
        return self._request("expert", {slot: None for slot in slots})

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EnvPool(SlotRequests):
    """``num_envs`` environment slots of backend ``name``, in this process (``workers=0``) or over worker processes."""

    def __init__(self, name: str, num_envs: int, workers: int = 0, env_options: dict[str, Any] | None = None):
        if num_envs < 1:
            raise EnvError(f"num_envs must be >= 1, got {num_envs}")
        self.name = name
        self.num_envs = num_envs
        self.env_options = dict(env_options or {})
        self.workers = min(max(workers, 0), num_envs)
        self._local: _Slots | None = None
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        self._owner = [slot % max(self.workers, 1) for slot in range(num_envs)]
        if self.workers == 0:
            self._local = _Slots(name, self.env_options, range(num_envs))
        else:
            self._start_workers()

    def _start_workers(self) -> None:
        context = mp.get_context("spawn")
        for index in range(self.workers):
            parent_end, child_end = context.Pipe()
            slots = [slot for slot in range(self.num_envs) if self._owner[slot] == index]
            proc = context.Process(
                target=_worker_main, args=(child_end, self.name, self.env_options, slots), daemon=True,
                name=f"agentprm-{self.name}-worker-{index}",
            )
            proc.start()
            child_end.close()  # so the parent sees EOF when the worker exits
            self._procs.append(proc)
            self._conns.append(parent_end)
        try:
            for index in range(self.workers):
                self._receive(index)  # the "ready" reply, or the worker's construction error
        except EnvError:
            self.close()
            raise

    # -- transport ---------------------------------------------------------------------------------------------------

    def _receive(self, index: int) -> Any:
        conn, proc = self._conns[index], self._procs[index]
        try:
            while not conn.poll(_POLL_SECONDS):
                if not proc.is_alive():
                    break
            status, value = conn.recv()
        except (EOFError, OSError):
            proc.join(timeout=1)  # reap it, so the exit code (e.g. -9 for SIGKILL) can be reported
            raise EnvError(f"{self.name} worker {index} (pid {proc.pid}) died (exit code {proc.exitcode})") from None
        if status == "error":
            raise EnvError(value)
        return value

    def _request(self, command: str, payload: dict[int, Any]) -> dict[int, Any]:
        if self._local is None and not self._procs:
            raise EnvError("The pool is closed")
        bad = [slot for slot in payload if not 0 <= slot < self.num_envs]
        if bad:
            raise EnvError(f"Slots {bad} out of range: the pool has slots 0..{self.num_envs - 1}")
        if self._local is not None:
            return self._local.handle(command, payload)
        shares: dict[int, dict[int, Any]] = {}
        for slot, item in payload.items():
            shares.setdefault(self._owner[slot], {})[slot] = item
        for index, share in shares.items():
            try:
                self._conns[index].send((command, share))
            except OSError:
                pass  # a dead worker is reported by _receive below
        results: dict[int, Any] = {}
        first_error: EnvError | None = None
        for index in shares:  # read every reply, even after an error, so no stale reply is left in a pipe
            try:
                results.update(self._receive(index))
            except EnvError as error:
                first_error = first_error or error
        if first_error is not None:
            raise first_error
        return {slot: results[slot] for slot in payload}

    # -- API ---------------------------------------------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except OSError:  # already dead
                pass
        for conn, proc in zip(self._conns, self._procs):
            proc.join(timeout=10)
            if proc.is_alive():  # stuck in an engine call; it holds nothing we need
                proc.terminate()
                proc.join(timeout=5)
            conn.close()
        self._conns, self._procs = [], []


# -- episodes --------------------------------------------------------------------------------------------------------


@dataclass
class _Live:
    index: int  # position in ``games``
    result: EpisodeResult
    observation: Observation


def run_episodes(
    pool: EnvPool,
    games: Sequence[Game],
    policy: Policy,
    max_steps: int,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    need_expert: bool = False,
) -> list[EpisodeResult]:
    """Play every game once with ``policy``, keeping all slots busy; results come back in the order of ``games``.

    An episode ends when the environment says done or after ``max_steps`` steps; its slot then takes the next game.
    ``on_episode`` is called as each episode finishes. ``need_expert`` fills ``PolicyInput.expert_action``.
    When the pool reports :class:`WorkerLost`, the interrupted episodes are dropped (they were never reported) and
    their games played again from the start on the replacement worker: each game is still reported exactly once.
    """
    if max_steps < 1:
        raise EnvError(f"max_steps must be >= 1, got {max_steps}")
    queue = deque(enumerate(games))
    results: list[EpisodeResult | None] = [None] * len(games)
    live: dict[int, _Live] = {}

    def finish(slot: int) -> None:
        episode = live.pop(slot)
        episode.result.final_observation = episode.observation
        results[episode.index] = episode.result
        if on_episode is not None:
            on_episode(episode.result)

    def restart(lost: Iterable[int]) -> None:
        """Episodes whose environment died with its worker: their games go back to the front of the queue."""
        for slot in sorted(lost, reverse=True):
            episode = live.pop(slot, None)
            if episode is not None:
                queue.appendleft((episode.index, episode.result.game))

    def refill(slots: Iterable[int]) -> None:
        pending = list(slots)
        while pending:
            assigned = {slot: queue.popleft() for slot in pending if queue}
            try:
                observations = pool.reset({slot: game for slot, (_, game) in assigned.items()}) if assigned else {}
            except WorkerLost as error:  # the pool replaced the worker: reset those slots again
                observations = error.results
                for slot in sorted(error.slots, reverse=True):
                    queue.appendleft(assigned[slot])
            for slot, (index, game) in assigned.items():
                if slot in observations:
                    live[slot] = _Live(index, EpisodeResult(game), observations[slot])
            pending = [slot for slot in assigned if slot not in observations]

    refill(range(pool.num_envs))
    while live:
        slots = sorted(live)
        try:
            experts = pool.expert_actions(slots) if need_expert else {}
        except WorkerLost as error:
            restart(error.slots)
            refill(error.slots)
            continue
        actions = policy([_policy_input(slot, live[slot], experts.get(slot)) for slot in slots])
        if len(actions) != len(slots):
            raise EnvError(f"The policy returned {len(actions)} actions for {len(slots)} live episodes")
        lost: list[int] = []
        try:
            steps = pool.step(dict(zip(slots, actions)))
        except WorkerLost as error:
            steps, lost = error.results, error.slots
        done = [slot for slot, action in zip(slots, actions)
                if slot not in lost and _record(live[slot], action, steps[slot], max_steps)]
        restart(lost)
        for slot in done:
            finish(slot)
        refill(done + list(lost))
    return results  # type: ignore[return-value]  # every game was played


def _policy_input(slot: int, episode: _Live, expert: str | None) -> PolicyInput:
    history = [(obs.text, action) for obs, action, _ in episode.result.transitions]
    return PolicyInput(slot, episode.result.game, episode.observation, history, episode.result.steps, expert)


def _record(episode: _Live, action: str, step: Step, max_steps: int) -> bool:
    """Append one transition; True when the episode is over."""
    result = episode.result
    result.transitions.append((episode.observation, action, step))
    result.steps += 1
    result.won = result.won or step.won
    episode.observation = step.observation
    return step.done or result.steps >= max_steps


# -- ready-made policies ---------------------------------------------------------------------------------------------


def random_admissible_policy(seed: int = 0) -> Policy:
    """A policy choosing uniformly among admissible actions ("look" when there is none).

    Each choice comes from an RNG seeded by (seed, game id, step index) rather than from one shared stream, so it
    does not depend on which other episodes share the batch, on slot assignment or on the worker count.
    """

    def choose(item: PolicyInput) -> str:
        actions = item.observation.admissible_actions
        return random.Random(f"{seed}/{item.game.game_id}/{item.step}").choice(actions) if actions else "look"

    return lambda batch: [choose(item) for item in batch]


def expert_policy(batch: list[PolicyInput]) -> list[str]:
    """The expert's action for every slot ("look" when there is none). Use with ``need_expert=True``."""
    return [item.expert_action if item.expert_action is not None else "look" for item in batch]
