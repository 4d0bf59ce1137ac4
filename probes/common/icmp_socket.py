"""ICMP echo over Linux sockets: the `EchoTransport` (probes/common/echo.py) of probes/icmp.py.

Two kinds of socket, one code path:
- "ping sockets" (SOCK_DGRAM, IPPROTO_ICMP/ICMPV6): no privilege, allowed when the process's group is in
  `net.ipv4.ping_group_range` (that one sysctl covers IPv6 too). The kernel owns the identifier (it is the
  socket's local "port") and the checksum, and delivers only replies to this socket.
- raw sockets (SOCK_RAW): need CAP_NET_RAW. Every raw ICMP socket sees every echo reply, so ours carry a random
  identifier and a random payload cookie, and IPv4 replies are checksum-checked (the kernel hands raw sockets
  packets before verifying them). For ICMPv6 raw sockets the kernel computes and checks the checksum.

Accuracy: the receive time is the kernel's timestamp of the packet's arrival (SO_TIMESTAMPNS, read from
recvmsg ancillary data), so a busy event loop does not inflate the RTT; the send time is taken just before the
send() call, as iputils ping does. Both are CLOCK_REALTIME; a monotonic pair is kept too and used instead if the
wall clock stepped between send and receive.

The socket is connected to the target: the kernel then filters out other hosts' replies and picks the source
address we report. ICMP errors (destination unreachable, time exceeded) about our echoes arrive on the error
queue (IP_RECVERR / IPV6_RECVERR) with the offending echo's header, so they are matched by sequence number.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import time
from typing import Callable

from ..base import Line
from .echo import EchoError
from .sockets import ProbeFailure, line_socket

# Linux constants the socket module does not export.
SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD: 64-bit timespec on 64-bit kernels, 32-bit on 32-bit ones
SOL_IPV6 = 41
IP_RECVERR = 11
IPV6_RECVERR = 25
SOL_RAW = 255
ICMP_FILTER = 1
ICMP6_FILTER = 1
MSG_ERRQUEUE = 0x2000
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3

ECHO_REQUEST = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY = {socket.AF_INET: 0, socket.AF_INET6: 129}
PROTO: dict[int, int] = {socket.AF_INET: socket.IPPROTO_ICMP, socket.AF_INET6: socket.IPPROTO_ICMPV6}
# Room for the IPv4 header with options and the ICMP header around the payload.
HEADROOM = 60 + 8 + 64

# What ICMP errors mean, in words for the commune's IT person: (type, code) → phrase.
_ICMP4_ERRORS = {
    (3, 0): "network unreachable",
    (3, 1): "host unreachable",
    (3, 2): "protocol unreachable",
    (3, 3): "port unreachable",
    (3, 4): "fragmentation needed (MTU too small for the payload)",
    (3, 9): "network administratively prohibited",
    (3, 10): "host administratively prohibited",
    (3, 13): "communication administratively prohibited (a firewall)",
    (11, 0): "TTL exceeded in transit (a routing loop?)",
}
_ICMP6_ERRORS = {
    (1, 0): "no route to destination",
    (1, 1): "communication administratively prohibited (a firewall)",
    (1, 3): "address unreachable",
    (1, 4): "port unreachable",
    (1, 5): "source address failed ingress/egress policy",
    (1, 6): "reject route to destination",
    (2, 0): "packet too big (MTU too small for the payload)",
    (3, 0): "hop limit exceeded in transit (a routing loop?)",
}


OnReply = Callable[[int, float], None]
OnError = Callable[[EchoError], None]


def checksum(data: bytes) -> int:
    """Return the Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def open_socket(family: int, privileged: bool | str, line: Line | None) -> socket.socket:
    """Open the socket `privileged` asks for; "auto" tries a ping socket, then a raw one.

    Raises ProbeFailure("permission_denied") when the process may open neither.
    """
    kinds = {"auto": (False, True), True: (True,), False: (False,)}[privileged]
    for raw in kinds:
        try:
            return line_socket(family, socket.SOCK_RAW if raw else socket.SOCK_DGRAM, line, PROTO[family])
        except PermissionError:
            continue
    if privileged is True:
        detail = "icmp with privileged: true needs CAP_NET_RAW (run as root or give the agent that capability)"
    elif privileged is False:
        detail = (
            f"icmp with privileged: false needs net.ipv4.ping_group_range to include group {os.getegid()}"
        )
    else:
        detail = "icmp needs CAP_NET_RAW or net.ipv4.ping_group_range"
    raise ProbeFailure("permission_denied", detail)


