"""IMAP probe: greeting, CAPABILITY, STARTTLS or implicit TLS, optional LOGIN, then LOGOUT.

Speaks the small, literal-free part of IMAP4rev1 it needs (tagged commands) over probes.common.netio.open_tcp, so line
pinning and phase timings apply. Opens no mailbox. Doc: docs/probes/imap.md. Needs no privileges.
"""

from __future__ import annotations

import re
import time
from typing import ClassVar, Literal

from core.measurement import Measurement

from .base import ProbeContext
from .common.mail_common import MailConfig, MailSession, TlsMode
from .common.sockets import ProbeFailure

NAME = "imap"
# The fields it can emit (measurement `probe`): documented in docs/probes/imap.md, declared in core/catalogue.py.
FIELDS: tuple[str, ...] = (
    "up", "result_code", "duration_ms", "dns_ms", "connect_ms", "tls_ms", "banner_ms", "login_ms", "cert_days_left",
)

_TAGGED = re.compile(r"^(\S+) (OK|NO|BAD)\b ?(.*)$", re.IGNORECASE)


class Config(MailConfig):
    """An IMAP target: host, port (993 implicit TLS, 143 STARTTLS or plain), optional LOGIN."""

    DEFAULT_PORTS: ClassVar[dict[str, int]] = {"none": 143, "starttls": 143, "implicit": 993}
    probe: Literal["imap"] = "imap"
    tls: TlsMode = "implicit"


class ImapSession(MailSession):
    """A MailSession that sends tagged commands and reads until their tagged completion."""

    counter = 0
    capability_set: frozenset[str] | set[str] = frozenset()

    def goodbye(self) -> str:
        """Return a tagged LOGOUT."""
        return f"{self.next_tag()} LOGOUT"

    async def dialogue(self, password: str | None) -> None:
        """Greet and secure, then LOGIN when configured; record its time."""
        await self.open_dialogue()
        if self.config.username is None or password is None:
            return
        if "LOGINDISABLED" in self.capability_set:
            raise ProbeFailure("auth_failed", "the server refuses LOGIN on this connection (LOGINDISABLED: use tls)")
        started = time.perf_counter()
        status, text, _ = await self.command(f"LOGIN {quoted(self.config.username)} {quoted(password)}")
        if status != "OK":
            raise ProbeFailure("auth_failed", f"LOGIN answered {status} {text}".rstrip())
        self.fields["login_ms"] = self.elapsed_since(started)

    async def open_dialogue(self) -> None:
        """Read the greeting, ask CAPABILITY, and STARTTLS when asked (then CAPABILITY again)."""
        started = time.perf_counter()
        greeting = await self.readline()
        self.fields["banner_ms"] = self.elapsed_since(started)
        if not greeting.startswith("* "):
            raise ProbeFailure("protocol_error", f"not an IMAP greeting: {greeting[:80]!r}")
        if not greeting.upper().startswith(("* OK", "* PREAUTH")):
            raise ProbeFailure("banner_mismatch", f"the server greets with {greeting[:120]!r} instead of * OK")
        expect = self.config.expect_banner
        if expect is not None and not re.search(expect, greeting):
            raise ProbeFailure("banner_mismatch", f"banner {greeting[:120]!r} does not match {expect!r}")
        self.capability_set = await self.capabilities()
        if self.config.tls == "starttls":
            if "STARTTLS" not in self.capability_set:
                raise ProbeFailure("tls_error", "the server does not offer STARTTLS")
            started = time.perf_counter()
            status, text, _ = await self.command("STARTTLS")
            if status != "OK":
                raise ProbeFailure("tls_error", f"STARTTLS answered {status} {text}".rstrip())
            await self.start_tls(started)
            self.capability_set = await self.capabilities()  # RFC 9051: capabilities may change after TLS

    def next_tag(self) -> str:
        """Return a fresh command tag (a1, a2, ...)."""
        self.counter += 1
        return f"a{self.counter}"

    async def command(self, line: str) -> tuple[str, str, list[str]]:
        """Send a tagged command; return (OK/NO/BAD, completion text, untagged lines)."""
        tag = self.next_tag()
        self.send(f"{tag} {line}")
        untagged: list[str] = []
        while True:
            reply = await self.readline()
            if reply.startswith("* "):
                untagged.append(reply[2:])
                continue
            match = _TAGGED.match(reply)
            if not match or match.group(1) != tag:
                raise ProbeFailure("protocol_error", f"unexpected IMAP line after {line.split()[0]}: {reply[:80]!r}")
            return match.group(2).upper(), match.group(3), untagged

    async def capabilities(self) -> set[str]:
        """Ask CAPABILITY; return the capabilities, upper-case."""
        status, text, untagged = await self.command("CAPABILITY")
        if status != "OK":
            raise ProbeFailure("protocol_error", f"CAPABILITY answered {status} {text}".rstrip())
        return {word.upper() for line in untagged if line.upper().startswith("CAPABILITY ") for word in line.split()[1:]}


def quoted(value: str) -> str:
    """Return `value` as an IMAP quoted string (no literals: CR, LF and NUL cannot be sent this way)."""
    if any(ch in value for ch in "\r\n\0"):
        raise ProbeFailure("error", "username or password contains a line break or NUL: not supported")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def probe(config: Config, ctx: ProbeContext) -> Measurement:
    """Greet, secure, optionally log in; always LOGOUT."""
    return await ImapSession(config, ctx).run()
