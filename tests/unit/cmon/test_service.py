"""Tests for cmon.service: the systemd units (checked by systemd-analyze), install/uninstall into a temp root,
`cmon service`, and the Windows back-end's logic with pywin32 faked (it is imported only on Windows)."""

from __future__ import annotations

import asyncio
import importlib
import re
import shutil
import stat
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

from cmon import cli
from cmon.service import ServiceError, install, status, uninstall
from cmon.service import systemd

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(not ANALYZE, reason="systemd-analyze missing (Debian package systemd)")
CONFIG = "/etc/commune-monitor/agent.yaml"
AGENT_YAML = """\
agent: {province: ha-tinh, commune: dong-loc, id: quay-01}
collector: {url: "https://collector.example:8443"}
spool: {path: /var/lib/commune-monitor/spool.db}
services:
  dvc:
    - {name: dvc-tcp, probe: tcp, host: 127.0.0.1, port: 443}
"""


class Recorder:
    """A subprocess.run that records every command and runs it."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, command, **kwargs):
        self.commands.append(list(command))
        return subprocess.run(command, **kwargs)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A system tree with empty passwd/group files and an agent config at /etc/commune-monitor/agent.yaml."""
    (tmp_path / "etc" / "commune-monitor").mkdir(parents=True)
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\n")
    (tmp_path / CONFIG.lstrip("/")).write_text(AGENT_YAML)
    return tmp_path


def directives(unit: str) -> dict[str, list[str]]:
    """Return `Key=value` lines of a unit file as key → values (a key may repeat)."""
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def verify(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, "verify", str(path)], capture_output=True, text=True, timeout=60)


@needs_analyze
@pytest.mark.parametrize("role", ["agent", "collector"])
def test_rendered_units_pass_systemd_analyze_verify_without_a_warning(tmp_path, role):
    unit = tmp_path / systemd.UNITS[role]
    unit.write_text(systemd.render(role, config=CONFIG, python=sys.executable))
    result = verify(unit)
    assert (result.returncode, result.stderr) == (0, "")


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a typo'd key and a missing interpreter are reported."""
    unit = tmp_path / "commune-monitor-agent.service"
    text = systemd.render("agent", config=CONFIG, python="/nonexistent/python3")
    unit.write_text(text.replace("Restart=on-failure", "Restart=on-failure\nRestrat=always"))
    result = verify(unit)
    assert result.returncode != 0
    assert "Unknown key 'Restrat'" in result.stderr and "/nonexistent/python3" in result.stderr


@needs_analyze
def test_agent_unit_exposure_is_low(tmp_path):
    unit = tmp_path / "commune-monitor-agent.service"
    unit.write_text(systemd.render("agent", config=CONFIG, python=sys.executable))
    result = subprocess.run([ANALYZE, "security", "--offline=yes", str(unit)], capture_output=True, text=True,
                            timeout=60)
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert score, result.stdout + result.stderr
    assert float(score.group(1)) <= 2.5


def test_agent_unit_runs_unprivileged_with_only_cap_net_raw():
    unit = directives(systemd.render("agent", config=CONFIG, python="/opt/commune-monitor/bin/python"))
    assert unit["ExecStart"] == [f"/opt/commune-monitor/bin/python -m cmon --log-level info agent run -c {CONFIG}"]
    assert unit["User"] == unit["Group"] == ["cmon"]
    assert unit["AmbientCapabilities"] == unit["CapabilityBoundingSet"] == ["CAP_NET_RAW"]
    assert unit["StateDirectory"] == ["commune-monitor"]
    assert unit["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX AF_NETLINK"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "Restart": "on-failure"}.items():
        assert unit[key] == [value]
    assert int(unit["TimeoutStopSec"][0].removesuffix("s")) >= 30  # the stopping heartbeat and the spool commit


def test_exec_arguments_are_quoted_and_escaped():
    text = systemd.render("agent", config="/etc/commune monitor/100%$.yaml", python="/opt/cmon venv/bin/python")
    assert directives(text)["ExecStart"] == [
        '"/opt/cmon venv/bin/python" -m cmon --log-level info agent run -c "/etc/commune monitor/100%%$$.yaml"']
    with pytest.raises(ServiceError, match="not a valid user name"):
        systemd.render("agent", config=CONFIG, python="/usr/bin/python3", user="cmon\nUser=root")


