"""The harness of tests/system: the service units under a real systemd, in a Debian tree booted as a container
(lab/container.py), with everything installed the way docs/install.md tells an operator to, through the `cmon`
command of a virtual environment at /opt/commune-monitor — which the hardened units can see wherever this checkout
lives (under /tmp PrivateTmp=yes would hide it from them, under /home or /root ProtectHome=yes).

That environment runs this checkout's code, not a copy: the checkout is bind-mounted read-only at
/opt/commune-monitor-src and this virtual environment's site-packages (the dependencies) at
/opt/commune-monitor-site; inside, `python3 -m venv /opt/commune-monitor` (the container's Debian Python, the one
this virtual environment is built on) gets a .pth file naming those two directories — plain paths: the editable
install's own .pth finder maps the packages to this host's checkout path — and a `cmon` script, this one's with
the shebang of /opt/commune-monitor/bin/python. `cmon service install` run there writes that interpreter into
ExecStart, as for an operator.

Outside the container (this host): VictoriaMetrics and a real `cmon collector run`, listening on the host end of
a veth whose other end is the container's only network interface — so the agent's clean stop at a reboot can
reach a collector that is not itself being shut down. Inside: the agent's unit, and the collector's unit with
VictoriaMetrics (this host's binary, bind-mounted) as `victoria-metrics.service`, listening on port 443.

One container for the whole module (booting costs seconds, the tree once ~45 s): the tests run in file order
and each leaves the units running, as it found them, except the last (uninstall). Everything — the container's
processes, the overlay mount, the veth, the host's collector and VictoriaMetrics — is stopped in `finally`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import yaml

from lab import container as ct
from lab.victoria import Victoria, available

ROOT = Path(__file__).resolve().parents[2]  # the checkout: bound at BOX_SRC inside the container
VENV = Path(sys.prefix)                   # its virtual environment (this host's `cmon`)
SITE = Path(sysconfig.get_paths()["purelib"])  # its site-packages (the dependencies): bound at BOX_SITE
CMON = VENV / "bin" / "cmon"
VM_BINARY = Path("/usr/bin/victoria-metrics")
BOX_SRC, BOX_SITE = "/opt/commune-monitor-src", "/opt/commune-monitor-site"
BOX_VENV = "/opt/commune-monitor"  # docs/install.md's virtual environment, made inside the container
BOX_PYTHON, BOX_CMON = f"{BOX_VENV}/bin/python", f"{BOX_VENV}/bin/cmon"  # ExecStart= gets BOX_PYTHON


def _subnet(owner: int) -> tuple[str, str]:
    """A /30 of 10.251.0.0/16 chosen by this process's PID: two runs at once (two checkouts) do not collide."""
    index = owner % 16384
    return f"10.251.{index // 64}.{index % 64 * 4 + 1}", f"10.251.{index // 64}.{index % 64 * 4 + 2}"


HOST_ADDR, BOX_ADDR = _subnet(os.getpid())  # the host's end (the collector listens there), the container's
PREFIX = 30
CONFIG_DIR = "/etc/commune-monitor"
AGENT_YAML = f"{CONFIG_DIR}/agent.yaml"
COLLECTOR_YAML = f"{CONFIG_DIR}/collector.yaml"
AGENT_UNIT, COLLECTOR_UNIT = "commune-monitor-agent.service", "commune-monitor-collector.service"
STATE, COLLECTOR_STATE = "/var/lib/commune-monitor", "/var/lib/commune-monitor-collector"
SPOOL = f"{STATE}/spool.db"
PROVINCE, COMMUNE, AGENT_ID = "ha-tinh", "dong-loc", "quay-01"
COLLECTOR_PORT_INSIDE = 443  # only CAP_NET_BIND_SERVICE lets the unprivileged collector listen here
VM_UNIT = """\
# As Debian's victoria-metrics package would run it (the binary is the host's, bind-mounted): the collector's
# unit is ordered after it.
[Unit]
Description=VictoriaMetrics (for the collector's unit)
[Service]
ExecStart=/usr/bin/victoria-metrics -httpListenAddr=127.0.0.1:8428 -storageDataPath=/var/lib/victoria-metrics \
-retentionPeriod=1y -dedup.minScrapeInterval=1ms -loggerLevel=ERROR
StateDirectory=victoria-metrics
[Install]
WantedBy=multi-user.target
"""


