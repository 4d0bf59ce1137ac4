"""Enrollment tokens and per-agent credentials, stored as SHA-256 hashes and compared in constant time.

A secret is `<kind>.<id>.<secret>`: `id` (64 random bits, not secret) finds the row, `secret` (256 random bits)
is checked with `hmac.compare_digest` against the stored SHA-256 — the plaintext is never stored. A token is
single use: enrollment consumes it with one conditional UPDATE (`used_ms IS NULL AND expires_ms > now`), so of
two agents racing one token exactly one wins, also across processes. Re-enrolling an agent (same commune and
id) revokes its previous credential; `revoke()` revokes an agent's credentials until it is enrolled again.

Successful checks are cached (`CACHE_TTL_S` = 10 s, at most `CACHE_MAX` entries) by the credential's id with
the stored hash, so a request costs a SHA-256 and a dict lookup instead of an SQLite query; the secret itself
is never kept. Revocation still takes effect promptly: `revoke()` and `enroll()` in this process empty the
cache at once; a revocation by another process (`cmon collector revoke`) is noticed within `REVOKED_POLL_S`
(1 s: the number of revoked credentials is read at most once a second and the cache emptied when it changed);
anything else (a state file edited by hand) within the TTL.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Callable

from .db import migrate, transaction

TOKEN_KIND, CREDENTIAL_KIND = "cmt", "cmc"
AGENT_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}\Z")  # \Z: `$` would let "quay-01\n" through
_DUMMY = hashlib.sha256(b"no such id").hexdigest()  # compared when the id is unknown: same work either way
CACHE_TTL_S = 10.0  # a cached successful check is trusted this long
CACHE_MAX = 50_000  # entries (one per live agent); the oldest goes first
REVOKED_POLL_S = 1.0  # how often revocations by other processes are looked for


class AuthError(Exception):
    """A request's credential or token is refused; `status` is 401 (missing, unknown, used, expired) or 403."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a credential belongs to: the tags the collector sets on everything the agent sends."""

    province: str
    commune: str
    agent: str

    @property
    def key(self) -> str:
        """Return `commune/agent`, unique within the province."""
        return f"{self.commune}/{self.agent}"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new(kind: str) -> tuple[str, str, str]:
    """Return (id, secret, the full string given out)."""
    ident, secret = secrets.token_hex(8), secrets.token_urlsafe(32)  # 32 bytes = 256 bits
    return ident, secret, f"{kind}.{ident}.{secret}"


def _split(presented: str, kind: str) -> tuple[str, str] | None:
    if not presented.isascii():  # ours are ASCII; anything else (a header's undecodable bytes) cannot match
        return None
    parts = presented.strip().split(".")
    if len(parts) != 3 or parts[0] != kind or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def _matches(secret: str, stored: str | None) -> bool:
    return hmac.compare_digest(_hash(secret), stored or _DUMMY) and stored is not None


