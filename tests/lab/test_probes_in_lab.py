"""Every probe over real network paths: the lab's counter PC probing the province through the commune router.

Runs `cmon probe --json` inside the pc namespace (the real CLI, config, runner and probes) against the real
province servers in the dc namespace, over the primary (wan1) and the backup (wan2, by source address).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from lab import Lab
from lab.agent_config import LAB_CONFIG, write_agent_config

CMON = str(Path(sys.executable).with_name("cmon"))
PROBES = {"http", "tcp", "tls", "icmp", "smtp", "imap", "dns"}


@pytest.fixture(scope="module")
def lab_config(lab_with_servers) -> Path:
    return write_agent_config(lab_with_servers)


def cmon_probe(lab: Lab, config: Path, *args: str) -> tuple[int, list[dict]]:
    """Run `cmon probe --json` on the counter PC; return its exit status and the Measurements."""
    proc = lab.exec("pc", [CMON, "probe", "-c", str(config), "--json", *args], capture_output=True, text=True,
                    timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def write_config(lab: Lab, name: str, services: dict, lines: dict | None = None) -> Path:
    """Write a config next to the lab's PKI, with the lab config's identity, lines and resolvers."""
    base = yaml.safe_load(LAB_CONFIG.read_text(encoding="utf-8"))
    config = {"agent": base["agent"], "lines": lines or base["lines"], "resolvers": base["resolvers"],
              "defaults": {"timeout": "5s"}, "services": services}
    path = Path(lab.workdir) / "province" / name
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def test_every_probe_is_up_over_both_lines(lab_with_servers, lab_config):
    status, measurements = cmon_probe(lab_with_servers, lab_config)
    down = [(m["tags"]["target"], m["tags"]["line"], m["result"], m.get("detail")) for m in measurements
            if m["fields"]["up"] != 1.0]
    assert status == 0 and not down, down
    assert {m["tags"]["probe"] for m in measurements} == PROBES
    lines = {m["tags"]["line"] for m in measurements}
    assert lines == {"primary", "backup"}
    for m in measurements:
        assert m["tags"]["province"] == "lab" and m["tags"]["commune"] == "lab-commune"
        assert all(isinstance(v, float) for v in m["fields"].values())
        assert m["fields"]["result_code"] == 0.0


@pytest.mark.parametrize("cut, alive", [("wan1", "backup"), ("wan2", "primary")])
def test_a_cut_line_times_out_while_the_other_line_carries_on(lab_with_servers, lab_config, cut, alive):
    lab_with_servers.cut(cut)
    try:
        status, measurements = cmon_probe(lab_with_servers, lab_config)
    finally:
        lab_with_servers.restore(cut)
    assert status == 1
    for m in measurements:
        line, result = m["tags"]["line"], m["result"]
        if line == alive:
            assert result == "ok", (m["tags"]["target"], line, m.get("detail"))
        else:
            assert result == "timeout", (m["tags"]["target"], line, result, m.get("detail"))
            assert "rtt_ms" not in m["fields"]


def test_each_failure_mode_gives_its_reason(lab_with_servers):
    ca = "pki/root.pem"
    ioffice = "https://ioffice.lab.test"
    services = {
        "ioffice": [
            {"name": "missing-intermediate", "probe": "http", "url": f"{ioffice}:8443/", "ca_file": ca},
            {"name": "expired", "probe": "http", "url": f"{ioffice}:9443/", "ca_file": ca},
            {"name": "maintenance", "probe": "http", "url": f"{ioffice}:10443/", "ca_file": ca,
             "expect_text": "Hệ thống quản lý văn bản"},
            {"name": "status500", "probe": "http", "url": f"{ioffice}:11443/", "ca_file": ca},
            {"name": "self-signed", "probe": "http", "url": f"{ioffice}:13443/", "ca_file": ca},
            {"name": "tls-chain", "probe": "tls", "host": "ioffice.lab.test", "port": 8443, "ca_file": ca},
            {"name": "closed-port", "probe": "tcp", "host": "ioffice.lab.test", "port": 9},
            {"name": "unknown-host", "probe": "http", "url": "https://khong-co.lab.test/", "ca_file": ca},
        ],
        "dvc": [  # the province's own CA, not configured: the certificate is not trusted
            {"name": "dvc-no-ca", "probe": "http", "url": "https://dvc.lab.test/"},
        ],
        "dns": [
            {"name": "nxdomain", "probe": "dns", "query_name": "khong-co.lab.test"},
        ],
    }
    config = write_config(lab_with_servers, "failures.yaml", services, lines={"primary": {}})
    status, measurements = cmon_probe(lab_with_servers, config)
    results = {m["tags"]["target"]: m["result"] for m in measurements}
    assert status == 1
    assert results == {
        "missing-intermediate": "cert_chain_incomplete",
        "expired": "cert_expired",
        "maintenance": "content_mismatch",
        "status500": "bad_status",
        "self-signed": "tls_error",
        "tls-chain": "cert_chain_incomplete",
        "closed-port": "refused",
        "unknown-host": "dns_error",
        "dvc-no-ca": "tls_error",
        "nxdomain": "dns_error",
    }
    for m in measurements:
        assert m["fields"]["up"] == 0.0 and m.get("detail"), m


@pytest.mark.parametrize("role, targets", [
    ("smtp", {"mail-smtp", "mail-submission", "mail-smtps"}),
    ("imap", {"mail-imap", "mail-imaps"}),
    ("ioffice", {"ioffice-web", "ioffice-login", "ioffice-https", "ioffice-cert"}),
])
def test_a_stopped_server_is_refused_and_comes_back(lab_with_servers, lab_config, role, targets):
    lab_with_servers.province.stop(role)
    try:
        _, measurements = cmon_probe(lab_with_servers, lab_config, "--line", "primary")
    finally:
        lab_with_servers.province.start(role)
    results = {m["tags"]["target"]: m["result"] for m in measurements}
    for target in targets:
        assert results[target] == "refused", (target, results[target])
    others = {t: r for t, r in results.items() if t not in targets}
    assert set(others.values()) == {"ok"}, others
    only_targets = sum((["--target", t] for t in targets), [])
    _, again = cmon_probe(lab_with_servers, lab_config, "--line", "primary", *only_targets)
    assert {m["result"] for m in again} == {"ok"}


def test_probes_survive_a_lossy_delayed_line(lab_with_servers, lab_config):
    """40 ms ± 5 ms and 3 % loss towards the province: still up, and the delay shows in the timings."""
    impairment = lab_with_servers.impair("wan1", direction="up", delay_ms=40, jitter_ms=5, loss_pct=3, seed=11)
    try:
        status, measurements = cmon_probe(lab_with_servers, lab_config, "--line", "primary")
    finally:
        stats = impairment.clear()
    down = [(m["tags"]["target"], m["result"], m.get("detail")) for m in measurements if m["result"] != "ok"]
    assert not down, down
    icmp = [m for m in measurements if m["tags"]["probe"] == "icmp"]
    for m in icmp:
        assert 34 < m["fields"]["rtt_ms"] < 47, m["fields"]
    assert stats["seen"] > 100


def test_backup_line_by_dscp_mark(lab_with_servers):
    """One NIC, no second address: the router picks the backup WAN by the DSCP bits the probe sets (CS1 = 8)."""
    services = {"ioffice": [
        {"name": "ioffice-web", "probe": "http", "url": "https://ioffice.lab.test/", "ca_file": "pki/root.pem"},
        {"name": "ioffice-https", "probe": "tcp", "host": "ioffice.lab.test", "port": 443},
        {"name": "ioffice-ping", "probe": "icmp", "host": "198.51.100.10"},
    ], "dns": [{"name": "dns-ioffice", "probe": "dns", "query_name": "ioffice.lab.test"}]}
    config = write_config(lab_with_servers, "dscp.yaml", services, lines={"primary": {}, "backup": {"dscp": 8}})
    lab_with_servers.cut("wan1")
    try:
        _, measurements = cmon_probe(lab_with_servers, config)
    finally:
        lab_with_servers.restore("wan1")
    results = {(m["tags"]["target"], m["tags"]["line"]): m["result"] for m in measurements}
    assert results == {**{(t, "backup"): "ok" for t in ("ioffice-web", "ioffice-https", "ioffice-ping", "dns-ioffice")},
                       **{(t, "primary"): "timeout" for t in ("ioffice-web", "ioffice-https", "ioffice-ping",
                                                               "dns-ioffice")}}
