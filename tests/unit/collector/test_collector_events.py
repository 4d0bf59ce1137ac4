"""Events end to end at the collector, against a real VictoriaMetrics and the real SQLite state file: batches
mixing measurements and events land once (VM's `event_count`, the events table, /api/v1/events), refusals name
their problem, the fast path agrees with the slow one, each series' latest result/detail (/api/v1/results), all of
it surviving a restart, and the events' retention."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.request
import uuid

import pytest

from collector.app_keys import EVENTS
from collector.auth import Identity
from collector.config import parse_config
from collector.db import connect
from collector.decode import _slow, decode_ingest, identity_suffix
from collector.events import EventStore
from collector.validate import EventIn, PayloadError, Rules, check_ingest, parse_json
from collector_helpers import (TAGS, CollectorProcess, post_to_a_crashing_collector, body, collector_client, config_dict, credential, expected_pairs, http_post, make_config, post)
from core.wire import MAX_DETAIL
from lab.victoria import Victoria, available

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")

RULES = Rules(frozenset({"service", "target", "probe", "line", "mount", "interface", "battery", "version"}),
              30 * 86_400_000, 600_000, 5000, 200)
IDENT = identity_suffix("ha-tinh", "dong-loc", "quay-01")
SPOOFED = {"province": "nghe-an", "commune": "other", "agent": "victim"}  # the credential says otherwise
STOP_TEXT = "agent stopped cleanly after 42 s (a service stop or shutdown, not a failure)"
STOP_ATTRIBUTES = {"reason": "stop requested (service stop, shutdown, SIGTERM)", "uptime_s": 42.5}


def _now_ms() -> int:
    return int(time.time() * 1000)


def measurement(seq: int, t: int, **extra) -> dict:
    return {"seq": seq, "name": "probe", "tags": dict(TAGS),
            "fields": {"up": 1.0, "rtt_ms": 12.5 + seq, "result_code": 0.0}, "time": t, "result": "ok", **extra}


def event(seq: int, t: int, kind: str = "agent_stopped", **extra) -> dict:
    return {"seq": seq, "kind": kind, "tags": {**SPOOFED, "line": "backup"}, "time": t, "text": STOP_TEXT,
            "attributes": dict(STOP_ATTRIBUTES), **extra}


def mixed(pattern: str, first: int = 1, spool: str | None = None, t0: int | None = None) -> dict:
    """Return an ingest payload numbered from `first`: one measurement per `m` and one event per `e` of `pattern`
    (e.g. "mem": seqs 1 m, 2 e, 3 m); the record at seq s has time t0 + s seconds."""
    t0 = t0 if t0 is not None else _now_ms() - 600_000
    seqs = range(first, first + len(pattern))
    return {
        "version": 1, "spool": spool or str(uuid.uuid4()), "first": first, "last": first + len(pattern) - 1,
        "measurements": [measurement(s, t0 + s * 1000) for s, c in zip(seqs, pattern) if c == "m"],
        "events": [event(s, t0 + s * 1000) for s, c in zip(seqs, pattern) if c == "e"],
        "agent": {"version": "0.1.0"},
    }


def event_samples(vm: Victoria, agent: str) -> list[tuple[dict, int, float]]:
    return [(dict(labels), t, v) for labels, t, v in vm.samples(f'{{__name__="event_count",agent="{agent}"}}')]


async def get_json(client, path: str) -> dict:
    async with client.get(path) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def events_of(client, agent: str, query: str = "") -> list[dict]:
    rows = (await get_json(client, f"/api/v1/events?{query}"))["events"]
    return [r for r in rows if r["agent"] == agent]


async def events_total(client) -> float:
    async with client.get("/metrics") as response:
        text = await response.text()
    match = re.search(r"^cmon_collector_events_total (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


def stored_events(data_dir, agent: str) -> list[tuple]:
    with sqlite3.connect(data_dir / "collector.sqlite") as db:
        return db.execute("SELECT commune, agent, spool, seq, kind FROM events WHERE agent = ? ORDER BY seq",
                          (agent,)).fetchall()


# -- a batch with measurements and events ------------------------------------------------------------------------


async def test_interleaved_measurements_and_events_land_once(vm, client, tmp_path):
    cred = credential(client, agent="ev-mixed-01")
    data = mixed("mem")
    t_event = data["events"][0]["time"]
    status, answer, _ = await post(client, cred, data)
    assert status == 200, answer
    assert answer["acked"] == [1, 3] and answer["written"] == 3 and answer["duplicate"] is False

    identity = {"province": "ha-tinh", "commune": "dong-loc", "agent": "ev-mixed-01"}
    assert event_samples(vm, "ev-mixed-01") == [
        ({"__name__": "event_count", "kind": "agent_stopped", "line": "backup", **identity}, t_event, 1.0)]
    measured = {(labels, t) for labels, t, _ in vm.samples('{agent="ev-mixed-01"}')
                if dict(labels)["__name__"] != "event_count"}
    assert measured == expected_pairs(data, agent="ev-mixed-01")
    assert {t for _, t in measured} == {data["measurements"][0]["time"], data["measurements"][1]["time"]}
    assert vm.samples('{agent="victim"}') == [] and vm.samples('{commune="other"}') == []

    rows = await events_of(client, "ev-mixed-01", "commune=dong-loc&kind=agent_stopped")
    assert rows == [{"commune": "dong-loc", "agent": "ev-mixed-01", "kind": "agent_stopped", "time_ms": t_event,
                     "tags": {"line": "backup"}, "text": STOP_TEXT, "attributes": STOP_ATTRIBUTES}]
    assert await events_of(client, "ev-mixed-01", "commune=other") == []
    assert await events_of(client, "ev-mixed-01", "kind=agent_started") == []
    assert await events_of(client, "ev-mixed-01", f"since_ms={t_event + 1}") == []
    assert await events_total(client) == 1.0
    assert stored_events(tmp_path, "ev-mixed-01") == [("dong-loc", "ev-mixed-01", data["spool"], 2, "agent_stopped")]

    status, answer, _ = await post(client, cred, data)  # the answer was lost: the agent sends it again
    assert status == 200 and answer["duplicate"] is True and answer["written"] == 0, answer
    assert len(await events_of(client, "ev-mixed-01")) == 1
    assert stored_events(tmp_path, "ev-mixed-01") == [("dong-loc", "ev-mixed-01", data["spool"], 2, "agent_stopped")]
    assert await events_total(client) == 1.0
    assert len(event_samples(vm, "ev-mixed-01")) == 1


async def test_an_overlapping_resend_stores_only_its_new_events(vm, client, tmp_path):
    cred = credential(client, agent="ev-overlap-01")
    data = mixed("ememe")
    head = {**data, "last": 3, "measurements": data["measurements"][:1], "events": data["events"][:2]}
    assert (await post(client, cred, head))[0] == 200
    assert await events_total(client) == 2.0
    status, answer, _ = await post(client, cred, data)
    assert status == 200 and answer["written"] == 2, answer
    assert await events_total(client) == 3.0
    assert [r[3] for r in stored_events(tmp_path, "ev-overlap-01")] == [1, 3, 5]
    assert len(event_samples(vm, "ev-overlap-01")) == 3


async def test_an_events_only_batch_is_accepted(vm, client):
    cred = credential(client, agent="ev-only-01")
    t0 = _now_ms() - 300_000
    data = {**mixed("ee", first=7, t0=t0), "evicted": [[1, 6]]}
    data["events"][0].update(kind="failover", text="primary line down: switched to backup", attributes={"from": "vnpt"})
    data["events"][1].update(kind="failback", text="primary line back", attributes={})
    status, answer, _ = await post(client, cred, data)
    assert status == 200 and answer["acked"] == [7, 8] and answer["written"] == 2, answer
    rows = await events_of(client, "ev-only-01")
    assert [(r["kind"], r["time_ms"], r["text"], r["attributes"]) for r in rows] == [  # newest first
        ("failback", t0 + 8000, "primary line back", {}),
        ("failover", t0 + 7000, "primary line down: switched to backup", {"from": "vnpt"})]
    assert sorted((s[0]["kind"], s[1]) for s in event_samples(vm, "ev-only-01")) == [
        ("failback", t0 + 8000), ("failover", t0 + 7000)]


# -- refusals ------------------------------------------------------------------------------------------------------


def _set_event(**changes):
    return lambda d: d["events"][0].update(changes)


@pytest.mark.parametrize("pattern, mutate, reason", [
    ("mem", _set_event(kind="meteor_strike"), "event kind 'meteor_strike' is not one of"),
    ("mem", lambda d: d["measurements"][0].update(name="cpu_temp"), "name 'cpu_temp' is not one of"),
    ("mme", _set_event(seq=4), "within 1..3"),  # outside first..last
    ("mem", _set_event(seq=1), "seq 1 where 2 was expected"),  # the seq of a measurement
    ("emm", _set_event(seq=3), "seq 2 where 1 was expected"),
    ("eme", lambda d: d["events"][1].update(seq=1), "events: seqs '[1, 1]' must be increasing"),  # one seq twice
    ("mem", _set_event(attributes={"flag": True}), "attribute 'flag' must be text or a finite number"),
    ("mem", _set_event(attributes={"big": 2**53 + 2}), "attribute 'big' must be text or a finite number"),
    ("mem", _set_event(attributes={"big": 1e300}), "attribute 'big' must be text or a finite number"),
    ("mem", _set_event(attributes={"nested": {"a": 1.0}}), "attribute 'nested' must be text or a finite number"),
    ("mem", _set_event(attributes={"list": [1.0]}), "attribute 'list' must be text or a finite number"),
    ("mem", _set_event(attributes={"Bad-Name": 1.0}), "attribute name 'Bad-Name'"),
    ("mem", _set_event(attributes={f"a{i}": 1.0 for i in range(33)}), "33 attributes: at most 32"),
    ("mem", _set_event(text="line one\nline two"), "events[0].text must be printable"),
    ("mem", _set_event(text="x" * 1001), "events[0].text must have 0 to 1000 characters"),
    ("mem", _set_event(severity="high"), "events[0]: unknown keys 'severity'"),
    ("mem", _set_event(time=_now_ms() + 3_600_000), "in the future"),
    ("mem", lambda d: d["events"][0]["tags"].update(hostname="pc"), "tag key 'hostname' is not allowed"),
    ("mem", _set_event(seq=True), "seq"),
    ("ee", lambda d: d.update(events=[]), "not both empty"),
    ("mem", lambda d: d.update(last=4), "first..last (1..4) must number the 3 measurements and events"),
])
async def test_refusals_name_the_problem(vm, client, tmp_path, pattern, mutate, reason):
    cred = credential(client, agent="ev-refused-01")
    data = mixed(pattern)
    mutate(data)
    status, answer, _ = await post(client, cred, data)
    assert status == 400 and reason in answer["error"], answer
    assert vm.samples('{agent="ev-refused-01"}') == []
    assert stored_events(tmp_path, "ev-refused-01") == []
    assert await events_total(client) == 0.0


async def test_a_nan_attribute_is_refused(vm, client):
    cred = credential(client, agent="ev-nan-01")
    data = mixed("me")
    data["events"][0]["attributes"] = {"loss": float("nan")}  # json.dumps writes NaN, which JSON does not have
    status, answer, _ = await post(client, cred, data)
    assert status == 400 and "NaN" in answer["error"], answer


async def test_an_event_seq_that_is_a_list_is_a_400(client):
    cred = credential(client, agent="ev-listseq-01")
    data = mixed("me")
    data["events"][0]["seq"] = [2]
    raw, headers = body(data)
    async with client.post("/api/v1/ingest", data=raw, headers={**headers, "Authorization": f"Bearer {cred}"}) as r:
        status, text = r.status, await r.text()
    assert status == 400 and "seq" in json.loads(text)["error"], (status, text)  # today: 500


# -- the fast path and the slow path agree -------------------------------------------------------------------------


def _valid_payloads() -> list[dict]:
    t0 = _now_ms() - 600_000
    out = [mixed("mem", t0=t0), mixed("ee", first=5, t0=t0), mixed("emmeem", first=100, t0=t0)]
    odd = mixed("mem", t0=t0)
    odd["events"][0].update(tags={"line": "a b,c=d", "service": "dvc", **SPOOFED}, attributes={
        "n": 3, "big": 2**53, "text": "ünïcode ✓", "neg": -1.5}, text="")
    out.append(odd)
    bare = mixed("em", t0=t0)
    for key in ("tags", "text", "attributes"):  # all optional on the wire
        del bare["events"][0][key]
    out.append(bare)
    return out


@pytest.mark.parametrize("index", range(5))
def test_fast_path_gives_the_slow_paths_lines_for_events(index):
    data = _valid_payloads()[index]
    body = json.dumps(data, separators=(",", ":")).encode()
    now = _now_ms()
    fast, slow = decode_ingest(body, RULES, IDENT, now), _slow(body, RULES, IDENT, now)
    assert fast.lines == slow.lines
    assert len(fast.lines) == data["last"] - data["first"] + 1
    assert fast.samples == slow.samples and fast.series == slow.series
    assert fast.events == slow.events and fast.results == slow.results
    assert (fast.first, fast.last) == (slow.first, slow.last) == (data["first"], data["last"])
    checked = check_ingest(json.loads(body), RULES, now)
    assert [e.seq for e in checked.events] == [e["seq"] for e in data["events"]]
    for e in data["events"]:  # the event's line sits at its seq, with the identity from the credential
        line = fast.lines[e["seq"] - data["first"]].decode()
        assert line.startswith("event,") and f"kind={e['kind']}" in line
        assert line.endswith(f",province=ha-tinh,commune=dong-loc,agent=quay-01 count=1.0 {e['time']}\n")
        assert "nghe-an" not in line and "victim" not in line


def test_the_fast_path_itself_handles_events():
    """A JSON integer field keeps its text only on the fast path: proof it did not fall back to the slow one."""
    data = mixed("mem")
    data["measurements"][0]["fields"]["whole"] = 3
    body = json.dumps(data, separators=(",", ":")).encode()
    fast, slow = decode_ingest(body, RULES, IDENT), _slow(body, RULES, IDENT, None)
    assert b",whole=3 " in fast.lines[0] and b",whole=3.0 " in slow.lines[0]
    assert fast.lines[1:] == slow.lines[1:] and fast.events == slow.events and len(fast.events) == 1


@pytest.mark.parametrize("pattern, mutate", [
    ("mem", _set_event(kind="meteor_strike")),
    ("mem", lambda d: d["measurements"][0].update(name="cpu_temp")),
    ("mme", _set_event(seq=4)),
    ("mem", _set_event(seq=1)),
    ("eem", lambda d: d["events"][1].update(seq=1)),
    ("eme", lambda d: d["events"].reverse()),
    ("mem", _set_event(attributes={"flag": True})),
    ("mem", _set_event(attributes={"big": 2**53 + 2})),
    ("mem", _set_event(attributes={"nested": {"a": 1}})),
    ("mem", _set_event(attributes={"none": None})),
    ("mem", _set_event(text="a\nb")),
    ("mem", _set_event(text=5)),
    ("mem", _set_event(severity="high")),
    ("mem", _set_event(time=0)),
    ("mem", _set_event(time=2.5)),
    ("mem", lambda d: d["events"][0]["tags"].update(line=7)),
    ("mem", lambda d: d["events"][0]["tags"].update(line="")),
    ("mem", lambda d: d["events"][0].pop("kind")),
    ("mem", lambda d: d["events"][0].pop("time")),
    ("ee", lambda d: d.pop("measurements")),
    ("me", lambda d: d.update(events={"seq": 2})),
    ("me", lambda d: d.update(events=["x"])),
])
def test_fast_path_refuses_bad_events_with_the_slow_paths_reason(pattern, mutate):
    data = mixed(pattern)
    mutate(data)
    body = json.dumps(data, separators=(",", ":")).encode()
    now = _now_ms()
    with pytest.raises(PayloadError) as slow:
        check_ingest(parse_json(body), RULES, now)
    with pytest.raises(PayloadError) as fast:
        decode_ingest(body, RULES, IDENT, now)
    assert str(fast.value) == str(slow.value)


# -- the latest result of each series ------------------------------------------------------------------------------


async def results(client, query: str, agent: str) -> list[dict]:
    rows = (await get_json(client, f"/api/v1/results?{query}"))["results"]
    return [r for r in rows if r["agent"] == agent]


def probe_batch(first: int, spool: str, t: int, result: str, detail: str | None = None) -> dict:
    m = measurement(first, t, result=result)
    m["fields"] = {"up": float(result == "ok"), "result_code": float(result != "ok")}
    if detail is not None:
        m["detail"] = detail
    return {"version": 1, "spool": spool, "first": first, "last": first, "measurements": [m], "agent": {}}


async def test_the_latest_result_and_detail_of_each_series(vm, client):
    cred = credential(client, agent="ev-latest-01")
    spool, t0 = str(uuid.uuid4()), _now_ms() - 600_000
    detail = "no answer within 10 s"
    assert (await post(client, cred, probe_batch(1, spool, t0, "timeout", detail)))[0] == 200
    failing = await results(client, "failing=1", "ev-latest-01")
    assert failing == [{"commune": "dong-loc", "agent": "ev-latest-01", "name": "probe", "tags": TAGS,
                        "time_ms": t0, "result": "timeout", "detail": detail}]
    assert await results(client, "commune=dong-loc&failing=1", "ev-latest-01") == failing
    assert await results(client, "commune=other", "ev-latest-01") == []

    assert (await post(client, cred, probe_batch(2, spool, t0 + 30_000, "ok")))[0] == 200  # a later ok replaces it
    assert await results(client, "failing=1", "ev-latest-01") == []
    latest = await results(client, "", "ev-latest-01")
    assert [(r["time_ms"], r["result"], r["detail"]) for r in latest] == [(t0 + 30_000, "ok", None)]

    # an older measurement (a backlog arriving late) does not replace the newer one
    assert (await post(client, cred, probe_batch(3, spool, t0 + 10_000, "refused", "connection refused")))[0] == 200
    latest = await results(client, "", "ev-latest-01")
    assert [(r["time_ms"], r["result"]) for r in latest] == [(t0 + 30_000, "ok")]
    assert await results(client, "failing=1", "ev-latest-01") == []


@pytest.mark.parametrize("detail, kept", [
    ("first line\nsecond line\tand a tab", "first line second line and a tab"),
    ("x" * 2000, "x" * MAX_DETAIL),
    ("é" * 700 + "\r\n", "é" * MAX_DETAIL),
])
async def test_a_detail_is_cleaned_and_cut_not_refused(vm, client, detail, kept):
    cred = credential(client, agent="ev-detail-01")
    status, answer, _ = await post(client, cred, probe_batch(1, str(uuid.uuid4()), _now_ms() - 60_000, "timeout",
                                                             detail))
    assert status == 200, answer
    (row,) = await results(client, "failing=1", "ev-detail-01")
    assert row["detail"] == kept and row["result"] == "timeout"


# -- a restart -----------------------------------------------------------------------------------------------------


async def test_events_and_latest_results_survive_a_restart(vm, tmp_path):
    config = make_config(tmp_path, vm.url)
    data = mixed("mem")
    data["measurements"][1].update(result="timeout", detail="no answer within 10 s")
    async with collector_client(config) as client:
        cred = credential(client, agent="ev-restart-01")
        assert (await post(client, cred, data))[0] == 200
        before_events = await events_of(client, "ev-restart-01")
        before_results = await results(client, "", "ev-restart-01")
        assert len(before_events) == 1 and [r["result"] for r in before_results] == ["timeout"]
    async with collector_client(config) as client:  # a new app on the same data_dir
        assert await events_of(client, "ev-restart-01") == before_events
        assert await results(client, "", "ev-restart-01") == before_results
        assert await results(client, "failing=1", "ev-restart-01") == before_results
        status, answer, _ = await post(client, cred, data)  # the credential and the acks survived too
        assert status == 200 and answer["duplicate"] is True, answer
        assert await events_total(client) == 0.0 and len(await events_of(client, "ev-restart-01")) == 1
    assert len(stored_events(tmp_path, "ev-restart-01")) == 1


# Kill the collector with SIGKILL right after the batch's events are stored, before its range is acknowledged
# (collector/routes.py stores them first: an acknowledged event is never lost); the agent then sends it again.
def _crash_then_resend(tmp_path, vm: Victoria, agent: str) -> tuple[dict, tuple[int, dict], float]:
    """Send a batch to a collector that dies before acknowledging it, then to a restarted one; return the payload,
    the restarted collector's answer and its cmon_collector_events_total afterwards."""
    data = mixed("mem")
    raw, headers = post_to_a_crashing_collector(tmp_path, vm.url, agent, data)
    assert len(stored_events(tmp_path / "state", agent)) == 1  # stored before the crash
    restarted = CollectorProcess(tmp_path, vm.url).start()
    try:
        status, answer, _ = http_post(restarted.url + "/api/v1/ingest", raw, headers)
        with urllib.request.urlopen(restarted.url + "/metrics", timeout=10) as response:
            match = re.search(r"^cmon_collector_events_total (\S+)$", response.read().decode(), re.M)
    finally:
        restarted.stop()
    assert match
    return data, (status, answer), float(match.group(1))


