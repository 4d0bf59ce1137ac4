"""The lab's province servers really answer: HTTPS + login flow, SMTP, IMAP, DNS, and stop() really stops.

Runs a whole `Province` on loopback addresses 127.0.0.10/.11/.25/.53 (ports below 1024, so root only).
"""

from __future__ import annotations

import imaplib
import mailbox
import os
import re
import smtplib
import socket
import subprocess
import ssl
import sys
import time
import unicodedata
from email.message import EmailMessage

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
from aiohttp.abc import AbstractResolver

from lab.loopback import PROVINCE_ADDRESSES, province_skip_reason
from lab.servers import Check, Province, ServerProcess, ServerStartError, run_in_netns
from lab.servers.web import IOFFICE_TITLE, IOFFICE_WELCOME, MAINTENANCE

ADDRESSES = PROVINCE_ADDRESSES
pytestmark = pytest.mark.skipif(province_skip_reason() is not None, reason=province_skip_reason() or "")


def tls_context(cafile) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


class ProvinceDnsResolver(AbstractResolver):
    """Resolve names through the province's own DNS server, so tests use the real hostnames."""

    def __init__(self, nameserver: str):
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = [nameserver]

    async def resolve(self, host, port=0, family=socket.AF_INET):
        answer = await self._resolver.resolve(host, "A", lifetime=2)
        return [{"hostname": host, "host": r.address, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST} for r in answer]

    async def close(self):
        pass


def session(province, cafile=None, **kwargs) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(resolver=ProvinceDnsResolver(province.addresses["dns"]),
                                     ssl=tls_context(cafile or province.pki.root_ca))
    return aiohttp.ClientSession(connector=connector, **kwargs)


# --- web ---------------------------------------------------------------------------------------------------

async def test_ioffice_root_redirects_to_login_over_verified_https(province):
    async with session(province) as http:
        async with http.get(province.urls["ioffice"], allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/login"
        async with http.get(province.ip_urls["ioffice"] + "health") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"


async def test_ioffice_login_flow(province):
    base = province.urls["ioffice"]
    async with session(province) as http:
        async with http.get(base + "home", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/login"
        async with http.get(base) as resp:
            page = await resp.text()
        assert resp.url.path == "/login"
        assert f"<title>{IOFFICE_TITLE}</title>" in page
        assert unicodedata.normalize("NFD", IOFFICE_TITLE) in page  # the paragraph is decomposed
        assert re.search(r'<form method="post" action="/login">', page)
        csrf = re.search(r'name="_csrf" value="([^"]+)"', page).group(1)

        async with http.post(base + "login", data={"_csrf": "forged", "username": "vanthu",
                                                   "password": "matkhau"}) as resp:
            assert resp.status == 403
        async with http.post(base + "login", data={"_csrf": csrf, "username": "vanthu", "password": "sai"}) as resp:
            page = await resp.text()
            assert resp.status == 200 and "Sai tên đăng nhập" in page
        csrf = re.search(r'name="_csrf" value="([^"]+)"', page).group(1)
        user, password = province.info["credentials"]["ioffice"]
        async with http.post(base + "login", data={"_csrf": csrf, "username": user, "password": password}) as resp:
            assert resp.url.path == "/home" and IOFFICE_WELCOME in await resp.text()


async def test_dvc_uses_the_province_ca(province):
    async with session(province, province.pki.province_root) as http:
        async with http.get(province.urls["dvc"]) as resp:
            assert resp.status == 200 and "Cổng dịch vụ công" in await resp.text()
    async with session(province) as http:  # the public-style root does not know the province CA
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match="unable to get local issuer"):
            await http.get(province.urls["dvc"])


@pytest.mark.parametrize("name, error", [
    ("ioffice_missing_intermediate", "unable to get local issuer certificate"),
    ("ioffice_expired", "certificate has expired"),
    ("ioffice_selfsigned", "self-signed certificate"),
])
async def test_certificate_failures(province, name, error):
    async with session(province) as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match=error):
            await http.get(province.urls[name])


