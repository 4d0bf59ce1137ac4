"""Slow and vanished clients against a real collector process (real sockets, a real VictoriaMetrics): one
credential's stalled uploads cannot take the places another agent needs, a stalled body is cut at
`limits.body_timeout`, abandoned connections are closed within `limits.keepalive` (file descriptors counted in
/proc), a client that vanishes mid-body frees its place, and a hostile session still ends in a clean exit 0."""

from __future__ import annotations

import gzip
import json
import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from collector.app import runner_kwargs
from collector_helpers import CollectorProcess, enroll_direct, http_post, make_config, payload
from lab.victoria import available

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")


def fds(pid: int) -> int:
    """Return how many file descriptors the process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def headers_of(path: str, credential: str, length: int, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: collector\r\nAuthorization: Bearer {credential}\r\n"
            f"Content-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {length}\r\n{extra}\r\n"
            ).encode()


def read_status(sock: socket.socket, timeout: float) -> tuple[int, dict, bytes]:
    """Read one response; return (status, headers, body); (0, {}, b"") when nothing came in time."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return 0, {}, b""
            data += chunk
    except (socket.timeout, ConnectionError):
        return 0, {}, b""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest


def metric(url: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    raise AssertionError(f"no {name}")


def send_batch(url: str, credential: str, data: dict) -> tuple[int, dict, float]:
    raw = gzip.compress(json.dumps(data).encode())
    headers = {"Authorization": f"Bearer {credential}", "Content-Encoding": "gzip", "Content-Type": "application/json"}
    started = time.monotonic()
    status, answer, _ = http_post(url + "/api/v1/ingest", raw, headers, timeout=20)
    return status, answer, time.monotonic() - started


def test_40_slow_loris_uploads_of_one_credential_do_not_stop_another_agent(vm, tmp_path):
    """Headers and one byte of body, 40 times: 4 held (its own limit), 36 × 429 at once, another agent 200;
    after body_timeout the 4 get 408 and every place is free again."""
    collector = CollectorProcess(tmp_path, vm.url, body_timeout=3, max_inflight=8)
    hostile, good = enroll_direct(tmp_path / "state", agent="loris-01"), enroll_direct(tmp_path / "state", agent="good-01")
    collector.start()
    sockets = []
    try:
        opened = time.monotonic()
        for _ in range(40):
            sock = connect(collector.port)
            sock.sendall(headers_of("/api/v1/ingest", hostile, 100_000) + b"\x1f")
            sockets.append(sock)
        answers = [read_status(sock, 0.5) for sock in sockets]
        limited = [a for a in answers if a[0] == 429]
        assert len(limited) == 36, [a[0] for a in answers]
        assert all(a[1]["retry-after"] == "5" and b"4 requests in progress" in a[2] for a in limited)
        held = [sock for sock, a in zip(sockets, answers) if a[0] == 0]
        assert len(held) == 4

        status, answer, seconds = send_batch(collector.url, good, payload(1, 50))
        assert status == 200 and answer["written"] == 50, answer
        assert seconds < 1.0 and time.monotonic() - opened < 3, seconds  # while the four still stall
        assert metric(collector.url, "cmon_collector_ingest_inflight") == 4
        status, answer, _ = send_batch(collector.url, hostile, payload(1, 5))
        assert status == 429, answer  # the stalling credential itself must wait

        timed_out = [read_status(sock, 5) for sock in held]
        assert [a[0] for a in timed_out] == [408] * 4, timed_out
        assert all(a[1].get("connection") == "close" and b"did not arrive within 3 s" in a[2] for a in timed_out)
        assert time.monotonic() - opened >= 2.9
        assert metric(collector.url, "cmon_collector_ingest_inflight") == 0
        assert metric(collector.url, "cmon_collector_body_timeouts_total") == 4
        assert metric(collector.url, "cmon_collector_agent_limited_total") == 37
        status, answer, _ = send_batch(collector.url, hostile, payload(1, 5))
        assert status == 200, answer  # nothing of its own is blocked for good either
    finally:
        for sock in sockets:
            sock.close()
        collector.stop()


def test_abandoned_connections_are_closed_within_the_keepalive_bound(vm, tmp_path):
    """Idle from the start, headers never finished, or idle after a request (an agent whose line died): every
    connection is closed by the collector within limits.keepalive; its file descriptors come back."""
    assert runner_kwargs(make_config(tmp_path, vm.url))["keepalive_timeout"] == 75  # the default bound
    collector = CollectorProcess(tmp_path, vm.url, keepalive=2)
    credential = enroll_direct(tmp_path / "state", agent="gone-01")
    collector.start()
    pid = collector.process.pid
    sockets: list[socket.socket] = []
    try:
        time.sleep(0.3)
        baseline = fds(pid)
        opened = time.monotonic()
        beat = gzip.compress(json.dumps({"version": 1, "state": "running"}).encode())
        for i in range(30):
            sock = connect(collector.port)
            if i % 3 == 1:  # headers that never end
                sock.sendall(b"POST /api/v1/heartbeat HTTP/1.1\r\nHost: collector\r\n")
            elif i % 3 == 2:  # one request answered, then silence
                sock.sendall(headers_of("/api/v1/heartbeat", credential, len(beat)) + beat)
                assert read_status(sock, 5)[0] == 200
            sockets.append(sock)
        time.sleep(0.3)
        assert fds(pid) >= baseline + 30
        closed_after = []
        for sock in sockets:
            sock.settimeout(max(0.1, opened + 6 - time.monotonic()))
            try:
                assert sock.recv(1024) in (b"",)  # EOF: the collector closed it
            except ConnectionResetError:
                pass
            closed_after.append(time.monotonic() - opened)
        assert max(closed_after) < 2 + 1.5, closed_after
        assert min(closed_after) >= 1.5, closed_after  # the bound, not something else, closed them
        time.sleep(0.2)
        assert fds(pid) <= baseline + 1, (fds(pid), baseline)
    finally:
        for sock in sockets:
            sock.close()
        collector.stop()


def test_a_client_vanishing_mid_body_frees_its_places(vm, tmp_path):
    """The line dies after half the body (the client closes): no 500, no traceback, the credential works."""
    collector = CollectorProcess(tmp_path, vm.url, max_uploads_per_agent=1)
    credential = enroll_direct(tmp_path / "state", agent="cut-01")
    collector.start()
    try:
        body = gzip.compress(json.dumps(payload(1, 200)).encode())
        for _ in range(3):
            sock = connect(collector.port)
            sock.sendall(headers_of("/api/v1/ingest", credential, len(body)) + body[: len(body) // 2])
            time.sleep(0.2)
            sock.close()
        time.sleep(0.3)
        assert metric(collector.url, "cmon_collector_ingest_inflight") == 0
        status, answer, _ = send_batch(collector.url, credential, payload(1, 20))
        assert status == 200 and answer["written"] == 20, answer  # its one place is free again
        log = collector.log.read_text()
        assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]
    finally:
        collector.stop()


def test_after_a_hostile_session_the_registry_persists_and_sigterm_exits_0(vm, tmp_path):
    """The hostile tester's sequence against the real process: a surrogate heartbeat used to stop every flush."""
    collector = CollectorProcess(tmp_path, vm.url)
    state = tmp_path / "state"
    hostile, good = enroll_direct(state, agent="evil-01"), enroll_direct(state, agent="fine-01")
    collector.start()
    try:
        url = collector.url + "/api/v1/heartbeat"
        for raw in (b'{"version":1,"state":"running","agent":{"version":"\\ud800"}}',
                    b'{"version":1,"state":"running","agent":{"config_version":"a\\u0000b"}}',
                    b'{"version":1,"state":"running","agent":{"x":' + b"[" * 3000 + b"]" * 3000 + b"}}"):
            status, answer, _ = http_post(url, gzip.compress(raw), {"Authorization": f"Bearer {hostile}",
                                                                    "Content-Encoding": "gzip"})
            assert status == 400 and answer["error"], answer
        status, _, _ = http_post(url, gzip.compress(json.dumps({"version": 1, "state": "stopping", "agent": {
            "version": "0.4.0", "health": "ok"}}).encode()), {"Authorization": f"Bearer {good}",
                                                              "Content-Encoding": "gzip"})
        assert status == 200
        time.sleep(2.5)  # one registry flush (every 2 s)
        assert _rows(state) == {"fine-01": ("0.4.0", "stopping")}
        collector.process.terminate()
        assert collector.process.wait(15) == 0
        log = collector.log.read_text()
        assert "cannot write the fleet registry" not in log and "Traceback" not in log, log[-3000:]
    finally:
        collector.stop()


def _rows(state: Path) -> dict:
    conn = sqlite3.connect(state / "collector.sqlite")
    try:
        return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT agent, version, state FROM agents")}
    finally:
        conn.close()
