"""Tests for agent.config: every bad config gives its exact error lines; good configs load as written."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path
from typing import Literal

import pytest
import yaml

from agent.config import ConfigError, load_config
from core.config.loader import Limits, load_yaml
from probes.registry import loadable as probe_modules
from probes import registry
from probes.base import TargetConfig

TESTDATA = Path(__file__).parents[1] / "testdata" / "bad-configs"
CONFIGS = Path(__file__).resolve().parents[3] / "configs"
BAD_CONFIGS = sorted(TESTDATA.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(issue) for issue in info.value.issues]


@pytest.mark.parametrize("config", BAD_CONFIGS, ids=[p.stem for p in BAD_CONFIGS])
def test_bad_config_gives_exact_errors(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TESTDATA)  # errors name the file as given: keep it short and stable
    expected = config.with_suffix(".expected").read_text(encoding="utf-8").splitlines()
    assert errors_of(Path(config.name)) == expected


def test_every_bad_config_is_paired_with_its_errors() -> None:
    configs = {p.stem for p in TESTDATA.glob("*.yaml")}
    expected = {p.stem for p in TESTDATA.glob("*.expected")}
    assert configs == expected
    assert len(configs) >= 10


def test_error_string_lists_every_issue(tmp_path: Path) -> None:
    path = write(tmp_path, "agent: {province: x, commune: y, id: Z}\nservices: {a: []}\nbogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).splitlines() == [
        f"{path}:1: agent.id: 'Z' is not a valid identifier: use lowercase ASCII letters, digits, '-', '_' or '.' "
        "(e.g. dong-loc); put names with diacritics in display_name",
        f"{path}:2: services.a: this service has no targets",
        f"{path}:3: unknown key 'bogus' (valid keys: agent, collector, defaults, lines, resolvers, schedule, services, spool)",
    ]


def test_unreadable_files(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "missing.yaml") == [
        f"{tmp_path / 'missing.yaml'}:1: cannot read the file: No such file or directory"
    ]
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("agent: {display_name: Đồng}".encode("utf-16"))
    assert errors_of(latin) == [f"{latin}:1: the file is not UTF-8 text: save it as UTF-8"]


GOOD = """\
agent: {province: ha-tinh, commune: dong-loc, id: quay-01, display_name: "Trung tâm PVHCC xã Đồng Lộc"}
lines:
  primary: {description: "VNPT fiber"}
  backup: {source: 192.168.1.201, description: "Viettel 4G"}
  spare:
resolvers: [192.168.1.1, "2001:db8::53"]
defaults:
  timeout: 3s
  tcp: {port: 443, interval: 1m}
services:
  ioffice:
    - {name: ioffice-https, probe: tcp, host: ioffice.example.gov.vn, display_name: "iOffice (HTTPS)"}
    - {name: ioffice-alt, probe: tcp, host: ioffice.example.gov.vn, port: 8443, timeout: 500ms, lines: [backup]}
  email:
    - &smtp {name: mail-smtp, probe: tcp, host: mail.example.gov.vn, port: 25, expect_banner: "^220"}
    - {<<: *smtp, name: mail-submission, port: 587}
