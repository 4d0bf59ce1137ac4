"""InfluxDB line protocol, written so that no tag value can inject a series or a line.

Escaping (what VictoriaMetrics and InfluxDB unescape): measurement names escape `\\` `,` and space; tag keys,
tag values and field keys escape `\\` `,` `=` and space — the backslash FIRST, so a trailing backslash cannot
swallow the separator after it. A newline cannot be escaped in line protocol at all (the parser splits lines
before unescaping), so control characters (and lone surrogates, which have no UTF-8) are refused with
`LineProtocolError`; `collector.validate` refuses them earlier with a reason for the agent. Fields are floats (`repr`), timestamps Unix milliseconds.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Iterable, Mapping

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # controls; lone surrogates (no UTF-8)
_KEY = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ "})
_NAME = str.maketrans({"\\": "\\\\", ",": "\\,", " ": "\\ "})


class LineProtocolError(ValueError):
    """A value that line protocol cannot carry (a control character, an empty tag, a non-finite number)."""


def _clean(text: str, what: str) -> str:
    if not text:
        raise LineProtocolError(f"{what} is empty")
    if _CONTROL.search(text):
        raise LineProtocolError(f"{what} {text!r} contains a control character (newline, tab...)")
    return text


def escape_name(name: str) -> str:
    """Escape a measurement name."""
    return _clean(name, "measurement name").translate(_NAME)


def escape_key(text: str, what: str = "tag value") -> str:
    """Escape a tag key, tag value or field key."""
    return _clean(text, what).translate(_KEY)


def line(name: str, tags: Mapping[str, str], fields: Mapping[str, float], time_ms: int) -> str:
    """Return one line: `name,tag=v,... field=1.0,... time_ms` (tags sorted, as InfluxDB recommends)."""
    if not fields:
        raise LineProtocolError("a line needs at least one field")
    head = _head(name, tuple(sorted(tags.items())))
    parts = []
    for key, value in fields.items():
        number = float(value)
        if not math.isfinite(number):
            raise LineProtocolError(f"field {key!r} is {number}: only finite numbers can be stored")
        parts.append(f"{_field_key(key)}={number!r}")
    return f"{head} {','.join(parts)} {int(time_ms)}"


@lru_cache(maxsize=65_536)  # a series' tags repeat every run: escape them once
def _head(name: str, tags: tuple[tuple[str, str], ...]) -> str:
    return escape_name(name) + "".join(f",{escape_key(k, 'tag key')}={escape_key(v)}" for k, v in tags)


def series_head(name: str, tags: tuple[tuple[str, str], ...]) -> str:
    """Return `name,tag=v,...` escaped, for tags already sorted (cached: a series' tags repeat every run)."""
    return _head(name, tags)


@lru_cache(maxsize=4096)
def _field_key(key: str) -> str:
    return escape_key(key, "field key")


def lines(points: Iterable[tuple[str, Mapping[str, str], Mapping[str, float], int]]) -> str:
    """Return the points as one newline-terminated body."""
    return "".join(line(*p) + "\n" for p in points)


__all__ = ["LineProtocolError", "escape_key", "escape_name", "line", "lines", "series_head"]
