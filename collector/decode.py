"""The ingest fast path: decode, validate and turn a batch into line protocol in one pass (msgspec).

Same contract as `collector.validate.check_ingest` (docs/wire.md), at a fraction of the cost per line:

- msgspec decodes the JSON into typed structs, checking types in C (integers are integers, fields are finite
  numbers — no strings, booleans, NaN or inf —, 1 to 64 fields, no unknown keys in a measurement);
- a series' tags (name + the tags' JSON text as sent) are checked and escaped once, then found in a cache: the allowlist,
  1–`max_tag_value` characters, no control characters, identity tags dropped;
- fields are copied into the line as the JSON number text the agent sent (JSON numbers are valid line-protocol
  floats): their object is kept raw, decoded once for the checks, and its text is used when it holds no
  backslash or whitespace (otherwise the decoded floats are formatted);
- seqs, timestamps, field names, evicted and lost ranges are checked for the whole batch at once;
- the `agent` block is kept raw, its nesting measured on its bytes, then decoded and checked by
  `validate.check_agent` (it is the only part of the payload without a fixed shape);
- a key the wire does not define, anywhere, sends the batch to the slow path: `check_ingest` ignores unknown
  top-level and `agent` keys (a newer agent may send more), the fast path only sees the shapes it knows, so
  nothing in it nests deeper than `core.wire.MAX_DEPTH`.

Whatever the fast path refuses is validated again by `check_ingest`, whose message (the first problem, in order)
is the one the agent gets; the fast path never accepts what `check_ingest` refuses (tests/unit/
collector/test_collector_decode.py checks both give the same answer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec

from core.wire import (FIELD_NAME, MAX_DEPTH, MAX_DETAIL, MAX_FIELDS, MAX_RANGES, MAX_REASON, MAX_RESULT, MAX_SEQ,
                       MAX_VALUE, SPOOL_ID, WIRE_VERSION, IngestPayload, WireMeasurement)

from . import lineproto
from .validate import (NAMES, RETENTION_MARGIN_MS, EventIn, PayloadError, Rules, check_agent, check_depth,
                       check_event, check_ingest, check_tags, clean_text, parse_json, text_problem)

# JSON has no NaN; 1e999 is out of range; past ±2^53 VictoriaMetrics rounds a block's other samples (validate).
_Number = Annotated[float, msgspec.Meta(ge=-MAX_VALUE, le=MAX_VALUE)]
_Fields = Annotated[dict[str, _Number], msgspec.Meta(min_length=1, max_length=MAX_FIELDS)]
_CACHE_MAX = 100_000  # series heads per tag rules; cleared when full (a pathological client only costs time)
_UNSAFE = (b"\\", b" ", b"\n", b"\r", b"\t")  # an escape or a space in the fields: format the decoded values


# core.wire's payload with a measurement's fields, its tags and the agent block kept as the JSON text sent: the
# fields are copied into line protocol as they are, the tags are the series cache's key, the agent block's
# nesting is measured before it is decoded. An unknown key anywhere: the slow path (module doc).
_Payload = IngestPayload[WireMeasurement[msgspec.Raw, msgspec.Raw], msgspec.Raw]
_PAYLOAD = msgspec.json.Decoder(_Payload)
_FIELDS = msgspec.json.Decoder(list[_Fields])
_TAGS = msgspec.json.Decoder(dict[str, str])
_ANY = msgspec.json.Decoder()
_good_fields: set[str] = set()
_heads: dict[tuple, dict[tuple, tuple[bytes, tuple]]] = {}


@dataclass(slots=True)
class Ingest:
    """A validated batch as line protocol: line i is seq `first + i` (identity tags included)."""

    spool: str
    first: int
    last: int
    lines: list[bytes]
    samples: list[int]  # fields per line
    series: set[tuple]  # (name, *sorted tags) of the batch, for SeriesCap.admit
    evicted: list[tuple[int, int]]
    agent: dict[str, Any]
    lost: list[tuple[int, int, str]] = field(default_factory=list)
    events: list[EventIn] = field(default_factory=list)
    # (series key, time, result, detail) of each series' last measurement in the batch: its latest reason
    results: list[tuple[tuple, int, str | None, str | None]] = field(default_factory=list)

    def body(self, ranges: list[tuple[int, int]]) -> tuple[bytes, int, int]:
        """Return (line protocol of the seqs in `ranges`, lines, samples)."""
        if ranges == [(self.first, self.last)]:
            return b"".join(self.lines), len(self.lines), sum(self.samples)
        parts, samples, count = [], 0, 0
        for a, b in ranges:
            parts += self.lines[a - self.first:b - self.first + 1]
            samples += sum(self.samples[a - self.first:b - self.first + 1])
            count += b - a + 1
        return b"".join(parts), count, samples


def identity_suffix(province: str, commune: str, agent: str) -> bytes:
    """Return the identity tags as they follow a series' own tags in a line (`,province=...,commune=...`)."""
    return "".join(f",{k}={lineproto.escape_key(v)}" for k, v in
                   (("province", province), ("commune", commune), ("agent", agent))).encode()


