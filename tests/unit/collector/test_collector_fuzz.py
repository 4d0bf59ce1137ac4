"""Property-based tests (hypothesis) of everything an agent — or anyone — can send the collector.

Generated inputs: arbitrary JSON-ish values (nested, unpaired surrogates, control characters, huge integers,
NaN/inf, wrong types), valid batches with random parts replaced by such values or deleted, arbitrary bytes;
gzipped or not. Invariants:

- the wire decoder (collector.decode.decode_ingest, collector.validate.check_ingest) accepts or raises
  PayloadError, nothing else; the fast path never accepts what the slow path refuses and gives its lines; every
  accepted line is one safe line-protocol line; whatever `check_agent` accepts the fleet registry can store;
- the real collector process answers every request below 500, and every 400/413 carries a JSON `error`; after
  a hostile credential's requests another agent's batch still lands exactly, the registry still persists, the
  log holds no traceback, and SIGTERM exits 0.

Sizes are kept modest (a few hundred examples per property, well under a minute in all).
"""

from __future__ import annotations

import gzip
import http.client
import json
import sqlite3
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.decode import _slow, decode_ingest, identity_suffix
from collector.registry import Registry
from collector.auth import Identity
from collector.validate import (PayloadError, Rules, check_depth, check_enroll, check_heartbeat,
                                check_ingest, parse_json)
from core.wire import MAX_DEPTH, MAX_VALUE
from collector_helpers import CollectorProcess, enroll_direct, expected_pairs, payload
from lab.victoria import Victoria, available

RULES = Rules(frozenset({"service", "target", "probe", "line", "mount", "interface", "battery", "version"}),
              30 * 86_400_000, 600_000, 5000, 200)
IDENT = identity_suffix("ha-tinh", "dong-loc", "quay-01")
FAST = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies ----------------------------------------------------------------------------------------------------

_chars = st.one_of(st.characters(), st.characters(categories=["Cs"]),
                   st.sampled_from(list("\n\r\t\x00\x1f\x7f\x85\u2028\ufeff[]{}\"\\ ,=:")))
texts = st.text(_chars, max_size=12)
numbers = st.one_of(
    st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), 2**64, 10**30, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e300, -1e16, 9.2e18, 5e-324, 0.0, -0.0]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(texts, inner, max_size=4)), max_leaves=12)


def nested(depth: int, kind: str) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if (kind == "[" or (kind == "mix" and i % 2)) else {"k": value}
    return value


hostile = st.one_of(json_values, st.builds(nested, st.integers(1, 40), st.sampled_from(["[", "{", "mix"])))


