"""Real servers for the province data center, runnable in a network namespace or on loopback addresses.

- `process`: `ServerProcess` (start, readiness wait, stop) and `run_in_netns`.
- `province`: `Province` (the whole data center: PKI, web, SMTP, IMAP, DNS) and `start_province(lab)`.
- `web`, `smtp`, `imap`, `dns`: one module per server, each runnable as `python -m lab.servers.NAME`.
"""

from lab.servers.process import Check, ServerProcess, ServerStartError, run_in_netns
from lab.servers.province import Province, start_province

__all__ = ["Check", "Province", "ServerProcess", "ServerStartError", "run_in_netns", "start_province"]
