"""What the ICMP probe needs from an echo transport, and what a transport reports: shared by probes/icmp.py (the
platform-independent part) and each platform's transport (probes/common/icmp_socket.py on Linux).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True, frozen=True)
class EchoError:
    """The network (or this PC) said echo `seq` cannot arrive (`seq` None when unknown); `detail` for people."""

    seq: int | None
    detail: str


class EchoTransport(Protocol):
    """Sends echo requests to one address; reports replies (seq, rtt_ms) and errors through callbacks.

    Linux: probes.common.icmp_socket.LinuxEchoTransport. Windows (to write): IcmpSendEcho2/Icmp6SendEcho2, see the doc.
    """

    local_address: str

    def send(self, seq: int) -> None:
        """Send echo number `seq` (0-based) now; raise OSError when the OS refuses."""

    def close(self) -> None:
        """Release the socket or handle."""


__all__ = ["EchoError", "EchoTransport"]
