"""The province mail server's SMTP side, built on aiosmtpd.

Run: `python -m lab.servers.smtp --listen ADDR --cert FILE --key FILE --maildir DIR [--ports 25,587,465]
[--banner "mail.lab.test ESMTP"]`.

- 25 (MX): STARTTLS offered, not required; AUTH only after STARTTLS; mail accepted without AUTH.
- 587 (submission): STARTTLS required before anything else, AUTH (PLAIN, LOGIN) required before MAIL.
- 465 (submissions): implicit TLS, AUTH required before MAIL.
The user is `vanthu@lab.test` / `matkhau`. Every accepted message is stored in the maildir `--maildir`, with
X-MailFrom / X-RcptTo / X-Peer headers, so a test can tell whether something sent mail.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
from pathlib import Path

from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

USERNAME, PASSWORD = "vanthu@lab.test", "matkhau"
DEFAULT_BANNER = "mail.lab.test ESMTP"
DEFAULT_PORTS = (25, 587, 465)

log = logging.getLogger(__name__)


def authenticate(server, session, envelope, mechanism: str, auth_data) -> AuthResult:
    """Accept only the lab user, with any of the offered mechanisms."""
    ok = (isinstance(auth_data, LoginPassword)
          and auth_data.login.decode(errors="replace") == USERNAME
          and auth_data.password.decode(errors="replace") == PASSWORD)
    return AuthResult(success=ok, handled=False)


def smtp_factory(port: int, handler, tls: ssl.SSLContext, banner: str):
    """Return the protocol factory for `port`: its TLS and AUTH policy follow the port's role."""
    hostname, _, ident = banner.partition(" ")
    common = dict(hostname=hostname, ident=ident or "ESMTP", authenticator=authenticate)
    if port == 465:
        # The socket is already TLS: aiosmtpd does not know, so do not make AUTH wait for STARTTLS.
        return lambda: SMTP(handler, auth_required=True, auth_require_tls=False, **common)
    if port == 587:
        return lambda: SMTP(handler, tls_context=tls, require_starttls=True, auth_required=True, **common)
    return lambda: SMTP(handler, tls_context=tls, **common)


async def serve(host: str, ports: list[int], cert: Path, key: Path, maildir: Path, banner: str) -> None:
    """Listen on every port until SIGTERM or SIGINT."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    for sub in ("new", "cur", "tmp"):  # a complete maildir, so readers work before the first message
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    handler = Mailbox(maildir)
    loop = asyncio.get_running_loop()
    servers = []
    for port in ports:
        servers.append(await loop.create_server(smtp_factory(port, handler, tls, banner), host=host, port=port,
                                                ssl=tls if port == 465 else None))
        log.info("listening on %s:%s", host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
        await server.wait_closed()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="address to bind (IPv4 or IPv6)")
    parser.add_argument("--cert", required=True, type=Path, help="PEM certificate chain")
    parser.add_argument("--key", required=True, type=Path, help="PEM private key")
    parser.add_argument("--maildir", required=True, type=Path, help="where received messages go")
    parser.add_argument("--ports", default=",".join(map(str, DEFAULT_PORTS)),
                        help="comma-separated; 465 is implicit TLS, 587 requires STARTTLS and AUTH")
    parser.add_argument("--banner", default=DEFAULT_BANNER, help="greeting after '220 ': hostname, then text")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ports = [int(p) for p in args.ports.split(",") if p]
    asyncio.run(serve(args.listen.strip("[]"), ports, args.cert, args.key, args.maildir, args.banner))


if __name__ == "__main__":
    main()
