"""Tests for agent.shipper against a real aiohttp collector stand-in on 127.0.0.1 (docs/wire.md's codes)."""

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
from core.tls import fingerprint
from agent.shipper import Batch, ClockOffset, Shipper, parse_retry_after
from lab.pki import make_pki
from core.measurement import Measurement

TOKEN = "s3cret-credential"


class MemorySpool:
    """A spool stand-in with the calls the shipper makes (the real one is tested in test_spool.py)."""

    spool_id = "5f0c3c7e-0000-4000-8000-000000000001"

    def __init__(self, measurements: list[Measurement]) -> None:
        self.rows = {seq: m for seq, m in enumerate(measurements, start=1)}
        self.acked: list[tuple[int, int]] = []
        self.quarantined: list[tuple[int, int, str]] = []

    def next_batch(self, max_rows: int) -> Batch | None:
        seqs = sorted(self.rows)[:max_rows]
        if not seqs:
            return None
        seqs = [s for i, s in enumerate(seqs) if s == seqs[0] + i]  # contiguous
        return Batch(seqs[0], seqs[-1], [(s, self.rows[s]) for s in seqs])

    def _drop(self, first: int, last: int) -> None:
        for seq in range(first, last + 1):
            del self.rows[seq]

    def ack(self, first: int, last: int) -> None:
        self.acked.append((first, last))
        self._drop(first, last)

    def quarantine(self, first: int, last: int, reason: str) -> None:
        self.quarantined.append((first, last, reason))
        self._drop(first, last)


class Collector:
    """A small collector: checks the bearer token and gzip, records batches, answers what `decide` says."""

    def __init__(self, skew_ms: int = 0) -> None:
        self.skew_ms = skew_ms
        self.batches: list[dict] = []
        self.requests: list[tuple[float, int]] = []  # (monotonic, status)
        self.heartbeats: list[dict] = []
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


def shipper_for(spool: MemorySpool, url: str, **kw) -> Shipper:
    return Shipper(spool, spool.next_batch, url, kw.pop("credential", TOKEN), timeout=5, **kw)


async def drain(shipper: Shipper, spool: MemorySpool, limit: float = 10.0) -> None:
    task = asyncio.create_task(shipper.run())
    try:
        deadline = time.monotonic() + limit
        while spool.rows and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_ok_acks_every_batch_once_in_order(collector: Collector) -> None:
    spool = MemorySpool(measurements(25))
    async with shipper_for(spool, collector.url, batch_max=10) as shipper:
        await drain(shipper, spool)
    assert spool.rows == {}
    assert spool.acked == [(1, 10), (11, 20), (21, 25)]
    assert collector.seqs() == list(range(1, 26))
    first = collector.batches[0]
    assert (first["version"], first["spool"], first["first"], first["last"]) == (1, spool.spool_id, 1, 10)
    assert first["measurements"][0] == {"seq": 1, **measurements(1)[0].to_dict(), "time": first["measurements"][0]["time"]}
    assert shipper.stats.shipped_total == 25


async def test_400_quarantines_the_batch_and_moves_on(collector: Collector) -> None:
    collector.decide = lambda p: (400, {"error": "field up is a string"}, {}) if p["first"] == 1 else (200, {}, {})
    spool = MemorySpool(measurements(6))
    async with shipper_for(spool, collector.url, batch_max=3) as shipper:
        await drain(shipper, spool)
    assert spool.quarantined == [(1, 3, "field up is a string")]
    assert spool.acked == [(4, 6)]
    assert shipper.stats.quarantined_total == 3


async def test_413_splits_until_accepted(collector: Collector) -> None:
    collector.decide = lambda p: (413, {"error": "too large"}, {}) if len(p["measurements"]) > 3 else (200, {}, {})
    spool = MemorySpool(measurements(10))
    async with shipper_for(spool, collector.url, batch_max=10) as shipper:
        await drain(shipper, spool)
    assert spool.acked == [(1, 2), (3, 5), (6, 7), (8, 10)]
    assert collector.seqs() == list(range(1, 11))


async def test_413_for_a_single_measurement_quarantines_it(collector: Collector) -> None:
    collector.decide = lambda p: (413, {"error": "too large"}, {}) if p["first"] == 2 else (200, {}, {})
    spool = MemorySpool(measurements(3))
    async with shipper_for(spool, collector.url, batch_max=1) as shipper:
        await drain(shipper, spool)
    assert spool.acked == [(1, 1), (3, 3)]
    assert spool.quarantined == [(2, 2, "too large even alone: too large")]


async def test_401_keeps_spooling_and_says_why_once(collector: Collector, caplog: pytest.LogCaptureFixture) -> None:
    spool = MemorySpool(measurements(3))
    caplog.set_level(logging.INFO, logger="agent.shipper")
    async with shipper_for(spool, collector.url, credential="wrong") as shipper:
        task = asyncio.create_task(shipper.run())
        await asyncio.sleep(0.5)
        assert len(spool.rows) == 3 and spool.quarantined == []
        assert shipper.stats.auth_refused
        shipper.credential = TOKEN  # re-enrolled
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await drain(shipper, spool)
    assert spool.acked == [(1, 3)]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "enroll again" in errors[0] and "stay in the spool" in errors[0]


async def test_503_retry_after_is_honoured(collector: Collector) -> None:
    answers = iter([(503, {"error": "database unavailable"}, {"Retry-After": "1"})])
    collector.decide = lambda p: next(answers, (200, {}, {}))
    spool = MemorySpool(measurements(2))
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


