"""Certificate fingerprints: `sha256:<hex>`, the form the province CA is pinned by (enrollment, the collector)."""

from __future__ import annotations

import base64
import hashlib


def fingerprint(cert_pem_or_der: bytes | str) -> str:
    """Return `sha256:<hex>` of a certificate (PEM or DER), the form `--ca-fingerprint` takes."""
    data = cert_pem_or_der.encode() if isinstance(cert_pem_or_der, str) else cert_pem_or_der
    if b"-----BEGIN" in data:
        from cryptography import x509  # only enrollment needs it: keep it out of the running agent's memory
        from cryptography.hazmat.primitives import serialization

        data = x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """Accept `sha256:AB:CD...`, `AB CD ...` or hex (as openssl and browsers print it); return `sha256:<hex>`."""
    raw = text.strip().lower()
    raw = raw.removeprefix("sha256:").removeprefix("sha256=").replace(":", "").replace(" ", "")
    if len(raw) != 64 or any(c not in "0123456789abcdef" for c in raw):
        try:  # base64, as some tools print it
            decoded = base64.b64decode(text.strip(), validate=True)
        except ValueError:
            decoded = b""
        if len(decoded) != 32:
            raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits)")
        raw = decoded.hex()
    return "sha256:" + raw


__all__ = ["fingerprint", "normalize_fingerprint"]
