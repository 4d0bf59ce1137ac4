"""Impair one direction of a lab link (delay, jitter, loss, rate cap) and cut or restore a link.

Directions: "up" is from the commune towards the province, "down" the reverse.

- Delay/jitter/loss: a raw PREROUTING ``-j NFQUEUE`` rule on the interface where the direction's packets
  ARRIVE (the far end of the link, in that end's namespace), and ``lab.nfq_holder`` bound to the queue (see
  its docstring for jitter distributions and the ground-truth stats). Why the far end's raw PREROUTING: it
  runs before conntrack. Queueing on the sender's POSTROUTING holds packets whose conntrack entry is not yet
  confirmed; the 2nd and 3rd echo of a new ping flow then clash with the 1st on confirmation and the kernel
  drops them (measured: 2 of 300 lost that the holder had accepted). The rule has NO ``--queue-bypass``:
  with bypass, packets arriving while the holder is not bound would pass unimpaired and uncounted, so measured
  loss would not match the recorded loss. The holder is bound before the rule is added and the rule is
  removed before the holder stops, so no packet meets an unbound queue in normal operation; if the holder
  dies, the link goes dark (loud, not silently unimpaired).
- Rate: a tbf qdisc at the root of the sender's egress interface (the bottleneck, then the delay).
- Cut: iptables DROP of everything in and out of the link's interface at both ends. The links stay up,
  like a fiber cut behind the modem: no carrier change, routes stay, packets vanish, peers time out.
  (``topology.set_wan_link`` is the other failure mode: carrier loss on the router's WAN port.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lab import addresses as A
from lab.topology import LabError, run

if TYPE_CHECKING:
    from lab import Lab


# link -> ((commune-side role, interface), (province-side role, interface))
LINK_ENDS: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "lan": (("pc", A.PC_IF), ("rtr", A.RTR_LAN_IF)),
    "wan1": (("rtr", A.RTR_WAN1_IF), ("isp", A.ISP_UP1_IF)),
    "wan2": (("rtr", A.RTR_WAN2_IF), ("isp", A.ISP_UP2_IF)),
    "core": (("isp", A.ISP_CORE_IF), ("dc", A.DC_IF)),
}
DIRECTIONS = ("up", "down")
REPO_ROOT = Path(__file__).resolve().parent.parent
CUT_COMMENT = "cm-cut"
HOLDER_START_TIMEOUT_S = 5.0


def link_end(link: str, direction: str, *, receiving: bool = False) -> tuple[str, str]:
    """Return (role, interface) sending ``link``'s ``direction`` (or receiving it, with ``receiving``)."""
    if link not in LINK_ENDS:
        raise ValueError(f"unknown link {link!r}; links are {', '.join(LINK_ENDS)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'up' or 'down', not {direction!r}")
    sender = 0 if direction == "up" else 1
    return LINK_ENDS[link][1 - sender if receiving else sender]


def _iptables(ns: str, *args: str) -> None:
    run(["iptables", "-w", *args], ns=ns)


def _iptables_has(ns: str, table: str, *rule: str) -> bool:
    proc = subprocess.run(["ip", "netns", "exec", ns, "iptables", "-w", "-t", table, "-C", *rule],
                          capture_output=True)
    return proc.returncode == 0