@needs_analyze
def test_a_quoted_config_path_still_verifies(tmp_path):
    unit = tmp_path / "commune-monitor-agent.service"
    unit.write_text(systemd.render("agent", config="/etc/commune monitor/100%.yaml", python=sys.executable))
    assert verify(unit).returncode == 0


def test_install_into_a_root_writes_the_unit_and_config_dir_and_creates_no_user_unless_asked(root):
    run = Recorder()
    passwd = (root / "etc" / "passwd").read_text()
    report = install(CONFIG, root=root, run=run)
    unit = root / "etc/systemd/system/commune-monitor-agent.service"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644 and unit.stat().st_uid == 0
    assert unit.read_text() == systemd.render("agent", config=CONFIG, python=str(Path(sys.executable).absolute()))
    assert stat.S_IMODE((root / "etc/commune-monitor").stat().st_mode) == 0o750
    assert (root / "etc" / "passwd").read_text() == passwd and run.commands == []  # no useradd, no systemctl
    assert any("user cmon does not exist" in w for w in report.warnings)
    # never systemctl for another tree: the operator is told what to run there
    assert report.todo == ["systemctl daemon-reload", "systemctl enable --now commune-monitor-agent.service"]
    assert not any(w.startswith("the spool") for w in report.warnings)  # the config spools in the state dir


def test_install_creates_the_system_user_when_asked_and_only_once(root):
    run = Recorder()
    report = install(CONFIG, root=root, create_user=True, run=run)
    assert "created system user cmon" in report.done
    entries = [line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines()]
    cmon = next(e for e in entries if e[0] == "cmon")
    assert int(cmon[2]) < 1000 and cmon[5:] == ["/var/lib/commune-monitor", "/usr/sbin/nologin"]
    assert (root / "etc/commune-monitor").stat().st_gid == int(cmon[3])
    assert [c[0] for c in run.commands] == ["useradd"]
    again = install(CONFIG, root=root, create_user=True, run=run)
    assert len(run.commands) == 1 and "created system user cmon" not in again.done
    assert any("credential" in w and "chown cmon:cmon" in w for w in again.warnings)  # not enrolled yet


def test_install_warns_about_paths_the_hardened_service_cannot_use(root):
    (root / CONFIG.lstrip("/")).write_text(AGENT_YAML.replace("/var/lib/commune-monitor/spool.db", "spool.db"))
    credential = root / "etc/commune-monitor/credential.json"
    credential.write_text("{}")
    credential.chmod(0o600)
    install(CONFIG, root=root, create_user=True)  # the credential stays root's
    report = install(CONFIG, root=root, python="/root/venv/bin/python")
    text = "\n".join(report.warnings)
    assert "the spool would be /etc/commune-monitor/spool.db" in text
    assert "/etc/commune-monitor/credential.json is not owned by the service user" in text
    assert "interpreter /root/venv/bin/python is under /root" in text


def test_install_refuses_a_missing_config(root):
    with pytest.raises(ServiceError, match="no such config file"):
        install("/etc/commune-monitor/nope.yaml", root=root)
    assert not (root / "etc/systemd").exists()


def test_uninstall_removes_the_unit_and_its_enable_link_and_keeps_the_config(root):
    install(CONFIG, root=root)
    install(CONFIG, role="collector", root=root)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "commune-monitor-agent.service").symlink_to("../commune-monitor-agent.service")
    assert status(root=root).state.startswith("unknown")
    report = uninstall(root=root)
    assert not (root / "etc/systemd/system/commune-monitor-agent.service").exists()
    assert not (wants / "commune-monitor-agent.service").is_symlink()
    assert (root / "etc/systemd/system/commune-monitor-collector.service").exists()  # the other role untouched
    assert (root / CONFIG.lstrip("/")).exists()
    assert any("kept" in line and "/var/lib/commune-monitor" in line for line in report.done)
    assert status(root=root).state == "not installed"


def test_uninstall_removes_the_config_dir_only_when_empty(root):
    (root / CONFIG.lstrip("/")).unlink()
    (root / "etc/commune-monitor/collector.yaml").write_text("{}\n")
    install("/etc/commune-monitor/collector.yaml", role="collector", root=root)
    (root / "etc/commune-monitor/collector.yaml").unlink()
    uninstall(role="collector", root=root)
    assert not (root / "etc/commune-monitor").exists()


