"""The agent's own health as a Measurement named `agent` (no string fields: VictoriaMetrics stores them as 0).

Tags besides identity: `version` (the package version; changes rarely, like Prometheus' `*_build_info`).
Fields (the daemon passes the counters; docs/metrics.md has the table): `spool_rows`, `dropped_total`,
`dropped_disk_full_total`, `lost_total`, `quarantined_total`, `shipped_total`, `ship_failures_total`,
`spool_errors_total`, `auth_refused` (0/1), `disk_free_bytes`, `spool_disk_low` (0/1), `healthy` (0/1),
`task_restarts_total`, `task_<name>_restarts_total` and `task_<name>_ok` (0/1) per supervised task,
`probe_errors_total` (runs that ended with `result=error`: a probe bug), `probe_runs_total`,
`rounds_skipped_busy_total` and `rounds_skipped_late_total` (rounds not run, by why), `clock_skew_ms`
(the collector's clock minus ours), `clock_measured` (0/1: whether the skew has been measured since start),
`config_version` (the first 32 bits of the config file's SHA-256 as a number: equal numbers = the same
config), `uptime_s`, `rss_bytes`, `cpu_s` (user+system seconds since start).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import psutil

from core.measurement import Measurement

NAME = "agent"
_STARTED = time.time()


def config_version(path: Path) -> str:
    """Return `sha256:<hex>` of the config file's bytes (what the heartbeat reports)."""
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def config_number(version: str) -> float:
    """Return the numeric form of a config version: its first 32 bits (exact in a float)."""
    return float(int(version.removeprefix("sha256:")[:8], 16))


def agent_measurement(tags: dict[str, str], version: str, config_hash: str, **counters: float | None) -> Measurement:
    """Return the `agent` Measurement: identity + `version` tags, the counters given, process figures."""
    process = psutil.Process()
    cpu = process.cpu_times()
    fields: dict[str, float | None] = {
        **counters,
        "config_version": config_number(config_hash),
        "uptime_s": time.time() - _STARTED,
        "rss_bytes": process.memory_info().rss,
        "cpu_s": cpu.user + cpu.system,
    }
    known = {key: value for key, value in fields.items() if value is not None}  # Measurement drops None anyway
    return Measurement(NAME, {**tags, "version": version}, known, int(time.time() * 1000))


__all__ = ["NAME", "agent_measurement", "config_number", "config_version"]
