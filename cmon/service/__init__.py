"""Run the agent (or the collector) as an operating-system service: `install`, `uninstall`, `status`.

One interface, two back-ends chosen by platform: cmon/service/systemd.py (a hardened systemd unit, an
unprivileged `cmon` user with only CAP_NET_RAW) and cmon/service/windows.py (a pywin32 service for counter
PCs). Each back-end is imported only on its platform (pywin32 exists only on Windows, `pwd` only on POSIX); both
report through cmon/service/report.py. Both run the same entry point the foreground command uses
(`cmon agent run` / `run_agent`). See docs/install.md.
"""

from __future__ import annotations

import sys
from types import ModuleType

from .report import Report, ServiceError

ROLES = ("agent", "collector")


def backend() -> ModuleType:
    """Return the service back-end module for this platform."""
    if sys.platform == "win32":
        from . import windows  # pywin32: only ever imported here, on Windows

        return windows
    if sys.platform.startswith("linux"):
        from . import systemd  # pwd: POSIX only

        return systemd
    raise NotImplementedError(f"no service back-end for {sys.platform}: run `cmon agent run -c FILE` under your "
                              "own supervisor")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (valid roles: {', '.join(ROLES)})")


def install(config_path: str, *, role: str = "agent", **options) -> Report:
    """Install (and, where possible, enable and start) the service running `cmon <role> run -c config_path`."""
    _check_role(role)
    return backend().install(config_path, role=role, **options)


def uninstall(*, role: str = "agent", **options) -> Report:
    """Stop and remove the service; keep the config, the spool and the credential."""
    _check_role(role)
    return backend().uninstall(role=role, **options)


def status(*, role: str = "agent", **options) -> Report:
    """Report whether the service is installed and running."""
    _check_role(role)
    return backend().status(role=role, **options)


__all__ = ["ROLES", "Report", "ServiceError", "backend", "install", "status", "uninstall"]
