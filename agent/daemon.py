"""`cmon agent run`: the long-running agent — scheduler → spool → shipper, and a clean stop.

`run_agent(config, stop)` wires:
- the Scheduler (probes, host health, self-metrics, heartbeats) whose measurements are committed to the spool
  the moment each run ends, their times corrected by the measured clock offset;
- the Shipper, draining the spool to the collector (when `collector:` is configured and the agent enrolled),
  live data a few seconds at a time (`_linger`: 5 s, at most a quarter of the shortest interval);
- on `stop` (SIGTERM/SIGINT, or the Windows service's stop): the scheduler stops, the shipper gets a few
  seconds to send what is left, and a `stopping` heartbeat tells the collector this is a PC switched off,
  not a commune gone dark.

Before the first probe the agent sends a `running` heartbeat (a few seconds at most) so the clock offset is
known before the first measurement is committed; if the collector is unreachable, times stay uncorrected
until the first answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from typing import Any

from probes.measurement import Measurement

from .config import AgentConfig, ConfigError, load_config
from .credentials import CredentialError, load as load_credential, ssl_context
from .host import HostSampler
from .runner import identity_tags
from .scheduler import Scheduler
from .selfmetrics import agent_measurement, config_version
from .shipper import LINGER_S, Batch, ClockOffset, Shipper

log = logging.getLogger(__name__)

HEARTBEAT_S = 60.0
STARTUP_HEARTBEAT_S = 5.0
STOP_DRAIN_S = 3.0
STOP_HEARTBEAT_S = 3.0


def package_version() -> str:
    """Return the installed commune-monitor version."""
    from .cli import version

    return version()


class SpoolAdapter:
    """The shipper's view of agent.spool.Spool: batches as `Batch`, evictions reported once delivered."""

    def __init__(self, spool: Any) -> None:
        self.spool = spool
        self.spool_id = spool.spool_id

    def next_batch(self, max_rows: int) -> Batch | None:
        """Return the spool's next batch (live first, then backlog oldest first) as a Batch, or None."""
        batch = self.spool.next_batch(max_rows)
        if batch is None:
            return None
        items = [(seq, m if isinstance(m, Measurement) else Measurement.from_dict(m)) for seq, m in batch.items]
        return Batch(batch.first, batch.last, items, getattr(batch, "live", None)) if items else None

    def ack(self, first: int, last: int) -> None:
        self.spool.ack(first, last)

    def quarantine(self, first: int, last: int, reason: str) -> None:
        self.spool.quarantine(first, last, reason)

    def evictions(self) -> list[list[int]]:
        return [list(r) for r in self.spool.pending_evictions()]

    def evictions_reported(self, ranges: list[list[int]]) -> None:
        done = getattr(self.spool, "evictions_reported", None)
        if done is not None:
            done([tuple(r) for r in ranges])


async def run_agent(config: AgentConfig, stop: asyncio.Event | None = None) -> None:
    """Run the agent until `stop` is set (or SIGTERM/SIGINT when none is given)."""
    from .spool import Spool  # the SQLite spool; imported here so `cmon probe` does not pay for it

    stop = stop or _signal_event()
    tags = identity_tags(config)
    version, config_hash = package_version(), config_version(config.path)
    spool = Spool(config.relative(config.spool.path), config.spool.max_size)
    adapter = SpoolAdapter(spool)
    clock = ClockOffset()
    shipper = _make_shipper(config, adapter, clock)
    sampler = await asyncio.to_thread(HostSampler, tags)
    commit_lock = asyncio.Lock()

    def info() -> dict[str, Any]:
        return {"version": version, "config_version": config_hash, "spool_rows": spool.depth(),
                "dropped_total": spool.dropped_total, "clock_offset_ms": round(clock.offset_ms, 1)}

    if shipper is not None:
        shipper.agent_info = info  # the wire's `agent` block in every request: the collector's fleet registry

    async def commit(measurements: list[Measurement]) -> None:
        if not measurements:
            return
        offset = round(clock.offset_ms)
        corrected = [_shifted(m, offset) for m in measurements] if offset else measurements
        async with commit_lock:  # one writer: the spool's sequence stays gap-free
            await asyncio.to_thread(spool.append, corrected)
        if shipper is not None:
            shipper.wake.set()

    async def host() -> list[Measurement]:
        return await asyncio.to_thread(sampler.sample)

    scheduler: Scheduler

    async def self_metrics() -> list[Measurement]:
        s = shipper.stats if shipper else None
        return [agent_measurement(
            tags, version, config_hash,
            spool_rows=spool.depth(), dropped_total=spool.dropped_total,
            quarantined_total=s.quarantined_total if s else None, shipped_total=s.shipped_total if s else None,
            ship_failures_total=s.failures_total if s else None, auth_refused=float(s.auth_refused) if s else None,
            probe_errors_total=scheduler.probe_errors_total, probe_runs_total=scheduler.runs_total,
            clock_skew_ms=clock.offset_ms if clock.measured else None, clock_measured=float(clock.measured),
        )]

    async def heartbeat() -> list[Measurement]:
        if shipper is not None:
            await shipper.heartbeat("running")
        return []

    interval = config.schedule.host_interval
    producers = [("host", interval, host), ("self", interval, self_metrics)]
    if shipper is not None:
        producers.append(("heartbeat", HEARTBEAT_S, heartbeat))
    scheduler = Scheduler(config, commit, producers=producers, clock=lambda: clock.now_ms() / 1000)

    async with contextlib.AsyncExitStack() as stack:
        ship_task = None
        if shipper is not None:
            await stack.enter_async_context(shipper)
            await shipper.heartbeat("running", timeout=STARTUP_HEARTBEAT_S)
            ship_task = asyncio.create_task(shipper.run(), name="shipper")
        sched_task = asyncio.create_task(scheduler.run(), name="scheduler")
        log.info("agent %s/%s/%s running: %d jobs, spool %s", *tags.values(), len(scheduler.jobs),
                 config.relative(config.spool.path))
        await stop.wait()
        log.info("stopping")
        scheduler.stop()
        await sched_task
        if ship_task is not None:
            shipper.flush()  # no lingering: what is spooled goes now
            await _drain(spool, ship_task, STOP_DRAIN_S)
            await shipper.heartbeat("stopping", timeout=STOP_HEARTBEAT_S)
    close = getattr(spool, "close", None)
    if close is not None:
        close()
    log.info("stopped")


