"""The probe contract: configuration base types, the line a probe is pinned to, and the probe context.

A probe module declares `NAME`, a `Config(TargetConfig)` with `probe: Literal[NAME]`, and
`async def probe(config, ctx) -> Measurement`. It never raises: failures become `ctx.failure(...)`.
The runner (agent/runner.py) adds the timeout around it and identity tags after it.
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Mapping

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from .measurement import Measurement

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, None: 1.0}
DAY = 86_400.0


def parse_duration(value: Any, maximum: float = DAY) -> float:
    """Return seconds from `5`, `2.5`, `"500ms"`, `"30s"`, `"2m"`, `"1h"` or `"1d"`: more than 0, at most `maximum`.

    The bound keeps absurd values (`1e400`, 400 digits) from becoming inf or an overflow later.
    """
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '500ms', '2m'")
    if isinstance(value, (int, float)):
        seconds = float(value) if isinstance(value, float) or abs(value) < 10**18 else math.inf
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{_shown(value)} is not a duration: write e.g. 5s, 500ms, 2m")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]  # 400 digits make inf, refused below
    if math.isnan(seconds):
        raise ValueError("a duration is a number of seconds or a string like '30s', '500ms', '2m'")
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    if seconds > maximum:
        shown = "a number that large" if isinstance(value, int) and seconds == math.inf else _shown(value)
        raise ValueError(f"{shown} is too long: a duration here is at most {format_duration(maximum)}")
    return seconds


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, (str, float)) else repr(str(value))
    return text if len(text) <= 40 else text[:30] + f"...' ({len(text) - 2} characters)"


def format_duration(seconds: float) -> str:
    """Return `24h`, `90m`, `30s` or `0.5s`: the largest unit that writes `seconds` exactly."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]
# Identifiers become tags: ASCII slugs ("dong-loc"), display names may carry diacritics.
Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]


_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def check_hostname(value: str) -> str:
    """Accept a DNS name; a Vietnamese IDN name ("đồnglộc.vn") becomes its ASCII form (a config error otherwise)."""
    if not value.isascii():
        try:
            value = value.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{value!r} is not a valid host name") from None
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    if not 0 < len(value) <= 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{value!r} is not a valid host name")
    return value


def check_host(value: str) -> str:
    """Accept a DNS name or an IP address literal (a config error otherwise)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    try:
        return check_hostname(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither a host name nor an IP address") from None


HostName = Annotated[str, AfterValidator(check_hostname)]
Host = Annotated[str, AfterValidator(check_host)]
Port = Annotated[int, Field(ge=1, le=65535)]


class StrictModel(BaseModel):
    """A config model that rejects unknown keys and cannot be changed after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
