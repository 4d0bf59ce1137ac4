"""Host probe: the health of the PC the agent runs on, as several Measurements named `host` (psutil, in a thread).

Doc: docs/probes/host.md. Needs no privileges. One of the agent's own probes (`registry.AGENT_PROBES`): the agent
runs it every `schedule.host_interval` like a target's probe (runner: timeout, errors as data, identity tags),
but no config names it as a target. One run gives:
- one Measurement with the whole-host fields: `cpu_pct`, `cpu_count`, `load1` (not on Windows), `mem_pct`,
  `mem_used_bytes`, `mem_available_bytes`, `mem_total_bytes`, `swap_pct`, `uptime_s`, `procs`;
- one per mounted disk, tag `mount`: `disk_pct`, `disk_used_bytes`, `disk_free_bytes`, `disk_total_bytes`;
- one per network interface (not loopback), tag `interface`: `net_up` (0/1), `net_speed_mbps` (when known),
  the counters `net_rx_bytes`, `net_tx_bytes`, `net_rx_packets`, `net_tx_packets`, `net_rx_errors`,
  `net_tx_errors`, `net_rx_drops`, `net_tx_drops` (totals since boot: take `rate()`/`increase()` in queries);
- one with tag `battery=main` when the PC has a battery: `battery_pct`, `battery_plugged` (0/1),
  `battery_left_s` (when discharging and known).

Tags besides identity: `mount`, `interface`, `battery` (the collector's tag allowlist includes them).
The first `cpu_pct` is left out: psutil measures CPU between two calls, and there is no earlier one.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Literal

import psutil

from core.config.types import Duration, Slug
from core.measurement import Measurement

from .base import ProbeContext, ProbeResult, TargetConfig

NAME = "host"
# The fields it can emit (measurement `host`): documented in docs/probes/host.md, declared in core/catalogue.py.
FIELDS: tuple[str, ...] = (
    "result_code", "cpu_pct", "cpu_count", "load1", "mem_pct", "mem_used_bytes", "mem_available_bytes",
    "mem_total_bytes", "swap_pct", "uptime_s", "procs", "disk_pct", "disk_used_bytes", "disk_free_bytes",
    "disk_total_bytes", "net_up", "net_speed_mbps", "net_rx_bytes", "net_tx_bytes", "net_rx_packets", "net_tx_packets",
    "net_rx_errors", "net_tx_errors", "net_rx_drops", "net_tx_drops", "battery_pct", "battery_plugged", "battery_left_s",
)
# Pseudo and read-only filesystems whose usage says nothing about the PC's health.
_SKIP_FSTYPES = {"squashfs", "tmpfs", "devtmpfs", "overlay", "iso9660", "udf", "proc", "sysfs", "cgroup2", ""}


class Config(TargetConfig):
    """The host probe: which parts of the PC to report (all by default). The agent sets `interval` from
    `schedule.host_interval`; there is no target to configure."""

    name: Slug = "host"
    probe: Literal["host"] = "host"
    timeout: Duration = 10.0  # psutil on a PC with a hung network disk can take a while
    disks: bool = True  # one Measurement per mounted disk (tag `mount`)
    interfaces: bool = True  # one per network interface (tag `interface`)
    battery: bool = True  # one with tag `battery=main` when the PC has a battery


# One sampler per process: psutil's CPU baseline is the previous call, whoever made it.
_sampler: "HostSampler | None" = None
_sampler_lock = threading.Lock()


async def probe(config: Config, ctx: ProbeContext) -> ProbeResult:
    """Sample the PC's health in a thread (psutil blocks); return its Measurements (identity tags: the runner)."""
    return ProbeResult(await asyncio.to_thread(_sample, config, ctx.time_ms))


def _sample(config: Config, now: int) -> list[Measurement]:
    global _sampler
    with _sampler_lock:
        if _sampler is None:
            _sampler = HostSampler({})
        return _sampler.sample(now, disks=config.disks, interfaces=config.interfaces, battery=config.battery)



