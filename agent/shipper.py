"""Ship the spool to the collector (docs/wire.md): contiguous batches, gzip, the response-code contract.

- The shipper works against `agent.queue.OutboundQueue` (the SQLite spool, or a MemoryQueue in tests). The
  queue decides the order (live data first, then the backlog oldest first) and says which a batch is; the
  shipper sends backlog batches no faster than `backlog_rate` bytes/s of request body, so a weekend's backlog
  does not fill a 4G backup line; live batches are not held back.
- 2xx: the batch is acknowledged (deleted from the spool). 400: quarantined and counted, the queue moves on.
  The ranges the spool lost to damage (`lost`) ride along like `evicted` and are marked reported on a 2xx.
  When the spool cannot delete an acknowledged batch (a full disk), the ack is retried locally with a short
  backoff (0.5 s → 10 s) before anything else is sent; nothing is lost (a resend would be deduplicated).
  413: split in two and resent (a single measurement that is still too large is quarantined). 401/403: keep
  spooling, log why (once per change), retry with backoff (403 rarely: a revoked agent stays revoked until
  the province re-enrolls it). 429/503: wait `Retry-After` (seconds or an HTTP date). Anything else (a
  connection error, a timeout, another 5xx): tenacity's exponential backoff with jitter.
- Every response carries `X-Server-Time-Ms`: `ClockOffset` keeps the offset measured by the fastest recent
  exchange (the NTP idea: server time minus the midpoint of the request), which the daemon adds to the times
  of new measurements and reports as `clock_skew_ms`.
- Live data is sent in small batches, not one request per measurement: once woken by a new measurement the
  shipper lingers `linger` seconds (default 5 s, like Prometheus remote write's batch deadline) so the runs of
  those seconds share one request; `flush()` (a clean stop) ends the wait at once. The backlog is not delayed.
- Each ingest request says whether its batch is live or backlog (`X-Cmon-Batch`): in a backfill storm the
  collector sheds backlog first and keeps places for live data (collector.admission).
- Requests go over whichever line works: the OS's default route (the dual-WAN router fails over); the shipper
  does not pin a line, so it follows the router without configuration.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import logging
import random
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from core.wire import BATCH_HEADER, encode_heartbeat, encode_ingest

from .queue import Batch, OutboundQueue

log = logging.getLogger(__name__)

# Retry-After is honoured up to this long (a broken header must not park the agent for days).
MAX_RETRY_AFTER_S = 3600.0
# An idle shipper is woken by each commit (`wake`); the poll is only a safety net.
IDLE_POLL_S = 30.0
# Live data waits this long after the first new measurement, so one request carries a few seconds' runs.
LINGER_S = 5.0


class ShipError(Exception):
    """A batch could not be delivered now; `retry_after` (s) when the collector said when to come back."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 local: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.local = local  # the spool failed, not the collector


class ClockOffset:
    """The collector's clock minus ours (ms), from the exchange with the smallest round trip among recent ones."""

    def __init__(self, window: int = 8, initial_ms: float = 0.0) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=window)  # (rtt_ms, offset_ms)
        self.initial_ms = initial_ms

    def update(self, sent_ms: float, received_ms: float, server_ms: float) -> None:
        """Record one exchange: our wall clock at send and at receipt, the server's clock in between."""
        self.samples.append((received_ms - sent_ms, server_ms - (sent_ms + received_ms) / 2))

    @property
    def measured(self) -> bool:
        """Whether any exchange has been measured."""
        return bool(self.samples)

    @property
    def offset_ms(self) -> float:
        """The best current estimate (the initial guess until measured)."""
        return min(self.samples)[1] if self.samples else self.initial_ms

    def now_ms(self) -> float:
        """Return the collector's idea of now (our clock corrected)."""
        return time.time() * 1000 + self.offset_ms


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Return seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is True, and float("²") raises
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when - (now or time.time())), MAX_RETRY_AFTER_S)


