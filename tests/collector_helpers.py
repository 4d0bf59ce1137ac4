"""Helpers for the collector tests: a real VictoriaMetrics, a collector in-process or as a real process, payloads."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestClient, TestServer

from collector.app import RUNNER_KWARGS, create_app
from collector.app_keys import AUTH
from collector.config import CollectorConfig, parse_config
from lab.victoria import free_port

ROOT = Path(__file__).resolve().parents[1]
TAGS = {"service": "ioffice", "target": "ioffice-web", "probe": "http", "line": "primary"}


def config_dict(data_dir: Path, vm_url: str, port: int = 0, **limits: Any) -> dict:
    """Return a plain-HTTP collector config mapping for tests."""
    return {
        "province": "ha-tinh", "data_dir": str(data_dir),
        "listen": {"host": "127.0.0.1", "port": port, "allow_http": True},
        "database": {"url": vm_url, "timeout": limits.pop("timeout", 3.0), "retention": "30d"},
        "limits": {"retry_after": 7, **limits},
    }


def make_config(data_dir: Path, vm_url: str, **limits: Any) -> CollectorConfig:
    """Return a plain-HTTP collector config for tests."""
    return parse_config(config_dict(data_dir, vm_url, **limits))


@asynccontextmanager
async def collector_client(config: CollectorConfig):
    """Yield an aiohttp TestClient of a collector app served as in production (auto_decompress off)."""
    server = TestServer(create_app(config))
    await server.start_server(**RUNNER_KWARGS)  # TestServer(...) drops runner kwargs; start_server passes them
    client = TestClient(server)
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def credential(client: TestClient, commune: str = "dong-loc", agent: str = "quay-01") -> str:
    """Enroll an agent straight through the app's Auth; return its credential."""
    auth = client.server.app[AUTH]
    token = auth.create_token(commune, 3600)
    return auth.enroll(token, agent)[0]


def payload(first: int, count: int, *, spool: str | None = None, t0: int | None = None, tags: dict | None = None,
            fields: dict | None = None, step_ms: int = 1000) -> dict:
    """Return an ingest payload of `count` probe measurements numbered from `first`."""
    t0 = t0 if t0 is not None else int(time.time() * 1000) - 60_000
    return {
        "version": 1, "spool": spool or str(uuid.uuid4()), "first": first, "last": first + count - 1,
        "measurements": [
            {"seq": first + i, "name": "probe", "tags": dict(tags or TAGS),
             "fields": dict(fields or {"up": 1.0, "rtt_ms": 12.5 + i, "result_code": 0.0}),
             "time": t0 + i * step_ms, "result": "ok"}
            for i in range(count)
        ],
        "evicted": [],
        "agent": {"version": "0.1.0", "config_version": "sha256:abc", "spool_rows": count, "dropped_total": 0,
                  "clock_offset_ms": -12.5},
    }


def body(data: Any, compress: bool = True) -> tuple[bytes, dict]:
    """Return (body, headers) for a JSON payload, gzipped by default."""
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    headers = {"Content-Type": "application/json"}
    if compress:
        raw, headers["Content-Encoding"] = gzip.compress(raw), "gzip"
    return raw, headers


async def post(client: TestClient, cred: str | None, data: Any, path: str = "/api/v1/ingest", compress: bool = True,
               headers: dict[str, str] | None = None):
    """POST a payload (with extra `headers`); return (status, JSON answer, headers)."""
    raw, sent = body(data, compress)
    headers = {**sent, **(headers or {})}
    if cred:
        headers["Authorization"] = f"Bearer {cred}"
    async with client.post(path, data=raw, headers=headers) as response:
        return response.status, await response.json(content_type=None), response.headers


def expected_pairs(data: dict, province: str = "ha-tinh", commune: str = "dong-loc", agent: str = "quay-01"):
    """Return the set of (series labels, timestamp) a payload must produce in VM."""
    out = set()
    for m in data["measurements"]:
        tags = {**{k: v for k, v in m["tags"].items() if k not in ("province", "commune", "agent")},
                "province": province, "commune": commune, "agent": agent}
        for field in m["fields"]:
            labels = tuple(sorted({**tags, "__name__": f"{m['name']}_{field}"}.items()))
            out.add((labels, m["time"]))
    return out


class CollectorProcess:
    """`cmon collector run` as a real process (optionally with a Python prelude run first, for fault hooks)."""

    def __init__(self, tmp: Path, vm_url: str, prelude: str = "", **limits: Any) -> None:
        self.port = free_port()
        self.path = tmp / "collector.yaml"
        self.path.write_text(yaml.safe_dump(config_dict(tmp / "state", vm_url, port=self.port, **limits)))
        self.prelude = prelude
        self.process: subprocess.Popen | None = None
        self.log = tmp / "collector.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "CollectorProcess":
        code = f"{self.prelude}\nimport sys\nfrom cmon.cli import main\nsys.exit(main(['--log-level', 'info', " \
               f"'collector', 'run', '-c', {str(self.path)!r}]))"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"collector exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("collector did not start")

    def peak_rss_kb(self) -> int:
        """Return the process's peak resident set (VmHWM), kB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def http_post(url: str, data: bytes, headers: dict, timeout: float = 30.0) -> tuple[int, dict, dict]:
    """POST with urllib (for a collector running in another process); return (status, JSON, headers)."""
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}"), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)


def enroll_direct(state_dir: Path, commune: str = "dong-loc", agent: str = "quay-01") -> str:
    """Enroll an agent in a collector's state file (what `cmon collector token create` + enroll do)."""
    from collector.auth import Auth
    from collector.db import connect

    conn = connect(state_dir / "collector.sqlite")
    try:
        auth = Auth(conn, "ha-tinh")
        return auth.enroll(auth.create_token(commune, 3600), agent)[0]
    finally:
        conn.close()




# Run inside a collector process (CollectorProcess's prelude): SIGKILL once the database has the batch and its
# events are stored, before the range is recorded — the crash that makes the agent resend what was written.
CRASH_BEFORE_ACK = """
import os, signal
import collector.acks as acks
async def _die(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
acks.Acks.record = _die
"""


def post_to_a_crashing_collector(tmp_path: Path, vm_url: str, agent: str, data: dict) -> tuple[bytes, dict]:
    """Enroll `agent`, post `data` to a collector that dies before acknowledging it (asserted: killed by SIGKILL);
    return the request body and headers to resend."""
    import pytest

    crashing = CollectorProcess(tmp_path, vm_url, prelude=CRASH_BEFORE_ACK)
    cred = enroll_direct(tmp_path / "state", agent=agent)
    raw = gzip.compress(json.dumps(data).encode())
    headers = {"Authorization": f"Bearer {cred}", "Content-Encoding": "gzip", "Content-Type": "application/json"}
    crashing.start()
    try:
        with pytest.raises(OSError):  # the connection dies with the process
            http_post(crashing.url + "/api/v1/ingest", raw, headers)
        assert crashing.process.wait(10) == -9
    finally:
        crashing.stop()
    return raw, headers
