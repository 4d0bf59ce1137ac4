"""The Measurement type: floats only, missing stays missing, the reason never becomes a tag."""

import math
import re
from pathlib import Path

import pytest

from core.measurement import RESULT_CODES, RESULTS, Measurement

DOCS = Path(__file__).resolve().parents[3] / "docs"


def test_fields_are_floats_and_result_code_is_added():
    m = Measurement("probe", {"target": "x", "line": "primary"}, {"up": 1, "status_code": 200, "ok": True}, 1)
    assert all(type(v) is float for v in m.fields.values())
    assert m.fields == {"up": 1.0, "status_code": 200.0, "ok": 1.0, "result_code": 0.0}


def test_missing_and_non_finite_fields_are_left_out_not_zero():
    m = Measurement("probe", {}, {"up": 0, "rtt_ms": None, "jitter_ms": math.nan, "x": math.inf}, 1, "timeout")
    assert "rtt_ms" not in m.fields and "jitter_ms" not in m.fields and "x" not in m.fields
    assert m.fields["result_code"] == RESULT_CODES["timeout"]


def test_result_is_not_a_tag_so_series_do_not_split():
    ok = Measurement("probe", {"target": "t", "line": "backup"}, {"up": 1}, 1)
    down = Measurement("probe", {"target": "t", "line": "backup"}, {"up": 0}, 2, "refused", "nothing listens")
    assert ok.tags == down.tags
    assert down.result == "refused" and not down.up and ok.up


def test_unknown_result_and_string_field_are_refused():
    with pytest.raises(ValueError, match="unknown result"):
        Measurement("probe", {}, {}, 1, "kaput")
    with pytest.raises(ValueError):
        Measurement("probe", {}, {"up": "yes"}, 1)


def test_round_trip_through_dict():
    m = Measurement("probe", {"a": "b"}, {"up": 0, "connect_ms": 1.5}, 1700000000000, "timeout", "no answer")
    assert Measurement.from_dict(m.to_dict()) == m


def test_every_result_is_documented_with_its_code():
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    for code, name in enumerate(RESULTS):
        assert re.search(rf"^\| {code} \| `{name}` \|", text, re.M), f"docs/metrics.md lacks result {code} {name}"
