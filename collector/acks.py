"""Acknowledged, evicted and lost sequence ranges per (agent, spool), merged and durably recorded.

The collector writes a batch to the database, then `record()`s its range, then answers 200: a range is recorded
only once the database accepted it, and a resent batch finds its range here and is skipped (idempotent). If the
collector dies between the database's answer and the commit, the resend is written again and VictoriaMetrics'
`-dedup.minScrapeInterval=1ms` keeps one sample per (series, timestamp). Commits are grouped: every record
waiting while a commit runs goes into the next one (one fsync for many batches under load). The cache assumes
one collector process per state file.

Besides what it acknowledged the collector records what the agent says it will never send: `evicted` ranges
(the spool was full and dropped its oldest rows) and `lost` ranges with the agent's reason (rows it could not
read back, e.g. a damaged spool page). `gaps()` counts both as accounted for: a gap is a seq nobody explained.
A spool may hold at most `MAX_REPORTED` separate evicted or lost ranges (after merging), so one agent's reports
cannot make every grouped commit slow (`room()` says so before the batch is written).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict

Range = tuple[int, int]
MAX_REPORTED = 10_000  # separate evicted (or lost) ranges per spool; a real agent's merge into a handful

SCHEMA = """
CREATE TABLE IF NOT EXISTS acked (agent TEXT NOT NULL, spool TEXT NOT NULL, first INTEGER NOT NULL,
    last INTEGER NOT NULL, PRIMARY KEY (agent, spool, first));
CREATE TABLE IF NOT EXISTS evicted (agent TEXT NOT NULL, spool TEXT NOT NULL, first INTEGER NOT NULL,
    last INTEGER NOT NULL, PRIMARY KEY (agent, spool, first));
CREATE TABLE IF NOT EXISTS lost (agent TEXT NOT NULL, spool TEXT NOT NULL, first INTEGER NOT NULL,
    last INTEGER NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (agent, spool, reason, first));
