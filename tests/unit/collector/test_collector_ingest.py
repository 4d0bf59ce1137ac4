"""Collector ingest against a real VictoriaMetrics: exact samples, idempotent resends, refusals with reasons."""

from __future__ import annotations

import gzip
import json
import math
import time

import pytest

from collector_helpers import (TAGS, collector_client, credential, expected_pairs, make_config, payload, post)
from lab.victoria import Victoria, available

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")


def pairs(vm: Victoria, agent: str) -> set:
    return {(labels, t) for labels, t, _ in vm.samples(f'{{agent="{agent}"}}')}


async def test_batch_lands_exactly_and_a_resend_writes_nothing(vm, client):
    cred = credential(client, agent="happy-01")
    data = payload(1, 50)
    status, answer, headers = await post(client, cred, data)
    assert status == 200, answer
    assert answer["acked"] == [1, 50] and answer["duplicate"] is False and answer["written"] == 50
    assert abs(int(headers["X-Server-Time-Ms"]) - time.time() * 1000) < 5000
    assert pairs(vm, "happy-01") == expected_pairs(data, agent="happy-01")
    values = {(dict(labels)["__name__"], t): v for labels, t, v in vm.samples('{agent="happy-01"}')}
    assert values[("probe_rtt_ms", data["measurements"][3]["time"])] == 15.5

    before = vm.rows_inserted()
    status, answer, _ = await post(client, cred, data)
    assert status == 200 and answer["duplicate"] is True and answer["written"] == 0
    assert vm.rows_inserted() == before
    assert len(vm.samples('{agent="happy-01"}')) == 150  # one sample per (series, ts)


async def test_overlapping_resend_writes_only_the_new_part(vm, client):
    cred = credential(client, agent="overlap-01")
    data = payload(1, 20)
    assert (await post(client, cred, {**data, "last": 10, "measurements": data["measurements"][:10]}))[0] == 200
    before = vm.rows_inserted()
    status, answer, _ = await post(client, cred, data)
    assert status == 200 and answer["written"] == 10
    assert vm.rows_inserted() - before == 10 * 3
    assert pairs(vm, "overlap-01") == expected_pairs(data, agent="overlap-01")


async def test_another_communes_tags_are_overridden(vm, client):
    cred = credential(client, commune="dong-loc", agent="spoof-01")
    data = payload(1, 3, tags={**TAGS, "province": "nghe-an", "commune": "other", "agent": "victim"})
    assert (await post(client, cred, data))[0] == 200
    assert vm.samples('{agent="victim"}') == [] and vm.samples('{commune="other"}') == []
    assert pairs(vm, "spoof-01") == expected_pairs(data, agent="spoof-01")


async def test_tag_injection_is_stored_literally_without_extra_series(vm, client):
    cred = credential(client, agent="inject-01")
    evil = 'x,agent=victim up=0 1\\'
    data = payload(1, 2, tags={**TAGS, "target": evil, "line": "a=b c\\"})
    status, answer, _ = await post(client, cred, data)
    assert status == 200, answer
    series = {dict(labels)["__name__"]: dict(labels) for labels, _ in pairs(vm, "inject-01")}
    assert series["probe_up"]["target"] == evil and series["probe_up"]["line"] == "a=b c\\"
    assert set(series) == {"probe_up", "probe_rtt_ms", "probe_result_code"}
    assert vm.samples('{agent="victim"}') == []

    newline = payload(1, 1, tags={**TAGS, "target": "x\nprobe,agent=victim up=0"})
    status, answer, _ = await post(client, cred, newline)
    assert status == 400 and "control character" in answer["error"]
    assert vm.samples('{agent="victim"}') == []


@pytest.mark.parametrize("fields, reason", [
    ({"up": "1"}, "str"), ({"up": True}, "bool"), ({"up": float("nan")}, "NaN"),
    ({"up": float("inf")}, "Infinity"), ({"Up-Time": 1.0}, "field name"),
])
async def test_non_numeric_fields_are_refused(vm, client, fields, reason):
    cred = credential(client, agent="fields-01")
    status, answer, _ = await post(client, cred, payload(1, 1, fields=fields))
    assert status == 400 and reason in answer["error"], answer
    assert vm.samples('{agent="fields-01"}') == []


@pytest.mark.parametrize("offset_ms, reason", [(-31 * 86_400_000, "retention"), (3600_000, "future")])
async def test_timestamps_outside_the_database_window_are_refused(vm, client, offset_ms, reason):
    cred = credential(client, agent="time-01")
    status, answer, _ = await post(client, cred, payload(1, 1, t0=int(time.time() * 1000) + offset_ms))
    assert status == 400 and reason in answer["error"], answer


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d.update(version=2), "version"),
    (lambda d: d["measurements"][1].update(seq=7), "seq"),
    (lambda d: d.update(last=9), "first..last"),
    (lambda d: d["measurements"][0]["tags"].update(hostname="pc"), "tag key"),
    (lambda d: d["measurements"][0].update(name="cpu"), "name"),
    (lambda d: d["measurements"][0]["tags"].update(target=""), "1 to"),
])
async def test_contract_violations_are_refused_with_a_reason(vm, client, mutate, reason):
    cred = credential(client, agent="schema-01")
    data = payload(1, 3)
    mutate(data)
    status, answer, _ = await post(client, cred, data)
    assert status == 400 and reason in answer["error"], answer


