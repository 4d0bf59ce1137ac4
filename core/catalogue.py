"""The one catalogue of what the product writes: measurements, their tags and fields with units, and event kinds.

The wire accepts the measurements `probe` (a target's probe run), `host` (the PC the agent runs on), `agent`
(the agent's own health) and `event` (the numeric series the collector writes for each Event: VictoriaMetrics
metric `event_count`). Each declares its tags (key, meaning, example values) and its fields (name, unit,
meaning, which probes emit it); each event kind its attributes. The collector's tag allowlist
(`DEFAULT_TAG_KEYS`), the measurement names (`MEASUREMENT_NAMES`) and the event kinds (`EVENT_KINDS`) come
from here, and docs/metrics.md's measurement sections are `render_markdown()`'s output
(`python -m core.catalogue` prints it; scripts/render_metrics_doc.py writes it into the page).

Plain frozen dataclasses, no pydantic: the agent imports this, and its memory is counted.
"""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass
from typing import Iterable

# Every unit a field or a numeric attribute may have; docs/metrics.md shows them as they are written here.
UNITS = frozenset({"0/1", "code", "ms", "s", "%", "count", "bytes", "days", "Mbit/s", "number", "version"})
# Where a tag's value comes from: the agent's credential (`identity`), the agent's payload (`payload`: the
# collector's allowlist), or the collector itself (`collector`).
TAG_ORIGINS = frozenset({"identity", "payload", "collector"})
ATTRIBUTE_TYPES = frozenset({"text", "number"})
TARGET_PROBES = ("icmp", "tcp", "http", "dns", "smtp", "imap", "tls")  # probes/registry.py's PROBE_MODULES
_PLACEHOLDER = re.compile(r"<[a-z]+>")