async def test_content_and_status_failures(province):
    async with session(province) as http:
        async with http.get(province.urls["ioffice_wrong_content"]) as resp:
            page = await resp.text()
            assert resp.status == 200 and MAINTENANCE in page and IOFFICE_TITLE not in page
        async with http.get(province.urls["ioffice_status500"]) as resp:
            assert resp.status == 500
        async with http.get(province.urls["ioffice_soon"], allow_redirects=False) as resp:
            assert resp.status == 302  # verifies: it only expires in 10 days
        async with http.get(province.urls["ioffice_http"], allow_redirects=False) as resp:
            assert resp.status == 302 and resp.url.scheme == "http"
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await http.get(province.urls["ioffice_slow"], timeout=aiohttp.ClientTimeout(total=0.5))
        assert time.monotonic() - started < 2


async def test_web_server_listens_on_ipv6(tmp_path):
    if not socket.has_ipv6 or refused_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    port = free_port("::1")
    server = ServerProcess("web6", [sys.executable, "-m", "lab.servers.web", "--app", "dvc", "--listen",
                                    f"[::1]:{port}"], [Check("tcp", "::1", port)], tmp_path / "web6.log")
    try:
        server.start()
        async with aiohttp.ClientSession() as http, http.get(f"http://[::1]:{port}/") as resp:
            assert "Cổng dịch vụ công" in await resp.text()
    finally:
        server.stop()
    assert not server.alive


def refused_ipv6_loopback() -> bool:
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
        return False
    except OSError:
        return True


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --- mail --------------------------------------------------------------------------------------------------

def test_smtp_port_25_offers_starttls_then_auth(province):
    ctx = tls_context(province.pki.root_ca)
    user, password = province.info["credentials"]["smtp"]
    with smtplib.SMTP(province.addresses["mail"], province.ports["smtp"], timeout=5) as smtp:
        code, banner = smtp.ehlo("counter-01")
        assert code == 250 and smtp.has_extn("starttls") and not smtp.has_extn("auth")
        assert smtp.docmd("NOOP")[0] == 250
        smtp.starttls(context=ctx)
        smtp.ehlo("counter-01")
        assert "PLAIN" in smtp.esmtp_features["auth"] and "LOGIN" in smtp.esmtp_features["auth"]
        smtp.login(user, password)


def test_smtp_banner(province):
    with socket.create_connection((province.addresses["mail"], province.ports["smtp"]), timeout=5) as s:
        assert s.recv(200).decode().startswith("220 mail.lab.test ESMTP")


def test_submission_requires_starttls_and_auth_and_stores_mail(province):
    maildir = province.info["smtp_maildir"]
    before = len(mailbox.Maildir(maildir))
    ctx = tls_context(province.pki.root_ca)
    user, password = province.info["credentials"]["smtp"]
    with smtplib.SMTP(province.addresses["mail"], province.ports["submission"], timeout=5) as smtp:
        smtp.ehlo("counter-01")
        assert smtp.mail(user)[0] == 530  # STARTTLS first
        smtp.starttls(context=ctx)
        smtp.ehlo("counter-01")
        assert smtp.mail(user)[0] == 530  # then AUTH
        smtp.rset()
        smtp.login(user, password)
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = user, "tinh@lab.test", "Kiểm tra thư"
        msg.set_content("Xin chào")
        smtp.send_message(msg)
    messages = list(mailbox.Maildir(maildir))
    assert len(messages) == before + 1
    assert any(m["X-RcptTo"] == "tinh@lab.test" for m in messages)


def test_smtps_implicit_tls_auth(province):
    ctx = tls_context(province.pki.root_ca)
    user, password = province.info["credentials"]["smtp"]
    with smtplib.SMTP_SSL(province.addresses["mail"], province.ports["smtps"], context=ctx, timeout=5) as smtp:
        smtp.ehlo("counter-01")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(user, "sai")
        smtp.login(user, password)