class Auth:
    """Tokens and credentials in the collector's state file."""

    def __init__(self, conn: sqlite3.Connection, province: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.conn = conn
        self.province = province
        migrate(conn)  # the tables are collector.db's
        self.clock = clock
        self._cache: dict[str, tuple[str, Identity, float]] = {}  # credential id → (stored hash, who, expiry)
        self._revoked = self._revoked_count()
        self._polled = clock()

    def _revoked_count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM credentials WHERE revoked_ms IS NOT NULL").fetchone()[0]

    def forget(self) -> None:
        """Empty the cache of successful checks (after a revocation)."""
        self._cache.clear()

    def _cached(self, ident: str, secret: str) -> Identity | None:
        """Return the cached Identity of a credential whose secret matches, None to ask the database."""
        now = self.clock()
        if now - self._polled >= REVOKED_POLL_S:
            self._polled = now
            revoked = self._revoked_count()
            if revoked != self._revoked:
                self._revoked = revoked
                self.forget()
        entry = self._cache.get(ident)
        if entry is None or entry[2] < now or not hmac.compare_digest(_hash(secret), entry[0]):
            return None
        return entry[1]

    def _remember(self, ident: str, stored: str, who: Identity) -> None:
        if len(self._cache) >= CACHE_MAX:
            del self._cache[next(iter(self._cache))]
        self._cache[ident] = (stored, who, self.clock() + CACHE_TTL_S)

    def create_token(self, commune: str, ttl_s: float, now: float | None = None) -> str:
        """Issue a one-time enrollment token for `commune`, valid `ttl_s` seconds; return it (shown once)."""
        if not AGENT_ID.match(commune):
            raise ValueError(f"commune {commune!r} is not a slug (lowercase letters, digits, '-', '_', '.')")
        now_ms = int((now if now is not None else time.time()) * 1000)
        ident, secret, token = _new(TOKEN_KIND)
        self.conn.execute(
            "INSERT INTO tokens (id, hash, province, commune, created_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?)",
            (ident, _hash(secret), self.province, commune, now_ms, now_ms + int(ttl_s * 1000)),
        )
        return token

    def enroll(self, token: str, agent: str, now: float | None = None) -> tuple[str, Identity]:
        """Consume `token` (atomically, once) and return a new credential for `agent` in the token's commune."""
        if not AGENT_ID.match(agent or ""):
            raise AuthError(f"agent id {agent!r} is not a slug (lowercase letters, digits, '-', '_', '.')", 400)
        now_ms = int((now if now is not None else time.time()) * 1000)
        parts = _split(token or "", TOKEN_KIND)
        row = self.conn.execute("SELECT hash, commune FROM tokens WHERE id = ?", (parts[0] if parts else "",)).fetchone()
        if parts is None or not _matches(parts[1], row[0] if row else None):
            raise AuthError("unknown enrollment token")
        commune = row[1]
        ident, secret, credential = _new(CREDENTIAL_KIND)
        with transaction(self.conn) as conn:
            used = conn.execute(
                "UPDATE tokens SET used_ms = ?, used_by = ? WHERE id = ? AND used_ms IS NULL AND expires_ms > ?",
                (now_ms, agent, parts[0], now_ms),
            ).rowcount
            if used != 1:
                raise AuthError("the enrollment token is used or expired: create a new one")
            conn.execute("UPDATE credentials SET revoked_ms = ? WHERE commune = ? AND agent = ? AND revoked_ms IS NULL",
                         (now_ms, commune, agent))
            conn.execute(
                "INSERT INTO credentials (id, hash, province, commune, agent, created_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (ident, _hash(secret), self.province, commune, agent, now_ms),
            )
        self.forget()  # the agent's previous credential was just revoked
        return credential, Identity(self.province, commune, agent)

    def authenticate(self, header: str | None) -> Identity:
        """Return the Identity of an `Authorization: Bearer <credential>` header; AuthError (401/403) otherwise."""
        if not header or not header.startswith("Bearer "):
            raise AuthError("missing credential: send Authorization: Bearer <credential>")
        parts = _split(header[7:], CREDENTIAL_KIND)
        if parts is not None and (who := self._cached(*parts)) is not None:
            return who
        row = self.conn.execute(
            "SELECT hash, province, commune, agent, revoked_ms FROM credentials WHERE id = ?",
            (parts[0] if parts else "",),
        ).fetchone()
        if parts is None or not _matches(parts[1], row[0] if row else None):
            raise AuthError("unknown credential")
        if row[4] is not None:
            raise AuthError("the credential is revoked", 403)
        who = Identity(row[1], row[2], row[3])
        self._remember(parts[0], row[0], who)
        return who

    def revoke(self, agent: str, now: float | None = None) -> int:
        """Revoke the live credentials of `agent` (an id, or `commune/id` when ids repeat); return how many."""
        now_ms = int((now if now is not None else time.time()) * 1000)
        commune, _, ident = agent.rpartition("/")
        if not commune:
            communes = [r[0] for r in self.conn.execute(
                "SELECT DISTINCT commune FROM credentials WHERE agent = ? AND revoked_ms IS NULL", (ident,))]
            if len(communes) > 1:
                raise ValueError(f"agent {ident!r} exists in several communes ({', '.join(communes)}): "
                                 f"write COMMUNE/{ident}")
            commune = communes[0] if communes else ""
        count = self.conn.execute(
            "UPDATE credentials SET revoked_ms = ? WHERE agent = ? AND commune = ? AND revoked_ms IS NULL",
            (now_ms, ident, commune),
        ).rowcount
        self.forget()
        return count


__all__ = ["AGENT_ID", "Auth", "AuthError", "Identity"]
