"""Test PKI for the lab: the certificates the province's servers present.

`make_pki(directory, hostnames, ip_addresses)` writes PEM files into `directory` (reusing them when they are
already there for the same names) and returns a `Pki` holding their paths. All keys are EC P-256.

Public-style chain (what a commercial CA gives, used by iOffice):
- `root.pem` / `root.key`: self-signed root CA; clients trust this file.
- `intermediate.pem` / `intermediate.key`: intermediate CA signed by the root (pathlen 0).
- `leaf.pem` / `leaf.key`: server certificate for the hostnames and IPs, signed by the intermediate, with an
  AIA caIssuers URL (`AIA_URL`) like public CAs put in.
- `fullchain.pem`: leaf + intermediate, what a correctly configured server sends.
- `leaf_only.pem`: the leaf alone: the "missing intermediate" misconfiguration (clients fail with
  "unable to get local issuer certificate" unless they fetch the AIA URL).

Certificate lifetime failures (same names, signed by the intermediate):
- `expired.pem` / `expired.key` / `expired_fullchain.pem`: notAfter one day in the past.
- `soon.pem` / `soon.key` / `soon_fullchain.pem`: valid for `SOON_DAYS` (10) days from creation.

The province's own CA (typical of the procedure portal, "dvc"):
- `province_root.pem` / `province_root.key`: the province's self-signed root.
- `province_leaf.pem` / `province_leaf.key`: leaf signed directly by it (no intermediate).

- `selfsigned.pem` / `selfsigned.key`: a self-signed server certificate (not a CA).
- `names.txt`: the hostnames and IPs the files were made for (used to decide whether to reuse them).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

AIA_URL = "http://pki.lab.test/intermediate.crt"
SOON_DAYS = 10
# Reuse a PKI only while the soon-expiring leaf still has about SOON_DAYS left, so tests stay stable.
_SOON_REUSE_MIN_DAYS = SOON_DAYS - 1


@dataclass(frozen=True, slots=True)
class Pki:
    """Paths of the PEM files written by `make_pki`."""

    directory: Path
    hostnames: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    root_ca: Path
    intermediate_ca: Path
    leaf: Path
    leaf_key: Path
    fullchain: Path
    leaf_only: Path
    expired: Path
    expired_key: Path
    expired_fullchain: Path
    soon: Path
    soon_key: Path
    soon_fullchain: Path
    province_root: Path
    province_leaf: Path
    province_leaf_key: Path
    selfsigned: Path
    selfsigned_key: Path


def make_pki(directory: Path, hostnames: list[str], ip_addresses: list[str] = ()) -> Pki:
    """Write (or reuse) the lab's certificates in `directory` and return their paths."""
    directory = Path(directory)
    pki = _paths(directory, tuple(hostnames), tuple(str(ip) for ip in ip_addresses))
    names_file = directory / "names.txt"
    names = "\n".join(pki.hostnames + pki.ip_addresses) + "\n"
    if _reusable(pki, names_file, names):
        return pki
    directory.mkdir(parents=True, exist_ok=True)
    _generate(pki)
    names_file.write_text(names)
    return pki


def _paths(d: Path, hostnames: tuple[str, ...], ips: tuple[str, ...]) -> Pki:
    return Pki(
        directory=d, hostnames=hostnames, ip_addresses=ips,
        root_ca=d / "root.pem", intermediate_ca=d / "intermediate.pem",
        leaf=d / "leaf.pem", leaf_key=d / "leaf.key", fullchain=d / "fullchain.pem", leaf_only=d / "leaf_only.pem",
        expired=d / "expired.pem", expired_key=d / "expired.key", expired_fullchain=d / "expired_fullchain.pem",
        soon=d / "soon.pem", soon_key=d / "soon.key", soon_fullchain=d / "soon_fullchain.pem",
        province_root=d / "province_root.pem", province_leaf=d / "province_leaf.pem",
        province_leaf_key=d / "province_leaf.key",
        selfsigned=d / "selfsigned.pem", selfsigned_key=d / "selfsigned.key",
    )


