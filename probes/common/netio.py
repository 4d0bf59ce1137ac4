"""Timed TCP/TLS connections over a line, and the mapping from errors to `result` reasons.

Every probe that opens a connection goes through `open_tcp`, so line pinning (`sockets`), the fresh DNS lookup
(`dnswire`) and the connect/TLS phase timings are measured the same way everywhere.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from dataclasses import dataclass

from ..base import ProbeContext
from .dnswire import DnsFailure, resolve
from .sockets import ProbeFailure, connect_socket


def allowed_families(ctx: ProbeContext) -> tuple[int, ...]:
    """Return the address families this probe may use (config `ip_family` and the line's source address)."""
    wanted: tuple[int, ...] = {"ipv4": (socket.AF_INET,), "ipv6": (socket.AF_INET6,)}.get(
        ctx.target.ip_family, (socket.AF_INET, socket.AF_INET6)
    )
    source = ctx.line.config.source if ctx.line else None
    if source is not None:
        wanted = tuple(f for f in wanted if f == (socket.AF_INET6 if source.version == 6 else socket.AF_INET))
    return wanted


def classify(exc: BaseException) -> tuple[str, str]:
    """Map an exception to (result, detail). Everything a network can do to a probe has a reason."""
    if isinstance(exc, ProbeFailure):
        return exc.result, exc.detail
    if isinstance(exc, DnsFailure):
        return exc.result, str(exc)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout", "no answer in time"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return classify_verify_error(exc)
    if isinstance(exc, ssl.SSLError):
        return "tls_error", f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused (nothing listening on that port, or a firewall rejects it)"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "reset", "the connection was reset by the peer"
    if isinstance(exc, (asyncio.IncompleteReadError, EOFError)):
        return "reset", "the peer closed the connection early"
    if isinstance(exc, PermissionError):
        return "permission_denied", str(exc)
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN, errno.EADDRNOTAVAIL):
            return "unreachable", f"no route: {exc.strerror}"
        if exc.errno == errno.ETIMEDOUT:
            return "timeout", "connection timed out"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "permission_denied", str(exc)
        return "error", f"{type(exc).__name__}: {exc}"
    return "error", f"{type(exc).__name__}: {exc}"


def classify_verify_error(exc: ssl.SSLCertVerificationError) -> tuple[str, str]:
    """Map an OpenSSL verify code to a reason (10 expired, 9 not yet valid, 20 issuer not found...)."""
    code = getattr(exc, "verify_code", None)
    message = getattr(exc, "verify_message", None) or str(exc)
    if code in (9, 10):
        return "cert_expired", f"certificate {message}"
    if code == 20:
        # The issuer of the last certificate the server sent is unknown: usually the server does not send its
        # intermediate. probes/tls.py refines this by looking at the chain actually sent.
        return "cert_chain_incomplete", f"cannot build the chain to a trusted CA ({message})"
    return "tls_error", f"certificate not accepted: {message}"


@dataclass(slots=True)
class TcpConnection:
    """An open connection and how long each phase took (ms; None when the phase did not happen)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    address: str
    local_address: str
    dns_ms: float | None
    connect_ms: float
    tls_ms: float | None

    async def close(self) -> None:
        """Close without waiting long for a peer that does not answer."""
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
        except (Exception, asyncio.CancelledError):  # noqa: BLE001 - closing must never fail a probe
            pass


async def open_tcp(
    ctx: ProbeContext,
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> TcpConnection:
    """Resolve `host` afresh, connect over the line, optionally do TLS; every phase timed separately.

    Tries each resolved address in turn (IPv4 first under `ip_family: auto`) until one connects.
    Raises ProbeFailure/DnsFailure/OSError for `classify`.
    """
    addresses, dns_ms = await resolve(ctx, host, allowed_families(ctx))
    last_error: BaseException | None = None
    for address in addresses:
        try:
            sock, connect_ms = await connect_socket(ctx, address, port)
        except (OSError, asyncio.TimeoutError) as exc:
            last_error = exc
            if isinstance(exc, asyncio.TimeoutError) or ctx.remaining() <= 0:
                break
            continue
        tls_ms = None
        try:
            started = time.perf_counter()
            async with asyncio.timeout(ctx.remaining()):
                reader, writer = await asyncio.open_connection(
                    sock=sock,
                    ssl=tls,
                    server_hostname=(server_hostname or host) if tls else None,
                    limit=2**20,
                )
            if tls is not None:
                tls_ms = (time.perf_counter() - started) * 1000.0
        except BaseException:
            sock.close()
            raise
        return TcpConnection(reader, writer, address, sock.getsockname()[0], dns_ms, connect_ms, tls_ms)
    assert last_error is not None
    raise last_error


__all__ = ["TcpConnection", "allowed_families", "classify", "classify_verify_error", "open_tcp"]
