"""The agent ⇄ collector contract (docs/wire.md), written once for the shipper and the collector.

The version every request carries, what a spool id looks like, the limits a payload must keep (the agent builds
its payloads within them, the collector refuses — 400 — what breaks them), and the payloads themselves as msgspec
Structs: the shipper encodes `IngestPayload` with them, the collector's fast path decodes with the same Structs.
`WireMeasurement` is generic in its `fields` and `tags` so the collector can keep them as raw JSON text
(`msgspec.Raw`: copied into line protocol as sent) while the agent fills them with dicts.

A batch is one contiguous range of a spool: `measurements` and `events` together hold every seq first..last
exactly once, each list in seq order.
"""

from __future__ import annotations

import re
from typing import Any, Generic, Iterable, Sequence, TypeVar, Union

import msgspec

from .event import Event
from .measurement import Measurement

WIRE_VERSION = 1  # the integer every ingest, heartbeat and enroll body carries as `version`
# A spool's id (the agent's spool makes a UUID4): letters, digits, '-' and '_'. \Z, not $: `$` also matches
# before a final newline.
SPOOL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")  # a measurement's field name, an event's attribute name
MAX_FIELDS = 64  # fields per measurement
MAX_SEQ = 2**63 - 1  # seqs and ranges are 1..2^63−1 (the collector's acknowledgement store holds SQLite INTEGERs)
# |field value|: beside values up to 2^53 VictoriaMetrics keeps 3 decimals exactly (collector/validate.py's doc).
MAX_VALUE = 2.0**53
MAX_DEPTH = 16  # JSON nesting; the wire needs 4 (payload → measurements → measurement → tags)
MAX_RANGES = 10_000  # entries of `evicted` and of `lost` in one payload
MAX_REASON = 200  # characters of a `lost` range's reason
MAX_TASKS, MAX_TASK_ERROR = 16, 300  # the agent block's supervised tasks, and characters of a task's last error
MAX_TEXT = 100  # characters of the agent block's version strings
MAX_EVENT_TEXT = 1000  # characters of an event's text
MAX_ATTRIBUTES, MAX_ATTRIBUTE_TEXT = 32, 500  # an event's attributes, and characters of a text attribute
MAX_DETAIL = 500  # characters of a measurement's `detail` the collector keeps (longer ones are cut)
MAX_RESULT = 40  # characters of a measurement's `result` the collector keeps

# Ingest requests say whether their batch is `live` (the last minutes) or `backlog`: the collector sheds the
# backlog first (collector.admission), so live data still arrives in a backfill storm.
BATCH_HEADER = "X-Cmon-Batch"
Record = Union[Measurement, Event]  # what a spool holds and a batch carries: one seq each
FieldsT = TypeVar("FieldsT")
TagsT = TypeVar("TagsT")
AgentT = TypeVar("AgentT")
MeasurementT = TypeVar("MeasurementT")


class WireMeasurement(msgspec.Struct, Generic[FieldsT, TagsT], kw_only=True, forbid_unknown_fields=True,
                      omit_defaults=True):
    """One Measurement of a batch, with its seq."""

    seq: int
    name: str
    tags: TagsT
    fields: FieldsT
    time: int
    result: str | None = None
    detail: str | None = None


class WireEvent(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One Event of a batch, with its seq."""

    seq: int
    kind: str
    tags: dict[str, str] = {}
    time: int
    text: str = ""
    attributes: dict[str, Union[str, float]] = {}


class IngestPayload(msgspec.Struct, Generic[MeasurementT, AgentT], kw_only=True, forbid_unknown_fields=True,
                    omit_defaults=True):
    """The body of `POST /api/v1/ingest`."""

    version: int
    spool: str
    first: int
    last: int
    measurements: list[MeasurementT]
    events: list[WireEvent] = []
    evicted: list[tuple[int, int]] = []
    lost: list[tuple[int, int, str]] = []
    agent: AgentT


class HeartbeatPayload(msgspec.Struct, kw_only=True):
    """The body of `POST /api/v1/heartbeat`: `running` or `stopping`, and the agent block."""

    version: int
    state: str
    agent: dict[str, Any]


_ENCODER = msgspec.json.Encoder()


def to_wire(seq: int, record: Record) -> WireMeasurement[dict[str, float], dict[str, str]] | WireEvent:
    """Return a spooled record as it goes on the wire."""
    if isinstance(record, Event):
        return WireEvent(seq=seq, kind=record.kind, tags=dict(record.tags), time=record.time, text=record.text,
                         attributes=dict(record.attributes))
    return WireMeasurement(seq=seq, name=record.name, tags=dict(record.tags), fields=dict(record.fields),
                           time=record.time, result=record.result, detail=record.detail or None)


def encode_ingest(spool: str, first: int, last: int, items: Iterable[tuple[int, Record]],
                  evicted: Sequence[Sequence[int]], lost: Sequence[Sequence[Any]], agent: dict[str, Any]) -> bytes:
    """Return the JSON of an ingest payload for the records `items` ((seq, record), every seq first..last)."""
    measurements: list[WireMeasurement[dict[str, float], dict[str, str]]] = []
    events: list[WireEvent] = []
    for seq, record in items:
        wire = to_wire(seq, record)
        if isinstance(wire, WireEvent):
            events.append(wire)
        else:
            measurements.append(wire)
    payload: IngestPayload[WireMeasurement[dict[str, float], dict[str, str]], dict[str, Any]] = IngestPayload(
        version=WIRE_VERSION, spool=spool, first=first, last=last, measurements=measurements, events=events,
        evicted=[(int(a), int(b)) for a, b in evicted],
        lost=[(int(r[0]), int(r[1]), str(r[2])) for r in lost], agent=agent)
    return _ENCODER.encode(payload)


def encode_heartbeat(state: str, agent: dict[str, Any]) -> bytes:
    """Return the JSON of a heartbeat (`running` or `stopping`)."""
    return _ENCODER.encode(HeartbeatPayload(version=WIRE_VERSION, state=state, agent=agent))


def record_from_dict(data: dict[str, Any]) -> Record:
    """Return the Measurement or Event of a `to_dict()` (an event has a `kind`, a measurement a `name`)."""
    return Event.from_dict(data) if "kind" in data else Measurement.from_dict(data)


__all__ = ["BATCH_HEADER", "FIELD_NAME", "MAX_ATTRIBUTES", "MAX_ATTRIBUTE_TEXT", "MAX_DEPTH", "MAX_DETAIL", "MAX_EVENT_TEXT",
           "MAX_FIELDS", "MAX_RANGES", "MAX_REASON", "MAX_RESULT", "MAX_SEQ", "MAX_TASKS", "MAX_TASK_ERROR",
           "MAX_TEXT", "MAX_VALUE", "SPOOL_ID", "WIRE_VERSION", "HeartbeatPayload", "IngestPayload", "Record",
           "WireEvent", "WireMeasurement", "encode_heartbeat", "encode_ingest", "record_from_dict", "to_wire"]
