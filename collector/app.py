"""The collector's aiohttp application: `create_app(config)`, and `serve(config)` to run it.

State lives under typed `web.AppKey`s (collector.app_keys); the SQLite connections (the state file migrated to
the current schema first: collector.db), the database writer and the registry flusher start and stop through
`cleanup_ctx`. Run it with `runner_kwargs(config)`: `auto_decompress=False` (the ingest route gunzips by itself,
with a cap, after authentication) and `keepalive_timeout` =
`limits.keepalive` (75 s) instead of aiohttp's 3,630 s, so a connection whose agent vanished (a line cut mid-
connection sends no FIN) is closed within that bound instead of holding a file descriptor for an hour.
aiohttp ≥ 3.14 also starts that timer when a connection opens and closes it if no complete request (headers)
has arrived by then: the same bound covers a client that never finishes its headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from typing import AsyncIterator

import aiohttp
from aiohttp import web

from . import routes
from .acks import Acks
from .admission import Admission, Enrollments
from .app_keys import (ACKS, ADMISSION, AUTH, CONFIG, DIRECTORY, ENROLLMENTS, EVENTS, LATEST, METRICS, REGISTRY,
                       SERIES, WRITER)
from .auth import Auth
from .config import CollectorConfig
from .db import SCHEMA_VERSION, connect, migrate
from .directory import load_directory
from .events import EventStore
from .latest import LatestResults
from .metrics import Metrics
from .registry import Registry
from .validate import SeriesCap
from .writer import Writer

log = logging.getLogger(__name__)
# aiohttp would otherwise inflate gzip bodies itself, before the handler could authenticate or cap them.
RUNNER_KWARGS = {"auto_decompress": False}
REGISTRY_FLUSH_S = 2.0
# The latest results are served from memory; the file only matters after a restart (and the next batch of each
# agent brings them back anyway), so they are written less often: during a backfill storm most of a province's
# series change every few seconds.
LATEST_FLUSH_S = 30.0
EVENTS_PRUNE_S = 3600.0


def runner_kwargs(config: CollectorConfig) -> dict:
    """Return the AppRunner/TestServer keyword arguments for `config` (see the module docstring)."""
    return {**RUNNER_KWARGS, "keepalive_timeout": config.limits.keepalive}


def create_app(config: CollectorConfig) -> web.Application:
    """Return the collector application for `config`."""
    app = web.Application()
    app[CONFIG] = config
    if config.directory:  # DirectoryError (every issue, file:line) when it is wrong: nothing is served
        app[DIRECTORY] = load_directory(config.directory)
    app[METRICS] = Metrics()
    app[SERIES] = SeriesCap(config.limits.max_series_per_agent)
    app[ADMISSION] = Admission(config.limits.max_inflight, config.limits.admission_wait,
                               per_agent=config.limits.max_uploads_per_agent)
    app[ENROLLMENTS] = Enrollments()
    app.on_response_prepare.append(_stamp)
    app.cleanup_ctx.append(_state)
    routes.setup(app)
    return app


async def _stamp(request: web.Request, response: web.StreamResponse) -> None:
    """Give every response the collector's clock and count it."""
    response.headers["X-Server-Time-Ms"] = str(int(time.time() * 1000))
    resource = request.match_info.route.resource
    request.app[METRICS].request(resource.canonical if resource else "other", response.status)


async def _state(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    path = config.db_path()
    conns = [connect(path) for _ in range(5)]  # one each: acks and events commit from worker threads
    try:
        before = migrate(conns[0])  # SchemaError for a file from a newer collector: nothing is served
    except BaseException:
        for conn in conns:
            conn.close()
        raise
    app[AUTH] = Auth(conns[0], config.province)
    app[ACKS] = Acks(conns[1])
    app[REGISTRY] = registry = Registry(conns[2])
    app[EVENTS] = events = EventStore(conns[3], config.event_retention)
    app[LATEST] = latest = LatestResults(conns[4])
    app[WRITER] = writer = Writer(config.database)
    flusher = asyncio.create_task(_flush_forever(registry, latest, events))
    log.info("collector state in %s (schema version %d, was %d), database %s", path, SCHEMA_VERSION, before,
             config.database.url)
    try:
        yield
    finally:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        try:
            latest.flush()
            registry.flush()  # a bad row is refused on its own; only a failing file raises (exit status 1)
        finally:
            writer.close()
            for conn in conns:
                conn.close()


async def _flush_forever(registry: Registry, latest: LatestResults, events: EventStore) -> None:
    pruned_at = latest_at = time.monotonic()
    pruned_at -= EVENTS_PRUNE_S  # the first prune at the first tick
    while True:
        await asyncio.sleep(REGISTRY_FLUSH_S)
        flushes = [("the fleet registry", registry.flush)]
        if time.monotonic() - latest_at >= LATEST_FLUSH_S:
            latest_at = time.monotonic()
            flushes.append(("the latest results", latest.flush))
        for what, flush in flushes:
            try:
                flush()
            except Exception:  # noqa: BLE001 - retried at the next tick; the rows stay dirty
                log.exception("cannot write %s", what)
        if time.monotonic() - pruned_at > EVENTS_PRUNE_S:
            pruned_at = time.monotonic()
            try:
                gone = await asyncio.to_thread(events.prune)
                if gone:
                    log.info("deleted %d events older than the retention", gone)
            except Exception:  # noqa: BLE001 - tried again in an hour
                log.exception("cannot delete old events")


def ssl_context(config: CollectorConfig) -> ssl.SSLContext | None:
    """Return the server TLS context (None for plain HTTP, only when allowed explicitly)."""
    if config.listen.allow_http:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # ListenSection's validator requires both files unless allow_http
    assert config.listen.cert_file is not None and config.listen.key_file is not None
    context.load_cert_chain(config.listen.cert_file, config.listen.key_file)
    return context


async def serve(config: CollectorConfig, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then stop cleanly (the registry is flushed)."""
    if tuple(int(part) for part in aiohttp.__version__.split(".")[:2] if part.isdigit()) < (3, 14):
        log.warning("aiohttp %s does not close connections that never complete a request: use aiohttp >= 3.14",
                    aiohttp.__version__)
    runner = web.AppRunner(create_app(config), access_log=None, **runner_kwargs(config))
    await runner.setup()
    site = web.TCPSite(runner, config.listen.host, config.listen.port, ssl_context=ssl_context(config),
                       backlog=4096)
    await site.start()
    log.warning("collector for %s listening on %s://%s:%s", config.province,
                "http" if config.listen.allow_http else "https", config.listen.host, config.listen.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


__all__ = ["RUNNER_KWARGS", "create_app", "runner_kwargs", "serve", "ssl_context"]