"""


def test_good_config_loads_with_defaults_merged(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.agent.display_name == "Trung tâm PVHCC xã Đồng Lộc"
    assert (config.agent.province, config.agent.commune, config.agent.id) == ("ha-tinh", "dong-loc", "quay-01")
    assert list(config.lines) == ["primary", "backup", "spare"]
    assert str(config.lines["backup"].source) == "192.168.1.201"
    assert config.lines["spare"].source is None
    assert config.resolvers == ("192.168.1.1", "2001:db8::53")
    by_name = {t.name: t for t in config.targets}
    assert list(by_name) == ["ioffice-https", "ioffice-alt", "mail-smtp", "mail-submission"]
    https, alt, smtp, submission = by_name.values()
    # general default, then per-probe default, then the target's own keys
    assert (https.config.timeout, https.config.interval, https.config.port) == (3.0, 60.0, 443)
    assert (alt.config.timeout, alt.config.port) == (0.5, 8443)
    assert https.config.display_name == "iOffice (HTTPS)"
    assert (submission.config.port, submission.config.expect_banner) == (587, "^220")
    assert https.module is registry.probe_module("tcp")
    assert {s: [t.name for t in ts] for s, ts in config.services.items()} == {
        "ioffice": ["ioffice-https", "ioffice-alt"],
        "email": ["mail-smtp", "mail-submission"],
    }
    assert [line.name for line in config.lines_for(https)] == ["primary", "backup", "spare"]
    assert [line.name for line in config.lines_for(alt)] == ["backup"]


def test_without_lines_each_target_runs_once_unpinned(tmp_path: Path) -> None:
    kept = [line for line in GOOD.splitlines() if not line.startswith(("lines:", "  primary:", "  backup:", "  spare:"))]
    text = "\n".join(kept).replace(", lines: [backup]", "")
    config = load_config(write(tmp_path, text))
    assert config.lines == {}
    assert [config.lines_for(t) for t in config.targets] == [[None]] * 4


def test_lines_from_defaults_are_checked_once_at_the_defaults_line(tmp_path: Path) -> None:
    text = GOOD.replace("  timeout: 3s\n", "  timeout: 3s\n  lines: [primary, bakup]\n")
    assert errors_of(write(tmp_path, text)) == [
        f"{tmp_path / 'agent.yaml'}:9: defaults.lines[1]: line 'bakup' is not configured — did you mean 'backup'?"
    ]


def test_per_probe_default_error_names_the_defaults_line_once(tmp_path: Path) -> None:
    text = GOOD.replace("tcp: {port: 443, interval: 1m}", "tcp: {port: 443, interval: often}")
    assert errors_of(write(tmp_path, text)) == [
        f"{tmp_path / 'agent.yaml'}:9: defaults.tcp.interval: 'often' is not a duration: write e.g. 5s, 500ms, 2m"
    ]


class FileProbeConfig(TargetConfig):
    """A probe config with a file key, standing in for http/tls/smtp (ca_file)."""

    probe: Literal["withfile"] = "withfile"
    ca_file: str | None = None
    tls: dict[str, str] = {}


@pytest.fixture
def withfile_probe(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("cmon_test_withfile")
    module.NAME, module.Config = "withfile", FileProbeConfig
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(registry.PROBE_MODULES, "withfile", module.__name__)
    return module


FILE_CONFIG = """\
agent: {province: ha-tinh, commune: dong-loc, id: quay-01}
defaults:
  withfile: {ca_file: pki/missing.pem}
services:
  dvc:
    - {name: dvc-ca, probe: withfile, ca_file: pki/province-ca.pem, tls: {client_cert_file: pki/client.pem}}
    - {name: dvc-default, probe: withfile}