async def test_collector_down_then_up_delivers_everything() -> None:
    spool = MemorySpool(measurements(4))
    c = Collector()
    runner, port = await start(c.app())
    await runner.cleanup()  # the port is free again: connection refused
    async with shipper_for(spool, f"http://127.0.0.1:{port}") as shipper:
        task = asyncio.create_task(shipper.run())
        await asyncio.sleep(1.5)
        assert shipper.stats.failures_total >= 1 and len(spool.rows) == 4
        runner, _ = await start(c.app(), port=port)
        try:
            deadline = time.monotonic() + 10
            while spool.rows and time.monotonic() < deadline:
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
        spool = MemorySpool(measurements(1))
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


async def test_backlog_is_held_to_the_bandwidth_cap(collector: Collector) -> None:
    spool = MemorySpool(measurements(60, age_s=3600))
    async with shipper_for(spool, collector.url, batch_max=20, backlog_rate=2000) as shipper:
        started = time.monotonic()
        await drain(shipper, spool, limit=30)
        elapsed = time.monotonic() - started
    sent = shipper.stats.backlog_bytes_total
    assert spool.rows == {}
    assert sent > 500
    assert elapsed >= sent * 2 / 3 / 2000 * 0.9  # ≤ 2,000 bytes/s: the 3rd batch waits for the first two
    live = MemorySpool(measurements(60))
    async with shipper_for(live, collector.url, batch_max=20, backlog_rate=2000) as shipper:
        started = time.monotonic()
        await drain(shipper, live)
        assert time.monotonic() - started < 0.5  # live data is not capped
        assert shipper.stats.backlog_bytes_total == 0


async def test_https_with_the_pinned_province_ca(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, ["collector.test"], ["127.0.0.1"])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.province_leaf, pki.province_leaf_key)
    c = Collector()
    runner, port = await start(c.app(), server_ctx)
    try:
        ca_pem = Path(pki.province_root).read_text()
        pinned = Credential(f"https://127.0.0.1:{port}", TOKEN, "p", "c", "a", fingerprint(ca_pem), ca_pem)
        spool = MemorySpool(measurements(2))
        async with shipper_for(spool, pinned.collector, ssl_context=ssl_context(pinned)) as shipper:
            await drain(shipper, spool)
        assert c.seqs() == [1, 2]
        # Another CA (the public-style root) must not be trusted for this server: nothing is sent.
        other = Credential(pinned.collector, TOKEN, "p", "c", "a", None, Path(pki.root_ca).read_text())
        spool = MemorySpool(measurements(2))
        async with shipper_for(spool, pinned.collector, ssl_context=ssl_context(other)) as shipper:
            task = asyncio.create_task(shipper.run())
            await asyncio.sleep(0.5)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert len(spool.rows) == 2 and "certificate" in shipper.stats.last_error.lower()
        assert c.seqs() == [1, 2]
    finally:
        await runner.cleanup()


class StuckDiskSpool(MemorySpool):
    """The spool on a full disk: its first `failures` acks raise SQLite's real 'database or disk is full' error."""

    def __init__(self, measurements: list[Measurement], failures: int) -> None:
        super().__init__(measurements)
        self.failures = failures
        self.ack_calls = 0

    def ack(self, first: int, last: int) -> None:
        self.ack_calls += 1
        if self.ack_calls <= self.failures:
            raise sqlite3.OperationalError("database or disk is full")
        super().ack(first, last)


async def test_an_ack_the_spool_cannot_write_is_retried_without_resending_and_shipping_goes_on(
        collector: Collector, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.shipper")
    spool = StuckDiskSpool(measurements(6), failures=3)
    async with shipper_for(spool, collector.url, batch_max=3) as shipper:
        task = asyncio.create_task(shipper.run())
        try:
            await asyncio.sleep(0.3)
            assert shipper.stats.spool_failing and len(spool.rows) == 6  # still stuck on the first ack
            deadline = time.monotonic() + 15
            while spool.rows and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not task.done()  # the failed acks never ended the shipping task
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert spool.acked == [(1, 3), (4, 6)]
    assert collector.seqs() == list(range(1, 7))  # the collector had the batch: it was not sent again
    assert shipper.stats.spool_errors_total == 3 and not shipper.stats.spool_failing
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "disk is full" in errors[0]  # said once per episode


async def test_lost_ranges_ride_along_until_a_batch_carrying_them_is_acknowledged(collector: Collector) -> None:
    pending = [[3, 3, "damaged spool row: cannot decompress"]]
    reported: list[list] = []
    answers = iter([(503, {"error": "database unavailable"}, {"Retry-After": "0"})])
    collector.decide = lambda p: next(answers, (200, {}, {}))
    spool = MemorySpool(measurements(2))
    async with shipper_for(spool, collector.url, lost=lambda: pending,
                           lost_reported=lambda r: reported.extend(r)) as shipper:
        await drain(shipper, spool)
        assert [b.get("lost") for b in collector.batches] == [pending]  # also on the 503'd attempt
        assert reported == pending  # only after the 2xx
        pending.clear()
        spool.rows[3] = measurements(1)[0]
        await drain(shipper, spool)
    assert "lost" not in collector.batches[-1]  # optional: absent when nothing was lost


async def test_a_hostile_retry_after_or_server_time_header_is_ignored_not_fatal(collector: Collector) -> None:
    # "²" passes str.isdigit() and float("²") raises: this used to end the shipping task for good.
    answers = iter([(503, {"error": "busy"}, {"Retry-After": "²", "X-Server-Time-Ms": "²"})])
    collector.decide = lambda p: next(answers, (200, {}, {}))
    spool = MemorySpool(measurements(2))
    async with shipper_for(spool, collector.url) as shipper:
        await drain(shipper, spool)
    assert spool.acked == [(1, 2)]
    assert parse_retry_after("²") is None
