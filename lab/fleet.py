"""A fleet of simulated agents for load tests: enrolled for real, posting standard-profile batches to a collector.

Reusable by benchmarks and tests:

- `enroll(state_file, province, n)` enrolls `n` agents (communes of `per_commune` agents) straight in the
  collector's state file through `collector.auth.Auth` — a real one-time token consumed for a real credential,
  exactly what `cmon collector token create` + `cmon agent enroll` do, with the state file's fsyncs turned off for
  the bulk insert. `enroll_http()` does it through `POST /api/v1/enroll` instead.
- `standard_round(rng, identity, t_ms)` is one 30 s round of the standard commune profile
  (configs/commune-standard.yaml): 13 targets × 2 lines, host health (system, 2 disks, 2 interfaces) and the
  agent's self-metrics — 32 Measurements with the fields each probe really produces, values jittered.
- `make_bodies(agents, batches, batch_size)` pre-generates each agent's backlog: contiguous seq ranges of its
  spool, oldest first, original timestamps 30 s apart, as the gzip'd JSON the agent's shipper sends (level 6)
  and, for a side-by-side baseline, the same samples as gzip'd line protocol with the identity tags the
  collector would add. Generated in worker processes and before any timing, so the load loop costs little.
- `live_body(agent, first, size, now_ms, rng)` is one small live batch (current timestamps, the next seqs of the
  agent's spool), the same body shape, made at send time.
- `storm(url, plan)` posts the bodies with one HTTP connection per agent, every agent as fast as it can
  (a backfill storm), honouring 429/503 + Retry-After as agent/shipper.py does (the full wait plus up to 10 %
  late jitter), resending until the batch is accepted or the deadline passes; it records each request's status
  and latency (the 503s included) and when the last batch was accepted (the storm's drain time).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import ssl
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import aiohttp

ROUND_MS = 30_000
LINES = ("primary", "backup")
# configs/commune-standard.yaml: (service, target, probe); every target runs on both lines.
STANDARD_TARGETS = (
    ("ioffice", "ioffice-web", "http"), ("ioffice", "ioffice-login", "http"), ("ioffice", "ioffice-cert", "tls"),
    ("ioffice", "ioffice-ping", "icmp"), ("dvc", "dvc-web", "http"), ("dvc", "dvc-https", "tcp"),
    ("dvc", "dvc-ping", "icmp"), ("email", "mail-submission", "smtp"), ("email", "mail-imaps", "imap"),
    ("dns", "dns-ioffice", "dns"), ("dns", "dns-mail", "dns"), ("internet", "internet-ping", "icmp"),
    ("internet", "internet-dns", "dns"),
)
# (field, typical value, relative spread) per probe, as the probes report them (docs/metrics.md).
_PHASES = {
    "http": [("dns_ms", 8, .5), ("connect_ms", 22, .4), ("tls_ms", 45, .3), ("ttfb_ms", 120, .6),
             ("duration_ms", 210, .4), ("status_code", 200, 0), ("cert_days_left", 143, 0)],
    "tls": [("dns_ms", 8, .5), ("connect_ms", 22, .4), ("tls_ms", 45, .3), ("duration_ms", 80, .3),
            ("cert_days_left", 143, 0)],
    "icmp": [("dns_ms", 8, .5), ("rtt_ms", 24, .3), ("rtt_avg_ms", 25, .3), ("rtt_min_ms", 19, .2),
             ("rtt_max_ms", 38, .5), ("jitter_ms", 3, .8), ("loss_pct", 0, 0), ("sent", 5, 0), ("received", 5, 0),
             ("duration_ms", 1030, .05)],
    "tcp": [("dns_ms", 8, .5), ("connect_ms", 22, .4), ("duration_ms", 31, .4)],
    "smtp": [("dns_ms", 8, .5), ("connect_ms", 22, .4), ("banner_ms", 60, .5), ("tls_ms", 48, .3),
             ("duration_ms", 190, .4), ("cert_days_left", 143, 0)],
    "imap": [("dns_ms", 8, .5), ("connect_ms", 22, .4), ("tls_ms", 48, .3), ("banner_ms", 30, .5),
             ("duration_ms", 150, .4), ("cert_days_left", 143, 0)],
    "dns": [("dns_ms", 9, .6), ("duration_ms", 11, .5)],
}


@dataclass(frozen=True, slots=True)
class SimAgent:
    """One enrolled agent: its identity, credential and spool id."""

    province: str
    commune: str
    agent: str
    credential: str
    spool: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def identity(self) -> dict[str, str]:
        """Return the tags the collector sets from the credential."""
        return {"province": self.province, "commune": self.commune, "agent": self.agent}


def names(n: int, per_commune: int = 4, prefix: str = "sim") -> list[tuple[str, str]]:
    """Return n (commune, agent id) pairs, `per_commune` agents per commune."""
    return [(f"{prefix}-xa-{i // per_commune:04d}", f"quay-{i % per_commune + 1:02d}") for i in range(n)]


def enroll(state_file: str | Path, province: str, n: int, per_commune: int = 4, prefix: str = "sim") -> list[SimAgent]:
    """Enroll n agents in the collector's state file (token → credential, as the CLI does); return them."""
    from collector.auth import Auth
    from collector.db import connect

    conn = connect(state_file)
    conn.execute("PRAGMA synchronous=OFF")  # bulk set-up only: the collector reopens it with FULL
    try:
        auth = Auth(conn, province)
        out = []
        for commune, agent in names(n, per_commune, prefix):
            credential, who = auth.enroll(auth.create_token(commune, 3600), agent)
            spool = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cmon-fleet/{who.key}"))  # stable: bodies can be cached
            out.append(SimAgent(who.province, who.commune, who.agent, credential, spool))
        return out
    finally:
        conn.close()


