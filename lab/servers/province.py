"""The province data center as a whole: PKI plus every server, bound to the role addresses given.

`Province(workdir, {"ioffice": IP, "dvc": IP, "mail": IP, "dns": IP}, netns=None).start()` makes the PKI and
starts the servers below, each bound only to its role's address (never 0.0.0.0), so several provinces on
different loopback addresses coexist. `ports`, `urls`, `ip_urls` and `info` describe them for tests.

| server                       | role    | port(s)      | what                                     |
| ---------------------------- | ------- | ------------ | ---------------------------------------- |
| ioffice                      | ioffice | 443          | iOffice, full chain (public-style CA)    |
| ioffice_missing_intermediate | ioffice | 8443         | leaf without the intermediate            |
| ioffice_expired              | ioffice | 9443         | expired certificate                      |
| ioffice_wrong_content        | ioffice | 10443        | maintenance page instead of the login    |
| ioffice_status500            | ioffice | 11443        | HTTP 500                                 |
| ioffice_soon                 | ioffice | 12443        | certificate expiring in 10 days          |
| ioffice_selfsigned           | ioffice | 13443        | self-signed certificate                  |
| ioffice_slow                 | ioffice | 14443        | answers after 3 s                        |
| ioffice_http                 | ioffice | 80           | plain HTTP                               |
| dvc                          | dvc     | 443          | procedure portal, province's own CA      |
| smtp                         | mail    | 25, 587, 465 | aiosmtpd (STARTTLS, submission, SMTPS)   |
| imap                         | mail    | 143, 993     | dovecot (STARTTLS, IMAPS)                |
| dns                          | dns     | 53/udp+tcp   | dnsmasq for the lab domain               |
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.servers import dns, imap
from lab.servers.process import Check, ServerProcess

log = logging.getLogger(__name__)

ROLES = ("ioffice", "dvc", "mail", "dns")
SMTP_PORTS = {"smtp": 25, "submission": 587, "smtps": 465}
IMAP_PORTS = {"imap": 143, "imaps": 993}
DNS_PORT = 53
SLOW_DELAY_S = 3.0
CREDENTIALS = {
    "ioffice": ("vanthu", "matkhau"),
    "smtp": ("vanthu@lab.test", "matkhau"),
    "imap": ("vanthu", "matkhau"),
}
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class WebSite:
    """One web server instance: which app, port, certificate files (Pki attribute names) and failure mode."""

    name: str
    role: str
    port: int
    cert: str | None  # None: plain HTTP
    key: str | None
    mode: str = "normal"


WEB_SITES = (
    WebSite("ioffice", "ioffice", 443, "fullchain", "leaf_key"),
    WebSite("ioffice_missing_intermediate", "ioffice", 8443, "leaf_only", "leaf_key"),
    WebSite("ioffice_expired", "ioffice", 9443, "expired_fullchain", "expired_key"),
    WebSite("ioffice_wrong_content", "ioffice", 10443, "fullchain", "leaf_key", "wrong_content"),
    WebSite("ioffice_status500", "ioffice", 11443, "fullchain", "leaf_key", "status500"),
    WebSite("ioffice_soon", "ioffice", 12443, "soon_fullchain", "soon_key"),
    WebSite("ioffice_selfsigned", "ioffice", 13443, "selfsigned", "selfsigned_key"),
    WebSite("ioffice_slow", "ioffice", 14443, "fullchain", "leaf_key", "slow"),
    WebSite("ioffice_http", "ioffice", 80, None, None),
    WebSite("dvc", "dvc", 443, "province_leaf", "province_leaf_key"),
)


def host_port(host: str, port: int) -> str:
    """Format `host:port`, bracketing IPv6 addresses."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _url(scheme: str, host: str, port: int) -> str:
    default = {"http": 80, "https": 443}[scheme]
    netloc = (f"[{host}]" if ":" in host else host) if port == default else host_port(host, port)
    return f"{scheme}://{netloc}/"


