"""Sockets pinned to a line, timed TCP/TLS connections, and the mapping from errors to `result` reasons.

Every probe that opens a connection goes through `open_tcp`, so line pinning, the fresh DNS lookup and the
connect/TLS phase timings are measured the same way everywhere.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import sys
import time
from dataclasses import dataclass

from .base import Line, ProbeContext
from .dnswire import DnsFailure, resolve

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
SO_MARK = getattr(socket, "SO_MARK", 36)


class ProbeFailure(Exception):
    """A failure already classified: `result` is a reason from RESULTS, `detail` a sentence for people."""

    def __init__(self, result: str, detail: str) -> None:
        super().__init__(detail)
        self.result = result
        self.detail = detail


def line_socket(family: int, kind: int, line: Line | None, proto: int = 0) -> socket.socket:
    """Return a non-blocking socket bound as `line` says (source, interface, fwmark, DSCP)."""
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        if line is not None:
            apply_line(sock, family, line)
    except BaseException:
        sock.close()
        raise
    return sock


def apply_line(sock: socket.socket, family: int, line: Line) -> None:
    """Pin an existing socket to `line`; a missing privilege becomes a clear `permission_denied`."""
    cfg = line.config
    try:
        if cfg.interface:
            if sys.platform != "linux":
                raise ProbeFailure("error", "binding to an interface is Linux-only: use `source` on this PC")
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, cfg.interface.encode())
        if cfg.fwmark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, cfg.fwmark)
    except PermissionError as exc:
        what = "interface" if cfg.interface else "fwmark"
        raise ProbeFailure(
            "permission_denied", f"line {line.name}: setting {what} needs CAP_NET_RAW/CAP_NET_ADMIN ({exc})"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            raise ProbeFailure("unreachable", f"line {line.name}: interface {cfg.interface} does not exist") from exc
        raise
    if cfg.dscp is not None:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, cfg.dscp << 2)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, cfg.dscp << 2)
    if cfg.source is not None:
        try:
            sock.bind((str(cfg.source), 0))
        except OSError as exc:
            raise ProbeFailure(
                "unreachable", f"line {line.name}: this PC does not have the address {cfg.source} ({exc.strerror})"
            ) from exc


def family_of(address: str) -> int:
    """Return AF_INET6 for an IPv6 literal, else AF_INET."""
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def allowed_families(ctx: ProbeContext) -> tuple[int, ...]:
    """Return the address families this probe may use (config `ip_family` and the line's source address)."""
    wanted = {"ipv4": (socket.AF_INET,), "ipv6": (socket.AF_INET6,)}.get(
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


async def connect_socket(ctx: ProbeContext, address: str, port: int) -> tuple[socket.socket, float]:
    """Open a TCP connection to one address over the context's line; return it and the connect time (ms)."""
    family = family_of(address)
    sock = line_socket(family, socket.SOCK_STREAM, ctx.line)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    try:
        async with asyncio.timeout(ctx.remaining()):
            await loop.sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    connect_ms = (time.perf_counter() - started) * 1000.0
    ctx.note_local_address(sock.getsockname()[0])
    return sock, connect_ms


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
