"""The agent's durable store-and-forward queue: one SQLite file (WAL, `synchronous=FULL`), docs/spool.md.

`Spool` is the shipper's `agent.queue.OutboundQueue` as it is (its batches are `agent.queue.Batch`).

- `append(measurements)` commits them in ONE transaction with gap-free sequence numbers: committed = produced.
  An append that cannot be committed (a full disk, an I/O error) raises `SpoolWriteError` after counting its
  measurements in `dropped_total` (and `dropped_disk_full_total`), logged once per episode.
- `next_batch(max_rows)` hands the shipper a contiguous range `[first, last]` (every seq in it present): LIVE
  rows first (appended in the last `live_age_s` seconds by this process), else the BACKLOG, oldest first.
  A row that cannot be decoded is moved to the `damaged` table, its seq recorded as LOST (`pending_lost()`,
  `lost_reported()`) and counted in `lost_total`; the batch starts after it.
- `ack(first, last)` deletes a delivered range; `quarantine(first, last, reason)` moves a refused one aside.
- Over `max_bytes` the oldest rows are evicted in the same transaction as the append that needed the room,
  counted in `dropped_total` and kept as ranges until reported to the collector (`pending_evictions()`,
  `evictions_reported()`). The batch last handed out (in flight) is never evicted, so its ack stays exact.
- `check()` (at start and hourly, by the agent): `PRAGMA quick_check`, then every row decoded. When SQLite
  reports corruption (here, on open, or while reading a batch) the file is REBUILT from the rows it can still
  read: the old file is kept as `<name>.broken-<time>`, the unreadable seqs are recorded as lost, and the spool
  id and sequence go on (no seq is ever reused).

Every method is synchronous and thread-safe (one connection behind a lock); the agent calls them through
`asyncio.to_thread`. A body is the Measurement's compact `to_dict()` JSON, zlib-compressed with a preset
dictionary stored in the file itself (docs/spool.md: why, and the bytes per row).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from core.ranges import difference, runs, tagged_runs
from core.wire import MAX_REASON, Record, record_from_dict

from .queue import LIVE_AGE_S, Batch

log = logging.getLogger(__name__)

# 1: measurements only (the damaged and lost tables came later without a version change: such files just lack
# them). 2: rows may hold events too; an older agent must not read those as damage, so it refuses the file.
SCHEMA_VERSION = 2
DEFAULT_MAX_BYTES = 100 * 2**20
QUARANTINE_MAX_ROWS = 10_000  # the quarantine keeps the newest refused rows for people to look at
DAMAGED_MAX_ROWS = 10_000  # likewise the rows that could not be decoded
CHECK_CHUNK = 2_000  # rows decoded per lock hold by check(): appends wait at most this long
PAGE_SIZE = 4096
_META_DEFAULTS = (("lost_total", 0), ("dropped_disk_full_total", 0))  # keys added after schema 1 files existed

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


class SpoolWriteError(SpoolError):
    """An append could not be committed; its measurements were counted in `dropped_total`."""

    def __init__(self, message: str, *, disk_full: bool) -> None:
        super().__init__(message)
        self.disk_full = disk_full


class _Newer(Exception):
    """The file was written by a newer agent (a schema this code does not know)."""

    def __init__(self, version: int) -> None:
        super().__init__(f"schema {version}")
        self.version = version


class _Corrupt(Exception):
    """quick_check failed on an open connection (kept open so the readable rows can be salvaged)."""

    def __init__(self, db: sqlite3.Connection, problem: str) -> None:
        super().__init__(problem)
        self.db, self.problem = db, problem


@dataclass(slots=True)
class _Salvage:
    """What could be read from a corrupt file: meta, rows, the side tables, and the seqs that could not."""

    meta: dict[str, Any]
    rows: list[tuple[int, int, bytes]] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)
    tables: dict[str, list[tuple]] = field(default_factory=dict)


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
        self._failing: str | None = None  # why appends fail now (an episode), None while they commit
        self._failed_in_episode = 0
        self._drops_unsaved = False  # drops counted in memory while nothing could be written
        self._closed = False  # check() running in a thread stops at its next chunk
        self._db = self._open()
        self._load_state()

    def _load_state(self) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        self.spool_id: str = meta["spool_id"]
        self._zdict: bytes = meta["zdict"]
        self._next_seq = max(int(meta["next_seq"]), self._max_seq() + 1)  # never reuse a seq
        self._dropped = int(meta["dropped_total"])
        self._dropped_disk_full = int(meta["dropped_disk_full_total"])
        self._quarantined = int(meta["quarantined_total"])
        self._lost = int(meta["lost_total"])
        self._depth = self._db.execute("SELECT count(*) FROM rows").fetchone()[0]

    # -- opening -------------------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except _Corrupt as corrupt:  # SQLite can read it, but not all of it: keep what it can
            try:
                return self._rebuild_from(corrupt.db, corrupt.problem, fallback=None)
            except (sqlite3.Error, KeyError, ValueError, TypeError) as exc:
                corrupt.db.close()
                return self._start_over(f"{corrupt.problem}; cannot rebuild: {exc}")
        except sqlite3.DatabaseError as exc:  # not a database at all, or no spool in it
            return self._start_over(str(exc))
        except _Newer as newer:  # never read rows we may misunderstand, never delete them: set the file aside
            aside = self._move_aside("newer")
            log.error("spool %s was written by a newer agent (spool schema %d; this agent knows up to %d): moved "
                      "aside to %s with its measurements, and starting a new spool. To send them, run the newer "
                      "agent with that file as its spool.", self.path, newer.version, SCHEMA_VERSION, aside)
            return self._connect()

    def _start_over(self, why: str) -> sqlite3.Connection:
        aside = self._move_aside()
        log.error("spool %s is unusable (%s): moved aside to %s and starting a new spool (new spool id); "
                  "its measurements are not sent", self.path, why, aside)
        return self._connect()

    def _move_aside(self, why: str = "broken") -> Path:
        """Rename the file and its WAL/SHM to `<name>.<why>-<time>` (kept for people to look at)."""
        aside = self.path.with_name(f"{self.path.name}.{why}-{time.strftime('%Y%m%dT%H%M%S')}")
        n = 1
        while aside.exists():  # two in one second: do not overwrite the first
            aside = aside.with_name(f"{aside.name.split('~')[0]}~{n}")
            n += 1
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(f"{aside}{suffix}")
        return aside

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
            check = _quick_check(db)
            if check != "ok":
                raise _Corrupt(db, f"quick_check: {check}")
            self._create(db)
        except (_Corrupt, _Newer) as exc:
            if isinstance(exc, _Newer):
                db.close()
            raise
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
            db.execute("CREATE TABLE IF NOT EXISTS damaged (seq INTEGER PRIMARY KEY, time_ms INTEGER, "
                       "body BLOB, reason TEXT NOT NULL, at_ms INTEGER NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS lost (first INTEGER PRIMARY KEY, last INTEGER NOT NULL, "
                       "reason TEXT NOT NULL)")
            version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if version is None:
                db.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema", SCHEMA_VERSION), ("spool_id", str(uuid.uuid4())), ("next_seq", 1),
                    ("dropped_total", 0), ("quarantined_total", 0), ("zdict", ZDICT.encode()),
                    ("created_ms", int(time.time() * 1000)),
                ])
            elif int(version[0]) > SCHEMA_VERSION:
                raise _Newer(int(version[0]))
            elif int(version[0]) < SCHEMA_VERSION:  # 1 → 2: its rows are measurements, still read as they are
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
                log.info("spool schema %s migrated to %d (its rows are kept as they are)", version[0], SCHEMA_VERSION)
            db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", _META_DEFAULTS)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _max_seq(self) -> int:
        row = self._db.execute(
            "SELECT max(m) FROM (SELECT max(seq) m FROM rows UNION ALL SELECT max(seq) FROM quarantine "
            "UNION ALL SELECT max(last) FROM evicted UNION ALL SELECT max(seq) FROM damaged "
            "UNION ALL SELECT max(last) FROM lost)").fetchone()
        return int(row[0] or 0)

    # -- producing -----------------------------------------------------------------------------------------

    def append(self, measurements: Iterable[Record]) -> range:
        """Commit `measurements` (and events: one sequence space) in one transaction; return their seqs (evicting
        the oldest rows if full).

        Raises SpoolWriteError when they cannot be committed (disk full, I/O error): they are counted as dropped.
        """
        bodies = self._encode_all(measurements)
        with self._lock:
            first = self._next_seq
            if not bodies:
                return range(first, first)
            last = first + len(bodies) - 1
            try:
                with self._transaction():
                    self._db.executemany("INSERT INTO rows (seq, time_ms, body) VALUES (?, ?, ?)",
                                         [(first + i, t, b) for i, (t, b) in enumerate(bodies)])
                    self._set_meta("next_seq", last + 1)
                    evicted = self._evict_if_full(keep_from=first, adding=len(bodies))
                    if self._drops_unsaved:
                        self._save_drops(evicted)
            except (sqlite3.Error, OSError) as exc:
                raise self._write_failed(exc, len(bodies)) from exc
            self._write_ok()
            self._next_seq = last + 1
            self._depth += len(bodies) - evicted
            self._dropped += evicted
            self._recent.append((first, time.monotonic()))
            return range(first, last + 1)

    def _encode_all(self, measurements: Iterable[Record]) -> list[tuple[int, bytes]]:
        """Return (time, body) of each Measurement; one that cannot be encoded (a lone surrogate in a tag: a bug
        upstream) is dropped, counted in dropped_total and logged, and the others are kept."""
        bodies = []
        for m in measurements:
            try:
                bodies.append((m.time, self._encode(m)))
            except (UnicodeError, ValueError, TypeError) as exc:
                log.error("spool %s: cannot encode a %r %s %s (%s): dropped (counted in dropped_total)",
                          self.path, getattr(m, "name", None) or getattr(m, "kind", None),
                          "event" if hasattr(m, "kind") else "measurement", dict(m.tags), exc)
                with self._lock:
                    self._dropped += 1
                    self._drops_unsaved = True
        return bodies

    def _write_failed(self, exc: BaseException, count: int) -> SpoolWriteError:
        """Count an append that was not committed; log once per episode; resync with the file."""
        full = is_disk_full(exc)
        self._dropped += count
        self._dropped_disk_full += count if full else 0
        self._drops_unsaved = True
        self._failed_in_episode += count
        why = "the disk is full" if full else f"{type(exc).__name__}: {exc}"
        if self._failing is None:
            self._failing = why
            log.error("spool %s: cannot commit measurements (%s): they are dropped (counted in dropped_total) "
                      "until it can write again%s", self.path, why,
                      " — free space on this disk" if full else "")
        self._resync()
        return SpoolWriteError(f"not committed: {why}", disk_full=full)

    def _write_ok(self) -> None:
        if self._failing is not None:
            log.warning("spool %s writes again: %d measurements were dropped while %s", self.path,
                        self._failed_in_episode, self._failing)
            self._failing, self._failed_in_episode = None, 0

    def _save_drops(self, evicted: int) -> None:
        self._set_meta("dropped_total", self._dropped + evicted)
        self._set_meta("dropped_disk_full_total", self._dropped_disk_full)
        self._drops_unsaved = False

    def _resync(self) -> None:
        """After a failed commit, make sure no seq the file holds is handed out again (a commit may have landed)."""
        try:
            top = self._max_seq()
            if top >= self._next_seq:
                self._next_seq = top + 1
                self._depth = self._db.execute("SELECT count(*) FROM rows").fetchone()[0]
        except sqlite3.Error as exc:
            log.warning("spool %s: cannot re-read its state after a failed commit: %s", self.path, exc)

    def _encode(self, m: Record) -> bytes:
        raw = json.dumps(m.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()
        # An 8 KiB window holds the dictionary and a row; zlib's default (32 KiB, memLevel 9) costs 8× the time
        # to set up for each row. Raw deflate: no header or checksum per row (SQLite checks its pages).
        z = zlib.compressobj(6, zlib.DEFLATED, -13, 8, zlib.Z_DEFAULT_STRATEGY, self._zdict)
        return z.compress(raw) + z.flush()

    def _decode(self, body: bytes) -> Record:
        """Return the row's Measurement or Event; DamagedRow (with what failed) when the body cannot be decoded."""
        try:
            z = zlib.decompressobj(-15, self._zdict)  # a 32 KiB window reads rows written with any smaller one
            raw = z.decompress(body) + z.flush()
            if not z.eof:
                raise zlib.error("the deflate stream is cut short")
        except (zlib.error, TypeError, ValueError) as exc:
            raise DamagedRow("cannot decompress", exc) from exc
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise DamagedRow("not JSON", exc) from exc
        try:
            return record_from_dict(data)
        except Exception as exc:  # noqa: BLE001 - whatever from_dict trips on, the row is not a record
            raise DamagedRow("not a measurement or an event", exc) from exc

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
            for first, last in runs(seqs):
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
            self._db.executemany("INSERT INTO evicted VALUES (?, ?)", difference(pending, done))

    # -- lost (damaged) rows -------------------------------------------------------------------------------

    def _set_aside(self, damaged: list[tuple[int, int, bytes, DamagedRow]]) -> bool:
        """Move undecodable rows to `damaged`, record their seqs as lost, count them; False if it cannot write."""
        now = int(time.time() * 1000)
        try:
            with self._transaction():
                self._db.executemany(
                    "INSERT OR REPLACE INTO damaged (seq, time_ms, body, reason, at_ms) VALUES (?, ?, ?, ?, ?)",
                    [(seq, t, body, str(why)[:1000], now) for seq, t, body, why in damaged])
                self._db.executemany("DELETE FROM rows WHERE seq = ?", [(d[0],) for d in damaged])
                for first, last, reason in tagged_runs([(d[0], d[3].reason) for d in damaged]):
                    self._record_lost(first, last, reason)
                self._db.execute("DELETE FROM damaged WHERE seq NOT IN "
                                 "(SELECT seq FROM damaged ORDER BY seq DESC LIMIT ?)", (DAMAGED_MAX_ROWS,))
                self._set_meta("lost_total", self._lost + len(damaged))
        except (sqlite3.Error, OSError) as exc:
            log.warning("spool %s: cannot set damaged rows aside now (%s); will try again", self.path, exc)
            return False
        self._lost += len(damaged)
        self._depth -= len(damaged)
        for first, last in runs([d[0] for d in damaged]):
            log.error("spool %s: measurements %d..%d cannot be read (%s): kept in its `damaged` table and "
                      "reported to the collector as lost", self.path, first, last, damaged[0][3])
        return True

    def _record_lost(self, first: int, last: int, reason: str) -> None:
        """Add [first, last] to the pending lost ranges, merged with an adjacent one of the same reason."""
        reason = _clean_reason(reason)
        before = self._db.execute("SELECT first FROM lost WHERE last = ? AND reason = ?",
                                  (first - 1, reason)).fetchone()
        if before:
            self._db.execute("UPDATE lost SET last = ? WHERE first = ?", (last, before[0]))
        else:
            self._db.execute("INSERT OR REPLACE INTO lost (first, last, reason) VALUES (?, ?, ?)",
                             (first, last, reason))

    def pending_lost(self) -> list[tuple[int, int, str]]:
        """Return the lost ranges (first, last, reason) not yet reported to the collector, oldest first."""
        with self._lock:
            return [(a, b, r) for a, b, r in self._db.execute("SELECT first, last, reason FROM lost ORDER BY first")]

    def lost_reported(self, ranges: Iterable[Sequence[Any]]) -> None:
        """Forget lost ranges the collector has recorded (`(first, last[, reason])`; parts are subtracted)."""
        done = sorted((int(r[0]), int(r[1])) for r in ranges)
        if not done:
            return
        with self._lock, self._transaction():
            pending = list(self._db.execute("SELECT first, last, reason FROM lost ORDER BY first"))
            self._db.execute("DELETE FROM lost")
            self._db.executemany("INSERT INTO lost VALUES (?, ?, ?)",
                                 [(a, b, reason) for first, last, reason in pending
                                  for a, b in difference([(first, last)], done)])

    def damaged(self) -> list[tuple[int, str]]:
        """Return the rows set aside as undecodable as (seq, what failed), oldest first (for people)."""
        with self._lock:
            return [(s, r) for s, r in self._db.execute("SELECT seq, reason FROM damaged ORDER BY seq")]

    # -- shipping ------------------------------------------------------------------------------------------

    def next_batch(self, max_rows: int = 500) -> Batch | None:
        """Return the next contiguous batch (live first, then the backlog oldest first), or None when empty.

        One shipper: the batch returned is "in flight" (never evicted) until acked or quarantined, or until
        the next call, which means the shipper gave up on it for now (it is offered again later). Undecodable
        rows met first are set aside as lost; one met after good rows ends the batch (the next call takes it).
        When SQLite reports the file corrupt, the spool is rebuilt and the batch looked for again.
        """
        with self._lock:
            self._in_flight = None
            try:
                batch = self._next_batch(max_rows)
            except sqlite3.DatabaseError as exc:
                if not is_corrupt(exc):
                    raise
                self._rebuild(f"reading a batch: {exc}")
                batch = self._next_batch(max_rows)
            if batch is not None:
                self._in_flight = (batch.first, batch.last)
            return batch

    def _next_batch(self, max_rows: int) -> Batch | None:
        live_from = self._live_from()
        batch = None
        if live_from is not None:
            batch = self._contiguous("WHERE seq >= ?", (live_from,), max_rows, live=True)
        if batch is None:
            batch = self._contiguous("", (), max_rows, live=False)
        return batch

    def _live_from(self) -> int | None:
        horizon = time.monotonic() - self.live_age_s
        while self._recent and self._recent[0][1] < horizon:
            self._recent.popleft()
        return self._recent[0][0] if self._recent else None

    def _contiguous(self, where: str, args: tuple, max_rows: int, live: bool) -> Batch | None:
        while True:
            items: list[tuple[int, Record]] = []
            damaged: list[tuple[int, int, bytes, DamagedRow]] = []
            for seq, time_ms, body in self._db.execute(
                    f"SELECT seq, time_ms, body FROM rows {where} ORDER BY seq LIMIT ?", (*args, max(1, max_rows))):
                if items and seq != items[-1][0] + 1:
                    break  # a hole (acked live rows): the batch ends before it
                try:
                    items.append((seq, self._decode(body)))
                except DamagedRow as why:
                    if items:
                        break  # the batch ends before it; the next call sets it aside first
                    damaged.append((seq, time_ms, body, why))
            if damaged and not self._set_aside(damaged):
                damaged = []  # cannot write now (disk full): skip them this time, try again next call
            if items:
                return Batch(items[0][0], items[-1][0], items, live)
            if not damaged:
                return None
            # only damaged rows so far, now set aside: look again

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

    def quarantined(self) -> list[tuple[int, str, Record]]:
        """Return the quarantined rows as (seq, reason, Measurement), oldest first (for people)."""
        with self._lock:
            rows = list(self._db.execute("SELECT seq, reason, body FROM quarantine ORDER BY seq"))
        return [(seq, reason, self._decode(body)) for seq, reason, body in rows]

    def _release(self, first: int, last: int) -> None:
        if self._in_flight and first <= self._in_flight[0] and self._in_flight[1] <= last:
            self._in_flight = None

    def _vacuum_if_sparse(self) -> None:
        """Give free pages back to the file system once they add up (the file shrinks after acks)."""
        try:
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            if free * PAGE_SIZE > self._wal_limit // 2:
                self._vacuum()
        except sqlite3.Error as exc:  # a full disk: the pages stay free inside the file until next time
            log.debug("spool %s: incremental vacuum failed: %s", self.path, exc)

    def _vacuum(self) -> None:
        # executescript steps the pragma to the end; execute() would free only one page per step.
        self._db.executescript("PRAGMA incremental_vacuum")

    # -- integrity -----------------------------------------------------------------------------------------

    def check(self) -> dict[str, int]:
        """Check the file (`quick_check`; a corrupt one is rebuilt) and decode every row (damaged ones set aside).

        Rows are read CHECK_CHUNK at a time, each chunk under the lock, so appends go on meanwhile. The batch in
        flight is skipped (it was decoded when handed out). Returns counts: rows checked, damaged, rebuilt (0/1).
        """
        out = {"checked": 0, "damaged": 0, "rebuilt": 0}
        with self._lock:
            if self._closed:
                return out
            problem = _quick_check(self._db)
            if problem != "ok":
                self._rebuild(f"quick_check: {problem}")
                out["rebuilt"] = 1
        after: int | None = 0
        while after is not None:
            with self._lock:
                if self._closed:
                    break
                try:
                    after = self._check_chunk(after, out)
                except sqlite3.DatabaseError as exc:
                    if not is_corrupt(exc):
                        raise
                    self._rebuild(f"reading rows: {exc}")
                    out["rebuilt"], after = 1, 0
        return out

    def _check_chunk(self, after: int, out: dict[str, int]) -> int | None:
        rows = self._db.execute("SELECT seq, time_ms, body FROM rows WHERE seq > ? ORDER BY seq LIMIT ?",
                                (after, CHECK_CHUNK)).fetchall()
        lo, hi = self._in_flight or (0, -1)
        damaged = []
        for seq, time_ms, body in rows:
            if lo <= seq <= hi:
                continue
            try:
                self._decode(body)
            except DamagedRow as why:
                damaged.append((seq, time_ms, body, why))
        if damaged and self._set_aside(damaged):
            out["damaged"] += len(damaged)
        out["checked"] += len(rows)
        return rows[-1][0] if len(rows) == CHECK_CHUNK else None

    def _rebuild(self, why: str) -> None:
        """Rebuild the open spool from what SQLite can still read (the caller holds the lock)."""
        fallback = {"spool_id": self.spool_id, "zdict": self._zdict, "next_seq": self._next_seq,
                    "dropped_total": self._dropped, "quarantined_total": self._quarantined,
                    "lost_total": self._lost, "dropped_disk_full_total": self._dropped_disk_full}
        self._in_flight = None
        self._db = self._rebuild_from(self._db, why, fallback)
        self._load_state()

    def _rebuild_from(self, old: sqlite3.Connection, why: str, fallback: dict[str, Any] | None) -> sqlite3.Connection:
        """Salvage `old`, move its file aside, write a new file with the same id and sequence; return it."""
        salvage = _salvage(old, fallback)
        old.close()
        aside = self._move_aside()
        db = self._connect()
        try:
            _restore(db, salvage)
        except BaseException:
            db.close()
            raise
        lost = runs(salvage.unreadable)
        log.error("spool %s is damaged (%s): rebuilt from the %d rows SQLite could read (the old file is %s); "
                  "%d unreadable seqs in %s are reported to the collector as lost", self.path, why,
                  len(salvage.rows), aside, len(salvage.unreadable), lost[:5])
        return db

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def dropped_total(self) -> int:
        """Measurements evicted because the spool was full, or not committed at all, over the file's life."""
        return self._dropped

    @property
    def dropped_disk_full_total(self) -> int:
        """Measurements not committed because the disk was full (part of dropped_total)."""
        return self._dropped_disk_full

    @property
    def quarantined_total(self) -> int:
        """Measurements quarantined (refused by the collector), over the file's life."""
        return self._quarantined

    @property
    def lost_total(self) -> int:
        """Measurements lost to damage (undecodable rows, unreadable pages), over the file's life."""
        return self._lost

    @property
    def writable(self) -> bool:
        """Whether the last append committed (False during a disk-full episode)."""
        return self._failing is None

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

    def disk_free_bytes(self) -> int:
        """Return the free bytes of the spool's file system (for this user)."""
        return shutil.disk_usage(self.path.parent).free

    def disk_low(self, free: int | None = None) -> bool:
        """Whether the disk cannot hold the spool growing to its cap (plus its WAL): it would fill up first."""
        free = self.disk_free_bytes() if free is None else free
        return free < self.max_bytes - self.size_bytes() + 2 * self._wal_limit

    def close(self) -> None:
        """Give free pages back, checkpoint the WAL into the database file and close it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._vacuum()
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # a full disk: the WAL stays; SQLite replays it on the next open
                log.warning("spool %s: could not checkpoint on close: %s", self.path, exc)
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


class DamagedRow(Exception):
    """A row's body cannot be decoded; `reason` is the short, stable part (the lost range's reason)."""

    def __init__(self, stage: str, exc: BaseException) -> None:
        self.reason = f"damaged spool row: {stage}"
        super().__init__(f"{self.reason} ({type(exc).__name__}: {exc})")


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception (also when the COMMIT itself fails)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return
            except BaseException:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self.db.in_transaction:  # SQLite may already have rolled back (a full disk, an I/O error)
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("spool: rollback failed: %s", exc)


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the user's quota) is full."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or "disk is full" in str(exc)


def is_corrupt(exc: BaseException) -> bool:
    """Whether SQLite says the file is damaged (not a busy or full disk)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return "malformed" in str(exc) or "not a database" in str(exc)


