"""Hostile and malformed inputs to a collector with a real VictoriaMetrics: every one a 4xx with a reason, none a
500, none written, none able to stop another agent's data or the fleet registry; the wire's additions (`lost`
ranges, the agent's health and tasks) recorded and shown."""

from __future__ import annotations

import gzip
import json
import logging
import sqlite3
import time

import pytest

from collector.acks import Acks
from collector.app_keys import ACKS, REGISTRY
from collector.auth import Identity
from collector.db import connect
from collector.registry import Registry
from core.wire import MAX_SEQ, MAX_VALUE
from collector_helpers import TAGS, credential, expected_pairs, payload, post
from lab.victoria import available

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")

HB = "/api/v1/heartbeat"


async def raw_post(client, cred: str | None, raw: bytes, path: str = "/api/v1/ingest", gzipped: bool = True):
    """POST bytes as they are (no JSON encoding on our side); return (status, parsed answer or text)."""
    headers = {"Content-Encoding": "gzip"} if gzipped else {}
    if cred:
        headers["Authorization"] = f"Bearer {cred}"
    async with client.post(path, data=gzip.compress(raw) if gzipped else raw, headers=headers) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


def batch_text(data: dict) -> str:
    """Return the payload as the JSON text an agent would send (surrogates become \\udXXX escapes)."""
    return json.dumps(data)


def heartbeat(agent: dict | None = None, **extra) -> dict:
    return {"version": 1, "state": "running", "agent": agent or {}, **extra}


def persisted(client) -> dict[str, dict]:
    """Flush the registry and return the rows the state file holds, by agent."""
    registry = client.server.app[REGISTRY]
    registry.flush()
    conn = registry.conn
    columns = [r[1] for r in conn.execute("PRAGMA table_info(agents)")]
    return {row[2]: dict(zip(columns, row)) for row in conn.execute("SELECT * FROM agents")}


# -- unencodable and control characters --------------------------------------------------------------------------

@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "a\\ud800b", "\\udc00\\ud800"])
async def test_a_lone_surrogate_in_a_heartbeat_is_400_and_the_registry_keeps_persisting(client, escape):
    """The hostile tester's case: a 200, then no registry row of ANY agent persisted again, SIGTERM exit 1."""
    good, bad = credential(client, agent="good-01"), credential(client, agent="bad-01")
    raw = ('{"version": 1, "state": "running", "agent": {"version": "%s"}}' % escape).encode()
    status, answer = await raw_post(client, bad, raw, HB)
    assert status == 400 and "agent.version" in answer["error"] and "surrogate" in answer["error"], answer
    assert (await post(client, good, heartbeat({"version": "0.2.0"}), path=HB))[0] == 200
    rows = persisted(client)
    assert rows["good-01"]["version"] == "0.2.0" and "bad-01" not in rows


@pytest.mark.parametrize("raw_value", [b"\\ud800", b"\\udbff\\u0041", b"\xed\xa0\x80", b"\\u0085", b"x\\u001fy",
                                       b"\\u007f"])
async def test_unencodable_or_control_tag_values_are_400_not_500(vm, client, raw_value):
    """Escaped and raw (CESU) surrogates, C1 and C0 controls, DEL: refused with a reason (the agent moves on)."""
    cred = credential(client, agent="tags-01")
    text = batch_text(payload(1, 2)).replace('"ioffice-web"', '"web-' + "X" * 3 + '"', 1)
    raw = text.encode().replace(b"XXX", raw_value)
    status, answer = await raw_post(client, cred, raw)
    assert status == 400, answer
    assert "UTF-8" in answer["error"] or "control character" in answer["error"], answer
    assert vm.samples('{agent="tags-01"}') == []


