"""Tests for agent.shipper against a real aiohttp collector stand-in on 127.0.0.1 (docs/wire.md's codes).

Every test that ships runs twice: against the real SQLite spool and against agent.queue.MemoryQueue."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import sqlite3
import ssl
import time
from pathlib import Path
from typing import Callable

import pytest
from aiohttp import web

from agent.credentials import Credential, ssl_context
from agent.queue import LIVE_AGE_S, MemoryQueue, OutboundQueue
from agent.shipper import ClockOffset, Shipper, parse_retry_after
from agent.spool import Spool
from core.measurement import Measurement
from core.tls import fingerprint
from lab.pki import make_pki
from queue_helpers import Recording, RecordingMemoryQueue, RecordingSpool, drain

TOKEN = "s3cret-credential"


class StuckDisk(Recording):
    """The queue on a full disk: its first `failures` acks raise SQLite's real 'database or disk is full' error."""

    failures = 0

    def ack(self, first: int, last: int) -> int:
        self.ack_calls = getattr(self, "ack_calls", 0) + 1
        if self.ack_calls <= self.failures:
            raise sqlite3.OperationalError("database or disk is full")
        return super().ack(first, last)


class StuckSpool(StuckDisk, Spool):
    pass


class StuckMemoryQueue(StuckDisk, MemoryQueue):
    pass


def damage(queue: Spool | MemoryQueue, seq: int) -> None:
    """Make row `seq` lost: a bad sector under the spool's row (it is set aside when met), or dropped as lost."""
    if isinstance(queue, Spool):
        with sqlite3.connect(queue.path) as db:
            db.execute("UPDATE rows SET body = x'deadbeef' WHERE seq = ?", (seq,))
    else:
        queue.lose(seq, seq, "damaged spool row: cannot decompress")


QueueFactory = Callable[..., "Spool | MemoryQueue"]


@pytest.fixture(params=["spool", "memory"])
def make_queue(request: pytest.FixtureRequest, tmp_path: Path):
    """Return `make(measurements, backlog=False, failures=0)`: a queue holding them (seqs 1..n), the real SQLite
    spool or a MemoryQueue; `backlog`: older than the live age (the bandwidth cap applies)."""
    opened: list[Spool] = []

    def make(items: list[Measurement], backlog: bool = False, failures: int = 0) -> Spool | MemoryQueue:
        live_age = 0.0 if backlog else LIVE_AGE_S
        if request.param == "spool":
            queue: Spool | MemoryQueue = (StuckSpool if failures else RecordingSpool)(
                tmp_path / f"spool-{len(opened)}.db", live_age_s=live_age)
            opened.append(queue)
        else:
            queue = (StuckMemoryQueue if failures else RecordingMemoryQueue)(live_age_s=live_age)
        queue.failures = failures
        if items:
            queue.append(items)
        return queue

    yield make
    for spool in opened:
        spool.close()


class Collector:
    """A small collector: checks the bearer token and gzip, records batches, answers what `decide` says."""

    def __init__(self, skew_ms: int = 0) -> None:
        self.skew_ms = skew_ms
        self.batches: list[dict] = []
        self.requests: list[tuple[float, int]] = []  # (monotonic, status)
        self.heartbeats: list[dict] = []
        self.kinds: list[str | None] = []  # each ingest request's X-Cmon-Batch
        self.decide: Callable[[dict], tuple[int, dict, dict]] = lambda payload: (200, {}, {})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v1/ingest", self.ingest)
        app.router.add_post("/api/v1/heartbeat", self.heartbeat)
        return app

    def _headers(self, extra: dict) -> dict:
        return {"X-Server-Time-Ms": str(int(time.time() * 1000) + self.skew_ms), **extra}

    async def _payload(self, request: web.Request) -> dict:
        assert request.headers["Content-Encoding"] == "gzip"  # aiohttp decompresses the body for us
        data = await request.read()
        return json.loads(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)

    async def ingest(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.requests.append((time.monotonic(), 401))
            return web.json_response({"error": "bad credential"}, status=401, headers=self._headers({}))
        payload = await self._payload(request)
        self.kinds.append(request.headers.get("X-Cmon-Batch"))
        status, body, headers = self.decide(payload)
        self.requests.append((time.monotonic(), status))
        if status == 200:
            self.batches.append(payload)
            body = {"acked": [payload["first"], payload["last"]], **body}
        return web.json_response(body, status=status, headers=self._headers(headers))

    async def heartbeat(self, request: web.Request) -> web.Response:
        self.heartbeats.append(await self._payload(request))
        return web.json_response({"server_time_ms": int(time.time() * 1000)}, headers=self._headers({}))

    def seqs(self) -> list[int]:
        return [m["seq"] for b in self.batches for m in b["measurements"]]


async def start(app: web.Application, ssl_ctx: ssl.SSLContext | None = None, port: int = 0) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_ctx)
    await site.start()
    return runner, runner.addresses[0][1]


