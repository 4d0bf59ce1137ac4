"""Command line for the lab: ``python -m lab up | sweep [--force] | check``.

- ``up``: start a lab, print its namespaces and addresses, wait for Ctrl-C or SIGTERM, then clean up.
- ``sweep``: remove labs whose owner process is gone (``--force``: every ``cm????-`` lab).
- ``check``: say whether this machine can run the lab and what is missing (exit 1 if anything is).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from lab import Lab, addresses as A, topology


def missing_requirements() -> list[str]:
    """Return what this machine lacks to run the lab (empty when it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (namespaces, iptables and tc need it)")
    for tool in ("ip", "iptables", "iptables-restore", "tc", "sysctl", "ping"):
        if shutil.which(tool) is None:
            missing.append(f"the {tool} command")
    if importlib.util.find_spec("netfilterqueue") is None:
        missing.append("python NetfilterQueue (pip install NetfilterQueue; needs libnetfilter-queue-dev)")
    if not Path("/proc/net/netfilter/nfnetlink_queue").exists():
        modprobe = subprocess.run(["modprobe", "nfnetlink_queue"], capture_output=True)
        if modprobe.returncode != 0 or not Path("/proc/net/netfilter/nfnetlink_queue").exists():
            missing.append("the kernel's NFQUEUE support (nfnetlink_queue module)")
    if not missing:
        missing += _probe_namespace()
    return missing


def _probe_namespace() -> list[str]:
    """Try the kernel features in a throwaway namespace: netns, NFQUEUE target, tbf qdisc."""
    ns = f"{topology.new_prefix()}-check"
    problems = []
    try:
        topology.run(["ip", "netns", "add", ns])
        trials = {
            "iptables NFQUEUE target": ["iptables", "-w", "-t", "mangle", "-A", "POSTROUTING", "-o", "lo",
                                        "-j", "NFQUEUE", "--queue-num", "1"],
            "tbf qdisc": ["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1mbit", "burst", "3000",
                          "latency", "50ms"],
        }
        for what, argv in trials.items():
            try:
                topology.run(argv, ns=ns)
            except topology.LabError as exc:
                problems.append(f"{what}: {exc}")
    except topology.LabError as exc:
        problems.append(f"network namespaces: {exc}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return problems


def cmd_check(_args) -> int:
    missing = missing_requirements()
    if missing:
        print("this machine cannot run the lab; missing:")
        for item in missing:
            print(f"  - {item}")
        return 1
    print("ok: this machine can run the lab")
    return 0


def cmd_sweep(args) -> int:
    removed = topology.sweep(force=args.force)
    print("removed: " + (", ".join(removed) if removed else "nothing"))
    return 0


def cmd_up(args) -> int:
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    with Lab(servers=not args.no_servers) as lab:
        print(f"lab {lab.prefix} up, workdir {lab.workdir}")
        print(f"  {lab.ns('pc'):<12} {A.PC_IF} {A.PC_ADDR}/{A.LAN_PREFIX}, {A.PC_BACKUP_ADDR} (backup line)")
        print(f"  {lab.ns('rtr'):<12} {A.RTR_LAN_IF} {A.RTR_LAN_ADDR}, {A.RTR_WAN1_IF} {A.RTR_WAN1_ADDR} "
              f"(primary), {A.RTR_WAN2_IF} {A.RTR_WAN2_ADDR} (backup: from {A.PC_BACKUP_ADDR} or tos "
              f"{A.BACKUP_TOS:#x})")
        print(f"  {lab.ns('isp'):<12} {A.ISP_UP1_IF} {A.ISP_UP1_ADDR}, {A.ISP_UP2_IF} {A.ISP_UP2_ADDR}, "
              f"{A.ISP_CORE_IF} {A.ISP_CORE_ADDR}")
        print(f"  {lab.ns('dc'):<12} " + ", ".join(f"{k} {v}" for k, v in A.DC_ADDRS.items()))
        print(f"try: ip netns exec {lab.ns('pc')} ping {A.IOFFICE_ADDR}   (Ctrl-C to stop)", flush=True)
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while stop["signal"] is None:
            signal.pause()
    print("lab down")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description="the commune-monitor network lab")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a lab and keep it until Ctrl-C/SIGTERM")
    up.add_argument("--no-servers", action="store_true", help="network only, no province servers")
    up.set_defaults(func=cmd_up)
    sweep = sub.add_parser("sweep", help="remove labs left behind by dead processes")
    sweep.add_argument("--force", action="store_true", help="remove every cm????- lab, even live ones")
    sweep.set_defaults(func=cmd_sweep)
    sub.add_parser("check", help="can this machine run the lab?").set_defaults(func=cmd_check)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except topology.LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
