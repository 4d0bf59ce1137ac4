"""The collector's state file (collector.db): a fresh file, a file written before schema versions existed
migrated with its rows intact, a file from a newer collector refused, the transaction helper; and `/metrics`
through prometheus_client keeping every name it had."""

from __future__ import annotations

import asyncio
from pathlib import Path
import re
import sqlite3

import pytest

from collector import db
from collector.acks import Acks
from collector.auth import Auth, Identity
from collector.db import SCHEMA_VERSION, SchemaError, connect, migrate, schema_version, transaction
from collector.metrics import Metrics
from collector.registry import COLUMNS, Registry

# The state file as the collector wrote it before schema versions (user_version 0), copied from collector/auth.py,
# acks.py and registry.py of that code; the agents table is the older one, before health, tasks,
# task_restarts_total, lost_total and disk_free_bytes were added by ALTER TABLE.
UNVERSIONED = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL, province TEXT NOT NULL, commune TEXT NOT NULL,
    created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, used_ms INTEGER, used_by TEXT);
CREATE TABLE IF NOT EXISTS credentials (
    id TEXT PRIMARY KEY, hash TEXT NOT NULL, province TEXT NOT NULL, commune TEXT NOT NULL, agent TEXT NOT NULL,
    created_ms INTEGER NOT NULL, revoked_ms INTEGER);
CREATE INDEX IF NOT EXISTS credentials_agent ON credentials (commune, agent);
CREATE TABLE IF NOT EXISTS acked (agent TEXT NOT NULL, spool TEXT NOT NULL, first INTEGER NOT NULL,
    last INTEGER NOT NULL, PRIMARY KEY (agent, spool, first));
CREATE TABLE IF NOT EXISTS evicted (agent TEXT NOT NULL, spool TEXT NOT NULL, first INTEGER NOT NULL,
    last INTEGER NOT NULL, PRIMARY KEY (agent, spool, first));
CREATE TABLE IF NOT EXISTS lost (agent TEXT NOT NULL, spool TEXT NOT NULL, first INTEGER NOT NULL,
    last INTEGER NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (agent, spool, reason, first));
CREATE TABLE IF NOT EXISTS spools (agent TEXT NOT NULL, spool TEXT NOT NULL, last_ms INTEGER NOT NULL,
    PRIMARY KEY (agent, spool));
CREATE TABLE agents (province TEXT NOT NULL, commune TEXT NOT NULL, agent TEXT NOT NULL, hostname TEXT,
    version TEXT, config_version TEXT, enrolled_ms INTEGER, last_seen_ms INTEGER, state TEXT,
    stopped_cleanly INTEGER, clock_skew_ms REAL, spool_rows REAL, dropped_total REAL, egress TEXT,
    PRIMARY KEY (commune, agent));
