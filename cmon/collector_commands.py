"""`cmon collector run -c FILE`, `cmon collector token create -c FILE --commune X [--ttl 24h]`,
`cmon collector revoke -c FILE AGENT`: the functions behind them and `add_commands(subparsers)` (docs/collector.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from core.tls import fingerprint

if TYPE_CHECKING:
    from collector.config import CollectorConfig

# The collector's modules are imported by the collector's commands only: `cmon agent run`, on every counter PC,
# does not carry their pydantic models and state-file code in memory.

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _load(path: str) -> "CollectorConfig | None":
    from collector.config import CollectorConfigError, load_config

    try:
        return load_config(path)
    except CollectorConfigError as exc:
        print("\n".join(str(issue) for issue in exc.issues), file=sys.stderr)
        return None


def run(path: str) -> int:
    """Serve the collector configured in `path` until SIGTERM/SIGINT."""
    config = _load(path)
    if config is None:
        return EXIT_USAGE
    from collector.app import serve  # aiohttp and influxdb_client only for this command

    asyncio.run(serve(config))
    return EXIT_OK


def token_create(path: str, commune: str, ttl: str | None = None) -> int:
    """Print a new one-time enrollment token for `commune` (and the CA fingerprint agents pin)."""
    from collector.auth import Auth
    from collector.config import parse_ttl
    from collector.db import connect

    try:
        ttl_s = parse_ttl(ttl) if ttl is not None else None
    except ValueError as exc:  # before the config: a wrong argument is told as such, whatever the file says
        print(f"cmon collector token create: --ttl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    config = _load(path)
    if config is None:
        return EXIT_USAGE
    ttl_s = config.token_ttl if ttl_s is None else ttl_s
    unknown = _not_in_directory(config, commune)
    if unknown:
        print(f"cmon collector token create: {unknown}", file=sys.stderr)
        return EXIT_USAGE
    try:
        conn = connect(config.db_path())
        try:
            token = Auth(conn, config.province).create_token(commune, ttl_s)
        finally:
            conn.close()
    except ValueError as exc:
        print(f"cmon collector token create: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(token)
    hours = ttl_s / 3600
    note = f"one-time token for {config.province}/{commune}, valid {hours:g} h: give it to the agent's installer " \
           "(cmon agent enroll reads it from stdin or --token-file)"
    if config.listen.ca_file:
        note += f"\nCA fingerprint (cmon agent enroll --ca-fingerprint): {fingerprint(Path(config.listen.ca_file).read_bytes())}"
    print(note, file=sys.stderr)
    return EXIT_OK


def _not_in_directory(config: "CollectorConfig", commune: str) -> str | None:
    """Return why `commune` cannot be enrolled (not in the province directory, when there is one), or None."""
    if not config.directory:
        return None
    from collector.directory import load_directory
    from core.config.issues import suggest

    directory = load_directory(config.directory)
    if directory.commune(commune) is not None:
        return None
    hint = suggest(commune, directory.slugs())
    return (f"commune {commune!r} is not in the province directory {config.directory}{hint}: add it there first "
            "(a commune the directory does not list would never be told apart from one that stopped reporting)")


def revoke(path: str, agent: str) -> int:
    """Revoke an agent's credentials (`AGENT` or `COMMUNE/AGENT`); exit 1 when it had none."""
    from collector.auth import Auth
    from collector.db import connect

    config = _load(path)
    if config is None:
        return EXIT_USAGE
    conn = connect(config.db_path())
    try:
        count = Auth(conn, config.province).revoke(agent)
    except ValueError as exc:
        print(f"cmon collector revoke: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        conn.close()
    if not count:
        print(f"cmon collector revoke: no live credential for {agent!r}", file=sys.stderr)
        return EXIT_FAIL
    print(f"revoked {count} credential{'s' if count != 1 else ''} of {agent}: its requests now get 403")
    return EXIT_OK


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `cmon collector run|token create|revoke` to the `cmon` parser."""
    collector = commands.add_parser("collector", help="the province collector: run it, enroll and revoke agents")
    sub = collector.add_subparsers(dest="collector_command", metavar="COMMAND", required=True)
    run_p = sub.add_parser("run", help="serve ingest/heartbeat/enroll and write to VictoriaMetrics until stopped")
    run_p.add_argument("-c", "--config", required=True, metavar="FILE", help="collector config YAML file")
    run_p.set_defaults(func=lambda a: run(a.config))
    token = sub.add_parser("token", help="enrollment tokens")
    token_sub = token.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    create = token_sub.add_parser("create", help="print a one-time enrollment token for a commune")
    create.add_argument("-c", "--config", required=True, metavar="FILE", help="collector config YAML file")
    create.add_argument("--commune", required=True, help="the commune the enrolled agent will belong to")
    create.add_argument("--ttl", help="how long the token is valid (e.g. 24h, 7d, at most 30 days; default: token_ttl)")
    create.set_defaults(func=lambda a: token_create(a.config, a.commune, a.ttl))
    rev = sub.add_parser("revoke", help="revoke an agent's credential (its requests get 403)")
    rev.add_argument("-c", "--config", required=True, metavar="FILE", help="collector config YAML file")
    rev.add_argument("agent", metavar="AGENT", help="the agent id, or COMMUNE/AGENT when ids repeat")
    rev.set_defaults(func=lambda a: revoke(a.config, a.agent))


__all__ = ["add_commands", "revoke", "run", "token_create"]