def _quick_check(db: sqlite3.Connection) -> str:
    """Return `ok` or what SQLite's quick_check found (it may also raise "malformed" itself)."""
    try:
        return str(db.execute("PRAGMA quick_check").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        if not is_corrupt(exc):
            raise
        return str(exc)


def _try(read: Callable[[], Any], default: Any) -> Any:
    try:
        return read()
    except sqlite3.DatabaseError:
        return default


def _salvage(db: sqlite3.Connection, fallback: dict[str, Any] | None) -> _Salvage:
    """Read what SQLite can from a damaged file; unreadable row seqs are found by halving ranges."""
    meta = {**(fallback or {}), **_try(lambda: dict(db.execute("SELECT key, value FROM meta")), {})}
    if fallback is None and "spool_id" not in meta:
        raise KeyError("the meta table cannot be read: no spool id to keep")
    for key in ("next_seq", "dropped_total", "dropped_disk_full_total", "quarantined_total", "lost_total"):
        # memory may be ahead of the file (drops counted while nothing could be written): keep the larger
        meta[key] = max(int(meta.get(key) or 0), int((fallback or {}).get(key) or 0))
    next_seq = meta["next_seq"] = max(1, meta["next_seq"])
    out = _Salvage(meta)
    low = _try(lambda: db.execute("SELECT min(seq) FROM rows").fetchone()[0], None)
    _read_rows(db, int(low) if low is not None else 1, next_seq - 1, out)
    for table in ("quarantine", "evicted", "lost", "damaged"):
        out.tables[table] = _try(partial(_select_all, db, table), [])
    return out


def _select_all(db: sqlite3.Connection, table: str) -> list[Any]:
    """Return every row of `table` (a function, not a lambda in the loop: bound to this table, and typed)."""
    return db.execute(f"SELECT * FROM {table}").fetchall()


def _read_rows(db: sqlite3.Connection, lo: int, hi: int, out: _Salvage) -> None:
    """Append the readable rows of seqs lo..hi to out.rows and the unreadable seqs to out.unreadable."""
    stack = [(lo, hi)]
    while stack:
        a, b = stack.pop()
        if a > b:
            continue
        try:  # one seq: a point lookup (a range scan steps on to the next page, maybe the broken one)
            out.rows.extend(db.execute("SELECT seq, time_ms, body FROM rows WHERE seq = ?", (a,)).fetchall()
                            if a == b else
                            db.execute("SELECT seq, time_ms, body FROM rows WHERE seq BETWEEN ? AND ? "
                                       "ORDER BY seq", (a, b)).fetchall())
        except sqlite3.DatabaseError:
            if a == b:
                out.unreadable.append(a)
            else:
                mid = (a + b) // 2
                stack += [(mid + 1, b), (a, mid)]
    out.rows.sort()
    out.unreadable.sort()


def _restore(db: sqlite3.Connection, salvage: _Salvage) -> None:
    """Write the salvaged spool into the new file: same id, sequence and counts; unreadable seqs lost."""
    meta, unreadable = salvage.meta, salvage.unreadable
    meta["lost_total"] = int(meta.get("lost_total") or 0) + len(unreadable)
    with _Transaction(db):
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                       [(k, v) for k, v in meta.items() if k != "schema"])
        db.executemany("INSERT INTO rows VALUES (?, ?, ?)", salvage.rows)
        for table, rows in salvage.tables.items():
            if rows:
                marks = ", ".join("?" * len(rows[0]))
                db.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", rows)
        reason = "spool page unreadable (SQLite corruption): spool rebuilt"
        db.executemany("INSERT OR REPLACE INTO lost VALUES (?, ?, ?)",
                       [(a, b, reason) for a, b in runs(unreadable)])


def _clean_reason(reason: str) -> str:
    flat = " ".join("".join(c if c.isprintable() else " " for c in reason).split())
    return flat[:MAX_REASON] or "damaged"


__all__ = ["DEFAULT_MAX_BYTES", "DamagedRow", "LIVE_AGE_S", "Spool", "SpoolError", "SpoolWriteError",
           "is_corrupt", "is_disk_full"]