def _shifted(m: Measurement, offset_ms: int) -> Measurement:
    return Measurement(m.name, m.tags, m.fields, m.time + offset_ms, m.result, m.detail)


def _make_shipper(config: AgentConfig, spool: SpoolAdapter, clock: ClockOffset) -> Shipper | None:
    collector = config.collector
    if collector is None:
        log.warning("no collector: section: measurements stay in the spool")
        return None
    try:
        credential = load_credential(config.relative(collector.credential_file))
    except CredentialError as exc:
        log.error("%s; measurements stay in the spool until then", exc)
        credential = None
    ca_file = config.relative(collector.ca_file) if collector.ca_file else None
    url = str(collector.url).rstrip("/")
    return Shipper(
        spool, spool.next_batch, url, credential.credential if credential else "",
        ssl_context=ssl_context(credential, ca_file) if url.startswith("https") else None,
        timeout=collector.timeout, backlog_rate=collector.backlog_rate, batch_max=collector.batch_max,
        evictions=spool.evictions, evictions_reported=spool.evictions_reported, clock=clock,
        linger=_linger(config),
    )


def _linger(config: AgentConfig) -> float:
    """Return how long live data waits for company: LINGER_S, at most a quarter of the shortest interval."""
    intervals = [t.config.interval for t in config.targets] + [config.schedule.host_interval]
    return min(LINGER_S, min(intervals) / 4)


async def _drain(spool: Any, ship_task: asyncio.Task, seconds: float) -> None:
    """Give the shipper up to `seconds` to empty the spool, then stop it."""
    deadline = time.monotonic() + seconds
    while spool.depth() and time.monotonic() < deadline and not ship_task.done():
        await asyncio.sleep(0.05)
    ship_task.cancel()
    await asyncio.gather(ship_task, return_exceptions=True)


def _signal_event() -> asyncio.Event:
    """Return an event set by SIGTERM/SIGINT (SIGBREAK on Windows consoles)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for name in ("SIGTERM", "SIGINT"):
        try:
            loop.add_signal_handler(getattr(signal, name), event.set)
        except (NotImplementedError, AttributeError):  # Windows: the service sets `stop` itself
            signal.signal(getattr(signal, name), lambda *_: loop.call_soon_threadsafe(event.set))
    return event


# -- command line (`cmon agent run`, `cmon agent enroll`) ---------------------------------------------------


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `cmon agent run` and `cmon agent enroll` to the `cmon` parser."""
    agent = commands.add_parser("agent", help="the long-running agent: run it, enroll it")
    sub = agent.add_subparsers(dest="agent_command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="probe on schedule, spool, and ship to the collector until stopped")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="agent config YAML file")
    run.set_defaults(func=cmd_run)
    enroll = sub.add_parser("enroll", help="trade a one-time token (stdin or --token-file) for a credential")
    enroll.add_argument("-c", "--config", required=True, metavar="FILE", help="agent config YAML file")
    enroll.add_argument("--collector", metavar="URL", help="the collector (default: collector.url)")
    enroll.add_argument("--token-file", metavar="FILE", help="read the token from FILE (default: stdin)")
    enroll.add_argument("--ca-fingerprint", metavar="SHA256", help="the province CA's SHA-256 fingerprint")
    enroll.add_argument("--ca-file", metavar="FILE", help="the province CA (PEM)")
    enroll.add_argument("--allow-http", action="store_true", help="allow a plain http:// collector")
    enroll.set_defaults(func=cmd_enroll)


def _load(path: str) -> AgentConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print("\n".join(str(i) for i in exc.issues), file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM/SIGINT; exit 0 after a clean stop, 2 for a bad config."""
    config = _load(args.config)
    if config is None:
        return 2
    asyncio.run(run_agent(config))
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    """Enroll; exit 0 with the credential saved, 1 when the collector refused, 2 for a bad config."""
    from .enroll import EnrollError, enroll_and_save

    config = _load(args.config)
    if config is None:
        return 2
    try:
        credential = enroll_and_save(config, args)
    except (EnrollError, ValueError, OSError) as exc:
        print(f"cmon agent enroll: {exc}", file=sys.stderr)
        return 1
    print(f"enrolled as {credential.province}/{credential.commune}/{credential.agent} at {credential.collector}")
    return 0


__all__ = ["SpoolAdapter", "add_commands", "cmd_enroll", "cmd_run", "run_agent"]
