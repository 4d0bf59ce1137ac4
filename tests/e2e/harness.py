"""The end-to-end pipeline as real processes: VictoriaMetrics, `cmon collector run`, `cmon agent run`.

`Pipeline` starts VM and the collector, enrolls the agent the way an installer does (`cmon collector token
create` → `cmon agent enroll` with the token on stdin), runs the agent and records, in the collector's (true)
clock, when each agent process began and ended — the windows in which the schedule promises runs.
`Pipeline.check()` compares what VM exports with `agent.scheduler.planned_runs` for those windows (see
`schedule_check`). Processes may live in network namespaces (the lab): `NetNS` runs calls and starts processes
from a thread that entered the namespace, so the test itself stays where it is.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from agent.config import load_config
from collector_helpers import CollectorProcess, ROOT, body, http_post
from lab.victoria import Victoria

from e2e.schedule_check import Window, check_schedule

CLONE_NEWNET = 0x40000000
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
AGENT_ID, COMMUNE, PROVINCE = "quay-01", "dong-loc", "ha-tinh"
HOST_INTERVAL_S = 2.0


def _enter(ns: str) -> None:
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({ns})")
    finally:
        os.close(fd)


class NetNS:
    """Run functions inside network namespace `name` (None: right here). Processes started there stay there."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(1, initializer=_enter, initargs=(name,)) if name else None

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Return fn(*args, **kwargs) run in the namespace."""
        if self._pool is None:
            return fn(*args, **kwargs)
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class AgentProcess:
    """One `cmon agent run` process and when (collector clock) it started probing and stopped."""

    process: subprocess.Popen
    launched: float
    scheduling: float | None = None  # when the collector saw its first heartbeat
    ended: float | None = None
    clean: bool = False


class Pipeline:
    """VM + collector + one enrolled agent probing local targets every second; everything stopped by close()."""

    def __init__(self, tmp: Path, *, ns: NetNS | None = None, agent_ns: NetNS | None = None,
                 collector_host: str = "127.0.0.1", agent_env: dict[str, str] | None = None,
                 collector_timeout: float = 2.0) -> None:
        self.tmp = tmp
        self.ns = ns or NetNS()  # VM and the collector
        self.agent_ns = agent_ns or NetNS()
        self.agent_env = agent_env or {}
        self.vm = Victoria(tmp / "vm")
        self.collector = CollectorProcess(tmp, self.vm.url, timeout=collector_timeout, retry_after=1)
        self._listen_on(collector_host)
        self.collector_url = f"http://{collector_host}:{self.collector.port}"
        self.listener: socket.socket | None = None
        self.agents: list[AgentProcess] = []
        self.stopped_row: dict | None = None  # the fleet registry's row right after the agent's clean stop
        self.agent_log = tmp / "agent.log"
        self.config_path = tmp / "agent" / "agent.yaml"

    def _listen_on(self, host: str) -> None:
        data = yaml.safe_load(self.collector.path.read_text())
        data["listen"]["host"] = "0.0.0.0" if host != "127.0.0.1" else host
        self.collector.path.write_text(yaml.safe_dump(data))

    # -- life cycle -------------------------------------------------------------------------------------------

    def start(self) -> "Pipeline":
        """Start VM and the collector, write the agent's config, enroll it with a real token."""
        self.ns.call(self.vm.start)
        self.ns.call(self.collector.start)
        self.listener = self.agent_ns.call(_listen)
        self._write_agent_config(self.listener.getsockname()[1])
        self.enroll()
        return self

    def close(self) -> None:
        """Stop every process, whatever state it is in."""
        for agent in self.agents:
            if agent.process.poll() is None:
                agent.process.kill()
                agent.process.wait()
        self.ns.call(self.collector.stop)
        self.ns.call(self.vm.stop)  # SIGCONT first: a frozen VM stops too
        if self.listener is not None:
            self.listener.close()

    def _write_agent_config(self, port: int) -> None:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "agent": {"province": PROVINCE, "commune": COMMUNE, "id": AGENT_ID},
            "collector": {"url": self.collector_url, "allow_http": True, "timeout": "3s"},
            "spool": {"path": "spool.db"},
            "schedule": {"jitter": 0, "confirm_count": 0, "host_interval": f"{HOST_INTERVAL_S:g}s"},
            "services": {
                "dns": [{"name": "local-tcp", "probe": "tcp", "host": "127.0.0.1", "port": port,
                         "interval": "1s", "timeout": "1s"}],
                "ioffice": [{"name": "local-ping", "probe": "icmp", "host": "127.0.0.1", "count": 2,
                             "echo_interval": "50ms", "echo_timeout": "500ms", "timeout": "1s",
                             "interval": "1s", "shared": False}],
            },
        }
        self.config_path.write_text(yaml.safe_dump(config))

    def enroll(self) -> None:
        """`cmon collector token create` → `cmon agent enroll` with the token on stdin."""
        token = subprocess.run(
            [sys.executable, "-m", "cmon", "collector", "token", "create", "-c", str(self.collector.path),
             "--commune", COMMUNE, "--ttl", "10m"],
            cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        done = self.agent_ns.call(
            subprocess.run,
            [sys.executable, "-m", "cmon", "agent", "enroll", "-c", str(self.config_path), "--allow-http"],
            cwd=ROOT, input=token + "\n", capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        mode = (self.config_path.parent / "credential.json").stat().st_mode & 0o777
        assert mode == 0o600, oct(mode)

    def start_agent(self, wait: bool = True) -> AgentProcess:
        """Start `cmon agent run`; with `wait`, until the collector has its startup heartbeat."""
        env = {**os.environ, **self.agent_env}
        with open(self.agent_log, "ab") as log:
            process = self.agent_ns.call(
                subprocess.Popen,
                [sys.executable, "-m", "cmon", "--log-level", "info", "agent", "run", "-c",
                 str(self.config_path)],
                cwd=ROOT, stdout=log, stderr=log, env=env)
        agent = AgentProcess(process, time.time())
        self.agents.append(agent)
        if wait:
            self.wait_heartbeat(agent)
        return agent

    def wait_heartbeat(self, agent: AgentProcess, timeout: float = 20.0) -> None:
        """Note when the collector first saw the agent after it was launched (its scheduler starts right after)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert agent.process.poll() is None, self.agent_log.read_text()[-3000:]
            row = self.registry_row()
            if row and (row.get("last_seen_ms") or 0) > agent.launched * 1000 and row.get("state") == "running":
                agent.scheduling = row["last_seen_ms"] / 1000
                return
            time.sleep(0.02)
        raise AssertionError(f"no heartbeat from the agent: {self.agent_log.read_text()[-3000:]}")

    def stop_agent(self, agent: AgentProcess | None = None, sig: int = signal.SIGTERM) -> None:
        """Stop the agent (SIGTERM: cleanly; SIGKILL: -9) at a moment no run is due (see quiet_moment)."""
        agent = agent or self.agents[-1]
        self.quiet_moment()
        agent.ended = time.time()
        agent.process.send_signal(sig)
        agent.process.wait(20)
        agent.clean = sig == signal.SIGTERM
        if agent.clean:
            assert agent.process.returncode == 0, self.agent_log.read_text()[-3000:]

    def quiet_moment(self, margin: float = 0.15) -> None:
        """Sleep until no planned run is within `margin` s (so whether the edge round ran is not a race)."""
        from agent.scheduler import planned_runs

        config = load_config(self.config_path)
        while True:
            now = time.time()
            upcoming = [t for _, t in planned_runs(config, now - margin, now + 2, self._producers())]
            if all(abs(t - now) > margin for t in upcoming):
                return
            time.sleep(0.02)

    # -- state ------------------------------------------------------------------------------------------------

    def registry_row(self) -> dict | None:
        def get() -> dict:
            with urllib.request.urlopen(self.collector.url + "/api/v1/agents", timeout=2) as r:
                return json.loads(r.read())
        try:
            rows = self.ns.call(get)["agents"]
        except OSError:
            return None
        return next((r for r in rows if r["agent"] == AGENT_ID), None)

    def collector_metric(self, name: str) -> float:
        """Return one value from the collector's /metrics (0 when absent)."""
        def get() -> str:
            with urllib.request.urlopen(self.collector.url + "/metrics", timeout=2) as r:
                return r.read().decode()
        for line in self.ns.call(get).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def _producers(self) -> list[tuple[str, float]]:
        return [("host", HOST_INTERVAL_S), ("self", HOST_INTERVAL_S)]

    def windows(self) -> list[Window]:
        """The agent processes' lifetimes as the windows runs are promised in."""
        out = []
        for agent in self.agents:
            assert agent.scheduling is not None and agent.ended is not None
            out.append(Window(agent.launched, agent.scheduling, agent.ended, clean=agent.clean))
        return out

    def check(self, **kwargs: Any) -> dict:
        """Assert VM holds exactly the samples the schedule promised; return a summary."""
        config = load_config(self.config_path)
        self.rows_inserted()  # VM ingests for up to a second after its 204: wait until its counter settles
        exported = self.exported()
        return check_schedule(config, exported, self.windows(), self._producers(), **kwargs)

    def exported(self, settle: float = 1.5, timeout: float = 15.0) -> list[dict]:
        """Return the agent's series from VM once two exports `settle` s apart agree: a series VM has never seen
        (the first `agent_stopped` event, written at the stop) is searchable only after its index is flushed,
        about a second after its rows are counted as inserted."""
        match = f'{{agent="{AGENT_ID}"}}'
        deadline = time.monotonic() + timeout
        last = self.ns.call(self.vm.export, match)
        while time.monotonic() < deadline:
            time.sleep(settle)
            now = self.ns.call(self.vm.export, match)
            if now == last:
                return now
            last = now
        return last

    def wait_delivered(self, timeout: float = 90.0, lag: float = 1.5) -> None:
        """Wait until VM holds every run planned up to `lag` s ago for the running agent (the backlog drained)."""
        config = load_config(self.config_path)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            ended = time.time() - lag
            windows = [*self.windows_so_far(), Window(self.agents[-1].launched, self.agents[-1].scheduling, ended,
                                                       clean=True, open_end=True)]
            try:
                check_schedule(config, self.ns.call(self.vm.export, f'{{agent="{AGENT_ID}"}}'), windows,
                               self._producers())
                return
            except AssertionError as exc:
                last = exc
            time.sleep(1.0)
        raise AssertionError(f"not delivered within {timeout} s: {last}")

    def windows_so_far(self) -> list[Window]:
        return [Window(a.launched, a.scheduling, a.ended, clean=a.clean) for a in self.agents[:-1]]

    def spool(self) -> tuple[str, int, int]:
        """Return the (stopped) agent's spool id, next seq and rows left."""
        conn = sqlite3.connect(self.config_path.parent / "spool.db")
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            rows = conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
        finally:
            conn.close()
        return meta["spool_id"], int(meta["next_seq"]), rows

    def acked(self, spool_id: str) -> list[tuple[int, int]]:
        """Return the ranges the collector durably recorded as acknowledged for the spool."""
        from core.ranges import merge

        conn = sqlite3.connect(self.tmp / "state" / "collector.sqlite")
        try:
            rows = conn.execute("SELECT first, last FROM acked WHERE spool = ?", (spool_id,)).fetchall()
        finally:
            conn.close()
        return merge([tuple(r) for r in rows])

    def rows_inserted(self) -> int:
        return self.ns.call(self.vm.rows_inserted)

    def resend_first(self, spool_id: str) -> tuple[int, dict]:
        """Resend seq 1 of the spool (a real sample from VM as its content) with the agent's credential."""
        credential = json.loads((self.config_path.parent / "credential.json").read_text())["credential"]
        series = self.ns.call(self.vm.export, f'probe_up{{agent="{AGENT_ID}"}}')[0]
        tags = {k: v for k, v in series["metric"].items() if k != "__name__"}
        payload = {"version": 1, "spool": spool_id, "first": 1, "last": 1, "evicted": [], "agent": {},
                   "measurements": [{"seq": 1, "name": "probe", "tags": tags, "fields": {"up": series["values"][0]},
                                     "time": series["timestamps"][0], "result": "ok"}]}
        raw, headers = body(payload)
        headers["Authorization"] = f"Bearer {credential}"
        status, answer, _ = self.ns.call(http_post, self.collector.url + "/api/v1/ingest", raw, headers)
        return status, answer

    def finish(self) -> dict:
        """Stop the agent cleanly and assert the whole contract: schedule = VM, no gap, resend not written."""
        self.stop_agent()
        self.stopped_row = self.registry_row()
        spool_id, next_seq, left = self.spool()
        assert left == 0, f"{left} measurements still in the agent's spool after its clean stop"
        summary = self.check()
        assert self.acked(spool_id) == [(1, next_seq - 1)], "the collector's acknowledged ranges have a gap"
        before = self.rows_inserted()
        status, answer = self.resend_first(spool_id)
        assert (status, answer.get("duplicate")) == (200, True), (status, answer)
        assert self.rows_inserted() == before, "a resent batch was written again"
        assert self.check() == summary
        return summary


def _listen() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4096)  # never accepted: the kernel completes the probes from the backlog
    return server


def faketime_env(offset: str) -> dict[str, str]:
    """Return the environment that runs a process with its wall clock `offset` off (libfaketime)."""
    return {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_NO_CACHE": "1"}
