"""The collector config: the shipped example validates; HTTPS unless plain HTTP is explicit; every bad config in
testdata/bad-collector-configs gives its exact `file:line: key.path: message` errors; durations are bounded (on the
command line too); line protocol."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cmon import cli
from collector.config import CollectorConfigError, load_config, parse_config
from collector.lineproto import LineProtocolError, line
from collector.validate import SeriesCap

ROOT = Path(__file__).resolve().parents[3]
BASE = {"province": "ha-tinh", "database": {"url": "http://127.0.0.1:8428"}}
TESTDATA = Path(__file__).parents[1] / "testdata" / "bad-collector-configs"
BAD_CONFIGS = sorted(TESTDATA.glob("*.yaml"))


def test_example_config_validates(tmp_path):
    data = yaml.safe_load((ROOT / "configs" / "collector-example.yaml").read_text())
    config = parse_config(data)
    assert config.listen.port == 8443 and not config.listen.allow_http
    assert config.database.retention == 365 * 86_400 and config.limits.max_decompressed == 8_000_000
    for key in ("cert_file", "key_file", "ca_file"):  # load_config checks that the files exist
        (tmp_path / key).write_text("x")
        data["listen"][key] = key
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert load_config(tmp_path / "c.yaml").listen.cert_file == str(tmp_path / "cert_file")


@pytest.mark.parametrize("listen, message", [
    ({}, "HTTPS needs cert_file and key_file"),
    ({"allow_http": True, "cert_file": "a"}, "choose HTTPS"),
    ({"allow_http": True, "port": 70000}, "less than or equal"),
])
def test_https_unless_plain_http_is_explicit(listen, message):
    with pytest.raises(CollectorConfigError) as refused:
        parse_config({**BASE, "listen": listen})
    assert message in str(refused.value)


def test_every_error_is_listed_with_its_path():
    with pytest.raises(CollectorConfigError) as refused:
        parse_config({"province": "Ha Tinh", "listen": {"allow_http": True}, "database": {"url": "x", "retention": "5"},
                      "limits": {"max_body": "lots"}, "typo": 1})
    # A mapping built in Python has no lines: every issue is on line 1 of "<config>".
    issues = refused.value.issues
    assert [(i.file, i.line, i.path) for i in issues] == [
        ("<config>", 1, ("province",)), ("<config>", 1, ("database", "url")), ("<config>", 1, ("database", "retention")),
        ("<config>", 1, ("limits", "max_body")), ("<config>", 1, ())]
    assert issues[-1].message == ("unknown key 'typo' (valid keys: data_dir, database, directory, event_retention, limits, listen, province, "
                                  "token_ttl, views_token)")


@pytest.mark.parametrize("config", BAD_CONFIGS, ids=[p.stem for p in BAD_CONFIGS])
def test_bad_config_gives_exact_errors(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TESTDATA)  # errors name the file as given: keep it short and stable
    expected = config.with_suffix(".expected").read_text(encoding="utf-8").replace("{here}", str(TESTDATA))
    with pytest.raises(CollectorConfigError) as refused:
        load_config(config.name)
    assert [str(issue) for issue in refused.value.issues] == expected.splitlines()


def test_every_bad_config_is_paired_with_its_errors() -> None:
    assert {p.stem for p in BAD_CONFIGS} == {p.stem for p in TESTDATA.glob("*.expected")}
    assert len(BAD_CONFIGS) >= 6


@pytest.mark.parametrize("max_future, ok", [("24h", True), ("1d", True), ("86401", False), ("2d", False)])
def test_max_future_stays_inside_what_victoriametrics_keeps(max_future: str, ok: bool) -> None:
    # VM drops samples more than 2 days ahead of its clock while answering 204: at most 1 day is accepted.
    data = {**BASE, "listen": {"allow_http": True}, "limits": {"max_future": max_future}}
    if ok:
        assert parse_config(data).limits.max_future == 86_400
        return
    with pytest.raises(CollectorConfigError) as refused:
        parse_config(data)
    assert "VictoriaMetrics drops samples more than 48h ahead" in str(refused.value)
    assert str(refused.value).endswith("use at most 24h (a day's margin for the clocks)")


def collector_file(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(f"province: ha-tinh\ndata_dir: .\nlisten: {{allow_http: true}}\n"
                    f"database: {{url: 'http://127.0.0.1:8428'}}\n{text}", encoding="utf-8")
    return path


@pytest.mark.parametrize("ttl, message", [
    ("9" * 400, f"'{'9' * 29}...' (400 characters) is too long: a duration here is at most 720h"),
    ("31d", "'31d' is too long: a duration here is at most 720h"),
    ("0s", "a duration must be greater than zero"),
    ("1e400", "'1e400' is not a duration: write e.g. 5s, 500ms, 2m"),
])
def test_token_ttl_on_the_command_line_is_bounded(tmp_path: Path, capsys, ttl: str, message: str) -> None:
    status = cli.main(["collector", "token", "create", "-c", str(collector_file(tmp_path)), "--commune", "x",
                       "--ttl", ttl])
    assert (status, capsys.readouterr().err) == (2, f"cmon collector token create: --ttl: {message}\n")
    assert not (tmp_path / "collector.sqlite").exists()  # refused before any token is written


def test_token_ttl_up_to_30_days_is_accepted(tmp_path: Path, capsys) -> None:
    status = cli.main(["collector", "token", "create", "-c", str(collector_file(tmp_path)), "--commune", "x",
                       "--ttl", "30d"])
    out, err = capsys.readouterr()
    assert status == 0 and out.strip(), err
    assert "valid 720 h" in err


def test_check_config_reports_a_collector_config(tmp_path: Path, capsys) -> None:
    good = collector_file(tmp_path)
    assert cli.main(["check-config", str(good)]) == 0
    assert capsys.readouterr().out == (f"{good}: OK — collector for province ha-tinh, plain HTTP on 0.0.0.0:8443, "
                                       "database http://127.0.0.1:8428/\n")
    bad = collector_file(tmp_path, "limits: {max_future: 3d}\n")
    assert cli.main(["check-config", str(bad)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{bad}:5: limits.max_future: 72h is too far ahead: VictoriaMetrics drops samples more than 48h ahead of its "
        "own clock while answering 204, so they would be acknowledged and lost; use at most 24h (a day's margin for "
        "the clocks)",
        f"{bad}: 1 error"]


def test_check_config_says_which_kind_it_checked_when_the_keys_do_not_tell(tmp_path: Path, capsys) -> None:
    path = tmp_path / "mixed.yaml"
    path.write_text("province: ha-tinh\nservices: {}\n", encoding="utf-8")  # one collector key, one agent key
    assert cli.main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"{path}:1: checked as an agent config: its top-level keys are as much a collector's or a "
                      "directory's (an agent config has agent: and services:, a collector config province:, listen: "
                      "and database:, a directory config province:, name: and communes:)")
    assert err[1:] == [f"{path}:1: missing required key 'agent'",
                       f"{path}:1: unknown key 'province' — did you mean 'services'?",
                       f"{path}:2: services: no services: add at least one service with its targets",
                       f"{path}: 4 errors"]


@pytest.mark.parametrize("tags, expected", [
    ({"target": "a,b=c d"}, r"probe,target=a\,b\=c\ d up=1.0 5"),
    ({"target": "end\\"}, r"probe,target=end\\ up=1.0 5"),
    ({"target": 'q"uote'}, 'probe,target=q"uote up=1.0 5'),
    ({"z": "1", "a": "2"}, "probe,a=2,z=1 up=1.0 5"),
])
def test_line_protocol_escaping(tags, expected):
    assert line("probe", tags, {"up": 1}, 5) == expected


def test_line_protocol_refuses_what_it_cannot_carry():
    assert line("my meas,x", {}, {"f x": 2.5}, 1) == r"my\ meas\,x f\ x=2.5 1"
    for tags, fields in (({"t": "a\nb"}, {"up": 1.0}), ({"t": ""}, {"up": 1.0}), ({}, {"up": float("nan")}), ({}, {})):
        with pytest.raises(LineProtocolError):
            line("probe", tags, fields, 1)


def test_series_cap_counts_distinct_series_per_agent():
    from collector.validate import Point

    cap = SeriesCap(2)
    cap.check("a", [Point(1, "probe", {"t": "1"}, {"up": 1.0}, 0), Point(2, "probe", {"t": "1"}, {"up": 0.0}, 1)])
    cap.check("b", [Point(1, "probe", {"t": "2"}, {"up": 1.0}, 0), Point(1, "probe", {"t": "3"}, {"up": 1.0}, 0)])
    cap.check("a", [Point(3, "probe", {"t": "2"}, {"up": 1.0}, 0)])
    with pytest.raises(ValueError, match="at most 2"):
        cap.check("a", [Point(4, "probe", {"t": "3"}, {"up": 1.0}, 0)])


async def test_https_with_the_province_ca_and_the_ca_endpoint(tmp_path):
    """The collector serves HTTPS with a province-CA certificate; agents verify it; /api/v1/ca gives the CA."""
    import asyncio
    import ssl

    import aiohttp

    from core.tls import fingerprint
    from collector.app import serve
    from lab.pki import make_pki
    from lab.victoria import free_port

    pki = make_pki(tmp_path / "pki", ["collector.lab.test"], ["127.0.0.1"])
    port = free_port()
    config = parse_config({**BASE, "data_dir": str(tmp_path), "listen": {
        "host": "127.0.0.1", "port": port, "cert_file": str(pki.province_leaf),
        "key_file": str(pki.province_leaf_key), "ca_file": str(pki.province_root)}})
    ready = asyncio.Event()
    server = asyncio.create_task(serve(config, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        trusted = ssl.create_default_context(cafile=str(pki.province_root))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/api/v1/ca", ssl=trusted) as response:
                assert response.status == 200
                assert fingerprint(await response.text()) == fingerprint(pki.province_root.read_bytes())
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"https://127.0.0.1:{port}/health", ssl=ssl.create_default_context())
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server


def test_listen_files_the_system_refuses_are_errors_with_their_lines(tmp_path: Path) -> None:
    path = collector_file(tmp_path).with_name("https.yaml")
    path.write_text("province: ha-tinh\nlisten:\n  cert_file: " + "c" * 300 + "\n  key_file: ~cmon-no-such-user/k.pem\n"
                    "database: {url: 'http://127.0.0.1:8428'}\n", encoding="utf-8")
    with pytest.raises(CollectorConfigError) as refused:
        load_config(path)
    assert [str(i) for i in refused.value.issues] == [
        f"{path}:3: listen.cert_file: cannot use '{'c' * 56}...: File name too long",
        f"{path}:4: listen.key_file: cannot use '~cmon-no-such-user/k.pem': there is no user 'cmon-no-such-user' "
        "here, whose home folder ~cmon-no-such-user would be",
    ]
