"""Run the agent (or the collector) as an operating-system service: `install`, `uninstall`, `status`.

One interface, two back-ends chosen by platform: agent/service/systemd.py (a hardened systemd unit, an
unprivileged `cmon` user with only CAP_NET_RAW) and agent/service/windows.py (a pywin32 service for counter
PCs). The Windows module is imported only on Windows, so nothing here needs pywin32 elsewhere. Both run the same
entry point the foreground command uses (`cmon agent run` / `run_agent`). See docs/install.md.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import ModuleType

ROLES = ("agent", "collector")


class ServiceError(Exception):
    """The service cannot be installed or removed as asked; the message says what to do."""


@dataclass(slots=True)
class Report:
    """What a service action did, what looks wrong, and what the operator still has to run."""

    done: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    todo: list[str] = field(default_factory=list)
    state: str | None = None  # status(): e.g. "active", "inactive", "not installed", "unknown"

    def text(self) -> str:
        """Return the report as the lines `cmon service` prints."""
        lines = list(self.done)
        if self.state is not None:
            lines.append(f"state: {self.state}")
        lines += [f"warning: {w}" for w in self.warnings]
        if self.todo:
            lines.append("to finish, run:")
            lines += [f"  {command}" for command in self.todo]
        return "\n".join(lines) + "\n" if lines else ""


def backend() -> ModuleType:
    """Return the service back-end module for this platform."""
    if sys.platform == "win32":
        from . import windows  # pywin32: only ever imported here, on Windows

        return windows
    if sys.platform.startswith("linux"):
        from . import systemd

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