def measurements(n: int, age_s: float = 0.0) -> list[Measurement]:
    now = int((time.time() - age_s) * 1000)
    return [
        Measurement("probe", {"service": "dns", "target": "t", "probe": "tcp", "line": "primary"},
                    {"up": 1.0, "rtt_ms": float(i)}, now + i)
        for i in range(n)
    ]


@pytest.fixture
async def collector():
    c = Collector()
    runner, port = await start(c.app())
    c.url = f"http://127.0.0.1:{port}"
    try:
        yield c
    finally:
        await runner.cleanup()


def shipper_for(queue: OutboundQueue, url: str, **kw) -> Shipper:
    return Shipper(queue, url, kw.pop("credential", TOKEN), timeout=5, **kw)


async def test_ok_acks_every_batch_once_in_order(collector: Collector, make_queue: QueueFactory) -> None:
    spool = make_queue(measurements(25))
    async with shipper_for(spool, collector.url, batch_max=10) as shipper:
        await drain(shipper, spool)
    assert spool.depth() == 0
    assert spool.acked == [(1, 10), (11, 20), (21, 25)]
    assert collector.seqs() == list(range(1, 26))
    first = collector.batches[0]
    assert (first["version"], first["spool"], first["first"], first["last"]) == (1, spool.spool_id, 1, 10)
    assert first["measurements"][0] == {"seq": 1, **measurements(1)[0].to_dict(), "time": first["measurements"][0]["time"]}
    assert shipper.stats.shipped_total == 25


async def test_each_request_says_whether_its_batch_is_live_or_backlog(collector: Collector) -> None:
    for live_age_s in (120.0, 0.0):  # appended just now: live; with no live window everything is backlog
        queue = MemoryQueue(live_age_s=live_age_s)
        queue.append(measurements(3))
        async with shipper_for(queue, collector.url) as shipper:
            await drain(shipper, queue)
        assert queue.depth() == 0
    assert collector.kinds == ["live", "backlog"]  # the collector sheds the backlog first


async def test_400_quarantines_the_batch_and_moves_on(collector: Collector, make_queue: QueueFactory) -> None:
    collector.decide = lambda p: (400, {"error": "field up is a string"}, {}) if p["first"] == 1 else (200, {}, {})
    spool = make_queue(measurements(6))
    async with shipper_for(spool, collector.url, batch_max=3) as shipper:
        await drain(shipper, spool)
    assert spool.refused == [(1, 3, "field up is a string")]
    assert spool.acked == [(4, 6)]
    assert shipper.stats.quarantined_total == 3
    assert [(seq, reason) for seq, reason, _ in spool.quarantined()] == [(s, "field up is a string") for s in (1, 2, 3)]
    assert spool.quarantined_total == 3 and spool.depth() == 0


async def test_413_splits_until_accepted(collector: Collector, make_queue: QueueFactory) -> None:
    collector.decide = lambda p: (413, {"error": "too large"}, {}) if len(p["measurements"]) > 3 else (200, {}, {})
    spool = make_queue(measurements(10))
    async with shipper_for(spool, collector.url, batch_max=10) as shipper:
        await drain(shipper, spool)
    assert spool.acked == [(1, 2), (3, 5), (6, 7), (8, 10)]
    assert collector.seqs() == list(range(1, 11))


async def test_413_for_a_single_measurement_quarantines_it(collector: Collector, make_queue: QueueFactory) -> None:
    collector.decide = lambda p: (413, {"error": "too large"}, {}) if p["first"] == 2 else (200, {}, {})
    spool = make_queue(measurements(3))
    async with shipper_for(spool, collector.url, batch_max=1) as shipper:
        await drain(shipper, spool)
    assert spool.acked == [(1, 1), (3, 3)]
    assert spool.refused == [(2, 2, "too large even alone: too large")]


async def test_401_keeps_spooling_and_says_why_once(collector: Collector, caplog: pytest.LogCaptureFixture,
                                                   make_queue: QueueFactory) -> None:
    spool = make_queue(measurements(3))
    caplog.set_level(logging.INFO, logger="agent.shipper")
    async with shipper_for(spool, collector.url, credential="wrong") as shipper:
        task = asyncio.create_task(shipper.run())
        await asyncio.sleep(0.5)
        assert spool.depth() == 3 and spool.refused == []
        assert shipper.stats.auth_refused
        shipper.credential = TOKEN  # re-enrolled
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await drain(shipper, spool)
    assert spool.acked == [(1, 3)]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "enroll again" in errors[0] and "stay in the spool" in errors[0]