class Province:
    """A province data center's servers, started and stopped together or one by one."""

    def __init__(self, workdir: Path, addresses: dict[str, str], netns: str | None = None, domain: str = "lab.test",
                 extra_records: dict[str, list[str]] | None = None):
        missing = [r for r in ROLES if r not in addresses]
        if missing:
            raise ValueError(f"addresses lacks roles {missing}: give an IP for each of {ROLES}")
        self.workdir = Path(workdir)
        self.addresses = {role: addresses[role] for role in ROLES}  # other entries (e.g. "internet") are not ours
        self.netns = netns
        self.domain = domain
        self.extra_records = dict(extra_records or {})
        self.hostnames = {role: f"{role}.{domain}" for role in ("ioffice", "dvc", "mail")} | {"dns": f"ns.{domain}"}
        self.pki = None
        self.servers: dict[str, ServerProcess] = {}
        self.roles: dict[str, list[str]] = {}

    def __enter__(self) -> Province:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop_all()

    def __repr__(self) -> str:
        return f"Province({str(self.workdir)!r}, {self.addresses}, netns={self.netns!r})"

    def start(self, name: str | None = None) -> Province:
        """Start every server (None), one server by name, or every server of a role; wait until they answer."""
        if not self.servers:
            self._build()
        selected = self._select(name) if name else list(self.servers.values())
        try:
            for server in selected:
                server.launch()
            for server in selected:
                server.wait_ready()
        except BaseException:
            if name is None:
                self.stop_all()
            raise
        return self

    def stop(self, name: str) -> None:
        """Stop one server by name (e.g. "ioffice", "smtp") or every server of a role (e.g. "mail")."""
        for server in self._select(name):
            server.stop()

    def stop_all(self) -> None:
        """Stop every server; safe to call more than once."""
        for server in self.servers.values():
            server.request_stop()
        for server in self.servers.values():
            try:
                server.stop()
            except Exception:  # keep going: the others must stop too
                log.exception("stopping %s failed", server.name)

    def alive(self, name: str) -> bool:
        """Return whether every server selected by `name` is running."""
        return all(s.alive for s in self._select(name))

    @property
    def ports(self) -> dict[str, int]:
        """Port of each service: web server names, smtp/submission/smtps, imap/imaps, dns."""
        return {site.name: site.port for site in WEB_SITES} | SMTP_PORTS | IMAP_PORTS | {"dns": DNS_PORT}

    @property
    def urls(self) -> dict[str, str]:
        """URL of each web server with the hostname (resolvable through the province DNS)."""
        return {s.name: _url("https" if s.cert else "http", self.hostnames[s.role], s.port) for s in WEB_SITES}

    @property
    def ip_urls(self) -> dict[str, str]:
        """URL of each web server with the role's IP address (certificates carry the IPs too)."""
        return {s.name: _url("https" if s.cert else "http", self.addresses[s.role], s.port) for s in WEB_SITES}

    @property
    def records(self) -> dict[str, list[str]]:
        """DNS records served: hostname → addresses."""
        return {host: [self.addresses[role]] for role, host in self.hostnames.items()} | self.extra_records

    @property
    def info(self) -> dict[str, Any]:
        """Everything a test needs to reach the servers, as plain data."""
        pki = self.pki
        return {
            "domain": self.domain,
            "netns": self.netns,
            "addresses": dict(self.addresses),
            "hostnames": dict(self.hostnames),
            "ports": self.ports,
            "urls": self.urls,
            "ip_urls": self.ip_urls,
            "records": self.records,
            "ca": {"public": pki.root_ca, "province": pki.province_root} if pki else {},
            "credentials": dict(CREDENTIALS),
            "smtp_maildir": self.workdir / "smtp" / "maildir",
            "servers": {name: {"role": role, "alive": self.servers[name].alive,
                               "log": self.servers[name].log_file}
                        for role, names in self.roles.items() for name in names},
        }

    def _select(self, name: str) -> list[ServerProcess]:
        if not self.servers:
            self._build()
        if name in self.servers:
            return [self.servers[name]]
        if name in self.roles:
            return [self.servers[n] for n in self.roles[name]]
        raise KeyError(f"no server or role {name!r}: servers {sorted(self.servers)}, roles {sorted(self.roles)}")

    def _build(self) -> None:
        from lab.pki import make_pki  # cryptography only where the PKI is made

        self.pki = make_pki(self.workdir / "pki", [self.hostnames[r] for r in ("ioffice", "dvc", "mail")],
                            sorted(set(self.addresses.values())))
        for site in WEB_SITES:
            self._add(site.role, self._web_server(site))
        self._add("mail", self._smtp_server())
        self._add("mail", self._imap_server())
        self._add("dns", self._dns_server())

    def _add(self, role: str, server: ServerProcess) -> None:
        self.servers[server.name] = server
        self.roles.setdefault(role, []).append(server.name)

    def _process(self, name: str, argv: list[str], checks: list[Check]) -> ServerProcess:
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(_PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        return ServerProcess(name, argv, checks, self.workdir / "logs" / f"{name}.log", netns=self.netns, env=env)

    def _web_server(self, site: WebSite) -> ServerProcess:
        ip = self.addresses[site.role]
        argv = [sys.executable, "-m", "lab.servers.web", "--app", site.role, "--listen", host_port(ip, site.port),
                "--mode", site.mode, "--delay", str(SLOW_DELAY_S)]
        if site.cert:
            argv += ["--cert", str(getattr(self.pki, site.cert)), "--key", str(getattr(self.pki, site.key))]
        return self._process(site.name, argv, [Check("tcp", ip, site.port)])

    def _smtp_server(self) -> ServerProcess:
        ip = self.addresses["mail"]
        argv = [sys.executable, "-m", "lab.servers.smtp", "--listen", ip, "--cert", str(self.pki.fullchain),
                "--key", str(self.pki.leaf_key), "--maildir", str(self.workdir / "smtp" / "maildir"),
                "--ports", ",".join(map(str, SMTP_PORTS.values())), "--banner", f"{self.hostnames['mail']} ESMTP"]
        return self._process("smtp", argv, [Check("tcp", ip, p) for p in SMTP_PORTS.values()])

    def _imap_server(self) -> ServerProcess:
        ip = self.addresses["mail"]
        argv = imap.prepare(self.workdir / "imap", ip, self.pki.fullchain, self.pki.leaf_key,
                            IMAP_PORTS["imap"], IMAP_PORTS["imaps"])
        return self._process("imap", argv, [Check("tcp", ip, p) for p in IMAP_PORTS.values()])

    def _dns_server(self) -> ServerProcess:
        ip = self.addresses["dns"]
        argv = dns.command(self.workdir / "dns", ip, self.records, self.domain, DNS_PORT)
        return self._process("dns", argv, [Check("dns", ip, DNS_PORT)])


def start_province(lab, addresses: dict[str, str] | None = None) -> Province:
    """Start the province servers in the lab's data-center namespace (`lab.workdir`, `lab.ns("dc")`)."""
    if addresses is None:
        constants = importlib.import_module("lab.addresses")  # the topology's constants
        addresses = getattr(constants, "DC_ROLES", None) or constants.DC_ADDRS
    return Province(Path(lab.workdir) / "province", addresses, netns=lab.ns("dc")).start()
