"""Check what agents send against docs/wire.md; every refusal says why (→ 400), nothing reaches a 500.

What is refused: a body that is not UTF-8 JSON, or nests deeper than `MAX_DEPTH` (checked on the bytes before
anything recurses); another wire version (`version` must be the integer 1); seqs that are not exactly
`first..last` or lie outside 1..2^63−1 (the acknowledgement store holds 64-bit integers); measurement names
other than `probe`, `host`, `agent`; tag keys outside the allowlist; empty, over-long, control-character or
unencodable (lone UTF-16 surrogate) tag values; fields that are not finite numbers within ±`MAX_VALUE` (see
below); timestamps older than the database's retention or further ahead than `max_future` (VictoriaMetrics drops
those silently while answering 204, so they would be acknowledged and lost); `evicted` and `lost` ranges that
are not 1 ≤ first ≤ last ≤ 2^63−1; known keys of the `agent` block with the wrong type, length or
unprintable text (unknown keys are ignored: a newer agent may send more). Tags `province`, `commune`, `agent`
in a payload are dropped: the collector sets them from the credential. `SeriesCap` bounds the distinct series
one agent may create.

Field values: VictoriaMetrics stores a block of one series' samples as 64-bit integer mantissas with one
decimal exponent for the whole block, so one huge value drags the others' exponent up and they lose their
decimals (measured on VM 1.79: beside 1e16, 12.345 is stored as 12.34 and 0.001 as 0; beside 1e19, 3 is
stored as 0; beside 1e20, everything else is 0). Up to 2^53 (9,007,199,254,740,992, also the largest float
that holds every integer) the other samples keep 3 decimals exactly, so that is the limit (docs/wire.md).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from core.catalogue import EVENT_KINDS, IDENTITY_TAGS, MEASUREMENT_NAMES
from core.wire import (FIELD_NAME, MAX_ATTRIBUTE_TEXT, MAX_ATTRIBUTES, MAX_DEPTH, MAX_DETAIL, MAX_EVENT_TEXT,
                       MAX_FIELDS, MAX_RANGES, MAX_REASON, MAX_RESULT, MAX_SEQ, MAX_TASK_ERROR, MAX_TASKS, MAX_TEXT,
                       MAX_VALUE, SPOOL_ID, WIRE_VERSION)

# The measurement names an agent may send (core/catalogue.py); `event` is the collector's own series of events.
NAMES = MEASUREMENT_NAMES - {"event"}
_TASK = re.compile(r"[a-z_]{1,32}\Z")
# Never in a tag value: C0/C1 controls and DEL (a newline cannot be escaped in line protocol), lone surrogates
# (no UTF-8 encoding: the database write and the state file would fail on them).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_MEASUREMENT_KEYS = frozenset({"seq", "name", "tags", "fields", "time", "result", "detail"})
_EVENT_KEYS = frozenset({"seq", "kind", "tags", "time", "text", "attributes"})

RETENTION_MARGIN_MS = 3600_000  # refuse a little before VM's own cut: a sample about to expire is not worth it
HEALTH = ("ok", "degraded")
TASK_STATES = ("ok", "restarting", "failed")
# Only the brackets stay, `{}` turned into `[]`: one kind, so each pass of `_nesting` peels exactly one level.
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
# A JSON string, or an unterminated one up to the end: always matches from its quote, never backtracks
# (possessive), so stripping strings stays linear on any input.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.S)


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
    result: str | None = None  # kept (cleaned, cut) as the series' latest reason: the centre can say why
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class EventIn:
    """One validated event (identity tags not yet set)."""

    seq: int
    kind: str
    tags: dict[str, str]
    time: int
    text: str
    attributes: dict[str, str | float]


@dataclass(frozen=True, slots=True)
class Batch:
    """A validated ingest payload."""

    spool: str
    first: int
    last: int
    points: list[Point]
    evicted: list[tuple[int, int]]
    agent: dict[str, Any]
    lost: list[tuple[int, int, str]] = field(default_factory=list)
    events: list[EventIn] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Rules:
    """The limits validation applies (from the collector config)."""

    tag_keys: frozenset[str]
    retention_ms: int
    max_future_ms: int
    max_measurements: int
    max_tag_value: int


def _nesting(brackets: bytes, limit: int) -> bool | None:
    """Return True when `brackets` (only `[` and `]`) is balanced and nests at most `limit` deep, False when it
    nests deeper, None when its brackets do not match.

    Each pass deletes the innermost pairs, so a document `limit` deep is empty after exactly `limit` passes:
    C-speed bytes.replace, never more than `limit` passes, whatever the input. (`[}` counts as a pair here:
    the parser refuses it afterwards, having nested no deeper than this counted.)"""
    for _ in range(limit):
        if not brackets:
            return True
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return None
        brackets = shorter
    return not brackets


def check_depth(body: bytes, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than `limit` (PayloadError) before any parser recurses into it."""
    if _nesting(body.translate(_ONE_KIND, _NOT_BRACKETS), limit):
        return
    # Brackets inside strings (a detail like "[Errno 111]" is fine, "[[[" is not) may have miscounted: look
    # again without the strings. (Twice is at most 2 × limit passes: still linear in the body.)
    verdict = _nesting(_STRING.sub(b"", body).translate(_ONE_KIND, _NOT_BRACKETS), limit)
    if verdict is None:
        raise PayloadError("the body is not JSON: its brackets do not match")
    if not verdict:
        raise PayloadError(f"the JSON nests deeper than {limit} levels")