async def test_503_retry_after_is_honoured(collector: Collector, make_queue: QueueFactory) -> None:
    answers = iter([(503, {"error": "database unavailable"}, {"Retry-After": "1"})])
    collector.decide = lambda p: next(answers, (200, {}, {}))
    spool = make_queue(measurements(2))
    async with shipper_for(spool, collector.url) as shipper:
        await drain(shipper, spool)
    (t503, s1), (t200, s2) = collector.requests
    assert (s1, s2) == (503, 200)
    assert 1.0 <= t200 - t503 < 1.6
    assert spool.acked == [(1, 2)]


async def test_429_with_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("999999") == 3600.0


async def test_collector_down_then_up_delivers_everything(make_queue: QueueFactory) -> None:
    spool = make_queue(measurements(4))
    c = Collector()
    runner, port = await start(c.app())
    await runner.cleanup()  # the port is free again: connection refused
    async with shipper_for(spool, f"http://127.0.0.1:{port}") as shipper:
        task = asyncio.create_task(shipper.run())
        await asyncio.sleep(1.5)
        assert shipper.stats.failures_total >= 1 and spool.depth() == 4
        runner, _ = await start(c.app(), port=port)
        try:
            deadline = time.monotonic() + 10
            while spool.depth() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await runner.cleanup()
    assert c.seqs() == [1, 2, 3, 4]


async def test_clock_offset_from_server_time() -> None:
    c = Collector(skew_ms=600_000)  # the agent's clock is 10 minutes slow
    runner, port = await start(c.app())
    try:
        spool = MemoryQueue()
        async with shipper_for(spool, f"http://127.0.0.1:{port}") as shipper:
            assert await shipper.heartbeat("running")
            assert abs(shipper.clock.offset_ms - 600_000) < 50
            assert await shipper.heartbeat("stopping")
        assert [h["state"] for h in c.heartbeats] == ["running", "stopping"]
    finally:
        await runner.cleanup()


def test_clock_offset_prefers_the_fastest_exchange() -> None:
    clock = ClockOffset()
    clock.update(1000, 1400, 1300)  # slow, asymmetric: offset estimate +100
    clock.update(2000, 2010, 2505)  # fast: +500
    clock.update(3000, 3300, 3050)
    assert clock.offset_ms == 500


async def test_backlog_is_held_to_the_bandwidth_cap(collector: Collector, make_queue: QueueFactory) -> None:
    spool = make_queue(measurements(60, age_s=3600), backlog=True)
    async with shipper_for(spool, collector.url, batch_max=20, backlog_rate=2000) as shipper:
        started = time.monotonic()
        await drain(shipper, spool, limit=30)
        elapsed = time.monotonic() - started
    sent = shipper.stats.backlog_bytes_total
    assert spool.depth() == 0
    assert sent > 500
    assert elapsed >= sent * 2 / 3 / 2000 * 0.9  # ≤ 2,000 bytes/s: the 3rd batch waits for the first two
    live = make_queue(measurements(60))
    async with shipper_for(live, collector.url, batch_max=20, backlog_rate=2000) as shipper:
        started = time.monotonic()
        await drain(shipper, live)
        assert time.monotonic() - started < 0.5  # live data is not capped
        assert shipper.stats.backlog_bytes_total == 0


async def test_https_with_the_pinned_province_ca(tmp_path: Path, make_queue: QueueFactory) -> None:
    pki = make_pki(tmp_path, ["collector.test"], ["127.0.0.1"])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.province_leaf, pki.province_leaf_key)
    c = Collector()
    runner, port = await start(c.app(), server_ctx)
    try:
        ca_pem = Path(pki.province_root).read_text()
        pinned = Credential(f"https://127.0.0.1:{port}", TOKEN, "p", "c", "a", fingerprint(ca_pem), ca_pem)
        spool = make_queue(measurements(2))
        async with shipper_for(spool, pinned.collector, ssl_context=ssl_context(pinned)) as shipper:
            await drain(shipper, spool)
        assert c.seqs() == [1, 2]
        # Another CA (the public-style root) must not be trusted for this server: nothing is sent.
        other = Credential(pinned.collector, TOKEN, "p", "c", "a", None, Path(pki.root_ca).read_text())
        spool = make_queue(measurements(2))
        async with shipper_for(spool, pinned.collector, ssl_context=ssl_context(other)) as shipper:
            task = asyncio.create_task(shipper.run())
            await asyncio.sleep(0.5)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert spool.depth() == 2 and "certificate" in shipper.stats.last_error.lower()
        assert c.seqs() == [1, 2]
    finally:
        await runner.cleanup()


