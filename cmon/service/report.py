"""What a service action reports, and the error it raises: shared by the back-ends (systemd.py, windows.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


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


__all__ = ["Report", "ServiceError"]
