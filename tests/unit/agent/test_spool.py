"""agent.spool: gap-free seqs, live-first batches, ack/quarantine, eviction ranges, kill -9 mid-stream; damaged
rows, corrupt pages (real bytes overwritten in the file), a really full disk (a small tmpfs)."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.queue import Batch
from agent.spool import DamagedRow, Spool, SpoolWriteError
from disk_helpers import fill, tmpfs
from core.measurement import RESULTS, Measurement

REPO = Path(__file__).resolve().parents[3]
TAGS = {"service": "ioffice", "target": "ioffice-web", "probe": "http", "line": "primary",
        "province": "ha-tinh", "commune": "dong-loc", "agent": "quay-01"}


def rows(n: int, start: int = 0, result: str = "ok") -> list[Measurement]:
    """Return n distinct probe Measurements (their `time` numbers them from `start`)."""
    rnd = random.Random(start)
    return [Measurement("probe", TAGS, {"up": float(result == "ok"), "rtt_ms": rnd.uniform(1, 90),
                                        "dns_ms": rnd.uniform(1, 40), "duration_ms": rnd.uniform(10, 900)},
                        1_795_000_000_000 + (start + i) * 1000, result, "" if result == "ok" else "no answer")
            for i in range(n)]


def stored(path: Path) -> list[int]:
    """Return the seqs in the file's rows table (read with a separate connection)."""
    with sqlite3.connect(path) as db:
        return [s for (s,) in db.execute("SELECT seq FROM rows ORDER BY seq")]


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def test_append_is_gap_free_durable_and_reopen_continues_without_reusing_seqs(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    assert spool._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert spool.append(rows(3)) == range(1, 4)
    assert spool.append([]) == range(4, 4)
    assert spool.append(rows(2, 3)) == range(4, 6)
    spool_id = spool.spool_id
    batch = spool.next_batch(10)
    assert (batch.first, batch.last) == (1, 5)
    assert [m for _, m in batch.items] == rows(3) + rows(2, 3)  # the whole Measurement comes back
    assert spool.ack(1, 5) == 5 and spool.depth() == 0  # the tail is gone...
    spool.close()
    again = Spool(path)
    assert again.spool_id == spool_id
    assert again.append(rows(1, 9)) == range(6, 7)  # ...and its seqs are still never reused
    assert again.depth() == 1
    again.close()
    other = Spool(tmp_path / "other.db")
    assert other.spool_id != spool_id and other.append(rows(1)) == range(1, 2)
    other.close()


def test_live_rows_go_first_then_the_backlog_oldest_first_and_no_batch_spans_a_hole(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", live_age_s=0.3)
    spool.append(rows(100))  # becomes backlog
    time.sleep(0.4)
    spool.append(rows(10, 100))  # live
    live = spool.next_batch(50)
    assert (live.first, live.last, live.live) == (101, 110, True)
    spool.ack(live.first, live.last)
    spool.append(rows(20, 110))  # live again, after the hole 101..110
    spool.append(rows(20, 130))
    live = spool.next_batch(30)  # oldest first within the live rows, max_rows respected
    assert (live.first, live.last, live.live) == (111, 140, True)
    spool.ack(111, 140)
    assert (spool.next_batch(500).first, spool.next_batch(500).last) == (141, 150)
    spool.ack(141, 150)
    backlog = spool.next_batch(60)
    assert (backlog.first, backlog.last, backlog.live) == (1, 60, False)
    spool.ack(1, 60)
    time.sleep(0.4)
    spool.append(rows(5, 150))
    time.sleep(0.4)  # 151..155 are backlog now, after the hole 101..150
    assert [(b.first, b.last) for b in _drain(spool, 500)] == [(61, 100), (151, 155)]
    assert spool.next_batch(500) is None and spool.depth() == 0
    spool.close()


def _drain(spool: Spool, max_rows: int) -> list:
    out = []
    while (batch := spool.next_batch(max_rows)) is not None:
        assert [s for s, _ in batch.items] == list(range(batch.first, batch.last + 1))
        spool.ack(batch.first, batch.last)
        out.append(batch)
    return out


def test_quarantine_moves_a_batch_aside_counts_it_and_never_resends_it(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, live_age_s=0)
    spool.append(rows(10))
    bad = spool.next_batch(4)
    assert spool.quarantine(bad.first, bad.last, "tag key 'x' is not allowed") == 4
    assert spool.quarantined_total == 4 and spool.depth() == 6
    assert [(b.first, b.last) for b in _drain(spool, 500)] == [(5, 10)]
    spool.close()
    again = Spool(path)
    assert again.quarantined_total == 4 and again.depth() == 0
    assert [(s, r) for s, r, _ in again.quarantined()] == [(i, "tag key 'x' is not allowed") for i in (1, 2, 3, 4)]
    assert [m for _, _, m in again.quarantined()] == rows(4)
    assert again.dropped_total == 0  # quarantined is not dropped: two different counts
    again.close()


def test_full_spool_evicts_the_oldest_counts_them_and_reports_ranges(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    cap = 400_000
    spool = Spool(path, max_bytes=cap)
    appended = 0
    while spool.dropped_total == 0 or appended < 12_000:
        spool.append(rows(30, appended))
        appended += 30
        assert spool.size_bytes() <= cap
    present = stored(path)
    evicted = spool.pending_evictions()
    evicted_seqs = [s for a, b in evicted for s in range(a, b + 1)]
    assert spool.dropped_total == len(evicted_seqs) > 0
    assert sorted(evicted_seqs + present) == list(range(1, appended + 1))  # every seq: present or evicted
    assert max(evicted_seqs) < min(present)  # the oldest went first
    assert evicted == [(1, max(evicted_seqs))]  # adjacent evictions merge into one range
    assert spool.depth() == len(present)
    # The shipper reports a part; a later eviction and what was not reported stay pending, also after reopen.
    spool.evictions_reported([(1, 100)])
    spool.close()
    again = Spool(path, max_bytes=cap)
    assert again.pending_evictions() == [(101, max(evicted_seqs))]
    assert again.dropped_total == len(evicted_seqs)
    again.evictions_reported([[101, max(evicted_seqs)]])
    assert again.pending_evictions() == []
    again.close()


def test_the_batch_in_flight_is_not_evicted_so_its_ack_stays_exact(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=300_000, live_age_s=0)
    spool.append(rows(300))
    in_flight = spool.next_batch(50)
    assert (in_flight.first, in_flight.last) == (1, 50)
    appended = 300
    while spool.dropped_total < 500:  # the spool fills up while the batch is on its way
        spool.append(rows(30, appended))
        appended += 30
    assert set(range(1, 51)) <= set(stored(path))
    evicted = spool.pending_evictions()
    assert evicted[0][0] == 51  # eviction went around the batch in flight
    assert spool.ack(1, 50) == 50  # the collector acked it: exactly its rows leave
    evicted_seqs = {s for a, b in evicted for s in range(a, b + 1)}
    assert spool.dropped_total == len(evicted_seqs)
    assert evicted_seqs.isdisjoint(range(1, 51))
    assert sorted(evicted_seqs | set(stored(path)) | set(range(1, 51))) == list(range(1, appended + 1))
    spool.close()


def test_the_file_shrinks_after_acks(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    for i in range(300):
        spool.append(rows(30, i * 30))
    full = spool.size_bytes()
    _drain(spool, 500)
    spool.close()
    assert full > 1_000_000
    assert os.path.getsize(path) < full / 10, (os.path.getsize(path), full)


def test_append_from_one_thread_while_another_acks(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    done = threading.Event()
    acked: list[int] = []
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            for i in range(200):
                spool.append(rows(10, i * 10))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            done.set()

    def shipper() -> None:
        try:
            while not (done.is_set() and spool.depth() == 0):
                batch = spool.next_batch(37)
                if batch is None:
                    time.sleep(0.001)
                    continue
                assert [s for s, _ in batch.items] == list(range(batch.first, batch.last + 1))
                spool.ack(batch.first, batch.last)
                acked.extend(range(batch.first, batch.last + 1))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=producer), threading.Thread(target=shipper)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(acked) == list(range(1, 2001))  # each seq shipped exactly once
    assert spool.depth() == 0 and stored(spool.path) == []
    spool.close()


def test_a_broken_file_is_moved_aside_and_a_new_spool_started(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not a database" * 100)
    spool = Spool(path)
    assert spool.append(rows(1)) == range(1, 2)
    spool.close()
    assert [p.name.split(".broken-")[0] for p in tmp_path.glob("spool.db.broken-*")] == ["spool.db"]


CHILD = textwrap.dedent("""
    import sys
    sys.path[:0] = [sys.argv[3], sys.argv[3] + "/tests"]
    from agent.spool import Spool
    from tests.unit.agent.test_spool import rows
    spool = Spool(sys.argv[1], max_bytes=int(sys.argv[2]))
    print("id", spool.spool_id, flush=True)
    n = 0
    while True:
        r = spool.append(rows(30, n))
        n += 30
        print(r.start, r.stop - 1, flush=True)  # printed only after the commit returned
""")


@pytest.mark.parametrize("max_bytes", [100 * 2**20, 600_000], ids=["roomy", "evicting"])
def test_kill_9_mid_stream_loses_no_committed_range_and_keeps_seqs_gap_free(tmp_path: Path, max_bytes: int) -> None:
    path = tmp_path / "spool.db"
    committed: list[tuple[int, int]] = []
    ids = set()
    rnd = random.Random(7)
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(max_bytes), str(REPO)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            ids.add(child.stdout.readline().split()[1])
            for _ in range(rnd.randint(20, 120)):
                first, last = map(int, child.stdout.readline().split())
                committed.append((first, last))
            time.sleep(rnd.uniform(0, 0.02))  # land anywhere: mid-transaction, mid-checkpoint, mid-eviction
            child.send_signal(signal.SIGKILL)
            for line in child.stdout:  # commits that happened before the signal landed
                if not line.endswith("\n"):  # a print the kill cut short (the pipe's buffer filled mid-print):
                    break  # its rows are checked like any other below, by `present` and the seqs' order
                first, last = map(int, line.split())
                committed.append((first, last))
        finally:
            child.kill()
            child.wait()
        assert child.returncode == -signal.SIGKILL
        assert integrity(path) == "ok"
        spool = Spool(path, max_bytes=max_bytes)
        present = stored(path)
        evicted = {s for a, b in spool.pending_evictions() for s in range(a, b + 1)}
        assert present == list(range(present[0], present[-1] + 1))  # gap-free from the first to the last
        assert spool.dropped_total == len(evicted)
        assert sorted(evicted | set(present)) == list(range(1, present[-1] + 1))  # nothing vanished unrecorded
        reported = {s for a, b in committed for s in range(a, b + 1)}
        assert reported <= set(present) | evicted  # every range the child saw committed is there (or counted)
        assert present[-1] >= committed[-1][1]
        spool.close()
    assert len(ids) == 1  # the same spool across every kill
    # Seqs went on after each restart, never reused (a commit whose print the kill cut off leaves a jump,
    # and those rows were checked present above).
    assert committed[0][0] == 1 and all(b < c for (_, b), (c, _) in zip(committed, committed[1:]))
    if max_bytes < 2**20:
        assert evicted, "the small cap should have evicted"


# -- damaged rows, corruption, a full disk -----------------------------------------------------------------------


def damage(path: Path, seq: int, body: bytes = b"\x00garbage\xff") -> None:
    """Overwrite one row's body from another connection (the spool may be open or closed)."""
    with sqlite3.connect(path) as db:
        assert db.execute("UPDATE rows SET body = ? WHERE seq = ?", (body, seq)).rowcount == 1


def deflated(spool: Spool, raw: bytes) -> bytes:
    """Return `raw` compressed the way the spool writes bodies (so it decompresses fine)."""
    z = zlib.compressobj(6, zlib.DEFLATED, -13, 8, zlib.Z_DEFAULT_STRATEGY, spool._zdict)
    return z.compress(raw) + z.flush()


def test_a_damaged_row_is_set_aside_reported_lost_and_shipping_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, live_age_s=0)
    spool.append(rows(10))
    damage(path, 4)  # cannot decompress
    damage(path, 1, deflated(spool, b"{not json"))
    damage(path, 7, deflated(spool, b'{"name": "probe"}'))  # JSON, but no tags/fields/time
    assert integrity(path) == "ok"  # SQLite sees nothing wrong: only decoding can tell
    batches = _drain(spool, 500)
    assert [(b.first, b.last) for b in batches] == [(2, 3), (5, 6), (8, 10)]  # contiguous, around the damage
    assert [m for b in batches for _, m in b.items] == [rows(10)[i] for i in (1, 2, 4, 5, 7, 8, 9)]
    assert spool.pending_lost() == [(1, 1, "damaged spool row: not JSON"),
                                    (4, 4, "damaged spool row: cannot decompress"),
                                    (7, 7, "damaged spool row: not a measurement or an event")]
    assert spool.lost_total == 3 and spool.depth() == 0 and stored(path) == []
    assert [s for s, _ in spool.damaged()] == [1, 4, 7]  # kept for people, with what failed
    assert "KeyError" in spool.damaged()[2][1]
    spool.lost_reported([(1, 4)])  # the collector acknowledged a batch carrying these
    assert spool.pending_lost() == [(7, 7, "damaged spool row: not a measurement or an event")]
    spool.close()
    again = Spool(path)
    assert again.lost_total == 3 and again.pending_lost() == [(7, 7, "damaged spool row: not a measurement or an event")]
    assert again.append(rows(1)) == range(11, 12)  # seqs go on
    again.close()


def test_adjacent_damaged_rows_merge_into_one_lost_range_and_a_batch_never_spans_one(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, live_age_s=0)
    spool.append(rows(20))
    for seq in (5, 6, 7, 12):
        damage(path, seq)
    first = spool.next_batch(500)
    assert (first.first, first.last) == (1, 4)  # stops before the damaged row
    assert spool.pending_lost() == []  # not met yet
    spool.ack(1, 4)
    assert (spool.next_batch(3).first, spool.next_batch(3).last) == (8, 10)  # 5..7 set aside first
    assert [(a, b) for a, b, _ in spool.pending_lost()] == [(5, 7)]
    assert [(b.first, b.last) for b in _drain(spool, 500)] == [(8, 11), (13, 20)]
    assert [(a, b) for a, b, _ in spool.pending_lost()] == [(5, 7), (12, 12)]
    spool.close()


def test_check_decodes_the_backlog_and_sets_damaged_rows_aside_before_they_are_shipped(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    spool.append(rows(5000))
    damage(path, 4321)
    assert spool.check() == {"checked": 5000, "damaged": 1, "rebuilt": 0}
    assert [(a, b) for a, b, _ in spool.pending_lost()] == [(4321, 4321)]
    assert spool.depth() == 4999
    assert spool.check() == {"checked": 4999, "damaged": 0, "rebuilt": 0}
    spool.close()


def leaf_page(path: Path, index: int) -> int:
    """Return the page number of the rows table's `index`-th leaf page (SQLite's dbstat)."""
    with sqlite3.connect(path) as db:
        pages = [p for (p,) in db.execute(
            "SELECT pageno FROM dbstat WHERE name = 'rows' AND pagetype = 'leaf' ORDER BY pageno")]
    return pages[index]


def overwrite_page(path: Path, page: int) -> None:
    with open(path, "r+b") as f:
        f.seek((page - 1) * 4096)
        f.write(random.Random(page).randbytes(4096))


def test_a_corrupt_page_on_open_is_rebuilt_keeping_the_spool_id_and_sequence(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    spool.append(rows(3000))
    spool_id = spool.spool_id
    spool.close()
    overwrite_page(path, leaf_page(path, 40))
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        integrity(path)
    again = Spool(path)
    assert again.spool_id == spool_id
    (first, last, reason), = again.pending_lost()
    assert reason == "spool page unreadable (SQLite corruption): spool rebuilt"
    assert 20 <= last - first + 1 <= 40  # one leaf page of ~150-byte rows
    assert sorted(stored(path) + list(range(first, last + 1))) == list(range(1, 3001))  # the rest is all there
    assert again.lost_total == last - first + 1 and again.depth() == 3000 - again.lost_total
    assert integrity(path) == "ok"
    assert len(list(tmp_path.glob("spool.db.broken-*"))) == 1  # the old file kept for people
    assert again.append(rows(1)) == range(3001, 3002)  # no seq reused
    batches = _drain(again, 1000)
    assert sum(len(b.items) for b in batches) == 3001 - again.lost_total
    again.close()


def test_corruption_met_while_reading_a_batch_rebuilds_the_spool_and_shipping_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as first_run:
        first_run.append(rows(3000))  # closing checkpoints: the rows live in the database file itself
    spool = Spool(path)
    overwrite_page(path, leaf_page(path, 10))  # the disk goes bad under the running agent
    with sqlite3.connect(path) as other:  # another writer: the spool's page cache is thrown away
        other.execute("UPDATE meta SET value = 1 WHERE key = 'created_ms'")
    shipped = sum(len(b.items) for b in _drain(spool, 500))
    (first, last, _), = spool.pending_lost()
    assert shipped + (last - first + 1) == 3000
    assert len(list(tmp_path.glob("spool.db.broken-*[0-9]"))) == 1  # with its -wal: kept together
    spool.close()


def test_a_full_disk_drops_and_counts_runs_once_logged_and_the_spool_resumes_when_space_returns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent.spool")
    with tmpfs(tmp_path / "disk", "1M") as disk:
        path = disk / "spool.db"
        spool = Spool(path, max_bytes=400_000)
        assert spool.append(rows(50)) == range(1, 51)
        assert not spool.disk_low()
        fill(disk / "ballast")
        assert spool.disk_low() and spool.disk_free_bytes() == 0
        refused = 0
        for i in range(400):  # the WAL may still have room for a few commits: go on until it has none
            try:
                spool.append(rows(10, 1000 + i * 10))
            except SpoolWriteError as exc:
                assert exc.disk_full
                refused += 10
                if refused >= 30:
                    break
        assert refused == 30
        committed = spool._next_seq - 1
        assert spool.dropped_total == spool.dropped_disk_full_total == 30
        assert not spool.writable
        batch = spool.next_batch(1000)  # reading still works: what is committed can be shipped
        assert (batch.first, batch.last) == (1, committed)
        (disk / "ballast").unlink()
        assert not spool.disk_low()
        assert spool.append(rows(1, 9000)) == range(committed + 1, committed + 2)  # no seq was used up
        assert spool.writable
        spool.ack(1, committed + 1)
        spool.close()
        again = Spool(path, max_bytes=400_000)
        assert again.dropped_total == again.dropped_disk_full_total == 30  # saved once it could write again
        assert again.pending_evictions() == [] and again.depth() == 0
        again.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot commit" in m for m in messages) == 1  # once per episode, not once per run
    assert sum("writes again: 30 measurements were dropped" in m for m in messages) == 1


# -- properties (hypothesis) ---------------------------------------------------------------------------------------

TEXT = st.text(max_size=30)  # any Unicode but lone surrogates (UTF-8 cannot carry them; hypothesis' default)
FIELD_VALUES = st.floats() | st.integers(-2**53, 2**53) | st.booleans()
MEASUREMENTS = st.builds(
    Measurement, name=st.text(min_size=1, max_size=20), tags=st.dictionaries(TEXT, TEXT, max_size=8),
    fields=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True), FIELD_VALUES, max_size=10),
    time=st.integers(0, 2**62), result=st.sampled_from(RESULTS), detail=TEXT)
JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)
# Garbage of three depths: raw bytes (zlib fails), deflated bytes (JSON fails), deflated JSON (from_dict fails)
GARBAGE = st.one_of(
    st.binary(max_size=300).map(lambda b: ("raw", b)),
    st.binary(max_size=300).map(lambda b: ("deflate", b)),
    JSON.map(lambda v: ("deflate", json.dumps(v).encode())),
    st.fixed_dictionaries({"name": TEXT, "tags": JSON, "fields": JSON, "time": JSON}).map(
        lambda v: ("deflate", json.dumps(v).encode())),
)
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def garbage_body(spool: Spool, garbage: tuple[str, bytes]) -> bytes:
    kind, raw = garbage
    return deflated(spool, raw) if kind == "deflate" else raw


@PROPERTY
@given(batch=st.lists(MEASUREMENTS, min_size=1, max_size=4))
def test_any_measurement_round_trips_through_the_spool(tmp_path: Path, batch: list[Measurement]) -> None:
    with Spool(tmp_path / "spool.db", live_age_s=0) as spool:
        committed = spool.append(batch)
        got = spool.next_batch(10)
        assert (got.first, got.last) == (committed.start, committed.stop - 1)
        assert [m for _, m in got.items] == batch
        spool.ack(got.first, got.last)


@PROPERTY
@given(garbage=GARBAGE, where=st.integers(0, 2), max_rows=st.integers(1, 4))
def test_garbage_in_a_body_is_reported_damaged_and_never_raises_out_of_next_batch(
        tmp_path: Path, garbage: tuple[str, bytes], where: int, max_rows: int) -> None:
    with Spool(tmp_path / f"spool-{time.monotonic_ns()}.db", live_age_s=0) as spool:
        seqs = spool.append(rows(3))
        bad = seqs[where]
        body = garbage_body(spool, garbage)
        damage(spool.path, bad, body)
        try:
            decoded = spool._decode(body)
        except DamagedRow:
            decoded = None
        delivered: dict[int, Measurement] = {}
        for batch in _drain(spool, max_rows):  # asserts every batch is contiguous
            delivered.update(batch.items)
        lost = {s for a, b, _ in spool.pending_lost() for s in range(a, b + 1)}
        assert set(delivered) | lost == set(seqs) and not set(delivered) & lost
        if decoded is None:  # undecodable: set aside, reported lost with the stage that failed
            assert lost == {bad} and spool.lost_total == 1 and [s for s, _ in spool.damaged()] == [bad]
            assert spool.pending_lost()[0][2].startswith("damaged spool row: ")
        else:  # garbage that happens to be a Measurement is one: shipped as such
            assert lost == set() and delivered[bad] == decoded


class SpoolMachine(RuleBasedStateMachine):
    """Random appends, damage, batches, acks, quarantines, reports, checks and restarts of one small spool
    (live rows are those of the current process: no timing in the model, so hypothesis can replay it).

    Invariant: every seq ever assigned is exactly one of: still in the spool, acknowledged, quarantined,
    evicted (pending or reported) or lost (pending or reported). The cap is small, so eviction happens.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="spool-machine-"))
        self.path = self.dir / "spool.db"
        self.spool = Spool(self.path, max_bytes=200_000, live_age_s=3600)
        self.acked: set[int] = set()
        self.quarantined: set[int] = set()
        self.evicted_reported: set[int] = set()
        self.lost_reported: set[int] = set()
        self.in_flight: Batch | None = None
        self.appended = 0

    @rule(count=st.integers(1, 80))
    def append(self, count: int) -> None:
        self.spool.append(rows(count, self.appended))
        self.appended += count

    @rule(data=st.data(), garbage=GARBAGE)
    def damage_a_row(self, data: st.DataObject, garbage: tuple[str, bytes]) -> None:
        present = stored(self.path)
        if present:
            damage(self.path, data.draw(st.sampled_from(present)), garbage_body(self.spool, garbage))

    @rule(max_rows=st.integers(1, 100))
    def take(self, max_rows: int) -> None:
        self.in_flight = batch = self.spool.next_batch(max_rows)
        if batch is not None:
            assert [s for s, _ in batch.items] == list(range(batch.first, batch.last + 1))

    @precondition(lambda self: self.in_flight is not None)
    @rule()
    def ack(self) -> None:
        batch, self.in_flight = self.in_flight, None
        assert self.spool.ack(batch.first, batch.last) == len(batch.items)  # in flight: nothing went missing
        self.acked |= set(range(batch.first, batch.last + 1))

    @precondition(lambda self: self.in_flight is not None)
    @rule()
    def quarantine(self) -> None:
        batch, self.in_flight = self.in_flight, None
        assert self.spool.quarantine(batch.first, batch.last, "refused") == len(batch.items)
        self.quarantined |= set(range(batch.first, batch.last + 1))

    @rule()
    def report(self) -> None:  # what the shipper does after a 2xx
        evicted, lost = self.spool.pending_evictions(), self.spool.pending_lost()
        self.spool.evictions_reported(evicted)
        self.spool.lost_reported(lost)
        self.evicted_reported |= {s for a, b in evicted for s in range(a, b + 1)}
        self.lost_reported |= {s for a, b, _ in lost for s in range(a, b + 1)}

    @rule()
    def check(self) -> None:
        self.spool.check()

    @rule()
    def restart(self) -> None:  # a new process: whatever was in flight is offered again, never acked by this one
        self.spool.close()
        self.spool = Spool(self.path, max_bytes=200_000, live_age_s=3600)
        self.in_flight = None

    @invariant()
    def every_seq_is_accounted_for_exactly_once(self) -> None:
        present = set(stored(self.path))
        evicted = self.evicted_reported | {s for a, b in self.spool.pending_evictions() for s in range(a, b + 1)}
        lost = self.lost_reported | {s for a, b, _ in self.spool.pending_lost() for s in range(a, b + 1)}
        groups = [present, self.acked, self.quarantined, evicted, lost]
        assigned = set(range(1, self.spool._next_seq))
        assert set().union(*groups) == assigned
        assert sum(map(len, groups)) == len(assigned), "a seq is in two places"
        assert self.spool.depth() == len(present)
        assert self.spool.dropped_total == len(evicted) and self.spool.lost_total == len(lost)

    def teardown(self) -> None:
        self.spool.close()
        shutil.rmtree(self.dir, ignore_errors=True)


SpoolMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
test_every_seq_is_in_the_spool_acked_quarantined_evicted_or_lost = SpoolMachine.TestCase


def test_a_measurement_that_cannot_be_encoded_is_dropped_and_counted_the_others_committed(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, live_age_s=0)
    bad = Measurement("probe", {**TAGS, "target": "x\ud800"}, {"up": 1.0}, 1_795_000_000_000)  # a lone surrogate
    assert spool.append([rows(1)[0], bad, rows(1, 1)[0]]) == range(1, 3)
    assert spool.dropped_total == 1 and spool.depth() == 2
    spool.append(rows(1, 2))  # the next commit saves the count
    spool.close()
    assert Spool(path).dropped_total == 1
