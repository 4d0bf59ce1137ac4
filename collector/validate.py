"""Check an ingest or heartbeat payload against docs/wire.md; every refusal says why (→ 400).

What is refused: another wire version; seqs that are not exactly `first..last`; measurement names other than
`probe`, `host`, `agent`; tag keys outside the allowlist; empty, over-long or control-character tag values;
fields that are not finite numbers (NaN, inf, strings, booleans); timestamps older than the database's retention
or further ahead than `max_future` (VictoriaMetrics drops those silently while answering 204, so they would be
acknowledged and lost). Tags `province`, `commune`, `agent` in a payload are dropped: the collector sets them
from the credential. `SeriesCap` bounds the distinct series one agent may create.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping

WIRE_VERSION = 1
NAMES = frozenset({"probe", "host", "agent"})
IDENTITY_TAGS = frozenset({"province", "commune", "agent"})
_FIELD = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SPOOL = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MEASUREMENT_KEYS = frozenset({"seq", "name", "tags", "fields", "time", "result", "detail"})
MAX_FIELDS = 64
RETENTION_MARGIN_MS = 3600_000  # refuse a little before VM's own cut: a sample about to expire is not worth it


class PayloadError(ValueError):
    """The payload breaks the wire contract; the message is the reason given to the agent."""


@dataclass(frozen=True, slots=True)
class Point:
    """One validated measurement (identity tags not yet set)."""

    seq: int
    name: str
    tags: dict[str, str]
    fields: dict[str, float]
    time: int


@dataclass(frozen=True, slots=True)
class Batch:
    """A validated ingest payload."""

    spool: str
    first: int
    last: int
    points: list[Point]
    evicted: list[tuple[int, int]]
    agent: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rules:
    """The limits validation applies (from the collector config)."""

    tag_keys: frozenset[str]
    retention_ms: int
    max_future_ms: int
    max_measurements: int
    max_tag_value: int


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{what} must be an integer, not {type(value).__name__}")
    return value


def _dict(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise PayloadError(f"{what} must be an object, not {type(value).__name__}")
    return value


def _version(payload: Any) -> dict:
    payload = _dict(payload, "the payload")
    if payload.get("version") != WIRE_VERSION:
        raise PayloadError(f"unsupported wire version {payload.get('version')!r}: this collector speaks {WIRE_VERSION}")
    return payload


def check_tags(tags: Any, where: str, rules: Rules) -> dict[str, str]:
    """Return the allowed tags (identity tags dropped); PayloadError for a bad key or value."""
    out = {}
    for key, value in _dict(tags, f"{where}.tags").items():
        if key in IDENTITY_TAGS:
            continue  # set from the credential, never from the payload
        if key not in rules.tag_keys:
            raise PayloadError(f"{where}: tag key {key!r} is not allowed (allowed: {', '.join(sorted(rules.tag_keys))})")
        if not isinstance(value, str):
            raise PayloadError(f"{where}: tag {key!r} must be a string")
        if not value or len(value) > rules.max_tag_value:
            raise PayloadError(f"{where}: tag {key!r} must have 1 to {rules.max_tag_value} characters")
        if _CONTROL.search(value):
            raise PayloadError(f"{where}: tag {key!r} contains a control character (newline, tab...)")
        out[key] = value
    return out


def check_fields(fields: Any, where: str) -> dict[str, float]:
    """Return the fields as floats; PayloadError for a name, a string, a boolean, NaN or inf."""
    fields = _dict(fields, f"{where}.fields")
    if not fields or len(fields) > MAX_FIELDS:
        raise PayloadError(f"{where}: a measurement has 1 to {MAX_FIELDS} fields")
    out = {}
    for key, value in fields.items():
        if not _FIELD.match(key):
            raise PayloadError(f"{where}: field name {key!r} is not lowercase letters, digits and '_'")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PayloadError(f"{where}: field {key!r} is a {type(value).__name__}: fields are numbers only "
                               "(VictoriaMetrics stores strings as 0)")
        try:
            number = float(value)
        except OverflowError:  # a 400-digit integer
            number = math.inf
        if not math.isfinite(number):
            raise PayloadError(f"{where}: field {key!r} is {value}: only finite numbers can be stored")
        out[key] = number
    return out


def check_ingest(payload: Any, rules: Rules, now_ms: int | None = None) -> Batch:
    """Return the validated Batch of an ingest payload; PayloadError with the reason otherwise."""
    payload = _version(payload)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    oldest, newest = now_ms - rules.retention_ms + RETENTION_MARGIN_MS, now_ms + rules.max_future_ms
    spool = payload.get("spool")
    if not isinstance(spool, str) or not _SPOOL.match(spool):
        raise PayloadError("spool must be the spool's id (letters, digits, '-', up to 64)")
    first, last = _int(payload.get("first"), "first"), _int(payload.get("last"), "last")
    items = payload.get("measurements")
    if not isinstance(items, list) or not items:
        raise PayloadError("measurements must be a non-empty list")
    if first < 1 or last - first + 1 != len(items):
        raise PayloadError(f"first..last ({first}..{last}) must number the {len(items)} measurements, from 1")
    if len(items) > rules.max_measurements:
        raise PayloadError(f"{len(items)} measurements in one batch: at most {rules.max_measurements}")
    points = []
    for index, item in enumerate(items):
        where = f"measurements[{index}]"
        item = _dict(item, where)
        if item.get("seq") != first + index or isinstance(item.get("seq"), bool):
            raise PayloadError(f"{where}: seq {item.get('seq')!r} where {first + index} was expected (gap-free)")
        extra = item.keys() - _MEASUREMENT_KEYS
        if extra:
            raise PayloadError(f"{where}: unknown keys {', '.join(sorted(extra))}")
        name = item.get("name")
        if name not in NAMES:
            raise PayloadError(f"{where}: name {name!r} is not one of {', '.join(sorted(NAMES))}")
        stamp = _int(item.get("time"), f"{where}.time")
        if stamp < oldest:
            raise PayloadError(f"{where}: time {stamp} is older than the database keeps (retention)")
        if stamp > newest:
            raise PayloadError(f"{where}: time {stamp} is {(stamp - now_ms) / 1000:.0f} s in the future: "
                               "check the agent's clock")
        points.append(Point(first + index, name, check_tags(item.get("tags", {}), where, rules),
                            check_fields(item.get("fields"), where), stamp))
    return Batch(spool, first, last, points, check_evicted(payload.get("evicted", [])),
                 check_agent(payload.get("agent", {})))


def check_evicted(evicted: Any) -> list[tuple[int, int]]:
    """Return the evicted ranges as (first, last) pairs."""
    if not isinstance(evicted, list) or len(evicted) > 10_000:
        raise PayloadError("evicted must be a list of [first, last] ranges")
    out = []
    for pair in evicted:
        if (not isinstance(pair, list) or len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair)
                or not 1 <= pair[0] <= pair[1]):
            raise PayloadError(f"evicted range {pair!r} must be [first, last] with 1 <= first <= last")
        out.append((pair[0], pair[1]))
    return out


def check_agent(agent: Any) -> dict[str, Any]:
    """Return the wire's `agent` block (self-reported state; the registry takes what it knows)."""
    return _dict(agent, "agent")


