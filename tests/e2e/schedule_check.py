"""Compare what VictoriaMetrics holds with what the agent's schedule promised (`agent.scheduler.planned_runs`).

The agent runs with `jitter: 0`, so every run of a job happens at a planned time `r × T + phase` (collector
clock), give or take the event loop's latency. For each agent process (a `Window`: launched → its first
heartbeat at the collector, after which its scheduler starts → stopped) every round planned inside the window
MUST be in VM once, and none outside it may be:

- a round planned after `scheduling + START_MARGIN_S` and before the stop must be there (after a SIGKILL only
  those planned `KILL_MARGIN_S` before it: a run in progress may die uncommitted);
- a round planned between launch and the heartbeat, or in those margins, may be there or not;
- any other sample, or two samples of one series for one round, is a failure.

"Be there" means, for a probe job, a sample in EVERY series of that target (each field: the distinct (series,
timestamp) pairs are exactly fields × rounds); for host health and self-metrics, a sample of `host_mem_pct` /
`agent_uptime_s` (other host series vary: `cpu_pct` is not in a process's first sample) and no stray sample in
any `host_*` / `agent_*` series. Nothing here looks at the agent's own counters. The agent's lifecycle events
(`event_count`) are checked per process too (`check_events`).
"""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass
from typing import Sequence

from agent.scheduler import planned_runs

START_MARGIN_S = 0.3
KILL_MARGIN_S = 0.6
EARLY_S, LATE_S = 0.1, 0.6  # a sample belongs to the round planned at most EARLY_S after / LATE_S before it
ANCHORS = {"host": "host_mem_pct", "self": "agent_uptime_s"}
IDENTITY = {"province": "ha-tinh", "commune": "dong-loc", "agent": "quay-01"}


@dataclass(frozen=True)
class Window:
    """One agent process: launched, first heartbeat seen (its scheduler starts after it), stopped (Unix s)."""

    launched: float
    scheduling: float | None
    ended: float | None
    clean: bool = True
    open_end: bool = False  # still running: rounds after `ended` may be there already

    def verdict(self, at: float) -> str | None:
        """Return 'must', 'may' or None (outside) for a round planned at `at`."""
        if at < self.launched or self.scheduling is None:
            return None
        end = self.ended if self.ended is not None else float("inf")
        must_end = end if (self.clean or self.open_end) else end - KILL_MARGIN_S
        if self.scheduling + START_MARGIN_S <= at < must_end:
            return "must"
        if at >= end and not self.open_end:
            return None
        return "may"


def job_of(metric: dict) -> str:
    """Return the scheduler job key a series comes from."""
    name = metric["__name__"]
    if name.startswith("probe_"):
        line = metric.get("line", "auto")
        return f"{metric['target']}/{'-' if line == 'auto' else line}"  # unpinned runs are tagged line=auto
    return "host" if name.startswith("host_") else "self"


def check_schedule(config, exported: list[dict], windows: Sequence[Window],
                   producers: Sequence[tuple[str, float]], events: bool = True) -> dict[str, int]:
    """Assert the exported series hold exactly the promised rounds; return rounds found per job.

    With `events`, each window is one agent process and its lifecycle events are checked too (check_events);
    windows that split one process (a full-disk episode) check them apart."""
    start = min(w.launched for w in windows) - 5
    end = max((w.ended or 0) for w in windows) + 5
    planned: dict[str, list[float]] = collections.defaultdict(list)
    verdict: dict[tuple[str, float], str] = {}
    for job, at in planned_runs(config, start, end, producers):
        verdicts = {w.verdict(at) for w in windows} - {None}
        planned[job.key].append(at)
        if verdicts:
            verdict[(job.key, at)] = "must" if "must" in verdicts else "may"
    problems = check_events([s for s in exported if s["metric"]["__name__"] == "event_count"], windows) if events else []
    exported = [s for s in exported if s["metric"]["__name__"] != "event_count"]
    found: dict[str, set[float]] = collections.defaultdict(set)  # job → rounds seen in its anchor series
    per_series: dict[str, list[set[float]]] = collections.defaultdict(list)
    for series in exported:
        metric = series["metric"]
        wrong = {k: metric.get(k) for k, v in IDENTITY.items() if metric.get(k) != v}
        if wrong:
            problems.append(f"{metric}: identity tags {wrong} not from the credential")
        key = job_of(metric)
        times = planned.get(key)
        if not times:
            problems.append(f"{metric}: no such job {key!r} in the schedule")
            continue
        rounds: set[float] = set()
        for stamp in series["timestamps"]:
            at = _round_of(times, stamp / 1000)
            if at is None:
                problems.append(f"{metric['__name__']} {key}: sample at {stamp} is no planned round")
            elif at in rounds:
                problems.append(f"{metric['__name__']} {key}: two samples for the round planned at {at:.3f}")
            elif (key, at) not in verdict:
                problems.append(f"{metric['__name__']} {key}: sample at {stamp} outside every agent process")
            rounds.add(at)
        per_series[key].append(rounds)
        if key in ANCHORS and metric["__name__"] == ANCHORS[key]:
            found[key] = rounds
    for key, series_rounds in per_series.items():
        if key not in ANCHORS:  # every field of a probe job: the same rounds
            found[key] = set.union(*series_rounds)
            for rounds in series_rounds:
                if rounds != found[key]:
                    problems.append(f"{key}: a field misses rounds {sorted(found[key] - rounds)[:5]}")
    for (key, at), kind in sorted(verdict.items()):
        if kind == "must" and at not in found.get(key, ()):
            problems.append(f"{key}: the round planned at {at:.3f} is missing")
    assert not problems, f"{len(problems)} problems (windows {windows}):\n" + "\n".join(problems[:40])
    return {key: len(rounds) for key, rounds in sorted(found.items())}


def check_events(exported: list[dict], windows: Sequence[Window]) -> list[str]:
    """Return what is wrong with the agent's lifecycle events in VM (`event_count{kind=...}`).

    Every agent process that reached the collector committed one `agent_started` (before its first probe, just
    after its first heartbeat); every process stopped cleanly one `agent_stopped`, and a killed one none: after
    kills and collector restarts, each is there exactly once."""
    times: dict[str, list[float]] = collections.defaultdict(list)
    for series in exported:
        times[series["metric"].get("kind", "?")] += [t / 1000 for t in series["timestamps"]]
    problems = [f"unexpected event kind {kind!r}" for kind in times if kind not in ("agent_started", "agent_stopped")]
    started = [w for w in windows if w.scheduling is not None]
    stopped = [w for w in started if w.clean and not w.open_end and w.ended is not None]
    for kind, expected, low, high in (
            ("agent_started", started, lambda w: w.launched, lambda w: w.scheduling + 2.0),
            ("agent_stopped", stopped, lambda w: w.scheduling, lambda w: w.ended + 0.5)):
        seen = sorted(times.get(kind, []))
        if len(seen) != len(expected):
            problems.append(f"{kind}: {len(seen)} events at {seen}, expected one for each of {expected}")
            continue
        for at, w in zip(seen, sorted(expected, key=lambda w: w.launched)):
            if not low(w) - 0.1 <= at <= high(w):
                problems.append(f"{kind} at {at:.3f} is outside its agent process {w}")
    return problems


def _round_of(times: list[float], t: float) -> float | None:
    i = bisect.bisect_right(times, t + EARLY_S) - 1
    if i >= 0 and t - times[i] <= LATE_S:
        return times[i]
    return None
