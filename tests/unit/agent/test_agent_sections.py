"""Tests for the long-running agent's config sections (collector:, spool:, schedule:) and the `shared:` key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from core.config.types import parse_size

HEAD = "agent: {province: ha-tinh, commune: dong-loc, id: quay-01}\n"
SERVICES = "services:\n  ioffice:\n    - {name: web, probe: tcp, host: 127.0.0.1, port: 443}\n"


def load(tmp_path: Path, text: str):
    path = tmp_path / "agent.yaml"
    path.write_text(HEAD + text + SERVICES, encoding="utf-8")
    return load_config(path)


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return [f"{i.line}: {'.'.join(map(str, i.path))}: {i.message}" for i in info.value.issues]


def test_defaults_without_the_sections(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.collector is None
    assert config.spool.max_size == 100_000_000
    assert config.relative(config.spool.path) == tmp_path.resolve() / "spool.db"
    assert config.schedule.confirm_count == 3 and config.schedule.confirm_interval == 5.0
    assert config.targets[0].is_shared  # ioffice is a central service


def test_sections_as_written(tmp_path: Path) -> None:
    config = load(tmp_path, (
        "collector: {url: 'https://collector.ha-tinh.example:8443', backlog_rate: 64kB, timeout: 30s}\n"
        "spool: {path: /var/lib/cmon/spool.db, max_size: 50MiB}\n"
        "schedule: {jitter: 0.2, commune_agents: 8, probers: 1}\n"
    ))
    assert str(config.collector.url) == "https://collector.ha-tinh.example:8443/"
    assert config.collector.backlog_rate == 64_000
    assert config.collector.timeout == 30.0
    assert config.spool.max_size == 50 * 2**20
    assert config.relative(config.spool.path) == Path("/var/lib/cmon/spool.db")
    assert (config.schedule.commune_agents, config.schedule.probers, config.schedule.jitter) == (8, 1, 0.2)


def test_plain_http_needs_allow_http(tmp_path: Path) -> None:
    assert errors(tmp_path, "collector: {url: 'http://10.0.0.5:8080'}\n") == [
        "2: collector: the collector URL is plain http://: use https://, or set allow_http: true "
        "(only on a trusted network: the credential would travel in clear)"
    ]
    config = load(tmp_path, "collector: {url: 'http://10.0.0.5:8080', allow_http: true}\n")
    assert config.collector.url.scheme == "http"


def test_bad_values_are_reported_with_their_key(tmp_path: Path) -> None:
    found = errors(tmp_path, "spool: {max_size: lots}\nschedule: {probers: 0, peer: [a]}\n")
    assert any(e.startswith("2: spool.max_size:") for e in found), found
    assert any(e.startswith("3: schedule.probers:") for e in found), found
    assert any("peer" in e and "peers" in e for e in found), found


def test_shared_key_overrides_the_service_default(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(HEAD + (
        "services:\n"
        "  ioffice:\n    - {name: web, probe: tcp, host: 127.0.0.1, port: 443, shared: false}\n"
        "  dns:\n    - {name: resolver, probe: tcp, host: 127.0.0.1, port: 53, shared: true}\n"
        "    - {name: router, probe: tcp, host: 127.0.0.1, port: 80}\n"
    ), encoding="utf-8")
    assert [t.is_shared for t in load_config(path).targets] == [False, True, False]
    path.write_text(HEAD + "services:\n  dns:\n    - {name: r, probe: tcp, host: 127.0.0.1, port: 53, shared: 1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [i.message for i in info.value.issues] == ["should be true or false"]


@pytest.mark.parametrize(("text", "size"), [(1024, 1024), ("100MB", 100_000_000), ("64 KiB", 65536), ("1.5kB", 1500)])
def test_parse_size(text, size) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-5", "ten", True, "5 TB"])
def test_parse_size_refuses(text) -> None:
    with pytest.raises(ValueError):
        parse_size(text)
