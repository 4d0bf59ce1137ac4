"""The collector's SQLite state file: one connection per user, WAL, `synchronous=FULL` (an acknowledged range
must survive a power cut, or a resent batch would be written twice), a schema version and its migrations, and
the one transaction helper every module uses.

The schema version is `PRAGMA user_version`. `MIGRATIONS[n - 1]` takes a file from version n - 1 to n, in one
`BEGIN IMMEDIATE` transaction together with the new version number, so a file is never half migrated and two
processes opening it at once (the collector and `cmon collector token`) migrate it once. A file written by a
collector before versions existed reads 0; migration 1 creates what is missing of today's tables and adds the
fleet registry's later columns, keeping every row. A file with a newer version than `SCHEMA_VERSION` is refused
(`SchemaError`): this code would not know what the newer one wrote.

| version | what it adds |
|---|---|
| 1 | credentials and tokens (collector.auth); acked, evicted, lost, spools (collector.acks); agents (collector.registry) |
| 2 | events (empty: the agents' events, kept here with a retention — VictoriaMetrics keeps no text) |
| 3 | events by commune, one row per (agent, spool, seq) (collector.events); the latest `result`/`detail` of each series (collector.latest) |
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

AUTH_TABLES = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL, province TEXT NOT NULL, commune TEXT NOT NULL,
    created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, used_ms INTEGER, used_by TEXT);
CREATE TABLE IF NOT EXISTS credentials (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL, province TEXT NOT NULL, commune TEXT NOT NULL, agent TEXT NOT NULL,
    created_ms INTEGER NOT NULL, revoked_ms INTEGER);
CREATE INDEX IF NOT EXISTS credentials_agent ON credentials (commune, agent);
"""
ACKS_TABLES = """
CREATE TABLE IF NOT EXISTS acked (agent TEXT NOT NULL, spool TEXT NOT NULL, first INTEGER NOT NULL,
    last INTEGER NOT NULL, PRIMARY KEY (agent, spool, first));
CREATE TABLE IF NOT EXISTS evicted (agent TEXT NOT NULL, spool TEXT NOT NULL, first INTEGER NOT NULL,
    last INTEGER NOT NULL, PRIMARY KEY (agent, spool, first));
CREATE TABLE IF NOT EXISTS lost (agent TEXT NOT NULL, spool TEXT NOT NULL, first INTEGER NOT NULL,
    last INTEGER NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (agent, spool, reason, first));
CREATE TABLE IF NOT EXISTS spools (agent TEXT NOT NULL, spool TEXT NOT NULL, last_ms INTEGER NOT NULL,
    PRIMARY KEY (agent, spool));
"""
REGISTRY_TABLES = """
CREATE TABLE IF NOT EXISTS agents (
    province TEXT NOT NULL, commune TEXT NOT NULL, agent TEXT NOT NULL, hostname TEXT, version TEXT,
    config_version TEXT, enrolled_ms INTEGER, last_seen_ms INTEGER, state TEXT, stopped_cleanly INTEGER,
    clock_skew_ms REAL, spool_rows REAL, dropped_total REAL, egress TEXT, health TEXT, tasks TEXT,
    task_restarts_total INTEGER, lost_total INTEGER, disk_free_bytes INTEGER, PRIMARY KEY (commune, agent));
"""
# Columns the agents table gained by ALTER TABLE before there were versions: a version-0 file may lack them.
REGISTRY_ADDED = {"health": "TEXT", "tasks": "TEXT", "task_restarts_total": "INTEGER", "lost_total": "INTEGER",
                  "disk_free_bytes": "INTEGER"}
EVENTS_TABLES = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY, agent TEXT NOT NULL, spool TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
    time_ms INTEGER NOT NULL, tags TEXT NOT NULL DEFAULT '{}', text TEXT, attributes TEXT NOT NULL DEFAULT '{}');
