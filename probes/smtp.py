"""SMTP probe: greeting, EHLO, STARTTLS or implicit TLS, optional AUTH, optionally one test mail, then QUIT.

Speaks the small part of SMTP it needs over probes.common.netio.open_tcp, so line pinning and phase timings apply.
Sends no mail unless `send_test_mail` is set. Doc: docs/probes/smtp.md. Needs no privileges.
"""

from __future__ import annotations

import base64
import email.utils
import re
import socket
import time
from typing import ClassVar, Literal

from pydantic import Field

from core.config.types import StrictModel
from core.measurement import Measurement

from .base import ProbeContext
from .common.mail_common import MailConfig, MailSession
from .common.sockets import ProbeFailure

NAME = "smtp"
# The fields it can emit (measurement `probe`): documented in docs/probes/smtp.md, declared in core/catalogue.py.
FIELDS: tuple[str, ...] = (
    "up", "result_code", "duration_ms", "dns_ms", "connect_ms", "tls_ms", "banner_ms", "auth_ms", "send_ms",
    "status_code", "cert_days_left",
)

_ADDRESS = r"^[^\s<>@]+@[^\s<>@]+$"
_REPLY = re.compile(r"^(\d{3})([ -]?)(.*)$")


class MailEnvelope(StrictModel):
    """Envelope of the one test mail to send (it is delivered: use a mailbox made for it)."""

    sender: str = Field(alias="from", pattern=_ADDRESS)
    to: str = Field(pattern=_ADDRESS)


class Config(MailConfig):
    """An SMTP target: host, port (25/587 STARTTLS, 465 implicit TLS), optional AUTH and test mail."""

    DEFAULT_PORTS: ClassVar[dict[str, int]] = {"none": 25, "starttls": 587, "implicit": 465}
    probe: Literal["smtp"] = "smtp"
    helo_name: str | None = Field(default=None, pattern=r"^([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}$|^\[[0-9A-Fa-f:.]+\]$")
    send_test_mail: MailEnvelope | None = None


