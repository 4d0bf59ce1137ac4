"""The long-running agent's clock: when each target × line runs, and what happens after a failure.

Every job (a target over a line, the host probe, self-metrics) runs once per *round* of its interval: round `r` of
a job with interval `T` starts at wall-clock time `r × T` (Unix seconds, corrected by the collector's clock
offset), and the job runs at `r × T + phase`. The phase is a hash of (agent id, target, line): fixed for an
agent, spread uniformly over the interval across agents, so thousands of agents do not fire together; a small
random jitter on top breaks any remaining lock-step. Rounds are wall-clock aligned so the agents of a commune
agree on them without talking to each other.

Shared central targets (`BoundTarget.is_shared`: iOffice, dvc, email by default): the `N` agents of a commune
take turns, so the commune sends each of them `K` (= `schedule.probers`, default 2) probes per interval per
line instead of `N`. Each agent has a slot `s` in `0..N-1` (its index in the sorted `schedule.peers`, else a
hash of its id mod `schedule.commune_agents`); in round `r` the probers of job `j` are the `K` slots starting
at `(hash(j) + r × K) mod N`. Every agent takes its turn every `N / K` rounds; the turns do not depend on the
collector, so they go on while it is unreachable. See docs/agent.md for the trade-offs.

After a failed run the job re-checks `confirm_count` times, `confirm_interval` apart (3 × 5 s), stopping at the
first success: an outage is confirmed in seconds. A job is never run twice at once: a round that comes while
the previous run (or its re-checks) is still going is skipped.

A run's Measurements go to the `sink` (the daemon commits them to the spool) as soon as it ends. Its Events (a
probe's `ProbeResult.events`: none of today's probes gives any) go to the `events` callback when one is given,
else they are logged (the agent passes its spool's commit: events are spooled and shipped like measurements).

A reload (agent/daemon.py) stops the run, hands the scheduler the new config (`reconfigure`) and runs it again:
new jobs, lines, intervals and turns; the counters go on.

Missed rounds are never made up: when the loop wakes late (the PC slept, the process was stopped, the clock
jumped), every job is rescheduled from now, so a resumed agent does not fire a burst.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

from probes.base import Line, ProbeResult
from core.event import Event
from core.measurement import Measurement

from .config import AgentConfig, BoundTarget
from .runner import host_target, plan, run_target

log = logging.getLogger(__name__)

Sink = Callable[[list[Measurement]], Awaitable[None]]
EventSink = Callable[[list[Event]], Awaitable[None]]
Producer = Callable[[], Awaitable[list[Measurement]]]
# The loop wakes at least this often to notice wall-clock jumps and suspend/resume.
MAX_SLEEP_S = 5.0
# A wake-up this much later than the monotonic clock explains is a stall or a clock jump: reschedule all.
JUMP_S = 2.0
# Running probes get this long to finish on stop before they are cancelled.
STOP_GRACE_S = 2.0


def stable_hash(*parts: str) -> int:
    """Return a 64-bit hash of the parts that is the same on every machine and run (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def unit_fraction(*parts: str) -> float:
    """Return a stable pseudo-random number in [0, 1) from the parts."""
    return stable_hash(*parts) / 2**64


@dataclass(frozen=True, slots=True)
class Turns:
    """The commune's turn-taking for shared targets: this agent's `slot` of `agents`, `probers` per round."""

    slot: int = 0
    agents: int = 1
    probers: int = 2

    @classmethod
    def from_config(cls, config: AgentConfig) -> "Turns":
        """Return the turns from `schedule:`: a peer list gives exact slots, a count gives hashed ones."""
        schedule, me = config.schedule, config.agent.id
        if schedule.peers:
            peers = sorted(set(schedule.peers) | {me})
            return cls(peers.index(me), len(peers), schedule.probers)
        agents = schedule.commune_agents
        return cls(stable_hash(me) % agents, agents, schedule.probers)

    def my_turn(self, job_key: str, round_no: int) -> bool:
        """Return whether this agent probes the shared job in this round."""
        if self.agents <= self.probers:
            return True
        first = (stable_hash(job_key) + round_no * self.probers) % self.agents
        return (self.slot - first) % self.agents < self.probers


@dataclass(slots=True)
class Job:
    """One thing that runs every `interval` seconds: a probe over a line, or a producer (host, self-metrics)."""

    key: str
    interval: float
    phase: float  # seconds into each round
    shared: bool = False
    target: BoundTarget | None = None
    line: Line | None = None
    producer: Producer | None = None
    busy: bool = False
    runs: int = 0
    skipped: int = 0
    last_round: int | None = None  # the round last scheduled (jitter must not make it come twice)

    def next_round(self, now: float, turns: Turns) -> int:
        """Return the first round after `now` (and after the last one scheduled) that is this agent's turn."""
        round_no = math.floor((now - self.phase) / self.interval) + 1
        if self.last_round is not None:
            round_no = max(round_no, self.last_round + 1)
        if self.shared:
            for _ in range(turns.agents + 1):  # a turn comes within N rounds
                if turns.my_turn(self.key, round_no):
                    break
                round_no += 1
        return round_no


# The host probe's job key: its phase is unit_fraction(agent, "host"), as when it was a producer.
HOST_JOB = "host"


def make_jobs(config: AgentConfig, producers: Sequence[tuple[str, float, Producer | None]] = (),
              *, host: bool = False) -> list[Job]:
    """Return the agent's jobs: every target over each of its lines, the host probe when `host`, then the
    producers, each with its phase."""
    agent = config.agent.id
    jobs = []
    for run in plan(config):
        line = run.line.name if run.line else "-"
        key = f"{run.target.name}/{line}"
        interval = run.target.config.interval
        jobs.append(Job(key, interval, unit_fraction(agent, key) * interval, run.target.is_shared,
                        run.target, run.line))
    if host:
        target = host_target(config)
        interval = target.config.interval
        jobs.append(Job(HOST_JOB, interval, unit_fraction(agent, HOST_JOB) * interval, target=target))
    for name, interval, producer in producers:
        jobs.append(Job(name, interval, unit_fraction(agent, name) * interval, producer=producer))
    return jobs


def planned_runs(config: AgentConfig, start: float, end: float,
                 producers: Sequence[tuple[str, float]] = ()) -> list[tuple[Job, float]]:
    """Return (job, time) of every round due in [start, end) (Unix s, collector clock), before jitter.

    What the schedule promises, independent of what the agent did: the end-to-end tests derive the samples
    they expect in the database from it. Shared targets count only this agent's turns. The host probe is the
    producer `("host", schedule.host_interval)`: the same key, so the same rounds.
    """
    turns = Turns.from_config(config)
    out = []
    for job in make_jobs(config, [(name, interval, None) for name, interval in producers]):
        round_no = math.ceil((start - job.phase) / job.interval)
        while (at := round_no * job.interval + job.phase) < end:
            if not job.shared or turns.my_turn(job.key, round_no):
                out.append((job, at))
            round_no += 1
    return out


@dataclass(order=True, slots=True)
class _Due:
    at: float
    seq: int
    job: Job = field(compare=False)


class Scheduler:
    """Run every job at its interval and phase; pass each run's measurements to `sink` as soon as it ends, and
    its events to `events` (logged when there is none). `host=True` adds the host probe (probes/host.py)."""

    def __init__(
        self,
        config: AgentConfig,
        sink: Sink,
        *,
        producers: Sequence[tuple[str, float, Producer]] = (),
        host: bool = False,
        events: EventSink | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.sink = sink
        self.events = events
        self.clock = clock
        self.host = host
        self.producers = list(producers)
        self.rng = rng or random.Random()
        self.probe_errors_total = 0
        self.runs_total = 0
        # Rounds not run, by why: the job's previous run was still going (`busy`: a probe hanging to its timeout,
        # re-checks of an outage), or the loop woke too late for it (`late`: a stall, a suspend). Never made up;
        # reported in the agent measurement so a gap in a series has a count beside it.
        self.skipped_busy_total = 0
        self.skipped_late_total = 0
        self._seq = 0
        self._tasks: set[asyncio.Task] = set()
        self.reconfigure(config)

    def reconfigure(self, config: AgentConfig, producers: Sequence[tuple[str, float, Producer]] | None = None) -> None:
        """Take `config` (and new producers, when given) for the next run(): call it only while run() is not going."""
        self.config = config
        self.schedule = config.schedule
        self.turns = Turns.from_config(config)
        if producers is not None:
            self.producers = list(producers)
        self.semaphore = asyncio.Semaphore(self.schedule.concurrency)
        self.jobs = make_jobs(config, self.producers, host=self.host)
        self._heap: list[_Due] = []
        self._stop = asyncio.Event()

    def due_time(self, job: Job, now: float) -> float:
        """Return when `job` runs next after `now`: its next round (or turn), phase, and a little jitter."""
        job.last_round = job.next_round(now, self.turns)
        base = job.last_round * job.interval + job.phase
        spread = self.schedule.jitter * job.interval / 2
        return max(now, base + self.rng.uniform(-spread, spread))

    def _push(self, job: Job, at: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Due(at, self._seq, job))

    def _reschedule_all(self, now: float) -> None:
        self._heap = []
        for job in self.jobs:
            job.last_round = None
            self._push(job, self.due_time(job, now))

    async def run(self) -> None:
        """Run until stop(); then let running probes finish for a moment and cancel the rest."""
        now, mono = self.clock(), time.monotonic()
        self._reschedule_all(now)
        try:
            while not self._stop.is_set():
                last_now, last_mono = now, mono
                now, mono = self.clock(), time.monotonic()
                if abs((now - last_now) - (mono - last_mono)) > JUMP_S:
                    log.info("the clock jumped or the agent was suspended (%+.0f s): rescheduling from now",
                             (now - last_now) - (mono - last_mono))
                    self._reschedule_all(now)
                while self._heap and self._heap[0].at <= now:
                    due = heapq.heappop(self._heap)
                    self._start(due.job, now - due.at)
                    self._push(due.job, self.due_time(due.job, now))
                delay = min(MAX_SLEEP_S, self._heap[0].at - now) if self._heap else MAX_SLEEP_S
                try:
                    await asyncio.wait_for(self._stop.wait(), max(delay, 0.01))
                except TimeoutError:
                    pass
        finally:
            await self._finish()

    def stop(self) -> None:
        """Ask run() to return."""
        self._stop.set()

    async def _finish(self) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _start(self, job: Job, late: float) -> None:
        if job.busy:
            job.skipped += 1
            self.skipped_busy_total += 1
            log.info("%s: previous run still going, skipping this round", job.key)
            return
        if late > job.interval / 2:
            job.skipped += 1  # a missed round (stall): not made up
            self.skipped_late_total += 1
            return
        job.busy = True
        task = asyncio.create_task(self._run_job(job), name=f"job {job.key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_job(self, job: Job) -> None:
        try:
            if job.producer is not None:
                await self.sink(await job.producer())
                return
            result = await self._probe(job)
            for _ in range(self.schedule.confirm_count if not result.ok else 0):
                await asyncio.sleep(self.schedule.confirm_interval)  # confirm the outage quickly
                result = await self._probe(job)
                if result.ok:
                    break
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a failing producer or sink must not stop the other jobs
            log.exception("%s: run failed", job.key)
        finally:
            job.runs += 1
            job.busy = False

    async def _probe(self, job: Job) -> ProbeResult:
        assert job.target is not None
        async with self.semaphore:
            result = await run_target(self.config, job.target, job.line)
        self.runs_total += 1
        if any(m.result == "error" for m in result.measurements):
            self.probe_errors_total += 1
        await self.sink(list(result.measurements))  # committed right after the probe ends
        if result.events:
            await self._events(list(result.events))
        return result

    async def _events(self, events: list[Event]) -> None:
        if self.events is not None:
            await self.events(events)
            return
        for event in events:  # the spool cannot hold events yet
            log.info("event %s %s at %d: %s %s", event.kind, dict(event.tags), event.time, event.text,
                     dict(event.attributes))


__all__ = ["EventSink", "HOST_JOB", "Job", "Scheduler", "Turns", "make_jobs", "planned_runs", "stable_hash",
           "unit_fraction"]
