"""Tests for agent.scheduler against real TCP ports: phases, commune turns, re-checks, no burst after a stall."""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import time
import types
from pathlib import Path
from typing import Literal

import pytest

import probes.host
from agent.config import load_config
from agent.scheduler import Scheduler, Turns, planned_runs, unit_fraction
from probe_helpers import free_port
from probes import registry
from probes.base import ProbeContext, ProbeResult, TargetConfig
from core.event import Event
from core.measurement import Measurement


def write_config(tmp_path: Path, services: str, schedule: str = "", agent_id: str = "quay-01") -> Path:
    path = tmp_path / f"{agent_id}.yaml"
    path.write_text(
        f"agent: {{province: ha-tinh, commune: dong-loc, id: {agent_id}}}\n"
        f"schedule: {{jitter: 0, {schedule}}}\n"
        f"services:\n{services}",
        encoding="utf-8",
    )
    return path


class Recorder:
    """A sink that remembers each measurement and the monotonic time it was handed over."""

    def __init__(self) -> None:
        self.items: list[tuple[float, float, Measurement]] = []  # (wall, monotonic, measurement)

    async def __call__(self, measurements: list[Measurement]) -> None:
        for m in measurements:
            self.items.append((time.time(), time.monotonic(), m))

    def by_target(self) -> collections.Counter:
        return collections.Counter(m.tags.get("target", m.name) for _, _, m in self.items)


async def run_for(scheduler: Scheduler, seconds: float) -> None:
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(seconds)
    scheduler.stop()
    await asyncio.wait_for(task, 5)


def test_turns_give_each_round_exactly_k_probers_and_each_agent_its_share() -> None:
    agents = 7
    turns = [Turns(slot, agents, 2) for slot in range(agents)]
    per_agent = collections.Counter()
    for round_no in range(700):
        probers = [t.slot for t in turns if t.my_turn("ioffice-web/primary", round_no)]
        assert len(probers) == 2
        per_agent.update(probers)
    assert set(per_agent.values()) == {200}  # 700 rounds × 2 probers / 7 agents


def test_turns_with_fewer_agents_than_probers_always_probe() -> None:
    assert all(Turns(0, 1, 2).my_turn("x", r) for r in range(10))
    assert all(Turns(1, 2, 2).my_turn("x", r) for r in range(10))


def test_turns_from_peer_list_are_exact_slots(tmp_path: Path) -> None:
    services = "  dns:\n    - {name: t, probe: tcp, host: 127.0.0.1, port: 9}\n"
    slots = []
    for me in ("quay-03", "quay-01", "quay-02"):
        config = load_config(write_config(tmp_path, services, "peers: [quay-01, quay-02, quay-03]", me))
        turns = Turns.from_config(config)
        assert turns.agents == 3
        slots.append(turns.slot)
    assert slots == [2, 0, 1]


def test_phases_spread_thousands_of_agents_over_the_interval() -> None:
    buckets = collections.Counter(int(unit_fraction(f"agent-{i}", "ioffice-web/primary") * 10) for i in range(5000))
    assert len(buckets) == 10
    assert max(buckets.values()) < 600  # uniform: 500 each


async def test_runs_each_target_per_interval_and_commits_within_a_second(tmp_path: Path, listening_port: int) -> None:
    services = (
        "  dns:\n"
        f"    - {{name: up, probe: tcp, host: 127.0.0.1, port: {listening_port}, interval: 1s, timeout: 1s}}\n"
    )
    config = load_config(write_config(tmp_path, services))
    sink = Recorder()
    await run_for(Scheduler(config, sink), 4.2)
    assert sink.by_target()["up"] in (4, 5)  # one per 1 s round, phase anywhere in the round
    for wall, _, m in sink.items:
        ended = m.time / 1000 + m.fields["duration_ms"] / 1000
        assert wall - ended < 1.0
    times = [m.time for _, _, m in sink.items]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(900 < gap < 1100 for gap in gaps), gaps  # jitter 0: one round apart