class LinuxEchoTransport:
    """Echo requests to one address over one socket; replies and errors come back through callbacks."""

    def __init__(
        self,
        sock: socket.socket,
        address: str,
        payload_size: int,
        on_reply: OnReply,
        on_error: OnError,
    ) -> None:
        self.sock = sock
        self.family = sock.family
        self.raw = sock.type == socket.SOCK_RAW
        self.address = address
        self.on_reply = on_reply
        self.on_error = on_error
        cookie = os.urandom(8)
        self.payload = (cookie * (payload_size // 8 + 1))[:payload_size]
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.seq_base = int.from_bytes(os.urandom(2), "big")
        self.bufsize = payload_size + HEADROOM
        self.sent: dict[int, tuple[int, int]] = {}  # wire seq → (realtime ns, monotonic ns) at send
        self.answered: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.local_address = ""

    @classmethod
    def open(
        cls,
        address: str,
        *,
        privileged: bool | str,
        line: Line | None,
        payload_size: int,
        on_reply: OnReply,
        on_error: OnError,
    ) -> "LinuxEchoTransport":
        """Open, configure and connect the socket; start delivering replies on the running loop."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = open_socket(family, privileged, line)
        try:
            transport = cls(sock, address, payload_size, on_reply, on_error)
            transport._configure()
            sock.connect((address, 0))
            transport.local_address = sock.getsockname()[0]
            if not transport.raw:
                transport.ident = sock.getsockname()[1]  # the kernel's identifier for this ping socket
            transport._loop = asyncio.get_running_loop()
            transport._loop.add_reader(sock.fileno(), transport._readable)
        except BaseException:
            sock.close()
            raise
        return transport

    def _configure(self) -> None:
        sock = self.sock
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if self.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        else:
            sock.setsockopt(SOL_IPV6, IPV6_RECVERR, 1)
        if not self.raw:
            return
        # Raw sockets see all ICMP: let the kernel pass only echo replies (errors use the error queue).
        if self.family == socket.AF_INET:
            sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", ~(1 << ECHO_REPLY[self.family]) & 0xFFFFFFFF))
        else:
            blocked = [0xFFFFFFFF] * 8
            reply = ECHO_REPLY[self.family]
            blocked[reply >> 5] &= ~(1 << (reply & 31)) & 0xFFFFFFFF
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *blocked))

    def wire_seq(self, seq: int) -> int:
        """Return the 16-bit sequence number echo `seq` carries on the wire."""
        return (self.seq_base + seq) & 0xFFFF

    def send(self, seq: int) -> None:
        """Send echo `seq` now; raises OSError when the kernel refuses (no route, firewall...)."""
        wire = self.wire_seq(seq)
        header = struct.pack("!BBHHH", ECHO_REQUEST[self.family], 0, 0, self.ident if self.raw else 0, wire)
        packet = header + self.payload
        if self.raw and self.family == socket.AF_INET:
            packet = header[:2] + struct.pack("!H", checksum(packet)) + header[4:] + self.payload
        # Taken last, right before the system call: the closest user-space time to the packet leaving.
        self.sent[wire] = (time.time_ns(), time.monotonic_ns())
        self.sock.send(packet)

    def close(self) -> None:
        """Stop delivering and close the socket."""
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()

    def _readable(self) -> None:
        self._drain_errors()
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(self.bufsize, 256)
            except BlockingIOError:
                return
            except OSError as exc:
                # A pending ICMP error is also reported here once; its details were read from the error queue.
                if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNREFUSED, errno.EMSGSIZE):
                    self._drain_errors()
                    continue
                self.on_error(EchoError(None, f"receiving failed: {exc.strerror or exc}"))
                return
            received_mono = time.monotonic_ns()
            self._reply(data, ancdata, received_mono)

    def _reply(self, data: bytes, ancdata: list, received_mono: int) -> None:
        if self.raw and self.family == socket.AF_INET:
            if len(data) < 20 or checksum(data[(data[0] & 0x0F) * 4 :]) != 0:
                return
            data = data[(data[0] & 0x0F) * 4 :]
        if len(data) < 8:
            return
        kind, code, _sum, ident, wire = struct.unpack("!BBHHH", data[:8])
        if kind != ECHO_REPLY[self.family] or code != 0 or ident != self.ident:
            return
        if wire not in self.sent or wire in self.answered or data[8:] != self.payload:
            return  # another prober's reply, a duplicate, or a corrupted copy
        self.answered.add(wire)
        sent_real, sent_mono = self.sent[wire]
        rtt_mono = (received_mono - sent_mono) / 1e6
        rtt = rtt_mono
        kernel_ns = kernel_timestamp(ancdata)
        if kernel_ns is not None:
            rtt_kernel = (kernel_ns - sent_real) / 1e6
            # The kernel stamp precedes our wake-up; anything else means the wall clock stepped.
            if 0 <= rtt_kernel <= rtt_mono + 1.0:
                rtt = rtt_kernel
        self.on_reply((wire - self.seq_base) & 0xFFFF, rtt)

    def _drain_errors(self) -> None:
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(self.bufsize, 512, MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            error = self._parse_error(data, ancdata)
            if error is not None:
                self.on_error(error)

    def _parse_error(self, data: bytes, ancdata: list) -> EchoError | None:
        for level, kind, cdata in ancdata:
            if (level, kind) not in ((socket.IPPROTO_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)):
                continue
            if len(cdata) < 16:
                continue
            ee_errno, origin, icmp_type, icmp_code = struct.unpack("=IBBB", cdata[:7])
            seq = None
            # The error queue hands back the offending echo's ICMP header: match it like a reply.
            if len(data) >= 8:
                _t, _c, _s, ident, wire = struct.unpack("!BBHHH", data[:8])
                if wire in self.sent and (not self.raw or ident == self.ident):
                    seq = (wire - self.seq_base) & 0xFFFF
                elif self.raw:
                    return None  # another prober's echo
            if origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6):
                table = _ICMP4_ERRORS if origin == SO_EE_ORIGIN_ICMP else _ICMP6_ERRORS
                what = table.get((icmp_type, icmp_code), f"ICMP error type {icmp_type} code {icmp_code}")
                sender = offender(cdata)
                return EchoError(seq, f"{what} (reported by {sender})" if sender else what)
            return EchoError(seq, os.strerror(ee_errno) if ee_errno else "local error")
        return None


def kernel_timestamp(ancdata: list) -> int | None:
    """Return the kernel receive timestamp (ns, CLOCK_REALTIME) from recvmsg ancillary data, if present."""
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            if len(cdata) >= 16:
                sec, nsec = struct.unpack("=qq", cdata[:16])
            elif len(cdata) >= 8:
                sec, nsec = struct.unpack("=ii", cdata[:8])
            else:
                return None
            return sec * 1_000_000_000 + nsec
    return None


def offender(cdata: bytes) -> str | None:
    """Return the address of the host that sent an ICMP error (SO_EE_OFFENDER after sock_extended_err)."""
    tail = cdata[16:]
    if len(tail) < 8:
        return None
    family = struct.unpack("=H", tail[:2])[0]
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, tail[4:8])
    if family == socket.AF_INET6 and len(tail) >= 24:
        return socket.inet_ntop(socket.AF_INET6, tail[8:24])
    return None