"""
TABLES = {"tokens", "credentials", "acked", "evicted", "lost", "spools", "agents", "events", "latest"}
EVENT_COLUMNS = ["id", "commune", "agent", "spool", "seq", "kind", "time_ms", "tags", "text", "attributes",
                 "received_ms"]


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_fresh_file_gets_every_table_at_the_current_version(tmp_path) -> None:
    conn = connect(tmp_path / "collector.sqlite")
    assert schema_version(conn) == 0
    assert migrate(conn) == 0  # the version it had
    assert schema_version(conn) == SCHEMA_VERSION == 3
    assert _tables(conn) == TABLES
    assert [r[1] for r in conn.execute("PRAGMA table_info(agents)")] == list(COLUMNS)
    assert [r[1] for r in conn.execute("PRAGMA table_info(events)")] == EVENT_COLUMNS
    assert migrate(conn) == SCHEMA_VERSION  # a second time: nothing to do
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_unversioned_file_migrates_with_its_rows_intact(tmp_path) -> None:
    path = tmp_path / "collector.sqlite"
    old = connect(path)
    old.executescript(UNVERSIONED)
    credential, token, who = _old_rows(old)
    old.close()

    conn = connect(path)
    auth, acks, registry = Auth(conn, "ha-tinh"), Acks(conn), Registry(conn)  # each migrates; once is done
    assert schema_version(conn) == SCHEMA_VERSION
    assert _tables(conn) == TABLES
    assert auth.authenticate(f"Bearer {credential}") == who  # the credential still works
    with pytest.raises(Exception, match="used or expired"):  # the used token stays used
        auth.enroll(token, "other-01")
    assert acks.ranges("dong-loc/quay-01", "s1") == [(1, 40), (50, 60)]
    assert acks.ranges("dong-loc/quay-01", "s1", "evicted") == [(41, 45)]
    assert acks.lost("dong-loc/quay-01", "s1") == [(46, 49, "unreadable")]
    assert acks.gaps("dong-loc/quay-01", "s1") == []
    [row] = registry.agents()
    assert (row["agent"], row["version"], row["hostname"], row["health"]) == ("quay-01", "0.0.9", "pc-1", None)
    registry.seen(who, {"health": "degraded", "disk_free_bytes": 5}, None)  # the added columns take values
    assert registry.flush() == 1
    again = Registry(connect(path))
    assert again.agents()[0]["health"] == "degraded" and again.agents()[0]["version"] == "0.0.9"


def _old_rows(conn: sqlite3.Connection) -> tuple[str, str, Identity]:
    """Fill an unversioned file as the old code did (SQL only: the new classes would migrate it first); return
    a live credential, a used token and whose they are."""
    import collector.auth as auth_module

    ident, secret, credential = auth_module._new(auth_module.CREDENTIAL_KIND)
    tok_id, tok_secret, token = auth_module._new(auth_module.TOKEN_KIND)
    conn.execute("INSERT INTO tokens VALUES (?, ?, 'ha-tinh', 'dong-loc', 1, 9999999999999, 2, 'quay-01')",
                 (tok_id, auth_module._hash(tok_secret)))
    conn.execute("INSERT INTO credentials VALUES (?, ?, 'ha-tinh', 'dong-loc', 'quay-01', 2, NULL)",
                 (ident, auth_module._hash(secret)))
    conn.executemany("INSERT INTO acked VALUES ('dong-loc/quay-01', 's1', ?, ?)", [(1, 40), (50, 60)])
    conn.execute("INSERT INTO evicted VALUES ('dong-loc/quay-01', 's1', 41, 45)")
    conn.execute("INSERT INTO lost VALUES ('dong-loc/quay-01', 's1', 46, 49, 'unreadable')")
    conn.execute("INSERT INTO spools VALUES ('dong-loc/quay-01', 's1', 1000)")
    conn.execute("INSERT INTO agents (province, commune, agent, hostname, version) "
                 "VALUES ('ha-tinh', 'dong-loc', 'quay-01', 'pc-1', '0.0.9')")
    return credential, token, Identity("ha-tinh", "dong-loc", "quay-01")


def test_a_version_1_file_gains_the_events_table(tmp_path) -> None:
    conn = connect(tmp_path / "collector.sqlite")
    with transaction(conn):
        db.MIGRATIONS[0](conn)
        conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO acked VALUES ('a/b', 's', 1, 9)")
    assert "events" not in _tables(conn)
    assert migrate(conn) == 1
    assert schema_version(conn) == SCHEMA_VERSION and {"events", "latest"} <= _tables(conn)
    assert conn.execute("SELECT * FROM acked").fetchall() == [("a/b", "s", 1, 9)]
    assert [r[1] for r in conn.execute("PRAGMA table_info(events)")] == EVENT_COLUMNS


def test_a_file_from_a_newer_collector_is_refused(tmp_path) -> None:
    path = tmp_path / "collector.sqlite"
    conn = connect(path)
    migrate(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for use in (migrate, lambda c: Auth(c, "ha-tinh"), Acks, Registry):
        with pytest.raises(SchemaError) as refused:
            use(conn)
        assert str(refused.value) == (
            f"the state file {path} has schema version {SCHEMA_VERSION + 1}, newer than this collector knows "
            f"({SCHEMA_VERSION}): it was written by a newer collector; run that version, or restore a copy of the "
            "file made before the upgrade")
    assert schema_version(conn) == SCHEMA_VERSION + 1  # untouched


def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path, monkeypatch) -> None:
    conn = connect(tmp_path / "collector.sqlite")

    def broken(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE events (x)")
        raise RuntimeError("half way")

    monkeypatch.setattr(db, "MIGRATIONS", (db.MIGRATIONS[0], broken))
    with pytest.raises(RuntimeError, match="half way"):
        migrate(conn)
    assert schema_version(conn) == 1 and "events" not in _tables(conn)  # version 1 committed, 2 rolled back
    monkeypatch.undo()
    assert migrate(conn) == 1 and schema_version(conn) == SCHEMA_VERSION


def test_transaction_commits_and_rolls_back(tmp_path) -> None:
    conn = connect(tmp_path / "collector.sqlite")
    migrate(conn)
    with transaction(conn):
        conn.execute("INSERT INTO acked VALUES ('a/b', 's', 1, 1)")
    with pytest.raises(ZeroDivisionError), transaction(conn):
        conn.execute("INSERT INTO acked VALUES ('a/b', 's', 2, 2)")
        raise ZeroDivisionError  # any error inside the block
    assert not conn.in_transaction
    with transaction(conn):  # a failing statement caught inside: the transaction goes on
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO acked VALUES ('a/b', 's', 1, 1)")
        conn.execute("INSERT INTO acked VALUES ('a/b', 's', 3, 3)")
    assert conn.execute("SELECT first FROM acked ORDER BY first").fetchall() == [(1,), (3,)]
    other = connect(tmp_path / "collector.sqlite")  # the commits are durable for another connection
    assert other.execute("SELECT count(*) FROM acked").fetchone()[0] == 2


def test_transaction_takes_the_write_lock_at_begin(tmp_path) -> None:
    conn = connect(tmp_path / "collector.sqlite")
    migrate(conn)
    other = sqlite3.connect(tmp_path / "collector.sqlite", isolation_level=None, timeout=0)
    with transaction(conn):
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")


def test_a_failed_acks_commit_rolls_back_and_reloads(tmp_path) -> None:
    conn = connect(tmp_path / "collector.sqlite")
    acks = Acks(conn)
    asyncio.run(acks.record("a/b", "s", 1, 10))
    conn.execute("CREATE TRIGGER no_more BEFORE INSERT ON acked WHEN new.first > 10 BEGIN SELECT raise(ABORT, 'x'); END")

    async def refused() -> None:
        with pytest.raises(sqlite3.IntegrityError):
            await acks.record("a/b", "s", 20, 30)

    asyncio.run(refused())
    assert not conn.in_transaction
    assert acks.ranges("a/b", "s") == [(1, 10)]  # the cache reloaded from the file


# Every name the hand-written exposition had (docs/metrics.md, docs/collector.md, tests and dashboards use them).
DOCS_METRICS = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"
NAMES = ["cmon_collector_requests_total", "cmon_collector_lines_written_total", "cmon_collector_samples_written_total",
         "cmon_collector_lines_skipped_total", "cmon_collector_batches_refused_total",
         "cmon_collector_db_errors_total", "cmon_collector_write_seconds", "cmon_collector_shed_total",
         "cmon_collector_ingest_inflight", "cmon_collector_ingest_waiting", "cmon_collector_ingest_service_seconds",
         "cmon_collector_agent_limited_total", "cmon_collector_body_timeouts_total",
         "cmon_collector_enroll_limited_total", "cmon_collector_evicted_seqs_total", "cmon_collector_lost_seqs_total",
         "cmon_collector_registry_rows_refused_total", "cmon_collector_agents", "cmon_collector_agents_degraded"]


def test_metrics_keep_their_names_labels_and_types() -> None:
    metrics = Metrics()
    metrics.request("/api/v1/ingest", 200)
    metrics.request("/api/v1/ingest", 200)
    metrics.written(3, 9, 0.02)
    metrics.batches_refused_total.labels("ranges").inc()
    metrics.shed_total.inc()
    text = metrics.render(7, 2, 1, 0.5, degraded=1, registry_refused=4).decode()
    for name in NAMES:
        kind = "histogram" if name.endswith("_seconds") and "service" not in name else (
            "counter" if name.endswith("_total") else "gauge")
        assert f"# TYPE {name} {kind}" in text, name
    for line in ('cmon_collector_requests_total{endpoint="/api/v1/ingest",status="200"} 2.0',
                 "cmon_collector_lines_written_total 3.0", "cmon_collector_samples_written_total 9.0",
                 'cmon_collector_batches_refused_total{reason="ranges"} 1.0', "cmon_collector_shed_total 1.0",
                 'cmon_collector_write_seconds_bucket{le="0.01"} 0.0',
                 'cmon_collector_write_seconds_bucket{le="0.025"} 1.0',
                 'cmon_collector_write_seconds_bucket{le="+Inf"} 1.0', "cmon_collector_write_seconds_count 1.0",
                 'cmon_collector_enroll_limited_total{reason="busy"} 0.0',
                 'cmon_collector_enroll_limited_total{reason="failures"} 0.0',
                 "cmon_collector_ingest_inflight 2.0", "cmon_collector_ingest_waiting 1.0",
                 "cmon_collector_ingest_service_seconds 0.5", "cmon_collector_agents 7.0",
                 "cmon_collector_agents_degraded 1.0", "cmon_collector_registry_rows_refused_total 4.0"):
        assert line in text.splitlines(), line
    assert metrics.shed == 1
    assert Metrics().value("cmon_collector_shed_total") == 0  # one registry per app: nothing shared


def test_every_metric_the_collector_exposes_is_in_the_metrics_table() -> None:
    """docs/metrics.md's "Written by the collector" table lists every family /metrics renders."""
    text = Metrics().render(0, 0, 0, 0.0, degraded=0, registry_refused=0).decode()
    exposed = {name for name in re.findall(r"^# TYPE (cmon_collector_\w+) ", text, re.M)
               if not name.endswith("_created")}  # prometheus_client's start-time companions
    documented = set(re.findall(r"^\| `(cmon_collector_\w+)` \|", DOCS_METRICS.read_text(encoding="utf-8"), re.M))
    assert exposed >= set(NAMES)
    assert exposed - documented == set(), "add them to docs/metrics.md"


async def test_the_collector_does_not_start_on_a_newer_state_file(tmp_path) -> None:
    from collector_helpers import collector_client, make_config

    config = make_config(tmp_path, "http://127.0.0.1:9")  # never reached: the state file stops it first
    conn = connect(config.db_path())
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaError, match="newer than this collector knows"):
        async with collector_client(config):
            pass


async def test_the_collector_migrates_at_start_and_serves_its_metrics(tmp_path) -> None:
    from collector_helpers import collector_client, make_config

    config = make_config(tmp_path, "http://127.0.0.1:9")
    conn = connect(config.db_path())
    conn.executescript(UNVERSIONED)
    async with collector_client(config) as client:
        assert schema_version(conn) == SCHEMA_VERSION
        async with client.get("/metrics") as response:
            assert response.status == 200 and response.content_type == "text/plain"
            text = await response.text()
    assert "cmon_collector_agents 0.0" in text.splitlines()
