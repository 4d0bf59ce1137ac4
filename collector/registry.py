"""The fleet registry: one row per agent, persisted in SQLite.

Per agent: province, commune, agent, hostname, version, config version, enrolled, last seen, state
(`running`/`stopping`), stopped cleanly, clock skew, spool depth, dropped, egress address, and what the agent
says of its own health: `health` (`ok`/`degraded`), its tasks (JSON text: state, restarts, last error per task),
task restarts, measurements it lost, free disk.

Every request updates the row in memory; `flush()` (every few seconds and at shutdown) writes the changed rows
in one transaction, so a busy collector does not fsync per request. Each row is written on its own inside it:
a row the file cannot take (a value SQLite cannot bind — validation should have refused it earlier) is refused
on its own, logged, counted (`refused`) and put back to what the file holds, and never stops the other rows, nor
the next flushes, nor a clean shutdown. `stopped_cleanly` is 1 after a `stopping` heartbeat and 0 again at the
agent's next request: a silent agent with 1 is a PC switched off, not a commune gone dark.

The table and its migrations (an older file gains the later columns at start) are collector.db's.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from typing import Any, Mapping

from .auth import Identity
from .db import REGISTRY_ADDED as ADDED, migrate as _migrate, transaction

log = logging.getLogger(__name__)

COLUMNS = ("province", "commune", "agent", "hostname", "version", "config_version", "enrolled_ms", "last_seen_ms",
           "state", "stopped_cleanly", "clock_skew_ms", "spool_rows", "dropped_total", "egress", "health", "tasks",
           "task_restarts_total", "lost_total", "disk_free_bytes")
# The wire's "agent" block (checked by collector.validate.check_agent) → registry columns.
_FROM_WIRE = {"clock_offset_ms": "clock_skew_ms", "spool_rows": "spool_rows", "dropped_total": "dropped_total",
              "version": "version", "config_version": "config_version", "health": "health",
              "task_restarts_total": "task_restarts_total", "lost_total": "lost_total",
              "disk_free_bytes": "disk_free_bytes"}
# Errors that belong to one row's values, not to the file: that row is refused, the others written.
_ROW_ERRORS = (UnicodeEncodeError, OverflowError, TypeError, ValueError, sqlite3.InterfaceError,
               sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the state file's schema up to date (collector.db.migrate); return the version it had."""
    return _migrate(conn)


class Registry:
    """The agents table, with changed rows buffered until `flush()`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        _migrate(conn)
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        for row in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM agents"):
            record = dict(zip(COLUMNS, row))
            self._rows[(record["commune"], record["agent"])] = record
        self._dirty: set[tuple[str, str]] = set()
        self.refused = 0  # rows the file could not take (each logged)

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
        """Note a request from the agent with its checked `agent` block; `state` is `running` or `stopping`."""
        row = self._row(who)
        row.update(last_seen_ms=int(time.time() * 1000), state=state, egress=egress,
                   stopped_cleanly=1 if state == "stopping" else 0)
        info = info or {}
        for key, column in _FROM_WIRE.items():
            if key in info:
                row[column] = info[key]
        if "tasks" in info:
            row["tasks"] = json.dumps(info["tasks"], sort_keys=True)

    def agents(self) -> list[dict[str, Any]]:
        """Return every agent's row, by commune and agent (`tasks` decoded)."""
        out = []
        for key in sorted(self._rows):
            row = dict(self._rows[key])
            try:
                row["tasks"] = json.loads(row["tasks"]) if row["tasks"] else None
            except ValueError:  # a hand-edited file
                row["tasks"] = None
            out.append(row)
        return out

    def __len__(self) -> int:
        return len(self._rows)

    def degraded(self) -> int:
        """Return how many agents last said their health is `degraded`."""
        return sum(1 for row in self._rows.values() if row.get("health") == "degraded")

    def flush(self) -> int:
        """Write the changed rows (each on its own); return how many were written."""
        dirty, self._dirty = self._dirty, set()
        if not dirty:
            return 0
        sql = f"INSERT OR REPLACE INTO agents ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
        written, refused = 0, []
        try:
            with transaction(self.conn) as conn:
                for key in sorted(dirty):
                    try:  # a failing statement leaves the transaction as it was: the other rows go on
                        conn.execute(sql, tuple(self._rows[key][c] for c in COLUMNS))
                        written += 1
                    except _ROW_ERRORS as exc:
                        refused.append((key, exc))
        except BaseException:  # the file itself failed (disk full, I/O): keep every row dirty for the next flush
            self._dirty |= dirty
            raise
        for key, error in refused:
            self.refused += 1
            log.error("fleet registry: the row of %s/%s cannot be stored (%s: %s); kept as it was",
                      key[0], key[1], type(error).__name__, error)
            self._restore(key)
        return written

    def _restore(self, key: tuple[str, str]) -> None:
        """Put a refused row back to what the file holds (or forget it)."""
        row = self.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM agents WHERE commune = ? AND agent = ?",
                                key).fetchone()
        if row is None:
            self._rows.pop(key, None)
        else:
            self._rows[key] = dict(zip(COLUMNS, row))


__all__ = ["ADDED", "COLUMNS", "Registry", "migrate"]