"""


def merge(ranges: list[Range]) -> list[Range]:
    """Return sorted, merged ranges (adjacent ones joined: [1,5] + [6,9] = [1,9])."""
    out: list[Range] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def size(ranges: list[Range]) -> int:
    """Return how many seqs merged ranges cover."""
    return sum(last - first + 1 for first, last in ranges)


def subtract(first: int, last: int, done: list[Range]) -> list[Range]:
    """Return the parts of [first, last] not covered by the merged ranges `done`."""
    out, start = [], first
    for a, b in done:
        if b < start:
            continue
        if a > last:
            break
        if a > start:
            out.append((start, a - 1))
        start = max(start, b + 1)
        if start > last:
            return out
    if start <= last:
        out.append((start, last))
    return out


class Acks:
    """The ranges tables, cached in memory; `record()` is a grouped, durable commit."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.executescript(SCHEMA)
        self._cache: dict[str, dict[tuple[str, str], list[Range]]] = {"acked": {}, "evicted": {}}
        self._lost: dict[tuple[str, str], dict[str, list[Range]]] = {}  # by reason, each merged
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._pending: list[tuple[str, tuple[str, str], list, asyncio.Future]] = []
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
        """Return, per agent key, how many seqs its spools reported lost (from the state file: every spool)."""
        per_spool: dict[tuple[str, str], list[Range]] = defaultdict(list)
        for agent, spool, first, last in self.conn.execute("SELECT agent, spool, first, last FROM lost"):
            per_spool[(agent, spool)].append((first, last))
        out: dict[str, int] = defaultdict(int)
        for (agent, _), ranges in per_spool.items():
            out[agent] += size(merge(ranges))
        return dict(out)

    def missing(self, agent: str, spool: str, first: int, last: int) -> list[Range]:
        """Return the parts of [first, last] not yet acknowledged."""
        return subtract(first, last, self.ranges(agent, spool))

    def room(self, agent: str, spool: str, evicted: list[Range], lost: list[tuple[int, int, str]]) -> str | None:
        """Return why this spool cannot record more reported ranges (None: it can)."""
        for what, old, new in (("evicted", self.ranges(agent, spool, "evicted"), evicted),
                               ("lost", self.ranges(agent, spool, "lost"), [(a, b) for a, b, _ in lost])):
            if new and len(old) + len(new) > MAX_REPORTED and len(merge(old + new)) > MAX_REPORTED:
                return (f"spool {spool} would have more than {MAX_REPORTED} separate {what} ranges: "
                        "report contiguous ranges")
        return None

    async def record(self, agent: str, spool: str, first: int, last: int, *, evicted: list[Range] = (),
                     lost: list[tuple[int, int, str]] = ()) -> tuple[int, int]:
        """Durably add [first, last] to the acknowledged ranges, `evicted` and `lost` to theirs.

        Return how many seqs were newly recorded as (evicted, lost): a resent report counts nothing."""
        key = (agent, spool)
        loop = asyncio.get_running_loop()
        jobs: list[tuple[str, list]] = []
        if last >= first:
            merged = merge(self.ranges(agent, spool) + [(first, last)])
            self._cache["acked"][key] = merged
            jobs.append(("acked", merged))
        new_evicted = new_lost = 0
        if evicted:
            old = self.ranges(agent, spool, "evicted")
            merged = merge(old + [tuple(r) for r in evicted])
            new_evicted = size(merged) - size(old)
            self._cache["evicted"][key] = merged
            jobs.append(("evicted", merged))
        if lost:
            before = size(self.ranges(agent, spool, "lost"))
            by_reason = dict(self._lost_of(agent, spool))
            for a, b, reason in lost:
                by_reason[reason] = merge(by_reason.get(reason, []) + [(a, b)])
            self._lost[key] = by_reason
            new_lost = size(self.ranges(agent, spool, "lost")) - before
            jobs.append(("lost", [(a, b, reason) for reason, ranges in by_reason.items() for a, b in ranges]))
        futures = []
        for table, rows in jobs:
            futures.append(loop.create_future())
            self._pending.append((table, key, rows, futures[-1]))
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_loop())
        await asyncio.gather(*futures)
        return new_evicted, new_lost

    def gaps(self, agent: str, spool: str) -> list[Range]:
        """Return the seqs below the highest acknowledged one that nobody accounted for (acked, evicted or lost)."""
        done = merge(self.ranges(agent, spool) + self.ranges(agent, spool, "evicted")
                     + self.ranges(agent, spool, "lost"))
        return subtract(1, done[-1][1], done) if done else []

    async def _commit_loop(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            latest = {(table, key): rows for table, key, rows, _ in batch}  # a later merge covers earlier
            try:
                await asyncio.to_thread(self._commit, latest)
            except Exception as exc:  # noqa: BLE001 - every waiter learns of it (its batch is not acked)
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                for table, key in latest:  # reload from the file: it holds what is durable
                    (self._lost if table == "lost" else self._cache[table]).pop(key, None)
                continue
            for *_, future in batch:
                if not future.done():
                    future.set_result(None)

    def _commit(self, latest: dict[tuple[str, tuple[str, str]], list]) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for (table, (agent, spool)), rows in latest.items():
                conn.execute(f"DELETE FROM {table} WHERE agent = ? AND spool = ?", (agent, spool))
                if table == "lost":
                    conn.executemany("INSERT INTO lost (agent, spool, first, last, reason) VALUES (?, ?, ?, ?, ?)",
                                     [(agent, spool, a, b, reason) for a, b, reason in rows])
                else:
                    conn.executemany(f"INSERT INTO {table} (agent, spool, first, last) VALUES (?, ?, ?, ?)",
                                     [(agent, spool, a, b) for a, b in rows])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


__all__ = ["Acks", "MAX_REPORTED", "merge", "size", "subtract"]
