"""The catalogue (core/catalogue.py) is sound, docs/metrics.md shows it, and what runs emits only what it declares."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from core import catalogue
from core.catalogue import (DEFAULT_TAG_KEYS, EVENT_KINDS, EVENTS, IDENTITY_TAGS, MEASUREMENT_NAMES, MEASUREMENTS,
                            UNITS, field_spec, render_markdown, unknown_fields)
from core.measurement import Measurement
from core.wire import FIELD_NAME
from probes import host, tcp
from probes.base import ProbeContext, ProbeResult

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "metrics.md"
BEGIN, END = "<!-- catalogue:begin", "<!-- catalogue:end -->"
TASKS = ("shipper", "scheduler", "spool_check", "disk_watch")  # the agent's supervised tasks (agent/daemon.py)


def test_metrics_doc_shows_the_catalogue():
    text = DOC.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "docs/metrics.md needs one pair of catalogue markers"
    start = text.index("\n", text.index(BEGIN)) + 1
    shown = text[start:text.index(END)]
    assert shown.strip("\n") == render_markdown().strip("\n"), (
        "docs/metrics.md differs from core/catalogue.py: run `.venv/bin/python scripts/render_metrics_doc.py` "
        "(`python -m core.catalogue` prints the part)")


def test_the_names_the_collector_takes_from_the_catalogue():
    assert MEASUREMENT_NAMES == {"probe", "host", "agent", "event"}
    assert {"agent_started", "agent_stopped", "failover", "failback", "trap", "device_restart", "drill"} <= EVENT_KINDS
    assert IDENTITY_TAGS == ("province", "commune", "agent")
    assert DEFAULT_TAG_KEYS == ("service", "target", "probe", "line", "mount", "interface", "battery", "version")
    assert "kind" not in DEFAULT_TAG_KEYS and not set(IDENTITY_TAGS) & set(DEFAULT_TAG_KEYS)
    stopped = next(e for e in EVENTS if e.name == "agent_stopped")
    assert {(a.name, a.type) for a in stopped.attributes} >= {("reason", "text"), ("uptime_s", "number")}
    started = next(e for e in EVENTS if e.name == "agent_started")
    assert ("version", "text") in {(a.name, a.type) for a in started.attributes}
    assert not stopped.reserved and not started.reserved
    assert all(e.reserved for e in EVENTS if e.name in {"failover", "failback", "trap", "device_restart", "drill"})


def _names(field: str) -> str:
    """Return a family's name with its placeholder filled in (a task name: what the agent uses)."""
    return re.sub(r"<[a-z]+>", TASKS[0], field)


def test_the_catalogue_is_sound():
    assert len({m.name for m in MEASUREMENTS}) == len(MEASUREMENTS)
    assert len(EVENT_KINDS) == len(EVENTS)
    for spec in MEASUREMENTS:
        names = [f.name for f in spec.fields]
        assert len(set(names)) == len(names), f"{spec.name} declares a field twice"
        keys = [t.key for t in spec.tags]
        assert len(set(keys)) == len(keys), f"{spec.name} declares a tag twice"
        assert set(IDENTITY_TAGS) <= set(keys), f"{spec.name} lacks the identity tags"
        for f in spec.fields:
            assert f.unit in UNITS, f"{spec.name}.{f.name}: unit {f.unit!r}"
            assert FIELD_NAME.match(_names(f.name)), f"{spec.name}.{f.name} is not a field name the wire takes"
            assert f.description and f.probes == tuple(dict.fromkeys(f.probes))
            assert set(f.probes) <= set(catalogue.TARGET_PROBES)
        for t in spec.tags:
            assert t.origin in catalogue.TAG_ORIGINS and t.description and t.examples, f"{spec.name} tag {t.key}"
    for kind in EVENTS:
        assert re.fullmatch(r"[a-z][a-z_]*", kind.name) and kind.description
        for a in kind.attributes:
            assert FIELD_NAME.match(a.name) and a.type in catalogue.ATTRIBUTE_TYPES
            assert (a.unit in UNITS) if a.type == "number" else not a.unit, f"{kind.name}.{a.name}"


