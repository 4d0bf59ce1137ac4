"""Certificate helpers shared by the http, tls, smtp and imap probes: contexts, days left, and why a chain fails.

- `client_context(ca_file, verify)`: a cached client SSLContext (building one reads the system CA store, ~35 ms
  of blocking work, so it is built once in a thread and reused). `ca_file` is trusted IN ADDITION to the system CAs.
- `days_left(der, not_after=...)`, `sent_chain(ssl_object)`: the leaf's remaining validity, the certificates the
  server sent (public `get_unverified_chain()` from Python 3.13, the private `_sslobj` one on 3.11/3.12).
  `cryptography` (~10 MB) is imported only to parse certificates: a verified handshake gives `notAfter` through
  ssl (`verified_not_after`), so an agent whose certificates verify never loads it; the diagnosis and the
  `verify: false` path do.
- `diagnose(ctx, exc, host, port, server_name)`: after a verification failure, a second handshake WITHOUT
  verification fetches the chain the server really sends, and `explain()` turns it into a reason:
  expired first (renewing fixes every client), then wrong name, self-signed, untrusted root, and for "unable to
  get local issuer certificate" (OpenSSL code 20): a server that sends only its leaf (or stops at a non-CA cert)
  whose certificate names a caIssuers (AIA) URL is `cert_chain_incomplete` (the intermediate is missing, browsers
  fetch it, other clients fail); a chain that ends at a CA whose issuer is not trusted, or a lone leaf without AIA
  (signed directly by e.g. the province's own root), is `tls_error` "issuer X is not trusted".
- `ObservedContext` + `HANDSHAKE_OBSERVER`: lets a caller time the TLS handshake of connections it does not open
  itself (aiohttp): the context var's observer hears when the handshake starts and when it succeeds.
"""

from __future__ import annotations

import _ssl
import asyncio
import contextvars
import datetime as dt
import os
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

if TYPE_CHECKING:
    from cryptography import x509

from ..base import ProbeContext
from .netio import classify_verify_error, open_tcp
from .sockets import ProbeFailure

# The second (diagnostic) handshake gets at most this long; the probe's own budget still applies.
DIAGNOSE_MAX_S = 3.0
# OpenSSL X509_V_ERR_* codes we explain ourselves.
NOT_YET_VALID, EXPIRED, SELF_SIGNED_LEAF, SELF_SIGNED_IN_CHAIN, NO_LOCAL_ISSUER, NO_ISSUER_CERT = 9, 10, 18, 19, 20, 2
UNABLE_TO_VERIFY_LEAF, HOSTNAME_MISMATCH = 21, 62


class HandshakeObserver(Protocol):
    """Hears about a TLS handshake made through an `ObservedContext`."""

    def tls_started(self) -> None:
        """The TCP connection is up and the handshake begins."""

    def tls_done(self, ssl_object: ssl.SSLObject) -> None:
        """The handshake (and certificate verification) succeeded."""


HANDSHAKE_OBSERVER: contextvars.ContextVar[HandshakeObserver | None] = contextvars.ContextVar(
    "handshake_observer", default=None
)


class _ObservedSSLObject(ssl.SSLObject):
    """An SSLObject that tells its observer when its handshake succeeds."""

    _observer: HandshakeObserver | None = None

    def do_handshake(self) -> None:
        super().do_handshake()  # raises SSLWantReadError until the server's flight arrives
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.tls_done(self)


class ObservedContext(ssl.SSLContext):
    """A client context whose connections report handshake start/end to the current `HANDSHAKE_OBSERVER`."""

    sslobject_class = _ObservedSSLObject

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:  # asyncio calls this once TCP is connected
        obj = super().wrap_bio(*args, **kwargs)
        observer = HANDSHAKE_OBSERVER.get()
        if observer is not None:
            obj._observer = observer  # type: ignore[attr-defined]
            observer.tls_started()
        return obj


_CONTEXTS: dict[tuple[Any, ...], ssl.SSLContext] = {}


