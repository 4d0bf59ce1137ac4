"""Tests for agent.runner: bugs and overruns become data, every run carries identity tags, lines fan out."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import types
from pathlib import Path
from typing import Literal

import pytest

from agent import runner
from agent.config import AgentConfig, load_config
from probes import registry
from probes.base import ProbeContext, ProbeResult, TargetConfig
from core.event import Event
from core.measurement import Measurement


class FakeConfig(TargetConfig):
    """A fake probe's config: `behaviour` says what the probe does."""

    probe: Literal["fake"] = "fake"
    behaviour: Literal["ok", "raise", "hang", "not_a_measurement", "slow", "several", "bad_item"] = "ok"


RUNNING = {"now": 0, "max": 0}


async def fake_probe(config: FakeConfig, ctx: ProbeContext) -> Measurement:
    """Behave as configured: succeed, raise, hang past any timeout, or return garbage."""
    RUNNING["now"] += 1
    RUNNING["max"] = max(RUNNING["max"], RUNNING["now"])
    try:
        if config.behaviour == "raise":
            raise RuntimeError("the probe has a bug")
        if config.behaviour == "hang":  # ignores ctx.remaining(): only the runner can stop it
            await asyncio.sleep(3600)
        if config.behaviour == "slow":
            await asyncio.sleep(0.05)
        if config.behaviour == "not_a_measurement":
            return {"up": 1}  # type: ignore[return-value]
        if config.behaviour == "several":  # a poller: one Measurement per port, and what happened
            ports = [Measurement("port", {"port": str(i)}, {"in_bps": 10.0 * i}, ctx.time_ms) for i in (1, 2)]
            event = Event("link_down", {"port": "2"}, ctx.time_ms, "port 2 went down", {"speed_mbps": 100})
            return ProbeResult([ctx.success({"rtt_ms": 1.5}), *ports], [event])  # type: ignore[return-value]
        if config.behaviour == "bad_item":
            return ProbeResult([{"up": 1}])  # type: ignore[list-item, return-value]
        return ctx.success({"rtt_ms": 1.5})
    finally:
        RUNNING["now"] -= 1


@pytest.fixture
def fake_probe_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("cmon_test_fake_probe")
    module.NAME, module.Config, module.probe = "fake", FakeConfig, fake_probe
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(registry.PROBE_MODULES, "fake", module.__name__)
    RUNNING.update(now=0, max=0)
    return module


HEADER = "agent: {province: ha-tinh, commune: dong-loc, id: quay-01}\n"
LINES = "lines:\n  primary: {}\n  backup: {source: 127.0.0.2}\n"


def config_from(tmp_path: Path, text: str) -> AgentConfig:
    path = tmp_path / "agent.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def by_target(measurements: list[Measurement]) -> dict[tuple[str, str], Measurement]:
    return {(m.tags["target"], m.tags["line"]): m for m in measurements}