def test_imap_starttls_and_login(province):
    ctx = tls_context(province.pki.root_ca)
    user, password = province.info["credentials"]["imap"]
    with imaplib.IMAP4(province.addresses["mail"], province.ports["imap"], timeout=5) as imap:
        assert "STARTTLS" in imap.capabilities and "LOGINDISABLED" in imap.capabilities
        imap.starttls(ssl_context=ctx)
        assert imap.login(user, password)[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"


def test_imaps_login_and_bad_password(province):
    ctx = tls_context(province.pki.root_ca)
    user, password = province.info["credentials"]["imap"]
    with imaplib.IMAP4_SSL(province.addresses["mail"], province.ports["imaps"], ssl_context=ctx, timeout=5) as imap:
        assert imap.login(user, password)[0] == "OK"
    with imaplib.IMAP4_SSL(province.addresses["mail"], province.ports["imaps"], ssl_context=ctx, timeout=5) as imap:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login(user, "sai")


# --- dns ---------------------------------------------------------------------------------------------------

def query(province, name: str, rdtype: str = "A", tcp: bool = False):
    ask = dns.query.tcp if tcp else dns.query.udp
    return ask(dns.message.make_query(name, rdtype), province.addresses["dns"], port=province.ports["dns"], timeout=2)


def test_dns_answers_records_and_nxdomain(province):
    for name, addresses in province.records.items():
        reply = query(province, name)
        assert reply.rcode() == dns.rcode.NOERROR
        assert [r.address for r in reply.answer[0]] == addresses
    assert query(province, "ioffice.lab.test", tcp=True).answer
    assert query(province, "khongco.lab.test").rcode() == dns.rcode.NXDOMAIN


# --- stop / start ------------------------------------------------------------------------------------------

def test_stop_role_really_stops_and_start_brings_back(province):
    mail = province.addresses["mail"]
    mail_ports = [province.ports[p] for p in ("smtp", "submission", "smtps", "imap", "imaps")]
    try:
        province.stop("mail")
        assert not province.alive("smtp") and not province.alive("imap")
        assert all(refused(mail, port) for port in mail_ports)
        assert not refused(province.addresses["ioffice"], province.ports["ioffice"])  # the others keep running
    finally:
        province.start("mail")
    assert not any(refused(mail, port) for port in mail_ports)


def test_stop_dns_times_out_queries(province):
    try:
        province.stop("dns")
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(dns.message.make_query("ioffice.lab.test", "A"), province.addresses["dns"], timeout=0.5)
    finally:
        province.start("dns")
    assert query(province, "ioffice.lab.test").answer


def test_stop_one_web_server(province):
    try:
        province.stop("ioffice")
        assert refused(province.addresses["ioffice"], province.ports["ioffice"])
        assert not refused(province.addresses["ioffice"], province.ports["ioffice_expired"])
    finally:
        province.start("ioffice")
    assert province.info["servers"]["ioffice"]["alive"]


def test_server_process_in_a_network_namespace(tmp_path):
    netns = f"cmtest-servers-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", netns], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        port = free_port("127.0.0.1")
        server = ServerProcess("web-ns", [sys.executable, "-m", "lab.servers.web", "--app", "dvc", "--listen",
                                          f"127.0.0.1:{port}"], [Check("tcp", "127.0.0.1", port)],
                               tmp_path / "web-ns.log", netns=netns)
        try:
            server.start()  # the readiness check itself runs inside the namespace
            assert run_in_netns(netns, lambda: not refused("127.0.0.1", port))
            assert refused("127.0.0.1", port)  # nothing listens there in the root namespace
        finally:
            server.stop()
        assert not server.alive
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=True)


def test_server_process_that_exits_reports_its_log(tmp_path):
    port = free_port("127.0.0.1")
    server = ServerProcess("broken", [sys.executable, "-c", "print('cannot bind'); raise SystemExit(3)"],
                           [Check("tcp", "127.0.0.1", port)], tmp_path / "broken.log")
    with pytest.raises(ServerStartError, match="(?s)exited with 3.*cannot bind"):
        server.start()
    server.stop()
    assert not server.alive


def test_province_refuses_addresses_already_served(province, tmp_path):
    with pytest.raises(ServerStartError, match="already answer"):
        Province(tmp_path, ADDRESSES).start()
    assert all(s.alive for s in province.servers.values())