async def test_failure_is_rechecked_quickly_then_back_to_the_interval(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: refused
    services = f"  dns:\n    - {{name: down, probe: tcp, host: 127.0.0.1, port: {port}, interval: 3s, timeout: 1s}}\n"
    config = load_config(write_config(tmp_path, services, "confirm_count: 3, confirm_interval: 0.2s"))
    sink = Recorder()
    await run_for(Scheduler(config, sink), 3.0)
    assert [m.result for _, _, m in sink.items] == ["refused"] * 4  # the run and its 3 re-checks
    monos = [mono for _, mono, _ in sink.items]
    assert all(0.15 < b - a < 0.5 for a, b in zip(monos, monos[1:]))


async def test_shared_target_probed_only_on_this_agents_turns(tmp_path: Path, listening_port: int) -> None:
    services = (
        "  ioffice:\n"
        f"    - {{name: central, probe: tcp, host: 127.0.0.1, port: {listening_port}, interval: 0.5s, timeout: 1s}}\n"
        "  dns:\n"
        f"    - {{name: local, probe: tcp, host: 127.0.0.1, port: {listening_port}, interval: 0.5s, timeout: 1s}}\n"
        "    - {name: forced, probe: tcp, host: 127.0.0.1, port: " + str(listening_port)
        + ", interval: 0.5s, timeout: 1s, shared: true}\n"
    )
    config = load_config(write_config(tmp_path, services, "commune_agents: 6, probers: 2"))
    assert [t.is_shared for t in config.targets] == [True, False, True]
    sink = Recorder()
    await run_for(Scheduler(config, sink), 6.1)
    counts = sink.by_target()
    assert counts["local"] >= 11
    # Its turn comes 2 rounds in 6: about a third of the rounds.
    assert 2 <= counts["central"] <= 6
    assert 2 <= counts["forced"] <= 6


async def test_no_burst_after_suspend_or_clock_jump(tmp_path: Path, listening_port: int) -> None:
    services = "".join(
        f"    - {{name: t{i}, probe: tcp, host: 127.0.0.1, port: {listening_port}, interval: 1s, timeout: 1s}}\n"
        for i in range(5)
    )
    config = load_config(write_config(tmp_path, "  dns:\n" + services))
    shift = [0.0]
    sink = Recorder()
    scheduler = Scheduler(config, sink, clock=lambda: time.time() + shift[0])
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(2.0)
    before = len(sink.items)
    shift[0] = 3600.0  # an hour passes at once, as after a suspend: 3,600 rounds missed per target
    await asyncio.sleep(2.0)
    scheduler.stop()
    await asyncio.wait_for(task, 5)
    after = len(sink.items) - before
    assert 5 <= after <= 15  # ≤ 1 run per target per second: nothing made up


async def test_producers_run_at_their_interval(tmp_path: Path) -> None:
    services = "  dns:\n    - {name: t, probe: tcp, host: 127.0.0.1, port: 9, interval: 1h}\n"
    config = load_config(write_config(tmp_path, services))
    calls = []

    async def produce() -> list[Measurement]:
        calls.append(time.monotonic())
        return [Measurement("agent", {}, {"spool_rows": 1.0}, int(time.time() * 1000))]

    sink = Recorder()
    await run_for(Scheduler(config, sink, producers=[("self", 0.5, produce)]), 2.6)
    assert 4 <= len(calls) <= 6
    assert sink.by_target()["agent"] == len(calls)


async def test_stop_returns_promptly_while_probes_run(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) never answers: the probe would run its whole 10 s timeout.
    services = "  dns:\n    - {name: slow, probe: tcp, host: 192.0.2.1, port: 80, interval: 0.2s, timeout: 10s}\n"
    config = load_config(write_config(tmp_path, services))
    scheduler = Scheduler(config, Recorder())
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.5)
    started = time.monotonic()
    scheduler.stop()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 3.0
    assert scheduler.skipped_busy_total >= 1  # rounds that came while the probe hung: counted, not silent
    assert scheduler.skipped_late_total == 0


def test_planned_runs_are_the_times_the_scheduler_picks_without_jitter(tmp_path: Path) -> None:
    services = ("  dns:\n    - {name: a, probe: tcp, host: 127.0.0.1, port: 9, interval: 2s}\n"
                "  ioffice:\n    - {name: b, probe: tcp, host: 127.0.0.1, port: 9, interval: 3s, shared: true}\n")
    config = load_config(write_config(tmp_path, services, "commune_agents: 3, probers: 1"))
    from agent.scheduler import planned_runs

    start = 1_800_000_000.0
    planned = planned_runs(config, start, start + 60, producers=[("host", 5.0)])
    scheduler = Scheduler(config, Recorder(), producers=[("host", 5.0, Recorder())])
    for job in scheduler.jobs:
        times, now = [], start
        while (at := scheduler.due_time(job, now)) < start + 60:
            times.append(at)
            now = at
        assert times == [t for j, t in planned if j.key == job.key], job.key
    counts = collections.Counter(j.key for j, _ in planned)
    assert counts["a/-"] == 30 and counts["host"] == 12 and 0 < counts["b/-"] < 20  # b: one turn in 3 rounds


