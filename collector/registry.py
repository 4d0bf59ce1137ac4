"""The fleet registry: one row per agent (province, commune, agent, version, config version, last seen, state,
stopped cleanly, clock skew, spool depth, dropped, egress address), persisted in SQLite.

Every request updates the row in memory; `flush()` (every few seconds and at shutdown) writes the changed rows
in one transaction, so a busy collector does not fsync per request. `stopped_cleanly` is 1 after a `stopping`
heartbeat and 0 again at the agent's next request: a silent agent with 1 is a PC switched off, not a commune
gone dark.
"""

from __future__ import annotations

import math
import sqlite3
import time
from typing import Any, Mapping

from .auth import Identity

COLUMNS = ("province", "commune", "agent", "hostname", "version", "config_version", "enrolled_ms", "last_seen_ms",
           "state", "stopped_cleanly", "clock_skew_ms", "spool_rows", "dropped_total", "egress")
SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    province TEXT NOT NULL, commune TEXT NOT NULL, agent TEXT NOT NULL, hostname TEXT, version TEXT,
    config_version TEXT, enrolled_ms INTEGER, last_seen_ms INTEGER, state TEXT, stopped_cleanly INTEGER,
    clock_skew_ms REAL, spool_rows REAL, dropped_total REAL, egress TEXT, PRIMARY KEY (commune, agent));
"""
# The wire's "agent" block → registry columns (numbers); strings are cut to a sane length.
_NUMBERS = {"clock_offset_ms": "clock_skew_ms", "spool_rows": "spool_rows", "dropped_total": "dropped_total"}
_STRINGS = {"version": "version", "config_version": "config_version"}


class Registry:
    """The agents table, with changed rows buffered until `flush()`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.executescript(SCHEMA)
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        for row in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM agents"):
            record = dict(zip(COLUMNS, row))
            self._rows[(record["commune"], record["agent"])] = record
        self._dirty: set[tuple[str, str]] = set()

    def _row(self, who: Identity) -> dict[str, Any]:
        key = (who.commune, who.agent)
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = {c: None for c in COLUMNS} | {
                "province": who.province, "commune": who.commune, "agent": who.agent}
        self._dirty.add(key)
        return row

    def enrolled(self, who: Identity, hostname: str | None, egress: str | None) -> None:
        """Note a (re-)enrollment."""
        now = int(time.time() * 1000)
        self._row(who).update(hostname=(hostname or "")[:200] or None, enrolled_ms=now, egress=egress)

    def seen(self, who: Identity, info: Mapping[str, Any] | None, egress: str | None, state: str = "running") -> None:
        """Note a request from the agent with its wire `agent` block; `state` is `running` or `stopping`."""
        row = self._row(who)
        row.update(last_seen_ms=int(time.time() * 1000), state=state, egress=egress,
                   stopped_cleanly=1 if state == "stopping" else 0)
        for key, column in _NUMBERS.items():
            value = (info or {}).get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                row[column] = float(value)
        for key, column in _STRINGS.items():
            value = (info or {}).get(key)
            if isinstance(value, str):
                row[column] = value[:100]

    def agents(self) -> list[dict[str, Any]]:
        """Return every agent's row, by commune and agent."""
        return [dict(self._rows[key]) for key in sorted(self._rows)]

    def flush(self) -> int:
        """Write the changed rows; return how many."""
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return 0
        rows = [tuple(self._rows[key][c] for c in COLUMNS) for key in dirty]
        marks = ", ".join("?" for _ in COLUMNS)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany(f"INSERT OR REPLACE INTO agents ({', '.join(COLUMNS)}) VALUES ({marks})", rows)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            self._dirty |= dirty
            raise
        return len(rows)


__all__ = ["Registry"]