def dumps(value: Any, ascii_only: bool) -> bytes:
    """JSON text as a client might send it: surrogates as \\udXXX escapes, or as raw (CESU-8) bytes."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _at(data: dict, where: str) -> dict:
    """Return the object at a place of a payload named by `where` (the payload itself once a mutation broke the way)."""
    path = {"top": [], "measurement": ["measurements", 1], "tags": ["measurements", 1, "tags"],
            "fields": ["measurements", 1, "fields"], "agent": ["agent"], "task": ["agent", "tasks", "shipper"]}[where]
    node: Any = data
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return data
    return node if isinstance(node, dict) else data


@st.composite
def mutated_batches(draw) -> dict:
    """A valid batch (with every wire addition) with a few places replaced by hostile values or deleted."""
    data = payload(draw(st.integers(1, 2**63 - 10)), draw(st.integers(1, 4)), spool="s-fuzz")
    data["lost"] = [[1, 2, "unreadable row"]] if data["first"] > 2 else []
    data["agent"].update(health="ok", task_restarts_total=0, lost_total=2, disk_free_bytes=10**12,
                         tasks={"shipper": {"state": "ok", "restarts": 0, "error": ""}})
    if len(data["measurements"]) < 2:
        data["measurements"].append(dict(data["measurements"][0], seq=data["first"] + 1))
        data["last"] += 1
    for _ in range(draw(st.integers(0, 3))):
        container = _at(data, draw(st.sampled_from(["top", "measurement", "tags", "fields", "agent", "task"])))
        keys = sorted(container) + ["version", "seq", "first", "lost", "evicted", "target", "up", "health", "x"]
        key = draw(st.sampled_from(keys))
        if draw(st.integers(0, 4)) == 0:
            container.pop(key, None)
        else:
            container[key] = draw(hostile)
    return data


bodies = st.one_of(
    st.builds(dumps, mutated_batches(), st.booleans()),
    st.builds(dumps, hostile, st.booleans()),
    st.binary(max_size=300),
)

# -- the decoder ---------------------------------------------------------------------------------------------------


def _decode(body: bytes):
    try:
        return decode_ingest(body, RULES, IDENT)
    except PayloadError as exc:
        assert str(exc), "a refusal without a reason"
        return exc


@FAST
@given(body=bodies)
def test_the_decoder_accepts_or_refuses_with_a_reason_and_agrees_with_the_slow_path(body):
    fast = _decode(body)
    try:
        slow = _slow(body, RULES, IDENT, None)
    except PayloadError as exc:
        slow = exc
    if isinstance(fast, PayloadError):
        assert isinstance(slow, PayloadError) and str(slow) == str(fast)
        return
    assert not isinstance(slow, PayloadError), f"the fast path accepted what check_ingest refuses: {slow}"
    assert [line.split(b" ")[::2] for line in fast.lines] == [line.split(b" ")[::2] for line in slow.lines]
    assert [_fields(line) for line in fast.lines] == [_fields(line) for line in slow.lines]
    for line in fast.lines:  # one line each, encodable, nothing unescaped that could split it
        assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\r" not in line
        line.decode("utf-8")
        assert all(abs(v) <= MAX_VALUE for v in _fields(line).values())
    assert 1 <= fast.first <= fast.last <= 2**63 - 1
    Registry_can_store(fast.agent)


def _fields(line: bytes) -> dict[str, float]:
    head_and_fields = line.rstrip(b"\n").rsplit(b" ", 1)[0]
    fields = head_and_fields.rsplit(b" ", 1)[1].decode()
    return {k: float(v) for k, v in (f.split("=") for f in fields.split(","))}


@FAST
@given(value=hostile, ascii_only=st.booleans())
def test_check_ingest_only_ever_raises_payload_error(value, ascii_only):
    try:
        check_ingest(parse_json(dumps(value, ascii_only)), RULES)
    except PayloadError:
        pass


@FAST
@given(value=st.one_of(json_values, st.fixed_dictionaries({"version": st.just(1), "state": st.sampled_from(
    ["running", "stopping"]), "agent": st.dictionaries(st.sampled_from(
        ["version", "config_version", "spool_rows", "dropped_total", "clock_offset_ms", "health", "tasks",
         "task_restarts_total", "lost_total", "disk_free_bytes", "x"]), hostile, max_size=4)})), ascii_only=st.booleans())
def test_heartbeat_and_enroll_validation_only_raise_payload_error_and_what_passes_can_be_stored(value, ascii_only):
    body = dumps(value, ascii_only)
    try:
        _, info = check_heartbeat(parse_json(body))
        Registry_can_store(info)
    except PayloadError:
        pass
    try:
        check_enroll(parse_json(body))
    except PayloadError:
        pass


def Registry_can_store(info: dict) -> None:  # noqa: N802 - reads as the property it checks
    """Whatever validation let through, the registry's file takes (no refused row)."""
    registry = Registry(sqlite3.connect(":memory:", isolation_level=None))
    registry.seen(Identity("ha-tinh", "dong-loc", "fuzz-01"), info, "127.0.0.1")
    assert registry.flush() == 1 and registry.refused == 0
    json.dumps(registry.agents())


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@FAST
@given(value=st.one_of(json_values, st.builds(nested, st.integers(1, 40), st.sampled_from(["[", "{", "mix"]))),
       brackets_in_strings=st.text(st.sampled_from("[]{}\"\\"), max_size=6))
def test_the_depth_check_is_exact(value, brackets_in_strings):
    """check_depth refuses exactly the documents nested deeper than MAX_DEPTH, whatever their strings hold."""
    document = [value, brackets_in_strings] if _depth(value) < MAX_DEPTH else value
    body = json.dumps(document).encode()
    try:
        check_depth(body)
        assert _depth(document) <= MAX_DEPTH
    except PayloadError:
        assert _depth(document) > MAX_DEPTH


# -- the real process ----------------------------------------------------------------------------------------------

needs_vm = pytest.mark.skipif(available() is not None, reason=available() or "")
ENDPOINT = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


