"""DNS over lossy commune lines: queries that retransmit well inside the probe's timeout, pinned to a line.

dnspython builds and parses the messages; the UDP exchange is ours so that the socket is pinned to the line
(source, interface, fwmark, DSCP) and so that a lost datagram costs one retransmission, not the probe:
the same query is re-sent at 0.4 s, 1.2 s, 2.8 s... and an answer to any copy is accepted.
A and AAAA are asked in parallel; once one family has answered, the other gets a short grace (RFC 8305's
50 ms "resolution delay") instead of holding the connection back.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from functools import lru_cache
from typing import Iterable

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from ..base import ProbeContext
from .sockets import connect_socket, line_socket

FIRST_RETRY_S = 0.4
RESOLUTION_DELAY_S = 0.05


class DnsFailure(Exception):
    """The name could not be resolved. `result` is `dns_error`, or `timeout` when no server answered at all."""

    def __init__(self, message: str, result: str = "dns_error") -> None:
        super().__init__(message)
        self.result = result


@lru_cache(maxsize=1)
def system_resolvers() -> tuple[str, ...]:
    """Return the machine's DNS servers (resolv.conf on Linux, the registry on Windows)."""
    import dns.resolver  # only here: it pulls in dns.query, ssl, DoH/DoQ support (~1.5 MiB) the probes never use

    try:
        return tuple(str(ns) for ns in dns.resolver.Resolver(configure=True).nameservers)
    except dns.resolver.NoResolverConfiguration:
        return ()


def hosts_file_path() -> str:
    """Return the hosts file of this OS."""
    if os.name == "nt":
        return os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "drivers", "etc", "hosts")
    return "/etc/hosts"