@pytest.mark.parametrize("key, value, reason", [
    ("version", "0.1\n", "agent.version"), ("version", "\u2028", "agent.version"), ("version", "v" * 101, "agent.version"),
    ("version", 5, "agent.version"), ("config_version", ["sha"], "agent.config_version"),
    ("spool_rows", -1, "agent.spool_rows"), ("spool_rows", "12", "agent.spool_rows"),
    ("dropped_total", True, "agent.dropped_total"), ("clock_offset_ms", "fast", "agent.clock_offset_ms"),
    ("health", "bad", "agent.health"), ("health", None, "agent.health"),
    ("tasks", [], "agent.tasks"), ("tasks", {"Ship": {"state": "ok", "restarts": 0}}, "task name"),
    ("tasks", {"shipper": {"state": "dead", "restarts": 0}}, "state"),
    ("tasks", {"shipper": {"state": "ok", "restarts": -1}}, "restarts"),
    ("tasks", {"shipper": {"state": "ok", "restarts": 0, "error": "x" * 301}}, "error"),
    ("tasks", {"shipper": {"state": "failed", "restarts": 1, "error": "Traceback\n  boom"}}, "error"),
    ("tasks", {f"t_{chr(97 + i)}": {"state": "ok", "restarts": 0} for i in range(17)}, "at most 16"),
    ("task_restarts_total", 1.5, "agent.task_restarts_total"), ("lost_total", 2**63, "agent.lost_total"),
    ("disk_free_bytes", -5, "agent.disk_free_bytes"),
])
async def test_bad_known_keys_of_the_agent_block_are_400_on_ingest_and_heartbeat(vm, client, key, value, reason):
    cred = credential(client, agent="block-01")
    data = payload(1, 1)
    data["agent"][key] = value
    status, answer, _ = await post(client, cred, data)
    assert status == 400 and reason in answer["error"], answer
    status, answer, _ = await post(client, cred, heartbeat({key: value}), path=HB)
    assert status == 400 and reason in answer["error"], answer
    assert vm.samples('{agent="block-01"}') == []
    assert "block-01" not in persisted(client)


async def test_unknown_keys_are_ignored_for_newer_agents(vm, client):
    """Forward compatibility: unknown keys of the payload and of the agent block (any shape) are not refused."""
    cred = credential(client, agent="newer-01")
    data = payload(1, 2)
    data["agent"].update(future={"a": [1, {"b": None}]}, also="\x00")
    data["future_key"] = {"x": [1, 2, 3]}
    status, answer, _ = await post(client, cred, data)
    assert status == 200 and answer["written"] == 2, answer
    assert (await post(client, cred, heartbeat({"future": [[1]]}, extra_key=1), path=HB))[0] == 200
    assert "future" not in json.dumps(persisted(client)["newer-01"])


# -- nesting, numbers, types --------------------------------------------------------------------------------------

def deep(levels: int, opener: str = "[") -> str:
    closer = {"[": "]", "{": "}"}[opener]
    inner = "1" if opener == "[" else ""
    if opener == "{":
        return '{"a":' * levels + "1" + "}" * levels
    return opener * levels + inner + closer * levels


@pytest.mark.parametrize("path", ["/api/v1/ingest", HB, "/api/v1/enroll"])
@pytest.mark.parametrize("levels", [17, 900, 20_000])
async def test_deep_nesting_is_400_before_any_parser_recurses(client, path, levels):
    """Deeper than 16 levels anywhere → 400 with the reason, also on the unauthenticated enrollment endpoint."""
    cred = credential(client, agent="deep-01")
    for inner in (deep(levels), deep(levels, "{")):
        raw = ('{"version": 1, "state": "running", "token": "t", "agent_id": "x", "agent": {"x": %s}}' % inner).encode()
        status, answer = await raw_post(client, None if path.endswith("enroll") else cred, raw, path)
        if len(raw) > 64_000 and path != "/api/v1/ingest":
            assert status == 413  # heartbeat and enroll bodies are small
            continue
        assert status == 400 and "nests deeper than 16" in answer["error"], (path, levels, answer)


async def test_nesting_up_to_16_is_parsed_and_brackets_in_strings_do_not_count(vm, client):
    cred = credential(client, agent="nest-01")
    data = payload(1, 1, tags={**TAGS, "target": "[[[[[[[[[[[[[[[[[[[[ ]]]]"})
    data["agent"]["future"] = json.loads(deep(14))  # 16 with the payload and the agent block
    status, answer, _ = await post(client, cred, data)
    assert status == 200, answer
    data = payload(2, 1)
    data["agent"]["future"] = json.loads(deep(15))
    status, answer, _ = await post(client, cred, data)
    assert status == 400 and "nests deeper" in answer["error"]


