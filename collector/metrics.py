"""The collector's own health in Prometheus text format (`GET /metrics`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Write latency histogram buckets, seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Metrics:
    """Counters and a latency histogram, rendered by `render()`."""

    requests: Counter = field(default_factory=Counter)  # (endpoint, status) → count
    lines_written: int = 0
    samples_written: int = 0
    lines_skipped: int = 0  # already written before (a resend)
    batches_refused: Counter = field(default_factory=Counter)  # reason class → count
    db_errors: int = 0
    shed: int = 0  # ingest requests answered 503 + Retry-After by the admission cap (body not read)
    agent_limited: int = 0  # requests answered 429: their credential had limits.max_uploads_per_agent in progress
    body_timeouts: int = 0  # bodies not received within limits.body_timeout (408)
    enroll_limited: Counter = field(default_factory=Counter)  # enrollments answered 429, by reason (busy, failures)
    evicted_seqs: int = 0  # seqs agents reported evicted (newly recorded)
    lost_seqs: int = 0  # seqs agents reported lost (newly recorded)
    write_buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    write_count: int = 0
    write_sum: float = 0.0

    def request(self, endpoint: str, status: int) -> None:
        """Count a request by endpoint and status."""
        self.requests[(endpoint, status)] += 1

    def written(self, lines: int, samples: int, seconds: float) -> None:
        """Count a successful database write."""
        self.lines_written += lines
        self.samples_written += samples
        self.write_count += 1
        self.write_sum += seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.write_buckets[i] += 1

    def render(self, agents: int, inflight: int = 0, waiting: int = 0, service_s: float = 0.0, *,
               degraded: int = 0, registry_refused: int = 0) -> str:
        """Return the Prometheus text exposition (`inflight`, `waiting`, `service_s`: the admission gate's state;
        `degraded`, `registry_refused`: the fleet registry's)."""
        out = [
            "# HELP cmon_collector_requests_total HTTP requests by endpoint and status.",
            "# TYPE cmon_collector_requests_total counter",
        ]
        out += [f'cmon_collector_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                for (e, s), n in sorted(self.requests.items())]
        out += [
            "# HELP cmon_collector_lines_written_total Line-protocol lines the database accepted.",
            "# TYPE cmon_collector_lines_written_total counter",
            f"cmon_collector_lines_written_total {self.lines_written}",
            "# HELP cmon_collector_samples_written_total Samples (fields) the database accepted.",
            "# TYPE cmon_collector_samples_written_total counter",
            f"cmon_collector_samples_written_total {self.samples_written}",
            "# HELP cmon_collector_lines_skipped_total Lines of resent batches already written (not rewritten).",
            "# TYPE cmon_collector_lines_skipped_total counter",
            f"cmon_collector_lines_skipped_total {self.lines_skipped}",
            "# HELP cmon_collector_batches_refused_total Batches refused, by reason class.",
            "# TYPE cmon_collector_batches_refused_total counter",
        ]
        out += [f'cmon_collector_batches_refused_total{{reason="{r}"}} {n}' for r, n in sorted(self.batches_refused.items())]
        out += [
            "# HELP cmon_collector_db_errors_total Writes the database failed (down, slow, refused).",
            "# TYPE cmon_collector_db_errors_total counter",
            f"cmon_collector_db_errors_total {self.db_errors}",
            "# HELP cmon_collector_write_seconds Database write latency.",
            "# TYPE cmon_collector_write_seconds histogram",
        ]
        out += [f'cmon_collector_write_seconds_bucket{{le="{b}"}} {n}' for b, n in zip(BUCKETS, self.write_buckets)]
        out += [
            f'cmon_collector_write_seconds_bucket{{le="+Inf"}} {self.write_count}',
            f"cmon_collector_write_seconds_sum {self.write_sum:.6f}",
            f"cmon_collector_write_seconds_count {self.write_count}",
            "# HELP cmon_collector_shed_total Ingest requests shed (503 + Retry-After, body not read): overload.",
            "# TYPE cmon_collector_shed_total counter",
            f"cmon_collector_shed_total {self.shed}",
            "# HELP cmon_collector_ingest_inflight Ingest requests being processed (at most limits.max_inflight).",
            "# TYPE cmon_collector_ingest_inflight gauge",
            f"cmon_collector_ingest_inflight {inflight}",
            "# HELP cmon_collector_ingest_waiting Agents told to come back later (tickets of the retry queue).",
            "# TYPE cmon_collector_ingest_waiting gauge",
            f"cmon_collector_ingest_waiting {waiting}",
            "# HELP cmon_collector_ingest_service_seconds Moving average of an admitted ingest request's time inside.",
            "# TYPE cmon_collector_ingest_service_seconds gauge",
            f"cmon_collector_ingest_service_seconds {service_s:.6f}",
            "# HELP cmon_collector_agent_limited_total Requests answered 429: their credential already had "
            "limits.max_uploads_per_agent in progress.",
            "# TYPE cmon_collector_agent_limited_total counter",
            f"cmon_collector_agent_limited_total {self.agent_limited}",
            "# HELP cmon_collector_body_timeouts_total Request bodies not received within limits.body_timeout (408).",
            "# TYPE cmon_collector_body_timeouts_total counter",
            f"cmon_collector_body_timeouts_total {self.body_timeouts}",
            "# HELP cmon_collector_enroll_limited_total Enrollments answered 429: all places taken (busy) or too "
            "many failed enrollments from the address (failures).",
            "# TYPE cmon_collector_enroll_limited_total counter",
        ]
        out += [f'cmon_collector_enroll_limited_total{{reason="{r}"}} {self.enroll_limited[r]}'
                for r in ("busy", "failures")]
        out += [
            "# HELP cmon_collector_evicted_seqs_total Seqs agents reported evicted from a full spool (recorded once).",
            "# TYPE cmon_collector_evicted_seqs_total counter",
            f"cmon_collector_evicted_seqs_total {self.evicted_seqs}",
            "# HELP cmon_collector_lost_seqs_total Seqs agents reported lost (unreadable spool rows; recorded once).",
            "# TYPE cmon_collector_lost_seqs_total counter",
            f"cmon_collector_lost_seqs_total {self.lost_seqs}",
            "# HELP cmon_collector_registry_rows_refused_total Fleet registry rows the state file could not take.",
            "# TYPE cmon_collector_registry_rows_refused_total counter",
            f"cmon_collector_registry_rows_refused_total {registry_refused}",
            "# HELP cmon_collector_agents Agents in the fleet registry.",
            "# TYPE cmon_collector_agents gauge",
            f"cmon_collector_agents {agents}",
            "# HELP cmon_collector_agents_degraded Agents whose last report said health=degraded.",
            "# TYPE cmon_collector_agents_degraded gauge",
            f"cmon_collector_agents_degraded {degraded}",
        ]
        return "\n".join(out) + "\n"


__all__ = ["Metrics"]
