"""Tests for lab.pki: each file verifies (or fails) the way a real client would see it."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from lab.pki import AIA_URL, SOON_DAYS, make_pki

HOST = "ioffice.lab.test"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), [HOST, "dvc.lab.test"], ["127.0.0.10"])


def handshake(cafile: Path, certfile: Path, keyfile: Path, server_hostname: str = HOST) -> None:
    """Run a TLS handshake in memory: a server presenting `certfile`, a client trusting only `cafile`."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certfile, keyfile)
    client_ctx = ssl.create_default_context(cafile=str(cafile))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client_done = server_done = False
    for _ in range(20):
        for obj, done in ((client, client_done), (server, server_done)):
            if done:
                continue
            try:
                obj.do_handshake()
                if obj is client:
                    client_done = True
                else:
                    server_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                if obj is client:
                    raise
                server_done = True  # the server sees the client's alert; the client error is what matters
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if client_done:
            return
    raise AssertionError("handshake did not finish")


def verify_error(pki_file: Path, key: Path, cafile: Path) -> ssl.SSLCertVerificationError:
    with pytest.raises(ssl.SSLCertVerificationError) as exc:
        handshake(cafile, pki_file, key)
    return exc.value


def test_fullchain_verifies_against_root(pki):
    handshake(pki.root_ca, pki.fullchain, pki.leaf_key)
    handshake(pki.root_ca, pki.fullchain, pki.leaf_key, server_hostname="127.0.0.10")


def test_leaf_only_is_missing_intermediate(pki):
    err = verify_error(pki.leaf_only, pki.leaf_key, pki.root_ca)
    assert "unable to get local issuer certificate" in err.verify_message


def test_expired_fails_as_expired(pki):
    err = verify_error(pki.expired_fullchain, pki.expired_key, pki.root_ca)
    assert "expired" in err.verify_message


def test_soon_has_about_ten_days_left(pki):
    handshake(pki.root_ca, pki.soon_fullchain, pki.soon_key)
    cert = x509.load_pem_x509_certificate(pki.soon.read_bytes())
    days_left = (cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).total_seconds() / 86400
    assert SOON_DAYS - 0.1 < days_left <= SOON_DAYS


def test_province_leaf_needs_province_root(pki):
    handshake(pki.province_root, pki.province_leaf, pki.province_leaf_key)
    err = verify_error(pki.province_leaf, pki.province_leaf_key, pki.root_ca)
    assert "unable to get local issuer certificate" in err.verify_message


def test_selfsigned_is_rejected(pki):
    err = verify_error(pki.selfsigned, pki.selfsigned_key, pki.root_ca)
    assert "self-signed" in err.verify_message or "self signed" in err.verify_message


def test_leaf_has_aia_ca_issuers(pki):
    cert = x509.load_pem_x509_certificate(pki.leaf.read_bytes())
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [d.access_location.value for d in aia] == [AIA_URL]


def test_make_pki_reuses_files_for_same_names(tmp_path):
    first = make_pki(tmp_path, [HOST])
    before = first.leaf.read_bytes()
    again = make_pki(tmp_path, [HOST])
    assert again == first and again.leaf.read_bytes() == before
    other = make_pki(tmp_path, ["other.lab.test"])
    assert other.leaf.read_bytes() != before
