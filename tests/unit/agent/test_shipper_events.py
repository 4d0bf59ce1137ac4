"""The shipper carries events with the measurements: one batch whose `measurements` and `events` hold every seq
first..last once, resent whole after a 503 and acknowledged once; against a recording stand-in (on the real
SQLite spool and on MemoryQueue) and against the real collector app writing to a real VictoriaMetrics."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
from pathlib import Path

import pytest
from aiohttp import web

from agent.shipper import Shipper
from agent.spool import Spool
from collector_helpers import collector_client, credential, make_config
from core.event import Event
from core.measurement import Measurement
from lab.victoria import Victoria, available
from queue_helpers import RecordingMemoryQueue, RecordingSpool, drain

TOKEN = "s3cret-credential"
IDENTITY = {"province": "ha-tinh", "commune": "dong-loc", "agent": "quay-01"}


@pytest.fixture(params=["spool", "memory"])
def new_queue(request: pytest.FixtureRequest, tmp_path: Path):
    opened: list[Spool] = []

    def make() -> RecordingSpool | RecordingMemoryQueue:
        if request.param == "memory":
            return RecordingMemoryQueue()
        opened.append(RecordingSpool(tmp_path / f"spool-{len(opened)}.db"))
        return opened[-1]

    yield make
    for spool in opened:
        spool.close()


def records(now_ms: int) -> list[Measurement | Event]:
    """m, e, m, e, m: two probe results around a failover and an agent's clean stop."""
    tags = {"service": "dvc", "target": "dvc-web", "probe": "http", "line": "primary", **IDENTITY}
    return [
        Measurement("probe", tags, {"up": 1.0, "rtt_ms": 20.5}, now_ms - 5000),
        Event("failover", {"line": "backup", **IDENTITY}, now_ms - 4000, "primary line down: switched to backup",
              {"from": "vnpt", "down_s": 3.0}),
        Measurement("probe", tags, {"up": 0.0, "rtt_ms": 0.0}, now_ms - 3000, "timeout", "no answer within 10 s"),
        Event("agent_stopped", IDENTITY, now_ms - 2000, "agent stopped cleanly after 42 s",
              {"reason": "stop requested", "uptime_s": 42.0}),
        Measurement("probe", tags, {"up": 1.0, "rtt_ms": 19.0}, now_ms - 1000),
    ]


