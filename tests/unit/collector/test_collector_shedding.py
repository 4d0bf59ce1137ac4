"""Load shedding and the credential cache: past the cap the collector answers 503 + Retry-After before reading
the body; a shed batch resent later is written exactly once; a revoked credential is refused at once (in this
process) or within a second (revoked by another process), despite the cache."""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys

import pytest

import collector.auth as auth_module
from collector.admission import LIVE_WAIT_S, Admission
from collector.app_keys import ADMISSION, AUTH, METRICS
from collector.auth import Auth, AuthError
from collector.db import connect
from collector_helpers import (ROOT, collector_client, config_dict, credential, expected_pairs, make_config,
                               payload, post)
from lab.victoria import Victoria, available

import yaml

needs_vm = pytest.mark.skipif(available() is not None, reason=available() or "")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_gate_admits_up_to_the_cap_then_spreads_the_retries():
    gate = Admission(2, wait_s=0, clock=Clock())
    assert await gate.enter("a") is None and await gate.enter("b") is None
    retries = [await gate.enter(f"x{i}") for i in range(200)]
    assert all(isinstance(r, int) and r >= 1 for r in retries)
    assert retries == sorted(retries) and retries[-1] > retries[0]  # later arrivals are told to come back later
    assert gate.inflight == 2 and gate.waiting == 200


async def test_gate_is_fair_while_agents_wait():
    clock = Clock()
    gate = Admission(1, wait_s=0, clock=clock)
    assert await gate.enter("a") is None
    assert await gate.enter("b") is not None  # b holds a ticket
    gate.leave(0.01)
    assert await gate.enter("a") is not None  # a was just served: it queues behind b although a place is free
    assert await gate.enter("b") is None  # b's turn


async def test_a_waiting_holder_gets_the_place_handed_over():
    clock = Clock()
    gate = Admission(1, wait_s=5.0, clock=clock)
    assert await gate.enter("a") is None
    waiting = asyncio.create_task(gate.enter("b"))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    gate.leave(0.01)
    assert await waiting is None and gate.inflight == 1


async def test_tickets_of_agents_that_never_return_expire():
    clock = Clock()
    gate = Admission(1, wait_s=0, clock=clock)
    assert await gate.enter("a") is None
    assert await gate.enter("gone") is not None
    gate.leave(0.01)
    clock.now += 60
    assert await gate.enter("new") is None and gate.waiting == 0


async def test_live_batches_skip_the_queue_and_have_places_the_backlog_never_takes():
    clock = Clock()
    gate = Admission(4, wait_s=5.0, clock=clock)
    assert gate.live_reserve == 1
    assert [await gate.enter(f"b{i}") for i in range(4)] == [None] * 4  # the backlog fills the cap
    waiting = asyncio.create_task(gate.enter("b4"))  # a backlog batch waiting for a place
    await asyncio.sleep(0.01)
    assert await gate.enter("live-1", live=True) is None  # the live place beyond the cap
    assert gate.inflight == 5
    live_2 = asyncio.create_task(gate.enter("live-2", live=True))  # every place taken: it waits too
    await asyncio.sleep(0.01)
    gate.leave(0.01)  # a backlog batch done: the place goes to the live batch first
    assert await live_2 is None and not waiting.done() and gate.inflight == 5
    gate.leave(0.01)  # a live batch done: its place is not handed to the waiting backlog
    await asyncio.sleep(0.01)
    assert not waiting.done() and gate.inflight == 4
    gate.leave(0.01)  # a backlog batch done: the waiting one takes its place
    assert await waiting is None and gate.inflight == 4
    shed = await gate.enter("b5")
    assert isinstance(shed, int) and gate.waiting == 1  # the backlog is queued ...
    assert await gate.enter("live-3", live=True) is None  # ... live data passes it
    started = asyncio.get_running_loop().time()
    assert await gate.enter("live-4", live=True) == 1  # nothing freed within LIVE_WAIT_S: come back in a second,
    assert asyncio.get_running_loop().time() - started >= LIVE_WAIT_S * 0.9
    assert gate.waiting == 1  # without a ticket in the backlog's round