@pytest.mark.parametrize("first, count", [(2**63, 1), (2**63 - 1, 2), (2**64 + 5, 3), (10**30, 1)])
async def test_seqs_past_2_63_are_400_and_nothing_is_written(vm, client, first, count):
    """Such a seq was written to VM, then 503 forever: the acknowledgement store holds 64-bit integers."""
    cred = credential(client, agent="seq-01")
    status, answer, _ = await post(client, cred, payload(first, count))
    assert status == 400 and str(MAX_SEQ) in answer["error"], answer
    assert vm.samples('{agent="seq-01"}') == []


async def test_the_largest_seq_is_acknowledged(vm, client):
    cred = credential(client, agent="seqmax-01")
    data = payload(MAX_SEQ - 1, 2)
    data["evicted"] = [[1, MAX_SEQ - 2]]
    status, answer, _ = await post(client, cred, data)
    assert status == 200 and answer["acked"] == [MAX_SEQ - 1, MAX_SEQ], answer
    acks = client.server.app[ACKS]
    assert acks.gaps("dong-loc/seqmax-01", data["spool"]) == []
    assert (await post(client, cred, data))[1]["duplicate"] is True


@pytest.mark.parametrize("bad", [[[0, 5]], [[5, 2**63]], [[1, 2, 3]], [[1]], [["1", 2]], [[1.0, 2]], "all",
                                 [[1, 2]] * 10_001])
async def test_bad_evicted_ranges_are_400(client, bad):
    cred = credential(client, agent="ev-01")
    data = payload(100, 1)
    data["evicted"] = bad
    status, answer, _ = await post(client, cred, data)
    assert status == 400 and "evicted" in answer["error"], answer


@pytest.mark.parametrize("name", [[], {}, ["probe"], None, 1])
async def test_a_measurement_name_of_any_type_is_400(client, name):
    """Found by the fuzzer: a list as `name` raised TypeError (unhashable) in the slow path: a 500."""
    cred = credential(client, agent="name-01")
    data = payload(1, 2)
    data["measurements"][1]["name"] = name
    status, answer, _ = await post(client, cred, data)
    assert status == 400 and "measurements[1]: name" in answer["error"], answer


@pytest.mark.parametrize("version", [True, 1.0, "1", [1], {"v": 1}, None, 2, 2**70])
async def test_version_must_be_the_integer_1(client, version):
    cred = credential(client, agent="ver-01")
    data = payload(1, 1)
    data["version"] = version
    status, answer, _ = await post(client, cred, data)
    assert status == 400 and "version" in answer["error"], answer
    status, answer, _ = await post(client, cred, {**heartbeat(), "version": version}, path=HB)
    assert status == 400 and "version" in answer["error"], answer
    status, answer, _ = await post(client, None, {"version": version, "token": "t", "agent_id": "q"},
                                   path="/api/v1/enroll")
    assert status == 400, answer


@pytest.mark.parametrize("value", [MAX_VALUE * 2, -1e16, 1e300, 1.7976931348623157e308, 2**53 + 2])
async def test_field_values_past_2_53_are_400(vm, client, value):
    cred = credential(client, agent="huge-01")
    status, answer, _ = await post(client, cred, payload(1, 3, fields={"up": 1.0, "rx_bytes": value}))
    assert status == 400 and "2^53" in answer["error"], answer
    assert vm.samples('{agent="huge-01"}') == []


async def test_values_up_to_2_53_are_stored_exactly_beside_3_decimal_values(vm, client):
    """The range the collector accepts is one VM keeps exactly, also for the other samples of the block."""
    cred = credential(client, agent="range-01")
    values = [12.345, 0.001, 3.0, 99.5, MAX_VALUE, -MAX_VALUE, 123456.789, 2.0**53 - 1]
    data = payload(1, len(values))
    for m, v in zip(data["measurements"], values):
        m["fields"] = {"big": v}
    status, answer, _ = await post(client, cred, data)
    assert status == 200, answer
    stored = [v for _, _, v in sorted(vm.samples('{agent="range-01"}'), key=lambda s: s[1])]
    assert stored == values


