"""The long-running agent (`cmon agent run`, cmon/agent_commands.py): scheduler → spool → shipper, and a clean stop.

`run_agent(config, stop)` wires:
- the Scheduler (probes, host health, self-metrics, heartbeats) whose measurements are committed to the spool
  the moment each run ends, their times corrected by the measured clock offset;
- the Shipper, draining the spool to the collector (when `collector:` is configured and the agent enrolled),
  live data a few seconds at a time (`_linger`: 5 s, at most a quarter of the shortest interval);
- every long-running task (`shipper`, `scheduler`, `spool_check`: the spool's integrity check at start and
  hourly, `disk_watch`: the spool disk's free space) under one `Supervisor`: a task that fails is logged with
  its traceback, counted and restarted with backoff, and its health goes into every request's `agent` block
  and the `agent` measurement, so an agent that probes but cannot ship is visible;
- an `agent_started` event when it starts; on `stop` (SIGTERM/SIGINT, or the Windows service's stop): the
  scheduler stops, an `agent_stopped` event is committed, the shipper gets a few seconds to send what is left
  (that event included), and a `stopping` heartbeat tells the collector this is a PC switched off,
  not a commune gone dark — with the tasks' final health. The exit status is 1 when a task failed during the
  run and was not healthy at the end.

A reload (SIGHUP on POSIX, `systemctl reload`, or `Agent.reload()` from within) reads the file again: an invalid
file is logged issue by issue and changes nothing; a valid one restarts the scheduler with the new targets and
schedule under the supervisor and gives the shipper its new settings, while what cannot change while running
(the identity, the spool, the collector's address, credential and TLS trust, the request timeout) waits for a
restart, with a warning that names the keys. The spool stays the same object throughout.

Before the first probe the agent sends a `running` heartbeat (a few seconds at most) so the clock offset is
known before the first measurement is committed; if the collector is unreachable, times stay uncorrected
until the first answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from typing import Any, Callable, Sequence

from core.event import Event
from core.measurement import Measurement
from core.wire import Record
from core.version import package_version

from .config import AgentConfig, ConfigError, load_config
from .credentials import CredentialError, load as load_credential, ssl_context
from .runner import identity_tags
from .scheduler import Scheduler
from .selfmetrics import agent_measurement, config_version
from .queue import OutboundQueue
from .shipper import LINGER_S, ClockOffset, Shipper
from .supervisor import Supervisor

log = logging.getLogger(__name__)

HEARTBEAT_S = 60.0
STARTUP_HEARTBEAT_S = 5.0
STOP_DRAIN_S = 3.0
STOP_HEARTBEAT_S = 3.0
STOP_SCHEDULER_S = 10.0  # the scheduler gives running probes 2 s; this is the backstop
SPOOL_CHECK_S = 3600.0  # the spool's integrity check (also at start)
SELF_PRODUCER = "self"  # the self-metrics producer: runs every schedule.host_interval
# What a reload cannot change while the agent runs: the spool is one open file with one identity, and the
# shipper's connection (URL, credential, trusted CA, timeout) is set up once. Collector keys by name.
COLLECTOR_RESTART_KEYS = ("url", "allow_http", "credential_file", "ca_file", "timeout")
IDENTITY_KEYS = ("province", "commune", "id")


class Agent:
    """The running agent's parts and the few things they share: the wire's `agent` block, self-metrics, health."""

    def __init__(self, config: AgentConfig, spool: Any, shipper: Shipper | None, clock: ClockOffset,
                 supervisor: Supervisor) -> None:
        self.config, self.spool, self.shipper, self.clock, self.supervisor = config, spool, shipper, clock, supervisor
        self.tags = identity_tags(config)
        self.version, self.config_hash = package_version(), config_version(config.path)
        self.commit_lock = asyncio.Lock()  # one writer: the spool's sequence stays gap-free
        self.disk_free: int | None = None
        self.disk_low = False
        self.scheduler: Scheduler | None = None
        self.started = time.monotonic()
        self._reload_lock = asyncio.Lock()  # one reload at a time
        self._reloads: set[asyncio.Task] = set()  # reloads requested by signal, kept until they end

    # -- what the collector and the database hear -------------------------------------------------------------

    def health(self) -> str:
        """`degraded` when a task is not ok, the spool cannot commit, or an acknowledged batch cannot be deleted."""
        stuck = self.shipper is not None and self.shipper.stats.spool_failing
        if self.supervisor.health() != "ok" or not self.spool.writable or stuck:
            return "degraded"
        return "ok"

    def info(self) -> dict[str, Any]:
        """Return the wire's `agent` block (every ingest and heartbeat; docs/wire.md)."""
        out: dict[str, Any] = {
            "version": self.version, "config_version": self.config_hash, "spool_rows": self.spool.depth(),
            "dropped_total": self.spool.dropped_total, "clock_offset_ms": round(self.clock.offset_ms, 1),
            "health": self.health(), "tasks": self.supervisor.wire(),
            "task_restarts_total": self.supervisor.restarts_total, "lost_total": self.spool.lost_total,
        }
        if self.disk_free is not None:
            out["disk_free_bytes"] = int(self.disk_free)
        return out

    async def self_metrics(self) -> list[Measurement]:
        """Return the `agent` Measurement (docs/agent.md)."""
        s, spool, sched = (self.shipper.stats if self.shipper else None), self.spool, self.scheduler
        assert sched is not None
        await asyncio.to_thread(self.watch_disk)  # the disk as of now, not as of the last watch
        return [agent_measurement(
            self.tags, self.version, self.config_hash,
            spool_rows=spool.depth(), dropped_total=spool.dropped_total,
            dropped_disk_full_total=spool.dropped_disk_full_total, lost_total=spool.lost_total,
            quarantined_total=s.quarantined_total if s else None, shipped_total=s.shipped_total if s else None,
            ship_failures_total=s.failures_total if s else None, auth_refused=float(s.auth_refused) if s else None,
            spool_errors_total=s.spool_errors_total if s else None,
            probe_errors_total=sched.probe_errors_total, probe_runs_total=sched.runs_total,
            rounds_skipped_busy_total=sched.skipped_busy_total, rounds_skipped_late_total=sched.skipped_late_total,
            clock_skew_ms=self.clock.offset_ms if self.clock.measured else None,
            clock_measured=float(self.clock.measured),
            disk_free_bytes=self.disk_free, spool_disk_low=float(self.disk_low),
            healthy=float(self.health() == "ok"), **self.supervisor.fields(),
        )]

    # -- the producers' and the tasks' bodies --------------------------------------------------------------

    async def commit(self, measurements: Sequence[Record]) -> None:
        """Append one run's measurements or events to the spool (times corrected); a run that cannot be committed
        is counted as dropped by the spool, which logs once per episode: the scheduler goes on."""
        if not measurements:
            return
        offset = round(self.clock.offset_ms)
        corrected = [_shifted(m, offset) for m in measurements] if offset else measurements
        from .spool import SpoolWriteError  # lazily, like the spool itself

        async with self.commit_lock:
            try:
                await asyncio.to_thread(self.spool.append, corrected)
            except SpoolWriteError:
                return
        if self.shipper is not None:
            self.shipper.wake.set()

    async def heartbeat(self) -> list[Measurement]:
        if self.shipper is not None:
            await self.shipper.heartbeat("running")
        return []

    def event(self, kind: str, text: str, **attributes: str | float) -> Event:
        """Return an event of this agent now (identity tags; the clock offset is applied when it is committed)."""
        return Event(kind, self.tags, int(time.time() * 1000), text, attributes)

    def lifecycle_event(self, kind: str) -> Event:
        """Return the `agent_started` or `agent_stopped` (a clean stop) event, with the agent's identity tags."""
        uptime = time.monotonic() - self.started
        text = (f"agent {self.version} started" if kind == "agent_started"
                else f"agent stopped cleanly after {uptime:.0f} s (a service stop or shutdown, not a failure)")
        attributes: dict[str, str | float] = {"version": self.version, "config_version": self.config_hash}
        if kind == "agent_stopped":
            attributes |= {"reason": "stop requested (service stop, shutdown, SIGTERM)", "uptime_s": round(uptime, 1)}
        return Event(kind, self.tags, int(time.time() * 1000), text, attributes)

    def watch_disk(self) -> None:
        """Sample the spool's disk; warn once when it gets too full for the spool to reach its cap."""
        self.disk_free = self.spool.disk_free_bytes()
        low = self.spool.disk_low(self.disk_free)
        if low and not self.disk_low:
            log.warning("the spool's disk is nearly full (%d bytes free; the spool may need %d): free space "
                        "or measurements will be dropped", self.disk_free, self.spool.max_bytes)
        elif self.disk_low and not low:
            log.info("the spool's disk has room again (%d bytes free)", self.disk_free)
        self.disk_low = low

    # -- reloading the configuration --------------------------------------------------------------------------

    def request_reload(self) -> None:
        """Start reload() in the background (SIGHUP's handler; callable from any code on the agent's loop)."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self, config: AgentConfig | None = None) -> bool:
        """Apply a new configuration without stopping: `config`, else the file at `self.config.path` read again.

        An invalid file changes nothing: each issue is logged as `file:line: key: message` and the agent goes on
        with the configuration it has. A valid one restarts the scheduler (targets, lines, intervals, schedule)
        under the supervisor and gives the shipper its new batch size, backlog rate and linger; the keys that
        cannot change while running keep their old values until a restart, with a warning that names them.
        Returns whether the new configuration is in use.
        """
        async with self._reload_lock:
            try:
                return await self._reload(config)
            except Exception:  # noqa: BLE001 - a reload must never stop the agent
                log.exception("reload failed: going on with the previous configuration")
                return False

    async def _reload(self, config: AgentConfig | None) -> bool:
        path = self.config.path
        if config is None:
            try:
                config = await asyncio.to_thread(load_config, path)
            except ConfigError as exc:
                for issue in exc.issues:
                    log.error("%s", issue)
                log.error("configuration not reloaded: %d error%s in %s; going on with the previous one",
                          len(exc.issues), "s" if len(exc.issues) != 1 else "", path)
                await self.commit([self.event("config_rejected", f"new configuration refused: {exc.issues[0]}",
                                              errors=len(exc.issues), first_error=str(exc.issues[0])[:500])])
                return False
        version = await asyncio.to_thread(config_version, config.path)
        if version == self.config_hash:
            log.info("reload: %s has not changed", config.path)
            return True
        live, held = live_config(self.config, config)
        if held:
            log.warning("reload: %s changed in %s, which cannot change while the agent runs: the previous "
                        "value%s stay%s until the agent is restarted (systemctl restart commune-monitor-agent)",
                        ", ".join(held), config.path, "s" if len(held) > 1 else "", "" if len(held) > 1 else "s")
        scheduler = self.scheduler
        assert scheduler is not None
        producers = [(name, live.schedule.host_interval if name == SELF_PRODUCER else interval, produce)
                     for name, interval, produce in scheduler.producers]
        if "scheduler" not in self.supervisor.tasks:  # not started yet: it starts with the new config
            scheduler.reconfigure(live, producers)
        elif await self.supervisor.replace("scheduler", scheduler.run, ask=scheduler.stop, timeout=STOP_SCHEDULER_S,
                                           prepare=lambda: scheduler.reconfigure(live, producers)) is None:
            log.info("reload: the agent is stopping; the new configuration is not applied")
            return False
        previous, self.config, self.config_hash = self.config_hash, live, version
        await self.commit([self.event("config_reloaded", f"configuration reloaded: {len(scheduler.jobs)} jobs"
                                      + (f"; {', '.join(held)} wait for a restart" if held else ""),
                                      config_version=version, previous_config_version=previous,
                                      held=", ".join(held), jobs=len(scheduler.jobs))])
        if self.shipper is not None and live.collector is not None:
            self.shipper.backlog_rate = live.collector.backlog_rate
            self.shipper.batch_max = live.collector.batch_max
            self.shipper.linger = _linger(live)
        log.info("configuration reloaded from %s (%s): %d jobs", config.path, version, len(scheduler.jobs))
        return True

    async def disk_watch(self) -> None:
        """Task: watch the spool's disk every `host_interval`."""
        while True:
            await asyncio.to_thread(self.watch_disk)
            await asyncio.sleep(self.config.schedule.host_interval)

    async def spool_check(self) -> None:
        """Task: check the spool at start and every SPOOL_CHECK_S (damaged rows set aside, corruption rebuilt)."""
        while True:
            result = await asyncio.to_thread(self.spool.check)
            if result["damaged"] or result["rebuilt"]:
                log.warning("spool check: %s", result)
            else:
                log.debug("spool check: %s", result)
            await asyncio.sleep(SPOOL_CHECK_S)