@dataclass(frozen=True, slots=True)
class TagSpec:
    """One tag key: its meaning, example values, and where its value comes from."""

    key: str
    description: str
    examples: tuple[str, ...] = ()
    origin: str = "payload"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One numeric field: name (a `<placeholder>` stands for a family), unit, meaning, who emits it.

    `probes` are the probes that emit it (measurement `probe`); `scope` the tags besides identity that the
    Measurements carrying it have (measurement `host`: `mount`, `interface`, `battery=main`).
    """

    name: str
    unit: str
    description: str
    probes: tuple[str, ...] = ()
    scope: tuple[str, ...] = ()

    def matches(self, field: str) -> bool:
        """Return whether `field` is this field (or one of its family)."""
        if "<" not in self.name:
            return field == self.name
        parts = _PLACEHOLDER.split(self.name)
        return re.fullmatch("[a-z][a-z0-9_]*".join(re.escape(p) for p in parts), field) is not None


@dataclass(frozen=True, slots=True)
class MeasurementSpec:
    """One measurement name: its heading in docs/metrics.md, what it is, its tags and its fields."""

    name: str
    title: str
    description: str
    tags: tuple[TagSpec, ...]
    fields: tuple[FieldSpec, ...]


@dataclass(frozen=True, slots=True)
class AttributeSpec:
    """One attribute of an event kind: `text` or `number` (with a unit)."""

    name: str
    type: str
    description: str
    unit: str = ""


@dataclass(frozen=True, slots=True)
class EventKind:
    """One event kind: what happened, its attributes; `reserved` until the product emits it."""

    name: str
    description: str
    attributes: tuple[AttributeSpec, ...] = ()
    reserved: bool = False


_IDENTITY = (
    TagSpec("province", "the agent's province, from its credential (a payload's own value is ignored)",
            ("ha-tinh",), "identity"),
    TagSpec("commune", "the agent's commune, from its credential", ("dong-loc",), "identity"),
    TagSpec("agent", "the agent's id, from its credential", ("quay-01",), "identity"),
)

PROBE = MeasurementSpec(
    "probe", "",
    "One target's probe run over one line (probes/, agent/runner.py). Each probe's doc page (`docs/probes/`) "
    "tells when each of its fields is present.",
    _IDENTITY + (
        TagSpec("service", "the service the target belongs to (`agent` for the agent's own probes)",
                ("ioffice", "dvc", "email", "dns", "internet")),
        TagSpec("target", "the target's name", ("ioffice-web", "mail")),
        TagSpec("probe", "the probe that ran (`host` when the agent's host probe failed as a whole)",
                TARGET_PROBES + ("host",)),
        TagSpec("line", "the line it went over; `auto` when unpinned and unidentified", ("primary", "backup", "auto")),
    ),
    (
        FieldSpec("up", "0/1", "1 when the probe succeeded", TARGET_PROBES),
        FieldSpec("result_code", "code", "why it failed (0 = ok), see `result` below; one continuous series per "
                  "target and line", TARGET_PROBES),
        FieldSpec("duration_ms", "ms", "the whole probe, start to end", TARGET_PROBES),
        FieldSpec("rtt_ms", "ms", "median round-trip time of the answered echoes", ("icmp",)),
        FieldSpec("rtt_avg_ms", "ms", "mean round-trip time of the answered echoes", ("icmp",)),
        FieldSpec("rtt_min_ms", "ms", "shortest round-trip time of the answered echoes", ("icmp",)),
        FieldSpec("rtt_max_ms", "ms", "longest round-trip time of the answered echoes", ("icmp",)),
        FieldSpec("jitter_ms", "ms", "mean of abs(RTT(i) - RTT(i-1)) over consecutive answered echoes", ("icmp",)),
        FieldSpec("loss_pct", "%", "lost echoes, 0 to 100", ("icmp",)),
        FieldSpec("sent", "count", "echoes sent", ("icmp",)),
        FieldSpec("received", "count", "echoes answered in time", ("icmp",)),
        FieldSpec("dns_ms", "ms", "fresh DNS lookup of the host (A and AAAA in parallel; http: summed over hosts); "
                  "dns: first query sent → answer received", TARGET_PROBES),
        FieldSpec("connect_ms", "ms", "TCP handshake (http: summed over hops)", ("tcp", "http", "smtp", "imap", "tls")),
        FieldSpec("tls_ms", "ms", "TLS handshake incl. certificate verification (for STARTTLS: from the STARTTLS "
                  "command to the end of the handshake)", ("http", "smtp", "imap", "tls")),
        FieldSpec("ttfb_ms", "ms", "connection ready → response headers (blackbox_exporter's `processing` phase)",
                  ("http",)),
        FieldSpec("banner_ms", "ms", "connected → greeting received (tcp: only with `expect_banner`)",
                  ("tcp", "smtp", "imap")),
        FieldSpec("login_ms", "ms", "http: the web login steps (only with `login`); imap: LOGIN sent → OK (only "
                  "with `username`)", ("http", "imap")),
        FieldSpec("auth_ms", "ms", "AUTH sent → accepted (only with `username`)", ("smtp",)),
        FieldSpec("send_ms", "ms", "MAIL FROM → test message accepted (only with `send_test_mail`)", ("smtp",)),
        FieldSpec("status_code", "code", "HTTP status of the final response; the last SMTP reply code on failure",
                  ("http", "smtp")),
        FieldSpec("redirects", "count", "redirects followed to reach the final page", ("http",)),
        FieldSpec("body_bytes", "bytes", "body bytes read (decompressed; at most `max_body_bytes`)", ("http",)),
        FieldSpec("cert_days_left", "days", "days until the server certificate's notAfter (negative when expired)",
                  ("http", "smtp", "imap", "tls")),
        FieldSpec("cert_expiring", "0/1", "1 when `cert_days_left` is below `min_days_left`", ("tls",)),
        FieldSpec("chain_length", "count", "certificates the server sent (leaf + intermediates)", ("tls",)),
        FieldSpec("tls_version", "version", "negotiated TLS version: 1.0, 1.1, 1.2, 1.3", ("tls",)),
        FieldSpec("retries", "count", "retransmissions the DNS query needed (0 on a clean line)", ("dns",)),
        FieldSpec("rcode", "code", "the DNS answer code: 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED", ("dns",)),
        FieldSpec("answers", "count", "records of the asked type in the answer", ("dns",)),
    ),
)

_MOUNT, _IFACE, _BATTERY = ("mount",), ("interface",), ("battery=main",)
EVERY = ("*",)  # a `scope` meaning: every Measurement of the name carries it
HOST = MeasurementSpec(
    "host", "the PC the agent runs on",
    "Every `schedule.host_interval` (30 s) each agent runs its `host` probe (probes/host.py), which returns "
    "several `host` Measurements: one with the whole PC's fields (identity tags only), one per disk (tag "
    "`mount`), one per network interface (tag `interface`), one for the battery when there is one (tag "
    "`battery=main`). Counters since boot are totals: query them with `rate()` / `increase()`. More: "
    "[probes/host.md](probes/host.md#fields).",
    _IDENTITY + (
        TagSpec("mount", "a real disk's mount point", ("/", "C:\\")),
        TagSpec("interface", "a network interface (loopback left out)", ("eth0", "Ethernet")),
        TagSpec("battery", "the PC's battery, when it has one", ("main",)),
    ),
    (
        FieldSpec("result_code", "code", "always 0 (`ok`): a part that cannot be read is left out", scope=EVERY),
        FieldSpec("cpu_pct", "%", "CPU use since the previous run (absent in the first run)"),
        FieldSpec("cpu_count", "count", "logical CPUs"),
        FieldSpec("load1", "number", "1-minute load average (absent on Windows)"),
        FieldSpec("mem_pct", "%", "memory in use"),
        FieldSpec("mem_used_bytes", "bytes", "memory in use (total − available)"),
        FieldSpec("mem_available_bytes", "bytes", "memory available"),
        FieldSpec("mem_total_bytes", "bytes", "memory installed"),
        FieldSpec("swap_pct", "%", "swap in use (absent without swap)"),
        FieldSpec("uptime_s", "s", "since the PC booted"),
        FieldSpec("procs", "count", "processes"),
        FieldSpec("disk_pct", "%", "disk space in use", scope=_MOUNT),
        FieldSpec("disk_used_bytes", "bytes", "disk space in use", scope=_MOUNT),
        FieldSpec("disk_free_bytes", "bytes", "disk space free", scope=_MOUNT),
        FieldSpec("disk_total_bytes", "bytes", "disk size", scope=_MOUNT),
        FieldSpec("net_up", "0/1", "the interface is up", scope=_IFACE),
        FieldSpec("net_speed_mbps", "Mbit/s", "link speed (when the driver tells)", scope=_IFACE),
        FieldSpec("net_rx_bytes", "bytes", "bytes received since boot", scope=_IFACE),
        FieldSpec("net_tx_bytes", "bytes", "bytes sent since boot", scope=_IFACE),
        FieldSpec("net_rx_packets", "count", "packets received since boot", scope=_IFACE),
        FieldSpec("net_tx_packets", "count", "packets sent since boot", scope=_IFACE),
        FieldSpec("net_rx_errors", "count", "receive errors since boot", scope=_IFACE),
        FieldSpec("net_tx_errors", "count", "send errors since boot", scope=_IFACE),
        FieldSpec("net_rx_drops", "count", "incoming packets dropped since boot", scope=_IFACE),
        FieldSpec("net_tx_drops", "count", "outgoing packets dropped since boot", scope=_IFACE),
        FieldSpec("battery_pct", "%", "charge", scope=_BATTERY),
        FieldSpec("battery_plugged", "0/1", "on mains power", scope=_BATTERY),
        FieldSpec("battery_left_s", "s", "time left, when discharging and known", scope=_BATTERY),
    ),
)

AGENT = MeasurementSpec(
    "agent", "the agent's own health",
    "Every `schedule.host_interval` (30 s) each agent sends one `agent` Measurement (`agent/selfmetrics.py`, "
    "docs/agent.md). Counters (`*_total`) count over the spool file's life (spool counts) or since the process "
    "started (shipper and task counts).",
    _IDENTITY + (TagSpec("version", "the agent's package version", ("0.1.0",)),),
    (
        FieldSpec("result_code", "code", "always 0 (`ok`)"),
        FieldSpec("spool_rows", "count", "measurements waiting in the spool"),
        FieldSpec("dropped_total", "count", "measurements lost for want of room: evicted because the spool was at "
                  "its size cap, or never committed (the disk full, an I/O error)"),
        FieldSpec("dropped_disk_full_total", "count", "the part of `dropped_total` not committed because the disk "
                  "was full"),
        FieldSpec("lost_total", "count", "measurements the spool could not read back (a damaged row or page), "
                  "reported to the collector as lost"),
        FieldSpec("quarantined_total", "count", "measurements the collector refused as invalid (400), kept aside"),
        FieldSpec("shipped_total", "count", "measurements acknowledged"),
        FieldSpec("ship_failures_total", "count", "requests to the collector that failed"),
        FieldSpec("spool_errors_total", "count", "acknowledgements (or quarantines) the spool could not write at "
                  "first, then retried"),
        FieldSpec("auth_refused", "0/1", "the collector refuses the credential (401/403)"),
        FieldSpec("disk_free_bytes", "bytes", "free space of the file system that holds the spool"),
        FieldSpec("spool_disk_low", "0/1", "that free space is less than the spool may still need (its cap, plus "
                  "its WAL): the disk would fill before the spool does"),
        FieldSpec("healthy", "0/1", "1 when the agent's `health` is `ok`: every task ok, the spool commits, "
                  "acknowledged batches are deleted"),
        FieldSpec("task_restarts_total", "count", "supervised task failures (each followed by a restart)"),
        FieldSpec("task_<name>_restarts_total", "count", "the same per task: `shipper`, `scheduler`, `spool_check`, "
                  "`disk_watch`"),
        FieldSpec("task_<name>_ok", "0/1", "the task is `ok` (not `restarting` or `failed`)"),
        FieldSpec("probe_runs_total", "count", "probe runs"),
        FieldSpec("probe_errors_total", "count", "probe runs that ended in `result=error` (a bug)"),
        FieldSpec("rounds_skipped_busy_total", "count", "rounds not run because the job's previous run was still "
                  "going (a probe hanging to its timeout, an outage's re-checks): a gap in that series, counted"),
        FieldSpec("rounds_skipped_late_total", "count", "rounds not run because the agent woke too late for them "
                  "(a stall, a suspended PC): never made up"),
        FieldSpec("clock_skew_ms", "ms", "the collector's clock minus the agent's (once measured)"),
        FieldSpec("clock_measured", "0/1", "whether the clock skew has been measured since start"),
        FieldSpec("config_version", "number", "first 32 bits of the config file's SHA-256"),
        FieldSpec("uptime_s", "s", "since the agent process started"),
        FieldSpec("rss_bytes", "bytes", "the agent process's resident memory"),
        FieldSpec("cpu_s", "s", "the agent process's CPU time (user + system)"),
    ),
)

EVENT = MeasurementSpec(
    "event", "",
    "For every Event it accepts, the collector writes one point of the measurement `event` to VictoriaMetrics: "
    "the metric `event_count{kind=\"...\"}`, for dashboards to draw as annotations and for alert rules to count.",
    (TagSpec("kind", "the event's kind (below); set by the collector from the Event", ("agent_stopped",),
             "collector"),) + _IDENTITY,
    (FieldSpec("count", "count", "1 for each event: `sum_over_time(event_count[1h])` counts them"),),
)

MEASUREMENTS: tuple[MeasurementSpec, ...] = (PROBE, HOST, AGENT, EVENT)
_BY_NAME = {m.name: m for m in MEASUREMENTS}

_RUN = (AttributeSpec("version", "text", "the agent's package version"),
        AttributeSpec("config_version", "text", "`sha256:<hex>` of the agent's config file"))
EVENTS: tuple[EventKind, ...] = (
    EventKind("agent_started", "the agent process started", _RUN),
    EventKind("agent_stopped", "the agent stopped cleanly (a service stop, SIGTERM): silence after it is no "
              "outage", (AttributeSpec("reason", "text", "why it stopped, e.g. the signal"),
                         AttributeSpec("uptime_s", "number", "how long the agent had run", "s"), *_RUN)),
    EventKind("config_reloaded", "the agent applied a new configuration without a restart (SIGHUP, systemctl "
              "reload, cmon agent reload)",
              (AttributeSpec("config_version", "text", "`sha256:<hex>` of the configuration now in use"),
               AttributeSpec("previous_config_version", "text", "`sha256:<hex>` of the one before"),
               AttributeSpec("held", "text", "keys that changed but wait for a restart (identity, spool, collector "
                             "address), comma-separated; empty when everything applied"),
               AttributeSpec("jobs", "number", "the scheduler's jobs after the reload: each target × line, host "
                             "health, the agent's own measurement", "count"))),
    EventKind("config_rejected", "a reload found errors in the new configuration: the agent goes on with the one "
              "it has", (AttributeSpec("errors", "number", "how many errors the file has", "count"),
                         AttributeSpec("first_error", "text", "the first of them, `file:line: key: message`"))),
    EventKind("failover", "a line event: the site's traffic moved from its primary line to a backup line",
              reserved=True),
    EventKind("failback", "a line event: the site's traffic is back on its primary line", reserved=True),
    EventKind("trap", "an SNMP trap a monitored device sent", reserved=True),
    EventKind("device_restart", "a monitored device restarted (its uptime went back)", reserved=True),
    EventKind("drill", "a planned test (a line unplugged on purpose): tells drills from outages", reserved=True),
)

MEASUREMENT_NAMES: frozenset[str] = frozenset(_BY_NAME)
EVENT_KINDS: frozenset[str] = frozenset(e.name for e in EVENTS)
IDENTITY_TAGS: tuple[str, ...] = tuple(t.key for t in _IDENTITY)
# The tag keys an agent's payload may carry (the collector's allowlist), in catalogue order.
DEFAULT_TAG_KEYS: tuple[str, ...] = tuple(dict.fromkeys(
    t.key for m in MEASUREMENTS for t in m.tags if t.origin == "payload"))


def measurement(name: str) -> MeasurementSpec | None:
    """Return the spec of measurement `name`, or None for a name the wire does not accept."""
    return _BY_NAME.get(name)


def field_spec(name: str, field: str) -> FieldSpec | None:
    """Return the spec of `field` in measurement `name`, or None when the catalogue does not declare it."""
    spec = _BY_NAME.get(name)
    if spec is None:
        return None
    exact = next((f for f in spec.fields if f.name == field), None)  # an exact name wins over a family
    return exact or next((f for f in spec.fields if f.matches(field)), None)


def unknown_fields(measurement_name: str, field_names: Iterable[str]) -> list[str]:
    """Return the field names (in the order given, once each) the catalogue does not declare for the measurement."""
    names = dict.fromkeys(field_names)
    return [f for f in names if field_spec(measurement_name, f) is None]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _codes(values: tuple[str, ...]) -> str:
    return ", ".join(f"`{v}`" for v in values)


def _tags_table(spec: MeasurementSpec) -> list[str]:
    origin = {"identity": " (from the credential)", "collector": " (set by the collector)", "payload": ""}
    rows = ["| tag | examples | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{t.key}`{origin[t.origin]} | {_codes(t.examples)} | {_cell(t.description)} |" for t in spec.tags]
    return rows


def _fields_table(spec: MeasurementSpec) -> list[str]:
    probes = any(f.probes for f in spec.fields)
    scoped = any(f.scope for f in spec.fields)
    head = ["field", "unit"] + (["probes"] if probes else []) + (["tags"] if scoped else []) + ["meaning"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for f in spec.fields:
        cells = [f"`{f.name}`", f.unit]
        if probes:
            cells.append("all" if f.probes == TARGET_PROBES else ", ".join(f.probes))
        if scoped:
            cells.append("all" if f.scope == EVERY else "identity" + "".join(f" + `{s}`" for s in f.scope))
        cells.append(_cell(f.description))
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _attributes(kind: EventKind) -> str:
    if kind.reserved and not kind.attributes:
        return "declared when the product emits it"
    parts = []
    for a in kind.attributes:
        unit = f", {a.unit}" if a.unit else ""
        parts.append(f"`{a.name}` ({a.type}{unit}): {a.description}")
    return _cell("; ".join(parts))


def _prose(text: str) -> str:
    return textwrap.fill(text, width=115, break_long_words=False, break_on_hyphens=False)


def _section(spec: MeasurementSpec, level: str = "##") -> list[str]:
    title = f"{level} Measurement `{spec.name}`" + (f": {spec.title}" if spec.title else "")
    return [title, "", _prose(spec.description), "", *_tags_table(spec), "", *_fields_table(spec), ""]


def render_markdown() -> str:
    """Return docs/metrics.md's measurement and event sections, tables from the catalogue."""
    lines = [*_section(PROBE), *_section(HOST), *_section(AGENT)]
    lines += [
        "## Events",
        "",
        _prose("Something that happened at one moment is an Event (`core/event.py`): a `kind`, the same identity tags as "
        "a Measurement (plus any of the allowed tags, e.g. `line`), a time, a text for people and attributes "
        "(text or numbers). The collector keeps every Event, with its text and attributes, in its own database; "
        "VictoriaMetrics gets only the numeric series below."),
        "",
        *_section(EVENT, "###"),
        "### Event kinds",
        "",
        _prose("Kinds marked reserved are declared for what the product will report next; nothing emits them yet."),
        "",
        "| kind | meaning | attributes |",
        "| --- | --- | --- |",
    ]
    for kind in EVENTS:
        name = f"`{kind.name}`" + (" (reserved)" if kind.reserved else "")
        lines.append(f"| {name} | {_cell(kind.description)} | {_attributes(kind)} |")
    return "\n".join(lines) + "\n"


__all__ = ["AGENT", "ATTRIBUTE_TYPES", "AttributeSpec", "DEFAULT_TAG_KEYS", "EVENT", "EVENTS", "EVENT_KINDS", "EVERY",
           "EventKind", "FieldSpec", "HOST", "IDENTITY_TAGS", "MEASUREMENTS", "MEASUREMENT_NAMES", "MeasurementSpec",
           "PROBE", "TAG_ORIGINS", "TARGET_PROBES", "TagSpec", "UNITS", "field_spec", "measurement", "render_markdown",
           "unknown_fields"]

if __name__ == "__main__":
    if sys.argv[1:] not in ([], ["--markdown"]):
        sys.exit("usage: python -m core.catalogue [--markdown]")
    sys.stdout.write(render_markdown())
