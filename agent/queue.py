"""The shipper's queue: `Batch`, the `OutboundQueue` protocol, and `MemoryQueue` (docs/spool.md).

`agent.spool.Spool` (SQLite, durable) satisfies `OutboundQueue` as it is; `MemoryQueue` keeps the same contract
in memory (tests run one shipper suite against both):

- every appended Record (a Measurement or an Event) gets the next seq, gap-free, never reused;
- `next_batch(max_rows)` returns a contiguous range `[first, last]` with every seq present: the oldest LIVE rows
  (appended in the last `live_age_s` seconds) first, else the BACKLOG oldest first; it stops at a hole;
- the batch returned is in flight (never evicted) until acked or quarantined, or until the next call;
- over its cap the queue evicts its oldest rows (not in flight), counts them in `dropped_total` and keeps their
  ranges pending until `evictions_reported`; lost rows likewise (`pending_lost`, `lost_reported`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence

from core.ranges import difference, merge, runs
from core.wire import Record

LIVE_AGE_S = 120.0  # rows appended this recently are live; older ones are backlog (the bandwidth cap applies)


@dataclass(slots=True, frozen=True)
class Batch:
    """A contiguous range of one queue: `items` are (seq, Record) for every seq first..last, in order."""

    first: int
    last: int
    items: Sequence[tuple[int, Record]]
    live: bool  # True: from the live rows; False: the backlog's oldest

    def split(self) -> tuple["Batch", "Batch"]:
        """Return the two halves (each contiguous)."""
        mid = len(self.items) // 2
        a, b = self.items[:mid], self.items[mid:]
        return Batch(a[0][0], a[-1][0], a, self.live), Batch(b[0][0], b[-1][0], b, self.live)


class OutboundQueue(Protocol):
    """What the shipper needs from a queue (agent.spool.Spool, MemoryQueue)."""

    @property
    def spool_id(self) -> str:
        """The queue's id (the wire's `spool`): seqs are unique within it."""
        ...

    def next_batch(self, max_rows: int) -> Batch | None:
        """Return the next contiguous batch (live first, then backlog oldest first), or None when empty."""
        ...

    def ack(self, first: int, last: int) -> int:
        """Delete a delivered range; return the rows deleted."""
        ...

    def quarantine(self, first: int, last: int, reason: str) -> int:
        """Set a refused range aside (never resent); return its rows."""
        ...

    def pending_evictions(self) -> list[tuple[int, int]]:
        """Return the evicted ranges not yet reported, oldest first."""
        ...

    def evictions_reported(self, ranges: Iterable[Sequence[int]]) -> None:
        """Forget reported evicted ranges (parts of a range are subtracted)."""
        ...

    def pending_lost(self) -> list[tuple[int, int, str]]:
        """Return the lost ranges (first, last, reason) not yet reported, oldest first."""
        ...

    def lost_reported(self, ranges: Iterable[Sequence[Any]]) -> None:
        """Forget reported lost ranges (`(first, last[, reason])`; parts are subtracted)."""
        ...


@dataclass
class MemoryQueue:
    """An OutboundQueue in memory, bounded by `max_rows` (the oldest rows are evicted): nothing survives a restart."""

    max_rows: int = 100_000
    live_age_s: float = LIVE_AGE_S
    spool_id: str = "00000000-0000-4000-8000-000000000000"
    dropped_total: int = 0
    quarantined_total: int = 0
    lost_total: int = 0
    _rows: dict[int, tuple[Record, float]] = field(default_factory=dict)  # seq → (m, monotonic append time)
    _next_seq: int = 1
    _in_flight: tuple[int, int] | None = None
    _evicted: list[tuple[int, int]] = field(default_factory=list)
    _lost: list[tuple[int, int, str]] = field(default_factory=list)
    _quarantine: list[tuple[int, str, Record]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def append(self, measurements: Iterable[Record]) -> range:
        """Give the measurements the next seqs (gap-free); evict the oldest rows over `max_rows`."""
        with self._lock:
            now, first = time.monotonic(), self._next_seq
            for m in measurements:
                self._rows[self._next_seq] = (m, now)
                self._next_seq += 1
            self._evict(keep_from=first)
            return range(first, self._next_seq)

    def _evict(self, keep_from: int) -> None:
        over = len(self._rows) - self.max_rows
        if over <= 0:
            return
        lo, hi = self._in_flight or (0, -1)
        gone = [s for s in sorted(self._rows) if s < keep_from and not lo <= s <= hi][:over]
        for seq in gone:
            del self._rows[seq]
        self.dropped_total += len(gone)
        self._evicted = merge([*self._evicted, *runs(gone)])

    def lose(self, first: int, last: int, reason: str) -> None:
        """Drop the rows first..last as lost with `reason` (what the spool does with rows it cannot read)."""
        with self._lock:
            gone = [s for s in range(first, last + 1) if self._rows.pop(s, None) is not None]
            self.lost_total += len(gone)
            self._lost += [(a, b, reason) for a, b in runs(gone)]

    def next_batch(self, max_rows: int = 500) -> Batch | None:
        """Return the next contiguous batch: the oldest live rows first, else the backlog oldest first."""
        with self._lock:
            self._in_flight = None
            horizon = time.monotonic() - self.live_age_s
            seqs = sorted(self._rows)
            live = [s for s in seqs if self._rows[s][1] >= horizon]
            start, is_live = (live[0], True) if live else (seqs[0], False) if seqs else (None, False)
            if start is None:
                return None
            items: list[tuple[int, Record]] = []
            seq = start
            while seq in self._rows and len(items) < max(1, max_rows):
                items.append((seq, self._rows[seq][0]))
                seq += 1
            self._in_flight = (items[0][0], items[-1][0])
            return Batch(items[0][0], items[-1][0], items, is_live)

    def ack(self, first: int, last: int) -> int:
        """Delete the delivered range [first, last]; return how many rows it removed."""
        with self._lock:
            return len(self._take(first, last))

    def quarantine(self, first: int, last: int, reason: str) -> int:
        """Set the refused range aside (kept, counted, never resent); return its row count."""
        with self._lock:
            taken = self._take(first, last)
            self._quarantine += [(seq, reason, m) for seq, m in taken]
            self.quarantined_total += len(taken)
            return len(taken)

    def _take(self, first: int, last: int) -> list[tuple[int, Record]]:
        taken = [(s, self._rows.pop(s)[0]) for s in range(first, last + 1) if s in self._rows]
        if self._in_flight and first <= self._in_flight[0] and self._in_flight[1] <= last:
            self._in_flight = None
        return taken

    def quarantined(self) -> list[tuple[int, str, Record]]:
        """Return the quarantined rows as (seq, reason, Record), oldest first."""
        with self._lock:
            return list(self._quarantine)

    def pending_evictions(self) -> list[tuple[int, int]]:
        """Return the evicted ranges not yet reported, oldest first."""
        with self._lock:
            return list(self._evicted)

    def evictions_reported(self, ranges: Iterable[Sequence[int]]) -> None:
        """Forget reported evicted ranges (parts of a range are subtracted)."""
        done = sorted((int(a), int(b)) for a, b in ranges)
        with self._lock:
            self._evicted = difference(self._evicted, done) if done else self._evicted

    def pending_lost(self) -> list[tuple[int, int, str]]:
        """Return the lost ranges (first, last, reason) not yet reported, oldest first."""
        with self._lock:
            return list(self._lost)

    def lost_reported(self, ranges: Iterable[Sequence[Any]]) -> None:
        """Forget reported lost ranges (parts are subtracted)."""
        done = sorted((int(r[0]), int(r[1])) for r in ranges)
        if done:
            with self._lock:
                self._lost = [(a, b, reason) for first, last, reason in self._lost
                              for a, b in difference([(first, last)], done)]

    def depth(self) -> int:
        """Return the rows waiting."""
        return len(self._rows)


__all__ = ["LIVE_AGE_S", "Batch", "MemoryQueue", "OutboundQueue"]
