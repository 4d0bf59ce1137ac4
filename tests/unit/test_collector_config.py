"""The collector config: the shipped example validates; HTTPS unless plain HTTP is explicit; line protocol."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from collector.config import CollectorConfigError, load_config, parse_config
from collector.lineproto import LineProtocolError, line
from collector.validate import SeriesCap
from collector.acks import merge, subtract

ROOT = Path(__file__).resolve().parents[2]
BASE = {"province": "ha-tinh", "database": {"url": "http://127.0.0.1:8428"}}


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
    assert message in " ".join(refused.value.issues)


def test_every_error_is_listed_with_its_path():
    with pytest.raises(CollectorConfigError) as refused:
        parse_config({"province": "Ha Tinh", "listen": {"allow_http": True}, "database": {"url": "x", "retention": "5"},
                      "limits": {"max_body": "lots"}, "typo": 1})
    text = "\n".join(refused.value.issues)
    for path in ("province", "database.url", "database.retention", "limits.max_body", "typo"):
        assert f"{path}:" in text, text


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


def test_ranges_merge_and_subtract():
    assert merge([(6, 9), (1, 5), (12, 12), (11, 11)]) == [(1, 9), (11, 12)]
    assert subtract(1, 20, [(3, 5), (8, 30)]) == [(1, 2), (6, 7)]
    assert subtract(4, 6, [(1, 10)]) == [] and subtract(4, 6, []) == [(4, 6)]


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

    from agent.credentials import fingerprint
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
