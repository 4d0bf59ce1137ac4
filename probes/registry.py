"""The probe registry: probe name → module. Every module has NAME, Config and `async probe(config, ctx)`.

`PROBE_MODULES` are the probes a config's targets name (`probe: tcp`); `AGENT_PROBES` are the probes the agent
runs on its own, about the PC it runs on (`host`: host health, every `schedule.host_interval`), never a target.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Iterable

log = logging.getLogger(__name__)

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
# The agent's own probes: scheduled by the agent itself, not named by targets (so not in PROBE_MODULES).
AGENT_PROBES: dict[str, str] = {
    "host": "probes.host",
}


def probe_module(name: str) -> ModuleType:
    """Return the module implementing probe `name`, a target's or the agent's own (KeyError for an unknown one)."""
    return importlib.import_module(PROBE_MODULES[name] if name in PROBE_MODULES else AGENT_PROBES[name])


def loadable(names: Iterable[str] | None = None) -> tuple[dict[str, ModuleType], dict[str, str]]:
    """Return the probe modules that load, and why each other one does not (only `names` when given).

    A probe module that fails to import (a bug, a missing dependency) makes only its own targets invalid
    instead of stopping the whole agent. The agent passes the probes its config names: a module costs memory
    (the http probe ~10 MB) and it should not pay for probes it never runs.
    """
    modules: dict[str, ModuleType] = {}
    broken: dict[str, str] = {}
    chosen = set(PROBE_MODULES if names is None else names)
    wanted = {name: module for name, module in PROBE_MODULES.items() if name in chosen}
    for name, module in wanted.items():
        try:
            modules[name] = probe_module(name)
        except ModuleNotFoundError as exc:
            missing = exc.name == module
            broken[name] = "not installed" if missing else f"it needs the Python module '{exc.name}'"
        except Exception as exc:  # noqa: BLE001 - one broken probe must not stop the others
            log.error("probe module %s failed to load: %s: %s", module, type(exc).__name__, exc)
            log.debug("traceback of the failed import of %s", module, exc_info=True)
            broken[name] = f"{module} failed to load ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    return modules, broken
