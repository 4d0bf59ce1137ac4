"""The Windows back-end: the agent as a pywin32 service on a counter PC (`cmon service install -c FILE`).

Imported only on Windows, by cmon.service.backend(); pywin32 is a Windows-only dependency. Untested on Linux
beyond its logic (tests/unit/cmon/test_service.py fakes pywin32). The service runs the same entry point as the Linux
daemon, found by name so this module stays thin:

    async agent.daemon.run_agent(config: AgentConfig, stop: asyncio.Event | None = None)   (or agent.service_main)

`run_agent` runs the agent until `stop` is set, then sends the "stopping" heartbeat, commits the spool and
returns. Here `stop` is set by the Stop control and by Windows shutting down (pre-shutdown: a PC switched off at
night stops cleanly, so the collector does not take it for a commune gone dark). The config path is stored with the service
(a custom option in its registry key); the log goes to agent.log beside the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import logging.handlers
import subprocess
import threading
import traceback
from pathlib import Path

import servicemanager  # pywin32
import win32service
import win32serviceutil

from cmon.service.report import Report, ServiceError  # absolute: pythonservice.exe loads this file as a top-level module

SERVICE_NAME = "CommuneMonitorAgent"
ENTRY_MODULES = ("agent.daemon", "agent.service_main")
# Win32 constants pywin32 may not name: pre-shutdown comes before shutdown, and Windows waits for it far longer
# (minutes) than for SERVICE_CONTROL_SHUTDOWN (seconds), time enough for the stopping heartbeat.
SERVICE_ACCEPT_PRESHUTDOWN, SERVICE_CONTROL_PRESHUTDOWN = 0x100, 0x0F
STOP_WAIT_MS = 30_000  # what we ask Windows to wait for the stopping heartbeat (20 s collector timeout + margin)
_STATES = {win32service.SERVICE_STOPPED: "stopped", win32service.SERVICE_START_PENDING: "starting",
           win32service.SERVICE_STOP_PENDING: "stopping", win32service.SERVICE_RUNNING: "running"}


def find_run_agent():
    """Return `run_agent` from the first of ENTRY_MODULES that has it."""
    for name in ENTRY_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        if hasattr(module, "run_agent"):
            return module.run_agent
    raise ServiceError(f"no run_agent in {' or '.join(ENTRY_MODULES)}: this installation has no long-running agent")


class AgentService(win32serviceutil.ServiceFramework):
    """The Windows service: runs `run_agent` until Stop or shutdown."""

    _svc_name_ = SERVICE_NAME
    _svc_display_name_ = "Commune Monitor agent"
    _svc_description_ = "Probes this commune's lines and province services and ships the results to the collector."

    def __init__(self, args):
        super().__init__(args)
        self.stop = threading.Event()

    def SvcStop(self):  # noqa: N802 (pywin32's names)
        """Ask the agent to stop cleanly; tell Windows how long that may take."""
        self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_WAIT_MS)
        self.stop.set()

    SvcShutdown = SvcStop  # the PC is being switched off: the same clean stop

    def GetAcceptedControls(self):  # noqa: N802
        """Accept pre-shutdown as well as stop and shutdown."""
        return super().GetAcceptedControls() | SERVICE_ACCEPT_PRESHUTDOWN

    def SvcOtherEx(self, control, event_type, data):  # noqa: N802
        """Stop cleanly on pre-shutdown."""
        if control == SERVICE_CONTROL_PRESHUTDOWN:
            self.SvcStop()

    def SvcDoRun(self):  # noqa: N802
        """Load the config stored with the service and run the agent in this thread."""
        from agent.config import load_config

        path = win32serviceutil.GetServiceCustomOption(self._svc_name_, "config")
        _log_to(Path(path).with_name("agent.log"))
        servicemanager.LogInfoMsg(f"{SERVICE_NAME}: starting with {path}")
        try:
            asyncio.run(run_until(find_run_agent(), load_config(path), self.stop))
        except Exception:  # the Event Log is the only place a service start failure is seen
            servicemanager.LogErrorMsg(f"{SERVICE_NAME}: {traceback.format_exc()}")
            raise


async def run_until(run_agent, config, stopped: threading.Event) -> None:
    """Run the async `run_agent` until `stopped` (set from the service control thread) is set."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wait() -> None:
        stopped.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed when the agent returned on its own
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait, daemon=True).start()
    try:
        await run_agent(config, stop=stop)
    finally:
        stopped.set()  # releases the waiter when the agent returned on its own


def _log_to(file: Path) -> None:
    """Send the agent's log to a rotating file: a service has no console."""
    handler = logging.handlers.RotatingFileHandler(file, maxBytes=5_000_000, backupCount=3, encoding="utf-8")
    logging.basicConfig(level=logging.INFO, handlers=[handler],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def install(config_path: str, *, role: str = "agent", account: str | None = None, start: bool = True,
            **_linux_only) -> Report:
    """Install the service (automatic start, restart on failure) running the agent with `config_path`."""
    if role != "agent":
        raise ServiceError("the collector runs on Linux (systemd); on Windows only the agent is a service")
    config = Path(config_path).absolute()
    if not config.is_file():
        raise ServiceError(f"{config}: no such config file; write it first (C:\\ProgramData\\commune-monitor\\agent.yaml)")
    report = Report()
    win32serviceutil.InstallService(
        win32serviceutil.GetServiceClassString(AgentService), SERVICE_NAME, AgentService._svc_display_name_,
        startType=win32service.SERVICE_AUTO_START, description=AgentService._svc_description_,
        userName=account,  # None: LocalSystem, which the credential's ACL (agent/credentials.py) admits
    )
    win32serviceutil.SetServiceCustomOption(SERVICE_NAME, "config", str(config))
    report.done.append(f"installed service {SERVICE_NAME} (automatic start) with {config}")
    actions = ["sc.exe", "failure", SERVICE_NAME, "reset=", "86400", "actions=", "restart/5000/restart/5000/restart/60000"]
    if subprocess.run(actions, capture_output=True).returncode != 0:
        report.warnings.append(f"could not set restart-on-failure: run {' '.join(actions)}")
    if start:
        win32serviceutil.StartService(SERVICE_NAME)
        report.done.append(f"started {SERVICE_NAME}")
    return report


def uninstall(*, role: str = "agent", **_linux_only) -> Report:
    """Stop and remove the service; keep the config, the credential and the spool."""
    report = Report()
    try:
        win32serviceutil.StopService(SERVICE_NAME)
        report.done.append(f"stopped {SERVICE_NAME}")
    except win32service.error:
        pass  # not running
    win32serviceutil.RemoveService(SERVICE_NAME)
    report.done.append(f"removed service {SERVICE_NAME}; kept the config, credential and spool")
    return report


def status(*, role: str = "agent", **_linux_only) -> Report:
    """Report whether the service is installed and running."""
    report = Report()
    try:
        state = win32serviceutil.QueryServiceStatus(SERVICE_NAME)[1]
    except win32service.error:
        report.state = "not installed"
        return report
    report.state = _STATES.get(state, f"state {state}")
    return report
