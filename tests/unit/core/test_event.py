"""The Event type: what happened, where, when; text for people, attributes as text or numbers."""

import math

import pytest

from core.event import Event


def test_round_trip_through_dict():
    e = Event("failover", {"line": "primary", "target": "router"}, 1700000000000, "primary line down, on backup",
              {"from": "primary", "to": "backup", "down_s": 12.5})
    assert e.to_dict() == {"kind": "failover", "tags": {"line": "primary", "target": "router"},
                           "time": 1700000000000, "text": "primary line down, on backup",
                           "attributes": {"from": "primary", "to": "backup", "down_s": 12.5}}
    assert Event.from_dict(e.to_dict()) == e
    assert Event.from_dict({"kind": "stop", "tags": {}, "time": 5}) == Event("stop", {}, 5)


def test_attributes_are_text_or_floats_and_tags_are_text():
    e = Event("trap", {"port": 3}, 1, attributes={"count": 2, "up": True, "why": "link down", "gone": None,
                                                    "bad": math.nan, "far": math.inf})
    assert e.attributes == {"count": 2.0, "up": 1.0, "why": "link down"}
    assert all(type(v) is float for k, v in e.attributes.items() if k != "why")
    assert e.tags == {"port": "3"}
    with pytest.raises(TypeError, match="neither text nor a number"):
        Event("trap", {}, 1, attributes={"oids": [1, 3, 6]})


def test_a_kind_is_required_and_events_are_frozen():
    with pytest.raises(ValueError, match="kind"):
        Event("", {}, 1)
    e = Event("stop", {"agent": "a"}, 1)
    with pytest.raises(AttributeError):
        e.kind = "start"  # type: ignore[misc]
    assert e.with_tags(province="p") == Event("stop", {"agent": "a", "province": "p"}, 1)
    assert e.with_tags(province="p").tags is not e.tags
