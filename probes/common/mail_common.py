"""What the smtp and imap probes share: their config keys, the TLS context, the password, a line-based session.

A `MailSession` is one connection opened through probes.common.netio.open_tcp (so line pinning and the dns/connect/TLS
timings apply), read line by line, that can be upgraded with STARTTLS. It never waits past the probe's budget:
the probes wrap their dialogue in `asyncio.timeout(ctx.remaining())`.

When the certificate is refused, a second session without verification (same line, same dialogue up to TLS)
fetches the chain the server really sends, so probes.common.tlsinfo.explain can tell an expired certificate from a
missing intermediate or an untrusted CA, and `cert_days_left` is still reported.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from pathlib import Path
from typing import ClassVar, Literal, NoReturn

from pydantic import Field, FilePath, field_validator, model_validator

from core.config.types import Host, HostName
from core.measurement import Measurement

from ..base import ProbeContext, TargetConfig
from .netio import TcpConnection, classify, open_tcp
from .sockets import ProbeFailure
from .tlsinfo import DIAGNOSE_MAX_S, client_context, days_left, explain, sent_chain, verified_not_after

TlsMode = Literal["none", "starttls", "implicit"]


class MailConfig(TargetConfig):
    """Keys common to the mail probes: where, how to secure the connection, and optional credentials."""

    DEFAULT_PORTS: ClassVar[dict[str, int]] = {}

    host: Host
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: TlsMode = "starttls"
    ca_file: FilePath | None = None  # PEM bundle to trust instead of the system's (a province's own CA)
    verify: bool = True  # False: still handshake and report cert_days_left, but accept any certificate
    server_name: HostName | None = None  # SNI/verify name if host is an IP
    expect_banner: str | None = None  # a regex the greeting must match
    username: str | None = Field(default=None, min_length=1)
    password: str | None = None
    password_file: FilePath | None = None  # first line is the password: keeps secrets out of the YAML

    @field_validator("expect_banner")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"expect_banner is not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _credentials(self) -> "MailConfig":
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.username is None) != (self.password is None and self.password_file is None):
            raise ValueError("username needs password or password_file (and they need username)")
        return self

    @property
    def effective_port(self) -> int:
        """Return `port`, or the usual port of the protocol for the `tls` mode."""
        return self.port or self.DEFAULT_PORTS[self.tls]


async def read_password(config: MailConfig) -> str | None:
    """Return the password from the config or the first line of `password_file` (read off the event loop)."""
    if config.password_file is None:
        return config.password

    def first_line() -> str:
        return Path(config.password_file).read_text(encoding="utf-8").splitlines()[0] if config.password_file else ""

    try:
        return await asyncio.to_thread(first_line)
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        raise ProbeFailure("error", f"cannot read password_file {config.password_file}: {exc}") from exc


class MailSession:
    """A line-oriented connection to a mail server; `fields` collects the phase timings as they happen.

    Subclasses implement `open_dialogue()` (the greeting and everything up to and including STARTTLS) and
    `dialogue(password)` (all of it, then login and the rest); `run()` is the probe.
    """

    def __init__(self, config: MailConfig, ctx: ProbeContext) -> None:
        self.config = config
        self.ctx = ctx
        self.conn: TcpConnection | None = None
        self.tls_context: ssl.SSLContext | None = None
        self.fields: dict[str, float | None] = {}
        self.server_name = config.server_name or config.host

    async def open_dialogue(self) -> None:
        """Read the greeting and negotiate up to STARTTLS (protocol-specific)."""
        raise NotImplementedError

    async def dialogue(self, password: str | None) -> None:
        """Run the whole conversation before the goodbye (protocol-specific)."""
        raise NotImplementedError

    def failure_fields(self) -> dict[str, float | None]:
        """Return the fields to report on failure (what was measured so far)."""
        return self.fields

    async def run(self) -> Measurement:
        """Connect, converse within the probe's budget, always say goodbye; return the Measurement, never raise."""
        try:
            password = await read_password(self.config)
            await self.connect()
            async with asyncio.timeout(self.ctx.remaining()):
                await self.dialogue(password)
        except Exception as exc:  # noqa: BLE001 - every failure is data
            return self.ctx.failure(*classify(exc), self.failure_fields())
        finally:
            await self.close()
        return self.ctx.success(self.fields)

    async def _context(self) -> ssl.SSLContext:
        ca_file = str(self.config.ca_file) if self.config.ca_file else None
        return await client_context(ca_file, self.config.verify)

    async def connect(self) -> None:
        """Open the connection (TLS at once when `tls: implicit`); record dns_ms, connect_ms, tls_ms."""
        implicit = self.config.tls == "implicit"
        # Built before connecting (~35 ms the first time, in a thread) so that it never counts in tls_ms.
        self.tls_context = await self._context() if self.config.tls != "none" else None
        try:
            self.conn = await open_tcp(
                self.ctx, self.config.host, self.config.effective_port,
                tls=self.tls_context if implicit else None, server_hostname=self.server_name,
            )
        except ssl.SSLCertVerificationError as exc:
            await self._explain(exc)
        self.fields.update(dns_ms=self.conn.dns_ms, connect_ms=self.conn.connect_ms, tls_ms=self.conn.tls_ms)
        if implicit:
            self._note_certificate()

    async def start_tls(self, started: float) -> None:
        """Upgrade the connection after the server said yes to STARTTLS; record tls_ms and cert_days_left.

        `started` is when the STARTTLS command was sent (perf_counter): tls_ms covers the command and the handshake.
        """
        assert self.conn is not None and self.tls_context is not None
        try:
            await self.conn.writer.start_tls(self.tls_context, server_hostname=self.server_name)
        except ssl.SSLCertVerificationError as exc:
            await self._explain(exc)
        self.fields["tls_ms"] = (time.perf_counter() - started) * 1000.0
        self._note_certificate()

    def _note_certificate(self) -> None:
        assert self.conn is not None
        ssl_object = self.conn.writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        self.fields["cert_days_left"] = days_left(der, not_after=verified_not_after(ssl_object))

    async def _explain(self, exc: ssl.SSLCertVerificationError) -> NoReturn:
        """Raise the reason a certificate was refused, from the chain a second, unverified session receives."""
        chain: list[bytes] = []
        budget = min(self.ctx.remaining(), DIAGNOSE_MAX_S)
        if self.config.verify and budget > 0.05:
            probe = type(self)(self.config.model_copy(update={"verify": False}), self.ctx)
            try:
                async with asyncio.timeout(budget):
                    await probe.connect()
                    if self.config.tls == "starttls":
                        await probe.open_dialogue()
                    assert probe.conn is not None  # connect() set it or raised
                    chain = sent_chain(probe.conn.writer.get_extra_info("ssl_object"))
            except Exception:  # noqa: BLE001 - the diagnosis is best effort; the failure stands either way
                chain = []
            finally:
                await probe.close(wait_s=0.5)
        result, detail = explain(exc, chain, self.server_name)
        self.fields["cert_days_left"] = days_left(chain[0]) if chain else None
        raise ProbeFailure(result, detail) from exc

    async def readline(self) -> str:
        """Return the next line without its CRLF; EOFError when the server hangs up."""
        assert self.conn is not None
        raw = await self.conn.reader.readline()
        if not raw.endswith(b"\n"):
            raise EOFError
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    def send(self, line: str) -> None:
        """Write one command line (CRLF added)."""
        assert self.conn is not None
        self.conn.writer.write(line.encode("utf-8") + b"\r\n")

    def elapsed_since(self, started: float) -> float:
        """Return milliseconds since `started` (a perf_counter value)."""
        return (time.perf_counter() - started) * 1000.0

    def goodbye(self) -> str:
        """Return the command that ends the session (QUIT, LOGOUT)."""
        raise NotImplementedError

    async def close(self, wait_s: float = 1.0) -> None:
        """Say goodbye (QUIT / LOGOUT) and wait briefly for the answer, then close; never raises."""
        if self.conn is None:
            return
        try:
            if not self.conn.writer.is_closing():
                self.send(self.goodbye())
                budget = min(wait_s, self.ctx.remaining())
                if budget > 0:
                    async with asyncio.timeout(budget):
                        await self.conn.writer.drain()
                        # Until the server hangs up: a greeting still unread would otherwise pass for the
                        # reply, and closing before the server read our goodbye makes it log an aborted session.
                        while await self.conn.reader.read(4096):
                            pass
        except Exception:  # noqa: BLE001 - saying goodbye must never fail a probe
            pass
        await self.conn.close()