def test_an_event_stored_before_a_crash_is_kept_once_when_its_batch_is_resent(vm, tmp_path):
    data, (status, answer), _ = _crash_then_resend(tmp_path, vm, "ev-crash-01")
    assert status == 200 and answer["acked"] == [1, 3] and answer["written"] == 3, answer  # not acked: sent again
    assert stored_events(tmp_path / "state", "ev-crash-01") == [
        ("dong-loc", "ev-crash-01", data["spool"], 2, "agent_stopped")]
    samples = event_samples(vm, "ev-crash-01")  # VM's dedup keeps one sample
    assert [(s[1], s[2]) for s in samples] == [(data["events"][0]["time"], 1.0)]


def test_a_resent_event_already_stored_is_not_counted_again(vm, tmp_path):
    _, (status, _), events_total_after = _crash_then_resend(tmp_path, vm, "ev-crash-02")
    assert status == 200
    assert events_total_after == 0.0  # the restarted collector stored no new event


@pytest.mark.parametrize("query", ["since_ms=99999999999999999999", "since_ms=-99999999999999999999"])
async def test_an_out_of_range_since_ms_is_a_400(client, query):
    async with client.get(f"/api/v1/events?{query}") as response:
        status, text = response.status, await response.text()
    assert status == 400 and "since_ms" in json.loads(text)["error"], (status, text)


