"""The probe contract: the target config every probe extends, the line a probe is pinned to, the probe context.

A probe module declares `NAME`, a `Config(TargetConfig)` with `probe: Literal[NAME]`, and
`async def probe(config, ctx) -> Measurement | ProbeResult`: one Measurement (every target probe), or a
`ProbeResult` holding several Measurements and Events (host health; an SNMP poller). It never raises: failures
become `ctx.failure(...)`. The runner (agent/runner.py) adds the timeout around it and the identity tags to every
Measurement and Event after it. The general config value
types (durations, host names, `StrictModel`) are in core.config.types.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from pydantic import Field

from core.config.types import Duration, Slug, StrictModel
from core.event import Event
from core.measurement import Measurement


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probe run produced: its Measurements (in order) and its Events (none for most probes).

    A probe that measures one thing returns its Measurement; the runner turns it into `ProbeResult.of(m)`, so
    everything after the probe sees one shape.
    """

    measurements: tuple[Measurement, ...] = ()
    events: tuple[Event, ...] = ()

    def __init__(self, measurements: Iterable[Measurement] = (), events: Iterable[Event] = ()) -> None:
        object.__setattr__(self, "measurements", tuple(measurements))
        object.__setattr__(self, "events", tuple(events))
        for m in self.measurements:
            if not isinstance(m, Measurement):
                raise TypeError(f"a ProbeResult holds Measurements, not {type(m).__name__}")
        for e in self.events:
            if not isinstance(e, Event):
                raise TypeError(f"a ProbeResult's events are Events, not {type(e).__name__}")

    @classmethod
    def of(cls, value: "Measurement | ProbeResult") -> "ProbeResult":
        """Return what a probe returned as a ProbeResult (TypeError for anything else)."""
        if isinstance(value, ProbeResult):
            return value
        if isinstance(value, Measurement):
            return cls((value,))
        raise TypeError(f"probe returned {type(value).__name__}, not a Measurement or a ProbeResult")

    @property
    def ok(self) -> bool:
        """Whether every Measurement says `result=ok` (a down probe is re-checked by the scheduler)."""
        return all(m.result == "ok" for m in self.measurements)

    def with_tags(self, **tags: str) -> "ProbeResult":
        """Return a copy with extra tags on every Measurement and Event (the runtime's identity tags)."""
        return ProbeResult((m.with_tags(**tags) for m in self.measurements),
                           (e.with_tags(**tags) for e in self.events))


class LineConfig(StrictModel):
    """How to send a probe over one line (WAN). Pick what the site has; see docs/lines.md.

    - `source`: bind to this local address (a PC with one address per line, or a second address on the one NIC
      that the dual-WAN router policy-routes through this WAN — the most widely supported router rule).
    - `interface`: bind to this interface (SO_BINDTODEVICE, Linux; a PC with one NIC per line).
    - `fwmark`: set SO_MARK for local policy routing (Linux, CAP_NET_ADMIN; a PC that is itself the router).
    - `dscp`: set the DSCP bits the router matches to pick this WAN (one NIC, router rule by DSCP).
    - `hosts`: per-line destinations: a hostname → the address to use on this line (e.g. the service's
      second address that the router routes through this WAN).
    - `resolver`: the DNS server to use over this line (else the agent's resolvers).
    """

    description: str = ""
    source: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    interface: str | None = Field(default=None, min_length=1, max_length=15)
    fwmark: int | None = Field(default=None, ge=1, le=0xFFFFFFFF)
    dscp: int | None = Field(default=None, ge=0, le=63)
    resolver: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    hosts: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Line:
    """A named line, as the probes see it (`name` is the `line` tag)."""

    name: str
    config: LineConfig = field(default_factory=LineConfig)

    @property
    def pinned(self) -> bool:
        """Whether anything actually steers traffic onto this line."""
        c = self.config
        return any(v is not None for v in (c.source, c.interface, c.fwmark, c.dscp)) or bool(c.hosts)


# The `line` tag of a probe that is not pinned and whose line could not be identified.
UNPINNED = "auto"


class TargetConfig(StrictModel):
    """Keys every target has, whatever its probe."""

    name: Slug
    probe: str
    display_name: str | None = None
    timeout: Duration = 5.0
    interval: Duration = 30.0
    # Restrict to these lines (names from `lines:`); empty means every configured line.
    lines: list[str] = Field(default_factory=list)
    ip_family: str = Field(default="auto", pattern=r"^(auto|ipv4|ipv6)$")


@dataclass(slots=True)
class ProbeContext:
    """What a probe run knows besides its config: the line, the clock, the resolvers."""

    service: str
    target: TargetConfig
    line: Line | None = None
    all_lines: Mapping[str, Line] = field(default_factory=dict)
    resolvers: tuple[str, ...] = ()
    time_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    started: float = field(default_factory=time.monotonic)
    observed_line: str | None = None

    @property
    def timeout(self) -> float:
        """The whole probe's time budget in seconds."""
        return self.target.timeout

    def remaining(self) -> float:
        """Seconds left of the budget (never negative)."""
        return max(0.0, self.started + self.timeout - time.monotonic())

    def elapsed_ms(self) -> float:
        """Milliseconds since the probe started."""
        return (time.monotonic() - self.started) * 1000.0

    def note_local_address(self, address: str) -> None:
        """Identify an unpinned probe's line from the local address the kernel picked."""
        if self.line is not None:
            return
        for line in self.all_lines.values():
            if line.config.source is not None and str(line.config.source) == address:
                self.observed_line = line.name
                return

    @property
    def line_tag(self) -> str:
        """The `line` tag: the pinned line, else the line identified from the local address, else `auto`."""
        if self.line is not None:
            return self.line.name
        return self.observed_line or UNPINNED

    def _tags(self) -> dict[str, str]:
        return {
            "service": self.service,
            "target": self.target.name,
            "probe": self.target.probe,
            "line": self.line_tag,
        }

    def success(self, fields: Mapping[str, float | None]) -> Measurement:
        """Return the Measurement of a run that worked (`up=1`, duration added)."""
        return self._measurement(fields, "ok", "")

    def failure(self, result: str, detail: str, fields: Mapping[str, float | None] | None = None) -> Measurement:
        """Return the Measurement of a run that failed: `up=0`, the reason, and what was measured before it."""
        return self._measurement(fields or {}, result, detail)

    def _measurement(self, fields: Mapping[str, float | None], result: str, detail: str) -> Measurement:
        values = {k: v for k, v in fields.items() if v is not None}
        values["up"] = 1.0 if result == "ok" else 0.0
        values.setdefault("duration_ms", self.elapsed_ms())
        return Measurement("probe", self._tags(), values, self.time_ms, result, detail)
