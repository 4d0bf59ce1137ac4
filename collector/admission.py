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

**Live data first.** A request whose batch is live (the agent says so: `X-Cmon-Batch: live`, core.wire) skips
the virtual queue and has `live_reserve` places of its own beyond `cap` (a quarter of it, at least one) that the
backlog never takes: in a backfill storm the live batches, which feed the alerts, are still served at once.
When even those are taken it waits up to `LIVE_WAIT_S` and gets the next place any request frees (before any
waiting backlog batch); only then is it told to come back in a second (no ticket: it is not part of the
backlog's round). An agent that calls its backlog live gains only that small lane, and its own `per_agent` limit holds.

Before all that, `claim(key)` bounds what ONE credential may have in the collector at once (`per_agent`
requests, counted from authentication to the answer, heartbeats included): without it a single credential
could take every place with uploads that send their headers and then one byte a minute. Past it the request is
answered 429 + Retry-After (this client sent too much), still before its body is read.

Enrollment has no credential to count by, so `Enrollments` bounds it by itself: at most `ENROLL_INFLIGHT`
enrollments in progress at once (anyone can open them, so slow bodies must not pile up), and per source address
a token bucket of failed enrollments (a wrong, used or expired token): `ENROLL_FAILURES` at once, then one per
`ENROLL_REFILL_S`. Past either the answer is 429 + Retry-After before the body is read. Guessing a token
(64-bit id, 256-bit secret) is hopeless anyway; the bucket keeps a guesser from costing the collector a state
file lookup and a log line per request, for ever.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections import OrderedDict, deque
from typing import Callable

GRACE_S = 10.0  # a ticket is forgotten this long after its slot (the agent went away)
AGENT_RETRY_AFTER_S = 5  # Retry-After for a credential over its own limit (its other requests end by then, normally)
MAX_RETRY_AFTER_S = 600  # the longest Retry-After given (the shipper honours up to an hour)
ALPHA = 0.05  # weight of one request in the service-time average
INITIAL_SERVICE_S = 0.1
LIVE_WAIT_S = 0.5  # a live batch with every live place taken waits this long for the next place freed
ENROLL_INFLIGHT = 8  # enrollments in progress at once (a province enrolls its PCs one by one, by hand)
ENROLL_RETRY_AFTER_S = 5  # Retry-After when they are all taken
ENROLL_FAILURES = 10  # failed enrollments one address may make in a row (typos, an expired token) ...
ENROLL_REFILL_S = 60.0  # ... then one more per minute
ENROLL_ADDRESSES = 10_000  # addresses whose failures are remembered; the one idle longest is forgotten first


class Admission:
    """The ingest gate: `await enter(key)` → None (admitted: call `leave(seconds)` after) or Retry-After seconds."""

    def __init__(self, cap: int, wait_s: float = 0.05, clock: Callable[[], float] = time.monotonic,
                 per_agent: int = 4) -> None:
        self.cap = cap
        self.live_reserve = max(1, cap // 4)  # places only live batches may take, beyond `cap`
        self.wait_s = wait_s
        self.per_agent = per_agent
        self.by_agent: dict[str, int] = {}  # credential key → its requests in the collector now
        self.clock = clock
        self.inflight = 0
        self.service_s = INITIAL_SERVICE_S  # moving average of an admitted request's time in the collector
        self.tickets: OrderedDict[str, float] = OrderedDict()  # agent key → slot (monotonic s), in slot order
        self.next_slot = 0.0
        self.waiters: deque[asyncio.Future[bool]] = deque()
        self.live_waiters: deque[asyncio.Future[bool]] = deque()  # live batches waiting: served before the backlog

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

    async def enter(self, key: str, live: bool = False) -> int | None:
        """Admit the request of agent `key` (None) or return the Retry-After (s) it must wait before resending.

        A `live` batch skips the queue and may use the live places beyond `cap` (see the module docstring)."""
        if live:
            if self.inflight < self.cap + self.live_reserve:
                self.inflight += 1
                return None
            if len(self.live_waiters) < self.cap and await self._wait(self.live_waiters, LIVE_WAIT_S):
                return None  # the next place freed, whichever lane it was, went to it first
            return 1
        now = self.clock()
        self._expire(now)
        holder = self.tickets.pop(key, None) is not None
        if not holder and self.tickets:
            return self._ticket(key, now)  # a queue has formed: its turn comes after those already waiting
        if self.inflight < self.cap:  # (with a place free, nobody waits: leave() hands places over)
            self.inflight += 1
            return None
        if self.wait_s > 0 and len(self.waiters) < self.cap and await self._wait(self.waiters, self.wait_s):
            return None
        return self._ticket(key, self.clock())

    def leave(self, seconds: float) -> None:
        """Release an admitted request's place; `seconds` is how long it was inside (the capacity estimate)."""
        self.service_s += ALPHA * (seconds - self.service_s)
        while self.live_waiters:  # live data first: any place freed goes to a waiting live batch
            waiter = self.live_waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        while self.waiters and self.inflight <= self.cap:  # a live place freed is not the backlog's to take  # hand the place straight to the oldest waiter still waiting
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self.inflight -= 1

    async def _wait(self, queue: deque[asyncio.Future[bool]], seconds: float) -> bool:
        """Wait in `queue` up to `seconds` for a place handed over by `leave()`; return whether one was."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        queue.append(waiter)

        def expire() -> None:
            if not waiter.done():
                waiter.set_result(False)

        timer = loop.call_later(seconds, expire)
        try:
            return await waiter
        except asyncio.CancelledError:  # the client went away: pass on a place handed over meanwhile
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.leave(self.service_s)
            raise
        finally:
            timer.cancel()
            if waiter in queue:
                queue.remove(waiter)

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


class Enrollments:
    """The unauthenticated enrollment endpoint's limits: places in progress and failures per source address."""

    def __init__(self, cap: int = ENROLL_INFLIGHT, failures: int = ENROLL_FAILURES,
                 refill_s: float = ENROLL_REFILL_S, clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = ENROLL_ADDRESSES) -> None:
        self.cap = cap
        self.failures = failures
        self.refill_s = refill_s
        self.clock = clock
        self.max_addresses = max_addresses
        self.inflight = 0
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address → (failures left, at)

    def enter(self) -> bool:
        """Take a place for one enrollment; False when all `cap` are taken."""
        if self.inflight >= self.cap:
            return False
        self.inflight += 1
        return True

    def leave(self) -> None:
        """Give back the place taken by `enter()`."""
        self.inflight -= 1

    def blocked(self, address: str | None) -> int | None:
        """Return the Retry-After (s) for an address with no failures left, None when it may try."""
        left = self._left(source(address), self.clock())
        return None if left >= 1 else max(1, math.ceil((1 - left) * self.refill_s))

    def failed(self, address: str | None) -> bool:
        """Count a failed enrollment from `address`; return True when this one used its last try."""
        key, now = source(address), self.clock()
        left = self._left(key, now) - 1
        self._buckets[key] = (left, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        return left < 1

    def _left(self, key: str, now: float) -> float:
        """Return the failures `key` may still make (refilled since its last one)."""
        entry = self._buckets.get(key)
        if entry is None:
            return float(self.failures)
        left = min(float(self.failures), entry[0] + (now - entry[1]) / self.refill_s)
        if left >= self.failures:
            del self._buckets[key]  # back to a full bucket: nothing left to remember
        return left


def source(address: str | None) -> str:
    """Return what failures are counted by: the IPv4 address, or the IPv6 /64 (one host's usual share)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or ""
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


__all__ = ["AGENT_RETRY_AFTER_S", "Admission", "ENROLL_RETRY_AFTER_S", "Enrollments", "GRACE_S", "MAX_RETRY_AFTER_S",
           "source"]
