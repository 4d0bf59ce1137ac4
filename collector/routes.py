"""HTTP endpoints (docs/wire.md): ingest, heartbeat, enroll, the fleet registry, health and /metrics.

Every input is answered with a status and a reason: 4xx with `{"error": ...}` for anything the agent sent
wrong — never a 500 for what a request carries (collector.validate checks every string, number and nesting
depth before anything is stored or written).

Order of work for ingest: authenticate from the header alone (401/403 before any byte of the body is read);
the credential's own limit (collector.admission: past `limits.max_uploads_per_agent` requests of ONE credential
in progress → 429 + Retry-After, so a single agent cannot hold the places the others need); the admission gate
(past `limits.max_inflight` requests in flight → 503 with a Retry-After that spreads the retries), both still
before any byte of the body is read; read at most `max_body` bytes within `limits.body_timeout` of the request
(a stalled or vanished upload → 408 and the connection closed, its places freed), gunzip incrementally with
`zlib.decompressobj` and `max_length` (never more than `max_decompressed` bytes in memory: a gzip bomb costs a
few MB, → 413), parse and validate (400 with the reason) into line protocol with the identity tags from the
credential (one pass: collector.decode), skip the ranges already acknowledged, write the rest, record the range
(and the agent's evicted and lost ranges) durably, answer 200. A database that is down or slow → 503 +
Retry-After and nothing is acknowledged: the agent keeps the batch in its spool and resends it (the collector
keeps no queue of its own). Heartbeats pass the same credential limit and body deadline.

What one credential can make the collector keep is bounded too (collector.acks): a batch of a new spool past
the agent's live spools, or one that would start a spool's 10,001st separate acknowledged range, is a 400.
Enrollment, unauthenticated, has its own limits (collector.admission.Enrollments): places in progress and
failed enrollments per source address, both 429 + Retry-After before the body is read; then the body deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import zlib
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import ClientError, web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST

from core.wire import BATCH_HEADER, MAX_SEQ

from .admission import AGENT_RETRY_AFTER_S, ENROLL_RETRY_AFTER_S
from .app_keys import (ACKS, ADMISSION, AUTH, CONFIG, DIRECTORY, ENROLLMENTS, EVENTS, LATEST, METRICS, REGISTRY,
                       SERIES, WRITER)
from .communes import communes as commune_list
from .auth import AuthError, Identity
from .decode import decode_ingest, identity_suffix
from .validate import PayloadError, Rules, check_enroll, check_heartbeat, parse_json
from .writer import DatabaseRejected, DatabaseUnavailable

log = logging.getLogger(__name__)
SMALL_BODY = 64_000  # heartbeat and enroll bodies
CHUNK = 64 * 1024


class TooLarge(Exception):
    """The body or its decompressed form is over the limit (→ 413)."""


class TooSlow(Exception):
    """The body did not arrive within `limits.body_timeout` (→ 408, connection closed)."""


def error(status: int, message: str, **headers: str) -> web.Response:
    """Return a JSON error response `{"error": message}`."""
    return web.json_response({"error": message}, status=status, headers=headers or None)


async def read_body(request: web.Request, max_body: int, max_decompressed: int, deadline: float | None = None) -> bytes:
    """Return the (gunzipped) body; TooLarge past either limit, TooSlow after `deadline` (loop time), PayloadError
    for a broken encoding or a body cut short."""
    if request.content_length is not None and request.content_length > max_body:
        raise TooLarge(f"the body is {request.content_length} bytes: at most {max_body}")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("gzip", "identity", ""):
        raise PayloadError(f"Content-Encoding {encoding[:40]!r} is not supported: send gzip or nothing")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
    out, received = bytearray(), 0
    try:
        async with asyncio.timeout_at(deadline):
            async for chunk in request.content.iter_chunked(CHUNK):
                received += len(chunk)
                if received > max_body:
                    raise TooLarge(f"the body is over {max_body} bytes")
                if inflater is None:
                    out += chunk
                    continue
                try:
                    out += inflater.decompress(chunk, max_decompressed - len(out) + 1)
                except zlib.error as exc:
                    raise PayloadError(f"the body is not valid gzip: {exc}") from None
                if len(out) > max_decompressed or inflater.unconsumed_tail:
                    raise TooLarge(f"the body decompresses to more than {max_decompressed} bytes")
    except TimeoutError:
        raise TooSlow(f"the body did not arrive within {request.app[CONFIG].limits.body_timeout:g} s: "
                      "resend it") from None
    except (OSError, ClientError, HttpProcessingError) as exc:  # the client went away mid-body
        raise PayloadError(f"the body ended early: {type(exc).__name__}") from None
    if inflater is not None and not inflater.eof:
        raise PayloadError("the gzip body is truncated")
    return bytes(out)


def _deadline(request: web.Request) -> float:
    """Return the loop time by which this request's body must have arrived."""
    return asyncio.get_running_loop().time() + request.app[CONFIG].limits.body_timeout


