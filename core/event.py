"""The other data type beside `Measurement`: `Event`, something that happened at one moment.

A failover from the primary to the backup line, an SNMP trap, a device restart, an agent's clean stop, a drill:
each is one Event with a `kind` (what happened), `tags` (where: the same identity tags as a Measurement's), a
`time` (Unix ms, UTC), a `text` for people and `attributes` (name → text or number) for what does not fit a tag.
Unlike a Measurement's fields, attributes may be text: events are stored beside the time series, not in them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(slots=True, frozen=True)
class Event:
    """One thing that happened: `kind`, `tags`, `time` (Unix ms UTC), `text` for people, `attributes`.

    Attribute values are text or floats: ints and bools become floats, NaN and inf are dropped (they cannot be
    stored), anything else is a TypeError. Tag values become text, as in a Measurement.
    """

    kind: str
    tags: Mapping[str, str]
    time: int
    text: str = ""
    attributes: Mapping[str, str | float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"an event's kind is a non-empty text, not {self.kind!r}")
        clean: dict[str, str | float] = {}
        for key, value in self.attributes.items():
            if isinstance(value, str):
                clean[str(key)] = value
                continue
            if value is None:
                continue
            if not isinstance(value, (int, float)):
                raise TypeError(f"attribute {key!r}: {type(value).__name__} is neither text nor a number")
            number = float(value)
            if math.isfinite(number):
                clean[str(key)] = number
        object.__setattr__(self, "attributes", clean)
        object.__setattr__(self, "tags", {k: str(v) for k, v in self.tags.items()})
        object.__setattr__(self, "time", int(self.time))

    def with_tags(self, **tags: str) -> "Event":
        """Return a copy with extra tags (the runtime adds province/commune/agent this way)."""
        return Event(self.kind, {**self.tags, **tags}, self.time, self.text, self.attributes)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape: kind, tags, time, text, attributes."""
        return {
            "kind": self.kind,
            "tags": dict(self.tags),
            "time": self.time,
            "text": self.text,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Event":
        """Build an Event from `to_dict()` output."""
        return cls(
            kind=data["kind"],
            tags=data["tags"],
            time=int(data["time"]),
            text=data.get("text", ""),
            attributes=data.get("attributes", {}),
        )


__all__ = ["Event"]