def parse_json(body: bytes) -> Any:
    """Return the JSON document of a UTF-8 body; PayloadError when it is not (NaN, Infinity, too deep included)."""
    def _refuse(token: str) -> None:
        raise PayloadError(f"{token} is not a number the database can store")
    try:
        text = body.decode("utf-8")  # strict: no encoded surrogates; JSON is UTF-8 (RFC 8259)
    except UnicodeDecodeError as exc:
        raise PayloadError(f"the body is not UTF-8: {exc}") from None
    check_depth(body)
    try:
        return json.loads(text, parse_constant=_refuse)
    except PayloadError:
        raise
    except (ValueError, RecursionError) as exc:  # RecursionError: not reachable after check_depth; never a 500
        raise PayloadError(f"the body is not JSON: {exc}") from None


def text_problem(value: Any, max_len: int, min_len: int = 1) -> str | None:
    """Return what is wrong with a text the collector stores (None: fine): its type, length or characters."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not min_len <= len(value) <= max_len:
        return f"must have {min_len} to {max_len} characters"
    if not value.isprintable():  # controls, lone surrogates, line/paragraph separators, format characters
        return "must be printable text (no control characters, newlines or unpaired surrogates)"
    return None


def _text(value: Any, what: str, max_len: int, min_len: int = 1) -> str:
    problem = text_problem(value, max_len, min_len)
    if problem:
        raise PayloadError(f"{what} {problem}")
    return value


def _int(value: Any, what: str, low: int = -MAX_SEQ - 1, high: int = MAX_SEQ) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{what} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise PayloadError(f"{what} must be an integer from {low} to {high}")
    return value


def _dict(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise PayloadError(f"{what} must be an object, not {type(value).__name__}")
    return value


def _version(payload: Any) -> dict:
    payload = _dict(payload, "the payload")
    version = payload.get("version")
    if type(version) is not int or version != WIRE_VERSION:  # not True, not 1.0
        shown = repr(version) if isinstance(version, (int, float, str, type(None))) else type(version).__name__
        raise PayloadError(f"unsupported wire version {shown[:40]}: this collector speaks {WIRE_VERSION}")
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
            raise PayloadError(f"{where}: tag {key!r} contains a control character (newline, tab...) or an "
                               "unpaired surrogate")
        out[key] = value
    return out


def check_fields(fields: Any, where: str) -> dict[str, float]:
    """Return the fields as floats; PayloadError for a name, a string, a boolean, NaN, inf or |v| > MAX_VALUE."""
    fields = _dict(fields, f"{where}.fields")
    if not fields or len(fields) > MAX_FIELDS:
        raise PayloadError(f"{where}: a measurement has 1 to {MAX_FIELDS} fields")
    out = {}
    for key, value in fields.items():
        if not FIELD_NAME.match(key):
            raise PayloadError(f"{where}: field name {key!r} is not lowercase letters, digits and '_'")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PayloadError(f"{where}: field {key!r} is a {type(value).__name__}: fields are numbers only "
                               "(VictoriaMetrics stores strings as 0)")
        try:
            number = float(value)
        except OverflowError:  # a 400-digit integer
            number = math.inf
        if not math.isfinite(number):
            raise PayloadError(f"{where}: field {key!r} is {str(value)[:40]}: only finite numbers can be stored")
        if abs(number) > MAX_VALUE:
            raise PayloadError(f"{where}: field {key!r} is {number!r}: at most ±2^53 (9007199254740992), or "
                               "VictoriaMetrics rounds the other samples stored beside it")
        out[key] = number
    return out


def check_ingest(payload: Any, rules: Rules, now_ms: int | None = None) -> Batch:
    """Return the validated Batch of an ingest payload; PayloadError with the reason otherwise."""
    payload = _version(payload)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    oldest, newest = now_ms - rules.retention_ms + RETENTION_MARGIN_MS, now_ms + rules.max_future_ms
    spool = payload.get("spool")
    if not isinstance(spool, str) or not SPOOL_ID.match(spool):
        raise PayloadError("spool must be the spool's id (letters, digits, '-', up to 64)")
    first, last = _int(payload.get("first"), "first", 1), _int(payload.get("last"), "last", 1)
    items, events = payload.get("measurements"), payload.get("events", [])
    if not isinstance(items, list) or not isinstance(events, list) or not (items or events):
        raise PayloadError("measurements (and events) must be lists, not both empty")
    count = len(items) + len(events)
    if first < 1 or last > MAX_SEQ or last - first + 1 != count:
        raise PayloadError(f"first..last ({first}..{last}) must number the {count} measurements and events, from 1 "
                           f"to at most {MAX_SEQ}")
    if count > rules.max_measurements:
        raise PayloadError(f"{count} measurements and events in one batch: at most {rules.max_measurements}")
    # Only integers: a list as a seq is unhashable (and refused by check_event below, with its reason).
    taken = {e.get("seq") for e in events if isinstance(e, dict) and type(e.get("seq")) is int}
    expected = iter(s for s in range(first, last + 1) if s not in taken)  # the seqs the measurements must have
    points = []
    for index, item in enumerate(items):
        where = f"measurements[{index}]"
        item = _dict(item, where)
        seq, want = item.get("seq"), next(expected, None)
        if type(seq) is not int or seq != want:
            raise PayloadError(f"{where}: seq {_short(seq)} where {want} was expected (gap-free)")
        extra = item.keys() - _MEASUREMENT_KEYS
        if extra:
            raise PayloadError(f"{where}: unknown keys {_short(', '.join(sorted(extra)))}")
        name = item.get("name")
        if not isinstance(name, str) or name not in NAMES:  # a list is unhashable: `in` a set would raise
            raise PayloadError(f"{where}: name {_short(name)} is not one of {', '.join(sorted(NAMES))}")
        stamp = _stamp(item.get("time"), where, now_ms, oldest, newest)
        points.append(Point(seq, name, check_tags(item.get("tags", {}), where, rules),
                            check_fields(item.get("fields"), where), stamp,
                            clean_text(item.get("result"), MAX_RESULT), clean_text(item.get("detail"), MAX_DETAIL)))
    checked = [check_event(event, f"events[{index}]", rules, now_ms, oldest, newest)
               for index, event in enumerate(events)]
    seqs = [e.seq for e in checked]
    if seqs != sorted(set(seqs)) or (seqs and not first <= seqs[0] <= seqs[-1] <= last):
        raise PayloadError(f"events: seqs {_short(str(seqs[:10]))} must be increasing, within {first}..{last}")
    return Batch(spool, first, last, points, check_evicted(payload.get("evicted", [])),
                 check_agent(payload.get("agent", {})), check_lost(payload.get("lost", [])), checked)


def _stamp(value: Any, where: str, now_ms: int, oldest: int, newest: int) -> int:
    stamp = _int(value, f"{where}.time")
    if stamp < oldest:
        raise PayloadError(f"{where}: time {stamp} is older than the database keeps (retention)")
    if stamp > newest:
        raise PayloadError(f"{where}: time {stamp} is {(stamp - now_ms) / 1000:.0f} s in the future: "
                           "check the agent's clock")
    return stamp


def check_event(event: Any, where: str, rules: Rules, now_ms: int, oldest: int, newest: int) -> EventIn:
    """Return a validated event; PayloadError naming what is wrong (an unknown kind is named)."""
    event = _dict(event, where)
    extra = event.keys() - _EVENT_KEYS
    if extra:
        raise PayloadError(f"{where}: unknown keys {_short(', '.join(sorted(extra)))}")
    seq = _int(event.get("seq"), f"{where}.seq", 1)
    kind = event.get("kind")
    if not isinstance(kind, str) or kind not in EVENT_KINDS:
        raise PayloadError(f"{where}: event kind {_short(kind)} is not one of {', '.join(sorted(EVENT_KINDS))}")
    stamp = _stamp(event.get("time"), where, now_ms, oldest, newest)
    text = _text(event.get("text", ""), f"{where}.text", MAX_EVENT_TEXT, 0)
    attributes = _dict(event.get("attributes", {}), f"{where}.attributes")
    if len(attributes) > MAX_ATTRIBUTES:
        raise PayloadError(f"{where}: {len(attributes)} attributes: at most {MAX_ATTRIBUTES}")
    clean: dict[str, str | float] = {}
    for key, value in attributes.items():
        if not FIELD_NAME.match(key):
            raise PayloadError(f"{where}: attribute name {_short(key)} is not lowercase letters, digits and '_'")
        if isinstance(value, str):
            clean[key] = _text(value, f"{where}.attributes.{key}", MAX_ATTRIBUTE_TEXT, 0)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= MAX_VALUE:
            clean[key] = float(value)  # abs(NaN) <= x is False: NaN and inf are refused too
        else:
            raise PayloadError(f"{where}: attribute {key!r} must be text or a finite number within ±2^53")
    return EventIn(seq, kind, check_tags(event.get("tags", {}), where, rules), stamp, text, clean)


def clean_text(value: Any, max_len: int) -> str | None:
    """Return a measurement's `result` or `detail` fit to keep: printable, cut to `max_len`; None if not text.

    Never a refusal: the reason is for people, and a newer agent may word it in ways this one does not know."""
    if not isinstance(value, str):
        return None
    value = value[:max_len]
    if value.isprintable():
        return value
    # Controls, newlines, format characters (zero-width, bidi overrides), unpaired surrogates: a space each.
    return "".join(c if c.isprintable() else " " for c in value)


def _short(value: Any) -> str:
    """Return a bounded repr for a refusal message (the payload is the agent's, not ours to echo in full)."""
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _range(pair: Any, what: str) -> tuple[int, int]:
    if (not isinstance(pair, list) or len(pair) < 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair[:2])
            or not 1 <= pair[0] <= pair[1] <= MAX_SEQ):
        raise PayloadError(f"{what} range {_short(pair) if not isinstance(pair, list) else _short(str(pair))} must be "
                           f"[first, last] with 1 <= first <= last <= {MAX_SEQ}")
    return pair[0], pair[1]