async def run_agent(config: AgentConfig, stop: asyncio.Event | None = None,
                    supervisor: Supervisor | None = None, *, ready: Callable[[Agent], object] | None = None) -> int:
    """Run the agent until `stop` is set (or SIGTERM/SIGINT when none is given, and then SIGHUP reloads); return
    the exit status: 1 when a task failed during the run and was not healthy at the end (Supervisor.exit_status),
    else 0. `ready(agent)` is called once the agent is wired, before its tasks start (for `agent.reload()`)."""
    from .spool import Spool  # the SQLite spool; imported here so `cmon probe` does not pay for it

    own_signals = stop is None
    stop = stop or _signal_event()
    spool = Spool(config.spool.path, config.spool.max_size)
    clock = ClockOffset()
    shipper = _make_shipper(config, spool, clock)
    agent = Agent(config, spool, shipper, clock, supervisor or Supervisor())
    if shipper is not None:
        shipper.agent_info = agent.info  # the wire's `agent` block in every request: the collector's fleet registry
    interval = config.schedule.host_interval
    producers = [("self", interval, agent.self_metrics)]
    if shipper is not None:
        producers.append(("heartbeat", HEARTBEAT_S, agent.heartbeat))
    agent.scheduler = Scheduler(config, agent.commit, producers=producers, host=True,
                                clock=lambda: clock.now_ms() / 1000, events=agent.commit)
    await asyncio.to_thread(agent.watch_disk)
    if own_signals:
        _reload_on_sighup(agent)
    if ready is not None:
        ready(agent)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if shipper is not None:
                await stack.enter_async_context(shipper)
                await shipper.heartbeat("running", timeout=STARTUP_HEARTBEAT_S)
            await _run_until(agent, stop)
    finally:
        spool.close()
    status = agent.supervisor.exit_status()
    if status:
        log.error("stopped with failed tasks: %s", agent.supervisor.wire())
    log.info("stopped")
    return status