async def enroll_http(url: str, tokens: list[tuple[str, str]], ssl_context: ssl.SSLContext | bool = True,
                      province: str = "") -> list[SimAgent]:
    """Enroll agents through POST /api/v1/enroll with (token, agent id) pairs; return them."""
    out = []
    async with aiohttp.ClientSession() as session:
        for token, agent in tokens:
            async with session.post(url.rstrip("/") + "/api/v1/enroll", ssl=ssl_context,
                                    json={"version": 1, "token": token, "agent_id": agent}) as response:
                answer = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"enrollment of {agent} refused: {response.status} {answer}")
            out.append(SimAgent(answer["province"] or province, answer["commune"], answer["agent"],
                                answer["credential"]))
    return out


def _value(rng: random.Random, typical: float, spread: float) -> float:
    return round(typical * rng.lognormvariate(0, spread), 3) if spread else float(typical)


def standard_round(rng: random.Random, identity: dict[str, str], t_ms: int) -> list[dict]:
    """Return one round of the standard profile as wire measurements (`Measurement.to_dict()` shape, no seq)."""
    out = []
    for index, (service, target, probe) in enumerate(STANDARD_TARGETS):
        for line in LINES:
            fields = {"up": 1.0, "result_code": 0.0}
            fields.update((k, _value(rng, v, s)) for k, v, s in _PHASES[probe])
            out.append({"name": "probe", "tags": {**identity, "service": service, "target": target, "probe": probe,
                                                  "line": line},
                        "fields": fields, "time": t_ms + index * 137 + (line == "backup") * 41, "result": "ok"})
    host = {**identity}
    t_host = t_ms + 2000
    out.append({"name": "host", "tags": host, "time": t_host, "result": "ok", "fields": {
        "cpu_count": 4.0, "mem_pct": _value(rng, 61, .1), "mem_used_bytes": float(rng.randint(4, 6) << 30),
        "mem_available_bytes": float(rng.randint(2, 4) << 30), "mem_total_bytes": float(8 << 30),
        "swap_pct": _value(rng, 3, .5), "uptime_s": float(t_ms // 1000 % 86_400), "procs": float(rng.randint(180, 240)),
        "cpu_pct": _value(rng, 12, .7), "load1": _value(rng, .8, .6)}})
    for mount in ("C:\\", "D:\\"):
        out.append({"name": "host", "tags": {**host, "mount": mount}, "time": t_host, "result": "ok", "fields": {
            "disk_pct": _value(rng, 47, .01), "disk_used_bytes": float(rng.randint(90, 91) << 30),
            "disk_free_bytes": float(rng.randint(100, 101) << 30), "disk_total_bytes": float(256 << 30)}})
    for interface in ("Ethernet", "Wi-Fi"):
        counter = float(t_ms // 1000 * 1200)
        out.append({"name": "host", "tags": {**host, "interface": interface}, "time": t_host, "result": "ok",
                    "fields": {"net_rx_bytes": counter * 9, "net_tx_bytes": counter, "net_rx_packets": counter / 900,
                               "net_tx_packets": counter / 700, "net_rx_errors": 0.0, "net_tx_errors": 0.0,
                               "net_rx_drops": float(rng.randint(0, 3)), "net_tx_drops": 0.0, "net_up": 1.0,
                               "net_speed_mbps": 1000.0}})
    out.append({"name": "agent", "tags": {**identity, "version": "0.1.0"}, "time": t_host + 5, "result": "ok", "fields": {
        "spool_rows": float(rng.randint(5000, 200_000)), "dropped_total": 0.0, "probe_errors_total": 0.0,
        "clock_skew_ms": _value(rng, 12, .5), "config_version": 1234567.0, "uptime_s": float(t_ms // 1000 % 86_400),
        "rss_bytes": float(rng.randint(30, 38) << 20), "cpu_s": _value(rng, 40, .2)}})
    return out


@dataclass(slots=True)
class Bodies:
    """One agent's pre-generated backlog: per batch the wire body, its line count, samples, and the LP baseline."""

    wire: list[bytes]
    lines: list[int]
    samples: list[int]
    lineproto: list[bytes]


def agent_bodies(agent: SimAgent, batches: int, batch_size: int, t0_ms: int, seed: int,
                 lp_identity: dict[str, str] | None = None) -> Bodies:
    """Return `batches` contiguous batches of the agent's backlog from `t0_ms` (see the module docstring)."""
    from collector.lineproto import lines as lp_lines

    rng = random.Random(seed)
    need = batches * batch_size
    items: list[dict] = []
    t = t0_ms + rng.randrange(ROUND_MS)  # each agent has its own phase
    while len(items) < need:
        items += standard_round(rng, agent.identity, t)
        t += ROUND_MS
    out = Bodies([], [], [], [])
    ident = lp_identity or agent.identity
    for b in range(batches):
        first = b * batch_size + 1
        chunk = items[b * batch_size:(b + 1) * batch_size]
        payload = {"version": 1, "spool": agent.spool, "first": first, "last": first + len(chunk) - 1,
                   "measurements": [{"seq": first + i, **m} for i, m in enumerate(chunk)], "evicted": [],
                   "agent": {"version": "0.1.0", "config_version": "sha256:5b1f", "spool_rows": need - first,
                             "dropped_total": 0, "clock_offset_ms": -12.5}}
        out.wire.append(gzip.compress(json.dumps(payload, separators=(",", ":")).encode(), 6))
        out.lines.append(len(chunk))
        out.samples.append(sum(len(m["fields"]) for m in chunk))
        lp = lp_lines((m["name"], {**m["tags"], **ident}, m["fields"], m["time"]) for m in chunk)
        out.lineproto.append(gzip.compress(lp.encode(), 6))
    return out


def live_body(agent: SimAgent, first: int, size: int, now_ms: int, rng: random.Random) -> tuple[bytes, int]:
    """Return (gzip'd wire body, measurements) of a small live batch: seqs `first`..`first + size - 1` of the
    agent's spool, the first `size` measurements of standard rounds ending about now (same shape as `agent_bodies`)."""
    items: list[dict] = []
    t = now_ms - 2_500  # a round's measurements span ~2 s after its start: none lies in the future
    while len(items) < size:  # more than a round: the rounds before it
        items += standard_round(rng, agent.identity, t)
        t -= ROUND_MS
    chunk = items[:size]
    payload = {"version": 1, "spool": agent.spool, "first": first, "last": first + len(chunk) - 1,
               "measurements": [{"seq": first + i, **m} for i, m in enumerate(chunk)], "evicted": [],
               "agent": {"version": "0.1.0", "config_version": "sha256:5b1f", "spool_rows": len(chunk),
                         "dropped_total": 0, "clock_offset_ms": -12.5}}
    return gzip.compress(json.dumps(payload, separators=(",", ":")).encode(), 6), len(chunk)


def _agent_bodies_star(args: tuple) -> Bodies:
    return agent_bodies(*args)


def make_bodies(agents: list[SimAgent], batches: int, batch_size: int, t0_ms: int, processes: int = 2,
                lp_identity: Callable[[SimAgent], dict[str, str]] | None = None) -> list[Bodies]:
    """Pre-generate every agent's bodies in `processes` worker processes."""
    jobs = [(a, batches, batch_size, t0_ms, i, lp_identity(a) if lp_identity else None) for i, a in enumerate(agents)]
    with ProcessPoolExecutor(processes) as pool:
        return list(pool.map(_agent_bodies_star, jobs, chunksize=16))


@dataclass(slots=True)
class StormResult:
    """What a storm did: per request (status, latency s, lines of the batch if 2xx), wall time, retries."""

    requests: list[tuple[int, float, int]] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    last_ok: float = 0.0  # when the last batch was accepted (perf_counter)
    retries: int = 0  # 429/503 answers, each followed by a resend after its Retry-After
    retry_wait_s: float = 0.0  # total time agents spent waiting for Retry-After
    errors: dict[str, int] = field(default_factory=dict)
    lines_ok: int = 0
    samples_ok: int = 0

    @property
    def seconds(self) -> float:
        """Return the storm's wall time."""
        return self.ended - self.started

    @property
    def drained_s(self) -> float:
        """Return the time from the start to the last accepted batch."""
        return self.last_ok - self.started


async def storm(url: str, plan: list[tuple[dict[str, str], list[bytes], list[int], list[int]]], *,
                ssl_context: ssl.SSLContext | None = None, deadline_s: float = 120.0, max_tries: int = 10_000,
                retry_cap_s: float = 3600.0, warm_path: str | None = None, timeout_s: float = 60.0,
                on_start: Callable[[], None] | None = None) -> StormResult:
    """Post each plan entry (headers, bodies, lines, samples) in order over its own connection, all at once.

    Every entry gets one `aiohttp` session with a one-connection pool (an agent's HTTP connection). When
    `warm_path` is given each connection first GETs it (TLS handshakes before the clock starts). A 429/503 is
    resent after its Retry-After (capped at `retry_cap_s`) plus up to 10 % (at most 5 s) of jitter, as
    agent/shipper.py waits, up to `max_tries` times; other statuses and errors are counted and the next batch goes.
    Nothing is sent after `deadline_s`. `on_start()` is called when the clock starts (after the warm-up), e.g. to
    read CPU counters.
    """
    result = StormResult()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, ssl=ssl_context or False,
                                                                     force_close=False), timeout=timeout)
                for _ in plan]
    try:
        if warm_path:
            async def warm(session: aiohttp.ClientSession) -> None:
                async with session.get(url.rstrip("/") + warm_path) as response:
                    await response.read()
            sem = asyncio.Semaphore(64)  # handshakes a few at a time: the collector's backlog is finite

            async def warm_one(session: aiohttp.ClientSession) -> None:
                async with sem:
                    await warm(session)
            await asyncio.gather(*(warm_one(s) for s in sessions))
        if on_start is not None:
            on_start()
        result.started = time.perf_counter()
        stop_at = result.started + deadline_s

        async def run(session: aiohttp.ClientSession, headers: dict, bodies: list[bytes], lines: list[int],
                      samples: list[int]) -> None:
            for body, n_lines, n_samples in zip(bodies, lines, samples):
                for _ in range(max_tries):
                    if time.perf_counter() > stop_at:
                        return
                    sent = time.perf_counter()
                    try:
                        async with session.post(url, data=body, headers=headers) as response:
                            await response.read()
                            status, retry_after = response.status, response.headers.get("Retry-After")
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        name = type(exc).__name__
                        result.errors[name] = result.errors.get(name, 0) + 1
                        result.requests.append((0, time.perf_counter() - sent, 0))
                        break
                    ok = 200 <= status < 300
                    result.requests.append((status, time.perf_counter() - sent, n_lines if ok else 0))
                    if ok:
                        result.lines_ok += n_lines
                        result.samples_ok += n_samples
                        result.last_ok = time.perf_counter()
                        break
                    if status in (429, 503):
                        result.retries += 1
                        wait = min(float(retry_after) if retry_after and retry_after.isdigit() else 1.0, retry_cap_s)
                        wait += random.uniform(0, min(5.0, wait * 0.1))  # agent/shipper.py's jitter
                        result.retry_wait_s += wait
                        await asyncio.sleep(wait)
                        continue
                    result.errors[f"http {status}"] = result.errors.get(f"http {status}", 0) + 1
                    break

        await asyncio.gather(*(run(s, *entry) for s, entry in zip(sessions, plan)))
        result.ended = time.perf_counter()
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    return result


def percentile(values: list[float], pct: float) -> float:
    """Return the pct-th percentile (nearest rank) of values (nan when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))]


def client_ssl(ca_file: str | Path) -> ssl.SSLContext:
    """Return the agents' TLS context: trust only the province CA (the pin), as the shipper does."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


__all__ = ["Bodies", "SimAgent", "StormResult", "agent_bodies", "client_ssl", "enroll", "enroll_http",
           "live_body", "make_bodies", "names", "percentile", "standard_round", "storm"]
