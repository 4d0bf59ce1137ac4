"""Show measurements to people (a plain table) or to programs (one JSON object per line).

The table is for a commune IT staffer: English headers, OK/DOWN, the reason in words, the key timings in ms.
Plain `str` padding keeps it dependency-free and readable in any terminal or log.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Iterable, Sequence

from core.measurement import Measurement

# (field, label, unit) in the order people read a connection: resolve, connect, TLS, first byte.
KEY_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("rtt_ms", "rtt", "ms"),
    ("loss_pct", "loss", "%"),
    ("dns_ms", "dns", "ms"),
    ("connect_ms", "connect", "ms"),
    ("tls_ms", "tls", "ms"),
    ("ttfb_ms", "ttfb", "ms"),
    ("banner_ms", "banner", "ms"),
    ("login_ms", "login", "ms"),
    ("cert_days_left", "cert", " days"),
)
HEADERS = ("SERVICE", "TARGET", "PROBE", "LINE", "STATUS", "TIMINGS", "DETAIL")


def json_lines(measurements: Iterable[Measurement]) -> str:
    """Return one JSON object per measurement per line (name, tags, fields, time, result, detail)."""
    return "".join(json.dumps(m.to_dict(), ensure_ascii=False) + "\n" for m in measurements)


def timings(m: Measurement) -> str:
    """Return the key numbers of a measurement, e.g. `dns 1.2 ms  connect 0.4 ms  tls 3.1 ms`."""
    parts = []
    for key, label, unit in KEY_FIELDS:
        if key in m.fields:
            value = m.fields[key]
            number = _number(value, whole=key == "cert_days_left")
            parts.append(f"{label} {number}{' ' if unit == 'ms' else ''}{unit}")
    return "  ".join(parts)


def _number(value: float, *, whole: bool = False) -> str:
    """Format with the digits that matter: 117, 20.8, 0.05."""
    if whole or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.2f}"


def reason(m: Measurement) -> str:
    """Return the reason in words: empty when up, else `timeout: no answer in 5 s`."""
    if m.up:
        return m.detail
    words = m.result.replace("_", " ")
    return f"{words}: {m.detail}" if m.detail else words


def table(measurements: Sequence[Measurement]) -> str:
    """Return an aligned text table of measurements, one row per probe run, and a summary line."""
    rows = [HEADERS] + [
        (
            m.tags.get("service", ""),
            m.tags.get("target", ""),
            m.tags.get("probe", ""),
            m.tags.get("line", ""),
            "OK" if m.up else "DOWN",
            timings(m),
            reason(m),
        )
        for m in measurements
    ]
    cells = [tuple(unicodedata.normalize("NFC", cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines) + "\n" + summary(measurements) + "\n"


def summary(measurements: Sequence[Measurement]) -> str:
    """Return `5 up, 1 down (6 probe runs)`."""
    down = sum(1 for m in measurements if not m.up)
    return f"{len(measurements) - down} up, {down} down ({len(measurements)} probe runs)"


__all__ = ["HEADERS", "KEY_FIELDS", "json_lines", "reason", "summary", "table", "timings"]
