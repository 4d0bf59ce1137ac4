"""The ingest fast path: decode, validate and turn a batch into line protocol in one pass (msgspec).

Same contract as `collector.validate.check_ingest` (docs/wire.md), at a fraction of the cost per line:

- msgspec decodes the JSON into typed structs, checking types in C (integers are integers, fields are finite
  numbers — no strings, booleans, NaN or inf —, 1 to 64 fields, no unknown keys in a measurement);
- a series' tags (name + tags as sent) are checked and escaped once, then found in a cache: the allowlist,
  1–`max_tag_value` characters, no control characters, identity tags dropped;
- fields are copied into the line as the JSON number text the agent sent (JSON numbers are valid line-protocol
  floats): their object is kept raw, decoded once for the checks, and its text is used when it holds no
  backslash or whitespace (otherwise the decoded floats are formatted);
- seqs, names and timestamps are checked per measurement, with the same messages as `check_ingest`.

Anything msgspec refuses is validated again by `check_ingest`, whose message is the one the agent gets (and
whose verdict stands: the fast path never accepts what the slow one refuses).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from . import lineproto
from .validate import (_FIELD, IDENTITY_TAGS, MAX_FIELDS, NAMES, RETENTION_MARGIN_MS, WIRE_VERSION, PayloadError,
                       Rules, check_ingest, check_tags)

_MAX_FLOAT = 1.7976931348623157e308
_Number = Annotated[float, msgspec.Meta(ge=-_MAX_FLOAT, le=_MAX_FLOAT)]  # JSON has no NaN; 1e999 is out of range
_Fields = Annotated[dict[str, _Number], msgspec.Meta(min_length=1, max_length=MAX_FIELDS)]
_SPOOL = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CACHE_MAX = 200_000  # series heads per tag rules; cleared when full (a pathological client only costs time)
_UNSAFE = (b"\\", b" ", b"\t", b"\n", b"\r")  # in a fields object: take the decoded values instead of the text


class _Measurement(msgspec.Struct, forbid_unknown_fields=True):
    seq: int
    name: str
    fields: msgspec.Raw
    time: int
    tags: dict[str, str] = {}
    result: str | None = None
    detail: str | None = None


class _Payload(msgspec.Struct):
    version: int
    spool: str
    first: int
    last: int
    measurements: list[_Measurement]
    evicted: list[tuple[int, int]] = []
    agent: dict[str, Any] = {}


_PAYLOAD = msgspec.json.Decoder(_Payload)
_FIELDS = msgspec.json.Decoder(list[_Fields])
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
        fields_raw = [bytes(m.fields) for m in payload.measurements]
        joined = b"[" + b",".join(fields_raw) + b"]"
        fields = _FIELDS.decode(joined)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _slow(body, rules, identity, now_ms)
    if payload.version != WIRE_VERSION:
        raise PayloadError(f"unsupported wire version {payload.version!r}: this collector speaks {WIRE_VERSION}")
    spool, first, last, items = payload.spool, payload.first, payload.last, payload.measurements
    if not _SPOOL.match(spool):
        raise PayloadError("spool must be the spool's id (letters, digits, '-', up to 64)")
    if not items:
        raise PayloadError("measurements must be a non-empty list")
    if first < 1 or last - first + 1 != len(items):
        raise PayloadError(f"first..last ({first}..{last}) must number the {len(items)} measurements, from 1")
    if len(items) > rules.max_measurements:
        raise PayloadError(f"{len(items)} measurements in one batch: at most {rules.max_measurements}")
    evicted = _evicted(payload.evicted)
    counts = [len(f) for f in fields]
    for index, f in enumerate(fields):
        if not f.keys() <= _good_fields:
            _check_field_names(f, f"measurements[{index}]")
    verbatim = not any(c in joined for c in _UNSAFE) and joined.count(b":") == sum(counts)  # no duplicate keys
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    oldest, newest = now_ms - rules.retention_ms + RETENTION_MARGIN_MS, now_ms + rules.max_future_ms
    heads = _heads.setdefault((rules.tag_keys, rules.max_tag_value), {})
    if len(heads) > _CACHE_MAX:
        heads.clear()
    lines, series = [], set()
    for index, m in enumerate(items):
        if m.seq != first + index:
            raise PayloadError(f"measurements[{index}]: seq {m.seq!r} where {first + index} was expected (gap-free)")
        if m.name not in NAMES:
            raise PayloadError(f"measurements[{index}]: name {m.name!r} is not one of {', '.join(sorted(NAMES))}")
        stamp = m.time
        if stamp < oldest or stamp > newest:
            _check_time(stamp, oldest, newest, now_ms, f"measurements[{index}]")
        key = (m.name, *m.tags.items())
        head = heads.get(key)
        if head is None:
            head = heads[key] = _head(m.name, m.tags, f"measurements[{index}]", rules)
        series.add(head[1])
        text = fields_raw[index][1:-1].replace(b'"', b"").replace(b":", b"=") if verbatim else _fields(fields[index])
        lines.append(b"%s%s %s %d\n" % (head[0], identity, text, stamp))
    return Ingest(spool, first, last, lines, counts, series, evicted, payload.agent)


def _head(name: str, tags: dict[str, str], where: str, rules: Rules) -> tuple[bytes, tuple]:
    """Check a series' tags; return (its escaped line head without identity, its SeriesCap key)."""
    clean = tuple(sorted(check_tags(tags, where, rules).items()))
    return lineproto.series_head(name, clean).encode(), (name, *clean)