def skip_reason() -> str | None:
    reason = ct.unavailable() or available()
    if reason:
        return reason
    if not CMON.exists():
        return f"no `cmon` command at {CMON} (scripts/setup.sh installs it into .venv)"
    if sysconfig.get_paths()["platlib"] != str(SITE):
        return f"the virtual environment has two site-packages ({SITE}, {sysconfig.get_paths()['platlib']})"
    for path in (ROOT, SITE):
        if ":" in str(path) or "," in str(path):
            return f"{path}: a path with ':' or ',' cannot be bind-mounted by systemd-nspawn"
    home = next((line.split("=", 1)[1].strip() for line in (VENV / "pyvenv.cfg").read_text().splitlines()
                 if line.startswith("home")), "")
    if home != "/usr/bin":
        return (f"the virtual environment is built on {home!r}, not Debian's /usr/bin/python3: the container "
                f"({ct.SUITE}) could not run its compiled dependencies")
    return None


class System:
    """The booted container with both units installed, the host's VictoriaMetrics and collector, and checks."""

    def __init__(self, box: ct.Container, vm: Victoria, collector_url: str, views_token: str) -> None:
        self.box = box
        self.vm = vm
        self.collector_url = collector_url
        self.views_token = views_token
        self.timings: dict[str, float] = {}

    # -- inside the container ---------------------------------------------------------------------------------

    def run(self, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess:
        return self.box.run(list(argv), **kwargs)

    def cmon(self, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess:
        """Run /opt/commune-monitor/bin/cmon inside the container (as root, like the operator in docs/install.md)."""
        return self.box.run([BOX_CMON, *argv], **kwargs)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self, unit: str) -> int:
        return int(self.show(unit, "MainPID")["MainPID"])

    def status(self, pid: int) -> dict[str, str]:
        """/proc/<pid>/status of a process in the container."""
        text = self.run("cat", f"/proc/{pid}/status").stdout
        return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}

    def caps(self, pid: int) -> dict[str, set[str]]:
        """CapEff, CapPrm, CapBnd, CapAmb (and CapInh) of a process, decoded by libcap's capsh into names."""
        status = self.status(pid)
        return {field: self.decode_caps(status[field]) for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}

    def decode_caps(self, mask: str) -> set[str]:
        out = self.run("capsh", f"--decode={mask}").stdout.strip()  # "0x...=cap_net_raw,cap_sys_admin"
        names = out.split("=", 1)[1] if "=" in out else ""
        return {name.upper() for name in names.split(",") if name}

    def user(self, name: str) -> list[str]:
        """The container's passwd entry for `name` (name, x, uid, gid, gecos, home, shell)."""
        return self.run("getent", "passwd", name).stdout.strip().split(":")

    def stat(self, path: str) -> str:
        """`mode owner:group` of a path in the container, e.g. `700 cmon:cmon`."""
        return self.run("stat", "-c", "%a %U:%G", path).stdout.strip()

    def wait_active(self, unit: str, *, not_pid: int | None = None, timeout: float = 30.0) -> int:
        """Wait until `unit` is active with a main process (other than `not_pid`); return its PID."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            props = self.show(unit, "ActiveState", "MainPID")
            pid = int(props["MainPID"])
            if props["ActiveState"] == "active" and pid and pid != not_pid:
                return pid
            time.sleep(0.1)
        raise AssertionError(f"{unit} not active within {timeout} s: {self.show(unit, 'ActiveState', 'Result')}; "
                             f"{self.journal(unit)}")

    def journal(self, unit: str, lines: int = 30) -> str:
        return self.run("journalctl", "-u", unit, "-n", str(lines), "--no-pager", check=False).stdout

    def spool_meta(self) -> dict[str, str]:
        """The spool's meta table, read as the service user (root would leave root-owned -wal/-shm files)."""
        code = ("import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                "print(json.dumps({k: str(v) for k, v in c.execute('SELECT key, value FROM meta')}))")
        return json.loads(self.box.run([BOX_PYTHON, "-c", code, SPOOL], user="cmon").stdout)

    def http_inside(self, url: str) -> tuple[int, str]:
        """GET `url` from inside the container (its own network namespace)."""
        code = ("import sys, urllib.request; r = urllib.request.urlopen(sys.argv[1], timeout=5); "
                "print(r.status); print(r.read().decode())")
        out = self.run("python3", "-c", code, url).stdout
        status, _, body = out.partition("\n")
        return int(status), body.strip()

    # -- the host's collector -----------------------------------------------------------------------------------

    def registry_row(self) -> dict | None:
        request = urllib.request.Request(self.collector_url + "/api/v1/agents",
                                         headers={"Authorization": f"Bearer {self.views_token}"})
        try:
            with urllib.request.urlopen(request, timeout=3) as response:
                rows = json.loads(response.read())["agents"]
        except OSError:
            return None
        return next((r for r in rows if r["agent"] == AGENT_ID), None)

    def wait_row(self, what: str, test: Callable[[dict], bool], timeout: float = 30.0) -> dict:
        """Wait until the host collector's registry row for the agent passes `test`; return it."""
        deadline = time.monotonic() + timeout
        row = None
        while time.monotonic() < deadline:
            row = self.registry_row()
            if row is not None and test(row):
                return row
            time.sleep(0.1)
        raise AssertionError(f"the collector never saw {what} within {timeout} s; last row: {row}; "
                             f"{self.journal(AGENT_UNIT)}")

    def wait_running_since(self, t: float, timeout: float = 30.0) -> dict:
        """Wait for a `running` heartbeat sent after time `t` (the agent's start-up heartbeat)."""
        return self.wait_row(f"a running heartbeat after {t:.1f}",
                             lambda r: r["state"] == "running" and r["last_seen_ms"] >= t * 1000, timeout)


def prepare_tree(box: ct.Container, veth: ct.Veth) -> None:
    """The container's network (systemd-networkd: the veth's peer at BOX_ADDR) and VictoriaMetrics' unit."""
    box.write(f"/etc/systemd/network/50-{veth.peer}.network",
              f"[Match]\nName={veth.peer}\n\n[Network]\nAddress={BOX_ADDR}/{PREFIX}\n"
              # IPv4 only: no IPv6 link-local address and no wait for router advertisements at boot
              "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
    subprocess.run(["systemctl", f"--root={box.root}", "enable", "systemd-networkd.service",
                    "systemd-networkd-wait-online.service"], check=True, capture_output=True, text=True)
    box.write("/etc/systemd/system/victoria-metrics.service", VM_UNIT)


def install_venv(box: ct.Container) -> None:
    """docs/install.md's `python3 -m venv /opt/commune-monitor`, inside the booted container; then, instead of
    `pip install`, this checkout and this virtual environment's site-packages (bound at BOX_SRC and BOX_SITE) on its
    path and this `cmon` script (see the module doc)."""
    box.run(["/usr/bin/python3", "-m", "venv", "--without-pip", BOX_VENV])
    site = box.run([BOX_PYTHON, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    box.write(f"{site}/commune-monitor-test.pth", f"{BOX_SRC}\n{BOX_SITE}\n")
    script = CMON.read_text().splitlines(keepends=True)
    assert script[0].startswith("#!"), script[:1]
    box.write(BOX_CMON, f"#!{BOX_PYTHON}\n" + "".join(script[1:]), 0o755)
    # the service user imports this checkout's code (readable through the bind, not the host's copy of a path)
    where = box.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", BOX_PYTHON, "-c",
                     "import cmon, yaml; print(cmon.__file__); print(yaml.__file__)"]).stdout.split()
    assert where == [f"{BOX_SRC}/cmon/__init__.py", f"{BOX_SITE}/yaml/__init__.py"], where


def wait_health(url: str, process: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the host collector exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the host collector did not answer /health: {log.read_text()[-2000:]}")


def agent_config(collector_url: str, interface: str) -> dict:
    """The agent's config: a TCP and an ICMP probe of the host's collector address over three lines, all on the
    veth: `primary` pinned by interface, `backup` by source address, `marked` by a firewall mark."""
    host, port = HOST_ADDR, int(collector_url.rsplit(":", 1)[1])
    return {
        "agent": {"province": PROVINCE, "commune": COMMUNE, "id": AGENT_ID},
        "collector": {"url": collector_url, "allow_http": True, "timeout": "3s"},
        "spool": {"path": SPOOL},
        "schedule": {"jitter": 0, "host_interval": "5s"},
        # docs/lines.md: interface: is SO_BINDTODEVICE, source: a bind() to the address, fwmark: SO_MARK
        # (CAP_NET_RAW or CAP_NET_ADMIN); a mark no rule uses: routed as the others
        "lines": {"primary": {"interface": interface}, "backup": {"source": BOX_ADDR}, "marked": {"fwmark": 7}},
        "services": {
            "dvc": [{"name": "collector-tcp", "probe": "tcp", "host": host, "port": port, "interval": "2s",
                     "timeout": "1s"}],
            "ioffice": [{"name": "collector-icmp", "probe": "icmp", "host": host, "count": 2,
                         "echo_interval": "50ms", "echo_timeout": "500ms", "timeout": "1s", "interval": "2s",
                         "shared": False}],
        },
    }


def install_agent(system: System, host_config: Path, url: str) -> None:
    """docs/install.md, Linux, steps 2–4, word for word where the container allows."""
    assert system.box.veth is not None
    system.run("mkdir", "-p", CONFIG_DIR)
    system.box.write(AGENT_YAML, yaml.safe_dump(agent_config(url, system.box.veth.peer)))
    checked = system.cmon("check-config", AGENT_YAML, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # 3. the service: creates the user, writes the unit, enables and starts it (systemd is PID 1 here)
    installed = system.cmon("service", "install", "-c", AGENT_YAML)
    out = installed.stdout
    assert "created system user cmon" in out and f"systemctl enable --now {AGENT_UNIT}" in out, out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no credential yet" in warnings[0], out  # not enrolled yet: only that
    unit = system.run("cat", f"/etc/systemd/system/{AGENT_UNIT}").stdout  # the interpreter `cmon` ran under
    assert f"\nExecStart={BOX_PYTHON} -m cmon --log-level info agent run -c {AGENT_YAML}\n" in unit, unit
    system.wait_active(AGENT_UNIT)
    # 4. enrollment: the token on stdin; the credential handed to the service user; a restart
    token = subprocess.run([str(CMON), "collector", "token", "create", "-c", str(host_config), "--commune", COMMUNE,
                            "--ttl", "10m"], capture_output=True, text=True, check=True).stdout.strip()
    system.cmon("agent", "enroll", "-c", AGENT_YAML, "--allow-http", input=token + "\n")
    system.run("chown", "cmon:cmon", f"{CONFIG_DIR}/credential.json")
    restarted = time.time()
    system.run("systemctl", "restart", AGENT_UNIT)
    system.wait_running_since(restarted)


def collector_config() -> dict:
    """configs/collector-example.yaml as a province would start from it: its data_dir, database and limits
    kept; plain HTTP on port 443 instead of TLS (no certificates in the container)."""
    data = yaml.safe_load((ROOT / "configs" / "collector-example.yaml").read_text())
    data["listen"] = {"host": "127.0.0.1", "port": COLLECTOR_PORT_INSIDE, "allow_http": True}
    return data


def install_collector(system: System) -> None:
    system.run("systemctl", "enable", "--now", "victoria-metrics.service")
    system.box.write(COLLECTOR_YAML, yaml.safe_dump(collector_config()))
    checked = system.cmon("check-config", COLLECTOR_YAML, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    installed = system.cmon("service", "install", "--collector", "-c", COLLECTOR_YAML)
    assert "warning:" not in installed.stdout, installed.stdout
    system.wait_active(COLLECTOR_UNIT)
