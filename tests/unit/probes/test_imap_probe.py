"""The imap probe against a real dovecot (lab.servers.imap) on 127.0.0.1: implicit TLS, STARTTLS, LOGIN."""

from __future__ import annotations

import asyncio
import os

import pytest
from pydantic import ValidationError

from lab.pki import make_pki
from lab.servers import imap as lab_imap
from lab.servers.process import Check, ServerProcess
from probes import imap
from probes.base import ProbeContext
from core.measurement import Measurement

from probe_helpers import free_port, make_expected, make_strip

strip = make_strip()
expected = make_expected("mail", "imap")


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dovecot run unmanaged needs root (lab.servers.imap)")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), ["mail.lab.test"], ["127.0.0.1"])


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory, pki):
    """Return a function starting a dovecot with the given certificate; returns (imap_port, imaps_port)."""
    running: dict[tuple, tuple[int, int]] = {}
    processes: list[ServerProcess] = []

    def start(cert: str = "fullchain", key: str = "leaf_key") -> tuple[int, int]:
        if (cert, key) not in running:
            workdir = tmp_path_factory.mktemp(f"dovecot-{cert}")
            ports = (free_port(), free_port())
            argv = lab_imap.prepare(workdir, "127.0.0.1", getattr(pki, cert), getattr(pki, key), *ports)
            server = ServerProcess(f"dovecot-{cert}", argv, [Check("tcp", "127.0.0.1", p) for p in ports],
                                   workdir / "stdout.log")
            processes.append(server)
            server.start()
            running[(cert, key)] = ports
        return running[(cert, key)]

    try:
        yield start
    finally:
        for server in processes:
            server.stop()


async def run(**keys) -> Measurement:
    """Run the imap probe against 127.0.0.1 with these config keys (target name `t`)."""
    config = imap.Config(name="t", host="127.0.0.1", **keys)
    return await imap.probe(config, ProbeContext(service="mail", target=config))


LOGIN = {"username": lab_imap.USERNAME, "password": lab_imap.PASSWORD}


@needs_root
async def test_implicit_tls_login(dovecot, pki):
    _, imaps = dovecot()
    m = await run(port=imaps, tls="implicit", ca_file=pki.root_ca, expect_banner=r"^\* OK .*Dovecot", **LOGIN)
    assert strip(m) == expected("ok", {"cert_days_left": 365})
    assert all(m.fields[k] > 0 for k in ("connect_ms", "tls_ms", "banner_ms", "login_ms"))
    assert "dns_ms" not in m.fields  # an IP literal needs no lookup: left out, not 0


@needs_root
async def test_starttls_login_with_password_file(dovecot, pki, tmp_path):
    secret = tmp_path / "imap.secret"
    secret.write_text(lab_imap.PASSWORD + "\n")
    plain, _ = dovecot()
    m = await run(port=plain, tls="starttls", ca_file=pki.root_ca, server_name="mail.lab.test",
                  username=lab_imap.USERNAME, password_file=secret)
    assert strip(m) == expected("ok", {"cert_days_left": 365})
    assert m.fields["tls_ms"] > 0 and m.fields["login_ms"] > 0


@needs_root
async def test_without_login_checks_greeting_and_tls_only(dovecot, pki):
    _, imaps = dovecot()
    m = await run(port=imaps, ca_file=pki.root_ca)
    assert strip(m) == expected("ok", {"cert_days_left": 365})
    assert "login_ms" not in m.fields


@needs_root
async def test_wrong_password(dovecot, pki):
    _, imaps = dovecot()
    m = await run(port=imaps, ca_file=pki.root_ca, username=lab_imap.USERNAME, password="sai", timeout=8)
    assert strip(m) == expected(
        "auth_failed", {"cert_days_left": 365}, "LOGIN answered NO [AUTHENTICATIONFAILED] Authentication failed."
    )


@needs_root
async def test_plaintext_login_over_loopback(dovecot):
    # dovecot counts loopback as secure, so it allows LOGIN without TLS here (not over a real line).
    plain, _ = dovecot()
    m = await run(port=plain, tls="none", **LOGIN)
    assert strip(m) == expected("ok", {})
    assert "tls_ms" not in m.fields and m.fields["login_ms"] > 0


@needs_root
async def test_wrong_banner(dovecot, pki):
    _, imaps = dovecot()
    m = await run(port=imaps, ca_file=pki.root_ca, expect_banner="Cyrus")
    assert m.result == "banner_mismatch"
    assert m.detail.startswith("banner '* OK") and m.detail.endswith("does not match 'Cyrus'")


