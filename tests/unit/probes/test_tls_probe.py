"""The tls probe (and probes.common.tlsinfo's chain analysis) against real TLS servers on 127.0.0.1 presenting the
lab.pki certificates: full chain, missing intermediate, expired, expiring soon, self-signed, province CA."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from pydantic import ValidationError

from lab.pki import SOON_DAYS, make_pki
from probes import tls
from probes.common import tlsinfo
from probes.base import ProbeContext
from core.measurement import Measurement

from probe_helpers import make_expected, make_strip

HOST = "ioffice.lab.test"
TIMING = {"dns_ms", "connect_ms", "tls_ms", "duration_ms", "cert_days_left"}
strip = make_strip(TIMING)
expected = make_expected("tls", "tls")
UNTRUSTED_PROVINCE = ("issuer 'Province Lab Root CA' is not trusted — add the province CA with ca_file (or, if it "
                      "is an intermediate CA, the server must send it)")
MISSING_INTERMEDIATE = ("the server does not send the intermediate certificate 'Commune Monitor Lab Issuing CA 1' "
                        "(it can be downloaded from http://pki.lab.test/intermediate.crt): add it to the server's "
                        "certificate file; browsers may hide this, other clients fail")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    pki = make_pki(tmp_path_factory.mktemp("pki"), [HOST], ["127.0.0.1"])
    # The worst case: an expired leaf AND no intermediate sent.
    (pki.directory / "expired_leaf_only.pem").write_bytes(pki.expired.read_bytes())
    return pki


@pytest.fixture
async def tls_server(pki):
    """Start a TLS server on 127.0.0.1:0 presenting the named lab.pki files; yield its port."""
    servers: list[asyncio.Server] = []

    async def start(cert: str, key: str) -> int:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certfile = getattr(pki, cert, None) or pki.directory / f"{cert}.pem"
        context.load_cert_chain(certfile, getattr(pki, key))

        async def greet(reader, writer):
            writer.close()

        server = await asyncio.start_server(greet, "127.0.0.1", 0, ssl=context)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def run(**keys) -> Measurement:
    """Run the tls probe with these config keys (target name `t`)."""
    config = tls.Config(name="t", **keys)
    return await tls.probe(config, ProbeContext(service="tls", target=config))


async def test_full_chain_with_custom_ca(tls_server, pki):
    port = await tls_server("fullchain", "leaf_key")
    m = await run(host="127.0.0.1", port=port, server_name=HOST, ca_file=str(pki.root_ca))
    assert strip(m) == expected("ok", {"tls_version": 1.3, "cert_expiring": 0.0, "chain_length": 2.0})
    assert 0 < m.fields["connect_ms"] < m.fields["duration_ms"] and 0 < m.fields["tls_ms"] < m.fields["duration_ms"]
    assert 364 < m.fields["cert_days_left"] <= 365


async def test_soon_expiring_stays_ok_but_flags(tls_server, pki):
    port = await tls_server("soon_fullchain", "soon_key")
    m = await run(host="127.0.0.1", port=port, ca_file=str(pki.root_ca), min_days_left=30)
    assert strip(m) == expected("ok", {"tls_version": 1.3, "cert_expiring": 1.0, "chain_length": 2.0})
    assert SOON_DAYS - 1 < m.fields["cert_days_left"] <= SOON_DAYS
    m = await run(host="127.0.0.1", port=port, ca_file=str(pki.root_ca), min_days_left=5)
    assert m.fields["cert_expiring"] == 0.0


@pytest.mark.parametrize(
    ("cert", "key", "ca", "result", "chain", "detail"),
    [
        ("leaf_only", "leaf_key", "root_ca", "cert_chain_incomplete", 1.0, MISSING_INTERMEDIATE),
        ("province_leaf", "province_leaf_key", None, "tls_error", 1.0, UNTRUSTED_PROVINCE),
        # A full chain whose root is not trusted here: the server is fine, this PC lacks the CA.
        ("fullchain", "leaf_key", None, "tls_error", 2.0,
         "the server sends its chain up to 'Commune Monitor Lab Issuing CA 1', whose issuer 'Commune Monitor Lab "
         "Root CA' is not trusted — add the province CA with ca_file"),
        ("selfsigned", "selfsigned_key", "root_ca", "tls_error", 1.0,
         "the server sends a self-signed certificate ('ioffice.lab.test'): not trusted — add it with ca_file if it "
         "is really the province's"),
    ],
)
async def test_untrusted_chains(tls_server, pki, cert, key, ca, result, chain, detail):
    port = await tls_server(cert, key)
    keys = {"ca_file": str(getattr(pki, ca))} if ca else {}
    m = await run(host="127.0.0.1", port=port, server_name=HOST, **keys)
    assert strip(m) == expected(result, {"cert_expiring": 0.0, "chain_length": chain}, detail)
    assert m.fields["cert_days_left"] > 300


async def test_province_ca_trusted_with_ca_file(tls_server, pki):
    port = await tls_server("province_leaf", "province_leaf_key")
    m = await run(host="127.0.0.1", port=port, server_name=HOST, ca_file=str(pki.province_root))
    assert strip(m) == expected("ok", {"tls_version": 1.3, "cert_expiring": 0.0, "chain_length": 1.0})


async def test_expired_wins_over_untrusted(tls_server, pki):
    port = await tls_server("expired_fullchain", "expired_key")
    m = await run(host="127.0.0.1", port=port, server_name=HOST, ca_file=str(pki.root_ca))
    assert m.result == "cert_expired" and m.detail.startswith(f"the certificate of {HOST} expired on ")
    assert m.detail.endswith("(1 day ago): renew it")
    assert -2 < m.fields["cert_days_left"] < 0 and m.fields["chain_length"] == 2.0

    port = await tls_server("expired_leaf_only", "expired_key")
    m = await run(host="127.0.0.1", port=port, server_name=HOST, ca_file=str(pki.root_ca))
    assert m.result == "cert_expired"
    assert m.detail.endswith("renew it; also: " + MISSING_INTERMEDIATE)


async def test_hostname_mismatch(tls_server, pki):
    port = await tls_server("fullchain", "leaf_key")
    m = await run(host="127.0.0.1", port=port, server_name="mail.lab.test", ca_file=str(pki.root_ca))
    assert (m.result, m.detail) == (
        "tls_error", "the certificate is for ioffice.lab.test, 127.0.0.1, not mail.lab.test")


async def test_verify_tls_false_reads_the_certificate_anyway(tls_server, pki):
    port = await tls_server("expired_fullchain", "expired_key")
    m = await run(host="127.0.0.1", port=port, verify_tls=False)
    assert strip(m) == expected("ok", {"tls_version": 1.3, "cert_expiring": 1.0, "chain_length": 2.0})
    assert m.fields["cert_days_left"] < 0


async def test_not_tls_refused_silent_and_missing_ca_file(pki):
    async def plain(reader, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    held: list[asyncio.StreamWriter] = []

    async def hold(reader, writer):
        held.append(writer)
        await reader.read()

    plain_server = await asyncio.start_server(plain, "127.0.0.1", 0)
    silent_server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        m = await run(host="127.0.0.1", port=plain_server.sockets[0].getsockname()[1])
        assert m.result == "tls_error" and m.detail.startswith("TLS handshake failed: ")
        m = await run(host="127.0.0.1", port=silent_server.sockets[0].getsockname()[1], timeout=0.5)
        assert (m.result, m.detail) == ("timeout", "no answer in time")
        assert 400 < m.fields["duration_ms"] < 1500
    finally:
        for writer in held:
            writer.close()
        for server in (plain_server, silent_server):
            server.close()
            await server.wait_closed()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        m = await run(host="127.0.0.1", port=s.getsockname()[1])
    assert m.result == "refused"
    m = await run(host="127.0.0.1", port=1, ca_file=str(pki.directory / "nope.pem"))
    missing = pki.directory / "nope.pem"
    assert (m.result, m.detail) == ("error", f"ca_file {missing} cannot be read: No such file or directory")


def test_sent_chain_supports_public_and_private_api(pki):
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography import x509

    ders = [x509.load_pem_x509_certificate(p.read_bytes()).public_bytes(Encoding.DER)
            for p in (pki.leaf, pki.intermediate_ca)]

    class Public:  # Python 3.13+: SSLObject.get_unverified_chain() returns DER bytes
        def get_unverified_chain(self):
            return list(ders)

    assert tlsinfo.sent_chain(Public()) == ders
    assert tlsinfo.days_left(ders[0]) > 364
    assert tlsinfo.days_left(b"not a certificate") is None


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"host": "bad host"}, "neither a host name nor an IP address"),
        ({"host": "a..b"}, "neither a host name nor an IP address"),
        ({"host": "a", "port": 0}, "port"),
        ({"host": "a", "port": 70000}, "port"),
        ({"host": "a", "server_name": "x y"}, "not a valid host name"),
        ({"host": "a", "min_days_left": -1}, "min_days_left"),
        ({"host": "a", "starttls": "smtp"}, "starttls"),
    ],
)
def test_config_errors(keys, message):
    with pytest.raises(ValidationError) as info:
        tls.Config(name="t", **keys)
    assert message in str(info.value)