def test_vm_rounds_the_other_samples_of_a_block_beside_a_larger_value(vm):
    """Why the limit is 2^53: measured on the real VM (a change of VM's encoding would show here)."""
    t0 = int(time.time() * 1000) - 600_000
    others = [12.345, 0.001, 3.0]
    cases = {"at_2_53": MAX_VALUE, "at_1e16": 1e16, "at_1e19": 1e19}
    vm.write("".join(f"vmrange,c={name} f={v!r} {t0 + i}\n"
                     for name, big in cases.items() for i, v in enumerate(others + [big])))
    time.sleep(1.2)
    got = {s["metric"]["c"]: s["values"][:3] for s in vm.export('{__name__="vmrange_f"}')}
    assert got["at_2_53"] == others  # exact
    assert got["at_1e16"] == [12.34, 0, 3]  # a decimal gone, 0.001 → 0
    assert got["at_1e19"] == [10, 0, 0]


async def test_field_names_and_spool_ids_cannot_end_in_a_newline(vm, client):
    """`$` in a regex matches before a final newline: `up\\n` was accepted and VM dropped the line (200, lost)."""
    cred = credential(client, agent="nl-01")
    status, answer, _ = await post(client, cred, payload(1, 1, fields={"up\n": 1.0}))
    assert status == 400 and "field name" in answer["error"]
    status, answer, _ = await post(client, cred, payload(1, 1, spool="abc\n"))
    assert status == 400 and "spool" in answer["error"]
    status, answer, _ = await post(client, None, {"version": 1, "token": "cmt.a.b", "agent_id": "quay-01\n"},
                                   path="/api/v1/enroll")
    assert status == 400, answer


# -- credentials and enrollment ----------------------------------------------------------------------------------

async def test_undecodable_credentials_and_tokens_are_401_or_400_not_500(client):
    """A header's bytes that are not ASCII (aiohttp keeps them as surrogate escapes) cannot reach SQLite."""
    for header in ("Bearer cmc.\udcff\udcfe.x", "Bearer cmc.ab.\u00e9", "Bearer \udcff"):
        async with client.post(HB, data=b"{}", headers={"Authorization": header.encode("utf-8", "surrogateescape")
                                                        .decode("latin-1")}) as response:
            assert response.status == 401, await response.text()
    for token in ("cmt.\ud800.x", "cmt.ab.\ud800", "cmt.ab.\u00e9\u00e9", "cmt.a\nb.c"):
        status, answer, _ = await post(client, None, {"version": 1, "token": token, "agent_id": "q"},
                                       path="/api/v1/enroll")
        assert status in (400, 401) and "error" in answer, (token, answer)


async def test_a_bad_hostname_is_refused_before_the_token_is_spent(client):
    auth = client.server.app[__import__("collector.app_keys").app_keys.AUTH]
    token = auth.create_token("dong-loc", 3600)
    for hostname in ("pc\n01", "\ud800", "h" * 201, 5):
        status, answer, _ = await post(client, None, {"version": 1, "token": token, "agent_id": "q-01",
                                                      "hostname": hostname}, path="/api/v1/enroll")
        assert status == 400 and "hostname" in answer["error"], answer
    status, answer, _ = await post(client, None, {"version": 1, "token": token, "agent_id": "q-01",
                                                  "hostname": "Quầy 01"}, path="/api/v1/enroll")
    assert status == 200 and answer["agent"] == "q-01"
    assert persisted(client)["q-01"]["hostname"] == "Quầy 01"


# -- the registry: one agent's row never blocks another's ---------------------------------------------------------

def test_a_row_the_file_cannot_take_is_refused_alone_and_shutdown_still_flushes(tmp_path, caplog):
    """Defence in depth behind validation: values SQLite cannot bind go nowhere, the other rows are written."""
    conn = connect(tmp_path / "collector.sqlite")
    registry = Registry(conn)
    good, bad, huge = (Identity("ha-tinh", "dong-loc", name) for name in ("good-01", "bad-01", "huge-01"))
    registry.seen(good, {"version": "0.1.0"}, "10.0.0.1")
    assert registry.flush() == 1
    registry.seen(bad, {"version": "\ud800"}, "10.0.0.2")  # as before validation existed
    registry.seen(huge, {"lost_total": 2**64}, "10.0.0.3")
    registry.seen(good, {"version": "0.2.0"}, "10.0.0.1")
    with caplog.at_level(logging.ERROR, "collector.registry"):
        assert registry.flush() == 1
    assert registry.refused == 2 and "bad-01" in caplog.text and "huge-01" in caplog.text
    assert {r["agent"] for r in registry.agents()} == {"good-01"}  # the refused rows are forgotten (never stored)
    assert registry.flush() == 0  # and not retried forever
    registry.seen(bad, {"version": "0.1.0"}, "10.0.0.2")  # the agent's next, valid, request
    assert registry.flush() == 1
    rows = {r[0]: r[1] for r in conn.execute("SELECT agent, version FROM agents")}
    assert rows == {"good-01": "0.2.0", "bad-01": "0.1.0"}
    conn.close()


