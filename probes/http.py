"""HTTP probe: fetch a URL over a line with a fresh DNS lookup, TCP connection and TLS handshake every run.

Timing phases (ms) like blackbox_exporter's `probe_http_duration_seconds`, SUMMED over the redirects followed
(each hop is a new connection, as blackbox does with keep-alives disabled):
`dns_ms` (resolve; absent when every host was an IP literal or a pinned `hosts` entry), `connect_ms` (TCP),
`tls_ms` (handshake incl. certificate verification), `ttfb_ms` (connection ready → response headers, blackbox's
"processing"), and `duration_ms` (the whole run incl. login and body).

aiohttp does the HTTP (redirect-safe cookies, chunked and compressed bodies, odd servers); the probe hooks in
where the phases happen: a resolver calling probes.common.dnswire (fresh, pinned to the line, times dns), a socket
factory creating sockets through probes.common.sockets.line_socket (line pinning; connect starts), and a
tlsinfo.ObservedContext whose SSL objects report handshake start (= TCP connected) and success.
The body (at most `max_body_bytes`) is matched after Unicode NFC normalisation of both the page and the
expected text. An optional `login` step submits the site's login form first (probes/common/http_login.py).
Doc: docs/probes/http.md. Needs no privileges.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import AfterValidator, Field, model_validator
from yarl import URL

from core.config.types import HostName, StrictModel, check_host
from core.measurement import Measurement

from .base import ProbeContext, TargetConfig
from .common import tlsinfo
from .common.dnswire import DnsFailure, resolve
from .common.http_login import find_login_form, has_password_form
from .common.netio import allowed_families, classify
from .common.sockets import ProbeFailure, family_of, line_socket

NAME = "http"
# The fields it can emit (measurement `probe`): documented in docs/probes/http.md, declared in core/catalogue.py.
FIELDS: tuple[str, ...] = (
    "up", "result_code", "duration_ms", "dns_ms", "connect_ms", "tls_ms", "ttfb_ms", "login_ms", "status_code",
    "redirects", "body_bytes", "cert_days_left",
)
MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "commune-monitor/0.1 (http probe)"
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_STATUS_RANGE = re.compile(r"^([1-5])xx$|^([1-5]\d\d)-([1-5]\d\d)$")
# Normalising/matching a large page is CPU work: above this size it runs in a thread, off the event loop.
_THREAD_MATCH_BYTES = 64 * 1024


def check_url(value: str) -> str:
    """Accept an absolute http(s) URL with a host (a config error otherwise)."""
    try:
        url = URL(value)
        port = url.port
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{value!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(f"{value!r}: the URL must start with http:// or https://")
    if not url.host or port is None:
        raise ValueError(f"{value!r}: the URL has no host name")
    check_host(url.host)
    return value


Url = Annotated[str, AfterValidator(check_url)]


def check_status(value: int | str) -> int | str:
    """Accept a status code (200), a class ("2xx") or a range ("200-399")."""
    if isinstance(value, int):
        if not 100 <= value <= 599:
            raise ValueError(f"{value} is not an HTTP status code (100-599)")
        return value
    match = _STATUS_RANGE.match(value.strip())
    if not match or (match.group(2) and int(match.group(2)) > int(match.group(3))):
        raise ValueError(f"{value!r} is not a status, a class like '2xx' or a range like '200-399'")
    return value.strip()


class Login(StrictModel):
    """A login step: GET `url`, submit its form with `fields` (plus the form's hidden fields), keep the cookie."""

    url: Url | None = None  # the login page; default: the target URL (which redirects there without a session)
    fields: dict[str, str] = Field(min_length=1)  # e.g. {username: vanthu, password: ...}
    form_selector: str | None = Field(default=None, min_length=1)  # "#id", ".class", a name/id or action part


class Config(TargetConfig):
    """An HTTP(S) target; see docs/probes/http.md for every key."""

    probe: Literal["http"] = "http"
    url: Url
    method: Literal["GET", "HEAD", "POST"] = "GET"
    body: str | None = None  # POST only
    headers: dict[str, str] = Field(default_factory=dict)
    expect_status: list[Annotated[int | str, AfterValidator(check_status)]] | None = Field(default=None, min_length=1)
    expect_text: str | None = Field(default=None, min_length=1)
    expect_regex: str | None = Field(default=None, min_length=1)
    follow_redirects: bool = True
    ca_file: str | None = Field(default=None, min_length=1)
    verify_tls: bool = True
    server_name: HostName | None = None  # TLS SNI and the name the certificate must carry
    host_header: str | None = Field(default=None, min_length=1, pattern=r"^[A-Za-z0-9_.:\[\]-]+$")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1, le=64 * 1024 * 1024)
    login: Login | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        if self.body is not None and self.method != "POST":
            raise ValueError("`body` is only sent with method: POST")
        if self.method == "HEAD" and (self.expect_text or self.expect_regex):
            raise ValueError("a HEAD answer has no body: expect_text/expect_regex need GET or POST")
        for name, value in self.headers.items():
            if not re.match(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", name) or any(c in value for c in "\r\n"):
                raise ValueError(f"header {name!r} is not a valid HTTP header")
        if self.expect_regex is not None:
            try:
                re.compile(unicodedata.normalize("NFC", self.expect_regex))
            except re.error as exc:
                raise ValueError(f"expect_regex is not a valid regular expression: {exc}") from None
        return self

    def status_ok(self, status: int) -> bool:
        """Whether `status` is expected (default 2xx, or 2xx/3xx when redirects are not followed)."""
        wanted = self.expect_status or (["2xx"] if self.follow_redirects else ["200-399"])
        for item in wanted:
            if isinstance(item, int):
                if status == item:
                    return True
                continue
            match = _STATUS_RANGE.match(item)
            assert match is not None
            if match.group(1):
                if status // 100 == int(match.group(1)):
                    return True
            elif int(match.group(2)) <= status <= int(match.group(3)):
                return True
        return False


@dataclass(slots=True)
class _Hop:
    """One request/response exchange on its own connection: perf_counter() instants of each phase."""

    url: URL
    dns_ms: float | None = None
    socket_at: float | None = None
    created_at: float | None = None  # aiohttp's connection is ready (after TLS for https)
    tls_start: float | None = None
    tls_end: float | None = None
    response_at: float | None = None
    address: str | None = None
    port: int | None = None
    peer_cert: bytes | None = None
    peer_not_after: str | None = None  # ssl's, when verified: cert_days_left without parsing the certificate

    @property
    def connect_ms(self) -> float | None:
        end = self.tls_start if self.tls_start is not None else self.created_at
        return _span(self.socket_at, end)

    @property
    def tls_ms(self) -> float | None:
        return _span(self.tls_start, self.tls_end)

    @property
    def ttfb_ms(self) -> float | None:
        ready = self.tls_end if self.tls_start is not None else self.created_at
        return _span(ready, self.response_at)


def _span(start: float | None, end: float | None) -> float | None:
    return (end - start) * 1000.0 if start is not None and end is not None else None


@dataclass(slots=True)
class _Run(tlsinfo.HandshakeObserver):
    """What one probe run has measured so far, and what it was doing (for a timeout's detail)."""

    ctx: ProbeContext
    hops: list[_Hop] = field(default_factory=list)
    stage: str = "starting"
    sock: socket.socket | None = None

    @property
    def hop(self) -> _Hop:
        return self.hops[-1]

    def start_hop(self, url: URL) -> None:
        self.hops.append(_Hop(url))
        self.stage = f"resolving {url.host}"

    def socket_factory(self, addr_info: Any) -> socket.socket:
        """Create the connection's socket through the line (aiohttp connects it right after)."""
        family, kind, proto, _, sockaddr = addr_info
        hop = self.hop
        hop.address, hop.port = sockaddr[0], sockaddr[1]
        self.stage = f"connecting to {_host_port(hop.address, hop.port)}"
        self.sock = line_socket(family, kind, self.ctx.line, proto)
        hop.socket_at = time.perf_counter()
        return self.sock

    def tls_started(self) -> None:
        self.hop.tls_start = time.perf_counter()
        self.stage = f"TLS handshake with {_host_port(self.hop.address or '?', self.hop.port or 0)}"

    def tls_done(self, ssl_object: ssl.SSLObject) -> None:
        self.hop.tls_end = time.perf_counter()
        self.hop.peer_cert = ssl_object.getpeercert(binary_form=True)
        self.hop.peer_not_after = tlsinfo.verified_not_after(ssl_object)

    async def connection_created(self, *_: Any) -> None:
        self.hop.created_at = time.perf_counter()
        self.stage = f"waiting for the answer from {self.hop.url.host}"
        if self.sock is not None and self.sock.fileno() >= 0:
            self.ctx.note_local_address(self.sock.getsockname()[0])

    def fields(self, hops: list[_Hop] | None = None) -> dict[str, float | None]:
        """Return the phases summed over `hops` (default: all); a phase no hop had is absent."""
        hops = self.hops if hops is None else hops
        out: dict[str, float | None] = {}
        for name in ("dns_ms", "connect_ms", "tls_ms", "ttfb_ms"):
            values = [v for v in (getattr(h, name) for h in hops) if v is not None]
            out[name] = sum(values) if values else None
        return out


class _Resolver(AbstractResolver):
    """aiohttp resolver: one fresh lookup per host per run, over the line via probes.common.dnswire, timed into the hop.

    Redirects and login steps to the same host reuse the run's answer (as blackbox_exporter does); the next run
    looks it up again.
    """

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.answers: dict[str, list[str]] = {}

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        addresses = self.answers.get(host)
        if addresses is None:
            addresses, dns_ms = await resolve(self.run.ctx, host, allowed_families(self.run.ctx))
            if dns_ms is not None:
                self.run.hop.dns_ms = (self.run.hop.dns_ms or 0.0) + dns_ms
            if not addresses:
                raise DnsFailure(f"{host} has no address of the allowed family ({self.run.ctx.target.ip_family})")
            self.answers[host] = addresses
        return [{"hostname": host, "host": a, "port": port, "family": family_of(a), "proto": 0,
                 "flags": socket.AI_NUMERICHOST} for a in addresses]

    async def close(self) -> None:
        """Nothing to release."""


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _TooManyRedirects(Exception):
    pass


@dataclass(slots=True)
class _Page:
    """A final response: status, URL, body (capped), and how many redirects led there."""

    status: int
    url: URL
    body: bytes
    charset: str | None
    redirects: int

    def text(self) -> str:
        """Decode the body: HTTP charset, else <meta charset>, else UTF-8."""
        charset = self.charset
        if not charset:
            match = _META_CHARSET.search(self.body[:4096])
            charset = match.group(1).decode("ascii") if match else "utf-8"
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


class _Client:
    """One probe run's HTTP session: fresh connection per request, cookies kept, redirects followed by hand."""

    def __init__(self, config: Config, ctx: ProbeContext, run: _Run, context: ssl.SSLContext) -> None:
        self.config, self.ctx, self.run = config, ctx, run
        self.origin = URL(config.url).origin()
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(lambda *args: run.connection_created())
        connector = aiohttp.TCPConnector(
            force_close=True, use_dns_cache=False, resolver=_Resolver(run), socket_factory=run.socket_factory,
            happy_eyeballs_delay=None, ssl=context, limit=1,
        )
        headers = {"User-Agent": USER_AGENT, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
        self.session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True),  # unsafe: allow cookies of IP hosts
            headers=headers, trace_configs=[trace], timeout=aiohttp.ClientTimeout(total=None),
            max_line_size=65536, max_field_size=65536,
        )

    def _overrides(self, url: URL) -> tuple[dict[str, str], str | None]:
        """Return the configured headers (and Host/SNI overrides while still on the configured origin)."""
        headers = dict(self.config.headers)
        same_origin = url.origin() == self.origin
        if self.config.host_header and same_origin:
            headers["Host"] = self.config.host_header
        if not same_origin:
            headers = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "cookie", "host")}
        server_name = self.config.server_name if same_origin and url.scheme == "https" else None
        return headers, server_name

    async def fetch(self, method: str, url: URL, data: Any = None, follow: bool = True,
                    limit: int | None = None) -> tuple[_Page, list[_Hop]]:
        """Request `url`, following redirects; return the final page and the hops it took."""
        first = len(self.run.hops)
        redirects = 0
        while True:
            self.run.start_hop(url)
            headers, server_name = self._overrides(url)
            response = await self.session.request(method, url, data=data, headers=headers, allow_redirects=False,
                                                  server_hostname=server_name)
            self.run.hop.response_at = time.perf_counter()
            async with response:
                location = response.headers.get("Location")
                if follow and response.status in REDIRECT_STATUSES and location:
                    if redirects >= MAX_REDIRECTS:
                        raise _TooManyRedirects(f"more than {MAX_REDIRECTS} redirects (last: {response.status} "
                                                f"from {url} to {location[:200]})")
                    try:
                        target = url.join(URL(location))
                    except ValueError as exc:
                        raise ProbeFailure("protocol_error", f"redirect to an invalid URL {location!r}") from exc
                    if target.scheme not in ("http", "https") or not target.host:
                        raise ProbeFailure("protocol_error", f"redirect to a non-web URL {location[:200]!r}")
                    if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                        method, data = ("HEAD" if method == "HEAD" else "GET"), None
                    url, redirects = target, redirects + 1
                    continue
                self.run.stage = f"reading the answer from {url.host}"
                body = b"" if method == "HEAD" else await self._read(response, limit or self.config.max_body_bytes)
                return _Page(response.status, url, body, response.charset, redirects), self.run.hops[first:]

    @staticmethod
    async def _read(response: aiohttp.ClientResponse, limit: int) -> bytes:
        chunks, total = [], 0
        while total < limit:
            chunk = await response.content.read(min(256 * 1024, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _content_problem(config: Config, page: _Page) -> str | None:
    """Return why the page's content is not as expected (None when it is). CPU work: may run in a thread."""
    text = _nfc(page.text())
    if config.expect_text is not None and _nfc(config.expect_text) not in text:
        return f"the page {page.url} does not contain {config.expect_text!r}"
    if config.expect_regex is not None and not re.search(_nfc(config.expect_regex), text):
        return f"the page {page.url} does not match the regex {config.expect_regex!r}"
    return None


async def _check_content(config: Config, page: _Page) -> str | None:
    if config.expect_text is None and config.expect_regex is None:
        return None
    if len(page.body) > _THREAD_MATCH_BYTES:
        return await asyncio.to_thread(_content_problem, config, page)
    return _content_problem(config, page)


async def _login(client: _Client, config: Config) -> None:
    """Fetch the login page, submit its form with the credentials; ProbeFailure("login_failed") if refused."""
    assert config.login is not None
    login = config.login
    page, _ = await client.fetch("GET", URL(login.url or config.url))
    if page.status >= 400:
        raise ProbeFailure("login_failed", f"the login page {page.url} answered HTTP {page.status}")
    form = find_login_form(page.text(), login.fields, login.form_selector)
    if form is None:
        which = f"matching {login.form_selector!r} " if login.form_selector else ""
        raise ProbeFailure("login_failed", f"no login form {which}on {page.url}")
    action = page.url.join(URL(form.action)) if form.action else page.url
    pairs = form.payload(login.fields)
    if form.method == "GET":
        answer, _ = await client.fetch("GET", action.with_query(pairs))
    else:
        data = aiohttp.FormData(pairs, default_to_multipart=form.multipart)
        answer, _ = await client.fetch("POST", action, data=data)
    if answer.status >= 400:
        raise ProbeFailure("login_failed", f"submitting the login form to {action} answered HTTP {answer.status}")
    if has_password_form(answer.text()):
        raise ProbeFailure("login_failed", f"the login form came back after submitting it to {action}: "
                                           "wrong user name or password, or the account is locked")


async def probe(config: Config, ctx: ProbeContext) -> Measurement:
    """Fetch the URL (after logging in, if configured); check status, content and certificate."""
    run = _Run(ctx)
    token = tlsinfo.HANDSHAKE_OBSERVER.set(run)
    fields: dict[str, float | None] = {}
    try:
        # Built even for http:// URLs: a redirect may lead to https.
        context = await tlsinfo.client_context(config.ca_file, config.verify_tls, observed=True)
        client = _Client(config, ctx, run, context)
        try:
            async with asyncio.timeout(ctx.remaining()):
                if config.login is not None:
                    started = time.perf_counter()
                    await _login(client, config)
                    fields["login_ms"] = (time.perf_counter() - started) * 1000.0
                data = config.body.encode() if config.body is not None else None
                page, hops = await client.fetch(config.method, URL(config.url), data, config.follow_redirects)
        finally:
            await client.session.close()
    except Exception as exc:  # noqa: BLE001 - every failure is data
        return await _failure(exc, config, ctx, run, fields)
    finally:
        tlsinfo.HANDSHAKE_OBSERVER.reset(token)
    fields.update(run.fields(hops))
    # A host is looked up once per run, possibly during the login step: count that lookup here too.
    fields["dns_ms"] = run.fields()["dns_ms"]
    fields.update(status_code=float(page.status), redirects=float(page.redirects), body_bytes=float(len(page.body)))
    if page.url.scheme == "https":
        fields["cert_days_left"] = tlsinfo.days_left(hops[-1].peer_cert, not_after=hops[-1].peer_not_after)
    if not config.status_ok(page.status):
        return ctx.failure("bad_status", f"{page.url} answered HTTP {page.status}", fields)
    problem = await _check_content(config, page)
    if config.login is not None and (problem or not (config.expect_text or config.expect_regex)):
        if has_password_form(page.text()):
            return ctx.failure("login_failed", f"{page.url} asks to log in again: the session was not accepted",
                               fields)
    if problem:
        return ctx.failure("content_mismatch", problem, fields)
    return ctx.success(fields)


async def _failure(exc: BaseException, config: Config, ctx: ProbeContext, run: _Run,
                   fields: dict[str, float | None]) -> Measurement:
    """Turn an exception into the failure Measurement, with the phases measured before it."""
    fields.update(run.fields())
    if run.hops and run.hops[-1].peer_cert:
        fields["cert_days_left"] = tlsinfo.days_left(run.hops[-1].peer_cert, not_after=run.hops[-1].peer_not_after)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError) and isinstance(
        exc.certificate_error, ssl.SSLCertVerificationError
    ):
        hop = run.hops[-1]
        same = hop.url.origin() == URL(config.url).origin()
        server_name = (config.server_name if same else None) or (hop.url.host or "")
        target = hop.address or server_name
        diagnosis = await tlsinfo.diagnose(ctx, exc.certificate_error, target, hop.port or exc.port or 443, server_name)
        fields["cert_days_left"] = diagnosis.cert_days_left
        return ctx.failure(diagnosis.result, diagnosis.detail, fields)
    result, detail = _classify(exc)
    if result == "timeout":
        detail = f"no answer within {config.timeout:g} s ({run.stage})"
    return ctx.failure(result, detail, fields)


def _classify(exc: BaseException) -> tuple[str, str]:
    """Map aiohttp's exceptions onto reasons; everything else goes through netio.classify."""
    if isinstance(exc, _TooManyRedirects):
        return "bad_status", str(exc)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return classify(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "reset", "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "reset", f"the connection broke before the whole page arrived ({exc})"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "protocol_error", f"the answer is not valid HTTP: {exc.message}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return classify(exc.__cause__ or exc)
    if isinstance(exc, aiohttp.InvalidURL):
        return "protocol_error", f"invalid URL: {exc}"
    return classify(exc)