class SmtpSession(MailSession):
    """A MailSession that reads SMTP replies and remembers the last reply code."""

    config: Config  # always this module's Config (probe() below); narrows MailSession.config
    last_code: int | None = None
    extensions: frozenset[str] | set[str] = frozenset()

    def goodbye(self) -> str:
        """Return QUIT."""
        return "QUIT"

    def failure_fields(self) -> dict[str, float | None]:
        """Return what was measured, plus the last reply code."""
        return {**self.fields, "status_code": self.last_code}

    async def dialogue(self, password: str | None) -> None:
        """Greet and secure, then AUTH and the test mail when configured; record their times."""
        await self.open_dialogue()
        if self.config.username is not None and password is not None:
            started = time.perf_counter()
            await self.auth(self.extensions, self.config.username, password)
            self.fields["auth_ms"] = self.elapsed_since(started)
        if self.config.send_test_mail is not None:
            started = time.perf_counter()
            await self.send_mail(self.config.send_test_mail, self.helo)
            self.fields["send_ms"] = self.elapsed_since(started)

    @property
    def helo(self) -> str:
        """The name we greet with."""
        return self.config.helo_name or socket.gethostname()

    async def open_dialogue(self) -> None:
        """Read the greeting, EHLO, and STARTTLS when asked (then EHLO again)."""
        started = time.perf_counter()
        code, text = await self.reply()
        self.fields["banner_ms"] = self.elapsed_since(started)
        banner = f"{code} {text.splitlines()[0] if text else ''}".rstrip()
        if code != 220:
            raise ProbeFailure("banner_mismatch", f"the server greets with {banner[:120]!r} instead of 220")
        expect = self.config.expect_banner
        if expect is not None and not re.search(expect, banner):
            raise ProbeFailure("banner_mismatch", f"banner {banner[:120]!r} does not match {expect!r}")
        self.extensions = await self.ehlo(self.helo)
        if self.config.tls == "starttls":
            if "STARTTLS" not in self.extensions:
                raise ProbeFailure("tls_error", "the server does not offer STARTTLS")
            started = time.perf_counter()
            await self.command("STARTTLS", (220,), "tls_error", "STARTTLS")
            await self.start_tls(started)
            self.extensions = await self.ehlo(self.helo)  # RFC 3207: forget what was said before TLS

    async def reply(self) -> tuple[int, str]:
        """Return (code, text) of the next (possibly multi-line) reply; text lines are joined by newlines."""
        lines = []
        while True:
            line = await self.readline()
            match = _REPLY.match(line)
            if not match:
                raise ProbeFailure("protocol_error", f"not an SMTP reply: {line[:80]!r}")
            lines.append(match.group(3))
            if match.group(2) != "-":
                self.last_code = int(match.group(1))
                return self.last_code, "\n".join(lines)

    async def command(self, line: str, ok: tuple[int, ...], result: str, what: str) -> str:
        """Send `line`; return the reply text when its code is in `ok`, else fail with `result`."""
        self.send(line)
        code, text = await self.reply()
        if code not in ok:
            raise ProbeFailure(result, f"{what}: the server answered {code} {text.splitlines()[0] if text else ''}".rstrip())
        return text

    async def ehlo(self, name: str) -> set[str]:
        """Send EHLO; return the extensions offered, upper-case (e.g. 'STARTTLS', 'AUTH PLAIN LOGIN')."""
        text = await self.command(f"EHLO {name}", (250,), "protocol_error", "EHLO")
        return {line.strip().upper() for line in text.splitlines()[1:]}

    async def auth(self, extensions: frozenset[str] | set[str], username: str, password: str) -> None:
        """Log in with AUTH PLAIN (or LOGIN when that is all the server offers)."""
        mechanisms = set().union(*(set(e[5:].split()) for e in extensions if e.startswith(("AUTH ", "AUTH="))))
        if not mechanisms:
            raise ProbeFailure("auth_failed", "the server offers no AUTH on this connection (some offer it only after STARTTLS)")
        if "PLAIN" in mechanisms:
            token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
            await self.command(f"AUTH PLAIN {token}", (235,), "auth_failed", "AUTH PLAIN")
        elif "LOGIN" in mechanisms:
            await self.command("AUTH LOGIN", (334,), "auth_failed", "AUTH LOGIN")
            await self.command(base64.b64encode(username.encode()).decode(), (334,), "auth_failed", "AUTH LOGIN user")
            await self.command(base64.b64encode(password.encode()).decode(), (235,), "auth_failed", "AUTH LOGIN")
        else:
            raise ProbeFailure("auth_failed", f"no mechanism in common: the server offers {' '.join(sorted(mechanisms))}")

    async def send_mail(self, mail: MailEnvelope, helo: str) -> None:
        """Send one short test mail (MAIL FROM, RCPT TO, DATA)."""
        await self.command(f"MAIL FROM:<{mail.sender}>", (250,), "protocol_error", "MAIL FROM")
        await self.command(f"RCPT TO:<{mail.to}>", (250, 251), "protocol_error", "RCPT TO")
        await self.command("DATA", (354,), "protocol_error", "DATA")
        headers = [
            f"From: <{mail.sender}>",
            f"To: <{mail.to}>",
            "Subject: commune-monitor test mail",
            f"Date: {email.utils.formatdate(localtime=True)}",
            f"Message-ID: {email.utils.make_msgid(domain=helo.strip('[]'))}",
        ]
        for line in [*headers, "", "Test mail sent by commune-monitor's smtp probe. It can be deleted."]:
            self.send(line)
        await self.command(".", (250,), "protocol_error", "end of DATA")


async def probe(config: Config, ctx: ProbeContext) -> Measurement:
    """Greet, secure, authenticate and optionally send a test mail; always QUIT."""
    return await SmtpSession(config, ctx).run()