def decode_ingest(body: bytes, rules: Rules, identity: bytes, now_ms: int | None = None) -> Ingest:
    """Return the validated batch as line protocol with `identity` (see identity_suffix); PayloadError otherwise."""
    try:
        payload = _PAYLOAD.decode(body)
        items = payload.measurements
        joined = b"[" + b",".join([m.fields for m in items]) + b"]"
        fields = _FIELDS.decode(joined)
        raw_agent = bytes(payload.agent)
        check_depth(raw_agent, MAX_DEPTH - 1)  # it sits one level down
        agent = check_agent(_ANY.decode(raw_agent))
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, PayloadError):
        return _slow(body, rules, identity, now_ms)  # its check_ingest names the first problem
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    spool, first, last = payload.spool, payload.first, payload.last
    times = [m.time for m in items] or [now_ms]  # a batch of events only: their times are checked by check_event
    seqs = [m.seq for m in items]
    if payload.events:
        event_seqs = [e.seq for e in payload.events]
        seqs = sorted([*seqs, *event_seqs]) if _increasing(seqs) and _increasing(event_seqs) else []
    # Checked for the whole batch at once; on any failure check_ingest finds the first problem and names it.
    if (payload.version != WIRE_VERSION or not SPOOL_ID.match(spool) or not seqs or first < 1 or last > MAX_SEQ
            or last - first + 1 != len(seqs) or len(seqs) > rules.max_measurements
            or seqs != list(range(first, last + 1))
            or min(times) < now_ms - rules.retention_ms + RETENTION_MARGIN_MS or max(times) > now_ms + rules.max_future_ms
            or not (set().union(*fields) <= _good_fields or _check_field_names(fields))
            or len(payload.evicted) > MAX_RANGES or any(not 1 <= a <= b <= MAX_SEQ for a, b in payload.evicted)
            or len(payload.lost) > MAX_RANGES
            or any(not 1 <= a <= b <= MAX_SEQ or text_problem(r, MAX_REASON) for a, b, r in payload.lost)):
        return _slow(body, rules, identity, now_ms)
    try:
        events = [check_event(msgspec.structs.asdict(e), "", rules, now_ms, *_window(rules, now_ms))
                  for e in payload.events]
    except PayloadError:
        return _slow(body, rules, identity, now_ms)
    counts = [len(f) for f in fields]
    if not items:
        texts: list[bytes] = []
    elif any(c in joined for c in _UNSAFE) or joined.count(b":") != sum(counts):  # escapes, spaces, repeated keys
        texts = [_fields(f) for f in fields]
    else:  # the agent's compact JSON: `{"up":1.0,"rtt_ms":12.5}` → `up=1.0,rtt_ms=12.5`, all at once
        texts = joined[2:-2].replace(b'"', b"").replace(b":", b"=").split(b"},{")
    heads = _heads.setdefault((rules.tag_keys, rules.max_tag_value), {})
    if len(heads) > _CACHE_MAX:
        heads.clear()
    tags = b"\0".join([m.tags for m in items]).split(b"\0")  # JSON text holds no NUL byte
    lines = []
    final: dict[tuple, Any] = {}  # series key → its last measurement in the batch (whose reason is kept)
    for m, tag_text, text, stamp in zip(items, tags, texts, times):
        head = heads.get((m.name, tag_text))
        if head is None:
            try:
                head = heads[(m.name, tag_text)] = _head(m.name, tag_text, rules)
            except (PayloadError, msgspec.DecodeError, msgspec.ValidationError):
                return _slow(body, rules, identity, now_ms)
        final[head[1]] = m
        lines.append(b"%s%s %s %d\n" % (head[0], identity, text, stamp))
    series = set(final)
    results = [(key, m.time, clean_text(m.result, MAX_RESULT), clean_text(m.detail, MAX_DETAIL))
               for key, m in final.items() if m.result is not None]
    if events:
        lines, counts = _with_events(first, [m.seq for m in items], lines, counts, events, identity, series)
    return Ingest(spool, first, last, lines, counts, series, payload.evicted, agent, payload.lost, events, results)


