"""What the collector refuses, end to end: a revoked real agent, and hostile payloads with a real credential.

A refused agent keeps spooling and loses nothing once enrolled again; a hostile request is refused (or its
identity tags overridden) and nothing of it beyond what it was allowed reaches VictoriaMetrics.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time

from collector_helpers import ROOT, body, http_post, payload
from e2e.harness import AGENT_ID, Pipeline


def test_revoked_agent_is_refused_keeps_spooling_and_delivers_after_reenrollment(pipeline: Pipeline) -> None:
    """`cmon collector revoke` while the agent runs: 403, nothing written for 6 s (6 rounds), nothing lost."""
    pipeline.start_agent()
    time.sleep(3)
    revoke = subprocess.run([sys.executable, "-m", "agent.cli", "collector", "revoke", "-c",
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