class Client:
    """One keep-alive HTTP connection to the collector process (reopened when the collector closes it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request("POST", path, body=body, headers=headers)
                response = self.conn.getresponse()
                return response.status, dict(response.getheaders()), response.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """VM + a real collector process, a hostile credential and a good one; the good agent checked at the end."""
    if available() is not None:
        pytest.skip(available())
    tmp = tmp_path_factory.mktemp("fuzz")
    with Victoria(tmp / "vm", retention="30d") as vm:
        collector = CollectorProcess(tmp, vm.url)
        hostile_cred = enroll_direct(tmp / "state", agent="fuzz-01")
        good_cred = enroll_direct(tmp / "state", agent="good-01")
        collector.start()
        try:
            yield collector, Client(collector.port), hostile_cred, good_cred, vm
        finally:
            collector.stop()


def _check_answer(status: int, headers: dict, raw: bytes) -> None:
    assert status < 500, (status, raw[:300])
    if status in (400, 413):
        answer = json.loads(raw)
        assert isinstance(answer.get("error"), str) and answer["error"], raw[:300]


@needs_vm
@ENDPOINT
@given(body=bodies, compress=st.booleans())
def test_ingest_never_answers_5xx(fuzzed, body, compress):
    collector, client, cred, _, _ = fuzzed
    headers = {"Authorization": f"Bearer {cred}", "Content-Type": "application/json"}
    if compress:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    _check_answer(*client.post("/api/v1/ingest", body, headers))


@needs_vm
@ENDPOINT
@given(value=st.one_of(json_values, st.builds(lambda agent, state: {"version": 1, "state": state, "agent": agent},
                                               st.dictionaries(st.sampled_from(
                                                   ["version", "config_version", "spool_rows", "health", "tasks",
                                                    "lost_total", "disk_free_bytes", "clock_offset_ms", "x"]),
                                                   hostile, max_size=4), st.sampled_from(["running", "stopping"]))),
       ascii_only=st.booleans(), compress=st.booleans())
def test_heartbeat_never_answers_5xx(fuzzed, value, ascii_only, compress):
    collector, client, cred, _, _ = fuzzed
    body, headers = dumps(value, ascii_only), {"Authorization": f"Bearer {cred}"}
    if compress:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    _check_answer(*client.post("/api/v1/heartbeat", body, headers))


@needs_vm
@ENDPOINT
@given(value=st.one_of(json_values, st.fixed_dictionaries(
    {"version": st.one_of(st.just(1), hostile), "token": st.one_of(texts.map(lambda t: f"cmt.{t}.x"), hostile),
     "agent_id": st.one_of(st.just("quay-09"), hostile), "hostname": hostile})), ascii_only=st.booleans())
def test_enroll_never_answers_5xx(fuzzed, value, ascii_only):
    collector, _, _, _, _ = fuzzed
    # Each example from its own loopback address: ten failed enrollments from one address are answered 429 before
    # the body is read, and the fuzzing would stop reaching the checks.
    _ENROLL_SOURCES[0] += 1
    n = _ENROLL_SOURCES[0]
    conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=30,
                                      source_address=(f"127.3.{n // 250 % 250}.{n % 250 + 1}", 0))
    try:
        conn.request("POST", "/api/v1/enroll", body=dumps(value, ascii_only))
        response = conn.getresponse()
        status, headers, raw = response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()
    assert status != 429, raw[:300]
    _check_answer(status, headers, raw)


_ENROLL_SOURCES = [0]


@needs_vm
def test_after_the_fuzzing_another_agent_is_unaffected_and_the_collector_stops_cleanly(fuzzed):
    """Runs after the endpoint properties (file order): the hostile credential's requests changed nothing else."""
    collector, client, _, good, vm = fuzzed
    data = payload(1, 30)
    status, _, raw = client.post("/api/v1/ingest", gzip.compress(json.dumps(data).encode()),
                                 {"Authorization": f"Bearer {good}", "Content-Encoding": "gzip"})
    assert status == 200 and json.loads(raw)["written"] == 30
    assert {(labels, t) for labels, t, _ in vm.samples('{agent="good-01"}')} == expected_pairs(data, agent="good-01")
    before = int(time.time() * 1000)  # the registry keeps whole milliseconds
    status, _, _ = client.post("/api/v1/heartbeat", json.dumps({"version": 1, "state": "running",
                                                                 "agent": {"version": "9.9.9"}}).encode(),
                               {"Authorization": f"Bearer {good}"})
    assert status == 200
    client.conn and client.conn.close()
    time.sleep(2.5)  # a registry flush
    conn = sqlite3.connect(collector.path.parent / "state" / "collector.sqlite")
    try:
        version, seen = conn.execute("SELECT version, last_seen_ms FROM agents WHERE agent = 'good-01'").fetchone()
    finally:
        conn.close()
    assert version == "9.9.9" and seen >= before
    collector.process.terminate()
    assert collector.process.wait(15) == 0
    log = collector.log.read_text()
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]