CREATE INDEX events_time ON events (time_ms);
CREATE INDEX events_spool ON events (agent, spool, seq);
"""


EVENTS_V3 = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY, commune TEXT NOT NULL, agent TEXT NOT NULL, spool TEXT NOT NULL, seq INTEGER NOT NULL,
    kind TEXT NOT NULL, time_ms INTEGER NOT NULL, tags TEXT NOT NULL DEFAULT '{}', text TEXT NOT NULL DEFAULT '',
    attributes TEXT NOT NULL DEFAULT '{}', received_ms INTEGER NOT NULL);
CREATE UNIQUE INDEX events_seq ON events (commune, agent, spool, seq);
CREATE INDEX events_time ON events (time_ms);
CREATE INDEX events_commune ON events (commune, time_ms);
"""
LATEST_TABLES = """
CREATE TABLE latest (
    commune TEXT NOT NULL, agent TEXT NOT NULL, series TEXT NOT NULL, time_ms INTEGER NOT NULL, result TEXT,
    detail TEXT, PRIMARY KEY (commune, agent, series));
"""


class SchemaError(Exception):
    """The state file cannot be used by this code (written by a newer collector)."""


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _v1(conn: sqlite3.Connection) -> None:
    """Today's tables (created if missing: a version-0 file already has some), the registry's later columns."""
    for statement in _statements(AUTH_TABLES + ACKS_TABLES + REGISTRY_TABLES):
        conn.execute(statement)
    present = {row[1] for row in conn.execute("PRAGMA table_info(agents)")}
    added = [name for name in REGISTRY_ADDED if name not in present]
    for name in added:
        conn.execute(f"ALTER TABLE agents ADD COLUMN {name} {REGISTRY_ADDED[name]}")
    if added:
        log.warning("fleet registry: added columns %s to the state file", ", ".join(added))


def _v2(conn: sqlite3.Connection) -> None:
    """The events table."""
    for statement in _statements(EVENTS_TABLES):
        conn.execute(statement)


def _v3(conn: sqlite3.Connection) -> None:
    """Events with the commune and a unique seq per spool (version 2's table was never written); the latest
    reason of each series."""
    conn.execute("DROP TABLE IF EXISTS events")
    for statement in _statements(EVENTS_V3 + LATEST_TABLES):
        conn.execute(statement)


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2, _v3)
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating) the state file in autocommit mode (transactions: `transaction()`).

    The schema is brought up to date by `migrate()`, which collector.app calls once at start and Auth, Acks and
    Registry call on the connection they are given (a no-op when it is current)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """Return the file's schema version (0: written before versions, or empty)."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _file(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA database_list").fetchone()
    return row[2] or ":memory:"


def _check(conn: sqlite3.Connection, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"the state file {_file(conn)} has schema version {version}, newer than this collector knows "
            f"({SCHEMA_VERSION}): it was written by a newer collector; run that version, or restore a copy of the "
            "file made before the upgrade")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the file to `SCHEMA_VERSION` (each step in its own transaction); return the version it had.

    Raise SchemaError for a file newer than this code."""
    before = schema_version(conn)
    _check(conn, before)
    if before == SCHEMA_VERSION:
        return before
    for target in range(before + 1, SCHEMA_VERSION + 1):
        with transaction(conn):
            current = schema_version(conn)  # another process may have migrated it meanwhile
            _check(conn, current)
            if current >= target:
                continue
            MIGRATIONS[target - 1](conn)
            conn.execute(f"PRAGMA user_version = {target}")
    if before:
        log.warning("state file %s: schema version %d migrated to %d", _file(conn), before, SCHEMA_VERSION)
    return before


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block in one `BEGIN IMMEDIATE` transaction: COMMIT at its end, ROLLBACK if it raises.

    IMMEDIATE takes the write lock at once (waiting up to the busy timeout), so a transaction never fails half
    way on a lock another writer holds. A statement failing inside the block leaves the transaction open (the
    caller may catch it and go on); an error SQLite rolled back by itself (disk full) is re-raised as it was."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SchemaError", "connect", "migrate", "schema_version", "transaction"]
