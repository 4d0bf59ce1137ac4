"""What the collector refuses, end to end: a revoked real agent, and hostile payloads with a real credential.

A refused agent keeps spooling and loses nothing once enrolled again; a hostile request is refused (or its
identity tags overridden) and nothing of it beyond what it was allowed reaches VictoriaMetrics; a hostile
credential (unencodable strings, deep nesting, seqs past 2^63, huge values, stalled uploads) cannot stop the
real agent's delivery, the fleet registry or a clean collector stop.
"""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import time

from collector_helpers import ROOT, body, enroll_direct, http_post, payload
from e2e.harness import AGENT_ID, Pipeline


def test_revoked_agent_is_refused_keeps_spooling_and_delivers_after_reenrollment(pipeline: Pipeline) -> None:
    """`cmon collector revoke` while the agent runs: 403, nothing written for 6 s (6 rounds), nothing lost."""
    pipeline.start_agent()
    time.sleep(3)
    revoke = subprocess.run([sys.executable, "-m", "cmon", "collector", "revoke", "-c",
                             str(pipeline.collector.path), AGENT_ID], cwd=ROOT, capture_output=True, text=True)
    assert revoke.returncode == 0, revoke.stderr
    time.sleep(1.5)  # a request in flight at the revocation completes
    before = pipeline.rows_inserted()
    time.sleep(6)
    assert pipeline.rows_inserted() == before, "a revoked agent's measurements were written"
    pipeline.stop_agent()
    assert pipeline.spool()[2] >= 6  # kept in the spool
    assert "revoked" in pipeline.agent_log.read_text()  # and the log says why
    pipeline.enroll()  # a new one-time token
    pipeline.start_agent()
    pipeline.wait_delivered()
    summary = pipeline.finish()
    assert summary["local-tcp/-"] >= 12, summary


def test_hostile_requests_are_refused_or_overridden_and_nothing_of_theirs_is_written(pipeline: Pipeline) -> None:
    """Bad credential, oversized, garbled, gzip bomb, line-protocol injection, another commune's tags."""
    credential = json.loads((pipeline.config_path.parent / "credential.json").read_text())["credential"]
    url = pipeline.collector.url + "/api/v1/ingest"

    def send(data, cred: str | None = credential, compress: bool = True, raw: bytes | None = None) -> int:
        content, headers = body(data, compress) if raw is None else (raw, {"Content-Encoding": "gzip"})
        if cred:
            headers["Authorization"] = f"Bearer {cred}"
        return http_post(url, content, headers)[0]

    rows = pipeline.rows_inserted()
    assert send(payload(1, 5)) == 200  # the credential works: 5 × 3 samples
    assert send(payload(1, 5, spool="s2"), cred="cmc.0000000000000000.bad") == 401
    assert send(payload(1, 5, spool="s3"), cred=None) == 401
    assert send(payload(1, 5000, spool="s4", fields={f"f{i}": 1.0 for i in range(60)}), compress=False) == 413
    assert send(None, raw=b"\x1f\x8b garbled, not gzip") == 400
    assert send(b"{not json", compress=True) == 400
    assert send(None, raw=gzip.compress(b"0" * 200_000_000, 9)) == 413  # a gzip bomb: 200 MB from ~200 kB
    assert send(payload(1, 1, spool="s5", tags={"service": "dns", "target": "x\ncommune=evil y=1"})) == 400
    injected = {"service": "dns", "target": 'a,commune=evil b=1 c\\"', "probe": "tcp", "line": "primary",
                "province": "other", "commune": "evil", "agent": "mallory"}
    assert send(payload(1, 1, spool="s6", tags=injected)) == 200  # accepted, identity overridden, escaped
    assert pipeline.rows_inserted() - rows == (5 + 1) * 3
    series = [s["metric"] for s in pipeline.vm.export('{__name__=~"probe_.*"}')]
    assert {(m["province"], m["commune"], m["agent"]) for m in series} == {("ha-tinh", "dong-loc", AGENT_ID)}
    assert {m["target"] for m in series} == {"ioffice-web", injected["target"]}  # stored literally
    assert {key for m in series for key in m} <= {"__name__", "province", "commune", "agent", "service", "target",
                                                   "probe", "line"}  # no tag smuggled in


def test_a_hostile_credential_cannot_stop_the_real_agent_the_registry_or_a_clean_stop(pipeline: Pipeline) -> None:
    """The hostile tester's findings, with the real agent running beside them: every hostile request is a 400
    with a reason, then 20 stalled uploads hold only their own credential's places (429 for it), and the real
    agent delivers every round throughout."""
    hostile = enroll_direct(pipeline.tmp / "state", agent="mallory-01")
    pipeline.start_agent()
    url = pipeline.collector.url
    hostile_bodies = [
        b'{"version":1,"state":"running","agent":{"version":"\\ud800"}}',
        json.dumps(payload(1, 1, spool="m1", tags={"service": "dns", "target": "\ud800"})).encode(),
        b'{"version":1,"agent":' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        json.dumps(payload(2**63, 1, spool="m2")).encode(),
        json.dumps(payload(1, 1, spool="m3", fields={"up": 1e300})).encode(),
        json.dumps({**payload(1, 1, spool="m4"), "version": True}).encode(),
    ]

    def attack(seconds: float) -> set[int]:
        statuses, until = set(), time.monotonic() + seconds
        while time.monotonic() < until:
            for raw in hostile_bodies:
                for path in ("/api/v1/ingest", "/api/v1/heartbeat"):
                    status, answer, _ = http_post(url + path, gzip.compress(raw), {
                        "Authorization": f"Bearer {hostile}", "Content-Encoding": "gzip"})
                    assert answer.get("error"), (path, raw[:60], status, answer)
                    statuses.add(status)
        return statuses

    assert attack(4) == {400}  # four of the agent's 1 s rounds under attack
    status, answer, _ = http_post(url + "/api/v1/enroll", gzip.compress(hostile_bodies[2]), {"Content-Encoding": "gzip"})
    assert status == 400 and "nests deeper" in answer["error"]  # unauthenticated: no 500 either
    stalled = []
    try:
        for _ in range(20):  # headers and one byte of body, never more
            sock = socket.create_connection(("127.0.0.1", pipeline.collector.port), timeout=5)
            sock.sendall(f"POST /api/v1/ingest HTTP/1.1\r\nHost: c\r\nAuthorization: Bearer {hostile}\r\n"
                         "Content-Encoding: gzip\r\nContent-Length: 50000\r\n\r\n\x1f".encode())
            stalled.append(sock)
        assert attack(3) == {429}  # its own places are taken by its own stalled uploads...
        pipeline.wait_delivered()  # ...and the real agent's are not
        row = pipeline.registry_row()
        assert row["state"] == "running" and row["last_seen_ms"] > time.time() * 1000 - 5000
        assert pipeline.collector_metric("cmon_collector_registry_rows_refused_total") == 0
    finally:
        for sock in stalled:
            sock.close()
    summary = pipeline.finish()
    assert summary["local-tcp/-"] >= 7, summary
    pipeline.collector.process.terminate()
    assert pipeline.collector.process.wait(15) == 0
    log = pipeline.collector.log.read_text()
    assert "Traceback" not in log and "cannot write the fleet registry" not in log, log[-3000:]
