"""The icmp probe on loopback (127.0.0.1, ::1) and in network namespaces made here (silence, rejects, no route,
ping sockets, an unprivileged user), plus the pure statistics."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from probes import icmp
from probes.base import Line, LineConfig, ProbeContext
from core.measurement import Measurement

from probe_helpers import make_expected, make_strip

ROOT = Path(__file__).resolve().parents[3]
TIMING = {"duration_ms", "rtt_ms", "rtt_avg_ms", "rtt_min_ms", "rtt_max_ms", "jitter_ms"}
strip = make_strip(TIMING)
expected = make_expected("internet", "icmp")
FAST = {"count": 5, "echo_interval": 0.05, "echo_timeout": 0.5, "timeout": 2}
IS_ROOT = os.geteuid() == 0 and shutil.which("ip") is not None
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (raw sockets, network namespaces)")


def counts(sent: int, received: int) -> dict:
    """Return the count fields of a burst."""
    return {"sent": float(sent), "received": float(received), "loss_pct": 100.0 * (sent - received) / sent}


def assert_sane_rtts(fields: dict, ceiling_ms: float = 20.0) -> None:
    """Check the RTT fields of a loopback run: present, ordered, small, jitter bounded by the spread."""
    lo, mid, avg, hi = (fields[k] for k in ("rtt_min_ms", "rtt_ms", "rtt_avg_ms", "rtt_max_ms"))
    assert 0 < lo <= mid <= hi < ceiling_ms
    assert lo <= avg <= hi
    assert 0 <= fields["jitter_ms"] <= hi - lo


async def run(ctx_line: Line | None = None, all_lines: dict | None = None, **keys) -> Measurement:
    """Run the icmp probe in this process (target name `t`)."""
    config = icmp.Config(name="t", **{**FAST, **keys})
    ctx = ProbeContext(service="internet", target=config, line=ctx_line, all_lines=all_lines or {})
    return await icmp.probe(config, ctx)


# --- statistics and config: no network --------------------------------------------------------------------


def test_echo_stats_on_a_known_list() -> None:
    """Median, mean, min, max, loss, and jitter over consecutive *answered* echoes in send order."""
    fields = icmp.echo_stats([10.0, None, 12.0, 11.0, None, None, 15.0])
    assert fields == {
        "sent": 7.0,
        "received": 4.0,
        "loss_pct": pytest.approx(300 / 7),
        "rtt_ms": 11.5,
        "rtt_avg_ms": 12.0,
        "rtt_min_ms": 10.0,
        "rtt_max_ms": 15.0,
        "jitter_ms": pytest.approx((2 + 1 + 4) / 3),
    }


def test_echo_stats_without_answers_has_no_rtt_fields() -> None:
    """Nothing answered: loss 100 and no RTT or jitter field at all (never 0)."""
    assert icmp.echo_stats([None, None, None]) == {"sent": 3.0, "received": 0.0, "loss_pct": 100.0}


def test_echo_stats_one_answer_has_no_jitter() -> None:
    """Jitter needs two answers."""
    fields = icmp.echo_stats([None, 3.0])
    assert "jitter_ms" not in fields and fields["rtt_ms"] == 3.0 and fields["loss_pct"] == 50.0


def test_config_defaults() -> None:
    """Ten echoes 0.2 s apart, 2 s each, 56 bytes, socket kind chosen automatically."""
    config = icmp.Config(name="t", host="ioffice.example.vn")
    assert (config.count, config.echo_interval, config.echo_timeout) == (10, 0.2, 2.0)
    assert (config.payload_size, config.privileged, config.timeout) == (56, "auto", 5.0)


@pytest.mark.parametrize(
    "keys",
    [
        {"count": 30},  # 29 x 0.2 + 2 = 7.8 s > 5 s
        {"count": 10, "echo_interval": "1s"},
        {"echo_timeout": "6s"},
        {"count": 0},
        {"payload_size": 70000},
        {"privileged": "maybe"},
        {"echo_interval": "1ms"},
        {"unknown": 1},
    ],
)
def test_config_rejects(keys: dict) -> None:
    """A burst longer than the timeout, out-of-range numbers, a malformed host or unknown keys are errors."""
    with pytest.raises(ValidationError):
        icmp.Config(name="t", host="127.0.0.1", **keys)


@pytest.mark.parametrize("host", ["bad host", "", "a;b"])
def test_config_rejects_malformed_host(host: str) -> None:
    """A host with spaces or shell characters is a config error."""
    with pytest.raises(ValidationError):
        icmp.Config(name="t", host=host)


def test_config_error_explains_the_budget() -> None:
    """The error says how long the burst takes and what to change."""
    with pytest.raises(ValidationError, match=r"take 7\.8s: more than the timeout 5s"):
        icmp.Config(name="t", host="127.0.0.1", count=30)


# --- the burst's waiting, with a transport that never answers (no network, no root) ---------------------------


class CountingSelector(selectors.DefaultSelector):
    """The event loop's selector, counting its select() calls: one per loop iteration."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def select(self, timeout=None):
        self.calls += 1
        return super().select(timeout)


