"""The Ray backend of the environment pool: environment workers as Ray actors, the policy batched in the driver.

``RayEnvPool`` has :class:`agentprm.envs.runner.EnvPool`'s interface (``reset``, ``step``, ``expert_actions``,
``close``), so ``run_episodes`` and every stage above it run unchanged. Slot ``s`` belongs to actor ``s % actors``;
each actor owns its slots' environments (and so its own game caches) and answers one request per turn for all of
them, and requests to different actors run in parallel. Which slot plays which game is still decided in the driver
alone, so the episodes are the same as with the local backend (tested: identical trajectories).

Fault handling: when an actor dies (its process killed, its node lost), the request raises :class:`WorkerLost`
carrying the answers of the surviving actors and the slots that were lost. The pool starts a replacement actor for
those slots at once; ``run_episodes`` discards the interrupted episodes (nothing of them was written: records are
written when an episode finishes) and plays their games again from the start, so every episode is written exactly
once. At most ``max_restarts`` replacements per pool, then :class:`EnvError`.

``address``: ``""`` starts a private local Ray instance (``ray.init()`` on this machine, ``num_cpus`` CPUs);
``"auto"`` joins the running cluster; ``"ray://host:10001"`` or ``"host:6379"`` a remote one. The connection is
made once per process and kept (the next stage's pool reuses it); closing a pool kills only its actors.
"""

from __future__ import annotations

import os
from typing import Any

from agentprm.envs.base import EnvError
from agentprm.envs.runner import SlotRequests, WorkerLost


class _SlotsActor:
    """The Ray actor: one process holding the environments of its slots (``runner._Slots``)."""

    def __init__(self, name: str, env_options: dict[str, Any], slots: list[int]):
        from agentprm.envs.runner import _Slots

        self.group = _Slots(name, env_options, slots)

    def handle(self, command: str, payload: dict[int, Any]) -> dict[int, Any]:
        return self.group.handle(command, payload)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.group.close()


class RayEnvPool(SlotRequests):
    """``num_envs`` slots of backend ``name`` over ``actors`` Ray actors (see the module docstring)."""

    def __init__(self, name: str, num_envs: int, actors: int = 2, env_options: dict[str, Any] | None = None,
                 address: str = "", num_cpus: int = 0, max_restarts: int = 8):
        try:
            import ray
        except ImportError:
            raise EnvError("workers.backend 'ray' needs Ray: pip install 'agentprm[ray]'") from None
        if num_envs < 1:
            raise EnvError(f"num_envs must be >= 1, got {num_envs}")
        self.name, self.num_envs = name, num_envs
        self.env_options = dict(env_options or {})
        self.actors = min(max(actors, 1), num_envs)
        self.max_restarts, self.restarts = max_restarts, 0
        self._owner = [slot % self.actors for slot in range(num_envs)]
        self._ray = ray
        if not ray.is_initialized():  # kept for the process: later pools (the next stage) reuse it
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                options["address"] = address
            elif num_cpus:
                options["num_cpus"] = num_cpus
            ray.init(**options)
        self._remote = ray.remote(num_cpus=0)(_SlotsActor)  # env workers are scheduled by count, not CPU share
        self._handles = [self._spawn(index) for index in range(self.actors)]
        self._closed = False
        try:  # wait for construction, so a bad game folder or option fails here, naming the backend
            ray.get([handle.pid.remote() for handle in self._handles])
        except Exception as error:
            self.close()
            raise EnvError(f"building {name} environments on Ray: {_reason(error)}") from None

    def _spawn(self, index: int):
        slots = [slot for slot in range(self.num_envs) if self._owner[slot] == index]
        return self._remote.options(name=None).remote(self.name, self.env_options, slots)

    # -- transport ---------------------------------------------------------------------------------------------------

    def _request(self, command: str, payload: dict[int, Any]) -> dict[int, Any]:
        if self._closed:
            raise EnvError("The pool is closed")
        bad = [slot for slot in payload if not 0 <= slot < self.num_envs]
        if bad:
            raise EnvError(f"Slots {bad} out of range: the pool has slots 0..{self.num_envs - 1}")
        shares: dict[int, dict[int, Any]] = {}
        for slot, item in payload.items():
            shares.setdefault(self._owner[slot], {})[slot] = item
        refs = {index: self._handles[index].handle.remote(command, share) for index, share in shares.items()}
        results: dict[int, Any] = {}
        lost: list[int] = []
        first_error: Exception | None = None
        for index, ref in refs.items():  # read every answer, so one failure does not hide another
            try:
                results.update(self._ray.get(ref))
            except self._ray.exceptions.RayActorError as error:
                lost.append(index)
                first_error = first_error or error
            except self._ray.exceptions.RayTaskError as error:  # an engine error inside a living actor
                raise EnvError(_reason(error)) from None
        if lost:
            lost_slots = sorted(slot for index in lost for slot in shares[index])
            self._replace(lost, first_error)
            raise WorkerLost(f"{self.name} Ray actor(s) {lost} died ({_reason(first_error)}); slots {lost_slots} "
                             f"were lost and restart on a new actor", lost_slots, results)
        return {slot: results[slot] for slot in payload}

    def _replace(self, indices: list[int], error: Exception | None) -> None:
        for index in indices:
            self.restarts += 1
            if self.restarts > self.max_restarts:
                raise EnvError(f"{self.name} Ray actors died {self.restarts} times (limit {self.max_restarts}); "
                               f"last: {_reason(error)}")
            self._handles[index] = self._spawn(index)

    # -- API ---------------------------------------------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        return self._ray.get([handle.pid.remote() for handle in self._handles])

    def kill_worker(self, index: int) -> None:
        """Kill actor ``index``'s process (what a lost node does); for tests and drills."""
        self._ray.kill(self._handles[index], no_restart=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in self._handles:
            try:
                self._ray.get(handle.close.remote(), timeout=30)
            except Exception:  # a dead or stuck actor holds nothing we need
                pass
            self._ray.kill(handle, no_restart=True)
        self._handles = []


def _reason(error: BaseException | None) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__
