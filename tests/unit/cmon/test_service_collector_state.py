"""cmon.service.systemd: installing the collector warns when its state (`data_dir`) is outside its state directory,
where the hardened unit cannot write (ProtectSystem=strict): tests/system saw such a collector crash-loop with
"Read-only file system" under a real systemd."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cmon.service import install

ROOT = Path(__file__).resolve().parents[3]
CONFIG = "/etc/commune-monitor/collector.yaml"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "etc" / "commune-monitor").mkdir(parents=True)
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\n")
    return tmp_path


def write_config(root: Path, data_dir: str | None) -> None:
    data = {"province": "ha-tinh", "listen": {"host": "127.0.0.1", "port": 443, "allow_http": True},
            "database": {"url": "http://127.0.0.1:8428"}}
    if data_dir is not None:
        data["data_dir"] = data_dir
    (root / CONFIG.lstrip("/")).write_text(yaml.safe_dump(data))


def state_warnings(root: Path) -> list[str]:
    return [w for w in install(CONFIG, role="collector", root=root).warnings if "(data_dir)" in w]


@pytest.mark.parametrize("data_dir", ["/var/lib/commune-monitor-collector", "/var/lib/commune-monitor-collector/db"])
def test_a_data_dir_in_the_state_directory_is_not_warned_about(root, data_dir):
    write_config(root, data_dir)
    assert state_warnings(root) == []


@pytest.mark.parametrize("data_dir, seen", [
    ("/var/lib/commune-monitor/collector", "/var/lib/commune-monitor/collector"),  # the old example's
    (None, "/etc/commune-monitor"),  # the default: the config's folder
    ("state", "/etc/commune-monitor/state"),  # relative to the config's folder
])
def test_a_data_dir_elsewhere_is_warned_about_with_the_fix(root, data_dir, seen):
    write_config(root, data_dir)
    [warning] = state_warnings(root)
    assert f"would be in {seen}," in warning and "set `data_dir: /var/lib/commune-monitor-collector`" in warning


def test_the_example_config_keeps_its_state_in_the_state_directory(root):
    example = yaml.safe_load((ROOT / "configs" / "collector-example.yaml").read_text())
    assert example["data_dir"] == "/var/lib/commune-monitor-collector"


def test_a_collector_config_with_errors_is_reported_once(root):
    (root / CONFIG.lstrip("/")).write_text("province: ha-tinh\n")
    warnings = install(CONFIG, role="collector", root=root).warnings
    assert any("error(s): run `cmon check-config" in w for w in warnings)