class StandIn:
    """A collector stand-in: checks the credential, records every ingest attempt, answers what `answers` says."""

    def __init__(self) -> None:
        self.attempts: list[tuple[int, dict]] = []  # (status answered, payload)
        self.answers: list[tuple[int, dict]] = []  # given in order, then 200

    async def ingest(self, request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        data = await request.read()
        payload = json.loads(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        self.attempts.append((status, payload))
        body = {"acked": [payload["first"], payload["last"]]} if status == 200 else {"error": "database unavailable"}
        return web.json_response(body, status=status, headers={"X-Server-Time-Ms": str(int(time.time() * 1000)),
                                                                **headers})


@pytest.fixture
async def stand_in():
    collector = StandIn()
    app = web.Application()
    app.router.add_post("/api/v1/ingest", collector.ingest)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    collector.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield collector
    finally:
        await runner.cleanup()


def wire_seqs(payload: dict) -> list[int]:
    return sorted(r["seq"] for r in payload["measurements"] + payload.get("events", []))


async def test_measurements_and_events_go_in_one_batch_each_seq_once(stand_in: StandIn, new_queue) -> None:
    queue = new_queue()
    sent = records(int(time.time() * 1000))
    assert queue.append(sent) == range(1, 6)
    async with Shipper(queue, stand_in.url, TOKEN, timeout=5) as shipper:
        await drain(shipper, queue, 15.0)
    assert queue.depth() == 0 and queue.acked == [(1, 5)] and queue.refused == []
    ((status, payload),) = stand_in.attempts
    assert status == 200 and (payload["first"], payload["last"]) == (1, 5)
    assert [m["seq"] for m in payload["measurements"]] == [1, 3, 5]  # each list in seq order
    assert [e["seq"] for e in payload["events"]] == [2, 4]
    assert wire_seqs(payload) == [1, 2, 3, 4, 5]  # together: first..last, each once
    assert payload["events"] == [{"seq": 2, **sent[1].to_dict()}, {"seq": 4, **sent[3].to_dict()}]
    assert payload["measurements"][1] == {"seq": 3, **sent[2].to_dict()}
    assert shipper.stats.shipped_total == 5


async def test_after_a_503_the_batch_is_resent_whole_and_acked_once(stand_in: StandIn, new_queue) -> None:
    queue = new_queue()
    assert queue.append(records(int(time.time() * 1000))) == range(1, 6)
    stand_in.answers = [(503, {"Retry-After": "0"})]
    async with Shipper(queue, stand_in.url, TOKEN, timeout=5) as shipper:
        await drain(shipper, queue, 15.0)
    assert [status for status, _ in stand_in.attempts] == [503, 200]
    (_, refused), (_, taken) = stand_in.attempts
    for key in ("spool", "first", "last", "measurements", "events"):
        assert refused[key] == taken[key], key  # the same batch, whole
    assert wire_seqs(taken) == [1, 2, 3, 4, 5]
    assert queue.acked == [(1, 5)] and queue.depth() == 0 and queue.refused == []
    assert shipper.stats.shipped_total == 5 and shipper.stats.failures_total == 1


# -- against the real collector ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    if available() is not None:
        pytest.skip(available())
    with Victoria(tmp_path_factory.mktemp("vm"), retention="30d") as started:
        yield started


async def _metric(client, name: str) -> float:
    async with client.get("/metrics") as response:
        match = re.search(rf"^{name} (\S+)$", await response.text(), re.M)
    assert match, name
    return float(match.group(1))


async def test_the_real_collector_stores_the_events_once_after_a_503(vm: Victoria, tmp_path: Path) -> None:
    queue = RecordingSpool(tmp_path / "spool.db")
    try:
        now = int(time.time() * 1000)
        sent = records(now)
        assert queue.append(sent) == range(1, 6)
        (tmp_path / "state").mkdir()
        async with collector_client(make_config(tmp_path / "state", vm.url, retry_after=1, timeout=2.0)) as client:
            cred = credential(client, agent="ship-events-01")
            url = str(client.make_url("/"))
            async with Shipper(queue, url, cred, timeout=10) as shipper:
                vm.stop()  # the database is down: the collector answers 503 with Retry-After
                task = asyncio.create_task(shipper.run())
                try:
                    deadline = time.monotonic() + 15
                    while shipper.stats.last_status != 503 and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    assert shipper.stats.last_status == 503 and queue.depth() == 5 and queue.acked == []
                    vm.start()
                    deadline = time.monotonic() + 20
                    while queue.depth() and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            assert queue.depth() == 0 and queue.acked == [(1, 5)] and queue.refused == []
            assert shipper.stats.failures_total >= 1

            async with client.get("/api/v1/events?commune=dong-loc") as response:
                rows = [r for r in (await response.json())["events"] if r["agent"] == "ship-events-01"]
            assert [(r["kind"], r["time_ms"], r["text"], r["attributes"], r["tags"]) for r in rows] == [
                ("agent_stopped", now - 2000, sent[3].text, dict(sent[3].attributes), {}),
                ("failover", now - 4000, sent[1].text, dict(sent[1].attributes), {"line": "backup"})]
            assert await _metric(client, "cmon_collector_events_total") == 2.0

            async with client.get("/api/v1/results?failing=1") as response:
                failing = [r for r in (await response.json())["results"] if r["agent"] == "ship-events-01"]
            assert failing == []  # the last probe result of the series was ok

        events = {(dict(labels)["kind"], t, v) for labels, t, v in
                  vm.samples('{__name__="event_count",agent="ship-events-01"}')}
        assert events == {("failover", now - 4000, 1.0), ("agent_stopped", now - 2000, 1.0)}
        up = sorted((t, v) for labels, t, v in vm.samples('{__name__="probe_up",agent="ship-events-01"}'))
        assert up == [(now - 5000, 1.0), (now - 3000, 0.0), (now - 1000, 1.0)]
    finally:
        queue.close()
