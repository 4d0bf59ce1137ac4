"""Tests for agent.enroll and agent.credentials against a real HTTPS enrollment endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from agent.credentials import Credential, load, save
from core.tls import fingerprint, normalize_fingerprint
from agent.enroll import EnrollError, enroll
from lab.pki import make_pki

TOKEN = "one-time-token-123"


@pytest.fixture
async def collector(tmp_path: Path):
    """An HTTPS enrollment endpoint with the province's own CA; one token, single use."""
    pki = make_pki(tmp_path / "pki", ["collector.test"], ["127.0.0.1"])
    tokens = {TOKEN}

    async def ca(request: web.Request) -> web.Response:
        return web.Response(text=Path(pki.province_root).read_text())

    async def do_enroll(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("token") not in tokens:
            return web.json_response({"error": "unknown, used or expired token"}, status=401)
        tokens.discard(body["token"])
        return web.json_response({"credential": "c" * 64, "province": "ha-tinh", "commune": "dong-loc",
                                  "agent": body["agent_id"]})

    app = web.Application()
    app.router.add_get("/api/v1/ca", ca)
    app.router.add_post("/api/v1/enroll", do_enroll)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.province_leaf, pki.province_leaf_key)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}", pki
    finally:
        await runner.cleanup()


async def test_enroll_pins_the_ca_served_by_the_collector(collector) -> None:
    url, pki = collector
    pin = fingerprint(Path(pki.province_root).read_text())
    credential = await enroll(url, TOKEN, "quay-01", ca_fingerprint=pin.upper().replace("SHA256:", ""))
    assert (credential.credential, credential.commune, credential.agent) == ("c" * 64, "dong-loc", "quay-01")
    assert credential.ca_fingerprint == pin
    assert "BEGIN CERTIFICATE" in credential.ca_pem
    with pytest.raises(EnrollError, match="already used"):  # single use
        await enroll(url, TOKEN, "quay-02", ca_fingerprint=pin)


async def test_enroll_refuses_a_ca_with_another_fingerprint(collector) -> None:
    url, pki = collector
    wrong = fingerprint(Path(pki.root_ca).read_text())
    with pytest.raises(EnrollError, match="intercepting"):
        await enroll(url, TOKEN, "quay-01", ca_fingerprint=wrong)


async def test_enroll_without_a_pin_uses_the_system_cas_and_refuses_the_private_ca(collector) -> None:
    url, _ = collector
    with pytest.raises(EnrollError, match="not trusted"):
        await enroll(url, TOKEN, "quay-01")


async def test_plain_http_needs_allow_http() -> None:
    with pytest.raises(EnrollError, match="plain http"):
        await enroll("http://127.0.0.1:9", TOKEN, "quay-01")


def test_credential_file_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "credential.json"
    credential = Credential("https://c", "secret", "p", "c", "a", "sha256:" + "0" * 64, None)
    save(path, credential)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load(path) == credential
    assert [p.name for p in path.parent.iterdir()] == ["credential.json"]  # no temporary left behind


def test_normalize_fingerprint_accepts_openssl_form() -> None:
    hexed = "AB:" * 31 + "CD"
    assert normalize_fingerprint(hexed) == "sha256:" + "ab" * 31 + "cd"
    with pytest.raises(ValueError):
        normalize_fingerprint("abc")


async def test_cli_enroll_reads_the_token_from_stdin(collector, tmp_path: Path) -> None:
    url, pki = collector
    config = tmp_path / "agent.yaml"
    config.write_text(
        "agent: {province: ha-tinh, commune: dong-loc, id: quay-07}\n"
        f"collector: {{url: '{url}', credential_file: state/credential.json}}\n"
        "services: {dns: [{name: t, probe: tcp, host: 127.0.0.1, port: 53}]}\n"
    )
    pin = fingerprint(Path(pki.province_root).read_text())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cmon", "agent", "enroll", "-c", str(config), "--ca-fingerprint", pin,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(TOKEN.encode() + b"\n"), 30)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == f"enrolled as ha-tinh/dong-loc/quay-07 at {url}"
    saved = load(tmp_path / "state" / "credential.json")
    assert saved.agent == "quay-07" and saved.ca_fingerprint == pin