class SilentTransport:
    """An EchoTransport over a dead line: every echo leaves, nothing comes back; answers only what `late` says."""

    local_address = "192.0.2.10"

    def __init__(self, run: icmp.EchoRun, late: dict[int, float] | None = None) -> None:
        self.run, self.late, self.sent = run, late or {}, []

    def send(self, seq: int) -> None:
        self.sent.append(seq)
        if seq in self.late:  # a reply after `late[seq]` seconds, reported with that RTT
            delay = self.late[seq]
            asyncio.get_running_loop().call_later(delay, self.run.reply, seq, delay * 1000.0)

    def close(self) -> None:
        pass


def run_counted(coro_factory) -> tuple[object, int, float, float]:
    """Run a coroutine on a fresh loop; return (result, loop iterations, CPU s, wall s)."""
    selector = CountingSelector()
    loop = asyncio.SelectorEventLoop(selector)
    try:
        cpu, wall = time.process_time(), time.monotonic()
        result = loop.run_until_complete(coro_factory())
        return result, selector.calls, time.process_time() - cpu, time.monotonic() - wall
    finally:
        loop.close()


def test_unanswered_burst_sleeps_between_expiries() -> None:
    """No reply at all: the wait wakes once per echo expiry, not in a loop, and ends at the last expiry."""
    config = icmp.Config(name="t", host="192.0.2.1", count=5, echo_interval=0.1, echo_timeout=0.3, timeout=2)

    async def burst() -> icmp.EchoRun:
        run = icmp.EchoRun(config.count)  # no reply comes: lateness plays no part
        transport = SilentTransport(run)
        await icmp.run_burst(transport, run, config, time.monotonic() + 2)
        assert transport.sent == [0, 1, 2, 3, 4]
        return run

    run, iterations, cpu, wall = run_counted(burst)
    assert run.rtts == [None] * 5 and run.errors == {}
    assert 0.7 <= wall < 1.0  # last echo sent at 0.4 s, expired at 0.7 s; the deadline (2 s) not awaited
    # 5 sleeps between sends + 5 expiries (+ loop start-up): the spinning version made tens of thousands.
    assert iterations <= 20, iterations
    assert cpu < 0.1, cpu


def test_late_reply_is_a_loss_and_ends_nothing_early() -> None:
    """A reply later than echo_timeout counts as lost even while other echoes are still awaited."""
    config = icmp.Config(name="t", host="192.0.2.1", count=3, echo_interval=0.1, echo_timeout=0.3, timeout=2)

    async def burst() -> icmp.EchoRun:
        run = icmp.EchoRun(config.count, config.echo_timeout)
        # echo 0 answered after 0.35 s (late; echo 2 is still awaited then), echo 1 after 0.05 s.
        await icmp.run_burst(SilentTransport(run, late={0: 0.35, 1: 0.05}), run, config, time.monotonic() + 2)
        return run

    run, iterations, _cpu, wall = run_counted(burst)
    assert run.rtts == [None, pytest.approx(50.0), None]
    assert icmp.echo_stats(run.rtts) == {"sent": 3.0, "received": 1.0, "loss_pct": pytest.approx(200 / 3),
                                         "rtt_ms": 50.0, "rtt_avg_ms": 50.0, "rtt_min_ms": 50.0, "rtt_max_ms": 50.0}
    assert 0.5 <= wall < 0.8  # echo 2's expiry (0.2 + 0.3 s) ends the burst
    assert iterations <= 20, iterations


