"""TLS probe: handshake with any host:port over a line and check the certificate it presents.

Reports connect and handshake times, the days left on the leaf certificate and how many certificates the server
sent; a certificate that does not verify is explained by probes.common.tlsinfo (expired, chain incomplete, untrusted
issuer, wrong name). STARTTLS services (SMTP 25/587, IMAP 143) have their own probes.
Doc: docs/probes/tls.md. Needs no privileges.
"""

from __future__ import annotations

import ssl
from typing import Literal

from pydantic import Field

from core.config.types import Host, HostName
from core.measurement import Measurement

from .base import ProbeContext, TargetConfig
from .common import tlsinfo
from .common.netio import classify, open_tcp

NAME = "tls"
# The fields it can emit (measurement `probe`): documented in docs/probes/tls.md, declared in core/catalogue.py.
FIELDS: tuple[str, ...] = (
    "up", "result_code", "duration_ms", "dns_ms", "connect_ms", "tls_ms", "tls_version", "cert_days_left",
    "cert_expiring", "chain_length",
)


class Config(TargetConfig):
    """A TLS target: `host`, `port`, optional `server_name` (SNI and name checked), `ca_file`, thresholds."""

    probe: Literal["tls"] = "tls"
    host: Host
    port: int = Field(default=443, ge=1, le=65535)
    server_name: HostName | None = None
    ca_file: str | None = Field(default=None, min_length=1)
    verify_tls: bool = True
    # The result stays ok below this; `cert_expiring` turns 1 so alerts can warn before it breaks.
    min_days_left: float = Field(default=14.0, ge=0)


def _cert_fields(config: Config, chain: list[bytes] | tuple[bytes, ...],
                 not_after: str | None = None) -> dict[str, float | None]:
    left = tlsinfo.days_left(chain[0], not_after=not_after) if chain else None
    return {
        "cert_days_left": left,
        "cert_expiring": None if left is None else float(left < config.min_days_left),
        "chain_length": float(len(chain)) if chain else None,
    }


async def probe(config: Config, ctx: ProbeContext) -> Measurement:
    """Handshake with host:port and report the phases and the certificate; explain any verification failure."""
    server_name = config.server_name or config.host.rstrip(".")
    try:
        context = await tlsinfo.client_context(config.ca_file, config.verify_tls)
        conn = await open_tcp(ctx, config.host, config.port, tls=context, server_hostname=server_name)
    except ssl.SSLCertVerificationError as exc:
        diagnosis = await tlsinfo.diagnose(ctx, exc, config.host, config.port, server_name)
        return ctx.failure(diagnosis.result, diagnosis.detail, _cert_fields(config, diagnosis.chain))
    except Exception as exc:  # noqa: BLE001 - every failure is data
        return ctx.failure(*classify(exc))
    try:
        ssl_object = conn.writer.get_extra_info("ssl_object")
        fields = {
            "dns_ms": conn.dns_ms,
            "connect_ms": conn.connect_ms,
            "tls_ms": conn.tls_ms,
            "tls_version": tlsinfo.tls_version(ssl_object),
            **_cert_fields(config, tlsinfo.sent_chain(ssl_object), tlsinfo.verified_not_after(ssl_object)),
        }
    finally:
        await conn.close()
    return ctx.success(fields)
