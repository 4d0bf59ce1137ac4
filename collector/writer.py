"""Write line protocol to VictoriaMetrics (or InfluxDB 2.x) through influxdb-client's v2 write API.

The ONLY module that imports influxdb_client. SYNCHRONOUS mode, so every error reaches the caller (the default
batching mode swallows them after its retries): a batch is acknowledged to the agent only after the database
answered 2xx. Writes run in a thread pool of `concurrency` threads. A database that is down, answers 5xx or
does not answer within `timeout` raises `DatabaseUnavailable` (→ 503 + Retry-After: the agents keep spooling);
one that refuses the data (4xx) raises `DatabaseRejected`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from .config import DatabaseSection

log = logging.getLogger(__name__)


class DatabaseUnavailable(Exception):
    """The database is down, overloaded or too slow; try again later."""


class DatabaseRejected(Exception):
    """The database refused the data (a 4xx): a bug in the collector or a misconfigured bucket/token."""


class Writer:
    """A blocking InfluxDB v2 client used from asyncio through a thread pool."""

    def __init__(self, config: DatabaseSection) -> None:
        self.config = config
        self.client = InfluxDBClient(
            # influxdb_client annotates `token: str = None`; None (no token: no Authorization header) is meant
            url=str(config.url), token=config.token or None,  # type: ignore[arg-type]
            org=config.org, timeout=int(config.timeout * 1000),
            retries=False, connection_pool_maxsize=config.concurrency,
        )
        self.api = self.client.write_api(write_options=SYNCHRONOUS)
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="vm-write")

    async def write(self, body: str | bytes) -> float:
        """Write newline-separated lines (ms precision); return the seconds it took."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._write, body)

    def _write(self, body: str | bytes) -> float:
        started = time.perf_counter()
        try:
            self.api.write(bucket=self.config.bucket, org=self.config.org, record=body if isinstance(body, bytes) else body.encode(),
                           # a str constant (OpenAPI-generated class), annotated as the class itself
                           write_precision=WritePrecision.MS)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                raise DatabaseRejected(f"the database refused the write: {exc.status} {exc.reason}: "
                                       f"{(exc.body or '')[:300]}") from exc
            raise DatabaseUnavailable(f"the database answered {exc.status} {exc.reason}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise DatabaseUnavailable(f"cannot write to the database: {type(exc).__name__}: {exc}") from exc
        return time.perf_counter() - started

    def close(self) -> None:
        """Close the HTTP client and the thread pool."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


__all__ = ["DatabaseRejected", "DatabaseUnavailable", "Writer"]