def _check_field_names(fields: dict[str, float], where: str) -> None:
    for key in fields:
        if not _FIELD.match(key):
            raise PayloadError(f"{where}: field name {key!r} is not lowercase letters, digits and '_'")
        if len(_good_fields) < 10_000:
            _good_fields.add(key)


def _check_time(stamp: int, oldest: int, newest: int, now_ms: int, where: str) -> None:
    if stamp < oldest:
        raise PayloadError(f"{where}: time {stamp} is older than the database keeps (retention)")
    raise PayloadError(f"{where}: time {stamp} is {(stamp - now_ms) / 1000:.0f} s in the future: check the agent's clock")


def _fields(fields: dict[str, float]) -> bytes:
    return ",".join(f"{k}={v!r}" for k, v in fields.items()).encode()


def _evicted(evicted: list[tuple[int, int]]) -> list[tuple[int, int]]:
    if len(evicted) > 10_000:
        raise PayloadError("evicted must be a list of [first, last] ranges")
    for pair in evicted:
        if not 1 <= pair[0] <= pair[1]:
            raise PayloadError(f"evicted range {list(pair)!r} must be [first, last] with 1 <= first <= last")
    return evicted


def _slow(body: bytes, rules: Rules, identity: bytes, now_ms: int | None) -> Ingest:
    """Validate with check_ingest (its message is the reason given); convert what it accepts."""
    def _refuse(token: str) -> None:
        raise PayloadError(f"{token} is not a number the database can store")
    try:
        payload = json.loads(body, parse_constant=_refuse)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, PayloadError):
            raise
        raise PayloadError(f"the body is not JSON: {exc}") from None
    batch = check_ingest(payload, rules, now_ms)
    lines, series = [], set()
    for p in batch.points:
        clean = tuple(sorted(p.tags.items()))
        series.add((p.name, *clean))
        lines.append(b"%s%s %s %d\n" % (lineproto.series_head(p.name, clean).encode(), identity, _fields(p.fields),
                                         p.time))
    return Ingest(batch.spool, batch.first, batch.last, lines, [len(p.fields) for p in batch.points], series,
                  batch.evicted, batch.agent)


__all__ = ["Ingest", "decode_ingest", "identity_suffix"]