class HostSampler:
    """Take host-health samples; keeps psutil's CPU baseline between calls."""

    def __init__(self, tags: dict[str, str]) -> None:
        self.tags = dict(tags)
        self._cpu_ready = False
        psutil.cpu_percent(interval=None)  # the baseline for the first real reading

    def sample(self, now: int | None = None, *, disks: bool = True, interfaces: bool = True,
               battery: bool = True) -> list[Measurement]:
        """Return this moment's host measurements (blocking: run it in a thread)."""
        now = int(time.time() * 1000) if now is None else now
        out = [Measurement(NAME, self.tags, self._system(), now)]
        if disks:
            out += [Measurement(NAME, {**self.tags, "mount": m}, f, now) for m, f in _disks().items()]
        if interfaces:
            out += [Measurement(NAME, {**self.tags, "interface": i}, f, now) for i, f in _interfaces().items()]
        battery_fields = _battery() if battery else None
        if battery_fields:
            out.append(Measurement(NAME, {**self.tags, "battery": "main"}, battery_fields, now))
        return out

    def _system(self) -> dict[str, float]:
        cpu = psutil.cpu_percent(interval=None)
        mem, swap = psutil.virtual_memory(), psutil.swap_memory()
        fields = {
            "cpu_count": psutil.cpu_count() or 0,
            "mem_pct": mem.percent,
            "mem_used_bytes": mem.total - mem.available,
            "mem_available_bytes": mem.available,
            "mem_total_bytes": mem.total,
            "swap_pct": swap.percent if swap.total else None,
            "uptime_s": time.time() - psutil.boot_time(),
            "procs": len(psutil.pids()),
        }
        if self._cpu_ready:
            fields["cpu_pct"] = cpu
        self._cpu_ready = True
        if hasattr(os, "getloadavg"):
            fields["load1"] = os.getloadavg()[0]
        return fields


def _disks() -> dict[str, dict[str, float]]:
    """Return usage per mount point of real disks (one entry per device)."""
    out: dict[str, dict[str, float]] = {}
    seen: set[str] = set()
    for part in psutil.disk_partitions(all=False):
        if part.fstype in _SKIP_FSTYPES or part.device in seen or "cdrom" in part.opts:
            continue
        try:
            usage = psutil.disk_usage(part.mountpoint)
        except (OSError, PermissionError):
            continue  # an empty card reader, a vanished USB disk
        seen.add(part.device)
        out[part.mountpoint] = {
            "disk_pct": usage.percent,
            "disk_used_bytes": usage.used,
            "disk_free_bytes": usage.free,
            "disk_total_bytes": usage.total,
        }
    return out


def _interfaces() -> dict[str, dict[str, float]]:
    """Return state and counters per network interface, loopback left out."""
    stats = psutil.net_if_stats()
    out: dict[str, dict[str, float]] = {}
    for name, c in psutil.net_io_counters(pernic=True).items():
        st = stats.get(name)
        if name == "lo" or name.lower().startswith("loopback"):
            continue
        fields = {
            "net_rx_bytes": c.bytes_recv, "net_tx_bytes": c.bytes_sent,
            "net_rx_packets": c.packets_recv, "net_tx_packets": c.packets_sent,
            "net_rx_errors": c.errin, "net_tx_errors": c.errout,
            "net_rx_drops": c.dropin, "net_tx_drops": c.dropout,
        }
        if st is not None:
            fields["net_up"] = 1.0 if st.isup else 0.0
            if st.speed > 0:
                fields["net_speed_mbps"] = st.speed
        out[name] = fields
    return out


def _battery() -> dict[str, float] | None:
    """Return battery fields, or None when the PC has none (or psutil cannot tell)."""
    try:
        battery = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
    except (OSError, RuntimeError, NotImplementedError):
        return None
    if battery is None:
        return None
    fields = {"battery_pct": battery.percent}
    if battery.power_plugged is not None:
        fields["battery_plugged"] = 1.0 if battery.power_plugged else 0.0
    if isinstance(battery.secsleft, (int, float)) and battery.secsleft >= 0:  # not POWER_TIME_UNLIMITED/UNKNOWN
        fields["battery_left_s"] = battery.secsleft
    return fields


__all__ = ["Config", "FIELDS", "HostSampler", "NAME", "probe"]
