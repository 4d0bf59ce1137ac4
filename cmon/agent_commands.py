"""`cmon agent run -c FILE`, `cmon agent enroll -c FILE [...]` and `cmon agent reload [-c FILE] [--pid PID]`: the
agent's subcommands of the `cmon` command.

The long-running agent itself is agent.daemon.run_agent; enrollment is agent.enroll. A reload is SIGHUP to the
running agent: to `--pid`, else through systemd (`systemctl reload`, the unit's ExecReload); the agent writes no
pid file. See docs/agent.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
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
    reload = sub.add_parser("reload", help="make the running agent read its config again, without a restart")
    reload.add_argument("-c", "--config", metavar="FILE", help="check this config first; send nothing if it has errors")
    reload.add_argument("--pid", type=int, metavar="PID", help="the agent's process (default: the systemd service)")
    reload.set_defaults(func=cmd_reload)


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


def cmd_reload(args: argparse.Namespace) -> int:
    """Send the running agent SIGHUP (by --pid, else `systemctl reload`); exit 0 when sent, 1 when no agent could
    be told, 2 when the config given with -c has errors (nothing is sent)."""
    if args.config:
        try:
            load_config(args.config)
        except ConfigError as exc:
            print("\n".join(str(i) for i in exc.issues), file=sys.stderr)
            count = len(exc.issues)
            print(f"cmon agent reload: not reloading: the config has {count} error{'s' if count != 1 else ''}; the agent "
                  "goes on with the one it has", file=sys.stderr)
            return 2
    if not hasattr(signal, "SIGHUP"):
        print("cmon agent reload: Windows has no SIGHUP: restart the service to apply a new config", file=sys.stderr)
        return 1
    if args.pid is not None:
        try:
            os.kill(args.pid, signal.SIGHUP)
        except OSError as exc:
            print(f"cmon agent reload: cannot signal process {args.pid}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"asked the agent (process {args.pid}) to reload its config; its log says what changed")
        return 0
    from .service.systemd import UNITS, systemd_booted  # POSIX only (pwd)

    unit = UNITS["agent"]
    if not systemd_booted():
        print("cmon agent reload: systemd is not running here: pass --pid PID of `cmon agent run`", file=sys.stderr)
        return 1
    result = subprocess.run(["systemctl", "reload", unit], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"cmon agent reload: systemctl reload {unit} failed: {result.stderr.strip()}", file=sys.stderr)
        return 1
    print(f"asked {unit} to reload its config; `journalctl -u {unit} -n 20` says what changed")
    return 0


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


__all__ = ["add_commands", "cmd_enroll", "cmd_reload", "cmd_run"]