@needs_root
@pytest.mark.parametrize(
    ("cert", "key", "result", "days"),
    [
        ("expired_fullchain", "expired_key", "cert_expired", -1),
        ("selfsigned", "selfsigned_key", "tls_error", 365),
        ("leaf_only", "leaf_key", "cert_chain_incomplete", 365),
    ],
)
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_bad_certificates(dovecot, pki, mode, cert, key, result, days):
    plain, imaps = dovecot(cert, key)
    m = await run(port=imaps if mode == "implicit" else plain, tls=mode, ca_file=pki.root_ca, **LOGIN)
    assert (m.result, round(m.fields["cert_days_left"])) == (result, days), m.detail
    assert "login_ms" not in m.fields


async def test_refused_port():
    m = await run(port=free_port())
    assert strip(m) == expected(
        "refused", {}, "connection refused (nothing listening on that port, or a firewall rejects it)"
    )


async def serve(greeting: bytes, capability: bytes | None = None):
    """Start a server on 127.0.0.1 that greets, answers CAPABILITY if given, and otherwise stays silent."""

    async def handle(reader, writer):
        writer.write(greeting)
        while line := await reader.readline():
            tag, _, command = line.decode().strip().partition(" ")
            if command == "CAPABILITY" and capability is not None:
                writer.write(b"* CAPABILITY " + capability + f"\r\n{tag} OK done\r\n".encode())
            elif command == "LOGOUT":
                writer.write(f"* BYE\r\n{tag} OK bye\r\n".encode())
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize(
    ("greeting", "capability", "keys", "result", "detail"),
    [
        (b"* BYE too many connections\r\n", None, {}, "banner_mismatch",
         "the server greets with '* BYE too many connections' instead of * OK"),
        (b"220 mail.lab.test ESMTP\r\n", None, {}, "protocol_error", "not an IMAP greeting: '220 mail.lab.test ESMTP'"),
        (b"* OK ready\r\n", None, {}, "timeout", "no answer in time"),  # CAPABILITY is never answered
        (b"* OK ready\r\n", b"IMAP4rev1 STARTTLS LOGINDISABLED", LOGIN, "auth_failed",
         "the server refuses LOGIN on this connection (LOGINDISABLED: use tls)"),
        (b"* OK ready\r\n", b"IMAP4rev1", {}, "ok", ""),
    ],
)
async def test_scripted_servers(greeting, capability, keys, result, detail):
    server = await serve(greeting, capability)
    try:
        m = await run(port=server.sockets[0].getsockname()[1], tls="none", timeout=1, **keys)
    finally:
        server.close()
    assert (m.result, m.detail) == (result, detail)
    assert m.fields["banner_ms"] >= 0


def test_default_ports_and_tls():
    config = imap.Config(name="t", host="mail.lab.test")
    assert (config.tls, config.effective_port) == ("implicit", 993)
    assert imap.Config(name="t", host="mail.lab.test", tls="starttls").effective_port == 143


def test_quoting():
    assert imap.quoted('a"b\\c') == '"a\\"b\\\\c"'


@pytest.mark.parametrize(
    "keys",
    [
        {"host": ""},
        {"host": "mail.lab.test", "port": 0},
        {"host": "mail.lab.test", "tls": "yes"},
        {"host": "mail.lab.test", "username": "u"},
        {"host": "mail.lab.test", "password_file": "/nonexistent"},
        {"host": "mail.lab.test", "mailbox": "INBOX"},
    ],
)
def test_config_errors(keys):
    with pytest.raises(ValidationError):
        imap.Config(name="t", **keys)


async def test_province_imaps_by_name(province):
    """The province's dovecot on 993, reached by name through the province DNS."""
    info = province.info
    user, password = info["credentials"]["imap"]
    config = imap.Config(name="t", host="mail.lab.test", ca_file=info["ca"]["public"], username=user, password=password)
    ctx = ProbeContext(service="mail", target=config, resolvers=(province.addresses["dns"],))
    m = await imap.probe(config, ctx)
    assert (m.result, round(m.fields["cert_days_left"])) == ("ok", 365), m.detail
    assert all(m.fields[k] > 0 for k in ("dns_ms", "connect_ms", "banner_ms", "tls_ms", "login_ms"))