def check_evicted(evicted: Any) -> list[tuple[int, int]]:
    """Return the evicted ranges as (first, last) pairs."""
    if not isinstance(evicted, list) or len(evicted) > MAX_RANGES:
        raise PayloadError(f"evicted must be a list of at most {MAX_RANGES} [first, last] ranges")
    out = []
    for pair in evicted:
        if isinstance(pair, list) and len(pair) != 2:
            raise PayloadError(f"evicted range {_short(str(pair))} must be [first, last]")
        out.append(_range(pair, "evicted"))
    return out


def check_lost(lost: Any) -> list[tuple[int, int, str]]:
    """Return the lost ranges (seqs the agent could not read back from its spool) as (first, last, reason)."""
    if not isinstance(lost, list) or len(lost) > MAX_RANGES:
        raise PayloadError(f"lost must be a list of at most {MAX_RANGES} [first, last, reason] entries")
    out = []
    for entry in lost:
        if isinstance(entry, list) and len(entry) != 3:
            raise PayloadError(f"lost entry {_short(str(entry))} must be [first, last, reason]")
        first, last = _range(entry, "lost")
        out.append((first, last, _text(entry[2], "a lost reason", MAX_REASON)))
    return out


def _count(info: Mapping[str, Any], key: str, number: bool = False) -> Any:
    """Return agent block value `key`: an integer 0..2^63−1 (or, with `number`, any finite number ≥ 0)."""
    value = info[key]
    if number and isinstance(value, float) and not isinstance(value, bool):
        if not (math.isfinite(value) and 0 <= value <= MAX_VALUE):
            raise PayloadError(f"agent.{key} must be a number from 0 to 2^53")
        return value
    return _int(value, f"agent.{key}", 0, MAX_SEQ)


