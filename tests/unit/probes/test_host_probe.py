"""Tests for probes.host: real psutil readings of this machine, in the shape the collector accepts, and the same
Measurements (names, tags, fields) as the agent's host sampler gave before it became a probe."""

from __future__ import annotations

import math
from pathlib import Path

import psutil
import pytest

from agent.config import ConfigError, load_config
from agent.runner import host_target, identity_tags, run_target
from probes import host, registry
from probes.base import ProbeContext, ProbeResult
from probes.host import HostSampler

TAGS = {"province": "ha-tinh", "commune": "dong-loc", "agent": "quay-01"}

# What agent/host.py's HostSampler gave before the move (its docstring and its code), kind by kind.
SYSTEM_FIELDS = {"cpu_pct", "cpu_count", "load1", "mem_pct", "mem_used_bytes", "mem_available_bytes",
                 "mem_total_bytes", "swap_pct", "uptime_s", "procs", "result_code"}
OPTIONAL_SYSTEM = {"cpu_pct", "load1", "swap_pct"}  # first sample; not on Windows; no swap
DISK_FIELDS = {"disk_pct", "disk_used_bytes", "disk_free_bytes", "disk_total_bytes", "result_code"}
NET_FIELDS = {"net_rx_bytes", "net_tx_bytes", "net_rx_packets", "net_tx_packets", "net_rx_errors",
              "net_tx_errors", "net_rx_drops", "net_tx_drops", "result_code"}
OPTIONAL_NET = {"net_up", "net_speed_mbps"}
BATTERY_FIELDS = {"battery_pct", "battery_plugged", "battery_left_s", "result_code"}


def test_sample_has_system_disk_and_interface_measurements() -> None:
    sampler = HostSampler(TAGS)
    first = sampler.sample()
    system = [m for m in first if set(m.tags) == set(TAGS)]
    assert len(system) == 1
    assert "cpu_pct" not in system[0].fields  # no baseline yet
    fields = system[0].fields
    assert 0 < fields["mem_pct"] < 100
    assert fields["mem_total_bytes"] == psutil.virtual_memory().total
    assert fields["uptime_s"] > 0
    assert fields["cpu_count"] >= 1
    mounts = {m.tags["mount"]: m.fields for m in first if "mount" in m.tags}
    assert "/" in mounts
    assert 0 <= mounts["/"]["disk_pct"] <= 100
    assert mounts["/"]["disk_used_bytes"] + mounts["/"]["disk_free_bytes"] <= mounts["/"]["disk_total_bytes"]
    interfaces = {m.tags["interface"]: m.fields for m in first if "interface" in m.tags}
    assert "lo" not in interfaces
    for name, f in interfaces.items():
        assert f["net_rx_bytes"] == psutil.net_io_counters(pernic=True)[name].bytes_recv or f["net_rx_bytes"] >= 0
        assert {"net_rx_errors", "net_tx_errors", "net_rx_drops", "net_tx_drops"} <= set(f)


def test_second_sample_has_cpu_and_every_field_is_a_finite_float() -> None:
    sampler = HostSampler(TAGS)
    sampler.sample()
    second = sampler.sample()
    system = next(m for m in second if set(m.tags) == set(TAGS))
    assert 0 <= system.fields["cpu_pct"] <= 100
    for m in second:
        assert m.name == "host"
        assert m.result == "ok"
        assert {k: v for k, v in m.tags.items() if k in TAGS} == TAGS
        assert all(isinstance(v, float) and math.isfinite(v) for v in m.fields.values())


def test_battery_matches_psutil() -> None:
    battery = psutil.sensors_battery()
    found = [m for m in HostSampler(TAGS).sample() if "battery" in m.tags]
    if battery is None:
        assert found == []
    else:
        assert found[0].fields["battery_pct"] == float(battery.percent)


