"""The smtp probe against real aiosmtpd servers on 127.0.0.1: STARTTLS, implicit TLS, AUTH, bad certificates."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from pydantic import ValidationError

from lab.pki import make_pki
from probes import smtp
from probes.base import ProbeContext
from core.measurement import Measurement

from probe_helpers import free_port, make_expected, make_strip

strip = make_strip()
expected = make_expected("mail", "smtp")

USER, PASSWORD = "motcua@lab.test", "mật-khẩu đúng"


@dataclass
class Recorder:
    """An aiosmtpd handler that records every delivered message and every QUIT."""

    messages: list = field(default_factory=list)
    quits: int = 0

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"

    async def handle_QUIT(self, server, session, envelope):
        self.quits += 1
        return "221 Bye"


async def quits_seen(server, settle_s: float = 2.0) -> int:
    """Return the QUITs the server handled; aiosmtpd records them in its own thread, just after the probe ends."""
    deadline = asyncio.get_running_loop().time() + settle_s
    while server.handler.quits == 0 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # a second QUIT, if the probe wrongly sent one, would show by now
    return server.handler.quits


def authenticator(server, session, envelope, mechanism, auth_data):
    """Accept only USER / PASSWORD."""
    ok = auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)  # handled=True would leave the 535 unsent


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), ["mail.lab.test"], ["127.0.0.1"])


def server_tls(cert, key) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
def start_server():
    """Return a function that starts an aiosmtpd Controller (stopped after the test) and returns it."""
    controllers = []

    def start(mode: str = "starttls", cert=None, key=None, **smtp_kwargs) -> Controller:
        context = server_tls(cert, key) if cert else None
        handler = Recorder()
        # aiosmtpd does not see implicit TLS as TLS for auth_require_tls: only STARTTLS servers require it.
        kwargs = {"authenticator": authenticator, "auth_require_tls": mode == "starttls", **smtp_kwargs}
        if mode == "starttls":
            kwargs["tls_context"] = context
        elif mode == "implicit":
            kwargs["ssl_context"] = context
        controller = Controller(handler, hostname="127.0.0.1", port=free_port(), server_hostname="mail.lab.test", **kwargs)
        controller.start()
        controllers.append(controller)
        return controller

    yield start
    for controller in controllers:
        controller.stop()


async def run(**keys) -> Measurement:
    """Run the smtp probe against 127.0.0.1 with these config keys (target name `t`)."""
    config = smtp.Config(name="t", host="127.0.0.1", helo_name="probe.lab.test", **keys)
    return await smtp.probe(config, ProbeContext(service="mail", target=config))


async def test_starttls_and_auth_send_no_mail(start_server, pki):
    server = start_server("starttls", pki.fullchain, pki.leaf_key)
    m = await run(port=server.port, tls="starttls", ca_file=pki.root_ca, username=USER, password=PASSWORD)
    assert strip(m) == expected("ok", {"cert_days_left": 365})
    assert set(m.fields) >= {"connect_ms", "banner_ms", "tls_ms", "auth_ms", "duration_ms"}
    assert "dns_ms" not in m.fields  # an IP literal needs no lookup: left out, not 0
    assert m.fields["connect_ms"] < m.fields["duration_ms"]
    assert server.handler.messages == []
    assert await quits_seen(server) == 1


async def test_implicit_tls_with_server_name_and_password_file(start_server, pki, tmp_path):
    secret = tmp_path / "smtp.secret"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    server = start_server("implicit", pki.fullchain, pki.leaf_key)
    m = await run(port=server.port, tls="implicit", ca_file=pki.root_ca, server_name="mail.lab.test",
                  username=USER, password_file=secret, expect_banner=r"^220 mail\.lab\.test ")
    assert strip(m) == expected("ok", {"cert_days_left": 365})
    assert m.fields["tls_ms"] > 0 and m.fields["auth_ms"] > 0
    assert await quits_seen(server) == 1


async def test_plain_smtp_without_tls(start_server):
    server = start_server("none")
    m = await run(port=server.port, tls="none")
    assert strip(m) == expected("ok", {})
    assert "tls_ms" not in m.fields and "cert_days_left" not in m.fields


async def test_test_mail_is_sent_only_when_asked(start_server, pki):
    server = start_server("starttls", pki.fullchain, pki.leaf_key)
    m = await run(port=server.port, ca_file=pki.root_ca, username=USER, password=PASSWORD,
                  send_test_mail={"from": "monitor@lab.test", "to": "postmaster@lab.test"})
    assert m.result == "ok" and m.fields["send_ms"] > 0
    [(sender, recipients, content)] = server.handler.messages
    assert (sender, recipients) == ("monitor@lab.test", ["postmaster@lab.test"])
    assert b"Subject: commune-monitor test mail" in content


async def test_wrong_banner(start_server):
    server = start_server("none")
    m = await run(port=server.port, tls="none", expect_banner=r"^220 mail\.province\.gov\.vn")
    assert strip(m)["result"] == "banner_mismatch"
    assert m.fields["status_code"] == 220.0
    assert await quits_seen(server) == 1  # QUIT even after a failure


async def test_wrong_password(start_server, pki):
    server = start_server("starttls", pki.fullchain, pki.leaf_key)
    m = await run(port=server.port, ca_file=pki.root_ca, username=USER, password="sai")
    assert strip(m) == expected(
        "auth_failed", {"cert_days_left": 365, "status_code": 535.0},
        "AUTH PLAIN: the server answered 535 5.7.8 Authentication credentials invalid",
    )


async def test_auth_offered_only_after_tls(start_server, pki):
    # aiosmtpd offers AUTH only over TLS by default: a probe with tls none cannot log in.
    server = start_server("starttls", pki.fullchain, pki.leaf_key, auth_require_tls=True)
    m = await run(port=server.port, tls="none", username=USER, password=PASSWORD)
    assert (m.result, m.fields["status_code"]) == ("auth_failed", 250.0)


async def test_starttls_not_offered(start_server):
    server = start_server("none")
    m = await run(port=server.port, tls="starttls")
    assert (m.result, m.detail) == ("tls_error", "the server does not offer STARTTLS")


@pytest.mark.parametrize(
    ("cert", "key", "result", "days", "says"),
    [
        ("expired_fullchain", "expired_key", "cert_expired", -1, "expired on"),
        ("selfsigned", "selfsigned_key", "tls_error", 365, "self-signed certificate"),
        ("leaf_only", "leaf_key", "cert_chain_incomplete", 365, "does not send the intermediate certificate"),
    ],
)
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_bad_certificates(start_server, pki, mode, cert, key, result, days, says):
    server = start_server(mode, getattr(pki, cert), getattr(pki, key))
    m = await run(port=server.port, tls=mode, ca_file=pki.root_ca, username=USER, password=PASSWORD)
    assert (m.result, round(m.fields["cert_days_left"])) == (result, days), m.detail
    assert says in m.detail
    assert "auth_ms" not in m.fields  # no credentials over a connection we do not trust
    assert await quits_seen(server) == 1  # the unverified session that read the chain said QUIT


async def test_verify_off_still_reports_days_left_of_expired_cert(start_server, pki):
    server = start_server("starttls", pki.expired_fullchain, pki.expired_key)
    m = await run(port=server.port, ca_file=pki.root_ca, verify=False)
    assert (m.result, round(m.fields["cert_days_left"])) == ("ok", -1)


async def test_refused_port():
    m = await run(port=free_port(), tls="none")
    assert strip(m) == expected(
        "refused", {}, "connection refused (nothing listening on that port, or a firewall rejects it)"
    )


async def test_server_that_never_greets_is_timeout():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    try:
        m = await run(port=server.sockets[0].getsockname()[1], tls="none", timeout=1)
    finally:
        server.close()
    assert (m.result, set(m.fields) - {"duration_ms"}) == ("timeout", {"connect_ms", "up", "result_code"})
    assert 900 < m.fields["duration_ms"] < 2000


async def test_not_smtp_is_protocol_error():
    async def http_server(reader, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(http_server, "127.0.0.1", 0)
    try:
        m = await run(port=server.sockets[0].getsockname()[1], tls="none")
    finally:
        server.close()
    assert (m.result, m.detail) == ("protocol_error", "not an SMTP reply: 'HTTP/1.1 400 Bad Request'")


def test_default_ports():
    ports = {mode: smtp.Config(name="t", host="mail.lab.test", tls=mode).effective_port for mode in ("none", "starttls", "implicit")}
    assert ports == {"none": 25, "starttls": 587, "implicit": 465}


@pytest.mark.parametrize(
    "keys",
    [
        {"host": "mail lab"},
        {"host": "mail.lab.test", "port": 70000},
        {"host": "mail.lab.test", "tls": "ssl"},
        {"host": "mail.lab.test", "username": "u"},  # no password
        {"host": "mail.lab.test", "password": "p"},  # no username
        {"host": "mail.lab.test", "username": "u", "password": "p", "password_file": "/etc/hostname"},
        {"host": "mail.lab.test", "password_file": "/nonexistent/secret", "username": "u"},
        {"host": "mail.lab.test", "ca_file": "/nonexistent/ca.pem"},
        {"host": "mail.lab.test", "expect_banner": "220 ("},
        {"host": "mail.lab.test", "helo_name": "bad name"},
        {"host": "mail.lab.test", "send_test_mail": {"from": "not-an-address", "to": "a@b"}},
        {"host": "mail.lab.test", "send_test_mail": {"to": "a@b"}},
        {"host": "mail.lab.test", "sender": "a@b"},
    ],
)
def test_config_errors(keys):
    with pytest.raises(ValidationError):
        smtp.Config(name="t", **keys)


async def test_province_submission_by_name_over_a_line(province):
    """The province's real submission port (STARTTLS and AUTH required), reached by name through its DNS."""
    from probes.base import Line, LineConfig

    info = province.info
    user, password = info["credentials"]["smtp"]
    config = smtp.Config(name="t", host="mail.lab.test", port=587, ca_file=info["ca"]["public"],
                         username=user, password=password, expect_banner=r"^220 mail\.lab\.test ESMTP")
    line = Line("backup", LineConfig(source="127.0.0.1", resolver=province.addresses["dns"]))
    stored_before = len(list((info["smtp_maildir"] / "new").iterdir()))
    m = await smtp.probe(config, ProbeContext(service="mail", target=config, line=line))
    assert (m.result, m.tags["line"], round(m.fields["cert_days_left"])) == ("ok", "backup", 365), m.detail
    assert all(m.fields[k] > 0 for k in ("dns_ms", "connect_ms", "banner_ms", "tls_ms", "auth_ms"))
    assert len(list((info["smtp_maildir"] / "new").iterdir())) == stored_before  # no mail unless send_test_mail