def _tbf_burst_bytes(rate_kbit: int) -> int:
    # tbf needs burst >= one MTU and >= rate/HZ; 20 ms worth of rate keeps TCP near the cap.
    return max(3000, rate_kbit * 1000 // 8 // 50)


class Impairment:
    """One active impairment of one direction of one link; ``clear()`` undoes it."""

    def __init__(self, lab: Lab, link: str, direction: str, *, queue_num: int, delay_ms: float = 0.0,
                 jitter_ms: float = 0.0, jitter_dist: str = "uniform", loss_pct: float = 0.0,
                 rate_kbit: int | None = None, seed: int | None = None, use_holder: bool | None = None):
        self.lab = lab
        self.link, self.direction = link, direction
        self.role, self.iface = link_end(link, direction)  # tbf on the sender's egress
        self.rx_role, self.rx_iface = link_end(link, direction, receiving=True)  # NFQUEUE where packets arrive
        self.ns, self.rx_ns = lab.ns(self.role), lab.ns(self.rx_role)
        self.queue_num = queue_num
        self.delay_ms, self.jitter_ms, self.jitter_dist = delay_ms, jitter_ms, jitter_dist
        self.loss_pct, self.rate_kbit, self.seed = loss_pct, rate_kbit, seed
        # use_holder=None: only when there is something to hold or drop; True measures the holder's overhead.
        self.use_holder = use_holder if use_holder is not None else bool(delay_ms or jitter_ms or loss_pct)
        name = f"{link}-{direction}-q{queue_num}"
        self.stats_path = Path(lab.workdir) / f"holder-{name}.json"
        self.log_path = Path(lab.workdir) / f"holder-{name}.log"
        self.holder: subprocess.Popen | None = None
        self.final_stats: dict | None = None
        self.active = False

    @property
    def _queue_rule(self) -> list[str]:
        return ["PREROUTING", "-i", self.rx_iface, "-m", "comment", "--comment", f"cm-impair-q{self.queue_num}",
                "-j", "NFQUEUE", "--queue-num", str(self.queue_num)]

    def start(self) -> Impairment:
        """Apply the impairment: start and await the holder, then add the queue rule; add tbf."""
        try:
            if self.use_holder:
                self._start_holder()
                _iptables(self.rx_ns, "-t", "raw", "-A", *self._queue_rule)
            if self.rate_kbit:
                run(["tc", "qdisc", "replace", "dev", self.iface, "root", "tbf", "rate",
                     f"{int(self.rate_kbit)}kbit", "burst", str(_tbf_burst_bytes(int(self.rate_kbit))),
                     "latency", "100ms"], ns=self.ns)
        except BaseException:
            self.active = True
            self.clear()
            raise
        self.active = True
        return self

    def _start_holder(self) -> None:
        argv = [sys.executable, "-m", "lab.nfq_holder", "--queue", str(self.queue_num),
                "--delay-ms", str(self.delay_ms), "--jitter-ms", str(self.jitter_ms),
                "--jitter-dist", self.jitter_dist, "--loss-pct", str(self.loss_pct),
                "--stats", str(self.stats_path)]
        if self.seed is not None:
            argv += ["--seed", str(self.seed)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                       os.environ.get("PYTHONPATH")])))
        self.stats_path.unlink(missing_ok=True)
        with open(self.log_path, "wb") as log_file:
            self.holder = self.lab.popen(self.rx_role, argv, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + HOLDER_START_TIMEOUT_S
        while not self.stats_path.exists():
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"nfq_holder for {self.link}/{self.direction} did not start "
                               f"(exit {self.holder.poll()}): {self.log_path.read_text(errors='replace')}")
            time.sleep(0.02)

    def stats(self, timeout_s: float = 3.0) -> dict | None:
        """Return the holder's full ground-truth stats now (None without a holder).

        Asks the running holder for a fresh full dump (SIGUSR1); after ``clear()`` returns the final stats.
        """
        if self.holder is None:
            return None
        if self.holder.poll() is not None:
            return self.final_stats or json.loads(self.stats_path.read_text())
        before = json.loads(self.stats_path.read_text())["generation"]
        self.holder.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            current = json.loads(self.stats_path.read_text())
            if current["generation"] > before:
                if current.get("full"):
                    return current
                # A periodic light write (same generation, no per-packet part) replaced the dump: ask again.
                before = current["generation"]
                self.holder.send_signal(signal.SIGUSR1)
            time.sleep(0.01)
        raise LabError(f"nfq_holder for {self.link}/{self.direction} did not answer a stats request")

    def clear(self) -> dict | None:
        """Remove the impairment (rule first, then the holder drains and exits); return final stats."""
        if not self.active:
            return self.final_stats
        self.active = False
        if self.rate_kbit:
            subprocess.run(["ip", "netns", "exec", self.ns, "tc", "qdisc", "del", "dev", self.iface, "root"],
                           capture_output=True)
        if self.use_holder:
            if _iptables_has(self.rx_ns, "raw", *self._queue_rule):
                _iptables(self.rx_ns, "-t", "raw", "-D", *self._queue_rule)
            if self.holder is not None and self.holder.poll() is None:
                self.holder.terminate()
                try:
                    self.holder.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.holder.kill()
                    self.holder.wait()
            if self.stats_path.exists():
                self.final_stats = json.loads(self.stats_path.read_text())
        self.lab._forget_impairment(self)
        return self.final_stats

    def __repr__(self) -> str:
        return (f"Impairment({self.link!r}, {self.direction!r}, delay_ms={self.delay_ms}, "
                f"jitter_ms={self.jitter_ms}, loss_pct={self.loss_pct}, rate_kbit={self.rate_kbit})")


def _cut_rules(iface: str) -> list[list[str]]:
    # Inserted first: raw PREROUTING acts before any NFQUEUE rule, so a cut line feeds no holder.
    tag = ["-m", "comment", "--comment", CUT_COMMENT, "-j", "DROP"]
    return [["raw", "PREROUTING", "-i", iface, *tag], ["mangle", "POSTROUTING", "-o", iface, *tag]]


def _cut_rule_specs(lab: Lab, link: str):
    for direction in DIRECTIONS:
        role, iface = link_end(link, direction)
        for table, chain, *rest in _cut_rules(iface):
            yield lab.ns(role), table, chain, rest


def cut(lab: Lab, link: str) -> None:
    """Silently drop everything on ``link`` at both ends (idempotent)."""
    for ns, table, chain, rest in _cut_rule_specs(lab, link):
        if not _iptables_has(ns, table, chain, *rest):
            _iptables(ns, "-t", table, "-I", chain, "1", *rest)


def restore(lab: Lab, link: str) -> None:
    """Undo ``cut(link)`` (idempotent)."""
    for ns, table, chain, rest in _cut_rule_specs(lab, link):
        while _iptables_has(ns, table, chain, *rest):
            _iptables(ns, "-t", table, "-D", chain, *rest)
