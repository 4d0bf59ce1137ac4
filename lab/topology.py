"""Create and destroy the lab's network namespaces, links, addresses, routes and NAT.

Every lab instance has a prefix ``cm<4 hex>`` and four namespaces ``<prefix>-pc``, ``-rtr``, ``-isp``, ``-dc``,
so two labs can coexist. An owner file ``/run/commune-lab/<prefix>.pid`` records which process runs a lab;
``sweep()`` removes labs whose owner is gone (namespaces, the processes inside them, /etc/netns files).
Everything is done with ``ip``, ``iptables-restore`` and ``sysctl`` run through subprocess.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from lab import addresses as A

log = logging.getLogger(__name__)

OWNER_DIR = Path("/run/commune-lab")
NETNS_ETC = Path("/etc/netns")
PREFIX_RE = re.compile(r"^(cm[0-9a-f]{4})-")


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


def run(argv: list[str], *, ns: str | None = None, input: str | None = None) -> str:
    """Run a command (inside namespace ``ns`` if given); raise LabError with its stderr on failure."""
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    proc = subprocess.run(full, input=input, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"command failed ({proc.returncode}): {' '.join(full)}\n{proc.stderr.strip()}")
    return proc.stdout


def ns_name(prefix: str, role: str) -> str:
    """Return the namespace name of ``role`` in lab ``prefix``."""
    if role not in A.ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(A.ROLES)}")
    return f"{prefix}-{role}"


def list_namespaces() -> list[str]:
    """Return the names of all network namespaces on this machine."""
    out = run(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def new_prefix() -> str:
    """Return a lab prefix not used by any existing namespace."""
    used = {m.group(1) for name in list_namespaces() if (m := PREFIX_RE.match(name))}
    while (prefix := f"cm{secrets.token_hex(2)}") in used:
        pass
    return prefix


# --- creation -------------------------------------------------------------------------------------------------

def _ip_batch(ns: str, lines: list[str]) -> None:
    """Run several ``ip`` commands in one process inside ``ns`` (stops at the first error)."""
    run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n")


def _sysctls(ns: str, settings: dict[str, str]) -> None:
    run(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())], ns=ns)


def _veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    """Create a veth pair directly inside its two namespaces (no names in the root namespace)."""
    run(["ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])


def wan_routes(wan: str) -> list[str]:
    """Return the rtr routes that go through ``wan`` (re-added after the link comes back up)."""
    if wan == "wan1":
        return [f"route replace default via {A.ISP_UP1_ADDR} dev {A.RTR_WAN1_IF}"]
    return [
        f"route replace {A.WAN2_NET} dev {A.RTR_WAN2_IF} table {A.BACKUP_TABLE}",
        f"route replace default via {A.ISP_UP2_ADDR} dev {A.RTR_WAN2_IF} table {A.BACKUP_TABLE}",
    ]


def _rtr_iptables() -> str:
    """Return rtr's iptables-restore input: mark DSCP CS1 for the backup table, SNAT out of each WAN."""
    return "\n".join([
        "*mangle",
        f"-A PREROUTING -i {A.RTR_LAN_IF} -m dscp --dscp {A.BACKUP_DSCP} -j MARK --set-mark {A.BACKUP_FWMARK}",
        "COMMIT",
        "*nat",
        f"-A POSTROUTING -o {A.RTR_WAN1_IF} -j SNAT --to-source {A.RTR_WAN1_ADDR}",
        f"-A POSTROUTING -o {A.RTR_WAN2_IF} -j SNAT --to-source {A.RTR_WAN2_ADDR}",
        "COMMIT",
        "",
    ])


