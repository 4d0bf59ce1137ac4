"""`cmon agent run` as a real process (and `run_agent` in-process) against a collector stand-in on 127.0.0.1:
ships, reports its tasks' health, carries a damaged row's seq as lost, restarts a failed task and exits 1 when a
task had failed and not recovered by the stop."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import sqlite3
import sys
import textwrap
import time
from pathlib import Path

import pytest
from aiohttp import web

from agent.config import load_config
from agent.credentials import Credential, save

pytestmark = pytest.mark.skipif(importlib.util.find_spec("agent.spool") is None, reason="agent/spool.py not there yet")
TOKEN = "daemon-test-credential"
TASKS = {"shipper", "scheduler", "spool_check", "disk_watch"}


class StandIn:
    """A collector stand-in: acks every batch, records batches and heartbeats (whole payloads)."""

    def __init__(self) -> None:
        self.batches: list[dict] = []
        self.heartbeats: list[dict] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def ingest(self, request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        payload = json.loads(await request.read())
        self.batches.append(payload)
        return web.json_response({"acked": [payload["first"], payload["last"]]}, headers=self._time())

    async def heartbeat(self, request: web.Request) -> web.Response:
        self.heartbeats.append(json.loads(await request.read()))
        return web.json_response({}, headers=self._time())

    @staticmethod
    def _time() -> dict[str, str]:
        return {"X-Server-Time-Ms": str(int(time.time() * 1000))}

    async def __aenter__(self) -> "StandIn":
        app = web.Application()
        app.router.add_post("/api/v1/ingest", self.ingest)
        app.router.add_post("/api/v1/heartbeat", self.heartbeat)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def seqs(self) -> list[int]:
        """Return the seqs of every measurement and event received, in order (one sequence space)."""
        return [r["seq"] for b in self.batches for r in sorted(b["measurements"] + b.get("events", []),
                                                                 key=lambda r: r["seq"])]

    def events(self) -> list[dict]:
        return [e for b in self.batches for e in b.get("events", [])]

    def names(self) -> set[str]:
        return {m["name"] for b in self.batches for m in b["measurements"]}


def write_config(tmp_path: Path, url: str, port: int) -> Path:
    save(tmp_path / "credential.json", Credential(url, TOKEN, "ha-tinh", "dong-loc", "quay-01"))
    config = tmp_path / "agent.yaml"
    config.write_text(
        "agent: {province: ha-tinh, commune: dong-loc, id: quay-01}\n"
        f"collector: {{url: '{url}', allow_http: true}}\n"
        "schedule: {host_interval: 1s}\n"
        f"services: {{dns: [{{name: t, probe: tcp, host: 127.0.0.1, port: {port}, interval: 1s}}]}}\n"
    )
    return config


async def start_agent(config: Path, *python: str) -> asyncio.subprocess.Process:
    """Start `cmon agent run` (or `python <python...> agent run`: the same entry point with a fault injected)."""
    argv = python or ("-m", "cmon")
    return await asyncio.create_subprocess_exec(sys.executable, *argv, "--log-level", "info", "agent", "run",
                                                "-c", str(config), stderr=asyncio.subprocess.PIPE)


async def until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def stop(proc: asyncio.subprocess.Process) -> str:
    """SIGTERM the agent; return its stderr."""
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return err.decode()


async def test_agent_ships_probe_host_and_self_metrics_then_says_stopping(tmp_path: Path, listening_port: int) -> None:
    async with StandIn() as collector:
        proc = await start_agent(write_config(tmp_path, collector.url, listening_port))
        try:
            await until(lambda: {"probe", "host", "agent"} <= collector.names())
            pss_kb = _pss_kb(proc.pid)
        finally:
            err = await stop(proc)
    assert proc.returncode == 0, err[-2000:]
    states = [h["state"] for h in collector.heartbeats]
    assert states[0] == "running" and states[-1] == "stopping"
    seqs = collector.seqs()
    assert seqs == list(range(1, len(seqs) + 1))  # gap-free, each once
    events = collector.events()  # the start, and the clean stop shipped before the `stopping` heartbeat
    assert [e["kind"] for e in events] == ["agent_started", "agent_stopped"]
    assert events[0]["seq"] == 1 and events[-1]["seq"] == seqs[-1]
    assert events[-1]["tags"] == {"province": "ha-tinh", "commune": "dong-loc", "agent": "quay-01"}
    assert events[-1]["attributes"]["uptime_s"] > 0 and "stopped cleanly" in events[-1]["text"]
    from core.catalogue import EVENTS
    declared = {kind.name: {a.name for a in kind.attributes} for kind in EVENTS}
    assert all(set(e["attributes"]) == declared[e["kind"]] for e in events)  # what the catalogue says they carry
    agent = next(m for b in collector.batches for m in b["measurements"] if m["name"] == "agent")
    assert all(isinstance(v, float) for v in agent["fields"].values()) and "version" in agent["tags"]
    assert {"task_restarts_total", "healthy", "lost_total", "dropped_disk_full_total", "disk_free_bytes",
            "spool_disk_low", "task_shipper_ok", "task_scheduler_restarts_total"} <= agent["fields"].keys()
    assert agent["fields"]["healthy"] == 1.0 and agent["fields"]["task_restarts_total"] == 0.0
    final = collector.heartbeats[-1]["agent"]  # the stopping heartbeat carries the tasks' final health
    assert final["health"] == "ok" and final["task_restarts_total"] == 0 and final["lost_total"] == 0
    assert final["tasks"] == {name: {"state": "ok", "restarts": 0} for name in TASKS}
    assert isinstance(final["disk_free_bytes"], int) and final["disk_free_bytes"] > 0
    assert collector.batches[0]["agent"]["tasks"].keys() == TASKS  # and so does every ingest
    print(f"agent PSS {pss_kb / 1024:.1f} MiB")


async def test_a_damaged_spool_row_is_reported_lost_and_everything_else_is_shipped(
        tmp_path: Path, listening_port: int) -> None:
    from agent.spool import Spool
    from core.measurement import Measurement

    # A backlog from an earlier run, one row of which went bad on disk (SQLite's own checks still pass).
    with Spool(tmp_path / "spool.db") as spool:
        now = int(time.time() * 1000)
        spool.append([Measurement("probe", {"service": "dns", "target": "t", "probe": "tcp", "line": "auto"},
                                  {"up": 1.0}, now - 60_000 + i) for i in range(5)])
    with sqlite3.connect(tmp_path / "spool.db") as db:
        db.execute("UPDATE rows SET body = x'deadbeef' WHERE seq = 3")
    async with StandIn() as collector:
        proc = await start_agent(write_config(tmp_path, collector.url, listening_port))
        try:
            await until(lambda: len(collector.seqs()) > 10 and collector.heartbeats)
        finally:
            err = await stop(proc)
    assert proc.returncode == 0, err[-2000:]
    seqs = collector.seqs()
    assert 3 not in seqs and sorted(seqs) == [1, 2] + list(range(4, max(seqs) + 1))  # everything else, once
    lost = [b["lost"] for b in collector.batches if "lost" in b]
    assert lost[0] == [[3, 3, "damaged spool row: cannot decompress"]]
    assert collector.heartbeats[-1]["agent"]["lost_total"] == 1
    assert "cannot be read" in err and "reported to the collector as lost" in err
    with Spool(tmp_path / "spool.db") as spool:
        assert spool.pending_lost() == []  # marked reported once a batch carrying it was acknowledged
        assert [s for s, _ in spool.damaged()] == [3]  # kept for people


# An unforeseen bug: the spool's next_batch raises a plain exception (not a ShipError) on its first two calls.
# Before supervision this ended the shipping task for good while the agent went on probing and stopped "cleanly".
FAULTY = textwrap.dedent("""
    import sys
    from agent import spool
    calls = {"n": 0}
    real = spool.Spool.next_batch
    def next_batch(self, max_rows=500):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError(f"unforeseen bug #{calls['n']}")
        return real(self, max_rows)
    spool.Spool.next_batch = next_batch
    from cmon.cli import main
    sys.exit(main(sys.argv[1:]))
