"""Hold, delay and drop packets from an iptables NFQUEUE, and record what it did (the ground truth).

The kernel here has no netem, so one direction of a link is impaired by an ``-j NFQUEUE`` rule plus this
program, run inside the namespace that owns the rule::

    ip netns exec NS python -m lab.nfq_holder --queue 1 --delay-ms 40 --jitter-ms 5 --loss-pct 3 \
        --stats FILE --seed 7

Each packet is dropped with probability ``loss_pct``; otherwise it is held for ``delay + jitter`` and
accepted. Jitter is uniform in [-jitter, +jitter] by default, or normal with sigma = jitter
(``--jitter-dist normal``); a negative hold is clamped to 0. Packets are released by due time, so jitter
reorders packets, as netem does. One thread, no blocking: ``select`` on the queue's fd and on a signal
wakeup pipe, with the timeout set to the next due packet.

Ground truth in the stats JSON: packets seen/dropped/accepted, the measured hold (callback to verdict) of
every accepted packet (mean/median/min/max), how late releases were against their due time
(``late_ms``: scheduling slack of this machine), kernel-side queue drops, and for ICMP echo packets a list of
``[icmp_id, seq, icmp_type, hold_ms or null, dropped]``. Stats are written when bound (``ready``), every
``--stats-interval`` seconds without the per-packet parts, in full on SIGUSR1 (``generation`` increases)
and at exit. SIGTERM/SIGINT: keep releasing held packets until none is left (the caller removes the iptables
rule first), then write the final stats and exit.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import select
import signal
import socket
import statistics
import struct
import time
from array import array
from pathlib import Path

from netfilterqueue import NetfilterQueue

ICMP_ECHO_TYPES = (0, 8)  # reply, request
MAX_ICMP_RECORDS = 200_000
QUEUE_MAX_LEN = 65_536  # held packets count against the kernel queue; keep room for delay * rate
COPY_RANGE = 128  # headers only: the verdict keeps the kernel's full packet


def icmp_echo_key(payload: bytes) -> tuple[int, int, int] | None:
    """Return (icmp id, seq, type) when ``payload`` is an IPv4 ICMP echo request/reply, else None."""
    if len(payload) < 20 or payload[0] >> 4 != 4 or payload[9] != 1:
        return None
    ihl = (payload[0] & 0x0F) * 4
    if len(payload) < ihl + 8:
        return None
    icmp_type = payload[ihl]
    if icmp_type not in ICMP_ECHO_TYPES:
        return None
    ident, seq = struct.unpack_from("!HH", payload, ihl + 4)
    return ident, seq, icmp_type


def kernel_queue_counters(queue_num: int) -> dict[str, int]:
    """Return this namespace's kernel drops for the queue (full queue, failed delivery to userspace)."""
    try:
        lines = Path("/proc/net/netfilter/nfnetlink_queue").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        f = line.split()
        if f and int(f[0]) == queue_num:
            return {"queue_total": int(f[2]), "queue_dropped": int(f[5]), "user_dropped": int(f[6])}
    return {}