def test_an_older_state_file_gains_the_new_columns(tmp_path):
    conn = connect(tmp_path / "collector.sqlite")
    conn.executescript("""
        CREATE TABLE agents (province TEXT NOT NULL, commune TEXT NOT NULL, agent TEXT NOT NULL, hostname TEXT,
            version TEXT, config_version TEXT, enrolled_ms INTEGER, last_seen_ms INTEGER, state TEXT,
            stopped_cleanly INTEGER, clock_skew_ms REAL, spool_rows REAL, dropped_total REAL, egress TEXT,
            PRIMARY KEY (commune, agent));
        INSERT INTO agents (province, commune, agent, version) VALUES ('ha-tinh', 'dong-loc', 'old-01', '0.0.9');
    """)
    registry = Registry(conn)
    assert registry.agents()[0]["version"] == "0.0.9" and registry.agents()[0]["health"] is None
    registry.seen(Identity("ha-tinh", "dong-loc", "old-01"), {"health": "degraded", "disk_free_bytes": 5}, None)
    registry.flush()
    conn.close()
    again = Registry(connect(tmp_path / "collector.sqlite"))
    row = again.agents()[0]
    assert (row["version"], row["health"], row["disk_free_bytes"]) == ("0.0.9", "degraded", 5)
    again.conn.close()


# -- the wire's additions: lost ranges, health and tasks -----------------------------------------------------------

async def test_lost_ranges_are_recorded_counted_once_logged_and_close_the_gaps(vm, client, caplog):
    cred = credential(client, agent="lost-01")
    data = payload(20, 5)
    data["evicted"] = [[1, 4]]
    data["lost"] = [[5, 9, "spool page unreadable (database disk image is malformed)"], [12, 19, "row checksum"]]
    with caplog.at_level(logging.WARNING, "collector.routes"):
        status, answer, _ = await post(client, cred, data)
    assert status == 200 and answer["written"] == 5, answer
    assert "lost 13 measurements" in caplog.text and "row checksum" in caplog.text
    acks = client.server.app[ACKS]
    assert acks.gaps("dong-loc/lost-01", data["spool"]) == [(10, 11)]  # only what nobody explained
    assert acks.lost("dong-loc/lost-01", data["spool"]) == [
        (5, 9, "spool page unreadable (database disk image is malformed)"), (12, 19, "row checksum")]
    assert (await post(client, cred, data))[1]["duplicate"] is True  # resent with the same report
    more = payload(25, 1, spool=data["spool"])
    more["lost"] = [[10, 11, "row checksum"]]
    assert (await post(client, cred, more))[0] == 200
    assert acks.gaps("dong-loc/lost-01", data["spool"]) == []
    async with client.get("/metrics") as response:
        text = await response.text()
    assert "cmon_collector_lost_seqs_total 15" in text and "cmon_collector_evicted_seqs_total 4" in text
    async with client.get("/api/v1/agents") as response:
        row = next(r for r in (await response.json())["agents"] if r["agent"] == "lost-01")
    assert row["lost_seqs"] == 15
    durable = Acks(sqlite3.connect(client.server.app[ACKS].conn.execute("PRAGMA database_list").fetchone()[2]))
    assert durable.lost("dong-loc/lost-01", data["spool"]) == [
        (5, 9, "spool page unreadable (database disk image is malformed)"), (10, 19, "row checksum")]


@pytest.mark.parametrize("lost, reason", [
    ([[0, 3, "x"]], "lost range"), ([[3, 2, "x"]], "lost range"), ([[1, 2**63, "x"]], "lost range"),
    ([[1, 2]], "[first, last, reason]"), ([[1, 2, ""]], "reason"), ([[1, 2, "a\nb"]], "reason"),
    ([[1, 2, "\ud800"]], "reason"), ([[1, 2, "r" * 201]], "reason"), ([[1, 2, 7]], "reason"),
    ({"1": 2}, "lost must be a list"), ([[1, 2, "x"]] * 10_001, "lost must be a list"),
])
async def test_bad_lost_entries_are_400(vm, client, lost, reason):
    cred = credential(client, agent="badlost-01")
    data = payload(100, 1)
    data["lost"] = lost
    status, answer, _ = await post(client, cred, data)
    assert status == 400 and reason in answer["error"], answer
    assert vm.samples('{agent="badlost-01"}') == []


