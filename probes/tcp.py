"""TCP probe: connect time to host:port over a line, and optionally the banner the server greets with.

Doc: docs/probes/tcp.md. Needs no privileges.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Literal

from core.config.types import Host, Port
from core.measurement import Measurement

from .base import ProbeContext, TargetConfig
from .common.netio import classify, open_tcp

NAME = "tcp"
# The fields it can emit (measurement `probe`): documented in docs/probes/tcp.md, declared in core/catalogue.py.
FIELDS: tuple[str, ...] = ("up", "result_code", "duration_ms", "dns_ms", "connect_ms", "banner_ms")


class Config(TargetConfig):
    """A TCP target: `host`, `port`, and optionally `expect_banner` (a regex the greeting must match)."""

    probe: Literal["tcp"] = "tcp"
    host: Host
    port: Port
    expect_banner: str | None = None
    send: str | None = None  # written after connecting (e.g. "QUIT\r\n"), before reading the banner


async def probe(config: Config, ctx: ProbeContext) -> Measurement:
    """Connect to host:port; read and check the banner when one is expected."""
    try:
        conn = await open_tcp(ctx, config.host, config.port)
    except Exception as exc:  # noqa: BLE001 - every failure is data
        return ctx.failure(*classify(exc))
    fields = {"dns_ms": conn.dns_ms, "connect_ms": conn.connect_ms}
    try:
        if config.send:
            conn.writer.write(config.send.encode())
        if config.expect_banner is not None:
            connected = time.perf_counter()
            async with asyncio.timeout(ctx.remaining()):
                line = await conn.reader.readline()
            fields["banner_ms"] = (time.perf_counter() - connected) * 1000.0
            banner = line.decode("utf-8", "replace").strip()
            if not re.search(config.expect_banner, banner):
                detail = f"banner {banner[:120]!r} does not match {config.expect_banner!r}"
                return ctx.failure("banner_mismatch", detail, fields)
    except Exception as exc:  # noqa: BLE001
        return ctx.failure(*classify(exc), fields)
    finally:
        await conn.close()
    return ctx.success(fields)