def test_cmon_service_commands(root, capsys):
    assert cli.main(["service", "status", "--root", str(root)]) == 1
    assert "state: not installed" in capsys.readouterr().out
    assert cli.main(["service", "install", "-c", CONFIG, "--root", str(root), "--no-create-user"]) == 0
    out = capsys.readouterr().out
    assert "wrote /etc/systemd/system/commune-monitor-agent.service" in out and "systemctl enable --now" in out
    assert "cmon:" not in (root / "etc" / "passwd").read_text()
    assert cli.main(["service", "install", "-c", "/nope.yaml", "--root", str(root)]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert cli.main(["service", "uninstall", "--root", str(root)]) == 0
    assert not (root / "etc/systemd/system/commune-monitor-agent.service").exists()


def test_the_agent_command_the_unit_runs_exists():
    argv = [sys.executable, "-m", "cmon", "agent", "run", "--help"]
    assert subprocess.run(argv, capture_output=True, timeout=60).returncode == 0


def test_systemd_is_not_pid1_here_so_nothing_is_started():
    """This machine has no systemd as PID 1; install would only say what to run (checked via the detection)."""
    assert systemd.systemd_booted("/") == Path("/run/systemd/system").is_dir()
    assert not systemd.systemd_booted("/tmp")


def test_importing_the_service_package_on_linux_imports_nothing_windows_only():
    code = ("import sys, cmon.cli, cmon.service, cmon.service.systemd, cmon.service.command\n"
            "from cmon.service import backend\n"
            "assert backend().__name__ == 'cmon.service.systemd'\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('win32', 'pywintypes', 'servicemanager'))"
            " or m == 'cmon.service.windows')\n"
            "print(bad)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[3])
    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr


@pytest.fixture
def windows(monkeypatch):
    """cmon.service.windows imported against a fake pywin32 (only the names it uses)."""
    reported: list[tuple[int, int]] = []

    class ServiceFramework:
        def __init__(self, args):
            self.args = args

        def GetAcceptedControls(self):  # noqa: N802
            return 0x1 | 0x4  # stop, shutdown

        def ReportServiceStatus(self, status, waitHint=5000, **_):  # noqa: N802, N803
            reported.append((status, waitHint))

    fakes = {
        "servicemanager": types.SimpleNamespace(LogInfoMsg=print, LogErrorMsg=print),
        "win32service": types.SimpleNamespace(SERVICE_STOPPED=1, SERVICE_START_PENDING=2, SERVICE_STOP_PENDING=3,
                                              SERVICE_RUNNING=4, error=OSError),
        "win32serviceutil": types.SimpleNamespace(ServiceFramework=ServiceFramework),
    }
    for name, fake in fakes.items():
        monkeypatch.setitem(sys.modules, name, fake)
    monkeypatch.delitem(sys.modules, "cmon.service.windows", raising=False)
    module = importlib.import_module("cmon.service.windows")
    module.reported = reported
    yield module
    sys.modules.pop("cmon.service.windows", None)


def test_windows_service_stops_cleanly_on_stop_and_on_preshutdown(windows):
    service = windows.AgentService(["CommuneMonitorAgent"])
    assert service.GetAcceptedControls() & 0x100 and service.GetAcceptedControls() & 0x4
    service.SvcOtherEx(0x0F, 0, None)  # pre-shutdown
    assert service.stop.is_set() and windows.reported == [(3, windows.STOP_WAIT_MS)]
    assert windows.AgentService.SvcShutdown is windows.AgentService.SvcStop


async def test_windows_run_until_bridges_the_control_thread_to_the_agents_stop_event(windows):
    stopped = threading.Event()
    seen = []

    async def run_agent(config, stop):
        await asyncio.wait_for(stop.wait(), 10)
        seen.append(config)

    threading.Timer(0.1, stopped.set).start()  # SvcStop runs on the service control thread
    await asyncio.wait_for(windows.run_until(run_agent, "cfg", stopped), 10)
    assert seen == ["cfg"]


def test_windows_finds_the_agents_entry_point(windows):
    from agent.daemon import run_agent

    assert windows.find_run_agent() is run_agent


def test_windows_refuses_the_collector_role(windows, tmp_path):
    with pytest.raises(ServiceError, match="collector runs on Linux"):
        windows.install(str(tmp_path / "x.yaml"), role="collector")


def test_an_unknown_role_is_refused():
    with pytest.raises(ValueError, match="unknown role"):
        install(CONFIG, role="prober")


def test_agent_unit_reloads_with_sighup():
    unit = directives(systemd.render("agent", config=CONFIG, python="/opt/commune-monitor/bin/python"))
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # the agent reloads its config on SIGHUP