def check_heartbeat(payload: Any) -> tuple[str, dict[str, Any]]:
    """Return (state, agent block) of a heartbeat payload."""
    payload = _version(payload)
    state = payload.get("state")
    if state not in ("running", "stopping"):
        raise PayloadError(f"state {state!r} must be 'running' or 'stopping'")
    return state, check_agent(payload.get("agent", {}))


class SeriesCap:
    """Bound the distinct series (measurement + tags) each agent creates, so one cannot flood the database."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, set[tuple]] = {}

    def check(self, agent: str, points: list[Point]) -> None:
        """Admit the batch's series or raise PayloadError when the agent would exceed the limit."""
        self.admit(agent, {(p.name, *sorted(p.tags.items())) for p in points})

    def admit(self, agent: str, series: set[tuple]) -> None:
        """Admit these series keys `(name, *sorted tag items)` or raise PayloadError past the limit."""
        seen = self._seen.setdefault(agent, set())
        new = series - seen
        if len(seen) + len(new) > self.limit:
            raise PayloadError(f"this agent would have {len(seen) + len(new)} series: at most {self.limit} "
                               "(too many targets, or a tag that changes every run)")
        seen |= new


__all__ = ["Batch", "NAMES", "PayloadError", "Point", "Rules", "SeriesCap", "WIRE_VERSION", "check_heartbeat",
           "check_ingest"]
