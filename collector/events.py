"""The agents' events (a clean stop, a start; line failovers, traps and drills to come), kept in the state file.

VictoriaMetrics keeps numbers, not text, so an event's text and attributes live here, one row per
(commune, agent, spool, seq): a batch sent again after a lost answer adds nothing (`INSERT OR IGNORE`), exactly
like its measurements, which VictoriaMetrics deduplicates. The numeric `event_count` series the batch writes to
VictoriaMetrics (collector.decode.event_line) lets dashboards annotate; this table says what happened.

`add()` runs inside the ingest's acknowledgement lock, after the database write and before the range is
acknowledged: an event is acknowledged only once it is stored here. Rows older than `retention` are deleted by
`prune()` (hourly, by collector.app).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from .auth import Identity
from .db import migrate, transaction
from .validate import EventIn

MAX_QUERY = 1000  # rows one query returns at most


@dataclass
class EventStore:
    """The events table: add (idempotent), query, prune."""

    conn: sqlite3.Connection
    retention_s: float = 365 * 86_400.0
    _lock: threading.Lock = field(default_factory=threading.Lock)  # add() runs in a worker thread

    def __post_init__(self) -> None:
        migrate(self.conn)

    def add(self, who: Identity, spool: str, events: Iterable[EventIn]) -> int:
        """Store the events (ignoring those already stored); return how many were new."""
        now = int(time.time() * 1000)
        rows = [(who.commune, who.agent, spool, e.seq, e.kind, e.time, json.dumps(e.tags, ensure_ascii=False),
                 e.text, json.dumps(e.attributes, ensure_ascii=False), now) for e in events]
        if not rows:
            return 0
        with self._lock, transaction(self.conn):
            before = self.conn.total_changes
            self.conn.executemany(
                "INSERT OR IGNORE INTO events (commune, agent, spool, seq, kind, time_ms, tags, text, attributes, "
                "received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            return self.conn.total_changes - before

    def query(self, commune: str | None = None, kind: str | None = None, since_ms: int = 0,
              limit: int = 100) -> list[dict[str, Any]]:
        """Return the newest events first (of one commune and kind when given), at most `limit` (≤ MAX_QUERY)."""
        where, args = ["time_ms >= ?"], [since_ms]  # type: list[str], list[Any]
        if commune:
            where.append("commune = ?")
            args.append(commune)
        if kind:
            where.append("kind = ?")
            args.append(kind)
        with self._lock:
            rows = self.conn.execute(
                f"SELECT commune, agent, kind, time_ms, tags, text, attributes FROM events WHERE {' AND '.join(where)} "
                "ORDER BY time_ms DESC, id DESC LIMIT ?", [*args, max(1, min(limit, MAX_QUERY))]).fetchall()
        return [{"commune": c, "agent": a, "kind": k, "time_ms": t, "tags": json.loads(tags), "text": text,
                 "attributes": json.loads(attributes)} for c, a, k, t, tags, text, attributes in rows]

    def prune(self, now_ms: int | None = None) -> int:
        """Delete the events older than the retention; return how many."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        with self._lock, transaction(self.conn):
            return self.conn.execute("DELETE FROM events WHERE time_ms < ?",
                                     (now_ms - int(self.retention_s * 1000),)).rowcount


__all__ = ["EventStore", "MAX_QUERY"]