def _too_slow(request: web.Request, exc: TooSlow) -> web.Response:
    request.app[METRICS].body_timeouts_total.inc()
    log.info("request from %s: %s", request.remote, exc)
    response = error(408, str(exc))
    response.force_close()  # the client stalled: do not wait on this connection for another request
    return response


def _identity(request: web.Request) -> Identity:
    return request.app[AUTH].authenticate(request.headers.get("Authorization"))


async def _limited(request: web.Request, handle: Callable[[web.Request, Identity], Awaitable[web.Response]]
                   ) -> web.Response:
    """Authenticate, then run `handle` within the credential's own limit of requests in progress (or 429)."""
    try:
        who = _identity(request)
    except AuthError as exc:
        return error(exc.status, str(exc))
    admission = request.app[ADMISSION]
    if not admission.claim(who.key):  # before the body: a stalled upload holds its own places only
        request.app[METRICS].agent_limited_total.inc()
        return error(429, f"this agent already has {admission.per_agent} requests in progress: resend in "
                          f"{AGENT_RETRY_AFTER_S} s", **{"Retry-After": str(AGENT_RETRY_AFTER_S)})
    try:
        return await handle(request, who)
    finally:
        admission.release(who.key)


async def ingest(request: web.Request) -> web.Response:
    """POST /api/v1/ingest: write a contiguous batch once; see the module docstring."""
    return await _limited(request, _admitted)


async def _admitted(request: web.Request, who: Identity) -> web.Response:
    app = request.app
    deadline = _deadline(request)
    admission = app[ADMISSION]
    retry = await admission.enter(who.key, live=request.headers.get(BATCH_HEADER) == "live")
    if retry is not None:  # overloaded: the body stays unread (aiohttp drains it, keeping the connection)
        app[METRICS].shed_total.inc()
        return error(503, f"the collector is busy: resend in {retry} s", **{"Retry-After": str(retry)})
    started = time.perf_counter()
    try:
        return await _ingest(request, who, deadline)
    finally:
        admission.leave(time.perf_counter() - started)