"""


def test_file_paths_are_relative_to_the_config_and_must_exist(tmp_path: Path, withfile_probe) -> None:
    (tmp_path / "etc" / "pki").mkdir(parents=True)
    (tmp_path / "etc" / "pki" / "province-ca.pem").write_text("x")
    path = write(tmp_path / "etc", FILE_CONFIG)
    missing = tmp_path / "etc" / "pki"
    assert errors_of(path) == [
        f"{path}:3: defaults.withfile.ca_file: file not found: {missing / 'missing.pem'} "
        "(a relative path is relative to the config file's folder)",
        f"{path}:6: services.dvc[0].tls.client_cert_file: file not found: {missing / 'client.pem'} "
        "(a relative path is relative to the config file's folder)",
    ]
    (missing / "missing.pem").write_text("x")
    (missing / "client.pem").write_text("x")
    config = load_config(path)
    assert [t.config.ca_file for t in config.targets] == [
        str(missing / "province-ca.pem"),
        str(missing / "missing.pem"),
    ]
    assert config.targets[0].config.tls == {"client_cert_file": str(missing / "client.pem")}


def test_a_probe_module_that_fails_to_load_only_invalidates_its_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(registry.PROBE_MODULES, "gone", "cmon_test_no_such_module")
    monkeypatch.setitem(registry.PROBE_MODULES, "bug", "cmon_test_buggy_module")
    buggy = tmp_path / "cmon_test_buggy_module.py"
    buggy.write_text("raise RuntimeError('bug at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    modules, broken = probe_modules()
    assert "tcp" in modules and "gone" not in modules and "bug" not in modules
    assert broken["gone"] == "not installed"
    assert broken["bug"] == "cmon_test_buggy_module failed to load (RuntimeError: bug at import)"
    text = GOOD + "  other:\n    - {name: x1, probe: gone}\n    - {name: x2, probe: bug}\n"
    path = write(tmp_path, text)
    assert errors_of(path) == [
        f"{path}:18: services.other[0]: probe 'gone' cannot be used here: not installed",
        f"{path}:19: services.other[1]: probe 'bug' cannot be used here: cmon_test_buggy_module failed to load "
        "(RuntimeError: bug at import)",
    ]


def _probes_used(path: Path) -> set[str]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {t["probe"] for targets in data["services"].values() for t in targets}


# Agent configs; collector-*.yaml are the collector's, validated by tests/unit/collector/test_collector_config.py,
# directory-*.yaml province directories, validated by tests/unit/collector/test_directory.py.
AGENT_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith(("collector", "directory")))


def test_every_config_file_is_checked_by_some_test() -> None:
    collector = {p.name for p in CONFIGS.glob("collector*.yaml")}
    assert collector == {"collector-example.yaml"}, "add new collector configs to test_collector_config.py"
    directories = {p.name for p in CONFIGS.glob("directory*.yaml")}
    assert directories == {"directory-example.yaml"}, "add new directories to tests/unit/collector/test_directory.py"


@pytest.mark.parametrize("path", AGENT_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path, tmp_path: Path) -> None:
    missing = _probes_used(path) - set(probe_modules()[0])
    if missing:
        pytest.skip(f"probe modules not available in this tree yet: {sorted(missing)}")
    if path.name == "lab.yaml":
        # The lab writes its PKI under its workdir and this config beside it (see the file's header).
        from lab.pki import make_pki

        make_pki(tmp_path / "pki", ["ioffice.lab.test", "dvc.lab.test", "mail.lab.test"], [])
        path = Path(shutil.copy(path, tmp_path / "lab.yaml"))
    config = load_config(path)
    assert config.targets
    assert set(config.lines) == {"primary", "backup"}


def test_shipped_example_covers_every_service_and_enough_targets() -> None:
    data = yaml.safe_load((CONFIGS / "commune-example.yaml").read_text(encoding="utf-8"))
    assert {"ioffice", "dvc", "email", "dns", "internet"} <= set(data["services"])
    assert sum(len(t) for t in data["services"].values()) >= 12


# -- the loader's budget (core/config/loader.py); hostile files are in testdata/bad-configs ------------------------


def test_a_file_over_1_mib_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    assert errors_of(path) == [f"{path}:1: the file is larger than 1 MiB, the most a config may be (is this the right file?)"]


def test_more_than_50000_values_are_refused_at_the_line_where_the_budget_runs_out(tmp_path: Path) -> None:
    # 100 kB of `1,` is within the size limit but would cost ~40 MB of nodes; real configs have a few hundred.
    path = write(tmp_path, "agent: {province: ha-tinh, commune: dong-loc, id: q}\nservices:\n  a: [\n" + "1,\n" * 50_000 + "]\n")
    # 13 nodes before the list's items (mappings, keys, values, the list): item 49,987 is node 50,001, on line 49,991.
    assert errors_of(path) == [f"{path}:49991: services.a[49987]: more than 50,000 keys and values: a config needs a "
                               "few hundred (is this the right file?)"]


def test_a_merged_mapping_reached_twice_through_aliases_is_read_the_same_both_times() -> None:
    # PyYAML's flatten_mapping rewrites the node: a second visit used to see merged keys as duplicates.
    located = load_yaml("a: &m {<<: {k: 1, j: 0}, k: 2}\nb: *m\nc: [*m, *m]\n", "f.yaml")
    assert located.issues == []
    assert located.data == {"a": {"k": 2, "j": 0}, "b": {"k": 2, "j": 0}, "c": [{"k": 2, "j": 0}, {"k": 2, "j": 0}]}
    assert located.line_of(("c", 1, "k")) == 1  # where the aliased text is written


def test_aliases_within_the_budget_are_expanded() -> None:
    # 9 aliases of a list of 1,000 values (1,001 nodes): 9,009 nodes through aliases, under the 10,000 budget.
    text = "a: &a [" + ",".join(["x"] * 1000) + "]\nb: [" + ",".join(["*a"] * 9) + "]\n"
    assert len(load_yaml(text).data["b"]) == 9
    with pytest.raises(ConfigError) as refused:
        load_yaml(text.replace("*a]", "*a,*a]"), "f.yaml")  # the 10th alias: 10,010
    assert [str(i) for i in refused.value.issues] == [
        "f.yaml:2: b[9]: alias *a brings the values repeated through aliases to more than 10,000 (an alias bomb?)"]


def test_a_utf8_byte_order_mark_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffagent: {province: ha-tinh, commune: dong-loc, id: q}\nservices: {}\n".encode())
    assert errors_of(path) == [f"{path}:2: services: no services: add at least one service with its targets"]


def test_limits_are_parameters_of_the_loader() -> None:
    with pytest.raises(ConfigError) as refused:
        load_yaml("a: [[[1]]]\n", "f.yaml", Limits(max_depth=3))
    assert str(refused.value) == "f.yaml:1: a[0][0]: nested deeper than 3 levels: a config needs a handful"
    assert load_yaml("a: [[1]]\n", "f.yaml", Limits(max_depth=3)).data == {"a": [[1]]}


def test_a_probe_that_is_not_a_name_is_an_error_not_a_type_error(tmp_path: Path) -> None:
    # Found by the hypothesis test: `probe: [tcp]` met a dict lookup (unhashable list) and raised TypeError.
    path = write(tmp_path, "agent: {province: ha-tinh, commune: dong-loc, id: q}\nservices:\n  a:\n"
                           "    - {name: x, probe: [tcp], host: h}\n    - {name: y, probe: {tcp: 1}, host: h}\n")
    assert errors_of(path) == [
        f"{path}:4: services.a[0]: probe should be the name of a probe (one of: icmp, tcp, http, dns, smtp, imap, "
        "tls), not a list",
        f"{path}:5: services.a[1]: probe should be the name of a probe (one of: icmp, tcp, http, dns, smtp, imap, "
        "tls), not a mapping",
    ]


def test_a_file_name_the_system_refuses_is_an_error_not_an_os_error(tmp_path: Path, withfile_probe) -> None:
    # Found by benchmarks/fuzz_config.py: a 300-character name made Path.is_file() raise ENAMETOOLONG.
    long = "a" * 300
    path = write(tmp_path, "agent: {province: ha-tinh, commune: dong-loc, id: q}\nservices:\n  dvc:\n"
                           f"    - {{name: a, probe: withfile, ca_file: {long}}}\n"
                           "    - {name: b, probe: withfile, ca_file: ~cmon-no-such-user/ca.pem}\n")
    assert errors_of(path) == [
        f"{path}:4: services.dvc[0].ca_file: cannot use '{'a' * 56}...: File name too long",
        f"{path}:5: services.dvc[1].ca_file: cannot use '~cmon-no-such-user/ca.pem': there is no user "
        "'cmon-no-such-user' here, whose home folder ~cmon-no-such-user would be",
    ]


PATHS_CONFIG = """\
agent: {province: ha-tinh, commune: dong-loc, id: quay-01}
collector: {url: "https://collector.example:8443", credential_file: state/credential.json, ca_file: pki/ca.pem}
spool: {path: state/spool.db}
services:
  dvc:
    - {name: dvc-ca, probe: withfile, ca_file: pki/ca.pem}
