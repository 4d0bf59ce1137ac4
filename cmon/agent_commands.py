"""`cmon agent run -c FILE` and `cmon agent enroll -c FILE [...]`: the agent's subcommands of the `cmon` command.

The long-running agent itself is agent.daemon.run_agent; enrollment is agent.enroll. See docs/agent.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from agent.config import AgentConfig, ConfigError, load_config
from agent.daemon import run_agent
from agent.enroll import EnrollError, enroll_and_save


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `cmon agent run` and `cmon agent enroll` to the `cmon` parser."""
    agent = commands.add_parser("agent", help="the long-running agent: run it, enroll it")
    sub = agent.add_subparsers(dest="agent_command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="probe on schedule, spool, and ship to the collector until stopped")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="agent config YAML file")
    run.set_defaults(func=cmd_run)
    enroll = sub.add_parser("enroll", help="trade a one-time token (stdin or --token-file) for a credential")
    enroll.add_argument("-c", "--config", required=True, metavar="FILE", help="agent config YAML file")
    enroll.add_argument("--collector", metavar="URL", help="the collector (default: collector.url)")
    enroll.add_argument("--token-file", metavar="FILE", help="read the token from FILE (default: stdin)")
    enroll.add_argument("--ca-fingerprint", metavar="SHA256", help="the province CA's SHA-256 fingerprint")
    enroll.add_argument("--ca-file", metavar="FILE", help="the province CA (PEM)")
    enroll.add_argument("--allow-http", action="store_true", help="allow a plain http:// collector")
    enroll.set_defaults(func=cmd_enroll)


def _load(path: str) -> AgentConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print("\n".join(str(i) for i in exc.issues), file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM/SIGINT; exit 0 after a clean stop, 1 when a task failed and had not recovered
    by then (docs/agent.md, "Supervised tasks"), 2 for a bad config."""
    config = _load(args.config)
    if config is None:
        return 2
    return asyncio.run(run_agent(config))


def cmd_enroll(args: argparse.Namespace) -> int:
    """Enroll; exit 0 with the credential saved, 1 when the collector refused, 2 for a bad config."""
    config = _load(args.config)
    if config is None:
        return 2
    try:
        credential = enroll_and_save(config, args)
    except (EnrollError, ValueError, OSError) as exc:
        print(f"cmon agent enroll: {exc}", file=sys.stderr)
        return 1
    print(f"enrolled as {credential.province}/{credential.commune}/{credential.agent} at {credential.collector}")
    return 0


__all__ = ["add_commands", "cmd_enroll", "cmd_run"]
