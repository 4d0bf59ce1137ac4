"""The icmp probe on loopback (127.0.0.1, ::1) and in network namespaces made here (silence, rejects, no route,
ping sockets, an unprivileged user), plus the pure statistics."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from probes import icmp
from probes.base import Line, LineConfig, ProbeContext
from probes.measurement import Measurement

from probe_helpers import make_expected, make_strip

ROOT = Path(__file__).resolve().parents[2]
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
