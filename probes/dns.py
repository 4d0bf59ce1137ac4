"""DNS probe: ask a resolver for one record over a line and check the answer code and records.

The query goes through probes.common.dnswire.exchange, which retransmits inside the timeout over the pinned line, so
one lost datagram costs a retransmission (counted in `retries`), not the probe. Doc: docs/probes/dns.md.
Needs no privileges.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from typing import Literal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.reversename
from pydantic import Field, field_validator, model_validator

from core.measurement import Measurement

from .base import ProbeContext, TargetConfig
from .common.dnswire import exchange, servers_for
from .common.netio import classify
from .common.sockets import family_of, line_socket

NAME = "dns"
# The fields it can emit (measurement `probe`): documented in docs/probes/dns.md, declared in core/catalogue.py.
FIELDS: tuple[str, ...] = ("up", "result_code", "duration_ms", "dns_ms", "retries", "rcode", "answers")

_LABEL = re.compile(r"^(\*|[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)$")
EDNS_PAYLOAD = 1232  # DNS flag day 2020: avoids IP fragmentation, which lossy lines make worse


class Config(TargetConfig):
    """A DNS target: `name` and record `type` asked of `resolver` (default: the line's or the system's)."""

    probe: Literal["dns"] = "dns"
    query_name: str = Field(min_length=1, max_length=253)  # `name` is the target's own slug
    type: str = "A"
    resolver: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    port: int = Field(default=53, ge=1, le=65535)
    expect_answers: list[str] = Field(default_factory=list)
    expect_rcode: str = "NOERROR"
    recursion: bool = True

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        try:
            rdtype = dns.rdatatype.from_text(value.upper())
        except dns.exception.DNSException:
            raise ValueError(f"{value!r} is not a DNS record type (A, AAAA, MX, TXT, CNAME, NS, SOA, PTR...)") from None
        if dns.rdatatype.is_metatype(rdtype):
            raise ValueError(f"{value!r} is a meta type, not a record type")
        return dns.rdatatype.to_text(rdtype)

    @field_validator("expect_rcode")
    @classmethod
    def _known_rcode(cls, value: str) -> str:
        try:
            return dns.rcode.to_text(dns.rcode.from_text(value.upper()))
        except dns.exception.DNSException:
            raise ValueError(f"{value!r} is not a DNS rcode (NOERROR, NXDOMAIN, SERVFAIL, REFUSED...)") from None

    @field_validator("query_name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if _is_address(value):
            return value  # asked as its reverse name (PTR only, see _address_needs_ptr)
        try:
            text = dns.name.from_unicode(value).to_text() if not value.isascii() else value
        except dns.exception.DNSException as exc:
            raise ValueError(f"{value!r} is not a valid DNS name ({exc})") from None
        labels = text.rstrip(".").split(".")
        if len(text.rstrip(".")) > 253 or not all(_LABEL.match(label) for label in labels):
            raise ValueError(f"{value!r} is not a valid DNS name (letters, digits, '-', '_' in dot-separated labels)")
        return text

    @model_validator(mode="after")
    def _address_needs_ptr(self) -> "Config":
        if self.type != "PTR" and _is_address(self.query_name):
            raise ValueError(f"query_name {self.query_name} is an address: ask type PTR, or give a name")
        return self

    def question(self) -> dns.name.Name:
        """Return the name to ask: a PTR target given as an address becomes its in-addr.arpa/ip6.arpa name."""
        if _is_address(self.query_name):
            return dns.reversename.from_address(self.query_name)
        return dns.name.from_text(self.query_name)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def normalise(text: str, rdtype: str = "A") -> str:
    """Return a value in comparable form: addresses canonical, names lower-case without the final dot."""
    text = text.strip()
    if rdtype == "TXT":  # TXT content is case-sensitive (DKIM keys): only the quotes go
        return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    return " ".join(word.rstrip(".") for word in text.lower().split())


def _values(rdata) -> set[str]:
    """Return the forms an expected value may take for one record (MX/SRV also match by their host alone)."""
    if rdata.rdtype == dns.rdatatype.TXT:
        return {b"".join(rdata.strings).decode("utf-8", "replace")}
    values = {normalise(rdata.to_text())}
    for attr in ("exchange", "target"):
        host = getattr(rdata, attr, None)
        if isinstance(host, dns.name.Name):
            values.add(normalise(host.to_text()))
    return values


def _note_local_address(ctx: ProbeContext, server: str, port: int) -> None:
    """Tell an unpinned probe which local address the kernel picks towards the resolver (no packet is sent)."""
    if ctx.line is not None:
        return
    try:
        sock = line_socket(family_of(server), socket.SOCK_DGRAM, None)
        with sock:
            sock.connect((server, port))
            ctx.note_local_address(sock.getsockname()[0])
    except OSError:
        pass


async def probe(config: Config, ctx: ProbeContext) -> Measurement:
    """Ask the resolver once (retransmitting on loss) and check the rcode and the expected answers."""
    query = dns.message.make_query(config.question(), config.type, use_edns=0, payload=EDNS_PAYLOAD)
    if not config.recursion:
        query.flags &= ~dns.flags.RD
    servers = (str(config.resolver),) if config.resolver is not None else servers_for(ctx)
    sent: list[str] = []
    started = time.perf_counter()
    try:
        response, server = await exchange(ctx, query, servers, port=config.port, sent=sent)
    except Exception as exc:  # noqa: BLE001 - every failure is data
        result, detail = classify(exc)
        if result == "timeout":
            detail = f"DNS server {', '.join(servers)} did not answer in time ({len(sent)} queries sent)"
        return ctx.failure(result, detail, {"retries": max(0, len(sent) - 1) if sent else None})
    fields: dict[str, float | None] = {
        "dns_ms": (time.perf_counter() - started) * 1000.0,
        "retries": len(sent) - 1,
        "rcode": response.rcode(),
    }
    _note_local_address(ctx, server, config.port)
    return _check(config, ctx, response, server, fields)


def _check(config: Config, ctx: ProbeContext, response: dns.message.Message, server: str, fields: dict) -> Measurement:
    """Turn the response into the Measurement: rcode first, then the records."""
    wanted = dns.rdatatype.from_text(config.type)
    records = [rd for rrset in response.answer for rd in rrset]
    fields["answers"] = sum(1 for rd in records if rd.rdtype == wanted)
    rcode = dns.rcode.to_text(response.rcode())
    asked = f"{config.type} {config.query_name}"
    if rcode != config.expect_rcode:
        if rcode == "NOERROR":
            return ctx.failure("answer_mismatch", f"{server} answered {asked} (NOERROR), expected {config.expect_rcode}", fields)
        return ctx.failure("dns_error", f"{server} answered {rcode} for {asked}", fields)
    if rcode != "NOERROR":
        return ctx.success(fields)  # e.g. NXDOMAIN expected for a name that must not exist
    if not fields["answers"]:
        return ctx.failure("answer_mismatch", f"{server} has no {asked} record", fields)
    got = set().union(*(_values(rd) for rd in records))
    missing = [value for value in config.expect_answers if normalise(value, config.type) not in got]
    if missing:
        shown = ", ".join(sorted(normalise(rd.to_text()) for rd in records))[:200]
        return ctx.failure("answer_mismatch", f"{asked} lacks {', '.join(missing)} (got {shown})", fields)
    return ctx.success(fields)