def test_deadline_ends_the_wait() -> None:
    """The probe's deadline before the echoes expire: the wait ends at the deadline, without spinning."""
    config = icmp.Config(name="t", host="192.0.2.1", count=2, echo_interval=0.05, echo_timeout=1.0, timeout=2)

    async def burst() -> icmp.EchoRun:
        run = icmp.EchoRun(config.count)
        await icmp.run_burst(SilentTransport(run), run, config, time.monotonic() + 0.3)
        return run

    run, iterations, _cpu, wall = run_counted(burst)
    assert run.sent == 2 and run.rtts == [None, None]
    assert 0.3 <= wall < 0.6  # the deadline, not the expiries (1 s)
    assert iterations <= 10, iterations


# --- loopback in this namespace (raw sockets: root) ---------------------------------------------------------


@needs_root
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("privileged", ["auto", True])
async def test_loopback_answers(host: str, privileged) -> None:
    """Every echo answered: loss 0, sane RTT fields, no dns_ms for a literal."""
    m = await run(host=host, privileged=privileged)
    assert strip(m) == expected("ok", counts(5, 5))
    assert_sane_rtts(m.fields)


@needs_root
async def test_payload_sizes() -> None:
    """An empty payload and a large one are both echoed and matched."""
    for size in (0, 1400, 9000):
        m = await run(host="127.0.0.1", privileged=True, payload_size=size, count=2)
        assert strip(m) == expected("ok", counts(2, 2)), size


@needs_root
async def test_concurrent_raw_probes_do_not_take_each_others_replies() -> None:
    """Raw sockets see every reply: each burst must count exactly its own."""
    a, b = await asyncio.gather(
        run(host="127.0.0.1", privileged=True, count=20, echo_interval=0.01),
        run(host="127.0.0.1", privileged=True, count=20, echo_interval=0.01),
    )
    assert strip(a) == strip(b) == expected("ok", counts(20, 20))


@needs_root
async def test_busy_event_loop_does_not_inflate_rtt() -> None:
    """Kernel receive timestamps: a loop blocked for 30 ms at a time still measures loopback in microseconds."""

    async def hog() -> None:
        for _ in range(12):
            time.sleep(0.03)  # blocks the loop on purpose
            await asyncio.sleep(0)

    m, _ = await asyncio.gather(run(host="127.0.0.1", privileged=True, count=8, echo_interval=0.02), hog())
    assert strip(m) == expected("ok", counts(8, 8))
    assert m.fields["rtt_max_ms"] < 5.0


@needs_root
async def test_source_pinning_and_line_identification() -> None:
    """Pinned to a source address the run carries the line's name; unpinned, the kernel's pick identifies it."""
    backup = Line("backup", LineConfig(source="127.0.0.2"))
    m = await run(ctx_line=backup, host="127.0.0.1", privileged=True)
    assert strip(m) == expected("ok", counts(5, 5), line="backup")
    primary = Line("primary", LineConfig(source="127.0.0.1"))
    m = await run(all_lines={"primary": primary}, host="127.0.0.1", privileged=True, count=2)
    assert strip(m) == expected("ok", counts(2, 2), line="primary")


@needs_root
async def test_source_address_not_on_this_pc() -> None:
    """A line whose source address this PC lacks is unreachable, with loss 100 and nothing sent."""
    line = Line("backup", LineConfig(source="::2"))
    m = await run(ctx_line=line, host="::1", privileged=True)
    assert strip(m) == expected(
        "unreachable",
        {"sent": 0.0, "received": 0.0, "loss_pct": 100.0},
        "line backup: this PC does not have the address ::2 (Cannot assign requested address)",
        line="backup",
    )


async def test_literal_of_an_excluded_family() -> None:
    """An IPv4 literal under `ip_family: ipv6` is refused before any socket is opened."""
    m = await run(host="127.0.0.1", ip_family="ipv6")
    assert strip(m) == expected(
        "unreachable", {}, "127.0.0.1 has no address that ip_family/the line's source address allows"
    )


# --- inside network namespaces made here -------------------------------------------------------------------

