"""Supervised agent tasks: a task that fails is logged, counted and restarted — never silently gone.

The agent's long-running tasks (the shipper, the scheduler, the spool's checks) each run under one
`Supervisor`. When a task raises anything but cancellation, the supervisor logs the traceback, counts a
restart, marks the task `restarting` and starts it again after an exponential backoff (1 s, 2 s, 4 s … capped
at 60 s; the backoff starts over once a run has lasted `healthy_s`). A task that returns without being asked to
stop is treated the same way: the agent's tasks run until stopped.

States (the wire's `agent.tasks`, docs/wire.md):
- `ok`: running, and no failure since its last healthy stretch of `healthy_s` seconds;
- `restarting`: it failed and is waiting for its restart, or runs again but not yet for `healthy_s`;
- `failed`: it was stopped while its last run had failed (waiting for a restart, or failing as it stopped).

`replace(name, run)` stops a task and starts another body in its place under the same name and health record
(a configuration reload restarts the scheduler this way); a task stopped for good meanwhile stays stopped.

`exit_status()` is the rule `cmon agent run` exits with: 1 when a task failed during the run and was not `ok`
when it was stopped, else 0. Pure asyncio; no threads.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)

OK, RESTARTING, FAILED = "ok", "restarting", "failed"
TASK_NAME = re.compile(r"[a-z_]{1,32}")
MAX_TASKS = 16  # the wire's limit on `agent.tasks`
ERROR_MAX = 300  # characters of the last error on the wire
BACKOFF_S, BACKOFF_MAX_S, HEALTHY_S = 1.0, 60.0, 60.0


@dataclass(slots=True)
class TaskHealth:
    """One supervised task: its state, how often it failed, and the last error (one line, printable)."""

    name: str
    state: str = OK
    restarts: int = 0  # failures, each followed by a restart (or by the stop)
    error: str = ""
    started: float = 0.0  # monotonic time the current run began
    streak: int = 0  # failures in a row without a healthy stretch: the backoff's exponent
    waiting: bool = False  # sleeping before a restart

    def wire(self) -> dict[str, Any]:
        """Return the wire's `agent.tasks.<name>` object."""
        out: dict[str, Any] = {"state": self.state, "restarts": self.restarts}
        if self.error:
            out["error"] = self.error
        return out


