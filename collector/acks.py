"""Acknowledged and evicted sequence ranges per (agent, spool), merged and durably recorded.

The collector writes a batch to the database, then `record()`s its range, then answers 200: a range is recorded
only once the database accepted it, and a resent batch finds its range here and is skipped (idempotent). If the
collector dies between the database's answer and the commit, the resend is written again and VictoriaMetrics'
`-dedup.minScrapeInterval=1ms` keeps one sample per (series, timestamp). Commits are grouped: every record
waiting while a commit runs goes into the next one (one fsync for many batches under load). The cache assumes
one collector process per state file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict

Range = tuple[int, int]

SCHEMA = """
CREATE TABLE IF NOT EXISTS acked (agent TEXT NOT NULL, spool TEXT NOT NULL, first INTEGER NOT NULL,
    last INTEGER NOT NULL, PRIMARY KEY (agent, spool, first));
CREATE TABLE IF NOT EXISTS evicted (agent TEXT NOT NULL, spool TEXT NOT NULL, first INTEGER NOT NULL,
    last INTEGER NOT NULL, PRIMARY KEY (agent, spool, first));
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
    """The ranges table, cached in memory; `record()` is a grouped, durable commit."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.executescript(SCHEMA)
        self._cache: dict[str, dict[tuple[str, str], list[Range]]] = {"acked": {}, "evicted": {}}
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._pending: list[tuple[str, tuple[str, str], list[Range], asyncio.Future]] = []
        self._committing: asyncio.Task | None = None

    def lock(self, agent: str, spool: str) -> asyncio.Lock:
        """Return the lock serialising check → write → record for one spool (a retry racing its original)."""
        return self._locks[(agent, spool)]

    def ranges(self, agent: str, spool: str, table: str = "acked") -> list[Range]:
        """Return the merged ranges recorded for one spool."""
        cache = self._cache[table]
        key = (agent, spool)
        if key not in cache:
            rows = self.conn.execute(f"SELECT first, last FROM {table} WHERE agent = ? AND spool = ?", key)
            cache[key] = merge([tuple(r) for r in rows])
        return cache[key]

    def missing(self, agent: str, spool: str, first: int, last: int) -> list[Range]:
        """Return the parts of [first, last] not yet acknowledged."""
        return subtract(first, last, self.ranges(agent, spool))

    async def record(self, agent: str, spool: str, first: int, last: int, *, evicted: list[Range] = ()) -> None:
        """Durably add [first, last] to the acknowledged ranges (and `evicted` to the evicted ones)."""
        key = (agent, spool)
        loop = asyncio.get_running_loop()
        jobs = [("acked", merge(self.ranges(agent, spool) + [(first, last)]))] if last >= first else []
        if evicted:
            jobs.append(("evicted", merge(self.ranges(agent, spool, "evicted") + [tuple(r) for r in evicted])))
        futures = []
        for table, merged in jobs:
            self._cache[table][key] = merged
            futures.append(loop.create_future())
            self._pending.append((table, key, merged, futures[-1]))
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_loop())
        await asyncio.gather(*futures)

    def gaps(self, agent: str, spool: str) -> list[Range]:
        """Return the seqs below the highest acknowledged one that are neither acknowledged nor evicted (loss)."""
        done = merge(self.ranges(agent, spool) + self.ranges(agent, spool, "evicted"))
        return subtract(1, done[-1][1], done) if done else []

    async def _commit_loop(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            latest = {(table, key): merged for table, key, merged, _ in batch}  # a later merge covers earlier
            try:
                await asyncio.to_thread(self._commit, latest)
            except Exception as exc:  # noqa: BLE001 - every waiter learns of it (its batch is not acked)
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                for table, key in latest:
                    self._cache[table].pop(key, None)  # reload from the file: it holds what is durable
                continue
            for *_, future in batch:
                if not future.done():
                    future.set_result(None)

    def _commit(self, latest: dict[tuple[str, tuple[str, str]], list[Range]]) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for (table, (agent, spool)), merged in latest.items():
                conn.execute(f"DELETE FROM {table} WHERE agent = ? AND spool = ?", (agent, spool))
                conn.executemany(f"INSERT INTO {table} (agent, spool, first, last) VALUES (?, ?, ?, ?)",
                                 [(agent, spool, a, b) for a, b in merged])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


__all__ = ["Acks", "merge", "subtract"]
