"""The latest `result` and `detail` of every series an agent sends: why a target is down, at the centre.

The database keeps `result_code` (a number, so a change of reason does not split the series); the reason in
words and the detail sentence ("no answer within 10 s", "the certificate expired on ...") stay here, one row per
(commune, agent, series), newest time wins. Updated in memory on every batch, written in one transaction every
few seconds and at shutdown (like the fleet registry), read back at start. The series an agent may create are
bounded (collector.validate.SeriesCap), and so is this table.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any, Iterable

from .db import migrate, transaction

log = logging.getLogger(__name__)
Key = tuple[str, str, str]  # commune, agent, series (JSON of [name, [tag, value]...])


class LatestResults:
    """The latest reason of each series, buffered until `flush()`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        migrate(conn)
        self._rows: dict[Key, tuple[int, str | None, str | None]] = {
            (c, a, s): (t, r, d) for c, a, s, t, r, d in
            conn.execute("SELECT commune, agent, series, time_ms, result, detail FROM latest")}
        self._dirty: set[Key] = set()

    def update(self, commune: str, agent: str,
               results: Iterable[tuple[tuple, int, str | None, str | None]]) -> None:
        """Note each (series key, time, result, detail) newer than what is known."""
        for series, stamp, result, detail in results:
            key = (commune, agent, json.dumps(series, ensure_ascii=False))
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
                    "VALUES (?, ?, ?, ?, ?, ?)", [(*key, *self._rows[key]) for key in dirty])
        except BaseException:
            self._dirty |= dirty  # written at the next flush
            raise
        return len(dirty)

    def query(self, commune: str | None = None, failing: bool = False) -> list[dict[str, Any]]:
        """Return the latest reason of each series (of one commune; only those not `ok` with `failing`)."""
        out = []
        for (c, a, series), (stamp, result, detail) in sorted(self._rows.items()):
            if (commune and c != commune) or (failing and result == "ok"):
                continue
            name, *tags = json.loads(series)
            out.append({"commune": c, "agent": a, "name": name, "tags": dict(tags), "time_ms": stamp,
                        "result": result, "detail": detail})
        return out

    def __len__(self) -> int:
        return len(self._rows)


__all__ = ["LatestResults"]