async def _run_until(agent: Agent, stop: asyncio.Event) -> None:
    """Start the supervised tasks, wait for `stop`, stop them in order, say `stopping` to the collector."""
    sup, shipper, scheduler = agent.supervisor, agent.shipper, agent.scheduler
    assert scheduler is not None
    await agent.commit([agent.lifecycle_event("agent_started")])  # the first of this run, before any probe's
    ship_task = sup.start("shipper", shipper.run) if shipper is not None else None
    sup.start("scheduler", scheduler.run)
    sup.start("spool_check", agent.spool_check)
    sup.start("disk_watch", agent.disk_watch)
    log.info("agent %s/%s/%s running: %d jobs, spool %s", *agent.tags.values(), len(scheduler.jobs),
             agent.spool.path)
    await stop.wait()
    log.info("stopping")
    await sup.stop("scheduler", ask=scheduler.stop, timeout=STOP_SCHEDULER_S)
    await agent.commit([agent.lifecycle_event("agent_stopped")])  # shipped with the rest, below
    for name in ("spool_check", "disk_watch"):
        await sup.stop(name, timeout=0)
    if shipper is not None and ship_task is not None:
        shipper.flush()  # no lingering: what is spooled goes now
        await _drain(agent.spool, ship_task, STOP_DRAIN_S)
        await sup.stop("shipper", timeout=0)
        await shipper.heartbeat("stopping", timeout=STOP_HEARTBEAT_S)  # carries the tasks' final health