async def test_health_and_tasks_are_stored_and_shown(client):
    cred = credential(client, agent="health-01")
    other = credential(client, agent="health-02")
    tasks = {"shipper": {"state": "restarting", "restarts": 3, "error": "ConnectionResetError: peer closed"},
             "scheduler": {"state": "ok", "restarts": 0}, "host_sampler": {"state": "failed", "restarts": 9,
                                                                        "error": "", "since_ms": 5}}
    info = {"version": "0.3.0", "health": "degraded", "tasks": tasks, "task_restarts_total": 12, "lost_total": 4,
            "disk_free_bytes": 1_234_567_890}
    assert (await post(client, cred, payload(1, 1) | {"agent": info}))[0] == 200
    assert (await post(client, other, heartbeat({"health": "ok"}), path=HB))[0] == 200
    async with client.get("/api/v1/agents") as response:
        rows = {r["agent"]: r for r in (await response.json())["agents"]}
    row = rows["health-01"]
    assert (row["health"], row["task_restarts_total"], row["lost_total"], row["disk_free_bytes"]) == \
        ("degraded", 12, 4, 1_234_567_890)
    del tasks["host_sampler"]["since_ms"]  # unknown keys of a task are not kept
    assert row["tasks"] == tasks and rows["health-02"]["health"] == "ok"
    async with client.get("/metrics") as response:
        assert "cmon_collector_agents_degraded 1" in await response.text()
    assert (await post(client, cred, heartbeat({"health": "ok"}), path=HB))[0] == 200
    async with client.get("/metrics") as response:
        assert "cmon_collector_agents_degraded 0" in await response.text()
    stored = persisted(client)["health-01"]
    assert json.loads(stored["tasks"]) == tasks and stored["health"] == "ok"


async def test_a_hostile_agent_does_not_stop_a_good_one(vm, client):
    """After every kind of refusal above from one credential, another agent's batch lands exactly."""
    hostile, good = credential(client, agent="hostile-01"), credential(client, agent="good-02")
    for raw in (b'{"version":1,"state":"running","agent":{"version":"\\ud800"}}', deep(5000).encode(), b"\xff\xfe",
                batch_text(payload(2**63, 1)).encode(), b'{"version":1,"agent":{"x":' + b"[" * 50_000 + b"}"):
        for path in ("/api/v1/ingest", HB):
            status, _ = await raw_post(client, hostile, raw, path)
            assert 400 <= status < 500, (raw[:40], path, status)
    data = payload(1, 20)
    status, answer, _ = await post(client, good, data)
    assert status == 200 and answer["written"] == 20
    assert {(labels, t) for labels, t, _ in vm.samples('{agent="good-02"}')} == expected_pairs(data, agent="good-02")
    assert "good-02" in persisted(client) and client.server.app[REGISTRY].refused == 0


async def test_a_spool_cannot_pile_up_reported_ranges_past_the_cap(tmp_path):
    """10,000 separate evicted (or lost) ranges per spool at most: one agent cannot make every commit slow."""
    from collector.acks import MAX_REPORTED

    acks = Acks(connect(tmp_path / "collector.sqlite"))
    scattered = [(2 * i + 1, 2 * i + 1) for i in range(MAX_REPORTED)]  # never adjacent: never merged
    assert acks.room("a/b", "s", scattered, []) is None
    await acks.record("a/b", "s", 1, 0, evicted=scattered)
    assert "more than 10000 separate evicted ranges" in acks.room("a/b", "s", [(MAX_REPORTED * 3, MAX_REPORTED * 3)], [])
    assert acks.room("a/b", "s", [(2, 2)], []) is None  # joins two ranges: fewer, not more
    assert "lost" in acks.room("a/b", "s", [], [(2 * i + 1, 2 * i + 1, "r") for i in range(MAX_REPORTED + 1)])
    acks.conn.close()