CHILD = """
import asyncio, json, sys
from probes import icmp
from probes.base import ProbeContext
config = icmp.Config.model_validate(json.loads(sys.argv[1]))
m = asyncio.run(icmp.probe(config, ProbeContext(service="internet", target=config)))
print(json.dumps(m.to_dict()))
"""


@pytest.fixture
def netns():
    """Yield a fresh network namespace (lo up, ping sockets allowed for every group); delete it after."""
    if not IS_ROOT:
        pytest.skip("needs root to create a network namespace")
    name = f"icmpt-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ns(name, "ip", "link", "set", "lo", "up")
        ns(name, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def ns(name: str, *argv: str) -> None:
    """Run a command inside namespace `name`."""
    subprocess.run(["ip", "netns", "exec", name, *argv], check=True, capture_output=True)


def run_in(name: str, user: str | None = None, **keys) -> dict:
    """Run the probe in a child process inside namespace `name` (as `user` if given); return its stripped dict."""
    prefix = ["setpriv", "--reuid", user, "--regid", "nogroup", "--clear-groups"] if user else []
    argv = ["ip", "netns", "exec", name, *prefix, sys.executable, "-c", CHILD, json.dumps({"name": "t", **FAST, **keys})]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    fields = out["fields"]
    if "rtt_ms" in fields:
        assert_sane_rtts(fields)
    return strip(out)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_ping_sockets_work(netns: str, host: str) -> None:
    """privileged: false (SOCK_DGRAM) works when ping_group_range allows it."""
    assert run_in(netns, host=host, privileged=False) == expected("ok", counts(5, 5))


def test_unprivileged_user_uses_ping_sockets(netns: str) -> None:
    """As nobody, `auto` finds the ping socket."""
    assert run_in(netns, user="nobody", host="::1") == expected("ok", counts(5, 5))


def test_permission_denied_without_either(netns: str) -> None:
    """Neither CAP_NET_RAW nor ping_group_range: permission_denied saying what is needed."""
    ns(netns, "sysctl", "-qw", "net.ipv4.ping_group_range=1 0")
    assert run_in(netns, user="nobody", host="127.0.0.1") == expected(
        "permission_denied", {}, "icmp needs CAP_NET_RAW or net.ipv4.ping_group_range"
    )


def test_permission_denied_names_the_chosen_socket(netns: str) -> None:
    """privileged: true/false say which privilege that choice needs."""
    assert run_in(netns, user="nobody", host="::1", privileged=True)["detail"] == (
        "icmp with privileged: true needs CAP_NET_RAW (run as root or give the agent that capability)"
    )
    ns(netns, "sysctl", "-qw", "net.ipv4.ping_group_range=1 0")
    assert run_in(netns, user="nobody", host="::1", privileged=False) == expected(
        "permission_denied", {}, "icmp with privileged: false needs net.ipv4.ping_group_range to include group 65534"
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("privileged", [True, False])
def test_silence_is_timeout(netns: str, host: str, privileged: bool) -> None:
    """A host that ignores echoes: timeout, loss 100, no RTT field."""
    ns(netns, "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1", "net.ipv6.icmp.echo_ignore_all=1")
    assert run_in(netns, host=host, privileged=privileged) == expected(
        "timeout", counts(5, 0), f"no echo reply from {host} (5 sent)"
    )


@pytest.mark.skipif(shutil.which("iptables") is None, reason="needs iptables")
@pytest.mark.parametrize("privileged", [True, False])
def test_icmp_unreachable_is_unreachable(netns: str, privileged: bool) -> None:
    """An ICMP host/address-unreachable about our echoes (raw and ping sockets, v4 and v6) gives unreachable."""
    ns(netns, "iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request", "-d", "127.0.0.3",
       "-j", "REJECT", "--reject-with", "icmp-host-unreachable")  # fmt: skip
    ns(netns, "ip6tables", "-A", "INPUT", "-p", "icmpv6", "--icmpv6-type", "echo-request",
       "-j", "REJECT", "--reject-with", "icmp6-addr-unreachable")  # fmt: skip
    assert run_in(netns, host="127.0.0.3", privileged=privileged) == expected(
        "unreachable", counts(5, 0), "127.0.0.3: host unreachable (reported by 127.0.0.3)"
    )
    assert run_in(netns, host="::1", privileged=privileged) == expected(
        "unreachable", counts(5, 0), "::1: address unreachable (reported by ::1)"
    )


def test_no_route_is_unreachable(netns: str) -> None:
    """The kernel has no route (a line that is down): unreachable at once, loss 100, nothing sent."""
    ns(netns, "ip", "route", "add", "unreachable", "192.0.2.0/24")  # inside the namespace only: nothing leaves
    assert run_in(netns, host="192.0.2.1") == expected(
        "unreachable", {"sent": 0.0, "received": 0.0, "loss_pct": 100.0}, "no route: No route to host"
    )


DEAD_LINE_CHILD = """
import asyncio, json, selectors, sys, time
from probes import icmp
from probes.base import ProbeContext

class CountingSelector(selectors.DefaultSelector):
    calls = 0
    def select(self, timeout=None):
        CountingSelector.calls += 1
        return super().select(timeout)

def measure(keys):
    config = icmp.Config.model_validate(keys)
    loop = asyncio.SelectorEventLoop(CountingSelector())
    try:
        calls, cpu = CountingSelector.calls, time.process_time()
        m = loop.run_until_complete(icmp.probe(config, ProbeContext(service="internet", target=config)))
        return {"cpu": time.process_time() - cpu, "iterations": CountingSelector.calls - calls, "m": m.to_dict()}
    finally:
        loop.close()

base, dead, healthy = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
measure({**base, "host": healthy})  # warm-up: first-run costs (imports, socket set-up) are not the wait loop's
print(json.dumps({"dead": measure({**base, "host": dead}), "healthy": measure({**base, "host": healthy})}))
"""


@pytest.mark.parametrize(("dead", "healthy"), [("192.0.2.2", "127.0.0.1"), ("2001:db8:dead::2", "::1")])
@pytest.mark.parametrize("privileged", [True, False])
def test_dead_line_costs_no_more_cpu_than_a_healthy_one(netns: str, dead: str, healthy: str, privileged: bool) -> None:
    """A line that silently drops everything: timeout with loss 100, at about a healthy run's CPU and loop turns.

    The dead line is a veth pair in a namespace made here: echoes leave dead0 for a MAC address nobody has (a
    static neighbour entry, so no ARP/ND failure turns into an ICMP error), and the far end drops them silently.
    The old wait loop kept expired echoes and polled with a zero timeout until the last one expired.
    """
    ns(netns, "ip", "link", "add", "dead0", "type", "veth", "peer", "name", "dead1")
    ns(netns, "ip", "link", "set", "dead1", "up")
    ns(netns, "ip", "link", "set", "dead0", "up")
    ns(netns, "ip", "addr", "add", "192.0.2.1/24", "dev", "dead0")
    ns(netns, "ip", "addr", "add", "2001:db8:dead::1/64", "dev", "dead0", "nodad")
    for address in ("192.0.2.2", "2001:db8:dead::2"):
        ns(netns, "ip", "neigh", "replace", address, "lladdr", "02:00:00:00:de:ad", "dev", "dead0", "nud", "permanent")
    # 5 echoes 0.2 s apart, 0.5 s each: the old loop spun from the first expiry (0.5 s) to the last (1.3 s).
    keys = {"name": "t", "count": 5, "echo_interval": 0.2, "echo_timeout": 0.5, "timeout": 2,
            "privileged": privileged}
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", DEAD_LINE_CHILD, json.dumps(keys), dead, healthy]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert strip(out["dead"]["m"]) == expected("timeout", counts(5, 0), f"no echo reply from {dead} (5 sent)")
    assert strip(out["healthy"]["m"]) == expected("ok", counts(5, 5))
    dead_run, healthy_run = out["dead"], out["healthy"]
    # A healthy run: ~10 loop turns (5 sends, 5 replies), a few ms of CPU. Spinning: tens of thousands, ~0.5 s.
    assert dead_run["iterations"] <= healthy_run["iterations"] + 10, (dead_run, healthy_run)
    assert dead_run["cpu"] <= healthy_run["cpu"] + 0.05, (dead_run, healthy_run)