def check_agent(agent: Any) -> dict[str, Any]:
    """Return the known keys of the wire's `agent` block, checked; unknown keys are ignored (newer agents)."""
    info = _dict(agent, "agent")
    out: dict[str, Any] = {}
    for key in ("version", "config_version"):
        if key in info:
            out[key] = _text(info[key], f"agent.{key}", MAX_TEXT)
    for key in ("spool_rows", "dropped_total"):
        if key in info:
            out[key] = _count(info, key, number=True)
    for key in ("task_restarts_total", "lost_total", "disk_free_bytes"):
        if key in info:
            out[key] = _count(info, key)
    if "clock_offset_ms" in info:
        offset = info["clock_offset_ms"]
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not abs(offset) <= MAX_VALUE:
            raise PayloadError("agent.clock_offset_ms must be a finite number (milliseconds)")
        out["clock_offset_ms"] = float(offset)
    if "health" in info:
        if info["health"] not in HEALTH:
            raise PayloadError(f"agent.health must be one of {', '.join(HEALTH)}")
        out["health"] = info["health"]
    if "tasks" in info:
        out["tasks"] = _check_tasks(info["tasks"])
    return out


def _check_tasks(tasks: Any) -> dict[str, dict[str, Any]]:
    tasks = _dict(tasks, "agent.tasks")
    if len(tasks) > MAX_TASKS:
        raise PayloadError(f"agent.tasks has {len(tasks)} tasks: at most {MAX_TASKS}")
    out = {}
    for name, task in tasks.items():
        if not _TASK.match(name):
            raise PayloadError(f"agent.tasks: task name {_short(name)} is not 1 to 32 of a-z and '_'")
        where = f"agent.tasks.{name}"
        task = _dict(task, where)
        if task.get("state") not in TASK_STATES:
            raise PayloadError(f"{where}.state must be one of {', '.join(TASK_STATES)}")
        clean = {"state": task["state"], "restarts": _int(task.get("restarts", 0), f"{where}.restarts", 0, MAX_SEQ)}
        if task.get("error") is not None:
            clean["error"] = _text(task["error"], f"{where}.error", MAX_TASK_ERROR, 0)
        out[name] = clean
    return out


