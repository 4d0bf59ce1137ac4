"""The latest `result` and `detail` of every series an agent sends: why a target is down, at the centre.

The database keeps `result_code` (a number, so a change of reason does not split the series); the reason in
words and the detail sentence ("no answer within 10 s", "the certificate expired on ...") stay here, one row per
(commune, agent, series), newest time wins. Updated in memory on every batch and served from memory; written to
the state file in one transaction every 30 s and at a clean stop (collector.app), read back at start. Only each
series' last measurement of a batch is looked at, and a series key is made text once, when its row is first
written: a backfill storm pays per series, not per line. The series an agent may create are bounded
(collector.validate.SeriesCap), and so is this table.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any, Iterable

from .db import migrate, transaction

log = logging.getLogger(__name__)
Key = tuple[str, str, tuple]  # commune, agent, series key (name, (tag, value)...); stored as JSON text


class LatestResults:
    """The latest reason of each series, buffered until `flush()`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        migrate(conn)
        self._rows: dict[Key, tuple[int, str | None, str | None]] = {
            (c, a, _series(s)): (t, r, d) for c, a, s, t, r, d in
            conn.execute("SELECT commune, agent, series, time_ms, result, detail FROM latest")}
        self._dirty: set[Key] = set()
        self._texts: dict[tuple, str] = {}  # series key → its JSON text, made once

    def update(self, commune: str, agent: str,
               results: Iterable[tuple[tuple, int, str | None, str | None]]) -> None:
        """Note each (series key, time, result, detail) newer than what is known."""
        for series, stamp, result, detail in results:  # one per series of a batch (collector.decode)
            key = (commune, agent, series)
            known = self._rows.get(key)
            if known is None or stamp >= known[0]:
                self._rows[key] = (stamp, result, detail)
                self._dirty.add(key)

    def flush(self) -> int:
        """Write the changed rows in one transaction; return how many."""
        if not self._dirty:
            return 0
        dirty, self._dirty = self._dirty, set()
        try:
            with transaction(self.conn):
                self.conn.executemany(
                    "INSERT OR REPLACE INTO latest (commune, agent, series, time_ms, result, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(c, a, self._text(series), *self._rows[(c, a, series)]) for c, a, series in dirty])
        except BaseException:
            self._dirty |= dirty  # written at the next flush
            raise
        return len(dirty)

    def _text(self, series: tuple) -> str:
        text = self._texts.get(series)
        if text is None:
            text = self._texts[series] = json.dumps(series, ensure_ascii=False)
        return text

    def query(self, commune: str | None = None, failing: bool = False) -> list[dict[str, Any]]:
        """Return the latest reason of each series (of one commune; only those not `ok` with `failing`)."""
        out = []
        for (c, a, series), (stamp, result, detail) in sorted(self._rows.items()):
            if (commune and c != commune) or (failing and result == "ok"):
                continue
            name, *tags = series
            out.append({"commune": c, "agent": a, "name": name, "tags": dict(tags), "time_ms": stamp,
                        "result": result, "detail": detail})
        return out

    def __len__(self) -> int:
        return len(self._rows)


def _series(text: str) -> tuple:
    """Return the series key of its JSON text (`["probe", ["line", "primary"], ...]`)."""
    name, *tags = json.loads(text)
    return (name, *(tuple(pair) for pair in tags))


__all__ = ["LatestResults"]
