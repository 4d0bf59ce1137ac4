"""The collector's own health in Prometheus text format (`GET /metrics`), through prometheus_client.

Each application has its own `CollectorRegistry` (never the process-global one: two collectors in one process,
as in the tests, count apart). Counters and the write-latency histogram are updated where things happen; the
gauges that describe state owned elsewhere (the admission gate, the fleet registry) are read at scrape time by
`render()`. prometheus_client also exposes a `<name>_created` sample (a timestamp) per counter and histogram.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

# Write latency histogram buckets, seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ENROLL_REASONS = ("busy", "failures")


class _RegistryRefused(Collector):
    """`cmon_collector_registry_rows_refused_total`: a count the fleet registry keeps, read at scrape time."""

    def __init__(self) -> None:
        self.value = 0

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("cmon_collector_registry_rows_refused",
                                  "Fleet registry rows the state file could not take.", value=self.value)

    def describe(self) -> Iterator[Metric]:
        return self.collect()


class Metrics:
    """The collector's counters, histogram and gauges in one registry of its own; `render()` exposes them."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests_total = Counter("cmon_collector_requests", "HTTP requests by endpoint and status.",
                                      ("endpoint", "status"), registry=r)
        self._requests: dict[tuple[str, int], object] = {}  # (endpoint, status) → its child (no lookup per request)
        self.lines_written_total = Counter("cmon_collector_lines_written",
                                           "Line-protocol lines the database accepted.", registry=r)
        self.samples_written_total = Counter("cmon_collector_samples_written",
                                             "Samples (fields) the database accepted.", registry=r)
        self.lines_skipped_total = Counter("cmon_collector_lines_skipped",
                                           "Lines of resent batches already written (not rewritten).", registry=r)
        self.batches_refused_total = Counter("cmon_collector_batches_refused", "Batches refused, by reason class.",
                                             ("reason",), registry=r)
        self.events_total = Counter("cmon_collector_events",
                                    "Agents' events stored (each once, however often it was sent).", registry=r)
        self.db_errors_total = Counter("cmon_collector_db_errors",
                                       "Writes the database failed (down, slow, refused).", registry=r)
        self.write_seconds = Histogram("cmon_collector_write_seconds", "Database write latency.", buckets=BUCKETS,
                                       registry=r)
        # Ingest requests answered 503 + Retry-After by the admission cap (body not read).
        self.shed_total = Counter("cmon_collector_shed",
                                  "Ingest requests shed (503 + Retry-After, body not read): overload.", registry=r)
        self.ingest_inflight = Gauge("cmon_collector_ingest_inflight",
                                     "Ingest requests being processed (at most limits.max_inflight).", registry=r)
        self.ingest_waiting = Gauge("cmon_collector_ingest_waiting",
                                    "Agents told to come back later (tickets of the retry queue).", registry=r)
        self.ingest_service_seconds = Gauge(
            "cmon_collector_ingest_service_seconds",
            "Moving average of an admitted ingest request's time inside.", registry=r)
        self.agent_limited_total = Counter(
            "cmon_collector_agent_limited",
            "Requests answered 429: their credential already had limits.max_uploads_per_agent in progress.",
            registry=r)
        self.body_timeouts_total = Counter(
            "cmon_collector_body_timeouts", "Request bodies not received within limits.body_timeout (408).",
            registry=r)
        self.enroll_limited_total = Counter(
            "cmon_collector_enroll_limited",
            "Enrollments answered 429: all places taken (busy) or too many failed enrollments from the address "
            "(failures).", ("reason",), registry=r)
        for reason in ENROLL_REASONS:  # both shown from the start, at 0
            self.enroll_limited_total.labels(reason)
        self.evicted_seqs_total = Counter(
            "cmon_collector_evicted_seqs", "Seqs agents reported evicted from a full spool (recorded once).",
            registry=r)
        self.lost_seqs_total = Counter(
            "cmon_collector_lost_seqs", "Seqs agents reported lost (unreadable spool rows; recorded once).",
            registry=r)
        self._registry_refused = _RegistryRefused()
        r.register(self._registry_refused)
        self.agents = Gauge("cmon_collector_agents", "Agents in the fleet registry.", registry=r)
        self.agents_degraded = Gauge("cmon_collector_agents_degraded",
                                     "Agents whose last report said health=degraded.", registry=r)

    def request(self, endpoint: str, status: int) -> None:
        """Count a request by endpoint and status."""
        child = self._requests.get((endpoint, status))
        if child is None:
            child = self._requests[(endpoint, status)] = self.requests_total.labels(endpoint, str(status))
        child.inc()  # type: ignore[attr-defined]

    def written(self, lines: int, samples: int, seconds: float) -> None:
        """Count a successful database write."""
        self.lines_written_total.inc(lines)
        self.samples_written_total.inc(samples)
        self.write_seconds.observe(seconds)

    def value(self, name: str, **labels: str) -> float:
        """Return one sample's value (0 when absent), e.g. `value("cmon_collector_shed_total")`."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    @property
    def shed(self) -> float:
        """Return how many ingest requests were shed."""
        return self.value("cmon_collector_shed_total")

    def render(self, agents: int, inflight: int = 0, waiting: int = 0, service_s: float = 0.0, *,
               degraded: int = 0, registry_refused: int = 0) -> bytes:
        """Return the Prometheus text exposition (`inflight`, `waiting`, `service_s`: the admission gate's state;
        `degraded`, `registry_refused`: the fleet registry's)."""
        self.ingest_inflight.set(inflight)
        self.ingest_waiting.set(waiting)
        self.ingest_service_seconds.set(service_s)
        self.agents.set(agents)
        self.agents_degraded.set(degraded)
        self._registry_refused.value = registry_refused
        return generate_latest(self.registry)


__all__ = ["BUCKETS", "Metrics"]