def _build_context(ca_file: str | None, verify: bool, observed: bool) -> ssl.SSLContext:
    context = (ObservedContext if observed else ssl.SSLContext)(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        context.load_default_certs()
        if ca_file:
            context.load_verify_locations(cafile=ca_file)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        # Without verification we only want to see the server: accept what old province servers still speak.
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


async def client_context(ca_file: str | None = None, verify: bool = True, observed: bool = False) -> ssl.SSLContext:
    """Return a (cached) client context trusting the system CAs plus `ca_file`; ProbeFailure if it is unreadable."""
    try:
        stamp = os.stat(ca_file).st_mtime_ns if ca_file and verify else None
    except OSError as exc:
        raise ProbeFailure("error", f"ca_file {ca_file} cannot be read: {exc.strerror}") from exc
    key = (ca_file if verify else None, stamp, verify, observed)
    context = _CONTEXTS.get(key)
    if context is None:
        try:
            context = await asyncio.to_thread(_build_context, ca_file, verify, observed)
        except (OSError, ssl.SSLError) as exc:
            raise ProbeFailure("error", f"ca_file {ca_file} is not a PEM certificate bundle: {exc}") from exc
        _CONTEXTS[key] = context
    return context


def load(der: bytes) -> x509.Certificate | None:
    """Parse a DER certificate (None if it is not one)."""
    from cryptography import x509  # only when a certificate must be parsed: see the module docstring

    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


def verified_not_after(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """Return the verified leaf's notAfter as ssl gives it ("Jun  1 12:00:00 2030 GMT"); None unverified."""
    info = ssl_object.getpeercert() if ssl_object is not None else None  # {} when the chain was not verified
    not_after = info.get("notAfter") if info else None
    return not_after if isinstance(not_after, str) else None


def days_left(der: bytes | None, now: dt.datetime | None = None, not_after: str | None = None) -> float | None:
    """Return days until the certificate's notAfter (negative once expired), or None.

    `not_after` (from `verified_not_after`) spares parsing `der`, and importing cryptography.
    """
    if not_after:
        try:
            now_s = now.timestamp() if now else time.time()
            return round((ssl.cert_time_to_seconds(not_after) - now_s) / 86400.0, 3)
        except ValueError:
            pass  # an unexpected format: parse the certificate instead
    cert = load(der) if der else None
    if cert is None:
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    return round((cert.not_valid_after_utc - now).total_seconds() / 86400.0, 3)


def sent_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> list[bytes]:
    """Return the certificates the server sent, leaf first, as DER (works on Python 3.11 to 3.13+)."""
    if ssl_object is None:
        return []
    getter = getattr(ssl_object, "get_unverified_chain", None)  # public since 3.13
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        try:
            chain = getter() or []
        except (ssl.SSLError, ValueError):
            chain = []
        if chain:
            return [c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER) for c in chain]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def tls_version(ssl_object: ssl.SSLObject | None) -> float | None:
    """Return the negotiated TLS version as a number (1.2, 1.3), or None."""
    version = ssl_object.version() if ssl_object is not None else None
    numbers = {"TLSv1": 1.0, "TLSv1.1": 1.1, "TLSv1.2": 1.2, "TLSv1.3": 1.3}
    return numbers.get(version or "")


def name_of(name: x509.Name) -> str:
    """Return a certificate name for people: its CN, else the whole RFC 4514 string."""
    from cryptography.x509.oid import NameOID

    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else name.rfc4514_string()


def is_ca(cert: x509.Certificate) -> bool:
    """Whether the certificate may issue others (basicConstraints CA:TRUE)."""
    from cryptography import x509

    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def aia_issuer_urls(cert: x509.Certificate) -> list[str]:
    """Return the caIssuers URLs (where the issuer's certificate can be downloaded)."""
    from cryptography import x509
    from cryptography.x509.oid import AuthorityInformationAccessOID

    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [d.access_location.value for d in aia if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS]


def dns_names(cert: x509.Certificate) -> list[str]:
    """Return the names (DNS and IP) the certificate is valid for."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [name_of(cert.subject)]
    return [str(v) for v in san.get_values_for_type(x509.DNSName) + san.get_values_for_type(x509.IPAddress)]


def issued_path(certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Follow issuer → subject links from the leaf through the certificates the server sent."""
    if not certs:
        return []
    path, rest = [certs[0]], list(certs[1:])
    while path[-1].issuer != path[-1].subject:
        issuer = next((c for c in rest if c.subject == path[-1].issuer), None)
        if issuer is None:
            break
        path.append(issuer)
        rest.remove(issuer)
    return path


def _date(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _lifetime_problem(path: Sequence[x509.Certificate], server_name: str, now: dt.datetime) -> str | None:
    for index, cert in enumerate(path):
        what = f"the certificate of {server_name}" if index == 0 else f"the intermediate {name_of(cert.subject)!r}"
        if cert.not_valid_after_utc < now:
            ago = (now - cert.not_valid_after_utc).days
            days = "today" if ago == 0 else f"{ago} day ago" if ago == 1 else f"{ago} days ago"
            return f"{what} expired on {_date(cert.not_valid_after_utc)} ({days}): renew it"
        if cert.not_valid_before_utc > now:
            return (f"{what} is not valid before {_date(cert.not_valid_before_utc)}: "
                    "check this PC's clock, or the certificate was issued with a future date")
    return None


def _trust_problem(path: Sequence[x509.Certificate]) -> tuple[str, str]:
    """Explain "unable to get local issuer certificate" from the certificates the server sent."""
    last = path[-1]
    issuer = name_of(last.issuer)
    if len(path) > 1 and is_ca(last):
        return "tls_error", (f"the server sends its chain up to {name_of(last.subject)!r}, whose issuer {issuer!r} "
                             "is not trusted — add the province CA with ca_file")
    urls = aia_issuer_urls(last)
    if urls:
        return "cert_chain_incomplete", (f"the server does not send the intermediate certificate {issuer!r} "
                                         f"(it can be downloaded from {urls[0]}): add it to the server's "
                                         "certificate file; browsers may hide this, other clients fail")
    return "tls_error", (f"issuer {issuer!r} is not trusted — add the province CA with ca_file "
                         "(or, if it is an intermediate CA, the server must send it)")


def explain(exc: ssl.SSLCertVerificationError, chain: Sequence[bytes], server_name: str,
            now: dt.datetime | None = None) -> tuple[str, str]:
    """Return (result, detail) for a failed verification, given the chain the server sent (may be empty)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    code = getattr(exc, "verify_code", None)
    certs = [c for c in (load(d) for d in chain) if c is not None]
    path = issued_path(certs)
    if not path:
        return classify_verify_error(exc)
    leaf = path[0]
    lifetime = _lifetime_problem(path, server_name, now)
    if lifetime is not None:
        # Expiry first: it breaks every client, and the renewed certificate usually comes with a proper chain.
        if code in (NO_LOCAL_ISSUER, NO_ISSUER_CERT, UNABLE_TO_VERIFY_LEAF):
            lifetime += f"; also: {_trust_problem(path)[1]}"
        return "cert_expired", lifetime
    if code in (NOT_YET_VALID, EXPIRED):
        return classify_verify_error(exc)
    if code == HOSTNAME_MISMATCH:
        return "tls_error", f"the certificate is for {', '.join(dns_names(leaf))}, not {server_name}"
    if code == SELF_SIGNED_LEAF or (len(certs) == 1 and leaf.issuer == leaf.subject):
        return "tls_error", (f"the server sends a self-signed certificate ({name_of(leaf.subject)!r}): not trusted "
                             "— add it with ca_file if it is really the province's")
    if code == SELF_SIGNED_IN_CHAIN:
        return "tls_error", (f"the server's chain ends at the root {name_of(path[-1].subject)!r}, which is not "
                             "trusted — add the province CA with ca_file")
    if code in (NO_LOCAL_ISSUER, NO_ISSUER_CERT, UNABLE_TO_VERIFY_LEAF):
        return _trust_problem(path)
    return classify_verify_error(exc)


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """Why verification failed, and what the server sent (empty if the second handshake failed too)."""

    result: str
    detail: str
    chain: tuple[bytes, ...]

    @property
    def cert_days_left(self) -> float | None:
        """Days left on the leaf the server sent, if it could be read."""
        return days_left(self.chain[0]) if self.chain else None


async def fetch_chain(ctx: ProbeContext, host: str, port: int, server_name: str) -> list[bytes]:
    """Handshake again without verification (same line, fresh connection) and return the chain sent."""
    context = await client_context(verify=False)
    conn = await open_tcp(ctx, host, port, tls=context, server_hostname=server_name)
    try:
        return sent_chain(conn.writer.get_extra_info("ssl_object"))
    finally:
        await conn.close()


async def diagnose(ctx: ProbeContext, exc: ssl.SSLCertVerificationError, host: str, port: int,
                   server_name: str) -> Diagnosis:
    """Explain a verification failure from the chain the server actually sends (`host` may be the address)."""
    chain: list[bytes] = []
    budget = min(ctx.remaining(), DIAGNOSE_MAX_S)
    if budget > 0.05:
        try:
            async with asyncio.timeout(budget):
                chain = await fetch_chain(ctx, host, port, server_name)
        except Exception:  # noqa: BLE001 - the diagnosis is best effort; the failure stands either way
            chain = []
    result, detail = explain(exc, chain, server_name)
    return Diagnosis(result, detail, tuple(chain))
