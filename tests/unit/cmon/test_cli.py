"""Tests for the `cmon` command: check-config and probe, exit codes, filters, JSON and table output."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cmon import cli

BAD_CONFIGS = Path(__file__).parents[1] / "testdata" / "bad-configs"


@pytest.fixture
def closed_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(tmp_path: Path, up_port: int, down_port: int | None = None) -> Path:
    down = (
        f"  email:\n    - {{name: mail-smtp, probe: tcp, host: 127.0.0.1, port: {down_port}, lines: [primary]}}\n"
        if down_port
        else ""
    )
    text = f"""\
agent: {{province: ha-tinh, commune: dong-loc, id: quay-01, display_name: "Trung tâm PVHCC xã Đồng Lộc"}}
lines:
  primary: {{description: "VNPT fiber"}}
  backup: {{source: 127.0.0.2}}
services:
  ioffice:
    - {{name: ioffice-https, probe: tcp, host: 127.0.0.1, port: {up_port}}}
    - {{name: ioffice-alt, probe: tcp, host: localhost, port: {up_port}, ip_family: ipv4, lines: [backup]}}
{down}"""
    path = tmp_path / "agent.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_check_config_ok_prints_a_summary(tmp_path: Path, capsys, listening_port: int) -> None:
    path = write_config(tmp_path, listening_port, 1)
    status, out, err = run(capsys, "check-config", str(path))
    assert (status, err) == (0, "")
    assert out == f"{path}: OK — 3 targets in 2 services, 2 lines (primary, backup), agent ha-tinh/dong-loc/quay-01\n"


def test_check_config_prints_every_error_and_exits_2(tmp_path: Path, capsys, monkeypatch, listening_port) -> None:
    good = write_config(tmp_path, listening_port)
    monkeypatch.chdir(BAD_CONFIGS)
    status, out, err = run(capsys, "check-config", "values.yaml", str(good), "targets.yaml")
    assert status == 2
    assert out == f"{good}: OK — 2 targets in 1 service, 2 lines (primary, backup), agent ha-tinh/dong-loc/quay-01\n"
    expected = (
        (BAD_CONFIGS / "values.expected").read_text().splitlines()
        + ["values.yaml: 8 errors"]
        + (BAD_CONFIGS / "targets.expected").read_text().splitlines()
        + ["targets.yaml: 7 errors"]
    )
    assert err.splitlines() == expected


def test_probe_json_all_up(tmp_path: Path, capsys, listening_port: int) -> None:
    status, out, err = run(capsys, "probe", "-c", str(write_config(tmp_path, listening_port)), "--json")
    assert status == 0, err
    objects = [json.loads(line) for line in out.splitlines()]
    assert [(o["tags"]["target"], o["tags"]["line"]) for o in objects] == [
        ("ioffice-https", "primary"),
        ("ioffice-https", "backup"),
        ("ioffice-alt", "backup"),
    ]
    for o in objects:
        assert set(o) == {"name", "tags", "fields", "time", "result"}
        assert o["name"] == "probe" and o["result"] == "ok" and o["fields"]["up"] == 1.0
        assert o["tags"]["province"] == "ha-tinh" and o["tags"]["agent"] == "quay-01"
        assert o["fields"]["connect_ms"] >= 0 and isinstance(o["time"], int)


def test_probe_exits_1_when_a_target_is_down(tmp_path: Path, capsys, listening_port, closed_port) -> None:
    path = write_config(tmp_path, listening_port, closed_port)
    status, out, _ = run(capsys, "probe", "-c", str(path), "--json")
    assert status == 1
    down = [json.loads(line) for line in out.splitlines() if '"mail-smtp"' in line]
    assert [(o["result"], o["fields"]["up"], o["tags"]["line"]) for o in down] == [("refused", 0.0, "primary")]
    assert down[0]["detail"].startswith("connection refused")


def test_probe_filters_by_target_service_and_line(tmp_path: Path, capsys, listening_port, closed_port) -> None:
    path = str(write_config(tmp_path, listening_port, closed_port))

    def pairs(*extra: str) -> tuple[int, list[tuple[str, str]]]:
        status, out, _ = run(capsys, "probe", "-c", path, "--json", *extra)
        return status, [(json.loads(row)["tags"]["target"], json.loads(row)["tags"]["line"]) for row in out.splitlines()]

    assert pairs("--target", "ioffice-https") == (0, [("ioffice-https", "primary"), ("ioffice-https", "backup")])
    assert pairs("--line", "backup") == (0, [("ioffice-https", "backup"), ("ioffice-alt", "backup")])
    assert pairs("--target", "ioffice-https", "--line", "primary") == (0, [("ioffice-https", "primary")])
    assert pairs("--service", "email") == (1, [("mail-smtp", "primary")])
    assert pairs("--target", "mail-smtp", "--target", "ioffice-alt") == (
        1, [("ioffice-alt", "backup"), ("mail-smtp", "primary")]
    )


def test_probe_unknown_names_exit_2_with_the_valid_ones(tmp_path: Path, capsys, listening_port) -> None:
    path = str(write_config(tmp_path, listening_port, 1))
    assert run(capsys, "probe", "-c", path, "--target", "ioffice-http") == (
        2, "", "cmon probe: unknown target 'ioffice-http' — did you mean 'ioffice-https'? "
        "(valid targets: ioffice-https, ioffice-alt, mail-smtp)\n",
    )
    assert run(capsys, "probe", "-c", path, "--line", "4g") == (
        2, "", "cmon probe: unknown line '4g' (valid lines: primary, backup)\n"
    )
    assert run(capsys, "probe", "-c", path, "--service", "mail") == (
        2, "", "cmon probe: unknown service 'mail' — did you mean 'email'? (valid services: ioffice, email)\n"
    )
    status, out, err = run(capsys, "probe", "-c", path, "--target", "mail-smtp", "--line", "backup")
    assert (status, out) == (2, "") and "nothing to run" in err


def test_probe_with_a_bad_config_exits_2(capsys, monkeypatch) -> None:
    monkeypatch.chdir(BAD_CONFIGS)
    status, out, err = run(capsys, "probe", "-c", "targets.yaml")
    assert (status, out) == (2, "")
    assert err.splitlines() == (BAD_CONFIGS / "targets.expected").read_text().splitlines()


def test_probe_table_for_people(tmp_path: Path, capsys, listening_port, closed_port) -> None:
    status, out, _ = run(capsys, "probe", "-c", str(write_config(tmp_path, listening_port, closed_port)))
    assert status == 1
    lines = out.splitlines()
    assert lines[0] == "Agent ha-tinh/dong-loc/quay-01 — Trung tâm PVHCC xã Đồng Lộc"
    header = lines[2]
    assert header.split() == ["SERVICE", "TARGET", "PROBE", "LINE", "STATUS", "TIMINGS", "DETAIL"]
    rows = lines[3:-1]
    assert [row.split()[:5] for row in rows] == [
        ["ioffice", "ioffice-https", "tcp", "primary", "OK"],
        ["ioffice", "ioffice-https", "tcp", "backup", "OK"],
        ["ioffice", "ioffice-alt", "tcp", "backup", "OK"],
        ["email", "mail-smtp", "tcp", "primary", "DOWN"],
    ]
    status_column = header.index("STATUS")
    assert all(row[status_column:].startswith(("OK ", "DOWN ")) for row in rows)  # columns line up
    assert "connect" in rows[0] and " ms" in rows[0]
    assert rows[3].endswith("refused: connection refused (nothing listening on that port, or a firewall rejects it)")
    assert lines[-1] == "3 up, 1 down (4 probe runs)"


def test_the_console_script_entry_point(tmp_path: Path, listening_port: int) -> None:
    version = subprocess.run([sys.executable, "-m", "cmon", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("cmon ")
    usage = subprocess.run([sys.executable, "-m", "cmon", "probe"], capture_output=True, text=True)
    assert usage.returncode == 2 and "-c/--config" in usage.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "cmon", "check-config", "empty.yaml"], capture_output=True, text=True, cwd=BAD_CONFIGS
    )
    assert bad.returncode == 2
    assert bad.stderr == "empty.yaml:1: the file is empty: it needs at least the keys agent: and services:\nempty.yaml: 1 error\n"


def test_probe_the_lab_config_against_the_real_province(province, tmp_path: Path, capsys) -> None:
    """configs/lab.yaml, moved onto the loopback province's addresses, runs every probe up over both lines."""
    from probes.registry import loadable as probe_modules
    from lab.loopback import PROVINCE_ADDRESSES

    missing = {"http", "tcp", "tls", "icmp", "smtp", "imap", "dns"} - set(probe_modules()[0])
    if missing:
        pytest.skip(f"probe modules not available in this tree yet: {sorted(missing)}")
    text = (Path(__file__).resolve().parents[3] / "configs" / "lab.yaml").read_text(encoding="utf-8")
    for address in PROVINCE_ADDRESSES.values():
        text = text.replace(f"198.51.100.{address.rsplit('.', 1)[1]}", address)
    text = text.replace("198.51.100.80", "127.0.0.80").replace("10.20.0.11", "127.0.0.2")
    assert "198.51.100." not in text.split("agent:")[1]  # the header comment may mention the range
    (tmp_path / "lab.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "pki").symlink_to(province.workdir / "pki")
    status, out, err = run(capsys, "probe", "-c", str(tmp_path / "lab.yaml"), "--json")
    results = [json.loads(line) for line in out.splitlines()]
    down = [(r["tags"]["target"], r["tags"]["line"], r["result"], r.get("detail")) for r in results if r["result"] != "ok"]
    assert (status, down) == (0, [])
    assert len(results) == 2 * 14
    assert {r["tags"]["probe"] for r in results} == {"http", "tcp", "tls", "icmp", "smtp", "imap", "dns"}


KNOWN_KINDS = ("an agent config has agent: and services:, a collector config province:, listen: and database:, "
               "a directory config province:, name: and communes:")


def test_check_config_refuses_a_file_whose_keys_fit_no_kind_naming_every_kind(tmp_path: Path, capsys) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("# alert rules, a kind cmon does not know yet\nrules: []\nreceivers: {}\n", encoding="utf-8")
    assert run(capsys, "check-config", str(path)) == (2, "", (
        f"{path}:2: not a config file cmon knows: its top-level keys (rules:, receivers:) are none of a known "
        f"kind's ({KNOWN_KINDS}); to check it as one anyway: --kind agent|collector|directory\n"
        f"{path}: 1 error\n"))


def test_check_config_takes_a_file_of_typos_for_the_kind_they_look_like(tmp_path: Path, capsys) -> None:
    path = tmp_path / "typos.yaml"
    path.write_text("provnce: ha-tinh\nlisten: {port: 8443}\n", encoding="utf-8")  # one known key, one typo
    status, _, err = run(capsys, "check-config", str(path))
    assert status == 2 and f"{path}:1: unknown key 'provnce' — did you mean 'province'?" in err.splitlines()
    path.write_text("agnet: {}\nservics: {}\n", encoding="utf-8")  # typos only: the agent's, by their look
    status, _, err = run(capsys, "check-config", str(path))
    assert status == 2 and f"{path}:1: unknown key 'agnet' — did you mean 'agent'?" in err.splitlines()


def test_check_config_kind_forces_the_kind(tmp_path: Path, capsys, listening_port: int) -> None:
    path = tmp_path / "mixed.yaml"
    path.write_text("province: ha-tinh\nservices: {}\n", encoding="utf-8")
    status, out, err = run(capsys, "check-config", "--kind", "collector", str(path))
    assert (status, out) == (2, "") and err.splitlines() == [
        f"{path}:1: missing required key 'listen'",
        f"{path}:1: missing required key 'database'",
        f"{path}:2: unknown key 'services' — did you mean 'province'?",
        f"{path}: 3 errors",
    ]  # no "checked as" note: the kind was given
    good = write_config(tmp_path, listening_port)
    status, out, err = run(capsys, "check-config", "--kind", "agent", str(good))
    assert (status, err) == (0, "") and out.startswith(f"{good}: OK — 2 targets")
    with pytest.raises(SystemExit):
        cli.main(["check-config", "--kind", "rules", str(good)])
    assert "invalid choice: 'rules'" in capsys.readouterr().err


def test_a_new_kind_of_config_is_one_entry(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    def check_rules(located, file: str) -> str:
        return f"{len(located.data['rules'])} rules"

    rules = cli.ConfigKind("alert-rules", frozenset({"rules", "receivers"}), ("rules",), check_rules)
    monkeypatch.setattr(cli, "CONFIG_KINDS", (*cli.CONFIG_KINDS, rules))
    path = tmp_path / "rules.yaml"
    path.write_text("rules: [a, b]\n", encoding="utf-8")
    assert run(capsys, "check-config", str(path)) == (0, f"{path}: OK — 2 rules\n", "")
    assert run(capsys, "check-config", "--kind", "alert-rules", str(path))[0] == 0
    path.write_text("other: 1\n", encoding="utf-8")
    status, _, err = run(capsys, "check-config", str(path))
    assert status == 2 and (f"({KNOWN_KINDS}, an alert-rules config rules:); to check it as one anyway: "
                            "--kind agent|collector|directory|alert-rules") in err


def test_every_kind_is_told_by_keys_it_really_has() -> None:
    names = [kind.name for kind in cli.CONFIG_KINDS]
    assert names == ["agent", "collector", "directory"] and len(set(names)) == len(names)
    for kind in cli.CONFIG_KINDS:
        assert set(kind.required) <= kind.keys
