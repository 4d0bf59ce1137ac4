"""Sockets pinned to a line (source address, interface, fwmark, DSCP), and the one classified failure type.

Everything a probe sends goes through `line_socket` (UDP, raw ICMP) or `connect_socket` (TCP), so a probe
pinned to the backup line never leaves by the primary; a missing privilege or address is a `ProbeFailure`
with a reason, not a traceback. The DNS exchange (`dnswire`) and the timed connections (`netio`) build on this.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import sys
import time

from ..base import Line, ProbeContext

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


__all__ = ["ProbeFailure", "apply_line", "connect_socket", "family_of", "line_socket"]
