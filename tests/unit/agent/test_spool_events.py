"""Events in the agent's queues (agent/spool.py on real SQLite files, agent/queue.py's MemoryQueue): one sequence
space with the measurements, types and contents kept, across a reopen; spool schema 1 migrated in place, a newer
schema moved aside with its rows; and a kill -9 while appending measurements and events loses no committed range."""

from __future__ import annotations

import logging
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.queue import MemoryQueue
from agent.spool import SCHEMA_VERSION, Spool
from core.event import Event
from core.measurement import Measurement

REPO = Path(__file__).resolve().parents[3]
IDENTITY = {"province": "ha-tinh", "commune": "dong-loc", "agent": "quay-01"}
T0 = 1_795_000_000_000


def probe(i: int, result: str = "ok") -> Measurement:
    return Measurement("probe", {"service": "dvc", "target": "dvc-web", "probe": "http", "line": "primary",
                                 **IDENTITY}, {"up": float(result == "ok"), "rtt_ms": 10.5 + i}, T0 + i * 1000,
                       result, "" if result == "ok" else "no answer within 10 s")


def stopped(i: int) -> Event:
    return Event("agent_stopped", IDENTITY, T0 + i * 1000,
                 "agent stopped cleanly after 42 s (a service stop or shutdown, not a failure)",
                 {"reason": "stop requested (service stop, shutdown, SIGTERM)", "uptime_s": 42.5})


def failover(i: int) -> Event:
    return Event("failover", {**IDENTITY, "line": "backup"}, T0 + i * 1000, "đường truyền chính mất: chuyển sang dự phòng",
                 {"from": "vnpt", "to": "viettel", "down_s": 3, "ratio": 0.25})


@pytest.fixture(params=["spool", "memory"])
def new_queue(request: pytest.FixtureRequest, tmp_path: Path):
    opened: list[Spool] = []

    def make() -> Spool | MemoryQueue:
        if request.param == "memory":
            return MemoryQueue()
        opened.append(Spool(tmp_path / f"q{len(opened)}.db"))
        return opened[-1]

    yield make
    for spool in opened:
        spool.close()


def test_measurements_and_events_share_one_sequence_space(new_queue) -> None:
    queue = new_queue()
    records = [probe(1), stopped(2), probe(3, "timeout")]
    assert queue.append(records) == range(1, 4)
    batch = queue.next_batch(10)
    assert (batch.first, batch.last) == (1, 3)
    assert [s for s, _ in batch.items] == [1, 2, 3]
    assert [type(r) for _, r in batch.items] == [Measurement, Event, Measurement]
    assert [r for _, r in batch.items] == records  # the Event equal to the one appended
    assert queue.append([failover(4)]) == range(4, 5)  # seqs go on across the types
    assert queue.append([probe(5)]) == range(5, 6)
    assert queue.ack(1, 3) == 3
    batch = queue.next_batch(10)
    assert [(s, r) for s, r in batch.items] == [(4, failover(4)), (5, probe(5))]
    assert batch.items[0][1].attributes == {"from": "vnpt", "to": "viettel", "down_s": 3.0, "ratio": 0.25}


def test_a_refused_event_is_quarantined_as_an_event(new_queue) -> None:
    queue = new_queue()
    queue.append([stopped(1), probe(2)])
    assert queue.quarantine(1, 2, "event kind 'agent_stopped' is not one of ...") == 2
    assert [(s, type(r)) for s, _, r in queue.quarantined()] == [(1, Event), (2, Measurement)]
    assert queue.quarantined()[0][2] == stopped(1)
    assert queue.next_batch(10) is None


def test_events_stay_in_the_spool_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    records = [probe(1), stopped(2), probe(3), failover(4), Event("drill", IDENTITY, T0)]
    assert spool.append(records) == range(1, 6)
    spool_id = spool.spool_id
    spool.close()
    again = Spool(path)
    try:
        assert again.spool_id == spool_id and again.depth() == 5
        batch = again.next_batch(10)
        assert [(s, r) for s, r in batch.items] == list(zip(range(1, 6), records))
        assert again.append([stopped(6)]) == range(6, 7)
        assert again.damaged() == [] and again.lost_total == 0
    finally:
        again.close()


def _set_schema(path: Path, version: int) -> None:
    with sqlite3.connect(path) as db:
        assert db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (version,)).rowcount == 1
    db.close()


def _schema(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0])
    finally:
        db.close()


def test_a_schema_1_spool_is_migrated_with_its_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    spool.append([probe(i) for i in range(1, 4)])  # what a schema-1 agent spooled: measurements
    spool_id = spool.spool_id
    spool.close()
    _set_schema(path, 1)

    caplog.set_level(logging.INFO, logger="agent.spool")
    again = Spool(path)
    try:
        assert _schema(path) == SCHEMA_VERSION == 2
        assert any(r.levelno == logging.INFO and "spool schema 1 migrated to 2" in r.getMessage()
                   for r in caplog.records), caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert again.spool_id == spool_id and list(tmp_path.glob("spool.db.*")) == []  # migrated in place, nothing set aside
        assert [(s, r) for s, r in again.next_batch(10).items] == [(i, probe(i)) for i in range(1, 4)]
        assert again.append([stopped(4)]) == range(4, 5)
    finally:
        again.close()
    caplog.clear()
    third = Spool(path)  # opened again: nothing more to migrate
    third.close()
    assert "migrated" not in caplog.text


