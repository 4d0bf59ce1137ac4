"""What ONE credential (or anyone, for enrollment) can make the collector keep or do is bounded, and the bound
does not touch the other agents:

- acknowledged ranges: a commit writes only the ranges that changed (a spool fragmented into 100,000 ranges
  used to make every grouped commit rewrite them all), and a spool holds at most `MAX_ACKED` separate ones;
- spools: at most `MAX_SPOOLS` live spools per agent (idle a day: no longer live); a refused spool leaves no
  lock or cache entry behind;
- enrollment: at most `ENROLL_INFLIGHT` in progress, and failed enrollments per source address limited — both
  429 + Retry-After before the body is read (real collector processes, real sockets).
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import random
import socket
import sqlite3
import statistics
import time
import urllib.request

import pytest

from collector.acks import MAX_ACKED, MAX_SPOOLS, SPOOL_IDLE_S, Acks
from core.ranges import merge, subtract
from collector.admission import ENROLL_FAILURES, ENROLL_INFLIGHT, ENROLL_REFILL_S, Enrollments, source
from collector.app_keys import ACKS
from collector.db import connect
from collector_helpers import (CollectorProcess, credential, enroll_direct, http_post, payload, post)
from lab.victoria import available

needs_vm = pytest.mark.skipif(available() is not None, reason=available() or "")


def scatter(conn: sqlite3.Connection, agent: str, spool: str, count: int) -> None:
    """Store `count` separate one-seq acknowledged ranges (1, 3, 5, ...) for a spool, as a hostile agent would."""
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO acked (agent, spool, first, last) VALUES (?, ?, ?, ?)",
                     [(agent, spool, 2 * i + 1, 2 * i + 1) for i in range(count)])
    conn.execute("COMMIT")


def rows(conn: sqlite3.Connection, table: str, agent: str, spool: str) -> list[tuple[int, int]]:
    return sorted(conn.execute(f"SELECT first, last FROM {table} WHERE agent = ? AND spool = ?", (agent, spool)))


# -- acknowledged ranges: incremental commits ----------------------------------------------------------------------

async def test_a_commit_writes_what_changed_not_a_spools_whole_list(tmp_path):
    """100,000 scattered ranges in one spool: each commit of it changed 200,000 rows (0.2 s here, and every other
    agent's record waited for it in the same grouped commit); now a few rows, and the good agent is not slowed."""
    conn = connect(tmp_path / "collector.sqlite")
    acks = Acks(conn)
    scatter(conn, "evil/x", "s", 100_000)
    seq = 200_001
    changed, good_s = [], []
    for i in range(10):
        seq += 2
        before = conn.total_changes
        await acks.record("evil/x", "s", seq, seq)
        changed.append(conn.total_changes - before)
        seq += 2
        hostile = asyncio.create_task(acks.record("evil/x", "s", seq, seq))
        await asyncio.sleep(0)  # its commit is under way: the good agent's record waits for it, then commits
        started = time.perf_counter()
        await acks.record("good/y", "s", 10 * i + 1, 10 * i + 10)
        good_s.append(time.perf_counter() - started)
        await hostile
    assert max(changed) <= 3, changed  # the new range and the spool's last activity; was 200,000+
    assert statistics.median(good_s) < 0.1, good_s  # was ~0.2 s with the rewrite (fsync included either way)
    assert len(acks.ranges("evil/x", "s")) == 100_020 and acks.ranges("good/y", "s") == [(1, 100)]
    assert len(rows(conn, "acked", "evil/x", "s")) == 100_020
    conn.close()


@pytest.mark.parametrize("seed", range(4))
async def test_incremental_rows_keep_ranges_lost_and_gaps_exact(tmp_path, seed):
    """Random acks, evictions and losses (overlapping, adjacent, covering many ranges at once), against a model
    of plain seq sets: the cache, the file read back and gaps() agree, and the file holds no redundant row."""
    rng = random.Random(seed)
    conn = connect(tmp_path / "collector.sqlite")
    acks = Acks(conn)
    acked, evicted, lost = set(), set(), {}  # the model: seqs (lost: seq → reasons)

    def span() -> tuple[int, int]:
        a = rng.randint(1, 400)
        return a, a + rng.choice([0, 0, 1, 2, 5, 20, 80])

    for _ in range(300):
        first, last = span() if rng.random() < 0.9 else (5, 4)  # (5, 4): nothing acked, only reports
        ev = [span() for _ in range(rng.choice([0, 0, 1, 3]))]
        lo = [(*span(), rng.choice(["page", "checksum"])) for _ in range(rng.choice([0, 0, 0, 1, 2]))]
        await acks.record("a/b", "s", first, last, evicted=ev, lost=lo)
        acked |= set(range(first, last + 1))
        for a, b in ev:
            evicted |= set(range(a, b + 1))
        for a, b, reason in lo:
            for seq in range(a, b + 1):
                lost.setdefault(seq, set()).add(reason)

    def ranges_of(seqs) -> list[tuple[int, int]]:
        return merge([(s, s) for s in seqs])

    expected_lost = sorted((a, b, reason) for reason in ("page", "checksum")
                           for a, b in ranges_of({s for s, r in lost.items() if reason in r}))
    done = acked | evicted | set(lost)
    expected_gaps = ranges_of(set(range(1, max(done) + 1)) - done)
    again = Acks(connect(tmp_path / "collector.sqlite"))
    for view in (acks, again):
        assert view.ranges("a/b", "s") == ranges_of(acked)
        assert view.ranges("a/b", "s", "evicted") == ranges_of(evicted)
        assert view.lost("a/b", "s") == expected_lost
        assert view.gaps("a/b", "s") == expected_gaps
    assert rows(conn, "acked", "a/b", "s") == ranges_of(acked)  # exactly the merged ranges: nothing redundant
    assert rows(conn, "evicted", "a/b", "s") == ranges_of(evicted)
    assert again.lost_by_agent() == acks.lost_by_agent() == {"a/b": len(lost)}
    again.conn.close()
    conn.close()


async def test_a_failed_commit_never_shrinks_what_the_file_holds(tmp_path, monkeypatch):
    """A commit that fails (a full disk) is answered as an error; what the file holds afterwards covers every
    range recorded before or after it, and nothing the collector never recorded."""
    conn = connect(tmp_path / "collector.sqlite")
    acks = Acks(conn)
    await acks.record("a/b", "s", 1, 10)
    commit = acks._commit
    monkeypatch.setattr(acks, "_commit", lambda changes: (_ for _ in ()).throw(sqlite3.OperationalError("full")))
    with pytest.raises(sqlite3.OperationalError):
        await acks.record("a/b", "s", 11, 20)
    monkeypatch.setattr(acks, "_commit", commit)
    await acks.record("a/b", "s", 30, 40)
    await acks.record("a/b", "s", 21, 29)
    held = {s for a, b in rows(conn, "acked", "a/b", "s") for s in range(a, b + 1)}
    assert set(range(1, 11)) | set(range(21, 41)) <= held <= set(range(1, 41))
    assert subtract(1, 40, merge(rows(conn, "acked", "a/b", "s"))) in ([], [(11, 20)])
    conn.close()


@needs_vm
async def test_a_spool_past_max_acked_separate_ranges_refuses_only_a_new_range(vm, client):
    """At the cap a batch that would start another range is 400 with the reason (nothing written); a batch that
    extends a range, a resend, and another agent's batches are 200."""
    hostile, good = credential(client, agent="frag-01"), credential(client, agent="good-01")
    acks = client.server.app[ACKS]
    scatter(acks.conn, "dong-loc/frag-01", "frag", MAX_ACKED)
    scattered = payload(2 * MAX_ACKED + 11, 1, spool="frag")
    status, answer, _ = await post(client, hostile, scattered)
    assert status == 400 and f"{MAX_ACKED} separate acknowledged ranges" in answer["error"], answer
    assert vm.samples('{agent="frag-01"}') == []
    status, answer, _ = await post(client, hostile, payload(2 * MAX_ACKED, 2, spool="frag"))  # joins the last one
    assert status == 200 and answer["written"] == 2, answer
    status, answer, _ = await post(client, hostile, payload(2, 1, spool="frag"))  # fills a gap: one range fewer
    assert status == 200 and len(acks.ranges("dong-loc/frag-01", "frag")) == MAX_ACKED - 1
    assert (await post(client, hostile, payload(2 * MAX_ACKED, 2, spool="frag")))[1]["duplicate"] is True
    data = payload(1, 50)
    status, answer, _ = await post(client, good, data)
    assert status == 200 and answer["written"] == 50
    async with client.get("/metrics") as response:
        assert 'cmon_collector_batches_refused_total{reason="ranges"} 1' in await response.text()


# -- spools per agent ----------------------------------------------------------------------------------------------

@needs_vm
async def test_an_agent_has_at_most_max_spools_live_spools(vm, client):
    """16 spools: 200; a 17th: 400 with the reason, nothing written, nothing kept for it (no lock, no cache) even
    after thousands; the 16 keep working, another agent is unaffected; a spool idle a day no longer counts."""
    hostile, good = credential(client, agent="spools-01"), credential(client, agent="good-02")
    acks = client.server.app[ACKS]
    for i in range(MAX_SPOOLS):
        status, answer, _ = await post(client, hostile, payload(1, 1, spool=f"sp-{i}"))
        assert status == 200, (i, answer)
    status, answer, _ = await post(client, hostile, payload(1, 1, spool="sp-extra", tags={
        "service": "x", "target": "extra", "probe": "tcp", "line": "primary"}))
    assert status == 400 and f"already has {MAX_SPOOLS} spools" in answer["error"], answer
    assert vm.samples('{agent="spools-01",target="extra"}') == []
    kept = (len(acks._locks), len(acks._cache["acked"]))
    for i in range(2000):
        assert acks.claim("dong-loc/spools-01", f"more-{i}") is not None
    status, answer, _ = await post(client, hostile, payload(1, 1, spool="sp-more"))
    assert status == 400
    assert (len(acks._locks), len(acks._cache["acked"])) == kept
    status, answer, _ = await post(client, hostile, payload(2, 5, spool="sp-3"))
    assert status == 200 and answer["written"] == 5
    status, answer, _ = await post(client, good, payload(1, 20, spool="good-spool"))
    assert status == 200 and answer["written"] == 20
    async with client.get("/metrics") as response:
        assert 'cmon_collector_batches_refused_total{reason="spools"} 2' in await response.text()

    restarted = Acks(connect(acks.conn.execute("PRAGMA database_list").fetchone()[2]))  # kept across a restart
    assert "spools" in restarted.claim("dong-loc/spools-01", "sp-extra")
    assert restarted.claim("dong-loc/spools-01", "sp-0") is None
    restarted.clock = lambda: time.time() + SPOOL_IDLE_S + 60  # a day later, nothing sent meanwhile
    assert restarted.claim("dong-loc/spools-01", "sp-extra") is None
    restarted.conn.close()
    acks.clock = lambda: time.time() + SPOOL_IDLE_S + 60
    status, answer, _ = await post(client, hostile, payload(1, 1, spool="sp-next-day"))
    assert status == 200, answer
    assert ("dong-loc/spools-01", "sp-0") not in acks._cache["acked"]  # the idle spools' caches are dropped
    assert acks.ranges("dong-loc/spools-01", "sp-3") == [(1, 6)]  # and read again from the file on demand


# -- enrollment ----------------------------------------------------------------------------------------------------

def test_enrollment_failures_are_a_token_bucket_per_address():
    now = [1000.0]
    gate = Enrollments(clock=lambda: now[0], max_addresses=100)
    for _ in range(ENROLL_FAILURES - 1):
        assert gate.failed("10.0.0.1") is False
    assert gate.blocked("10.0.0.1") is None and gate.failed("10.0.0.1") is True
    assert gate.blocked("10.0.0.1") == ENROLL_REFILL_S and gate.blocked("::ffff:10.0.0.1") == ENROLL_REFILL_S
    assert gate.blocked("10.0.0.2") is None
    now[0] += ENROLL_REFILL_S / 2
    assert gate.blocked("10.0.0.1") == ENROLL_REFILL_S / 2
    now[0] += ENROLL_REFILL_S / 2
    assert gate.blocked("10.0.0.1") is None  # one more try a minute
    assert gate.failed("10.0.0.1") is True and gate.blocked("10.0.0.1")
    for _ in range(ENROLL_FAILURES):
        gate.failed("2001:db8:1:2::5")
    assert gate.blocked("2001:db8:1:2:ffff::9") and gate.blocked("2001:db8:1:3::5") is None  # by /64
    assert source("2001:db8:1:2::5") == "2001:db8:1:2::/64" and source(None) == ""
    for i in range(500):
        gate.failed(f"10.1.{i // 250}.{i % 250}")
    assert len(gate._buckets) == 100  # bounded: the addresses idle longest are forgotten
    now[0] += ENROLL_REFILL_S * ENROLL_FAILURES
    assert all(gate.blocked(f"10.1.1.{i}") is None for i in range(250)) and len(gate._buckets) < 100


def _enroll(port: int, token: str, agent: str, source_ip: str = "127.0.0.1") -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source_ip, 0))
    try:
        conn.request("POST", "/api/v1/enroll", json.dumps({"version": 1, "token": token, "agent_id": agent}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}"), dict(response.getheaders())
    finally:
        conn.close()


def _token(state) -> str:
    from collector.auth import Auth

    conn = connect(state / "collector.sqlite")
    try:
        return Auth(conn, "ha-tinh").create_token("dong-loc", 3600)
    finally:
        conn.close()


def _ingest(url: str, cred: str, data: dict) -> tuple[int, dict]:
    status, answer, _ = http_post(url + "/api/v1/ingest", gzip.compress(json.dumps(data).encode()),
                                  {"Authorization": f"Bearer {cred}", "Content-Encoding": "gzip"}, timeout=10)
    return status, answer


def _metric(url: str, line_start: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(line_start + " "):
                return float(line.split()[-1])
    raise AssertionError(f"no {line_start}")


@needs_vm
def test_stalled_enrollments_hold_at_most_enroll_inflight_places(vm, tmp_path):
    """8 unauthenticated enrollments that send headers and one byte: the 9th is 429 + Retry-After at once, an
    enrolled agent's batch is 200 meanwhile; when they go away the places are free again."""
    collector = CollectorProcess(tmp_path, vm.url, body_timeout=20)
    good = enroll_direct(tmp_path / "state", agent="good-03")
    token = _token(tmp_path / "state")
    collector.start()
    sockets = []
    try:
        for _ in range(ENROLL_INFLIGHT):
            sock = socket.create_connection(("127.0.0.1", collector.port), timeout=5)
            sock.sendall(b"POST /api/v1/enroll HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 5000\r\n\r\n{")
            sockets.append(sock)
        time.sleep(0.3)
        started = time.monotonic()
        status, answer, headers = _enroll(collector.port, token, "quay-07")
        assert status == 429 and headers["Retry-After"] == "5", answer
        assert f"{ENROLL_INFLIGHT} enrollments are in progress" in answer["error"]
        assert time.monotonic() - started < 1
        status, answer = _ingest(collector.url, good, payload(1, 30))
        assert status == 200 and answer["written"] == 30, answer
        assert _metric(collector.url, 'cmon_collector_enroll_limited_total{reason="busy"}') == 1
        for sock in sockets:
            sock.close()
        deadline = time.monotonic() + 5
        while (status := _enroll(collector.port, token, "quay-07")[0]) == 429 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == 200  # the token was not spent by the 429
        log = collector.log.read_text()
        assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]
    finally:
        for sock in sockets:
            sock.close()
        collector.stop()


@needs_vm
def test_failed_enrollments_from_one_address_are_limited_and_no_one_else(vm, tmp_path):
    """10 wrong tokens from one address: 401 each; then 429 + Retry-After before the token is looked at (a good
    token from that address waits too, unspent); another address enrolls at once; enrolled agents are 200."""
    collector = CollectorProcess(tmp_path, vm.url)
    good = enroll_direct(tmp_path / "state", agent="good-04")
    token = _token(tmp_path / "state")
    collector.start()
    try:
        for i in range(ENROLL_FAILURES):
            status, answer, _ = _enroll(collector.port, f"cmt.{i:016x}.guess", "quay-08")
            assert status == 401, answer
        status, answer, headers = _enroll(collector.port, "cmt.0123456789abcdef.guess", "quay-08")
        assert status == 429 and 1 <= int(headers["Retry-After"]) <= ENROLL_REFILL_S, answer
        assert "too many failed enrollments from this address" in answer["error"]
        assert _enroll(collector.port, token, "quay-08")[0] == 429  # not even a good token: it is not looked at
        status, answer, _ = _enroll(collector.port, token, "quay-08", source_ip="127.0.0.2")
        assert status == 200 and answer["agent"] == "quay-08", answer  # the token was not spent above
        status, answer = _ingest(collector.url, good, payload(1, 10))
        assert status == 200 and answer["written"] == 10
        assert _metric(collector.url, 'cmon_collector_enroll_limited_total{reason="failures"}') == 2
        assert "127.0.0.1: too many failed enrollments" in collector.log.read_text()
    finally:
        collector.stop()
