"""The installed product's version, as the package metadata says (the agent reports it; `cmon --version`)."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "commune-monitor"


def package_version() -> str:
    """Return the installed commune-monitor version ("unknown" when it is not installed)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


__all__ = ["DISTRIBUTION", "package_version"]