async def test_garbled_json_and_gzip_are_400(client):
    cred = credential(client, agent="garbled-01")
    status, answer, _ = await post(client, cred, b'{"version": 1, "measurements": [', compress=True)
    assert status == 400 and "not JSON" in answer["error"]
    headers = {"Authorization": f"Bearer {cred}", "Content-Encoding": "gzip"}
    async with client.post("/api/v1/ingest", data=b"not gzip at all", headers=headers) as response:
        assert response.status == 400 and "gzip" in (await response.json())["error"]
    async with client.post("/api/v1/ingest", data=gzip.compress(b"{}" * 100)[:20], headers=headers) as response:
        assert response.status == 400


async def test_oversized_bodies_are_413(vm, tmp_path):
    async with collector_client(make_config(tmp_path, vm.url, max_body=10_000, max_decompressed=50_000)) as client:
        cred = credential(client, agent="big-01")
        status, answer, _ = await post(client, cred, payload(1, 400), compress=False)  # ~60 kB plain
        assert status == 413, answer
        status, answer, _ = await post(client, cred, payload(1, 400))  # small gzipped, large inflated
        assert status == 413 and "decompresses" in answer["error"]
        status, answer, _ = await post(client, cred, payload(1, 40))
        assert status == 200, answer


async def test_credentials_are_checked_before_the_body(client):
    cred = credential(client, agent="auth-01")
    data = payload(1, 1)
    assert (await post(client, None, data))[0] == 401
    assert (await post(client, "cmc.0000000000000000.nope", data))[0] == 401
    assert (await post(client, cred[:-2] + "xx", data))[0] == 401
    headers = {"Authorization": "Bearer cmc.1.2", "Content-Encoding": "gzip"}
    async with client.post("/api/v1/ingest", data=b"\x1f\x8b garbage", headers=headers) as response:
        assert response.status == 401  # not 400: the body was never looked at
    client.server.app[__import__("collector.app_keys").app_keys.AUTH].revoke("auth-01")
    status, answer, _ = await post(client, cred, data)
    assert status == 403 and "revoked" in answer["error"]


async def test_series_cap_per_agent(vm, tmp_path):
    async with collector_client(make_config(tmp_path, vm.url, max_series_per_agent=3)) as client:
        cred = credential(client, agent="cap-01")
        data = payload(1, 4)
        for i, m in enumerate(data["measurements"]):
            m["tags"]["target"] = f"t{i}"
        status, answer, _ = await post(client, cred, data)
        assert status == 400 and "at most 3" in answer["error"]
        assert vm.samples('{agent="cap-01"}') == []


async def test_heartbeat_registry_and_metrics(vm, client):
    cred = credential(client, commune="dong-loc", agent="hb-01")
    assert (await post(client, cred, payload(1, 2)))[0] == 200
    info = {"version": "0.2.0", "config_version": "sha256:def", "spool_rows": 7, "dropped_total": 3,
            "clock_offset_ms": 250.0}
    status, answer, _ = await post(client, cred, {"version": 1, "state": "stopping", "agent": info},
                                   path="/api/v1/heartbeat")
    assert status == 200 and "server_time_ms" in answer
    async with client.get("/api/v1/agents") as response:
        rows = {r["agent"]: r for r in (await response.json())["agents"]}
    row = rows["hb-01"]
    assert (row["commune"], row["province"], row["version"], row["state"], row["stopped_cleanly"]) == \
        ("dong-loc", "ha-tinh", "0.2.0", "stopping", 1)
    assert (row["spool_rows"], row["dropped_total"], row["clock_skew_ms"], row["egress"]) == (7, 3, 250.0, "127.0.0.1")
    assert (await post(client, cred, {"version": 1, "state": "asleep"}, path="/api/v1/heartbeat"))[0] == 400
    async with client.get("/metrics") as response:
        text = await response.text()
    assert 'cmon_collector_requests_total{endpoint="/api/v1/ingest",status="200"} 1' in text
    assert "cmon_collector_lines_written_total 2" in text
    assert "cmon_collector_samples_written_total 6" in text


def test_payload_json_is_what_the_agent_sends():
    """The helper's payload matches the wire (and so the agent's shipper): seq + Measurement.to_dict()."""
    from core.measurement import Measurement

    m = Measurement("probe", TAGS, {"up": 1.0}, 1_700_000_000_000)
    assert set({"seq": 1, **m.to_dict()}) <= {"seq", "name", "tags", "fields", "time", "result", "detail"}
    assert not math.isnan(json.loads(json.dumps(m.to_dict()))["fields"]["up"])