class Supervisor:
    """Run named tasks forever; restart failed ones with backoff; report their health."""

    def __init__(self, *, backoff_s: float = BACKOFF_S, backoff_max_s: float = BACKOFF_MAX_S,
                 healthy_s: float = HEALTHY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff_s, self.backoff_max_s, self.healthy_s = backoff_s, backoff_max_s, healthy_s
        self.clock = clock
        self.tasks: dict[str, TaskHealth] = {}
        self._running: dict[str, asyncio.Task] = {}
        self._stopping: set[str] = set()  # being stopped: a return is not a failure
        self._closed: set[str] = set()  # stopped for good by stop(): replace() must not start them again

    def start(self, name: str, run: Callable[[], Awaitable[object]]) -> asyncio.Task:
        """Start `run()` as the supervised task `name` (`[a-z_]{1,32}`, at most 16 tasks)."""
        if not TASK_NAME.fullmatch(name) or name in self.tasks or len(self.tasks) >= MAX_TASKS:
            raise ValueError(f"bad or duplicate task name {name!r} (or more than {MAX_TASKS} tasks)")
        health = self.tasks[name] = TaskHealth(name)
        task = asyncio.create_task(self._keep(health, run), name=name)
        self._running[name] = task
        return task

    async def _keep(self, health: TaskHealth, run: Callable[[], Awaitable[object]]) -> None:
        while True:
            health.started = self.clock()
            try:
                await run()
                if health.name in self._stopping:
                    return
                raise RuntimeError("the task returned without being asked to stop")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the point: any failure is logged, counted, restarted
                delay = self._failed(health, exc)
            if health.name in self._stopping:
                health.state = FAILED
                return
            health.waiting = True
            try:
                await asyncio.sleep(delay)
            finally:
                health.waiting = False
            log.warning("task %s: restarting (restart %d)", health.name, health.restarts)

    def _failed(self, health: TaskHealth, exc: Exception) -> float:
        """Record a failure; return the backoff before the restart."""
        if self.clock() - health.started >= self.healthy_s:
            health.streak = 0  # it had run well for a while: start the backoff over
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** health.streak)
        health.streak += 1
        health.restarts += 1
        health.state = RESTARTING
        health.error = printable(f"{type(exc).__name__}: {exc}", ERROR_MAX)
        log.error("task %s failed (%d so far); restarting in %.0f s", health.name, health.restarts, delay,
                  exc_info=exc)
        return delay

    def _refresh(self) -> None:
        """A restarted task that has run for `healthy_s` is `ok` again."""
        now = self.clock()
        for health in self.tasks.values():
            if (health.state == RESTARTING and not health.waiting and health.name not in self._stopping
                    and now - health.started >= self.healthy_s):
                health.state = OK
                health.streak = 0
                log.info("task %s: healthy again after %d restarts", health.name, health.restarts)

    async def stop(self, name: str, ask: Callable[[], object] | None = None, timeout: float | None = None) -> None:
        """Stop task `name`: call `ask()` (its own clean stop), wait up to `timeout` s, then cancel it.

        A task waiting for its restart is cancelled at once and ends `failed`.
        """
        self._closed.add(name)
        await self._halt(name, ask, timeout)

    async def replace(self, name: str, run: Callable[[], Awaitable[object]], *, ask: Callable[[], object] | None = None,
                      timeout: float | None = None, prepare: Callable[[], object] | None = None) -> asyncio.Task | None:
        """Stop task `name` as stop() does, call `prepare()`, then run `run()` in its place; return the new task.

        Its health record goes on (restarts, last error); a task that was failing is `restarting` until the
        new run has lasted `healthy_s`. Returns None, starting nothing, when the task is not running or was
        stopped for good (stop()) before or during the replacement.
        """
        if name not in self._running or name in self._closed:
            return None
        health = self.tasks[name]
        self._refresh()
        was_ok, restarts = health.state == OK, health.restarts
        await self._halt(name, ask, timeout)
        if name in self._closed:
            return None
        self._stopping.discard(name)
        # a task that failed on its way out is not ok until the new run has lasted healthy_s
        health.state = OK if was_ok and health.restarts == restarts else RESTARTING
        if prepare is not None:
            prepare()  # no await between here and the start: a stop() cannot slip in
        task = asyncio.create_task(self._keep(health, run), name=name)
        self._running[name] = task
        return task

    async def _halt(self, name: str, ask: Callable[[], object] | None, timeout: float | None) -> None:
        """Ask task `name` to stop, wait up to `timeout` s, then cancel it (see stop())."""
        task = self._running.get(name)
        if task is None:
            return
        self._refresh()
        self._stopping.add(name)
        health = self.tasks[name]
        if health.waiting:
            health.state = FAILED
            task.cancel()
        else:
            if ask is not None:
                ask()
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # its errors were logged and counted by _keep

    async def stop_all(self, timeout: float | None = None) -> None:
        """Stop every task still running (cancelling each after `timeout` s)."""
        for name in list(self._running):
            await self.stop(name, timeout=timeout)

    # -- reporting --------------------------------------------------------------------------------------------

    @property
    def restarts_total(self) -> int:
        """Failures of every task (each followed by a restart), since start."""
        return sum(h.restarts for h in self.tasks.values())

    def health(self) -> str:
        """Return `ok` when every task is ok, else `degraded`."""
        self._refresh()
        return "ok" if all(h.state == OK for h in self.tasks.values()) else "degraded"

    def wire(self) -> dict[str, dict[str, Any]]:
        """Return the wire's `agent.tasks` block."""
        self._refresh()
        return {name: health.wire() for name, health in self.tasks.items()}

    def fields(self) -> dict[str, float]:
        """Return the self-metric fields: `task_restarts_total`, and per task `task_<name>_restarts_total` and
        `task_<name>_ok` (0/1)."""
        self._refresh()
        out = {"task_restarts_total": float(self.restarts_total)}
        for name, health in self.tasks.items():
            out[f"task_{name}_restarts_total"] = float(health.restarts)
            out[f"task_{name}_ok"] = float(health.state == OK)
        return out

    def exit_status(self) -> int:
        """Return 1 when a task failed during the run and was not `ok` at its stop, else 0."""
        self._refresh()
        return int(any(h.restarts and h.state != OK for h in self.tasks.values()))


def printable(text: str, limit: int) -> str:
    """Return `text` on one line of printable characters, at most `limit` long."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(flat.split())[:limit]


__all__ = ["FAILED", "OK", "RESTARTING", "Supervisor", "TaskHealth", "printable"]