def create(prefix: str) -> None:
    """Create lab ``prefix``: namespaces, links, addresses, routes, policy routing, NAT, resolv.conf."""
    pc, rtr, isp, dc = (ns_name(prefix, r) for r in A.ROLES)
    OWNER_DIR.mkdir(parents=True, exist_ok=True)
    (OWNER_DIR / f"{prefix}.pid").write_text(str(os.getpid()))
    for ns in (pc, rtr, isp, dc):
        run(["ip", "netns", "add", ns])
        # No IPv6: keeps router solicitations and ND out of counters and impairment stats.
        _sysctls(ns, {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1",
                      "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"})
    _veth(pc, A.PC_IF, rtr, A.RTR_LAN_IF)
    _veth(rtr, A.RTR_WAN1_IF, isp, A.ISP_UP1_IF)
    _veth(rtr, A.RTR_WAN2_IF, isp, A.ISP_UP2_IF)
    _veth(isp, A.ISP_CORE_IF, dc, A.DC_IF)

    _sysctls(pc, {"net.ipv4.ping_group_range": "0 2147483647"})
    _ip_batch(pc, [
        "link set lo up", f"link set {A.PC_IF} up",
        f"addr add {A.PC_ADDR}/{A.LAN_PREFIX} dev {A.PC_IF}",
        f"addr add {A.PC_BACKUP_ADDR}/{A.LAN_PREFIX} dev {A.PC_IF}",
        f"route add default via {A.RTR_LAN_ADDR}",
    ])

    # Forwarded return traffic on wan2 would fail a strict reverse-path check: rp_filter stays 0.
    _sysctls(rtr, {"net.ipv4.ip_forward": "1"})
    _ip_batch(rtr, [
        "link set lo up",
        *(f"link set {i} up" for i in (A.RTR_LAN_IF, A.RTR_WAN1_IF, A.RTR_WAN2_IF)),
        f"addr add {A.RTR_LAN_ADDR}/{A.LAN_PREFIX} dev {A.RTR_LAN_IF}",
        f"addr add {A.RTR_WAN1_ADDR}/{A.WAN_PREFIX} dev {A.RTR_WAN1_IF}",
        f"addr add {A.RTR_WAN2_ADDR}/{A.WAN_PREFIX} dev {A.RTR_WAN2_IF}",
        *wan_routes("wan1"),
        f"route add {A.LAN_NET} dev {A.RTR_LAN_IF} table {A.BACKUP_TABLE}",
        *wan_routes("wan2"),
        # Without wan2 (port down), backup traffic must fail, not fall through the rule to wan1's default.
        f"route add blackhole default metric 4000 table {A.BACKUP_TABLE}",
        f"rule add from {A.PC_BACKUP_ADDR} lookup {A.BACKUP_TABLE} priority 1000",
        f"rule add fwmark {A.BACKUP_FWMARK} lookup {A.BACKUP_TABLE} priority 1001",
    ])
    run(["iptables-restore", "-w"], ns=rtr, input=_rtr_iptables())

    _sysctls(isp, {"net.ipv4.ip_forward": "1"})
    _ip_batch(isp, [
        "link set lo up",
        *(f"link set {i} up" for i in (A.ISP_UP1_IF, A.ISP_UP2_IF, A.ISP_CORE_IF)),
        f"addr add {A.ISP_UP1_ADDR}/{A.WAN_PREFIX} dev {A.ISP_UP1_IF}",
        f"addr add {A.ISP_UP2_ADDR}/{A.WAN_PREFIX} dev {A.ISP_UP2_IF}",
        f"addr add {A.ISP_CORE_ADDR}/{A.DC_PREFIX} dev {A.ISP_CORE_IF}",
    ])

    _ip_batch(dc, [
        "link set lo up", f"link set {A.DC_IF} up",
        *(f"addr add {addr}/{A.DC_PREFIX} dev {A.DC_IF}" for addr in A.DC_ADDRS.values()),
        f"route add {A.WAN_SUPERNET} via {A.DC_GATEWAY}",
    ])

    resolv = NETNS_ETC / pc
    resolv.mkdir(parents=True, exist_ok=True)
    (resolv / "resolv.conf").write_text(f"nameserver {A.DNS_ADDR}\n")


def set_wan_link(prefix: str, wan: str, up: bool) -> None:
    """Set rtr's ``wan`` interface down or up (carrier loss, as a pulled cable); re-add its routes on up."""
    rtr = ns_name(prefix, "rtr")
    iface = A.WANS[wan][0]
    _ip_batch(rtr, [f"link set {iface} {'up' if up else 'down'}", *(wan_routes(wan) if up else [])])


# --- destruction ----------------------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    """Return whether ``pid`` runs (a zombie, killed but not yet reaped, counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def kill_namespace_processes(ns: str, grace_s: float = 2.0) -> None:
    """SIGTERM every process in ``ns``, then SIGKILL whatever is left after ``grace_s``."""
    def pids() -> list[int]:
        proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 1.0)):
        remaining = pids()
        for pid in remaining:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while remaining and time.monotonic() < deadline:
            time.sleep(0.05)
            remaining = [p for p in remaining if _pid_alive(p)]
        if not remaining:
            return


def destroy(prefix: str) -> None:
    """Remove lab ``prefix`` completely: processes, namespaces (and so their links), /etc/netns, owner file."""
    names = [n for n in list_namespaces() if n.startswith(prefix + "-")]
    for ns in names:
        kill_namespace_processes(ns)
    for ns in names:
        proc = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
        if proc.returncode != 0 and ns in list_namespaces():
            raise LabError(f"cannot delete namespace {ns}: {proc.stderr.strip()}")
    for role in A.ROLES:
        shutil.rmtree(NETNS_ETC / f"{prefix}-{role}", ignore_errors=True)
    (OWNER_DIR / f"{prefix}.pid").unlink(missing_ok=True)


def _owner_alive(prefix: str) -> bool:
    try:
        pid = int((OWNER_DIR / f"{prefix}.pid").read_text())
    except (OSError, ValueError):
        return False
    return _pid_alive(pid)


def sweep(force: bool = False) -> list[str]:
    """Remove labs (any ``cm????-`` prefix) whose owner process is gone, or all of them with ``force``.

    Returns the prefixes removed.
    """
    prefixes = {m.group(1) for name in list_namespaces() if (m := PREFIX_RE.match(name))}
    if NETNS_ETC.is_dir():
        prefixes |= {m.group(1) for p in NETNS_ETC.iterdir() if (m := PREFIX_RE.match(p.name))}
    removed = []
    for prefix in sorted(prefixes):
        if force or not _owner_alive(prefix):
            log.info("sweeping lab %s", prefix)
            destroy(prefix)
            removed.append(prefix)
    return removed