async def _ingest(request: web.Request, who: Identity, deadline: float) -> web.Response:
    """Read, check, write and acknowledge an admitted batch."""
    app, config = request.app, request.app[CONFIG]
    metrics = app[METRICS]
    limits = config.limits
    rules = Rules(config.tag_keys, int(config.database.retention * 1000), int(limits.max_future * 1000),
                  limits.max_measurements, limits.max_tag_value)
    try:
        batch = decode_ingest(await read_body(request, limits.max_body, limits.max_decompressed, deadline), rules,
                              identity_suffix(who.province, who.commune, who.agent))
    except TooLarge as exc:
        metrics.batches_refused_total.labels("too_large").inc()
        return error(413, str(exc))
    except TooSlow as exc:
        return _too_slow(request, exc)
    except PayloadError as exc:
        metrics.batches_refused_total.labels("invalid").inc()
        log.info("refused a batch from %s: %s", who.key, exc)
        return error(400, str(exc))
    acks = app[ACKS]
    too_many = acks.claim(who.key, batch.spool)  # before anything (a lock, a cache entry) is kept for the spool
    if too_many:
        metrics.batches_refused_total.labels("spools").inc()
        log.info("refused a batch from %s: %s", who.key, too_many)
        return error(400, too_many)
    async with acks.lock(who.key, batch.spool):
        full = acks.room(who.key, batch.spool, batch.evicted, batch.lost, (batch.first, batch.last))
        if full:
            log.info("refused a batch from %s: %s", who.key, full)
            metrics.batches_refused_total.labels("ranges").inc()
            return error(400, full)
        todo = acks.missing(who.key, batch.spool, batch.first, batch.last)
        body, count, samples = batch.body(todo)
        metrics.lines_skipped_total.inc(len(batch.lines) - count)
        if count:
            try:
                app[SERIES].admit(who.key, batch.series)
            except PayloadError as exc:
                metrics.batches_refused_total.labels("series_cap").inc()
                return error(400, str(exc))
            try:
                seconds = await app[WRITER].write(body)
            except DatabaseUnavailable as exc:
                metrics.db_errors_total.inc()
                log.warning("database unavailable, batch %s/%s %d..%d not acknowledged: %s",
                            who.key, batch.spool, batch.first, batch.last, exc)
                return error(503, "the database is unavailable: keep spooling and retry",
                             **{"Retry-After": str(limits.retry_after)})
            except DatabaseRejected as exc:
                metrics.db_errors_total.inc()
                log.error("%s", exc)
                return error(500, "the database refused the batch: the province's administrator must look")
            metrics.written(count, samples, seconds)
            app[LATEST].update(who.commune, who.agent, batch.results)
        new_events = [e for e in batch.events if any(a <= e.seq <= b for a, b in todo)]
        if new_events:
            try:  # stored before the range is acknowledged: an acknowledged event is never lost
                stored = await asyncio.to_thread(app[EVENTS].add, who, batch.spool, new_events)
            except Exception:  # noqa: BLE001 - a full disk, a locked file: not acknowledged, the agent resends
                log.exception("cannot store the events of %s/%s %d..%d", who.key, batch.spool, batch.first,
                              batch.last)
                return error(503, "cannot store the batch's events: retry", **{"Retry-After": str(limits.retry_after)})
            metrics.events_total.inc(stored)  # a resend after a crash stores (and counts) nothing again
        try:
            evicted, lost = await acks.record(who.key, batch.spool, batch.first, batch.last, evicted=batch.evicted,
                                              lost=batch.lost)
        except Exception:  # noqa: BLE001 - written but not recorded: the resend is deduplicated by the database
            log.exception("cannot record the acknowledged range")
            return error(503, "cannot record the batch: retry", **{"Retry-After": str(limits.retry_after)})
    metrics.evicted_seqs_total.inc(evicted)
    metrics.lost_seqs_total.inc(lost)
    if lost:
        log.warning("%s spool %s lost %d measurements it could not read back: %s", who.key, batch.spool, lost,
                    "; ".join(f"{a}..{b} {reason}" for a, b, reason in batch.lost[:10])
                    + (f"; and {len(batch.lost) - 10} more" if len(batch.lost) > 10 else ""))
    app[REGISTRY].seen(who, batch.agent, request.remote)
    return web.json_response({"acked": [batch.first, batch.last], "duplicate": not count,
                              "written": count, "server_time_ms": _now_ms()})


async def heartbeat(request: web.Request) -> web.Response:
    """POST /api/v1/heartbeat: note the agent's state (`running` or `stopping`) in the registry."""
    return await _limited(request, _heartbeat)


async def _heartbeat(request: web.Request, who: Identity) -> web.Response:
    try:
        state, info = check_heartbeat(parse_json(await read_body(request, SMALL_BODY, SMALL_BODY,
                                                                 _deadline(request))))
    except TooLarge as exc:
        return error(413, str(exc))
    except TooSlow as exc:
        return _too_slow(request, exc)
    except PayloadError as exc:
        log.info("refused a heartbeat from %s: %s", who.key, exc)
        return error(400, str(exc))
    request.app[REGISTRY].seen(who, info, request.remote, state)
    return web.json_response({"server_time_ms": _now_ms()})


async def enroll(request: web.Request) -> web.Response:
    """POST /api/v1/enroll: trade a one-time token for the agent's own credential.

    No credential to count by: the endpoint's own limits apply before any byte of the body is read."""
    gate, metrics = request.app[ENROLLMENTS], request.app[METRICS]
    wait = gate.blocked(request.remote)
    if wait is not None:  # this address failed too often: the token is not even looked at
        metrics.enroll_limited_total.labels("failures").inc()
        return error(429, f"too many failed enrollments from this address: resend in {wait} s",
                     **{"Retry-After": str(wait)})
    if not gate.enter():  # slow bodies of anyone on the network must not pile up
        metrics.enroll_limited_total.labels("busy").inc()
        return error(429, f"{gate.cap} enrollments are in progress: resend in {ENROLL_RETRY_AFTER_S} s",
                     **{"Retry-After": str(ENROLL_RETRY_AFTER_S)})
    try:
        return await _enroll(request)
    finally:
        gate.leave()


