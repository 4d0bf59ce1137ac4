"""`cmon agent enroll`: trade a one-time token for this agent's own credential, pinning the province CA.

1. The trust anchor: `--ca-file` (the province CA, PEM), else — when `--ca-fingerprint` is given — the CA the
   collector serves at `GET /api/v1/ca` (fetched without trusting it: no secret is sent), accepted only if its
   SHA-256 equals the fingerprint; else the system's CAs (a collector with a public certificate).
2. `POST /api/v1/enroll` over TLS verified against that anchor, with the token read from a file or stdin (never
   the command line: other users see it in the process list).
3. The credential and the pinned CA are written to the credential file, readable only by the service account
   (agent/credentials.py); the shipper trusts only that CA from then on.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
from pathlib import Path

import aiohttp

from core.tls import fingerprint, normalize_fingerprint
from core.wire import WIRE_VERSION

from .credentials import Credential, save, ssl_context


class EnrollError(Exception):
    """Enrollment failed; the message says why and what to do."""


async def fetch_ca(url: str, pin: str, timeout: float = 20.0) -> str:
    """Return the collector's CA (PEM) from /api/v1/ca if its fingerprint is `pin`; EnrollError otherwise."""
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE  # only to fetch the public CA, checked against the pin below
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(url.rstrip("/") + "/api/v1/ca", ssl=unverified) as response:
                if response.status != 200:
                    raise EnrollError(f"the collector does not serve its CA ({response.status}): pass --ca-file")
                pem = await response.text()
    except aiohttp.ClientError as exc:
        raise EnrollError(f"cannot reach the collector at {url}: {exc}") from None
    try:
        got = fingerprint(pem)
    except ValueError:
        raise EnrollError("the collector's /api/v1/ca is not a PEM certificate: pass --ca-file") from None
    if got != pin:
        raise EnrollError(f"the collector's CA has fingerprint {got}, not {pin}: someone may be intercepting "
                          "the connection, or the fingerprint is wrong — check it with the province")
    return pem


async def enroll(
    url: str, token: str, agent_id: str, *, ca_fingerprint: str | None = None, ca_file: str | Path | None = None,
    allow_http: bool = False, timeout: float = 20.0,
) -> Credential:
    """Enroll this agent at the collector; return its credential (not yet saved)."""
    if url.startswith("http://") and not allow_http:
        raise EnrollError("the collector URL is plain http://: use https:// (or --allow-http on a trusted network)")
    pin = normalize_fingerprint(ca_fingerprint) if ca_fingerprint else None
    ca_pem = None
    if ca_file:
        ca_pem = Path(ca_file).read_text(encoding="ascii")
        if pin and fingerprint(ca_pem) != pin:
            raise EnrollError(f"{ca_file} has fingerprint {fingerprint(ca_pem)}, not {pin}")
    elif pin and url.startswith("https://"):
        ca_pem = await fetch_ca(url, pin, timeout)
    context = ssl_context(Credential(url, "", "", "", "", pin, ca_pem)) if url.startswith("https://") else False
    body = {"version": WIRE_VERSION, "token": token, "agent_id": agent_id, "hostname": socket.gethostname()}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.post(url.rstrip("/") + "/api/v1/enroll", json=body, ssl=context) as response:
                answer = await response.json(content_type=None) if response.content_length != 0 else {}
                status = response.status
    except aiohttp.ClientConnectorCertificateError as exc:
        raise EnrollError(f"the collector's certificate is not trusted: {exc.certificate_error}") from None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise EnrollError(f"cannot enroll at {url}: {type(exc).__name__}: {exc}") from None
    if status == 401:
        raise EnrollError("the token is unknown, already used or expired: ask the province for a new one "
                          "(cmon collector token create --commune X)")
    if status != 200 or not isinstance(answer, dict) or "credential" not in answer:
        raise EnrollError(f"the collector answered {status}: {answer}")
    return Credential(url, answer["credential"], answer.get("province", ""), answer.get("commune", ""),
                      answer.get("agent", agent_id), fingerprint(ca_pem) if ca_pem else None, ca_pem)


def read_token(token_file: str | None) -> str:
    """Read the token from a file, or from stdin ('-' or no file); EnrollError when empty."""
    if token_file and token_file != "-":
        text = Path(token_file).read_text(encoding="utf-8")
    else:
        if sys.stdin.isatty():
            print("Paste the enrollment token, then Enter:", file=sys.stderr)
        text = sys.stdin.readline()
    token = text.strip()
    if not token:
        raise EnrollError("no token given: pipe it in, or pass --token-file FILE")
    return token


def enroll_and_save(config, args) -> Credential:
    """Run enrollment for `cmon agent enroll` and write the credential file; return the credential."""
    collector = config.collector
    url = args.collector or (str(collector.url) if collector else None)
    if not url:
        raise EnrollError("no collector URL: pass --collector URL or set collector.url in the config")
    token = read_token(args.token_file)
    ca_file = args.ca_file or (collector.ca_file if collector else None)  # the config's: absolute since loaded
    allow_http = args.allow_http or bool(collector and collector.allow_http)
    credential = asyncio.run(enroll(url.rstrip("/"), token, config.agent.id, ca_fingerprint=args.ca_fingerprint,
                                    ca_file=ca_file, allow_http=allow_http))
    save(config.credential_path, credential)
    return credential


__all__ = ["EnrollError", "enroll", "enroll_and_save", "fetch_ca", "read_token"]
