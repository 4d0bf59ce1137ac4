"""The province's DNS server: dnsmasq answering for the lab domain from a record map.

`command(workdir, listen, records, domain)` returns the dnsmasq argv: foreground, no config file, no
/etc/hosts, no upstream resolvers, bound only to `listen`. Each name in `records` gets its A (and AAAA, when an
IPv6 address is given) records only for that exact name (`--host-record`, not the wildcard `--address`); any
other name in `domain` is NXDOMAIN (`--local`); names outside it get REFUSED (there is no upstream). Queries are
logged to stderr. Run standalone: `python -m lab.servers.dns --workdir DIR --listen ADDR [--port 53]
--record NAME=IP[,IP6] ...` (execs dnsmasq).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path


def command(workdir: Path, listen: str, records: dict[str, list[str]], domain: str = "lab.test",
            port: int = 53) -> list[str]:
    """Return the dnsmasq command serving `records` (name → addresses) on `listen`:`port`."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        dnsmasq_binary(), "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        "--bind-interfaces", f"--listen-address={listen.strip('[]')}", f"--port={port}",
        f"--pid-file={workdir / 'dnsmasq.pid'}", "--user=root", "--log-facility=-", "--log-queries", "--local-ttl=60",
        f"--local=/{domain}/",
    ]
    for name, addresses in records.items():
        argv.append(f"--host-record={name},{','.join(addresses)}")
    return argv


def dnsmasq_binary() -> str:
    """Return the dnsmasq executable's path (it lives in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/usr/local/sbin") or "dnsmasq"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--domain", default="lab.test")
    parser.add_argument("--record", action="append", default=[], metavar="NAME=IP[,IP6]")
    args = parser.parse_args(argv)
    records = {}
    for item in args.record:
        name, _, addresses = item.partition("=")
        records[name] = addresses.split(",")
    argv_ = command(args.workdir, args.listen, records, args.domain, args.port)
    os.execv(argv_[0], argv_)


if __name__ == "__main__":
    main()
