"""Load shedding for ingest: a cap on batches in flight, and a virtual queue that spreads the retries.

A backfill storm (thousands of agents posting back to back) must not become one long queue inside the
collector, where every request waits seconds. `Admission` lets at most `cap` ingest requests past
authentication at once; the rest are answered 503 + Retry-After BEFORE their body is read, which costs a few
hundred microseconds. The Retry-After is a place in a virtual queue, not a constant: each shed agent gets a
ticket for a time slot, slots are spaced by the collector's measured capacity (`cap / mean service time`), so
the retries come back about as fast as they can be served instead of all together. While any ticket is
outstanding the queue is fair: an agent without a ticket (e.g. one that was just served and posts its next
batch at once) takes a ticket at the end of the line, so every agent gets one batch per turn, round-robin.

A ticket holder that finds the cap full waits at most `wait_s` for a free place (the retries arrive in bursts:
Retry-After is whole seconds) before it is given a new ticket. A ticket whose holder does not come back within
`GRACE_S` of its slot expires. Everything here runs on the event loop: no locks.

Before all that, `claim(key)` bounds what ONE credential may have in the collector at once (`per_agent`
requests, counted from authentication to the answer, heartbeats included): without it a single credential
could take every place with uploads that send their headers and then one byte a minute. Past it the request is
answered 429 + Retry-After (this client sent too much), still before its body is read.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from typing import Callable

GRACE_S = 10.0  # a ticket is forgotten this long after its slot (the agent went away)
AGENT_RETRY_AFTER_S = 5  # Retry-After for a credential over its own limit (its other requests end by then, normally)
MAX_RETRY_AFTER_S = 600  # the longest Retry-After given (the shipper honours up to an hour)
ALPHA = 0.05  # weight of one request in the service-time average
INITIAL_SERVICE_S = 0.1


class Admission:
    """The ingest gate: `await enter(key)` → None (admitted: call `leave(seconds)` after) or Retry-After seconds."""

    def __init__(self, cap: int, wait_s: float = 0.05, clock: Callable[[], float] = time.monotonic,
                 per_agent: int = 4) -> None:
        self.cap = cap
        self.wait_s = wait_s
        self.per_agent = per_agent
        self.by_agent: dict[str, int] = {}  # credential key → its requests in the collector now
        self.clock = clock
        self.inflight = 0
        self.service_s = INITIAL_SERVICE_S  # moving average of an admitted request's time in the collector
        self.tickets: OrderedDict[str, float] = OrderedDict()  # agent key → slot (monotonic s), in slot order
        self.next_slot = 0.0
        self.waiters: deque[asyncio.Future[bool]] = deque()

    @property
    def waiting(self) -> int:
        """Return how many agents hold a ticket (were told to come back)."""
        return len(self.tickets)

    def claim(self, key: str) -> bool:
        """Count one more request of credential `key`; False (nothing counted) when it has `per_agent` already."""
        count = self.by_agent.get(key, 0)
        if count >= self.per_agent:
            return False
        self.by_agent[key] = count + 1
        return True

    def release(self, key: str) -> None:
        """End a request counted by `claim(key)`."""
        count = self.by_agent.pop(key, 0) - 1
        if count > 0:
            self.by_agent[key] = count

    async def enter(self, key: str) -> int | None:
        """Admit the request of agent `key` (None) or return the Retry-After (s) it must wait before resending."""
        now = self.clock()
        self._expire(now)
        holder = self.tickets.pop(key, None) is not None
        if not holder and self.tickets:
            return self._ticket(key, now)  # a queue has formed: its turn comes after those already waiting
        if self.inflight < self.cap:  # (with a place free, nobody waits: leave() hands places over)
            self.inflight += 1
            return None
        if self.wait_s > 0 and len(self.waiters) < self.cap and await self._wait():
            return None
        return self._ticket(key, self.clock())

    def leave(self, seconds: float) -> None:
        """Release an admitted request's place; `seconds` is how long it was inside (the capacity estimate)."""
        self.service_s += ALPHA * (seconds - self.service_s)
        while self.waiters:  # hand the place straight to the oldest waiter still waiting
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self.inflight -= 1

    async def _wait(self) -> bool:
        """Wait up to `wait_s` for a place handed over by `leave()`; return whether one was."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self.waiters.append(waiter)
        timer = loop.call_later(self.wait_s, lambda: waiter.done() or waiter.set_result(False))
        try:
            return await waiter
        except asyncio.CancelledError:  # the client went away: pass on a place handed over meanwhile
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.leave(self.service_s)
            raise
        finally:
            timer.cancel()
            if waiter in self.waiters:
                self.waiters.remove(waiter)

    def _ticket(self, key: str, now: float) -> int:
        """Give `key` the next slot of the virtual queue; return the Retry-After that brings it back then."""
        spacing = self.service_s / self.cap  # the collector serves cap / service_s requests per second
        self.next_slot = max(self.next_slot, now) + spacing
        self.tickets[key] = self.next_slot
        return min(MAX_RETRY_AFTER_S, max(1, math.ceil(self.next_slot - now)))

    def _expire(self, now: float) -> None:
        while self.tickets:
            key, slot = next(iter(self.tickets.items()))
            if slot + GRACE_S >= now:
                return
            del self.tickets[key]


__all__ = ["AGENT_RETRY_AFTER_S", "Admission", "GRACE_S", "MAX_RETRY_AFTER_S"]
