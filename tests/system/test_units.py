"""docs/install.md's promises about the systemd units, checked under a real systemd (PID 1 of a container).

The fixture (conftest.py) boots the container once and installs the agent and the collector as the doc tells an
operator; the tests run in file order and share it: privileges, the state directory, a clean stop, a SIGKILL, a
reboot, and uninstall last.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from lab.container import NSPAWN_REBOOTED

from system.harness import (AGENT_UNIT, AGENT_YAML, COLLECTOR_PORT_INSIDE, COLLECTOR_STATE, COLLECTOR_UNIT, CONFIG_DIR,
                       SPOOL, STATE, System)

pytestmark = pytest.mark.timeout(900)  # the first test also builds the tree (~45 s) when the cache has none

CAP_FIELDS = ("CapEff", "CapPrm", "CapBnd", "CapAmb")
KERNEL = tuple(int(n) for n in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())
LINES = ("primary", "backup", "marked")
PERMISSION_DENIED = 16  # docs/metrics.md


def _mounts(system: System, pid: int) -> dict[str, set[str]]:
    """Mount point → its per-mount options, as process `pid` sees its file system (/proc/<pid>/mountinfo)."""
    out = {}
    for line in system.run("cat", f"/proc/{pid}/mountinfo").stdout.splitlines():
        fields = line.split()
        out[fields[4]] = set(fields[5].split(","))
    return out


def _open_files_limit(system: System, pid: int) -> tuple[int, int]:
    for line in system.run("cat", f"/proc/{pid}/limits").stdout.splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open-files limit for {pid}")


def _rounds(system: System, since: float, rounds: int, timeout: float = 40.0) -> dict[tuple[str, str, str], list]:
    """(metric, target, line) → the values of the probe rounds after `since` in the host's VictoriaMetrics, once
    each of the 2 targets × 3 lines has at least `rounds` of them."""
    match = '{__name__=~"probe_up|probe_result_code", target=~"collector-(tcp|icmp)"}'
    deadline = time.monotonic() + timeout
    out: dict[tuple[str, str, str], list] = {}
    while time.monotonic() < deadline:
        out = {}
        for s in system.vm.export(match):
            m = s["metric"]
            assert m["agent"] == "quay-01", m
            out[(m["__name__"], m["target"], m["line"])] = [
                v for t, v in zip(s["timestamps"], s["values"]) if t >= since * 1000]
        if len(out) == 2 * 2 * len(LINES) and all(len(v) >= rounds for v in out.values()):
            return out
        time.sleep(0.5)
    raise AssertionError(f"fewer than {rounds} rounds since {since:.1f} of every target and line: {out}")


def test_the_agent_runs_as_cmon_with_only_cap_net_raw(system):
    pid = system.main_pid(AGENT_UNIT)
    name, _, uid, gid, _, _, shell = system.user("cmon")
    status = system.status(pid)
    assert status["Uid"].split() == [uid] * 4 and status["Gid"].split() == [gid] * 4  # real, effective, saved, fs
    assert int(uid) < 1000 and shell == "/usr/sbin/nologin"  # the system user install created, no login shell
    caps = system.caps(pid)
    for field in CAP_FIELDS:
        assert caps[field] == {"CAP_NET_RAW"}, (field, caps)
    assert status["NoNewPrivs"] == "1"
    # the decoding can tell more: the container's own init holds many capabilities
    assert {"CAP_SYS_ADMIN", "CAP_NET_RAW", "CAP_SETUID"} <= system.caps(1)["CapEff"]


def _start_if_down(system: System) -> None:
    """After a failed check, leave the agent running for the tests that follow."""
    if system.show(AGENT_UNIT, "ActiveState")["ActiveState"] not in ("active", "activating"):
        system.run("systemctl", "start", AGENT_UNIT, check=False)


def _expect(rounds: dict[tuple[str, str, str], list], up: dict[str, bool]) -> None:
    """Every round of both targets over each line was up (result_code 0), or refused (permission_denied)."""
    for (metric, target, line), values in rounds.items():
        if metric == "probe_up":
            expected = 1 if up[line] else 0
        else:
            expected = 0 if up[line] else PERMISSION_DENIED
        assert set(values) == {expected}, (metric, target, line, values)


def test_that_capability_is_what_its_raw_icmp_and_marked_probes_use(system):
    """The container's network namespace gives cmon no ping sockets, so ICMP needs a raw socket (CAP_NET_RAW);
    the `marked` line's SO_MARK needs CAP_NET_RAW too (Linux >= 5.17). Every round of a TCP and an ICMP probe
    over the three lines reached the host's VictoriaMetrics, through the host's collector, up."""
    low, high = map(int, system.run("cat", "/proc/sys/net/ipv4/ping_group_range").stdout.split())
    assert not low <= int(system.user("cmon")[3]) <= high
    _expect(_rounds(system, since=0, rounds=3), {"primary": True, "backup": True, "marked": KERNEL >= (5, 17)})


def test_the_spool_lives_in_the_state_directory_the_only_place_the_agent_can_write(system):
    pid = system.main_pid(AGENT_UNIT)
    assert system.stat(STATE) == "700 cmon:cmon"  # made by systemd (StateDirectory=)
    assert system.stat(SPOOL).split()[1] == "cmon:cmon"
    open_files = system.run("sh", "-c", f"readlink /proc/{pid}/fd/*").stdout.split()
    assert SPOOL in open_files
    # ProtectSystem=strict: in the service's view the whole tree is read-only, its state directory is not
    mounts = _mounts(system, pid)
    assert "ro" in mounts["/"] and "rw" in mounts[STATE]
    assert "/var/lib/commune-monitor" in mounts and "/etc" not in mounts
    # even root, in the service's mount namespace, cannot write beside the config; it can in the state directory
    denied = system.run("nsenter", "-t", str(pid), "-m", "--", "touch", f"{CONFIG_DIR}/probe", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    system.run("nsenter", "-t", str(pid), "-m", "--", "touch", f"{STATE}/probe")
    system.run("rm", f"{STATE}/probe")
    # what install made: docs/install.md's table
    assert system.stat(CONFIG_DIR) == "750 root:cmon"
    assert system.stat(f"/etc/systemd/system/{AGENT_UNIT}") == "644 root:root"
    assert system.stat(f"{CONFIG_DIR}/credential.json") == "600 cmon:cmon"


def test_the_collector_unit_runs_as_cmon_with_only_cap_net_bind_service_and_answers_health(system):
    props = system.show(COLLECTOR_UNIT, "ActiveState", "NRestarts")
    assert props == {"ActiveState": "active", "NRestarts": "0"}, system.journal(COLLECTOR_UNIT)
    pid = system.main_pid(COLLECTOR_UNIT)
    _, _, uid, gid, *_ = system.user("cmon")
    status = system.status(pid)
    assert status["Uid"].split() == [uid] * 4 and status["Gid"].split() == [gid] * 4
    caps = system.caps(pid)
    for field in CAP_FIELDS:
        assert caps[field] == {"CAP_NET_BIND_SERVICE"}, (field, caps)
    assert status["NoNewPrivs"] == "1"
    # port 443 is privileged here: only the capability lets the unprivileged collector listen on it
    assert int(system.run("cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start").stdout) > COLLECTOR_PORT_INSIDE
    assert system.http_inside(f"http://127.0.0.1:{COLLECTOR_PORT_INSIDE}/health") == (200, "OK")
    code, body = system.http_inside(f"http://127.0.0.1:{COLLECTOR_PORT_INSIDE}/api/v1/agents")
    assert code == 200 and json.loads(body)["agents"] == []
    # its state (configs/collector-example.yaml's data_dir) in its state directory, written by the service user
    assert system.stat(COLLECTOR_STATE) == "700 cmon:cmon"
    assert system.stat(f"{COLLECTOR_STATE}/collector.sqlite").split()[1] == "cmon:cmon"
    # LimitNOFILE=65536 as far as this machine allows (the container's own hard limit may be lower: 20,000 here)
    soft, hard = _open_files_limit(system, pid)
    _, init_hard = _open_files_limit(system, 1)
    assert soft == hard >= min(65536, init_hard), (soft, hard, init_hard)
    # a clean stop: exit status 0 well within TimeoutStopSec, then it starts again
    started = time.monotonic()
    system.run("systemctl", "stop", COLLECTOR_UNIT)
    assert time.monotonic() - started < 30
    assert system.show(COLLECTOR_UNIT, "Result", "ExecMainCode", "ExecMainStatus") == {
        "Result": "success", "ExecMainCode": "1", "ExecMainStatus": "0"}
    system.run("systemctl", "start", COLLECTOR_UNIT)
    system.wait_active(COLLECTOR_UNIT, not_pid=pid)
    _wait_inside_health(system)


def _wait_inside_health(system: System, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert system.http_inside(f"http://127.0.0.1:{COLLECTOR_PORT_INSIDE}/health") == (200, "OK")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise AssertionError(f"the collector's /health did not answer: {system.journal(COLLECTOR_UNIT)}") from None
            time.sleep(0.2)


def test_systemctl_stop_is_a_clean_stop_the_collector_hears(system):
    system.wait_row("the agent running", lambda r: r["state"] == "running")
    before = time.time()
    system.run("systemctl", "stop", AGENT_UNIT)  # returns once the process has exited
    took = time.time() - before
    props = system.show(AGENT_UNIT, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    row = system.registry_row()
    _start_if_down(system)
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainCode": "1", "ExecMainStatus": "0"}
    assert took < 30  # exited by itself, far from TimeoutStopSec=60s and its SIGKILL
    assert row is not None and row["state"] == "stopping" and row["stopped_cleanly"] == 1, row
    assert row["last_seen_ms"] >= before * 1000
    system.wait_running_since(before + took)  # started again


def test_a_sigkill_is_restarted_by_systemd(system):
    pid = system.main_pid(AGENT_UNIT)
    restarts = int(system.show(AGENT_UNIT, "NRestarts")["NRestarts"])
    spool_id = system.spool_meta()["spool_id"]
    killed = time.time()
    system.run("kill", "-KILL", str(pid))
    try:
        new = system.wait_active(AGENT_UNIT, not_pid=pid)
    finally:
        _start_if_down(system)
    waited = time.time() - killed
    assert int(system.show(AGENT_UNIT, "NRestarts")["NRestarts"]) == restarts + 1
    assert waited >= 4.0  # RestartSec=5s
    assert "status=9/KILL" in system.journal(AGENT_UNIT, 50)
    system.wait_running_since(killed)
    assert system.main_pid(AGENT_UNIT) == new
    assert system.spool_meta()["spool_id"] == spool_id  # the same spool goes on


DROP_IN = f"/etc/systemd/system/{AGENT_UNIT}.d/override.conf"
SYSCTL = "/etc/sysctl.d/60-commune-monitor.conf"


def test_without_any_capability_ping_sockets_and_source_pinning_work_and_fwmark_is_refused(system):
    """docs/install.md, "Without any capability": the cmon group in ping_group_range, both capability lines
    emptied in a drop-in; then ICMP goes through ping sockets, source and interface pinning work, fwmark does
    not (permission_denied)."""
    gid = system.user("cmon")[3]
    try:
        system.box.write(SYSCTL, f"net.ipv4.ping_group_range = {gid} {gid}\n")
        # as the doc says; in a container only the net.* keys may be set, so it exits 1 for the others
        applied = system.run("sysctl", "--system", check=False).stdout
        assert f"net.ipv4.ping_group_range = {gid} {gid}" in applied, applied
        assert system.run("cat", "/proc/sys/net/ipv4/ping_group_range").stdout.split() == [gid, gid]
        system.box.write(DROP_IN, "[Service]\nAmbientCapabilities=\nCapabilityBoundingSet=\n")
        system.run("systemctl", "daemon-reload")
        since = time.time()
        system.run("systemctl", "restart", AGENT_UNIT)
        pid = system.wait_active(AGENT_UNIT)
        caps = system.caps(pid)
        assert all(caps[field] == set() for field in CAP_FIELDS), caps
        # SO_BINDTODEVICE of a socket not yet bound to a device needs no privilege since Linux 5.7
        _expect(_rounds(system, since=since + 1, rounds=2),
                {"primary": KERNEL >= (5, 7), "backup": True, "marked": False})
    finally:
        system.run("rm", "-f", DROP_IN, SYSCTL)
        system.run("sysctl", "-w", "net.ipv4.ping_group_range=1 0")
        system.run("systemctl", "daemon-reload")
        restarted = time.time()
        system.run("systemctl", "restart", AGENT_UNIT)
    pid = system.wait_active(AGENT_UNIT)
    assert all(system.caps(pid)[field] == {"CAP_NET_RAW"} for field in CAP_FIELDS)
    system.wait_running_since(restarted)


def test_both_come_back_after_a_reboot_and_the_shutdown_stops_the_agent_cleanly(system):
    meta = system.spool_meta()
    before = time.time()
    assert system.box.shutdown("reboot") == NSPAWN_REBOOTED
    # the agent stopped cleanly at shutdown, and its `stopping` heartbeat reached the (host's) collector
    row = system.registry_row()
    assert row is not None and row["state"] == "stopping" and row["stopped_cleanly"] == 1, row
    assert row["last_seen_ms"] >= before * 1000
    booted = time.time()
    system.box.boot()
    for unit in (AGENT_UNIT, COLLECTOR_UNIT, "victoria-metrics.service"):
        system.wait_active(unit)
        assert system.run("systemctl", "is-enabled", unit).stdout.strip() == "enabled"
    assert system.show(AGENT_UNIT, "NRestarts")["NRestarts"] == "0"  # started at boot, not restarted
    system.wait_running_since(booted)
    assert system.spool_meta()["spool_id"] == meta["spool_id"]  # the same spool goes on
    # probing and shipping again, with its capability: every target over every line, up
    _expect(_rounds(system, since=booted, rounds=1), {"primary": True, "backup": True, "marked": KERNEL >= (5, 17)})
    _wait_inside_health(system)
    assert "state: active, enabled" in system.cmon("service", "status").stdout


def test_uninstall_removes_the_unit_and_keeps_the_spool(system):
    pid = system.main_pid(AGENT_UNIT)
    spool_id = system.spool_meta()["spool_id"]
    before = time.time()
    out = system.cmon("service", "uninstall").stdout
    assert f"removed /etc/systemd/system/{AGENT_UNIT}" in out
    assert f"systemctl disable --now {AGENT_UNIT}" in out  # which also removes the enable link:
    for path in (f"/etc/systemd/system/{AGENT_UNIT}", f"/etc/systemd/system/multi-user.target.wants/{AGENT_UNIT}"):
        assert system.run("test", "-e", path, check=False).returncode == 1
        assert system.run("test", "-L", path, check=False).returncode == 1
    assert system.show(AGENT_UNIT, "LoadState", "ActiveState") == {"LoadState": "not-found", "ActiveState": "inactive"}
    assert system.run("test", "-e", f"/proc/{pid}", check=False).returncode == 1
    # stopped cleanly on the way out (disable --now): the collector heard it
    row = system.registry_row()
    assert row is not None and row["state"] == "stopping" and row["last_seen_ms"] >= before * 1000, row
    # kept: the spool (with what it holds), the config, the credential, the user
    assert system.spool_meta()["spool_id"] == spool_id
    assert system.stat(SPOOL).split()[1] == "cmon:cmon"
    for path in (AGENT_YAML, f"{CONFIG_DIR}/credential.json"):
        assert system.run("test", "-f", path, check=False).returncode == 0
    assert system.user("cmon")[0] == "cmon"
    status = system.cmon("service", "status", check=False)
    assert status.returncode == 1 and "state: not installed" in status.stdout
    # the collector's unit too; its state stays, and the config directory (not empty)
    out = system.cmon("service", "uninstall", "--collector").stdout
    assert f"removed /etc/systemd/system/{COLLECTOR_UNIT}" in out
    assert system.show(COLLECTOR_UNIT, "LoadState")["LoadState"] == "not-found"
    assert system.run("test", "-f", f"{COLLECTOR_STATE}/collector.sqlite", check=False).returncode == 0
    assert system.run("test", "-d", CONFIG_DIR, check=False).returncode == 0