"""


def test_every_path_is_absolute_once_loaded_relative_to_the_config_whatever_the_cwd(
        tmp_path: Path, withfile_probe, monkeypatch: pytest.MonkeyPatch) -> None:
    etc, elsewhere = tmp_path / "etc" / "cmon", tmp_path / "elsewhere"
    (etc / "pki").mkdir(parents=True)
    (etc / "pki" / "ca.pem").write_text("x")
    elsewhere.mkdir()
    write(etc, PATHS_CONFIG)
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("..") / "etc" / "cmon" / "agent.yaml")  # named relative to another folder
    expected = {
        "path": etc.resolve() / "agent.yaml",
        "spool": etc.resolve() / "state" / "spool.db",
        "credential": etc.resolve() / "state" / "credential.json",
        "ca": etc.resolve() / "pki" / "ca.pem",
    }

    def paths() -> dict[str, Path]:
        assert config.collector is not None
        return {"path": config.path.resolve(), "spool": Path(config.spool.path),
                "credential": config.credential_path, "ca": Path(str(config.collector.ca_file))}

    assert all(p.is_absolute() for p in paths().values()) and config.path.is_absolute()
    assert paths() == expected
    assert config.targets[0].config.ca_file == str(expected["ca"])
    monkeypatch.chdir(tmp_path)  # the process moves on: the loaded config does not change meaning
    assert paths() == expected and config.path.is_file()


def test_without_a_collector_section_the_spool_and_the_credential_sit_beside_the_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "agent: {province: a, commune: b, id: c}\n"
                           "services: {dns: [{name: t, probe: tcp, host: 127.0.0.1, port: 53}]}\n")
    monkeypatch.chdir(path.parent.parent)
    config = load_config(Path(tmp_path.name) / "agent.yaml")
    assert Path(config.spool.path) == tmp_path.resolve() / "spool.db"
    assert config.credential_path == tmp_path.resolve() / "credential.json"


def test_the_collectors_ca_file_must_exist_and_the_paths_must_be_usable(tmp_path: Path) -> None:
    path = write(tmp_path, "agent: {province: a, commune: b, id: c}\n"
                           "collector: {url: 'https://c.example', ca_file: pki/ca.pem, credential_file: '~nobody-cmon/x'}\n"
                           "spool: {path: ' '}\n"
                           "services: {dns: [{name: t, probe: tcp, host: 127.0.0.1, port: 53}]}\n")
    assert errors_of(path) == [
        f"{path}:2: collector.credential_file: cannot use '~nobody-cmon/x': there is no user 'nobody-cmon' here, "
        "whose home folder ~nobody-cmon would be",
        f"{path}:2: collector.ca_file: file not found: {tmp_path.resolve() / 'pki' / 'ca.pem'} (a relative path "
        "is relative to the config file's folder)",
        f"{path}:3: spool.path: an empty path: give a file name (a relative path is relative to the config "
        "file's folder)",
    ]