def _window(rules: Rules, now_ms: int) -> tuple[int, int]:
    """Return the oldest and newest times a batch may carry."""
    return now_ms - rules.retention_ms + RETENTION_MARGIN_MS, now_ms + rules.max_future_ms


def _increasing(seqs: list[int]) -> bool:
    return all(a < b for a, b in zip(seqs, seqs[1:]))


def event_line(event: EventIn, identity: bytes) -> tuple[bytes, tuple]:
    """Return the `event` series' line for an event (`event_count 1` at its time) and its series key."""
    clean = tuple(sorted({**event.tags, "kind": event.kind}.items()))
    return (b"%s%s count=1.0 %d\n" % (lineproto.series_head("event", clean).encode(), identity, event.time),
            ("event", *clean))


def _with_events(first: int, seqs: list[int], lines: list[bytes], counts: list[int], events: list[EventIn],
                 identity: bytes, series: set[tuple]) -> tuple[list[bytes], list[int]]:
    """Return the lines and field counts of measurements (`seqs`) and events merged in seq order."""
    by_seq = {seq: (line, count) for seq, line, count in zip(seqs, lines, counts)}
    for event in events:
        line, key = event_line(event, identity)
        by_seq[event.seq] = (line, 1)
        series.add(key)
    merged = [by_seq[seq] for seq in range(first, first + len(by_seq))]
    return [line for line, _ in merged], [count for _, count in merged]


def _head(name: str, tag_text: bytes, rules: Rules) -> tuple[bytes, tuple]:
    """Check a series' name and tags (JSON); return (its escaped line head without identity, its SeriesCap key)."""
    if name not in NAMES:
        raise PayloadError(f"name {name!r}")  # check_ingest says it properly
    clean = tuple(sorted(check_tags(_TAGS.decode(tag_text), "", rules).items()))
    return lineproto.series_head(name, clean).encode(), (name, *clean)


def _check_field_names(fields: list[dict[str, float]]) -> bool:
    """Return whether every field name is valid (remembering the valid ones)."""
    names = set().union(*fields)
    if not all(FIELD_NAME.match(key) for key in names):
        return False
    if len(_good_fields) < 10_000:
        _good_fields.update(names)
    return True


def _fields(fields: dict[str, float]) -> bytes:
    return ",".join(f"{k}={v!r}" for k, v in fields.items()).encode()


def _slow(body: bytes, rules: Rules, identity: bytes, now_ms: int | None) -> Ingest:
    """Validate with check_ingest (its message is the reason given); convert what it accepts."""
    batch = check_ingest(parse_json(body), rules, now_ms)
    lines, series = [], set()
    final: dict[tuple, Any] = {}
    for p in batch.points:
        clean = tuple(sorted(p.tags.items()))
        series.add((p.name, *clean))
        lines.append(b"%s%s %s %d\n" % (lineproto.series_head(p.name, clean).encode(), identity, _fields(p.fields),
                                         p.time))
        final[(p.name, *clean)] = p
    results = [(key, p.time, p.result, p.detail) for key, p in final.items() if p.result is not None]
    counts = [len(p.fields) for p in batch.points]
    if batch.events:
        lines, counts = _with_events(batch.first, [p.seq for p in batch.points], lines, counts, batch.events,
                                     identity, series)
    return Ingest(batch.spool, batch.first, batch.last, lines, counts, series, batch.evicted, batch.agent,
                  batch.lost, batch.events, results)


__all__ = ["Ingest", "decode_ingest", "event_line", "identity_suffix"]