async def test_the_host_probe_is_scheduled_like_a_target(tmp_path: Path) -> None:
    services = "  dns:\n    - {name: t, probe: tcp, host: 127.0.0.1, port: 9, interval: 1h}\n"
    config = load_config(write_config(tmp_path, services, "host_interval: 0.5s, confirm_interval: 0.1s"))
    sink = Recorder()
    scheduler = Scheduler(config, sink, host=True)
    [job] = [j for j in scheduler.jobs if j.key == "host"]
    assert job.target is not None and job.target.module is probes.host and job.producer is None
    assert (job.interval, job.phase) == (0.5, unit_fraction("quay-01", "host") * 0.5)  # as when it was a producer
    await run_for(scheduler, 2.1)
    assert 3 <= job.runs <= 5 and scheduler.runs_total >= job.runs  # once a round: a host run is never re-checked
    hosts = [m for _, _, m in sink.items if m.name == "host"]
    systems = [m for m in hosts if len(m.tags) == 3]
    assert len(systems) == job.runs
    identity = {"province": "ha-tinh", "commune": "dong-loc", "agent": "quay-01"}
    assert all({k: m.tags[k] for k in identity} == identity and m.result == "ok" for m in hosts)
    assert any(m.tags.get("mount") == "/" for m in hosts)
    assert "cpu_pct" in systems[-1].fields
    assert not Scheduler(config, sink).jobs[-1].key == "host"  # only when asked (the daemon asks)


def test_planned_host_rounds_are_the_host_probes(tmp_path: Path) -> None:
    services = "  dns:\n    - {name: a, probe: tcp, host: 127.0.0.1, port: 9, interval: 2s}\n"
    config = load_config(write_config(tmp_path, services, "host_interval: 5s"))
    start = 1_800_000_000.0
    planned = [t for j, t in planned_runs(config, start, start + 60, producers=[("host", 5.0)]) if j.key == "host"]
    scheduler = Scheduler(config, Recorder(), host=True)
    [job] = [j for j in scheduler.jobs if j.key == "host"]
    times, now = [], start
    while (at := scheduler.due_time(job, now)) < start + 60:
        times.append(at)
        now = at
    assert times == planned and len(times) == 12


class EventProbeConfig(TargetConfig):
    probe: Literal["eventful"] = "eventful"
    down: bool = False


async def eventful_probe(config: EventProbeConfig, ctx: ProbeContext) -> ProbeResult:
    """Return a probe Measurement (down when configured), a second Measurement and an Event."""
    main = ctx.failure("refused", "nothing listens") if config.down else ctx.success({"rtt_ms": 1.0})
    extra = Measurement("port", {"port": "1"}, {"in_bps": 5.0}, ctx.time_ms)
    return ProbeResult([main, extra], [Event("failover", {"to": "backup"}, ctx.time_ms, "switched to backup")])


@pytest.fixture
def eventful_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("cmon_test_eventful_probe")
    module.NAME, module.Config, module.probe = "eventful", EventProbeConfig, eventful_probe
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(registry.PROBE_MODULES, "eventful", module.__name__)
    return module


async def test_a_runs_measurements_go_to_the_sink_and_its_events_to_the_event_callback(
    tmp_path: Path, eventful_module, caplog: pytest.LogCaptureFixture
) -> None:
    services = ("  dns:\n    - {name: up, probe: eventful, interval: 0.5s}\n"
                "    - {name: down, probe: eventful, down: true, interval: 1s}\n")
    config = load_config(write_config(tmp_path, services, "confirm_count: 2, confirm_interval: 0.1s"))
    sink, events = Recorder(), []

    async def on_events(batch: list[Event]) -> None:
        events.extend(batch)

    await run_for(Scheduler(config, sink, events=on_events), 1.3)
    runs = collections.Counter(m.tags["target"] for _, _, m in sink.items if m.name == "probe")
    assert runs["down"] in (3, 6)  # a down Measurement in a ProbeResult is re-checked like any other
    assert 2 <= runs["up"] <= 3
    ports = [m for _, _, m in sink.items if m.name == "port"]
    assert len(ports) == sum(runs.values()) and all(m.tags["agent"] == "quay-01" for m in ports)
    assert len(events) == sum(runs.values())
    assert all(e.kind == "failover" and e.tags == {"to": "backup", "province": "ha-tinh", "commune": "dong-loc",
                                                   "agent": "quay-01"} for e in events)
    caplog.set_level(logging.INFO, logger="agent.scheduler")
    sink = Recorder()
    await run_for(Scheduler(config, sink), 0.8)  # no event callback: the events are logged, not lost silently
    assert "event failover" in caplog.text and "switched to backup" in caplog.text