def test_a_spool_from_a_newer_agent_is_moved_aside_intact(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    spool.append([probe(1), stopped(2), probe(3)])
    old_id = spool.spool_id
    spool.close()
    _set_schema(path, 99)
    with sqlite3.connect(path) as db:
        bodies = db.execute("SELECT seq, time_ms, body FROM rows ORDER BY seq").fetchall()
    db.close()
    assert len(bodies) == 3

    caplog.set_level(logging.INFO, logger="agent.spool")
    fresh = Spool(path)
    try:
        (aside,) = tmp_path.glob("spool.db.newer-*")
        assert not aside.name.endswith(("-wal", "-shm"))
        db = sqlite3.connect(f"file:{aside}?mode=ro", uri=True)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert db.execute("SELECT seq, time_ms, body FROM rows ORDER BY seq").fetchall() == bodies  # intact
            meta = dict(db.execute("SELECT key, value FROM meta"))
            assert int(meta["schema"]) == 99 and meta["spool_id"] == old_id
        finally:
            db.close()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, errors
        assert "newer agent" in errors[0] and "spool schema 99" in errors[0] and str(aside) in errors[0]
        assert "To send them, run the newer agent with that file as its spool" in errors[0]
        # a new spool: a new id, seqs from 1, working
        assert fresh.spool_id != old_id and _schema(path) == SCHEMA_VERSION
        assert fresh.depth() == 0 and fresh.next_batch(10) is None
        assert fresh.append([stopped(1), probe(2)]) == range(1, 3)
        assert [(s, r) for s, r in fresh.next_batch(10).items] == [(1, stopped(1)), (2, probe(2))]
        assert fresh.ack(1, 2) == 2
    finally:
        fresh.close()
    again = Spool(path)  # the new spool reopens as itself; the aside file is left alone
    try:
        assert again.spool_id == fresh.spool_id
        assert [p for p in tmp_path.glob("spool.db.newer-*")
                if not p.name.endswith(("-wal", "-shm"))] == [aside]  # (our reader above made its -wal, -shm)
        assert aside.exists() and _schema(aside) == 99
    finally:
        again.close()


# -- kill -9 --------------------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    sys.path[:0] = [sys.argv[2]]
    from agent.spool import Spool
    from core.event import Event
    from core.measurement import Measurement
    spool = Spool(sys.argv[1])
    print("id", spool.spool_id, flush=True)
    while True:
        start = spool._next_seq  # each record says which seq it expects: odd a measurement, even an event
        records = [Measurement("probe", {"target": "t"}, {"up": 1.0, "seq": float(s)}, 1_795_000_000_000 + s)
                   if s % 2 else Event("drill", {"line": "backup"}, 1_795_000_000_000 + s, f"drill {s}",
                                       {"seq": float(s), "who": "test"})
                   for s in range(start, start + 20)]
        r = spool.append(records)
        assert r.start == start, (r, start)
        print(r.start, r.stop - 1, flush=True)  # printed only after the commit returned
""")


def _check_record(seq: int, record: Measurement | Event) -> None:
    if seq % 2:
        assert record == Measurement("probe", {"target": "t"}, {"up": 1.0, "seq": float(seq)},
                                     1_795_000_000_000 + seq), (seq, record)
    else:
        assert record == Event("drill", {"line": "backup"}, 1_795_000_000_000 + seq, f"drill {seq}",
                               {"seq": float(seq), "who": "test"}), (seq, record)


def test_kill_9_while_appending_measurements_and_events_loses_no_committed_range(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    committed: list[tuple[int, int]] = []
    ids = set()
    rnd = random.Random(11)
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(REPO)], stdout=subprocess.PIPE,
                                 text=True)
        try:
            ids.add(child.stdout.readline().split()[1])
            for _ in range(rnd.randint(10, 60)):
                first, last = map(int, child.stdout.readline().split())
                committed.append((first, last))
            time.sleep(rnd.uniform(0, 0.02))  # land anywhere: mid-transaction, mid-checkpoint
            child.send_signal(signal.SIGKILL)
            for line in child.stdout:  # commits that happened before the signal landed
                if not line.endswith("\n"):  # a print the kill cut short
                    break
                first, last = map(int, line.split())
                committed.append((first, last))
        finally:
            child.kill()
            child.wait()
        assert child.returncode == -signal.SIGKILL
        spool = Spool(path)
        try:
            batch = spool.next_batch(1_000_000)
            seqs = [s for s, _ in batch.items]
            assert seqs == list(range(1, batch.last + 1))  # gap-free from 1, nothing evicted or lost
            assert spool.damaged() == [] and spool.lost_total == 0 and spool.dropped_total == 0
            reported = {s for a, b in committed for s in range(a, b + 1)}
            assert reported <= set(seqs)  # every range the child saw committed is there, events included
            assert batch.last >= committed[-1][1] and batch.last % 20 == 0  # whole appends only
            for seq, record in batch.items:
                _check_record(seq, record)
        finally:
            spool.close()
    assert len(ids) == 1  # the same spool across every kill
    assert len(committed) >= 50 and sum(s % 2 == 0 for a, b in committed for s in range(a, b + 1)) >= 500
    assert committed[0][0] == 1 and all(b < c for (_, b), (c, _) in zip(committed, committed[1:]))