async def test_events_query_limits(vm, client):
    cred = credential(client, agent="ev-limit-01")
    data = mixed("eeeee")
    assert (await post(client, cred, data))[0] == 200
    rows = await events_of(client, "ev-limit-01", "limit=2")
    assert [r["time_ms"] for r in rows] == [data["events"][4]["time"], data["events"][3]["time"]]  # newest first
    async with client.get("/api/v1/events?limit=ten") as response:
        assert response.status == 400 and "limit" in (await response.json())["error"]


# -- retention -----------------------------------------------------------------------------------------------------


def _event_in(seq: int, t: int) -> EventIn:
    return EventIn(seq, "drill", {}, t, f"drill {seq}", {})


def test_prune_deletes_only_the_events_older_than_the_retention(tmp_path):
    conn = connect(tmp_path / "collector.sqlite")
    try:
        store = EventStore(conn, retention_s=86_400.0)
        now = 1_800_000_000_000
        day = 86_400_000
        times = {1: now - 40 * day, 2: now - day - 1, 3: now - day, 4: now - day + 1, 5: now - 60_000}
        who = Identity("ha-tinh", "dong-loc", "quay-01")
        assert store.add(who, "s1", [_event_in(s, t) for s, t in times.items()]) == 5
        assert store.add(Identity("ha-tinh", "ky-anh", "quay-01"), "s1", [_event_in(9, now - 2 * day)]) == 1
        assert store.prune(now_ms=now) == 3  # seqs 1 and 2 and ky-anh's: strictly older than now - 1 day
        assert sorted(r["time_ms"] for r in store.query(since_ms=0)) == [times[3], times[4], times[5]]
        assert store.prune(now_ms=now) == 0
        assert store.add(who, "s1", [_event_in(5, now)]) == 0  # still there: INSERT OR IGNORE
    finally:
        conn.close()


async def test_the_configured_retention_is_the_stores(vm, tmp_path):
    config = parse_config({**config_dict(tmp_path, vm.url), "event_retention": "2d"})
    async with collector_client(config) as client:
        store = client.server.app[EVENTS]
        assert store.retention_s == 2 * 86_400.0
        cred = credential(client, agent="ev-retention-01")
        now = _now_ms()
        old, recent = mixed("e", first=1, t0=now - 3 * 86_400_000), mixed("e", first=2, t0=now - 86_400_000)
        old["spool"] = recent["spool"]
        assert (await post(client, cred, old))[0] == 200
        assert (await post(client, cred, recent))[0] == 200
        assert store.prune() == 1
        assert [r["time_ms"] for r in await events_of(client, "ev-retention-01")] == [recent["events"][0]["time"]]


def test_a_reason_is_cleaned_of_every_unprintable_character_not_only_controls():
    from collector.validate import clean_text

    # zero-width space, a right-to-left override (it would reverse the text shown after it), a newline, a tab
    assert clean_text("no answer\u200b within\u202e 10 s\n(timeout)\t", 500) == "no answer  within  10 s (timeout) "
    assert clean_text("x" * 600, 500) == "x" * 500 and clean_text(5, 500) is None