@lru_cache(maxsize=1)
def hosts_file() -> dict[str, tuple[str, ...]]:
    """Return name → addresses from the hosts file (IT staff pin service names there; resolvers honour it)."""
    entries: dict[str, list[str]] = {}
    try:
        with open(hosts_file_path(), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                words = line.split("#", 1)[0].split()
                if len(words) >= 2 and _is_literal(words[0]):
                    for name in words[1:]:
                        entries.setdefault(name.lower().rstrip("."), []).append(words[0])
    except OSError:
        return {}
    return {name: tuple(addresses) for name, addresses in entries.items()}


def _is_literal(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False


async def exchange(
    ctx: ProbeContext,
    query: dns.message.Message,
    servers: Iterable[str],
    port: int = 53,
    deadline: float | None = None,
    sent: list[str] | None = None,
) -> tuple[dns.message.Message, str]:
    """Send `query` over UDP (TCP if truncated), retransmitting until an answer or the deadline.

    Retries rotate through `servers`. Returns (response, server that answered). Raises TimeoutError,
    ConnectionRefusedError (ICMP port unreachable on every server), or OSError.
    `sent`, when given, gets the server of every datagram sent (its length minus one is the retransmissions).
    """
    servers = list(servers)
    if not servers:
        raise DnsFailure("no DNS server configured (none in resolv.conf and no `resolver`)")
    deadline = deadline if deadline is not None else time.monotonic() + ctx.remaining()
    loop = asyncio.get_running_loop()
    wire = query.to_wire()
    sockets: dict[str, socket.socket] = {}
    answers: asyncio.Queue[tuple[str, bytes | BaseException]] = asyncio.Queue()

    def on_readable(server: str, sock: socket.socket) -> None:
        try:
            answers.put_nowait((server, sock.recv(65535)))
        except BlockingIOError:
            pass
        except OSError as exc:  # ICMP port/host unreachable surfaces here on a connected UDP socket
            answers.put_nowait((server, exc))

    def send_to(server: str) -> None:
        sock = sockets.get(server)
        if sock is None:
            family = socket.AF_INET6 if ":" in server else socket.AF_INET
            sock = line_socket(family, socket.SOCK_DGRAM, ctx.line)
            sock.connect((server, port))
            sockets[server] = sock
            loop.add_reader(sock.fileno(), on_readable, server, sock)
        if sent is not None:
            sent.append(server)
        try:
            sock.send(wire)
        except OSError as exc:
            answers.put_nowait((server, exc))

    errors: list[BaseException] = []
    try:
        attempt, wait = 0, FIRST_RETRY_S
        send_to(servers[0])
        next_send = time.monotonic() + wait
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError
            try:
                server, data = await asyncio.wait_for(answers.get(), min(next_send, deadline) - now)
            except (asyncio.TimeoutError, TimeoutError):
                if time.monotonic() >= deadline:
                    raise TimeoutError from None
                attempt += 1
                wait *= 2
                send_to(servers[attempt % len(servers)])
                next_send = time.monotonic() + wait
                continue
            if isinstance(data, BaseException):
                errors.append(data)
                if len(errors) >= len(servers) and all(isinstance(e, ConnectionRefusedError) for e in errors):
                    raise ConnectionRefusedError(f"no DNS server listening at {', '.join(servers)}")
                continue
            try:
                response = dns.message.from_wire(data, ignore_trailing=True)
            except dns.exception.DNSException:
                continue  # garbage or a stray datagram: keep waiting for the real answer
            if not query.is_response(response):
                continue
            if response.flags & dns.flags.TC:
                return await _exchange_tcp(ctx, query, server, port, deadline), server
            return response, server
    finally:
        for sock in sockets.values():
            loop.remove_reader(sock.fileno())
            sock.close()


async def _exchange_tcp(
    ctx: ProbeContext, query: dns.message.Message, server: str, port: int, deadline: float
) -> dns.message.Message:
    """Repeat a truncated query over TCP on the same line."""
    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
        sock, _ = await connect_socket(ctx, server, port)
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            wire = query.to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            return dns.message.from_wire(await reader.readexactly(length))
        finally:
            writer.close()


def servers_for(ctx: ProbeContext) -> tuple[str, ...]:
    """Return the DNS servers to use: the line's own resolver, else the agent's, else the system's."""
    if ctx.line is not None and ctx.line.config.resolver is not None:
        return (str(ctx.line.config.resolver),)
    return ctx.resolvers or system_resolvers()


async def resolve(ctx: ProbeContext, host: str, families: tuple[int, ...]) -> tuple[list[str], float | None]:
    """Resolve `host` afresh (no cache) over the line; return (addresses, dns_ms).

    IP literals, the line's `hosts` overrides and the hosts file need no lookup: dns_ms is then None (not measured, not 0).
    IPv4 addresses come first, then IPv6.
    """
    if _is_literal(host):
        return [host], None
    if ctx.line is not None and host in ctx.line.config.hosts:
        return [str(ctx.line.config.hosts[host])], None
    pinned = hosts_file().get(host.lower().rstrip("."))
    if pinned:
        return [a for a in pinned if (socket.AF_INET6 if ":" in a else socket.AF_INET) in families], None
    servers = servers_for(ctx)
    started = time.perf_counter()
    rdtypes = [t for f, t in ((socket.AF_INET, "A"), (socket.AF_INET6, "AAAA")) if f in families]
    tasks = {t: asyncio.create_task(_lookup(ctx, host, t, servers)) for t in rdtypes}
    try:
        done, pending = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
        if pending:
            answered = any(not t.exception() and t.result() for t in done)
            await asyncio.wait(pending, timeout=RESOLUTION_DELAY_S if answered else None)
        dns_ms = (time.perf_counter() - started) * 1000.0
    finally:
        late = [task for task in tasks.values() if not task.done()]
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    addresses: list[str] = []
    failures: list[BaseException] = []
    for rdtype in rdtypes:
        task = tasks[rdtype]
        if task.cancelled():
            continue
        exc = task.exception()
        if exc is not None:
            failures.append(exc)
        else:
            addresses.extend(task.result())
    if addresses:
        return addresses, dns_ms
    for exc in failures:
        if isinstance(exc, DnsFailure) and exc.result == "dns_error":
            raise exc
    if any(isinstance(e, (TimeoutError, asyncio.TimeoutError)) for e in failures):
        raise DnsFailure(f"DNS server {', '.join(servers)} did not answer for {host}", result="timeout")
    if failures:
        raise DnsFailure(f"cannot ask DNS server {', '.join(servers)} for {host}: {failures[0]}")
    raise DnsFailure(f"{host} has no {'/'.join(rdtypes)} record")


async def _lookup(ctx: ProbeContext, host: str, rdtype: str, servers: tuple[str, ...]) -> list[str]:
    query = dns.message.make_query(host, rdtype)
    response, server = await exchange(ctx, query, servers)
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        raise DnsFailure(f"{host} does not exist (NXDOMAIN from {server})")
    if rcode != dns.rcode.NOERROR:
        raise DnsFailure(f"DNS server {server} answered {dns.rcode.to_text(rcode)} for {host}")
    wanted = dns.rdatatype.from_text(rdtype)
    return [rd.address for rrset in response.answer if rrset.rdtype == wanted for rd in rrset]
