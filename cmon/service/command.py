"""`cmon service install|uninstall|status`: the command-line face of cmon.service (see docs/install.md)."""

from __future__ import annotations

import argparse
import sys

from . import ServiceError, install, status, uninstall

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add `cmon service ...` to the `cmon` subcommands."""
    service = commands.add_parser("service", help="install, remove or inspect the agent (or collector) service")
    actions = service.add_subparsers(dest="action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--collector", dest="role", action="store_const", const="collector", default="agent",
                        help="the collector's service instead of the agent's (Linux)")
    common.add_argument("--root", metavar="DIR", help="Linux: act on the system tree at DIR (packaging, images)")
    install = actions.add_parser("install", parents=[common], help="install, enable and start the service")
    install.add_argument("-c", "--config", required=True, metavar="FILE",
                         help="the config the service runs (e.g. /etc/commune-monitor/agent.yaml)")
    install.add_argument("--no-create-user", dest="create_user", action="store_false",
                         help="Linux: do not create the system user cmon when it is missing")
    install.add_argument("--no-start", dest="start", action="store_false", help="install and enable, do not start")
    install.add_argument("--account", metavar="NAME",
                         help=r"Windows: run as this account (default LocalSystem), e.g. 'NT AUTHORITY\LocalService'")
    actions.add_parser("uninstall", parents=[common], help="stop and remove the service (keeps config and spool)")
    actions.add_parser("status", parents=[common], help="is the service installed and running?")
    service.set_defaults(func=cmd_service)


def cmd_service(args: argparse.Namespace) -> int:
    """Run the service action; print what was done, warnings and the commands left to run."""
    options = {"root": args.root} if args.root else {}
    try:
        if args.action == "install":
            if sys.platform == "win32":
                options.update(account=args.account)
            else:
                options.update(create_user=args.create_user)
            report = install(args.config, role=args.role, start=args.start, **options)
        elif args.action == "uninstall":
            report = uninstall(role=args.role, **options)
        else:
            report = status(role=args.role, **options)
    except ServiceError as exc:
        print(f"cmon service {args.action}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (NotImplementedError, PermissionError) as exc:
        print(f"cmon service {args.action}: {exc}" + (" (run as root)" if isinstance(exc, PermissionError) else ""),
              file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(report.text())
    return EXIT_FAILED if args.action == "status" and report.state == "not installed" else EXIT_OK
