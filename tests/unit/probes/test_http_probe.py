"""The http probe against the lab's fake iOffice and dvc portal (lab.servers.web) served in-process over real
TLS on 127.0.0.1 / ::1 with lab.pki certificates, a real UDP DNS responder, and silent servers."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import unicodedata

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from aiohttp import web
from pydantic import ValidationError

from lab.pki import make_pki
from lab.servers.web import DVC_TITLE, IOFFICE_TITLE, IOFFICE_WELCOME, create_app
from probes import http
from probes.base import Line, LineConfig, ProbeContext
from core.measurement import Measurement

from probe_helpers import make_expected, make_strip

HOST = "ioffice.lab.test"
TIMING = {"dns_ms", "connect_ms", "tls_ms", "ttfb_ms", "duration_ms", "login_ms", "cert_days_left"}
LOGIN = {"fields": {"username": "vanthu", "password": "matkhau"}}
strip = make_strip(TIMING)
expected = make_expected("web", "http", line="primary")
LINE = Line("primary", LineConfig(hosts={HOST: "127.0.0.1", "dvc.lab.test": "127.0.0.1"}))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), [HOST, "dvc.lab.test"], ["127.0.0.1", "::1"])


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
async def serve(pki):
    """Start an aiohttp app on 127.0.0.1:0 (or ::1), HTTPS with the named lab.pki files; yield its port."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, cert: str | None = "fullchain", key: str = "leaf_key",
                    host: str = "127.0.0.1") -> int:
        context = None
        if cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(getattr(pki, cert), getattr(pki, key))
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, host, 0, ssl_context=context)
        await site.start()
        return runner.addresses[0][1]

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def silent():
    """A TCP server that accepts and then never says anything; yield its port."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader, writer):
        held.append(writer)
        await reader.read()  # until the client goes away

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    for writer in held:
        writer.close()
    await server.wait_closed()


async def run(line: Line | None = LINE, resolvers: tuple[str, ...] = (), **keys) -> Measurement:
    """Run the http probe with these config keys (target name `t`)."""
    config = http.Config(name="t", **keys)
    return await http.probe(config, ProbeContext(service="web", target=config, line=line, resolvers=resolvers))


def page_fields(status: int, redirects: int, body: int) -> dict:
    return {"status_code": float(status), "redirects": float(redirects), "body_bytes": float(body)}


async def test_https_with_custom_ca_follows_redirect_and_times_every_phase(serve, pki):
    port = await serve(create_app("ioffice"))
    m = await run(url=f"https://{HOST}:{port}/", ca_file=str(pki.root_ca), expect_text=IOFFICE_TITLE)
    assert strip(m) == expected("ok", page_fields(200, 1, m.fields["body_bytes"]))
    assert m.fields["body_bytes"] > 500
    f = m.fields
    assert "dns_ms" not in f  # the line's `hosts` pins the address: no lookup, so no dns_ms (not 0)
    assert 0 < f["connect_ms"] and 0 < f["tls_ms"] and 0 < f["ttfb_ms"]
    assert f["connect_ms"] + f["tls_ms"] + f["ttfb_ms"] < f["duration_ms"]
    assert 364 < f["cert_days_left"] <= 365


async def test_every_run_resolves_and_connects_afresh(serve, pki, monkeypatch):
    seen: list[tuple] = []

    @web.middleware
    async def record_peer(request, handler):
        seen.append(request.transport.get_extra_info("peername"))
        return await handler(request)

    app = create_app("ioffice")
    app.middlewares.append(record_peer)
    port = await serve(app)
    dns_port, queries, close = await dns_responder({HOST: "127.0.0.1"})
    monkeypatch.setattr("probes.common.dnswire.exchange", with_port(dns_port))
    try:
        for _ in range(2):
            m = await run(line=None, resolvers=("127.0.0.1",), url=f"https://{HOST}:{port}/", ca_file=str(pki.root_ca))
            assert m.result == "ok" and m.fields["redirects"] == 1.0
            assert 0 < m.fields["dns_ms"] < 1000
    finally:
        close()
    assert len(seen) == 4  # 2 runs × (/ → /login)
    assert len(set(seen)) == 4, "each request must come on a new connection"
    # Each run resolves afresh (no cache between runs); within a run, once per host, as blackbox_exporter does.
    assert queries.count("A") == 2


async def test_ipv6_literal(serve, pki):
    if not has_ipv6():
        pytest.skip("no IPv6 on loopback")
    port = await serve(create_app("dvc"), "fullchain", host="::1")
    m = await run(line=None, url=f"https://[::1]:{port}/", ca_file=str(pki.root_ca), expect_text=DVC_TITLE)
    assert strip(m) == expected("ok", page_fields(200, 0, m.fields["body_bytes"]), line="auto")


@pytest.mark.parametrize(
    ("cert", "key", "ca", "result", "detail"),
    [
        ("leaf_only", "leaf_key", "root_ca", "cert_chain_incomplete",
         "the server does not send the intermediate certificate 'Commune Monitor Lab Issuing CA 1' (it can be "
         "downloaded from http://pki.lab.test/intermediate.crt): add it to the server's certificate file; browsers "
         "may hide this, other clients fail"),
        ("selfsigned", "selfsigned_key", "root_ca", "tls_error",
         "the server sends a self-signed certificate ('ioffice.lab.test'): not trusted — add it with ca_file if it "
         "is really the province's"),
        ("province_leaf", "province_leaf_key", None, "tls_error",
         "issuer 'Province Lab Root CA' is not trusted — add the province CA with ca_file (or, if it is an "
         "intermediate CA, the server must send it)"),
    ],
)
async def test_certificate_problems(serve, pki, cert, key, ca, result, detail):
    port = await serve(create_app("dvc"), cert, key)
    keys = {"ca_file": str(getattr(pki, ca))} if ca else {}
    m = await run(url=f"https://dvc.lab.test:{port}/", **keys)
    assert strip(m) == expected(result, {}, detail)
    assert m.fields["cert_days_left"] > 300  # read from the chain the server sent, even though it failed


async def test_expired_certificate(serve, pki):
    port = await serve(create_app("dvc"), "expired_fullchain", "expired_key")
    m = await run(url=f"https://dvc.lab.test:{port}/", ca_file=str(pki.root_ca))
    assert m.result == "cert_expired"
    assert m.detail.startswith("the certificate of dvc.lab.test expired on ")
    assert -2 < m.fields["cert_days_left"] < 0


async def test_province_ca_given_with_ca_file_is_trusted(serve, pki):
    port = await serve(create_app("dvc"), "province_leaf", "province_leaf_key")
    m = await run(url=f"https://dvc.lab.test:{port}/", ca_file=str(pki.province_root), expect_text=DVC_TITLE)
    assert strip(m) == expected("ok", page_fields(200, 0, m.fields["body_bytes"]))


async def test_wrong_name_and_server_name_override(serve, pki):
    port = await serve(create_app("dvc"))
    wrong = await run(url=f"https://127.0.0.1:{port}/", ca_file=str(pki.root_ca), server_name="mail.lab.test")
    assert (wrong.result, wrong.detail) == (
        "tls_error", "the certificate is for ioffice.lab.test, dvc.lab.test, 127.0.0.1, ::1, not mail.lab.test")
    right = await run(url=f"https://127.0.0.1:{port}/", ca_file=str(pki.root_ca), server_name="dvc.lab.test")
    assert right.result == "ok"


async def test_verify_tls_false_accepts_self_signed(serve, pki):
    port = await serve(create_app("dvc"), "selfsigned", "selfsigned_key")
    m = await run(url=f"https://dvc.lab.test:{port}/", verify_tls=False)
    assert m.result == "ok" and m.fields["cert_days_left"] > 300


async def test_wrong_content_and_status_500(serve, pki):
    wrong = await serve(create_app("ioffice", "wrong_content"))
    broken = await serve(create_app("ioffice", "status500"))
    m = await run(url=f"https://{HOST}:{wrong}/", ca_file=str(pki.root_ca), expect_text=IOFFICE_TITLE)
    assert strip(m) == expected("content_mismatch", page_fields(200, 0, m.fields["body_bytes"]),
                                f"the page https://{HOST}:{wrong}/ does not contain {IOFFICE_TITLE!r}")
    m = await run(url=f"https://{HOST}:{broken}/", ca_file=str(pki.root_ca))
    assert strip(m) == expected("bad_status", page_fields(500, 0, m.fields["body_bytes"]),
                                f"https://{HOST}:{broken}/ answered HTTP 500")


async def test_nfc_and_nfd_match_each_other(serve, pki):
    port = await serve(create_app("dvc"), None)  # plain HTTP this time
    url = f"http://dvc.lab.test:{port}/"
    nfc = "Thủ tục hành chính cấp xã"  # the page writes this decomposed (NFD)
    nfd_title = unicodedata.normalize("NFD", DVC_TITLE)  # the page writes this composed (NFC)
    assert nfc != unicodedata.normalize("NFD", nfc) and nfd_title != DVC_TITLE
    for text in (nfc, nfd_title):
        m = await run(url=url, expect_text=text)
        assert (m.result, m.detail) == ("ok", "")
        assert "tls_ms" not in m.fields and "cert_days_left" not in m.fields
    m = await run(url=url, expect_regex=r"Thủ tục \w+ chính")
    assert m.result == "ok"
    m = await run(url=url, expect_regex=r"Thủ tục cấp tỉnh")
    assert m.result == "content_mismatch"


async def test_redirect_not_followed_when_disabled(serve, pki):
    port = await serve(create_app("ioffice"))
    m = await run(url=f"https://{HOST}:{port}/", ca_file=str(pki.root_ca), follow_redirects=False)
    assert strip(m) == expected("ok", page_fields(302, 0, m.fields["body_bytes"]))
    m = await run(url=f"https://{HOST}:{port}/", ca_file=str(pki.root_ca), follow_redirects=False,
                  expect_status=[200])
    assert m.result == "bad_status"


async def test_redirect_loop_is_bad_status(serve):
    app = web.Application()

    async def loop_(request):
        raise web.HTTPFound(f"/{int(request.match_info['n']) + 1}")

    app.router.add_get("/{n}", loop_)
    port = await serve(app, None)
    m = await run(url=f"http://{HOST}:{port}/0")
    assert m.result == "bad_status" and m.detail.startswith("more than 10 redirects")


async def test_chunked_body_and_body_cap(serve):
    app = web.Application()

    async def chunked(request):
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        response.content_type = "text/plain"
        await response.prepare(request)
        for i in range(50):
            await response.write(f"dòng {i:02d} " .encode() * 100)
        await response.write_eof()
        return response

    app.router.add_get("/", chunked)
    port = await serve(app, None)
    whole = await run(url=f"http://{HOST}:{port}/", expect_text="dòng 49")
    assert (whole.result, whole.fields["body_bytes"]) == ("ok", float(50 * 100 * len("dòng 00 ".encode())))
    capped = await run(url=f"http://{HOST}:{port}/", expect_text="dòng 49", max_body_bytes=1000)
    assert (capped.result, capped.fields["body_bytes"]) == ("content_mismatch", 1000.0)


async def test_login_with_hidden_csrf_field(serve, pki):
    port = await serve(create_app("ioffice"))
    base = f"https://{HOST}:{port}"
    m = await run(url=f"{base}/home", ca_file=str(pki.root_ca), login={**LOGIN, "url": f"{base}/login"},
                  expect_text=IOFFICE_WELCOME)
    assert strip(m) == expected("ok", page_fields(200, 0, m.fields["body_bytes"]))
    assert m.fields["login_ms"] > 0
    # Without login, /home sends us back to the login form: content check fails.
    m = await run(url=f"{base}/home", ca_file=str(pki.root_ca), expect_text=IOFFICE_WELCOME)
    assert m.result == "content_mismatch"


async def test_wrong_password_is_login_failed(serve, pki):
    port = await serve(create_app("ioffice"))
    base = f"https://{HOST}:{port}"
    m = await run(url=f"{base}/home", ca_file=str(pki.root_ca), expect_text=IOFFICE_WELCOME,
                  login={"fields": {"username": "vanthu", "password": "sai"}})
    assert strip(m) == expected(
        "login_failed", {}, f"the login form came back after submitting it to {base}/login: wrong user name or "
                            "password, or the account is locked")


async def test_login_form_missing_or_session_refused(serve, pki):
    port = await serve(create_app("dvc"))
    m = await run(url=f"https://{HOST}:{port}/", ca_file=str(pki.root_ca), login=LOGIN)
    assert (m.result, m.detail) == ("login_failed", f"no login form on https://{HOST}:{port}/")

    @web.middleware
    async def forget_session_when_strict(request, handler):
        if "strict" in request.query:  # this page does not accept the session cookie
            request = request.clone(headers={k: v for k, v in request.headers.items() if k.lower() != "cookie"})
        return await handler(request)

    app = create_app("ioffice")
    app.middlewares.append(forget_session_when_strict)
    port = await serve(app)
    m = await run(url=f"https://{HOST}:{port}/home", ca_file=str(pki.root_ca), login=LOGIN, expect_text="Văn bản")
    assert m.result == "ok", "the default login URL is the target itself (it redirects to the form)"
    m = await run(url=f"https://{HOST}:{port}/home?strict=1", ca_file=str(pki.root_ca), login=LOGIN)
    assert strip(m) == expected("login_failed", page_fields(200, 1, m.fields["body_bytes"]),
                                f"https://{HOST}:{port}/login asks to log in again: the session was not accepted")


async def test_refused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connecting is refused
        m = await run(url=f"http://{HOST}:{port}/")
    assert strip(m) == expected(
        "refused", {}, "connection refused (nothing listening on that port, or a firewall rejects it)")


async def test_unresolvable_name_is_dns_error(monkeypatch):
    dns_port, _, close = await dns_responder({HOST: "127.0.0.1"})
    monkeypatch.setattr("probes.common.dnswire.exchange", with_port(dns_port))
    try:
        m = await run(line=None, resolvers=("127.0.0.1",), url="https://nope.lab.test/")
    finally:
        close()
    assert strip(m) == expected("dns_error", {}, "nope.lab.test does not exist (NXDOMAIN from 127.0.0.1)",
                                line="auto")


async def test_silent_server_times_out_without_blocking_the_loop(silent):
    ticks: list[float] = []

    async def ticker():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    try:
        started = time.monotonic()
        m = await run(url=f"https://{HOST}:{silent}/", timeout=1.0)
        elapsed = time.monotonic() - started
    finally:
        task.cancel()
    assert (m.result, m.detail) == ("timeout", f"no answer within 1 s (TLS handshake with 127.0.0.1:{silent})")
    assert 0.9 < elapsed < 2.0
    assert "connect_ms" in m.fields and "tls_ms" not in m.fields
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 50 and max(gaps) < 0.1, f"event loop blocked for {max(gaps):.3f} s"

    m = await run(url=f"http://{HOST}:{silent}/", timeout=0.5)
    assert (m.result, m.detail) == ("timeout", f"no answer within 0.5 s (waiting for the answer from {HOST})")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"url": "ioffice.lab.test/login"}, "must start with http:// or https://"),
        ({"url": "ftp://ioffice.lab.test/"}, "must start with http:// or https://"),
        ({"url": "https:///login"}, "has no host name"),
        ({"url": "https://ioffice.lab.test:99999/"}, "is not a URL"),
        ({"url": "https://a/", "method": "DELETE"}, "method"),
        ({"url": "https://a/", "method": "HEAD", "expect_text": "x"}, "HEAD answer has no body"),
        ({"url": "https://a/", "body": "x"}, "only sent with method: POST"),
        ({"url": "https://a/", "expect_regex": "("}, "not a valid regular expression"),
        ({"url": "https://a/", "expect_status": ["2xy"]}, "is not a status"),
        ({"url": "https://a/", "expect_status": [600]}, "not an HTTP status code"),
        ({"url": "https://a/", "headers": {"X-A": "b\r\nEvil: 1"}}, "not a valid HTTP header"),
        ({"url": "https://a/", "login": {"fields": {}}}, "fields"),
        ({"url": "https://a/", "max_body_bytes": 0}, "max_body_bytes"),
        ({"url": "https://a/", "server_name": "bad name"}, "not a valid host name"),
        ({"url": "https://a/", "colour": "red"}, "colour"),
    ],
)
def test_config_errors(keys, message):
    with pytest.raises(ValidationError) as info:
        http.Config(name="t", **keys)
    assert message in str(info.value)


def test_status_expectations():
    assert http.Config(name="t", url="https://a/").status_ok(204)
    assert not http.Config(name="t", url="https://a/").status_ok(302)
    assert http.Config(name="t", url="https://a/", follow_redirects=False).status_ok(302)
    spec = http.Config(name="t", url="https://a/", expect_status=[401, "200-204"])
    assert [spec.status_ok(s) for s in (200, 204, 205, 401)] == [True, True, False, True]


# --- a real UDP DNS server on loopback (the probes ask port 53; the test points exchange() at ours) ---


async def dns_responder(records: dict[str, str]):
    """Answer A queries for `records`, NXDOMAIN for any other name; return (port, qtypes seen, close)."""
    seen: list[str] = []

    class Responder(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            query = dns.message.from_wire(data)
            question = query.question[0]
            seen.append(dns.rdatatype.to_text(question.rdtype))
            response = dns.message.make_response(query)
            name = question.name.to_text().rstrip(".")
            if name not in records:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.A:
                response.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A", records[name]))
            self.transport.sendto(response.to_wire(), addr)

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Responder, local_addr=("127.0.0.1", 0))
    return transport.get_extra_info("sockname")[1], seen, transport.close


def with_port(port: int):
    """Return dnswire.exchange asking `port` instead of 53."""
    from probes.common import dnswire

    original = dnswire.exchange

    async def exchange(ctx, query, servers, port_=53, deadline=None):
        return await original(ctx, query, servers, port, deadline)

    return exchange


# --- the lab's loopback province (real server processes and dnsmasq on port 53; root only) ---


async def test_lab_province_ioffice_by_name_with_login(province):
    m = await run(line=None, resolvers=(province.addresses["dns"],), url=province.urls["ioffice"] + "home",
                  ca_file=str(province.pki.root_ca), login=LOGIN, expect_text=IOFFICE_WELCOME)
    assert strip(m) == expected("ok", page_fields(200, 0, m.fields["body_bytes"]), line="auto")
    assert 0 < m.fields["dns_ms"] < 1000 and m.fields["login_ms"] > 0


async def test_lab_province_slow_site_times_out(province):
    m = await run(line=None, resolvers=(province.addresses["dns"],), url=province.urls["ioffice_slow"],
                  ca_file=str(province.pki.root_ca), timeout=1.0)
    assert (m.result, m.detail) == ("timeout", "no answer within 1 s (waiting for the answer from ioffice.lab.test)")
    assert {"dns_ms", "connect_ms", "tls_ms"} <= set(m.fields) and "ttfb_ms" not in m.fields
