"""Enrollment tokens and credentials: single use under a race, expiry, hashed storage, revocation, the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from collector.auth import Auth, AuthError
from collector.db import connect
from collector_helpers import ROOT, collector_client, make_config, post

import yaml


@pytest.fixture
def auth(tmp_path):
    conn = connect(tmp_path / "collector.sqlite")
    yield Auth(conn, "ha-tinh")
    conn.close()


def test_token_is_single_use_across_connections_racing(tmp_path, auth):
    token = auth.create_token("dong-loc", 3600)
    results: list = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        conn = connect(tmp_path / "collector.sqlite")
        racer = Auth(conn, "ha-tinh")
        barrier.wait()
        try:
            results.append(racer.enroll(token, f"pc-{i}"))
        except AuthError as exc:
            results.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wins = [r for r in results if not isinstance(r, AuthError)]
    assert len(wins) == 1 and len(results) == 8
    assert all(r.status == 401 for r in results if isinstance(r, AuthError))
    credential, who = wins[0]
    assert auth.authenticate(f"Bearer {credential}") == who and who.commune == "dong-loc"


async def test_two_concurrent_enroll_requests_one_wins(tmp_path):
    async with collector_client(make_config(tmp_path, "http://127.0.0.1:9")) as client:
        from collector.app_keys import AUTH

        token = client.server.app[AUTH].create_token("dong-loc", 3600)
        bodies = [{"version": 1, "token": token, "agent_id": f"quay-0{i}", "hostname": "pc"} for i in (1, 2)]
        answers = await asyncio.gather(*(post(client, None, b, path="/api/v1/enroll") for b in bodies))
        assert sorted(a[0] for a in answers) == [200, 401]
        status, answer, _ = next(a for a in answers if a[0] == 200)
        assert (answer["province"], answer["commune"]) == ("ha-tinh", "dong-loc")
        assert answer["credential"].startswith("cmc.") and len(answer["credential"].split(".")[2]) >= 43


def test_expired_token_is_refused(auth):
    token = auth.create_token("dong-loc", 60, now=time.time() - 120)
    with pytest.raises(AuthError, match="used or expired"):
        auth.enroll(token, "quay-01")
    fresh = auth.create_token("dong-loc", 60)
    with pytest.raises(AuthError, match="unknown"):
        auth.enroll(fresh[:-1] + ("A" if fresh[-1] != "A" else "B"), "quay-01")


def test_secrets_are_stored_only_as_hashes(tmp_path, auth):
    token = auth.create_token("dong-loc", 3600)
    credential, _ = auth.enroll(token, "quay-01")
    auth.conn.execute("PRAGMA wal_checkpoint(FULL)")
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("collector.sqlite"))
    for secret in (token.split(".")[2], credential.split(".")[2]):
        assert secret.encode() not in stored
    import hashlib
    assert hashlib.sha256(credential.split(".")[2].encode()).hexdigest().encode() in stored


def test_revoke_and_reenroll(auth):
    credential, _ = auth.enroll(auth.create_token("dong-loc", 3600), "quay-01")
    assert auth.revoke("dong-loc/quay-01") == 1
    with pytest.raises(AuthError) as refused:
        auth.authenticate(f"Bearer {credential}")
    assert refused.value.status == 403
    again, _ = auth.enroll(auth.create_token("dong-loc", 3600), "quay-01")
    assert auth.authenticate(f"Bearer {again}").agent == "quay-01"
    newer, _ = auth.enroll(auth.create_token("dong-loc", 3600), "quay-01")  # re-enrolling replaces the old one
    with pytest.raises(AuthError):
        auth.authenticate(f"Bearer {again}")
    auth.enroll(auth.create_token("other", 3600), "quay-01")
    with pytest.raises(ValueError, match="several communes"):
        auth.revoke("quay-01")


def test_cli_token_create_and_revoke(tmp_path):
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump({"province": "ha-tinh", "data_dir": "state",
                                    "listen": {"allow_http": True}, "database": {"url": "http://127.0.0.1:8428"}}))

    def cmon(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cmon", "collector", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    made = cmon("token", "create", "-c", str(path), "--commune", "dong-loc", "--ttl", "2h")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("cmt.") and "valid 2 h" in made.stderr
    conn = connect(tmp_path / "state" / "collector.sqlite")
    try:
        auth = Auth(conn, "ha-tinh")
        auth.enroll(token, "quay-07")
    finally:
        conn.close()
    assert cmon("revoke", "-c", str(path), "quay-07").returncode == 0
    assert cmon("revoke", "-c", str(path), "quay-07").returncode == 1  # nothing left to revoke
    assert cmon("token", "create", "-c", str(path), "--commune", "Bad Name").returncode == 2