class Holder:
    """The packet-holding state machine: decide on arrival, release by due time, count everything."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.heap: list[tuple[float, int, object, float, int]] = []  # due, order, packet, arrival, icmp index
        self.order = 0
        self.seen = self.dropped = self.accepted = 0
        self.kernel_stamped = 0  # packets whose arrival is the kernel's timestamp
        self.holds_ms = array("d")
        self.late_ms_sum = self.late_ms_max = 0.0  # release after the due time: scheduling slack on this box
        self.icmp: list[list] = []
        self.generation = 0
        self.started = time.time()

    def draw_hold_s(self) -> float:
        delay, jitter = self.args.delay_ms, self.args.jitter_ms
        if jitter <= 0:
            hold = delay
        elif self.args.jitter_dist == "normal":
            hold = self.rng.gauss(delay, jitter)
        else:
            hold = self.rng.uniform(delay - jitter, delay + jitter)
        return max(hold, 0.0) / 1000.0

    def arrival(self, pkt) -> float:
        """Return when the packet reached the queue, on the perf_counter clock.

        The kernel's receive timestamp (when it has one) also counts the time the packet waited in the
        queue for this process to be scheduled, which grows with machine load; without one, now.
        """
        now, wall = time.perf_counter(), time.time()
        waited = wall - pkt.get_timestamp()
        if 0.0 <= waited < 1.0:
            self.kernel_stamped += 1
            return now - waited
        return now

    def on_packet(self, pkt) -> None:
        now = self.arrival(pkt)
        self.seen += 1
        key = icmp_echo_key(pkt.get_payload())
        icmp_index = -1
        if key is not None and len(self.icmp) < MAX_ICMP_RECORDS:
            icmp_index = len(self.icmp)
            self.icmp.append([key[0], key[1], key[2], None, False])
        # Draw loss first, then hold, for every packet: the sequence of draws depends only on the seed.
        lose = self.rng.random() * 100.0 < self.args.loss_pct
        hold_s = self.draw_hold_s()
        if lose:
            pkt.drop()
            self.dropped += 1
            if icmp_index >= 0:
                self.icmp[icmp_index][4] = True
            return
        if hold_s <= 0:
            self.release(pkt, now, icmp_index)
            return
        self.order += 1
        heapq.heappush(self.heap, (now + hold_s, self.order, pkt, now, icmp_index))

    def release(self, pkt, arrival: float, icmp_index: int) -> None:
        pkt.accept()
        hold_ms = (time.perf_counter() - arrival) * 1000.0
        self.accepted += 1
        self.holds_ms.append(hold_ms)
        if icmp_index >= 0:
            self.icmp[icmp_index][3] = round(hold_ms, 4)

    def release_due(self) -> None:
        now = time.perf_counter()
        while self.heap and self.heap[0][0] <= now:
            due, _, pkt, arrival, icmp_index = heapq.heappop(self.heap)
            late_ms = (now - due) * 1000.0
            self.late_ms_sum += late_ms
            self.late_ms_max = max(self.late_ms_max, late_ms)
            self.release(pkt, arrival, icmp_index)

    def next_timeout(self, default_s: float) -> float:
        if not self.heap:
            return default_s
        return min(default_s, max(self.heap[0][0] - time.perf_counter(), 0.0))

    def snapshot(self, full: bool) -> dict:
        holds = self.holds_ms
        hold = {"count": len(holds)}
        if holds:
            hold.update(mean=math.fsum(holds) / len(holds), min=min(holds), max=max(holds))
            if full:
                hold["median"] = statistics.median(holds)
        a = self.args
        out = {
            "ready": True, "pid": os.getpid(), "queue": a.queue, "generation": self.generation, "full": full,
            "config": {"delay_ms": a.delay_ms, "jitter_ms": a.jitter_ms, "jitter_dist": a.jitter_dist,
                       "loss_pct": a.loss_pct, "seed": a.seed},
            "uptime_s": time.time() - self.started,
            "seen": self.seen, "dropped": self.dropped, "accepted": self.accepted, "held_now": len(self.heap),
            "kernel_stamped": self.kernel_stamped,
            "hold_ms": hold,
            "late_ms": {"mean": self.late_ms_sum / len(holds) if holds else 0.0, "max": self.late_ms_max},
            "kernel": kernel_queue_counters(a.queue),
        }
        if full:
            out["icmp"] = self.icmp
            out["icmp_truncated"] = len(self.icmp) >= MAX_ICMP_RECORDS
        return out

    def write_stats(self, full: bool) -> None:
        if full:
            self.generation += 1
        path = Path(self.args.stats)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot(full)))
        os.replace(tmp, path)  # readers never see a half-written file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lab.nfq_holder", description=__doc__.splitlines()[0])
    p.add_argument("--queue", type=int, required=True, help="NFQUEUE number to bind")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--jitter-dist", choices=("uniform", "normal"), default="uniform")
    p.add_argument("--loss-pct", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stats", required=True, help="JSON stats file (written atomically)")
    p.add_argument("--stats-interval", type=float, default=1.0, help="seconds between light stats writes")
    args = p.parse_args(argv)
    if args.delay_ms < 0 or args.jitter_ms < 0 or not 0 <= args.loss_pct <= 100:
        p.error("delay and jitter must be >= 0 and loss-pct within 0..100")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    holder = Holder(args)
    flags = {"stop": False, "dump": False}

    # Signals only set flags; the wakeup socket makes select return at once.
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, lambda *_: flags.update(stop=True))
    signal.signal(signal.SIGINT, lambda *_: flags.update(stop=True))
    signal.signal(signal.SIGUSR1, lambda *_: flags.update(dump=True))

    nfq = NetfilterQueue()
    nfq.bind(args.queue, holder.on_packet, max_len=QUEUE_MAX_LEN, range=COPY_RANGE)
    fd = nfq.get_fd()
    holder.write_stats(full=True)
    next_light = time.monotonic() + args.stats_interval
    stop_deadline = None
    try:
        while True:
            readable, _, _ = select.select([fd, wake_r], [], [], holder.next_timeout(args.stats_interval))
            if wake_r in readable:
                while True:
                    try:
                        if not wake_r.recv(64):
                            break
                    except BlockingIOError:
                        break
            if fd in readable:
                nfq.run(block=False)
            holder.release_due()
            if flags["dump"]:
                flags["dump"] = False
                holder.write_stats(full=True)
            if time.monotonic() >= next_light:
                holder.write_stats(full=False)
                next_light = time.monotonic() + args.stats_interval
            if flags["stop"]:
                if stop_deadline is None:
                    stop_deadline = time.monotonic() + (args.delay_ms + 4 * args.jitter_ms) / 1000 + 1.0
                if not holder.heap or time.monotonic() > stop_deadline:
                    break
    finally:
        for _, _, pkt, arrival, icmp_index in holder.heap:  # only after the deadline: let them through
            holder.release(pkt, arrival, icmp_index)
        holder.heap.clear()
        nfq.unbind()
        holder.write_stats(full=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
