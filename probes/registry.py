"""The probe registry: probe name → module. Every module has NAME, Config and `async probe(config, ctx)`."""

from __future__ import annotations

import importlib
from types import ModuleType

# Module names, imported on first use (scapy-based probes must not cost memory until used).
PROBE_MODULES: dict[str, str] = {
    "icmp": "probes.icmp",
    "tcp": "probes.tcp",
    "http": "probes.http",
    "dns": "probes.dns",
    "smtp": "probes.smtp",
    "imap": "probes.imap",
    "tls": "probes.tls",
}


def probe_module(name: str) -> ModuleType:
    """Return the module implementing probe `name` (KeyError for an unknown probe)."""
    return importlib.import_module(PROBE_MODULES[name])


def available() -> dict[str, ModuleType]:
    """Return every probe module that is present (all of them, in a complete install)."""
    modules = {}
    for name, module in PROBE_MODULES.items():
        try:
            modules[name] = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return modules