def test_field_lookup():
    assert field_spec("probe", "rtt_ms").unit == "ms"
    assert field_spec("agent", "task_restarts_total").name == "task_restarts_total"  # exact beats a family
    assert field_spec("agent", "task_spool_check_restarts_total").name == "task_<name>_restarts_total"
    assert field_spec("agent", "task_shipper_ok").unit == "0/1"
    assert field_spec("host", "rtt_ms") is None and field_spec("nope", "up") is None
    assert field_spec("event", "count").unit == "count"
    assert unknown_fields("probe", ["up", "bogus", "rtt_ms", "bogus"]) == ["bogus"]
    assert unknown_fields("nope", ["up"]) == ["up"]


# -- what really runs emits only what the catalogue declares -------------------------------------------------------


def _unknown(measurements) -> dict[str, list[str]]:
    out = {}
    for m in measurements:
        assert m.name in MEASUREMENT_NAMES, m.name
        if unknown := unknown_fields(m.name, m.fields):
            out[f"{m.name} {dict(m.tags)}"] = unknown
    return out


async def test_the_host_probe_emits_only_catalogued_fields():
    config = host.Config()
    runs = []
    for _ in range(2):  # the second run has `cpu_pct` (the first has no earlier CPU reading)
        runs.append(ProbeResult.of(await host.probe(config, ProbeContext(service="agent", target=config))))
    measurements = [m for r in runs for m in r.measurements]
    assert any("cpu_pct" in m.fields for m in measurements)
    assert _unknown(measurements) == {}
    assert {m.name for m in measurements} == {"host"}


@pytest.fixture
async def greeter():
    """A TCP server on 127.0.0.1 that greets with an SMTP-like banner."""
    async def handle(reader, writer):
        writer.write(b"220 mail.example ESMTP\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_the_tcp_probe_emits_only_catalogued_fields(greeter):
    out = []
    for keys in ({}, {"expect_banner": "^220"}, {"expect_banner": "^554"}):
        config = tcp.Config(name="mail", host="127.0.0.1", port=greeter, **keys)
        out.append(await tcp.probe(config, ProbeContext(service="email", target=config)))
    assert [m.result for m in out] == ["ok", "ok", "banner_mismatch"]
    assert "banner_ms" in out[1].fields
    assert _unknown(out) == {}


async def test_the_agent_self_metrics_emit_only_catalogued_fields(tmp_path):
    from agent.config import load_config
    from agent.daemon import Agent
    from agent.scheduler import Scheduler
    from agent.shipper import ClockOffset, Shipper
    from agent.spool import Spool
    from agent.supervisor import Supervisor

    config_file = tmp_path / "agent.yaml"
    config_file.write_text(
        "agent: {province: ha-tinh, commune: dong-loc, id: quay-01}\n"
        "services: {dns: [{name: t, probe: tcp, host: 127.0.0.1, port: 9}]}\n", encoding="utf-8")
    config = load_config(config_file)
    spool = Spool(tmp_path / "spool.db")
    clock = ClockOffset()
    now = time.time() * 1000
    clock.update(now, now + 10, now + 5)  # measured: `clock_skew_ms` is sent
    shipper = Shipper(spool, "http://127.0.0.1:9", "credential")  # every shipper counter is sent
    supervisor = Supervisor()
    agent = Agent(config, spool, shipper, clock, supervisor)
    agent.scheduler = Scheduler(config, agent.commit)
    try:
        for name in TASKS:
            supervisor.start(name, lambda: asyncio.sleep(3600))
        [measurement] = await agent.self_metrics()
    finally:
        await supervisor.stop_all(timeout=0)
        spool.close()
    assert isinstance(measurement, Measurement) and measurement.name == "agent"
    assert {"clock_skew_ms", "shipped_total", "disk_free_bytes", "task_disk_watch_ok"} <= measurement.fields.keys()
    assert _unknown([measurement]) == {}
