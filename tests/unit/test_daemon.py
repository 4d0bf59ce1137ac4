"""`cmon agent run` as a real process against a collector stand-in on 127.0.0.1: ships, then stops cleanly."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web

from agent.credentials import Credential, save

pytestmark = pytest.mark.skipif(importlib.util.find_spec("agent.spool") is None, reason="agent/spool.py not there yet")
TOKEN = "daemon-test-credential"


async def test_agent_ships_probe_host_and_self_metrics_then_says_stopping(tmp_path: Path, listening_port: int) -> None:
    batches: list[dict] = []
    heartbeats: list[str] = []

    async def ingest(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        payload = json.loads(await request.read())
        batches.append(payload)
        return web.json_response({"acked": [payload["first"], payload["last"]]},
                                 headers={"X-Server-Time-Ms": str(int(time.time() * 1000))})

    async def heartbeat(request: web.Request) -> web.Response:
        heartbeats.append(json.loads(await request.read())["state"])
        return web.json_response({}, headers={"X-Server-Time-Ms": str(int(time.time() * 1000))})

    app = web.Application()
    app.router.add_post("/api/v1/ingest", ingest)
    app.router.add_post("/api/v1/heartbeat", heartbeat)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    save(tmp_path / "credential.json", Credential(url, TOKEN, "ha-tinh", "dong-loc", "quay-01"))
    config = tmp_path / "agent.yaml"
    config.write_text(
        "agent: {province: ha-tinh, commune: dong-loc, id: quay-01}\n"
        f"collector: {{url: '{url}', allow_http: true}}\n"
        "schedule: {host_interval: 1s}\n"
        f"services: {{dns: [{{name: t, probe: tcp, host: 127.0.0.1, port: {listening_port}, interval: 1s}}]}}\n"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "agent.cli", "--log-level", "info",
                                                "agent", "run", "-c", str(config), stderr=asyncio.subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            names = {m["name"] for b in batches for m in b["measurements"]}
            if {"probe", "host", "agent"} <= names:
                break
            await asyncio.sleep(0.2)
        pss_kb = _pss_kb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await runner.cleanup()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert {"probe", "host", "agent"} <= names
    assert heartbeats[0] == "running" and heartbeats[-1] == "stopping"
    seqs = [m["seq"] for b in batches for m in b["measurements"]]
    assert seqs == list(range(1, len(seqs) + 1))  # gap-free, each once
    agent = next(m for b in batches for m in b["measurements"] if m["name"] == "agent")
    assert all(isinstance(v, float) for v in agent["fields"].values()) and "version" in agent["tags"]
    print(f"agent PSS {pss_kb / 1024:.1f} MiB")


def _pss_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:"))