def live_config(old: AgentConfig, new: AgentConfig) -> tuple[AgentConfig, list[str]]:
    """Return what of `new` a running agent can use (`old`'s values for what cannot change while it runs) and
    the keys held back (`agent.id`, `spool.path`, `collector.url`, ...)."""
    held = [f"agent.{key}" for key in IDENTITY_KEYS if getattr(old.agent, key) != getattr(new.agent, key)]
    agent = new.agent.model_copy(update={key: getattr(old.agent, key) for key in IDENTITY_KEYS})
    held += [f"spool.{key}" for key in ("path", "max_size") if getattr(old.spool, key) != getattr(new.spool, key)]
    collector = new.collector
    if old.collector is None or new.collector is None:
        if old.collector != new.collector:
            held.append("collector")
            collector = old.collector
    else:
        fixed = {key: getattr(old.collector, key) for key in COLLECTOR_RESTART_KEYS
                 if getattr(old.collector, key) != getattr(new.collector, key)}
        held += [f"collector.{key}" for key in fixed]
        collector = new.collector.model_copy(update=fixed)
    return dataclasses.replace(new, agent=agent, spool=old.spool, collector=collector), held


def _shifted(m: Record, offset_ms: int) -> Record:
    if isinstance(m, Event):
        return Event(m.kind, m.tags, m.time + offset_ms, m.text, m.attributes)
    return Measurement(m.name, m.tags, m.fields, m.time + offset_ms, m.result, m.detail)


