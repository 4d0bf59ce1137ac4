"""The agent's durable store-and-forward queue: one SQLite file (WAL, `synchronous=FULL`), docs/spool.md.

- `append(measurements)` commits them in ONE transaction with gap-free sequence numbers: committed = produced.
- `next_batch(max_rows)` hands the shipper a contiguous range `[first, last]` (every seq in it present): LIVE
  rows first (appended in the last `live_age_s` seconds by this process), else the BACKLOG, oldest first.
- `ack(first, last)` deletes a delivered range; `quarantine(first, last, reason)` moves a refused one aside.
- Over `max_bytes` the oldest rows are evicted in the same transaction as the append that needed the room,
  counted in `dropped_total` and kept as ranges until reported to the collector (`pending_evictions()`,
  `evictions_reported()`). The batch last handed out (in flight) is never evicted, so its ack stays exact.

Every method is synchronous, cheap and thread-safe (one connection behind a lock); the agent calls them
through `asyncio.to_thread`. A body is the Measurement's compact `to_dict()` JSON, zlib-compressed with a
preset dictionary stored in the file itself (docs/spool.md: why, and the bytes per row).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from probes.measurement import Measurement

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_MAX_BYTES = 100 * 2**20
LIVE_AGE_S = 120.0  # rows appended this recently are live (the shipper's LIVE_AGE_S)
QUARANTINE_MAX_ROWS = 10_000  # the quarantine keeps the newest refused rows for people to look at
PAGE_SIZE = 4096

# The preset dictionary for new files: the JSON every Measurement repeats (keys, tag names, common values).
# zlib looks back into it, so a 400-byte row need not carry its own copy of `"tags":{"service":`.
# A file stores the dictionary it was created with (meta `zdict`): changing this text never breaks old files.
ZDICT = (
    '"detail":"the server did not answer within the timeout","detail":"no answer within ",'
    '{"name":"agent","tags":{"province":"","commune":"","agent":"","version":"0.1.0"},"fields":{"spool_rows":'
    '"spool_bytes":"dropped_total":0.0,"quarantined_total":0.0,"shipped_total":"probe_errors_total":0.0,'
    '"probe_runs_total":"ship_failures_total":0.0,"clock_skew_ms":"clock_measured":1.0,"auth_refused":0.0,'
    '"config_version":"uptime_s":"rss_bytes":"cpu_s":"result_code":0.0},"time":17,"result":"ok"}'
    '{"name":"host","tags":{"province":"","commune":"","agent":"","interface":"eth0"},"fields":{"net_up":1.0,'
    '"net_speed_mbps":1000.0,"net_rx_bytes":"net_tx_bytes":"net_rx_packets":"net_tx_packets":'
    '"net_rx_errors":0.0,"net_tx_errors":0.0,"net_rx_drops":0.0,"net_tx_drops":0.0,"result_code":0.0},'
    '{"name":"host","tags":{"province":"","commune":"","agent":"","mount":"/"},"fields":{"disk_pct":'
    '"disk_used_bytes":"disk_free_bytes":"disk_total_bytes":"result_code":0.0},"time":17,"result":"ok"}'
    '{"name":"host","tags":{"province":"","commune":"","agent":""},"fields":{"cpu_count":"mem_pct":'
    '"mem_used_bytes":"mem_available_bytes":"mem_total_bytes":"swap_pct":"uptime_s":"procs":"cpu_pct":'
    '"load1":"battery_pct":"battery_plugged":"battery_left_s":"result_code":0.0},"time":17,"result":"ok"}'
    '{"name":"probe","tags":{"service":"dns","target":"","probe":"dns","line":"primary","province":"",'
    '"commune":"","agent":""},"fields":{"answers":"rcode":0.0,"tries":1.0,"up":1.0,"rtt_ms":"dns_ms":'
    '"duration_ms":"result_code":0.0},"time":17,"result":"ok"}'
    '{"name":"probe","tags":{"service":"email","target":"mail-imap","probe":"imap","line":"backup",'
    '"province":"","commune":"","agent":""},"fields":{"dns_ms":"connect_ms":"tls_ms":"banner_ms":"auth_ms":'
    '"cert_days_left":"up":1.0,"duration_ms":"result_code":0.0},"time":17,"result":"ok"}'
    '{"name":"probe","tags":{"service":"email","target":"mail-smtp","probe":"smtp","line":"primary",'
    '"province":"","commune":"","agent":""},"fields":{"dns_ms":"connect_ms":"banner_ms":"ehlo_ms":'
    '"starttls_ms":"tls_ms":"cert_days_left":"up":1.0,"duration_ms":"result_code":0.0},"time":17,"result":"ok"}'
    '{"name":"probe","tags":{"service":"dvc","target":"dvc-ping","probe":"icmp","line":"backup","province":"",'
    '"commune":"","agent":""},"fields":{"sent":10.0,"received":10.0,"loss_pct":0.0,"rtt_ms":"rtt_avg_ms":'
    '"rtt_min_ms":"rtt_max_ms":"jitter_ms":"up":1.0,"duration_ms":"result_code":0.0},"time":17,"result":"ok"}'
    '{"name":"probe","tags":{"service":"dvc","target":"dvc-cert","probe":"tls","line":"primary","province":"",'
    '"commune":"","agent":""},"fields":{"dns_ms":"connect_ms":"tls_ms":"cert_days_left":"chain_len":'
    '"up":1.0,"duration_ms":"result_code":0.0},"time":17,"result":"ok"}'
    '{"name":"probe","tags":{"service":"ioffice","target":"ioffice-https","probe":"tcp","line":"backup",'
    '"province":"","commune":"","agent":""},"fields":{"dns_ms":"connect_ms":"up":1.0,"duration_ms":'
    '"result_code":0.0},"time":17,"result":"ok"}'
    '{"name":"probe","tags":{"service":"ioffice","target":"ioffice-web","probe":"http","line":"primary",'
    '"province":"","commune":"","agent":""},"fields":{"login_ms":"dns_ms":"connect_ms":"tls_ms":"ttfb_ms":'
    '"status_code":200.0,"redirects":0.0,"body_bytes":"cert_days_left":"up":1.0,"duration_ms":'
    '"result_code":0.0},"time":17,"result":"ok"}'
)


class SpoolError(Exception):
    """The spool file cannot be used (the message says what to do)."""


@dataclass(slots=True, frozen=True)
class SpoolBatch:
    """A contiguous range of the spool: `items` are (seq, Measurement) for every seq first..last, in order."""

    first: int
    last: int
    items: Sequence[tuple[int, Measurement]]
    live: bool  # True: from the live rows; False: the backlog's oldest


class Spool:
    """A durable, size-bounded queue of Measurements with gap-free sequence numbers (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES,
                 live_age_s: float = LIVE_AGE_S) -> None:
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.live_age_s = live_age_s
        # The WAL is checkpointed (and truncated back) at about this size; it is part of the size budget.
        self._wal_limit = max(64 * 1024, min(2 * 2**20, self.max_bytes // 16))
        self._lock = threading.Lock()
        self._recent: deque[tuple[int, float]] = deque()  # (first seq of an append, monotonic time)
        self._in_flight: tuple[int, int] | None = None
        self._db = self._open()
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        self.spool_id: str = meta["spool_id"]
        self._zdict: bytes = meta["zdict"]
        self._next_seq = max(int(meta["next_seq"]), self._max_seq() + 1)  # never reuse a seq
        self._dropped = int(meta["dropped_total"])
        self._quarantined = int(meta["quarantined_total"])
        self._depth = self._db.execute("SELECT count(*) FROM rows").fetchone()[0]

    # -- opening -------------------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:  # corrupt or not a spool: keep it for people, start a new one
            aside = self.path.with_name(f"{self.path.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}")
            log.error("spool %s is unusable (%s): moved aside to %s and starting a new spool (new spool id); "
                      "its measurements are not sent", self.path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    src.rename(f"{aside}{suffix}")
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            db.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # only takes effect on a new file
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # likewise: set before the first table
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise sqlite3.DatabaseError("cannot switch to WAL mode")
            db.execute("PRAGMA synchronous = FULL")  # NORMAL may lose the last commits on power loss
            db.execute(f"PRAGMA journal_size_limit = {self._wal_limit}")
            db.execute(f"PRAGMA wal_autocheckpoint = {max(16, self._wal_limit // PAGE_SIZE // 2)}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            self._create(db)
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _create(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID")
            db.execute("CREATE TABLE IF NOT EXISTS rows (seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, "
                       "body BLOB NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS quarantine (seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, "
                       "body BLOB NOT NULL, reason TEXT NOT NULL, at_ms INTEGER NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS evicted (first INTEGER PRIMARY KEY, last INTEGER NOT NULL)")
            version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if version is None:
                db.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema", SCHEMA_VERSION), ("spool_id", str(uuid.uuid4())), ("next_seq", 1),
                    ("dropped_total", 0), ("quarantined_total", 0), ("zdict", ZDICT.encode()),
                    ("created_ms", int(time.time() * 1000)),
                ])
            elif int(version[0]) > SCHEMA_VERSION:
                raise SpoolError(f"the spool file was written by a newer agent (schema {version[0]}): "
                                 "upgrade the agent or move the file away")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _max_seq(self) -> int:
        row = self._db.execute("SELECT max(m) FROM (SELECT max(seq) m FROM rows UNION ALL "
                               "SELECT max(seq) FROM quarantine UNION ALL SELECT max(last) FROM evicted)").fetchone()
        return int(row[0] or 0)

    # -- producing -----------------------------------------------------------------------------------------

    def append(self, measurements: Iterable[Measurement]) -> range:
        """Commit `measurements` in one transaction; return their seqs (evicting the oldest rows if full)."""
        bodies = [(m.time, self._encode(m)) for m in measurements]
        with self._lock:
            first = self._next_seq
            if not bodies:
                return range(first, first)
            last = first + len(bodies) - 1
            with self._transaction():
                self._db.executemany("INSERT INTO rows (seq, time_ms, body) VALUES (?, ?, ?)",
                                     [(first + i, t, b) for i, (t, b) in enumerate(bodies)])
                self._set_meta("next_seq", last + 1)
                evicted = self._evict_if_full(keep_from=first, adding=len(bodies))
            self._next_seq = last + 1
            self._depth += len(bodies) - evicted
            self._dropped += evicted
            self._recent.append((first, time.monotonic()))
            return range(first, last + 1)

    def _encode(self, m: Measurement) -> bytes:
        raw = json.dumps(m.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()
        # An 8 KiB window holds the dictionary and a row; zlib's default (32 KiB, memLevel 9) costs 8× the time
        # to set up for each row. Raw deflate: no header or checksum per row (SQLite checks its pages).
        z = zlib.compressobj(6, zlib.DEFLATED, -13, 8, zlib.Z_DEFAULT_STRATEGY, self._zdict)
        return z.compress(raw) + z.flush()

    def _decode(self, body: bytes) -> Measurement:
        z = zlib.decompressobj(-15, self._zdict)  # a 32 KiB window reads rows written with any smaller one
        return Measurement.from_dict(json.loads(z.decompress(body) + z.flush()))

    # -- eviction ------------------------------------------------------------------------------------------

    def _used_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * PAGE_SIZE

    def _data_cap(self) -> int:
        # The WAL (its limit + one transaction) and not-yet-vacuumed free pages (half of it) share max_bytes.
        return max(PAGE_SIZE * 16, self.max_bytes - self._wal_limit * 2)

    def _evict_if_full(self, keep_from: int, adding: int) -> int:
        """Delete the oldest rows (not in flight, not from seq `keep_from` on) until under the cap; count them."""
        used, cap = self._used_bytes(), self._data_cap()
        if used <= cap:
            return 0
        total = 0
        while used > cap:
            per_row = max(64, used // max(1, self._depth + adding - total))
            # Free a little more than needed (1 % of the cap) so the next appends do not evict again at once.
            want = max(1, (used - cap + max(cap // 100, 8 * PAGE_SIZE)) // per_row)
            seqs = self._evictable(want, keep_from)
            if not seqs:
                log.warning("spool over its size cap but nothing can be evicted (in flight or just appended)")
                break
            for first, last in _runs(seqs):
                self._db.execute("DELETE FROM rows WHERE seq BETWEEN ? AND ?", (first, last))
                self._record_eviction(first, last)
            total += len(seqs)
            used = self._used_bytes()
        self._set_meta("dropped_total", self._dropped + total)
        log.warning("spool full (%d bytes): evicted the %d oldest measurements (%d dropped in all)",
                    self.max_bytes, total, self._dropped + total)
        return total

    def _evictable(self, n: int, keep_from: int) -> list[int]:
        lo, hi = self._in_flight or (0, -1)
        return [s for (s,) in self._db.execute(
            "SELECT seq FROM rows WHERE seq < ? AND seq NOT BETWEEN ? AND ? ORDER BY seq LIMIT ?",
            (keep_from, lo, hi, n))]

    def _record_eviction(self, first: int, last: int) -> None:
        """Add [first, last] to the pending evicted ranges, merged with an adjacent one."""
        before = self._db.execute("SELECT first FROM evicted WHERE last = ?", (first - 1,)).fetchone()
        if before:
            self._db.execute("UPDATE evicted SET last = ? WHERE first = ?", (last, before[0]))
        else:
            self._db.execute("INSERT INTO evicted (first, last) VALUES (?, ?)", (first, last))

    def pending_evictions(self) -> list[tuple[int, int]]:
        """Return the evicted ranges not yet reported to the collector, oldest first."""
        with self._lock:
            return [(a, b) for a, b in self._db.execute("SELECT first, last FROM evicted ORDER BY first")]

    def evictions_reported(self, ranges: Iterable[Sequence[int]]) -> None:
        """Forget evicted ranges the collector has recorded (parts of a range are subtracted)."""
        done = sorted((int(a), int(b)) for a, b in ranges)
        if not done:
            return
        with self._lock, self._transaction():
            pending = list(self._db.execute("SELECT first, last FROM evicted ORDER BY first"))
            self._db.execute("DELETE FROM evicted")
            self._db.executemany("INSERT INTO evicted VALUES (?, ?)", _subtract(pending, done))

    # -- shipping ------------------------------------------------------------------------------------------

    def next_batch(self, max_rows: int = 500) -> SpoolBatch | None:
        """Return the next contiguous batch (live first, then the backlog oldest first), or None when empty.

        One shipper: the batch returned is "in flight" (never evicted) until acked or quarantined, or until
        the next call, which means the shipper gave up on it for now (it is offered again later).
        """
        with self._lock:
            self._in_flight = None
            live_from = self._live_from()
            batch = None
            if live_from is not None:
                batch = self._contiguous("WHERE seq >= ?", (live_from,), max_rows, live=True)
            if batch is None:
                batch = self._contiguous("", (), max_rows, live=False)
            if batch is not None:
                self._in_flight = (batch.first, batch.last)
            return batch

    def _live_from(self) -> int | None:
        horizon = time.monotonic() - self.live_age_s
        while self._recent and self._recent[0][1] < horizon:
            self._recent.popleft()
        return self._recent[0][0] if self._recent else None

    def _contiguous(self, where: str, args: tuple, max_rows: int, live: bool) -> SpoolBatch | None:
        items: list[tuple[int, Measurement]] = []
        for seq, body in self._db.execute(f"SELECT seq, body FROM rows {where} ORDER BY seq LIMIT ?",
                                          (*args, max(1, max_rows))):
            if items and seq != items[-1][0] + 1:
                break  # a hole (acked live rows): the batch ends before it
            items.append((seq, self._decode(body)))
        if not items:
            return None
        return SpoolBatch(items[0][0], items[-1][0], items, live)

    def ack(self, first: int, last: int) -> int:
        """Delete the delivered range [first, last]; return how many rows it removed (0 if already gone)."""
        with self._lock:
            with self._transaction():
                gone = self._db.execute("DELETE FROM rows WHERE seq BETWEEN ? AND ?", (first, last)).rowcount
            self._depth -= gone
            self._release(first, last)
            self._vacuum_if_sparse()
            return gone

    def quarantine(self, first: int, last: int, reason: str) -> int:
        """Move the refused range [first, last] aside (kept, counted, never resent); return its row count."""
        now = int(time.time() * 1000)
        with self._lock:
            with self._transaction():
                moved = self._db.execute(
                    "INSERT OR REPLACE INTO quarantine (seq, time_ms, body, reason, at_ms) "
                    "SELECT seq, time_ms, body, ?, ? FROM rows WHERE seq BETWEEN ? AND ?",
                    (reason[:1000], now, first, last)).rowcount
                self._db.execute("DELETE FROM rows WHERE seq BETWEEN ? AND ?", (first, last))
                self._db.execute("DELETE FROM quarantine WHERE seq NOT IN "
                                 "(SELECT seq FROM quarantine ORDER BY seq DESC LIMIT ?)", (QUARANTINE_MAX_ROWS,))
                self._set_meta("quarantined_total", self._quarantined + moved)
            self._quarantined += moved
            self._depth -= moved
            self._release(first, last)
            return moved

    def quarantined(self) -> list[tuple[int, str, Measurement]]:
        """Return the quarantined rows as (seq, reason, Measurement), oldest first (for people)."""
        with self._lock:
            rows = list(self._db.execute("SELECT seq, reason, body FROM quarantine ORDER BY seq"))
        return [(seq, reason, self._decode(body)) for seq, reason, body in rows]

    def _release(self, first: int, last: int) -> None:
        if self._in_flight and first <= self._in_flight[0] and self._in_flight[1] <= last:
            self._in_flight = None

    def _vacuum_if_sparse(self) -> None:
        """Give free pages back to the file system once they add up (the file shrinks after acks)."""
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        if free * PAGE_SIZE > self._wal_limit // 2:
            self._vacuum()

    def _vacuum(self) -> None:
        # executescript steps the pragma to the end; execute() would free only one page per step.
        self._db.executescript("PRAGMA incremental_vacuum")

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def dropped_total(self) -> int:
        """Measurements evicted because the spool was full, over the file's life."""
        return self._dropped

    @property
    def quarantined_total(self) -> int:
        """Measurements quarantined (refused by the collector), over the file's life."""
        return self._quarantined

    def depth(self) -> int:
        """Return how many measurements wait to be shipped."""
        return self._depth

    def size_bytes(self) -> int:
        """Return the bytes the spool takes on disk (database file + WAL)."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                pass
        return total

    def close(self) -> None:
        """Give free pages back, checkpoint the WAL into the database file and close it."""
        with self._lock:
            try:
                self._vacuum()
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers -------------------------------------------------------------------------------------------

    def _set_meta(self, key: str, value: object) -> None:
        self._db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _runs(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Return the contiguous runs of sorted `seqs` as (first, last)."""
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def _subtract(ranges: Sequence[tuple[int, int]], remove: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Return `ranges` minus `remove` (both lists of inclusive (first, last))."""
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        pieces = [(a, b)]
        for c, d in remove:
            pieces = [p for x, y in pieces for p in ((x, min(y, c - 1)), (max(x, d + 1), y)) if p[0] <= p[1]]
        out.extend(pieces)
    return out


__all__ = ["DEFAULT_MAX_BYTES", "LIVE_AGE_S", "Spool", "SpoolBatch", "SpoolError"]