def _wait(state: RetryCallState) -> float:
    """Backoff: a spool failure 0.5 s → 10 s; Retry-After when given; 403 slowly (1 min → 1 h); otherwise
    1 s → 2 min, with jitter."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, ShipError) and exc.local:  # our own disk: check again soon, it is free to ask
        return wait_exponential_jitter(multiplier=0.5, max=10, jitter=0.5)(state)
    if isinstance(exc, ShipError) and exc.retry_after is not None:
        return exc.retry_after + random.uniform(0, min(5.0, exc.retry_after * 0.1))
    if isinstance(exc, ShipError) and exc.status == 403:
        return wait_exponential_jitter(multiplier=60, max=3600, jitter=30)(state)
    if isinstance(exc, ShipError) and exc.status == 401:
        return wait_exponential_jitter(multiplier=5, max=600, jitter=5)(state)
    return wait_exponential_jitter(multiplier=1, max=120, jitter=2)(state)


@dataclass(slots=True)
class ShipperStats:
    """Counters for the `agent` measurement and the logs."""

    shipped_total: int = 0  # measurements acknowledged
    quarantined_total: int = 0  # measurements refused with 400 (kept aside)
    requests_total: int = 0
    failures_total: int = 0
    backlog_bytes_total: int = 0
    last_error: str = ""
    last_status: int | None = None
    auth_refused: bool = False
    spool_errors_total: int = 0  # spool writes (ack, quarantine) that failed and were retried
    spool_failing: bool = False  # the last spool write failed


@dataclass(slots=True)
class Shipper:
    """Deliver the queue's batches to the collector; ack or quarantine them, report its evicted and lost ranges."""

    queue: OutboundQueue
    url: str  # the collector's base URL
    credential: str
    ssl_context: ssl.SSLContext | None = None
    timeout: float = 20.0
    backlog_rate: float = 32_000.0  # bytes/s of request body for backlog batches
    batch_max: int = 500
    linger: float = LINGER_S  # seconds live data waits for company after a wake-up (0: ship at once)
    agent_info: Callable[[], dict] = dict  # the wire's "agent" block
    clock: ClockOffset = field(default_factory=ClockOffset)
    stats: ShipperStats = field(default_factory=ShipperStats)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    flushing: asyncio.Event = field(default_factory=asyncio.Event)  # set by flush(): no more lingering
    _session: aiohttp.ClientSession | None = None
    _backlog_free_at: float = 0.0
    # acknowledged, not yet deleted: (first, last, the evicted and the lost ranges it carried)
    _unacked: tuple[int, int, list[tuple[int, int]], list[tuple[int, int, str]]] | None = None

    async def __aenter__(self) -> "Shipper":
        # no context given for https: aiohttp's default verification (what ssl=None meant to aiohttp)
        tls: ssl.SSLContext | bool = False
        if self.url.startswith("https"):
            tls = self.ssl_context if self.ssl_context is not None else True
        connector = aiohttp.TCPConnector(ssl=tls, limit=2)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout, connect=min(10.0, self.timeout))
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def run(self) -> None:
        """Ship forever: batch after batch while there are any, retrying with backoff; cancel to stop.

        When the spool is empty, wait for `wake` (a commit), then linger so the next request carries more.
        """
        while True:
            shipped = True
            while shipped:
                async for attempt in AsyncRetrying(  # a fresh backoff for each batch
                    retry=retry_if_exception_type(ShipError), wait=_wait, before_sleep=self._log_retry, reraise=True
                ):
                    with attempt:
                        self.wake.clear()  # before looking: a commit from now on wakes the wait below
                        shipped = await self.ship_next()
            if await _wait_event(self.wake, IDLE_POLL_S) and self.linger > 0:
                await _wait_event(self.flushing, self.linger)

    def flush(self) -> None:
        """Ship what is spooled now and stop lingering from here on (a clean stop)."""
        self.flushing.set()
        self.wake.set()

    async def ship_next(self) -> bool:
        """Ship the spool's next batch; return False when there was none. Raises ShipError to retry later."""
        self._finish_ack()  # an ack the spool could not write: first things first
        batch = self.queue.next_batch(self.batch_max)
        if batch is None:
            return False
        backlog = not batch.live and self.backlog_rate > 0
        if backlog:  # a token bucket of one batch: wait until the previous backlog bytes have "drained"
            await asyncio.sleep(max(0.0, self._backlog_free_at - time.monotonic()))
        sent = await self.ship(batch)
        if backlog:
            self._backlog_free_at = max(time.monotonic(), self._backlog_free_at) + sent / self.backlog_rate
        return True

    async def ship(self, batch: Batch) -> int:
        """Deliver one batch (splitting on 413); return the request bytes sent."""
        evicted, lost = self.queue.pending_evictions(), self.queue.pending_lost()
        body = gzip.compress(encode_ingest(self.queue.spool_id, batch.first, batch.last, batch.items, evicted, lost,
                                           self.agent_info()), 6)
        status, answer = await self._post("/api/v1/ingest", body, {BATCH_HEADER: "live" if batch.live else "backlog"})
        if not batch.live:
            self.stats.backlog_bytes_total += len(body)
        if 200 <= status < 300:
            self.stats.shipped_total += len(batch.items)
            self._auth_ok()
            self._unacked = (batch.first, batch.last, evicted, lost)
            self._finish_ack()
            return len(body)
        reason = _reason(answer)
        if status == 400:
            log.error("the collector refused measurements %d..%d as invalid (%s): quarantined",
                      batch.first, batch.last, reason)
            self._local(self.queue.quarantine, batch.first, batch.last, reason)
            self.stats.quarantined_total += len(batch.items)
            return len(body)
        if status == 413:
            if len(batch.items) == 1:
                self._local(self.queue.quarantine, batch.first, batch.last, f"too large even alone: {reason}")
                self.stats.quarantined_total += 1
                return len(body)
            first, second = batch.split()
            log.info("batch %d..%d too large for the collector: splitting", batch.first, batch.last)
            return len(body) + await self.ship(first) + await self.ship(second)
        raise self._failure(status, reason, answer)

    def _finish_ack(self) -> None:
        """Delete the acknowledged batch from the spool and mark its evicted/lost ranges reported.

        Raises a local ShipError (retried with a short backoff) while the spool cannot write: the collector has
        the batch, so it is not sent again meanwhile; the ack is retried until it sticks.
        """
        if self._unacked is None:
            return
        first, last, evicted, lost = self._unacked
        self._local(self.queue.ack, first, last)
        self._unacked = None
        if self.stats.spool_failing:
            log.warning("the spool deletes acknowledged batches again")
            self.stats.spool_failing = False
        reports: list[tuple[Callable[[list[Any]], None], list[Any]]] = [
            (self.queue.evictions_reported, evicted), (self.queue.lost_reported, lost),
        ]
        for report, ranges in reports:
            if ranges:
                try:
                    report(ranges)
                except Exception as exc:  # noqa: BLE001 - sent again with the next batch; the collector merges
                    log.warning("could not mark ranges %s reported (sent again next time): %s", ranges, exc)

    def _local(self, call: Callable[..., Any], *args: Any) -> Any:
        """Run a spool write; its failure (a full disk, an I/O error) becomes a local ShipError, never fatal."""
        try:
            return call(*args)
        except (ShipError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - any spool failure: retried, reported in the agent block
            self.stats.spool_errors_total += 1
            self.stats.last_error = f"spool: {type(exc).__name__}: {exc}"
            if not self.stats.spool_failing:
                log.error("the spool cannot record a batch's outcome (%s): retrying", self.stats.last_error)
            self.stats.spool_failing = True
            raise ShipError(f"spool write failed: {exc}", local=True) from exc

    async def heartbeat(self, state: str = "running", timeout: float | None = None) -> bool:
        """Send a heartbeat (`running` or `stopping`); return whether the collector took it. Never raises."""
        body = gzip.compress(encode_heartbeat(state, self.agent_info()))
        try:
            async with asyncio.timeout(timeout or self.timeout):
                status, answer = await self._post("/api/v1/heartbeat", body)
        except (ShipError, TimeoutError) as exc:
            log.info("heartbeat (%s) not delivered: %s", state, exc)
            return False
        if not 200 <= status < 300:
            log.info("heartbeat (%s) refused: %s %s", state, status, _reason(answer))
            return False
        return True

    async def _post(self, path: str, body: bytes, extra: dict[str, str] | None = None) -> tuple[int, Any]:
        assert self._session is not None, "use `async with Shipper(...)`"
        headers = {
            "Authorization": f"Bearer {self.credential}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            **(extra or {}),
        }
        self.stats.requests_total += 1
        sent = time.time() * 1000
        try:
            async with self._session.post(self.url.rstrip("/") + path, data=body, headers=headers) as response:
                raw = await response.read()
                received = time.time() * 1000
                server = response.headers.get("X-Server-Time-Ms")
                status, retry_after = response.status, response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.stats.failures_total += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            raise ShipError(f"cannot reach the collector: {self.stats.last_error}") from exc
        if server and server.isascii() and server.isdigit():
            self.clock.update(sent, received, float(server))
        self.stats.last_status = status
        try:
            answer: Any = json.loads(raw) if raw else {}
        except ValueError:
            answer = raw[:200].decode("utf-8", "replace")
        if status in (429, 503):
            self.stats.failures_total += 1
            raise ShipError(f"collector busy ({status})", status=status, retry_after=parse_retry_after(retry_after))
        return status, answer

    def _failure(self, status: int, reason: str, answer: Any) -> ShipError:
        self.stats.failures_total += 1
        self.stats.last_error = f"{status}: {reason}"
        if status in (401, 403):
            if not self.stats.auth_refused:
                why = ("the credential is revoked: ask the province to re-enroll this agent" if status == 403
                       else "the credential is missing or wrong: enroll again (cmon agent enroll)")
                log.error("the collector refuses this agent (%d %s): %s; measurements stay in the spool",
                          status, reason, why)
            self.stats.auth_refused = True
        return ShipError(f"collector answered {status}: {reason}", status=status)

    def _auth_ok(self) -> None:
        if self.stats.auth_refused:
            log.warning("the collector accepts this agent again")
        self.stats.auth_refused = False

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        log.info("shipping paused %.1f s (attempt %d): %s", wait, state.attempt_number, exc)


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to `timeout` s for `event`; return whether it is set (no task per wait, unlike wait_for)."""
    if not event.is_set():
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
    return event.is_set()


def _reason(answer: Any) -> str:
    if isinstance(answer, dict):
        return str(answer.get("error") or answer)
    return str(answer)[:200]


__all__ = ["ClockOffset", "ShipError", "Shipper", "ShipperStats", "parse_retry_after"]