def agent_config(tmp_path: Path, schedule: str = ""):
    path = tmp_path / "agent.yaml"
    path.write_text(
        "agent: {province: ha-tinh, commune: dong-loc, id: quay-01}\n"
        f"{schedule}"
        "services:\n  dns:\n    - {name: t, probe: tcp, host: 127.0.0.1, port: 9}\n",
        encoding="utf-8",
    )
    return load_config(path)


def shape(measurements) -> list[tuple[str, tuple[tuple[str, str], ...], tuple[str, ...], str]]:
    """Return each Measurement's name, tags, field names and result, sorted."""
    return sorted((m.name, tuple(sorted(m.tags.items())), tuple(sorted(m.fields)), m.result) for m in measurements)


async def test_the_probe_gives_what_the_old_sampler_gave(tmp_path: Path) -> None:
    config = agent_config(tmp_path)
    target = host_target(config)
    old = HostSampler(identity_tags(config))  # agent/host.py's sampler, as the daemon made it
    old.sample()
    await run_target(config, target, None)  # both past the first sample (cpu_pct needs a baseline)
    expected = old.sample()
    result = await run_target(config, target, None)
    assert isinstance(result, ProbeResult) and result.ok and result.events == ()
    assert shape(result.measurements) == shape(expected)
    for m in result.measurements:
        assert m.name == "host" and m.result == "ok" and m.detail == ""
        assert {k: v for k, v in m.tags.items() if k in TAGS} == TAGS
        assert set(m.tags) - set(TAGS) <= {"mount", "interface", "battery"} and len(m.tags) - len(TAGS) <= 1
        assert all(isinstance(v, float) and math.isfinite(v) for v in m.fields.values())
        extra = set(m.tags) - set(TAGS)
        if not extra:
            assert SYSTEM_FIELDS - OPTIONAL_SYSTEM <= set(m.fields) <= SYSTEM_FIELDS
            assert "cpu_pct" in m.fields
        elif extra == {"mount"}:
            assert set(m.fields) == DISK_FIELDS
        elif extra == {"interface"}:
            assert NET_FIELDS <= set(m.fields) <= NET_FIELDS | OPTIONAL_NET
        else:
            assert {"battery_pct", "result_code"} <= set(m.fields) <= BATTERY_FIELDS
    assert sum(1 for m in result.measurements if len(m.tags) == len(TAGS)) == 1
    assert any(m.tags.get("mount") == "/" for m in result.measurements)


async def test_the_config_chooses_the_parts() -> None:
    config = host.Config(disks=False, interfaces=False, battery=False)
    result = await host.probe(config, ProbeContext("agent", config))
    assert [set(m.tags) for m in result.measurements] == [set()]
    both = host.Config(interfaces=False)
    kinds = {tuple(m.tags) for m in (await host.probe(both, ProbeContext("agent", both))).measurements}
    assert ("interface",) not in kinds and ("mount",) in kinds


async def test_every_measurement_of_a_run_has_the_runs_time() -> None:
    config = host.Config()
    ctx = ProbeContext("agent", config)
    result = await host.probe(config, ctx)
    assert {m.time for m in result.measurements} == {ctx.time_ms}


def test_host_target_takes_the_host_interval(tmp_path: Path) -> None:
    config = agent_config(tmp_path, "schedule: {host_interval: 45s}\n")
    target = host_target(config)
    assert target.config.interval == 45.0 and target.config.probe == "host" and target.name == "host"
    assert target.module is host and not target.is_shared


def test_host_is_the_agents_own_probe_not_a_targets(tmp_path: Path) -> None:
    assert registry.AGENT_PROBES == {"host": "probes.host"}
    assert "host" not in registry.PROBE_MODULES
    assert registry.probe_module("host") is host
    path = tmp_path / "agent.yaml"
    path.write_text("agent: {province: ha-tinh, commune: dong-loc, id: quay-01}\n"
                    "services:\n  pc:\n    - {name: me, probe: host}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any("unknown probe 'host'" in str(issue) for issue in caught.value.issues)