""")


async def test_a_failing_shipper_is_restarted_logged_and_a_stop_before_it_recovered_exits_1(
        tmp_path: Path, listening_port: int) -> None:
    async with StandIn() as collector:
        proc = await start_agent(write_config(tmp_path, collector.url, listening_port), "-c", FAULTY)
        try:
            await until(lambda: len(collector.seqs()) > 5)  # restarted after 1 s, then 2 s: shipping goes on
            await until(lambda: len(collector.heartbeats) >= 1)
        finally:
            err = await stop(proc)
    assert proc.returncode == 1, err[-2000:]  # failed during the run, not yet healthy for 60 s at the stop
    assert err.count("task shipper failed") == 2 and "Traceback" in err and "unforeseen bug #2" in err
    final = collector.heartbeats[-1]
    assert final["state"] == "stopping" and final["agent"]["health"] == "degraded"
    assert final["agent"]["tasks"]["shipper"] == {"state": "restarting", "restarts": 2,
                                                  "error": "RuntimeError: unforeseen bug #2"}
    assert final["agent"]["task_restarts_total"] == 2
    seqs = collector.seqs()
    assert seqs == list(range(1, len(seqs) + 1))  # nothing skipped by the restarts


async def test_run_agent_returns_0_when_the_failed_task_recovered_before_the_stop(
        tmp_path: Path, listening_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent import spool as spool_module
    from agent.daemon import run_agent
    from agent.supervisor import Supervisor

    real, calls = spool_module.Spool.next_batch, []

    def next_batch(self, max_rows: int = 500):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("unforeseen bug")
        return real(self, max_rows)

    monkeypatch.setattr(spool_module.Spool, "next_batch", next_batch)
    async with StandIn() as collector:
        config = load_config(write_config(tmp_path, collector.url, listening_port))
        stop_event = asyncio.Event()
        supervisor = Supervisor(backoff_s=0.1, healthy_s=1.0)
        task = asyncio.create_task(run_agent(config, stop_event, supervisor))
        await until(lambda: len(collector.seqs()) > 3)
        await asyncio.sleep(1.2)  # a healthy stretch after the restart
        stop_event.set()
        status = await asyncio.wait_for(task, 15)
    assert status == 0
    final = collector.heartbeats[-1]["agent"]
    assert final["tasks"]["shipper"] == {"state": "ok", "restarts": 1, "error": "RuntimeError: unforeseen bug"}
    assert final["health"] == "ok"


def _pss_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:"))