async def test_over_the_cap_is_503_with_retry_after_before_the_body_is_read(tmp_path, monkeypatch):
    import collector.routes as routes

    read_body = routes.read_body
    reads: list[str] = []

    async def counting_read_body(request, *args):
        reads.append(request.headers.get("Authorization", ""))
        return await read_body(request, *args)
    monkeypatch.setattr(routes, "read_body", counting_read_body)
    async with collector_client(make_config(tmp_path, "http://127.0.0.1:9", max_inflight=1, admission_wait=0)) as client:
        app = client.server.app
        cred = credential(client, agent="shed-01")
        busy = app[ADMISSION]
        assert await busy.enter("someone/else") is None  # the one place is taken
        status, answer, headers = await post(client, cred, payload(1, 5))
        assert status == 503 and int(headers["Retry-After"]) >= 1 and "busy" in answer["error"]
        assert reads == []  # refused before any byte of the body was read
        assert app[METRICS].shed == 1
        async with client.get("/metrics") as response:
            text = await response.text()
        assert "cmon_collector_shed_total 1" in text and "cmon_collector_ingest_inflight 1" in text
        status, _, _ = await post(client, "cmc.bad.credential", payload(1, 5))
        assert status == 401  # authentication still comes first
        live_cred = credential(client, agent="shed-02")
        status, answer, _ = await post(client, live_cred, payload(1, 5), headers={"X-Cmon-Batch": "live"})
        assert status == 503 and "database" in answer["error"]  # past the gate: it is the (absent) database that fails
        assert app[METRICS].shed == 1 and len(reads) == 1


@needs_vm
async def test_a_shed_batch_resent_later_is_written_exactly_once(tmp_path):
    with Victoria(tmp_path / "vm") as vm:
        async with collector_client(make_config(tmp_path, vm.url, max_inflight=1, admission_wait=0)) as client:
            gate = client.server.app[ADMISSION]
            cred = credential(client, agent="shed-02")
            data = payload(1, 20)
            assert await gate.enter("someone/else") is None
            status, _, headers = await post(client, cred, data)
            assert status == 503 and "Retry-After" in headers
            assert vm.rows_inserted() == 0
            gate.leave(0.01)  # the place frees; the agent resends (its ticket is its turn)
            status, answer, _ = await post(client, cred, data)
            assert status == 200 and answer["written"] == 20
            pairs = [(labels, t) for labels, t, _ in vm.samples('{agent="shed-02"}')]
            assert sorted(pairs) == sorted(expected_pairs(data, agent="shed-02"))
            before = vm.rows_inserted()
            status, answer, _ = await post(client, cred, data)  # a second resend (the 200 was lost)
            assert status == 200 and answer["duplicate"] is True and vm.rows_inserted() == before


def test_cached_credential_is_refused_at_once_after_revoke_in_this_process(tmp_path):
    conn = connect(tmp_path / "collector.sqlite")
    try:
        auth = Auth(conn, "ha-tinh")
        cred, who = auth.enroll(auth.create_token("dong-loc", 3600), "quay-01")
        assert auth.authenticate(f"Bearer {cred}") == who
        conn.execute("UPDATE credentials SET province = 'cached'")  # the next check must come from the cache
        assert auth.authenticate(f"Bearer {cred}") == who
        with pytest.raises(AuthError):  # a wrong secret with a cached id is not let through by the cache
            auth.authenticate(f"Bearer {cred.rsplit('.', 1)[0]}.wrong")
        assert auth.revoke("dong-loc/quay-01") == 1
        with pytest.raises(AuthError) as refused:
            auth.authenticate(f"Bearer {cred}")
        assert refused.value.status == 403
    finally:
        conn.close()


def test_cache_entries_expire_after_the_ttl(tmp_path):
    clock = Clock()
    conn = connect(tmp_path / "collector.sqlite")
    try:
        auth = Auth(conn, "ha-tinh", clock=clock)
        cred, who = auth.enroll(auth.create_token("dong-loc", 3600), "quay-01")
        assert auth.authenticate(f"Bearer {cred}") == who
        conn.execute("UPDATE credentials SET revoked_ms = 1, province = 'x'")  # behind the cache's back...
        conn.execute("UPDATE credentials SET revoked_ms = NULL")  # ...leaving the revoked count unchanged
        clock.now += auth_module.CACHE_TTL_S + 0.1
        assert auth.authenticate(f"Bearer {cred}").province == "x"  # re-read from the file
    finally:
        conn.close()


async def test_revoked_by_another_process_is_refused_within_a_second(tmp_path):
    config_path = tmp_path / "collector.yaml"
    config_path.write_text(yaml.safe_dump(config_dict(tmp_path / "state", "http://127.0.0.1:9")))
    async with collector_client(make_config(tmp_path / "state", "http://127.0.0.1:9")) as client:
        cred = credential(client, agent="quay-09")
        raw = gzip.compress(json.dumps({"version": 1, "state": "running"}).encode())
        headers = {"Authorization": f"Bearer {cred}", "Content-Encoding": "gzip"}
        async with client.post("/api/v1/heartbeat", data=raw, headers=headers) as response:
            assert response.status == 200  # now cached
        done = subprocess.run([sys.executable, "-m", "cmon", "collector", "revoke", "-c", str(config_path),
                               "dong-loc/quay-09"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        status = 0
        for _ in range(30):  # the cache notices another process's revocation within REVOKED_POLL_S
            async with client.post("/api/v1/heartbeat", data=raw, headers=headers) as response:
                status = response.status
            if status == 403:
                break
            await asyncio.sleep(0.1)
        assert status == 403
        assert client.server.app[AUTH]._cache == {}