def _make_shipper(config: AgentConfig, queue: OutboundQueue, clock: ClockOffset) -> Shipper | None:
    collector = config.collector
    if collector is None:
        log.warning("no collector: section: measurements stay in the spool")
        return None
    try:
        credential = load_credential(config.credential_path)
    except CredentialError as exc:
        log.error("%s; measurements stay in the spool until then", exc)
        credential = None
    ca_file = collector.ca_file  # absolute: resolved when the config was loaded
    url = str(collector.url).rstrip("/")
    return Shipper(
        queue, url, credential.credential if credential else "",
        ssl_context=ssl_context(credential, ca_file) if url.startswith("https") else None,
        timeout=collector.timeout, backlog_rate=collector.backlog_rate, batch_max=collector.batch_max,
        clock=clock, linger=_linger(config),
    )


def _linger(config: AgentConfig) -> float:
    """Return how long live data waits for company: LINGER_S, at most a quarter of the shortest interval."""
    intervals = [t.config.interval for t in config.targets] + [config.schedule.host_interval]
    return min(LINGER_S, min(intervals) / 4)


async def _drain(spool: Any, ship_task: asyncio.Task, seconds: float) -> None:
    """Give the shipper up to `seconds` to empty the spool (the supervisor stops it afterwards)."""
    deadline = time.monotonic() + seconds
    while spool.depth() and time.monotonic() < deadline and not ship_task.done():
        await asyncio.sleep(0.05)


def _reload_on_sighup(agent: Agent) -> None:
    """Reload the configuration on SIGHUP (`systemctl reload`, `cmon agent reload`); Windows has no SIGHUP."""
    if hasattr(signal, "SIGHUP"):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, agent.request_reload)


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


__all__ = ["Agent", "live_config", "run_agent"]