async def test_an_ack_the_spool_cannot_write_is_retried_without_resending_and_shipping_goes_on(
        collector: Collector, caplog: pytest.LogCaptureFixture, make_queue: QueueFactory) -> None:
    caplog.set_level(logging.INFO, logger="agent.shipper")
    spool = make_queue(measurements(6), failures=3)
    async with shipper_for(spool, collector.url, batch_max=3) as shipper:
        task = asyncio.create_task(shipper.run())
        try:
            await asyncio.sleep(0.3)
            assert shipper.stats.spool_failing and spool.depth() == 6  # still stuck on the first ack
            deadline = time.monotonic() + 15
            while spool.depth() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not task.done()  # the failed acks never ended the shipping task
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert spool.acked == [(1, 3), (4, 6)] and spool.ack_calls == 5  # the first ack tried 4 times
    assert collector.seqs() == list(range(1, 7))  # the collector had the batch: it was not sent again
    assert shipper.stats.spool_errors_total == 3 and not shipper.stats.spool_failing
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "disk is full" in errors[0]  # said once per episode


async def test_lost_ranges_ride_along_until_a_batch_carrying_them_is_acknowledged(
        collector: Collector, make_queue: QueueFactory) -> None:
    answers = iter([(503, {"error": "database unavailable"}, {"Retry-After": "0"})])
    attempts: list[dict] = []
    collector.decide = lambda p: attempts.append(p) or next(answers, (200, {}, {}))
    spool = make_queue(measurements(3))
    damage(spool, 1)
    pending = [[1, 1, "damaged spool row: cannot decompress"]]
    async with shipper_for(spool, collector.url) as shipper:
        await drain(shipper, spool)
        assert [a.get("lost") for a in attempts] == [pending, pending]  # also on the 503'd attempt
        assert [b.get("lost") for b in collector.batches] == [pending]
        assert spool.pending_lost() == [] and spool.lost_total == 1  # marked reported only after the 2xx
        assert collector.seqs() == [2, 3]
        spool.append(measurements(1))
        await drain(shipper, spool)
    assert "lost" not in collector.batches[-1]  # optional: absent when nothing was lost
    assert collector.seqs() == [2, 3, 4]


async def test_evicted_ranges_ride_along_and_are_forgotten_once_acknowledged(
        collector: Collector, make_queue: QueueFactory) -> None:
    spool = make_queue(measurements(1))
    assert spool.next_batch(10).first == 1  # in flight: the eviction must take older rows around it
    spool.append(measurements(2000))
    if isinstance(spool, MemoryQueue):
        spool.max_rows = 3
    else:
        spool.max_bytes = 0  # its floor: 64 KiB of rows
    spool.append(measurements(1))  # over the cap: the oldest rows go, but not the one in flight
    evicted = spool.pending_evictions()
    assert len(evicted) == 1 and evicted[0][0] == 2 and spool.dropped_total == evicted[0][1] - 1
    async with shipper_for(spool, collector.url) as shipper:
        await drain(shipper, spool)
    assert collector.batches[0]["evicted"] == [list(r) for r in evicted]
    assert all(b.get("evicted", []) == [] for b in collector.batches[1:])  # omitted when empty
    assert spool.pending_evictions() == []
    delivered = set(collector.seqs())
    assert 1 in delivered and not delivered & {s for a, b in evicted for s in range(a, b + 1)}
    assert sorted(delivered | {s for a, b in evicted for s in range(a, b + 1)}) == list(range(1, 2003))


async def test_a_hostile_retry_after_or_server_time_header_is_ignored_not_fatal(collector: Collector,
                                                                                 make_queue: QueueFactory) -> None:
    # "²" passes str.isdigit() and float("²") raises: this used to end the shipping task for good.
    answers = iter([(503, {"error": "busy"}, {"Retry-After": "²", "X-Server-Time-Ms": "²"})])
    collector.decide = lambda p: next(answers, (200, {}, {}))
    spool = make_queue(measurements(2))
    async with shipper_for(spool, collector.url) as shipper:
        await drain(shipper, spool)
    assert spool.acked == [(1, 2)]
    assert parse_retry_after("²") is None