def _reusable(pki: Pki, names_file: Path, names: str) -> bool:
    files = [getattr(pki, f) for f in pki.__dataclass_fields__ if f not in ("directory", "hostnames", "ip_addresses")]
    if not all(p.exists() for p in files) or not names_file.exists() or names_file.read_text() != names:
        return False
    soon = x509.load_pem_x509_certificate(pki.soon.read_bytes())
    return soon.not_valid_after_utc - _now() > dt.timedelta(days=_SOON_REUSE_MIN_DAYS)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _name(common_name: str, organization: str = "Commune Monitor Lab") -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _ca_cert(subject: x509.Name, key, issuer: x509.Name, issuer_key, path_length: int | None,
             days: int = 3650) -> x509.Certificate:
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_key is not key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _leaf_cert(hostnames: tuple[str, ...], ips: tuple[str, ...], key, issuer: x509.Name | None, issuer_key,
               not_before: dt.datetime, not_after: dt.datetime, aia: bool = False) -> x509.Certificate:
    """Build a server certificate; `issuer=None` makes it self-signed."""
    subject = _name(hostnames[0] if hostnames else ips[0])
    sans = [x509.DNSName(h) for h in hostnames] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    signing_key = key if issuer is None else issuer_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject if issuer is None else issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False)
    )
    if aia:
        builder = builder.add_extension(x509.AuthorityInformationAccess([
            x509.AccessDescription(x509.AuthorityInformationAccessOID.CA_ISSUERS,
                                   x509.UniformResourceIdentifier(AIA_URL)),
        ]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _write_key(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)


def _generate(pki: Pki) -> None:
    d, names, ips = pki.directory, pki.hostnames, pki.ip_addresses
    now = _now()

    root_key, root_name = _new_key(), _name("Commune Monitor Lab Root CA")
    root = _ca_cert(root_name, root_key, root_name, root_key, path_length=1)
    inter_key, inter_name = _new_key(), _name("Commune Monitor Lab Issuing CA 1")
    inter = _ca_cert(inter_name, inter_key, root_name, root_key, path_length=0, days=1825)
    _write_key(d / "root.key", root_key)
    _write_key(d / "intermediate.key", inter_key)
    pki.root_ca.write_bytes(_pem(root))
    pki.intermediate_ca.write_bytes(_pem(inter))

    def issue(cert_path: Path, key_path: Path, chain_path: Path | None, not_before, not_after, aia=True):
        key = _new_key()
        cert = _leaf_cert(names, ips, key, inter_name, inter_key, not_before, not_after, aia=aia)
        _write_key(key_path, key)
        cert_path.write_bytes(_pem(cert))
        if chain_path is not None:
            chain_path.write_bytes(_pem(cert, inter))
        return cert

    leaf = issue(pki.leaf, pki.leaf_key, pki.fullchain, now - dt.timedelta(days=1), now + dt.timedelta(days=365))
    pki.leaf_only.write_bytes(_pem(leaf))
    issue(pki.expired, pki.expired_key, pki.expired_fullchain,
          now - dt.timedelta(days=91), now - dt.timedelta(days=1))
    issue(pki.soon, pki.soon_key, pki.soon_fullchain, now - dt.timedelta(days=80), now + dt.timedelta(days=SOON_DAYS))

    prov_key = _new_key()
    prov_name = _name("Province Lab Root CA", "So Khoa hoc va Cong nghe tinh Lab")
    prov_root = _ca_cert(prov_name, prov_key, prov_name, prov_key, path_length=0)
    _write_key(d / "province_root.key", prov_key)
    pki.province_root.write_bytes(_pem(prov_root))
    prov_leaf_key = _new_key()
    prov_leaf = _leaf_cert(names, ips, prov_leaf_key, prov_name, prov_key,
                           now - dt.timedelta(days=1), now + dt.timedelta(days=825))
    _write_key(pki.province_leaf_key, prov_leaf_key)
    pki.province_leaf.write_bytes(_pem(prov_leaf))

    self_key = _new_key()
    self_cert = _leaf_cert(names, ips, self_key, None, None, now - dt.timedelta(days=1), now + dt.timedelta(days=365))
    _write_key(pki.selfsigned_key, self_key)
    pki.selfsigned.write_bytes(_pem(self_cert))