def check_heartbeat(payload: Any) -> tuple[str, dict[str, Any]]:
    """Return (state, checked agent block) of a heartbeat payload."""
    payload = _version(payload)
    state = payload.get("state")
    if state not in ("running", "stopping"):
        raise PayloadError(f"state {_short(state)} must be 'running' or 'stopping'")
    return state, check_agent(payload.get("agent", {}))


def check_enroll(payload: Any) -> tuple[str, str, str | None]:
    """Return (token, agent id, hostname or None) of an enrollment payload, checked before the token is used."""
    if not isinstance(payload, dict) or type(payload.get("version")) is not int or payload.get("version") != 1:
        raise PayloadError('expected {"version": 1, "token": ..., "agent_id": ...}')
    token, agent_id, hostname = payload.get("token"), payload.get("agent_id"), payload.get("hostname")
    if not isinstance(token, str) or not isinstance(agent_id, str):
        raise PayloadError("token and agent_id must be strings")
    _text(token, "token", 200)
    _text(agent_id, "agent_id", 63)
    if hostname is not None:
        _text(hostname, "hostname", 200)
    return token, agent_id, hostname


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


__all__ = ["Batch", "EventIn", "NAMES", "check_event", "clean_text", "PayloadError", "Point", "Rules", "SeriesCap", "check_agent", "check_depth",
           "check_enroll", "check_heartbeat", "check_ingest", "check_lost", "parse_json", "text_problem"]