async def _enroll(request: web.Request) -> web.Response:
    try:
        token, agent_id, hostname = check_enroll(parse_json(await read_body(request, SMALL_BODY, SMALL_BODY,
                                                                            _deadline(request))))
    except TooLarge as exc:
        return error(413, str(exc))
    except TooSlow as exc:
        return _too_slow(request, exc)
    except PayloadError as exc:  # checked before the token is looked at: a refused request never spends it
        return error(400, str(exc))
    try:
        credential, who = request.app[AUTH].enroll(token, agent_id)
    except AuthError as exc:
        log.info("enrollment of %r from %s refused: %s", agent_id, request.remote, exc)
        if exc.status == 401 and request.app[ENROLLMENTS].failed(request.remote):
            log.warning("%s: too many failed enrollments, its next ones are refused (429) for a while",
                        request.remote)
        return error(exc.status, str(exc))
    request.app[REGISTRY].enrolled(who, hostname, request.remote)
    log.info("enrolled %s from %s", who.key, request.remote)
    return web.json_response({"credential": credential, "province": who.province, "commune": who.commune,
                              "agent": who.agent, "server_time_ms": _now_ms()})


def _views_refused(request: web.Request, what: str) -> web.Response | None:
    """Return a 401 unless the request comes from loopback or carries the views token."""
    token = request.app[CONFIG].views_token
    if not _is_loopback(request.remote) and (not token or request.headers.get("Authorization") != f"Bearer {token}"):
        return error(401, f"{what} needs the views token (or a request from the collector's host)")
    return None


async def agents(request: web.Request) -> web.Response:
    """GET /api/v1/agents: the fleet registry (from loopback, or with the views token)."""
    refused = _views_refused(request, "the fleet registry")
    if refused is not None:
        return refused
    lost = request.app[ACKS].lost_by_agent()
    rows = [row | {"lost_seqs": lost.get(f"{row['commune']}/{row['agent']}", 0)} for row in request.app[REGISTRY].agents()]
    return web.json_response({"agents": rows, "server_time_ms": _now_ms()})


async def communes(request: web.Request) -> web.Response:
    """GET /api/v1/communes: every commune of the directory and its state (`no_data` when never heard), then
    those that report without being listed (views access)."""
    refused = _views_refused(request, "the communes")
    if refused is not None:
        return refused
    rows = commune_list(request.app.get(DIRECTORY), request.app[REGISTRY].agents(), _now_ms())
    return web.json_response({"communes": rows, "server_time_ms": _now_ms()})


async def events(request: web.Request) -> web.Response:
    """GET /api/v1/events?commune=&kind=&since_ms=&limit=: the agents' events, newest first (views access)."""
    refused = _views_refused(request, "the events")
    if refused is not None:
        return refused
    query = request.query
    try:
        since, limit = int(query.get("since_ms", "0")), int(query.get("limit", "100"))
    except ValueError:
        since = limit = -1
    if not 0 <= since <= MAX_SEQ or limit < 1:
        return error(400, "since_ms must be a time in Unix milliseconds and limit a positive integer")
    rows = await asyncio.to_thread(request.app[EVENTS].query, query.get("commune"), query.get("kind"), since, limit)
    return web.json_response({"events": rows, "server_time_ms": _now_ms()})


async def results(request: web.Request) -> web.Response:
    """GET /api/v1/results?commune=&failing=1: each series' latest result and detail (views access)."""
    refused = _views_refused(request, "the results")
    if refused is not None:
        return refused
    failing = request.query.get("failing", "") in ("1", "true", "yes")
    return web.json_response({"results": request.app[LATEST].query(request.query.get("commune"), failing),
                              "server_time_ms": _now_ms()})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: the collector's own health."""
    admission, registry = request.app[ADMISSION], request.app[REGISTRY]
    body = request.app[METRICS].render(len(registry), admission.inflight, admission.waiting,
                                       admission.service_s, degraded=registry.degraded(),
                                       registry_refused=registry.refused)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def ca(request: web.Request) -> web.Response:
    """GET /api/v1/ca: the province CA (public), for `cmon agent enroll --ca-fingerprint`."""
    path = request.app[CONFIG].listen.ca_file
    if not path:
        return error(404, "this collector does not serve its CA (listen.ca_file): enroll with --ca-file")
    return web.Response(text=Path(path).read_text(encoding="ascii"), content_type="text/plain")


async def health(request: web.Request) -> web.Response:
    """GET /health: the process answers."""
    return web.Response(text="OK")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def setup(app: web.Application) -> None:
    """Register every route."""
    app.router.add_post("/api/v1/ingest", ingest)
    app.router.add_post("/api/v1/heartbeat", heartbeat)
    app.router.add_post("/api/v1/enroll", enroll)
    app.router.add_get("/api/v1/agents", agents)
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/api/v1/communes", communes)
    app.router.add_get("/api/v1/results", results)
    app.router.add_get("/api/v1/ca", ca)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)


__all__ = ["read_body", "setup"]
