"""Tests for agent.host: real psutil readings of this machine, in the shape the collector accepts."""

from __future__ import annotations

import math

import psutil

from agent.host import HostSampler

TAGS = {"province": "ha-tinh", "commune": "dong-loc", "agent": "quay-01"}


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
