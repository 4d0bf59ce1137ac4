"""Acknowledged, evicted and lost sequence ranges per (agent, spool), merged and durably recorded.

The collector writes a batch to the database, then `record()`s its range, then answers 200: a range is recorded
only once the database accepted it, and a resent batch finds its range here and is skipped (idempotent). If the
collector dies between the database's answer and the commit, the resend is written again and VictoriaMetrics'
`-dedup.minScrapeInterval=1ms` keeps one sample per (series, timestamp). Commits are grouped: every record
waiting while a commit runs goes into the next one (one fsync for many batches under load). The cache assumes
one collector process per state file.

A commit writes only what changed, never a spool's whole list: each record inserts the merged range its new
range became and deletes the rows that range covers (an index range scan). So one spool with 100,000 scattered
ranges costs a commit a few rows, not 200,000 (it used to rewrite the list: 0.2 s for every grouped commit,
everyone's). Rows are only ever replaced by a row covering them, so the file's ranges never shrink, whatever
the cache thinks (after a failed commit the cache of those spools is reloaded from the file).

Besides what it acknowledged the collector records what the agent says it will never send: `evicted` ranges
(the spool was full and dropped its oldest rows) and `lost` ranges with the agent's reason (rows it could not
read back, e.g. a damaged spool page). `gaps()` counts both as accounted for: a gap is a seq nobody explained.

What one agent can make the collector hold is bounded (`room()` and `claim()` say so before a batch is written):
at most `MAX_REPORTED` separate evicted or lost ranges per spool, `MAX_ACKED` separate acknowledged ranges per
spool, and `MAX_SPOOLS` live spools per agent (a spool with nothing recorded for `SPOOL_IDLE_S` is no longer
live: its ranges stay in the file, its cache is dropped).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import defaultdict
from typing import Any, Callable, Sequence

from core.ranges import Range, insert, merge, size, subtract, touching

from .db import migrate, transaction

MAX_REPORTED = 10_000  # separate evicted (or lost) ranges per spool; a real agent's merge into a handful
# Separate acknowledged ranges per spool. A real agent's acks have a gap only while backlog (oldest first) and
# live data (newest first) are both being shipped — a few at once — and, for good, where the collector refused
# a batch (400: the agent quarantines it, its seqs are never acked). 10,000 is 10,000 refused batches in one
# spool's life; a scattered-seq attacker gets there and no further (the cache holds ~1.2 MB per such spool).
MAX_ACKED = 10_000
# Live spools per agent. An agent ships from one spool; it makes a new one (a new id) only when its spool file
# is unusable and started over, or replaced by hand. A spool with nothing recorded for a day no longer counts.
MAX_SPOOLS = 16
SPOOL_IDLE_S = 86_400.0

class Acks:
    """The ranges tables, cached in memory; `record()` is a grouped, durable commit."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        migrate(conn)  # the tables are collector.db's
        self.clock = clock  # wall clock: the spools' last activity is kept in the file across restarts
        self._cache: dict[str, dict[tuple[str, str], list[Range]]] = {"acked": {}, "evicted": {}}
        self._lost: dict[tuple[str, str], dict[str, list[Range]]] = {}  # by reason, each merged
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._spools: dict[str, dict[str, float]] = {}  # agent → its live spools → last activity (s)
        self._lost_totals: dict[str, int] | None = None  # agent → seqs lost, once read from the file
        # (table, (agent, spool), reason or None, merged range — for "spools" the time in ms, who waits for it)
        self._pending: list[tuple[str, tuple[str, str], str | None, Range | int, asyncio.Future]] = []
        self._committing: asyncio.Task | None = None

    def lock(self, agent: str, spool: str) -> asyncio.Lock:
        """Return the lock serialising check → write → record for one spool (a retry racing its original)."""
        return self._locks[(agent, spool)]

    def ranges(self, agent: str, spool: str, table: str = "acked") -> list[Range]:
        """Return the merged ranges recorded for one spool (`acked`, `evicted` or `lost`, whatever the reason)."""
        if table == "lost":
            return merge([r for ranges in self._lost_of(agent, spool).values() for r in ranges])
        cache = self._cache[table]
        key = (agent, spool)
        if key not in cache:
            rows = self.conn.execute(f"SELECT first, last FROM {table} WHERE agent = ? AND spool = ?", key)
            cache[key] = merge([tuple(r) for r in rows])
        return cache[key]

    def _lost_of(self, agent: str, spool: str) -> dict[str, list[Range]]:
        key = (agent, spool)
        if key not in self._lost:
            by_reason: dict[str, list[Range]] = defaultdict(list)
            for first, last, reason in self.conn.execute(
                    "SELECT first, last, reason FROM lost WHERE agent = ? AND spool = ?", key):
                by_reason[reason].append((first, last))
            self._lost[key] = {reason: merge(ranges) for reason, ranges in by_reason.items()}
        return self._lost[key]

    def lost(self, agent: str, spool: str) -> list[tuple[int, int, str]]:
        """Return the lost ranges of one spool with their reasons, sorted."""
        return sorted((a, b, reason) for reason, ranges in self._lost_of(agent, spool).items() for a, b in ranges)

    def lost_by_agent(self) -> dict[str, int]:
        """Return, per agent key, how many seqs its spools reported lost (every spool, also those no longer live).

        Read from the file once, then kept up to date by `record()` (the fleet view must not cost a scan of
        every lost range ever reported on each request)."""
        if self._lost_totals is None:
            per_spool: dict[tuple[str, str], list[Range]] = defaultdict(list)
            for agent, spool, first, last in self.conn.execute("SELECT agent, spool, first, last FROM lost"):
                per_spool[(agent, spool)].append((first, last))
            totals: dict[str, int] = defaultdict(int)
            for (agent, _), ranges in per_spool.items():
                totals[agent] += size(merge(ranges))
            self._lost_totals = dict(totals)
        return dict(self._lost_totals)

    def missing(self, agent: str, spool: str, first: int, last: int) -> list[Range]:
        """Return the parts of [first, last] not yet acknowledged."""
        return subtract(first, last, self.ranges(agent, spool))

    def claim(self, agent: str, spool: str) -> str | None:
        """Count `spool` among the agent's live spools; return why it cannot be one (None: it is).

        Call it inside the spool's lock before writing: the place is taken at once (two new spools racing
        cannot both take the last one) and kept until the spool has been idle `SPOOL_IDLE_S`."""
        now = self.clock()
        live = self._live(agent, now)
        if spool not in live and len(live) >= MAX_SPOOLS:
            return (f"this agent already has {MAX_SPOOLS} spools with batches in the last "
                    f"{SPOOL_IDLE_S / 3600:g} h: spool {spool} is refused (an agent ships from one spool)")
        live[spool] = now
        return None

    def _live(self, agent: str, now: float) -> dict[str, float]:
        """Return the agent's live spools (read from the file the first time), forgetting the idle ones."""
        live = self._spools.get(agent)
        if live is None:
            rows = self.conn.execute("SELECT spool, last_ms FROM spools WHERE agent = ? AND last_ms >= ?",
                                     (agent, int((now - SPOOL_IDLE_S) * 1000)))
            live = self._spools[agent] = {spool: last_ms / 1000 for spool, last_ms in rows}
        for spool in [s for s, seen in live.items() if seen < now - SPOOL_IDLE_S]:
            del live[spool]
            self._forget(agent, spool)
        return live

    def _forget(self, agent: str, spool: str) -> None:
        """Drop an idle spool's cache (its ranges stay in the file and are read again if it comes back)."""
        key = (agent, spool)
        caches: list[dict[tuple[str, str], Any]] = [*self._cache.values(), self._lost]
        for cache in caches:
            cache.pop(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    def room(self, agent: str, spool: str, evicted: list[Range], lost: list[tuple[int, int, str]],
             acked: Range | None = None) -> str | None:
        """Return why this spool cannot record a batch acknowledging `acked` and reporting `evicted` and `lost`
        (None: it can)."""
        if acked is not None and acked[1] >= acked[0]:
            ranges = self.ranges(agent, spool)
            i, j = touching(ranges, *acked)
            if j == i and len(ranges) >= MAX_ACKED:  # only a range touching none adds one
                return (f"spool {spool} already has {MAX_ACKED} separate acknowledged ranges and "
                        f"{acked[0]}..{acked[1]} would start another: send contiguous batches")
        for what, old, new in (("evicted", self.ranges(agent, spool, "evicted"), evicted),
                               ("lost", self.ranges(agent, spool, "lost"), [(a, b) for a, b, _ in lost])):
            if new and len(old) + len(new) > MAX_REPORTED and len(merge(old + new)) > MAX_REPORTED:
                return (f"spool {spool} would have more than {MAX_REPORTED} separate {what} ranges: "
                        "report contiguous ranges")
        return None

    async def record(self, agent: str, spool: str, first: int, last: int, *, evicted: Sequence[Range] = (),
                     lost: Sequence[tuple[int, int, str]] = ()) -> tuple[int, int]:
        """Durably add [first, last] to the acknowledged ranges, `evicted` and `lost` to theirs.

        Return how many seqs were newly recorded as (evicted, lost): a resent report counts nothing."""
        key = (agent, spool)
        changes: list[tuple[str, str | None, Range | int]] = []  # (table, reason, merged range to write)
        if last >= first and (done := insert(self.ranges(agent, spool), first, last)):
            changes.append(("acked", None, done[0]))
        new_evicted = new_lost = 0
        if evicted:
            ranges = self.ranges(agent, spool, "evicted")
            for a, b in evicted:
                if done := insert(ranges, a, b):
                    changes.append(("evicted", None, done[0]))
                    new_evicted += done[1]
        if lost:
            before = size(self.ranges(agent, spool, "lost"))  # across reasons: a seq lost twice counts once
            by_reason = self._lost_of(agent, spool)
            for a, b, reason in lost:
                if done := insert(by_reason.setdefault(reason, []), a, b):
                    changes.append(("lost", reason, done[0]))
            new_lost = size(self.ranges(agent, spool, "lost")) - before
            if self._lost_totals is not None and new_lost:
                self._lost_totals[agent] = self._lost_totals.get(agent, 0) + new_lost
        now = self.clock()
        if (live := self._spools.get(agent)) is not None:
            live[spool] = now
        changes.append(("spools", None, int(now * 1000)))
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        for table, why, value in changes:
            self._pending.append((table, key, why, value, future))
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_loop())
        await future
        return new_evicted, new_lost

    def gaps(self, agent: str, spool: str) -> list[Range]:
        """Return the seqs below the highest acknowledged one that nobody accounted for (acked, evicted or lost)."""
        done = merge(self.ranges(agent, spool) + self.ranges(agent, spool, "evicted")
                     + self.ranges(agent, spool, "lost"))
        return subtract(1, done[-1][1], done) if done else []

    async def _commit_loop(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            changes: dict[tuple[str, tuple[str, str], str | None], list] = defaultdict(list)
            for table, key, reason, value, _ in batch:
                changes[(table, key, reason)].append(value)
            try:
                await asyncio.to_thread(self._commit, changes)
            except Exception as exc:  # noqa: BLE001 - every waiter learns of it (its batch is not acked)
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                for table, key, _ in changes:  # reload from the file: it holds what is durable
                    if table != "spools":
                        (self._lost if table == "lost" else self._cache[table]).pop(key, None)
                self._lost_totals = None
                continue
            for *_, future in batch:
                if not future.done():
                    future.set_result(None)

    def _commit(self, changes: dict[tuple[str, tuple[str, str], str | None], list]) -> None:
        """Write the merged ranges that changed: each replaces the rows it covers (never a whole list)."""
        with transaction(self.conn) as conn:
            for (table, (agent, spool), reason), ranges in changes.items():
                if table == "spools":
                    conn.execute("INSERT INTO spools (agent, spool, last_ms) VALUES (?, ?, ?) ON CONFLICT "
                                 "(agent, spool) DO UPDATE SET last_ms = max(last_ms, excluded.last_ms)",
                                 (agent, spool, max(ranges)))
                    continue
                ranges = merge(ranges)  # this commit's ranges of one spool: later ones cover earlier ones
                if table == "lost":
                    conn.executemany("DELETE FROM lost WHERE agent = ? AND spool = ? AND reason = ? "
                                     "AND first BETWEEN ? AND ? AND last <= ?",
                                     [(agent, spool, reason, a, b, b) for a, b in ranges])
                    conn.executemany("INSERT INTO lost (agent, spool, reason, first, last) VALUES (?, ?, ?, ?, ?) "
                                     "ON CONFLICT (agent, spool, reason, first) DO UPDATE SET "
                                     "last = max(last, excluded.last)",
                                     [(agent, spool, reason, a, b) for a, b in ranges])
                else:
                    conn.executemany(f"DELETE FROM {table} WHERE agent = ? AND spool = ? AND first BETWEEN ? AND ? "
                                     "AND last <= ?", [(agent, spool, a, b, b) for a, b in ranges])
                    conn.executemany(f"INSERT INTO {table} (agent, spool, first, last) VALUES (?, ?, ?, ?) "
                                     "ON CONFLICT (agent, spool, first) DO UPDATE SET last = max(last, excluded.last)",
                                     [(agent, spool, a, b) for a, b in ranges])


__all__ = ["Acks", "MAX_ACKED", "MAX_REPORTED", "MAX_SPOOLS", "SPOOL_IDLE_S"]