async def test_a_probe_that_raises_becomes_error_and_the_others_still_run(
    tmp_path: Path, fake_probe_module, listening_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_from(tmp_path, HEADER + f"""services:
  bugs:
    - {{name: buggy, probe: fake, behaviour: raise}}
    - {{name: garbage, probe: fake, behaviour: not_a_measurement}}
  ioffice:
    - {{name: ioffice-tcp, probe: tcp, host: 127.0.0.1, port: {listening_port}}}
    - {{name: fine, probe: fake}}
""")
    with caplog.at_level(logging.ERROR, logger="agent.runner"):
        results = by_target(await runner.run_once(config))
    assert set(results) == {("buggy", "auto"), ("garbage", "auto"), ("ioffice-tcp", "auto"), ("fine", "auto")}
    buggy = results["buggy", "auto"]
    assert (buggy.result, buggy.up) == ("error", False)
    assert buggy.detail == "the fake probe failed: RuntimeError: the probe has a bug"
    assert results["garbage", "auto"].detail == "the fake probe failed: TypeError: probe returned dict, not a Measurement or a ProbeResult"
    assert results["ioffice-tcp", "auto"].up and results["fine", "auto"].up
    assert "connect_ms" in results["ioffice-tcp", "auto"].fields
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 2 and "the probe has a bug" in caplog.text


async def test_timeouts_are_enforced(tmp_path: Path, fake_probe_module, monkeypatch) -> None:
    monkeypatch.setattr(runner, "GRACE_S", 0.1)
    config = config_from(tmp_path, HEADER + """services:
  slow:
    - {name: stuck, probe: fake, behaviour: hang, timeout: 200ms}
    - {name: quick, probe: fake}
""")
    started = time.monotonic()
    results = by_target(await runner.run_once(config))
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.0  # timeout 0.2 s + grace 0.1 s, not an hour
    stuck = results["stuck", "auto"]
    assert (stuck.result, stuck.detail, stuck.up) == ("timeout", "no answer in 0.2 s", False)
    assert 290 <= stuck.fields["duration_ms"] < 1000
    assert results["quick", "auto"].up
    assert RUNNING["now"] == 0  # the hung probe was cancelled, not left running


async def test_identity_and_probe_tags(tmp_path: Path, fake_probe_module) -> None:
    config = config_from(tmp_path, HEADER + "services:\n  dns:\n    - {name: resolver, probe: fake}\n")
    [measurement] = await runner.run_once(config)
    assert measurement.tags == {
        "service": "dns",
        "target": "resolver",
        "probe": "fake",
        "line": "auto",
        "province": "ha-tinh",
        "commune": "dong-loc",
        "agent": "quay-01",
    }
    assert measurement.fields == {"rtt_ms": 1.5, "up": 1.0, "duration_ms": measurement.fields["duration_ms"],
                                  "result_code": 0.0}


async def test_each_target_runs_over_each_of_its_lines(
    tmp_path: Path, fake_probe_module, listening_port: int
) -> None:
    config = config_from(tmp_path, HEADER + LINES + f"""services:
  ioffice:
    - {{name: ioffice-tcp, probe: tcp, host: 127.0.0.1, port: {listening_port}}}
    - {{name: only-backup, probe: fake, lines: [backup]}}
""")
    results = await runner.run_once(config)
    assert [(m.tags["target"], m.tags["line"]) for m in results] == [
        ("ioffice-tcp", "primary"),
        ("ioffice-tcp", "backup"),
        ("only-backup", "backup"),
    ]
    assert all(m.up for m in results)
    filtered = await runner.run_once(config, target="ioffice-tcp", line="backup")
    assert [(m.tags["target"], m.tags["line"]) for m in filtered] == [("ioffice-tcp", "backup")]
    assert [r.line.name for r in runner.plan(config, line="primary")] == ["primary"]
    assert runner.plan(config, targets={"only-backup"}, line="primary") == []


async def test_concurrency_is_bounded(tmp_path: Path, fake_probe_module) -> None:
    targets = "".join(f"    - {{name: t{i}, probe: fake, behaviour: slow}}\n" for i in range(10))
    config = config_from(tmp_path, HEADER + "services:\n  many:\n" + targets)
    results = await runner.run_once(config, concurrency=3)
    assert len(results) == 10 and all(m.up for m in results)
    assert RUNNING["max"] == 3


async def test_run_probe_is_the_reusable_unit(tmp_path: Path, fake_probe_module) -> None:
    config = config_from(tmp_path, HEADER + LINES + "services:\n  s:\n    - {name: one, probe: fake}\n")
    target = config.targets[0]
    backup = config.line_objects()["backup"]
    measurement = await runner.run_probe(config, target, backup)
    assert (measurement.tags["line"], measurement.tags["agent"], measurement.up) == ("backup", "quay-01", True)


async def test_a_probe_may_return_several_measurements_and_events_all_with_identity_tags(
    tmp_path: Path, fake_probe_module
) -> None:
    services = "services:\n  s:\n    - {name: poll, probe: fake, behaviour: several}\n"
    config = config_from(tmp_path, HEADER + LINES + services)
    identity = {"province": "ha-tinh", "commune": "dong-loc", "agent": "quay-01"}
    result = await runner.run_target(config, config.targets[0], config.line_objects()["backup"])
    assert isinstance(result, ProbeResult) and result.ok
    assert [(m.name, m.tags.get("port")) for m in result.measurements] == [("probe", None), ("port", "1"), ("port", "2")]
    assert result.measurements[0].tags == {"service": "s", "target": "poll", "probe": "fake", "line": "backup",
                                           **identity}
    assert [dict(m.tags) for m in result.measurements[1:]] == [{"port": "1", **identity}, {"port": "2", **identity}]
    [event] = result.events
    assert (event.kind, dict(event.tags), event.text, dict(event.attributes)) == (
        "link_down", {"port": "2", **identity}, "port 2 went down", {"speed_mbps": 100.0})
    # run_once gives every Measurement of every run, in plan order (primary, then backup)
    flat = await runner.run_once(config)
    assert [(m.name, m.tags.get("line"), m.tags["agent"]) for m in flat] == [
        ("probe", "primary", "quay-01"), ("port", None, "quay-01"), ("port", None, "quay-01"),
        ("probe", "backup", "quay-01"), ("port", None, "quay-01"), ("port", None, "quay-01")]
    # the one-Measurement shortcut refuses a run that gave several, rather than drop some
    with pytest.raises(ValueError, match="gave 3 measurements"):
        await runner.run_probe(config, config.targets[0], None)


async def test_a_probe_result_holding_garbage_becomes_error(tmp_path: Path, fake_probe_module) -> None:
    config = config_from(tmp_path, HEADER + "services:\n  s:\n    - {name: bad, probe: fake, behaviour: bad_item}\n")
    [measurement] = await runner.run_once(config)
    assert (measurement.result, measurement.up) == ("error", False)
    assert measurement.detail == "the fake probe failed: TypeError: a ProbeResult holds Measurements, not dict"
    assert measurement.tags["agent"] == "quay-01"


async def test_a_single_measurement_is_a_probe_result_of_one(tmp_path: Path, fake_probe_module) -> None:
    config = config_from(tmp_path, HEADER + "services:\n  s:\n    - {name: one, probe: fake}\n")
    result = await runner.run_target(config, config.targets[0], None)
    assert len(result.measurements) == 1 and result.events == () and result.ok
    single = await runner.run_probe(config, config.targets[0], None)
    assert single.tags == result.measurements[0].tags and single.up
    assert ProbeResult.of(result.measurements[0]) == ProbeResult((result.measurements[0],))
    with pytest.raises(TypeError, match="not a Measurement or a ProbeResult"):
        ProbeResult.of([result.measurements[0]])  # type: ignore[arg-type]
