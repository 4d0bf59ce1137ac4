"""Collector ingest under a backfill storm, beside VictoriaMetrics ingesting the same line protocol directly.

One run, one VictoriaMetrics (lab.victoria: `-dedup.minScrapeInterval=1ms`), one collector process (`cmon
collector run`, HTTPS with a province-CA certificate from lab.pki), N simulated agents (lab.fleet) enrolled in
the collector's state file, each with a backlog of standard-profile batches (contiguous seq ranges, gzip'd JSON,
pre-generated before any timing):

  (a) direct: every agent's batches as gzip'd line protocol (the identity tags the collector would add, another
      province so the series differ) POSTed to VM's /api/v2/write, one connection per agent, all at once;
  (b) collector: the same batches through the production path — HTTPS, Bearer credential, gzip, validation, tag
      override, de-duplication against the acknowledged ranges, the VM write, the durable ack — one HTTPS
      connection per agent, all at once, honouring 503 + Retry-After as the agent's shipper does (the collector
      sheds past `limits.max_inflight` requests in flight: collector.admission).

Rates: lines/s from the batches answered 2xx, samples/s from `vm_rows_inserted_total{type="influx"}`, both over
the drain time (first request sent → last batch accepted). Latency: of accepted (2xx) requests, and of all
answers (503s included); every 503 is resent and counted. CPU: utime+stime of each process over each phase.

    .venv/bin/python -m benchmarks.collector_ingest [--agents 2000] [--batches 3] [--batch-size 500]

`--compare DIR` runs the collector phase also with the collector of the source tree DIR (a git worktree of an
older commit; `PYTHONPATH` and cwd = DIR, its own `python -m` entry point), in alternating order (DIR, this tree,
DIR, this tree: `--rounds` each), for each `--max-inflight` setting (e.g. `default,4096`: the collector's own cap,
and one above the agent count, i.e. no shedding), every phase with the same pre-generated bodies and a fresh VM
and state file (enrolled by the tree's own code); the medians per tree and their ratio are reported.

`--live N` (not with --compare) adds, during the collector phase's storm, N more enrolled agents posting a small
live batch (`--live-size` measurements with current timestamps, the next seqs of their spool) every
`--live-interval` s with `X-Cmon-Batch: live`, N "unmarked" agents doing the same without the header (the
collector takes them for backlog), and one heartbeat per live agent every 2 s — from a process of their own
(its own event loop: the storm's 2000 connections do not delay it), each agent over its own connection pool
(2, as the shipper's). Per request the time from its first send to the accepted answer, 503/429 resends after
Retry-After (plus the shipper's jitter) included. Written to results/collector_ingest_live.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import importlib
import json
import multiprocessing
import os
import pickle
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import yaml

from core.wire import BATCH_HEADER, encode_heartbeat
from lab import fleet
from lab.pki import make_pki
from lab.victoria import Victoria, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "collector_ingest.md"
RESULTS_LIVE = RESULTS.with_name("collector_ingest_live.md")
PROVINCE = "ha-tinh"
CACHE = Path(tempfile.gettempdir()) / "cmon-fleet-bodies"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int | None = None) -> float:
    """Return utime+stime (s) of a process (None: this one)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def bodies(agents: list[fleet.SimAgent], batches: int, batch_size: int) -> list[fleet.Bodies]:
    """Return the agents' pre-generated bodies (cached across runs: generating them takes a while)."""
    key = hashlib.sha256(repr((len(agents), batches, batch_size, agents[0].spool, agents[-1].agent, 3)).encode())
    path = CACHE / f"{len(agents)}-{batches}-{batch_size}-{key.hexdigest()[:12]}.pickle"
    if path.exists() and time.time() - path.stat().st_mtime < 6 * 86_400:
        return pickle.loads(path.read_bytes())
    t0 = int(time.time() * 1000) - 7 * 86_400_000  # a week-old backlog, well inside the 30 d retention
    out = fleet.make_bodies(agents, batches, batch_size, t0, processes=os.cpu_count() or 2,
                            lp_identity=lambda a: {**a.identity, "province": "direct"})
    CACHE.mkdir(exist_ok=True)
    path.write_bytes(pickle.dumps(out, protocol=5))
    return out


def collector_config(tmp: Path, vm_url: str, port: int, pki: object, http: bool, limits: dict | None = None) -> Path:
    """Write the collector's config (HTTPS unless `http`) and return its path."""
    listen = {"host": "127.0.0.1", "port": port}
    if http:
        listen["allow_http"] = True
    else:
        listen |= {"cert_file": str(pki.province_leaf), "key_file": str(pki.province_leaf_key),
                   "ca_file": str(pki.province_root)}
    path = tmp / "collector.yaml"
    path.write_text(yaml.safe_dump({"province": PROVINCE, "data_dir": str(tmp / "state"), "listen": listen,
                                    "database": {"url": vm_url, "retention": "30d", "timeout": "20s"},
                                    "limits": {"retry_after": 1, **(limits or {})}}))
    return path


def commit_of(code: Path) -> str:
    """Return the short commit of the source tree `code` ("?" if it is not a git tree)."""
    proc = subprocess.run(["git", "-C", str(code), "log", "-1", "--format=%h"], capture_output=True, text=True)
    return proc.stdout.strip() or "?"


def cli_module(code: Path) -> str:
    """Return the `python -m` module of the tree's `cmon` command (`agent.cli` before the `cmon` package)."""
    return "cmon" if (code / "cmon" / "__main__.py").exists() else "agent.cli"


def tree_env(code: Path) -> dict[str, str]:
    """Return the environment running code from the source tree `code` (ahead of the venv's editable install)."""
    return dict(os.environ, PYTHONPATH=str(code))


def enroll_with(code: Path, state_file: Path, n: int) -> list[fleet.SimAgent]:
    """Enroll n simulated agents in `state_file` with the tree `code`'s own collector code; return them."""
    script = ("import json, sys; from lab import fleet; "
              f"agents = fleet.enroll({str(state_file)!r}, {PROVINCE!r}, {n}); "
              "json.dump([[a.province, a.commune, a.agent, a.credential, a.spool] for a in agents], sys.stdout)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=code, env=tree_env(code), capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"enrolling with {code} failed: {proc.stderr[-2000:]}")
    return [fleet.SimAgent(*row) for row in json.loads(proc.stdout)]


def start_collector(config: Path, url: str, log: Path, ssl_context: object, profile: str | None = None,
                    code: Path = REPO_ROOT) -> subprocess.Popen:
    """Start the tree `code`'s `cmon collector run -c config` (under `py-spy record` with `profile`) and wait for
    /health. Refused batches are logged at info: the log level is info."""
    import ssl as _ssl
    spy = [str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200", "--gil", "-f", "raw", "-o", profile, "--"] if profile else []
    cmd = [*spy, sys.executable, "-m", cli_module(code), "--log-level", "info", "collector", "run", "-c", str(config)]
    with open(log, "ab") as out:
        process = subprocess.Popen(cmd, cwd=code, env=tree_env(code), stdout=out, stderr=out,
                                   stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the collector exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1,
                                        context=ssl_context if isinstance(ssl_context, _ssl.SSLContext) else None):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the collector did not start")


LIVE_HARD_S = 60.0  # a request first sent before the storm ended is given up this long after it (resends included)


class LiveTraffic:
    """Live-marked and unmarked agents (and the live ones' heartbeats) in a process of their own, during a storm.

    `with LiveTraffic(...) as live:` starts the process and waits for its TLS handshakes; `live.go()` starts
    the clock (the storm's start), `live.finish()` stops new sends (the storm's end), waits for the requests
    under way and returns their records: (kind, first send s after go, latency s, final status, 503s, 429s,
    problem or "").
    """

    def __init__(self, url: str, ca_file: str | None, marked: list[fleet.SimAgent], unmarked: list[fleet.SimAgent],
                 *, interval_s: float, heartbeat_s: float, size: int, max_s: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ready, self.start, self.stop = ctx.Event(), ctx.Event(), ctx.Event()
        self.out = ctx.Queue()
        target = importlib.import_module("benchmarks.collector_ingest")._live_main  # importable in the child
        self.process = ctx.Process(target=target, daemon=True, args=(
            url, ca_file, [(a.province, a.commune, a.agent, a.credential, a.spool) for a in marked],
            [(a.province, a.commune, a.agent, a.credential, a.spool) for a in unmarked],
            interval_s, heartbeat_s, size, max_s, self.ready, self.start, self.stop, self.out))

    def __enter__(self) -> LiveTraffic:
        self.process.start()
        if not self.ready.wait(120):
            self.__exit__()
            raise RuntimeError("the live agents did not get ready (TLS handshakes) within 120 s")
        return self

    def go(self) -> None:
        """Start sending (the storm's clock started)."""
        self.start.set()

    def finish(self) -> list[tuple]:
        """Stop new sends; return the records once the requests under way are answered (bounded)."""
        self.stop.set()
        records = self.out.get(timeout=LIVE_HARD_S + 60)
        self.process.join(30)
        return records

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.start.set()  # a child still waiting for the start must not wait for ever
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _live_main(url: str, ca_file: str | None, marked: list[tuple], unmarked: list[tuple], interval_s: float,
               heartbeat_s: float, size: int, max_s: float, ready, start, stop, out) -> None:
    """The live agents' process: run them, put their records on `out`."""
    records = asyncio.run(_live(url, ca_file, [fleet.SimAgent(*a) for a in marked],
                                [fleet.SimAgent(*a) for a in unmarked], interval_s, heartbeat_s, size, max_s,
                                ready, start, stop))
    out.put(records)


async def _live(url: str, ca_file: str | None, marked: list[fleet.SimAgent], unmarked: list[fleet.SimAgent],
                interval_s: float, heartbeat_s: float, size: int, max_s: float, ready, start, stop) -> list[tuple]:
    ssl_context = fleet.client_ssl(ca_file) if ca_file else False
    agents = [("live", a) for a in marked] + [("unmarked", a) for a in unmarked]
    timeout = aiohttp.ClientTimeout(total=30)
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2, ssl=ssl_context), timeout=timeout)
                for _ in agents]
    records: list[tuple] = []
    try:
        for session in sessions:  # both connections of each pool, before the clock starts
            async def warm(s: aiohttp.ClientSession = session) -> None:
                async with s.get(url + "/health") as response:
                    await response.read()
            await asyncio.gather(warm(), warm())
        ready.set()
        while not start.is_set():
            await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        stop_at = t0 + max_s

        def stopped() -> bool:
            return stop.is_set() or time.perf_counter() > stop_at

        async def post(kind: str, session: aiohttp.ClientSession, path: str, body: bytes, headers: dict,
                       check) -> None:
            first = time.perf_counter()
            give_up = first + LIVE_HARD_S
            n503 = n429 = 0
            for _ in range(1000):
                try:
                    async with session.post(url + path, data=body, headers=headers) as response:
                        answer = await response.read()
                        status, retry_after = response.status, response.headers.get("Retry-After")
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    records.append((kind, first - t0, time.perf_counter() - first, 0, n503, n429,
                                    type(exc).__name__))
                    return
                if status in (429, 503):
                    n503 += status == 503
                    n429 += status == 429
                    wait = float(retry_after) if retry_after and retry_after.isdigit() else 1.0
                    wait += random.uniform(0, min(5.0, wait * 0.1))  # agent/shipper.py's jitter
                    if time.perf_counter() + wait > give_up:
                        break
                    await asyncio.sleep(wait)
                    continue
                problem = "" if status == 200 else f"http {status}: {answer[:200]!r}"
                if not problem:
                    problem = check(json.loads(answer))
                records.append((kind, first - t0, time.perf_counter() - first, status, n503, n429, problem))
                return
            records.append((kind, first - t0, time.perf_counter() - first, 0, n503, n429, "gave up (resends)"))

        async def batches(kind: str, agent: fleet.SimAgent, session: aiohttp.ClientSession, index: int) -> None:
            rng = random.Random(index)
            headers = {"Authorization": f"Bearer {agent.credential}", "Content-Type": "application/json",
                       "Content-Encoding": "gzip"} | ({BATCH_HEADER: "live"} if kind == "live" else {})
            seq = 1
            next_t = t0 + rng.uniform(0, interval_s)  # the agents' phases spread over the interval
            while True:
                await asyncio.sleep(max(0.0, next_t - time.perf_counter()))
                if stopped():
                    return
                body, n = fleet.live_body(agent, seq, size, int(time.time() * 1000), rng)
                first, last = seq, seq + n - 1

                def check(answer: dict, first: int = first, last: int = last, n: int = n) -> str:
                    if answer.get("acked") != [first, last] or answer.get("written") != n or answer.get("duplicate"):
                        return f"unexpected answer {answer}"
                    return ""
                before = len(records)
                await post(kind, session, "/api/v1/ingest", body, headers, check)
                if records[before][3] != 200 or records[before][6]:
                    return  # not accepted: this agent's next seqs would leave a gap — it stops (counted)
                seq += n
                next_t = max(next_t + interval_s, time.perf_counter())  # behind: the next one at once

        async def heartbeats(agent: fleet.SimAgent, session: aiohttp.ClientSession, index: int) -> None:
            headers = {"Authorization": f"Bearer {agent.credential}", "Content-Type": "application/json",
                       "Content-Encoding": "gzip"}
            body = gzip.compress(encode_heartbeat("running", {"version": "0.1.0", "health": "ok"}))
            next_t = t0 + random.Random(-index).uniform(0, heartbeat_s)
            while True:
                await asyncio.sleep(max(0.0, next_t - time.perf_counter()))
                if stopped():
                    return
                await post("heartbeat", session, "/api/v1/heartbeat", body, headers,
                           lambda answer: "" if "server_time_ms" in answer else f"unexpected answer {answer}")
                next_t = max(next_t + heartbeat_s, time.perf_counter())

        await asyncio.gather(*(batches(kind, a, s, i) for i, ((kind, a), s) in enumerate(zip(agents, sessions))),
                             *(heartbeats(a, s, i) for i, ((kind, a), s) in enumerate(zip(agents, sessions))
                               if kind == "live"))
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    return records


def live_figures(records: list[tuple]) -> dict[str, dict]:
    """Return per kind (live, unmarked, heartbeat): counts, accepted latency percentiles, 503s, problems."""
    out = {}
    for kind in ("live", "unmarked", "heartbeat"):
        rows = [r for r in records if r[0] == kind]
        ok = [r[2] for r in rows if r[3] == 200 and not r[6]]
        problems: dict[str, int] = {}
        for r in rows:
            if r[3] != 200 or r[6]:
                problems[r[6][:60] or f"http {r[3]}"] = problems.get(r[6][:60] or f"http {r[3]}", 0) + 1
        out[kind] = {"count": len(rows), "accepted": len(ok),
                     "p50_ms": fleet.percentile(ok, 50) * 1000, "p95_ms": fleet.percentile(ok, 95) * 1000,
                     "p99_ms": fleet.percentile(ok, 99) * 1000, "max_ms": max(ok, default=float("nan")) * 1000,
                     "503": sum(r[4] for r in rows), "503_requests": sum(1 for r in rows if r[4]),
                     "429": sum(r[5] for r in rows), "problems": problems,
                     "span_s": (max((r[1] for r in rows), default=0) - min((r[1] for r in rows), default=0))}
    return out


def live_table(figures: dict[str, dict]) -> str:
    """Return the live table (markdown)."""
    names = {"live": "live-marked batches (`X-Cmon-Batch: live`)", "unmarked": "unmarked batches (no header)",
             "heartbeat": "heartbeats (`POST /api/v1/heartbeat`)"}
    rows = ["| requests | count | accepted | p50 ms | p95 ms | p99 ms | max ms | 503s (requests with one) | 429s | "
            "not accepted |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for kind, f in figures.items():
        rows.append(f"| {names[kind]} | {f['count']} | {f['accepted']} | {f['p50_ms']:.0f} | {f['p95_ms']:.0f} | "
                    f"{f['p99_ms']:.0f} | {f['max_ms']:.0f} | {f['503']} ({f['503_requests']}) | {f['429']} | "
                    f"{', '.join(f'{k}: {v}' for k, v in f['problems'].items()) or '0'} |")
    return "\n".join(rows)


def _child(pid: int) -> int:
    """Return the first child of pid (the collector under py-spy)."""
    return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


def shed_total(url: str, ssl_context: object) -> int | None:
    """Return the collector's `cmon_collector_shed_total` (None when it has no such counter)."""
    shed = None
    with urllib.request.urlopen(url + "/metrics", timeout=10, context=ssl_context) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(("cmon_collector_ingest_", "cmon_collector_write_seconds_sum",
                                "cmon_collector_write_seconds_count")):
                print(line)
            if line.startswith("cmon_collector_shed_total "):
                shed = int(float(line.split()[1]))
    return shed


def run_phase(name: str, url: str, plan: list, pids: dict[str, int], vm: Victoria, *, ssl_context=None,
              warm_path: str | None, deadline_s: float, metrics_url: str | None = None,
              live: LiveTraffic | None = None) -> dict:
    """Run one storm (with `live` traffic beside it); return its figures (rates, latency, errors, CPU per
    process, and the live traffic's under "live")."""
    rows0 = vm.rows_inserted()
    cpu0: dict[str, float] = {}
    if live is not None:
        pids = pids | {"live simulator": live.process.pid or 0}

    def start() -> None:  # after the TLS handshakes of the warm-up
        cpu0.update({k: cpu_s(p) for k, p in pids.items()} | {"simulator": cpu_s()})
        if live is not None:
            live.go()
    result = asyncio.run(fleet.storm(url, plan, ssl_context=ssl_context, deadline_s=deadline_s, warm_path=warm_path,
                                     on_start=start))
    cpu1 = {k: cpu_s(p) for k, p in pids.items()} | {"simulator": cpu_s()}
    live_records = live.finish() if live is not None else None
    rows = vm.rows_inserted() - rows0
    # Rates over the drain time (first request → last batch accepted): the Retry-After sleeps after it do not count.
    seconds = result.drained_s if result.last_ok else result.seconds
    latencies = [lat for _, lat, _ in result.requests]
    ok_latencies = [lat for status, lat, _ in result.requests if 200 <= status < 300]
    statuses: dict[str, int] = {}
    for status, _, _ in result.requests:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    expected_batches = sum(len(entry[1]) for entry in plan)
    figures = {
        "phase": name, "connections": len(plan), "seconds": seconds, "requests": len(result.requests),
        "batches_ok": statuses.get("200", 0) + statuses.get("204", 0), "batches_planned": expected_batches,
        "lines_ok": result.lines_ok, "samples_sent_ok": result.samples_ok, "rows_inserted": rows,
        "lines_per_s": result.lines_ok / seconds, "samples_per_s": rows / seconds,
        "p50_ms": fleet.percentile(latencies, 50) * 1000, "p99_ms": fleet.percentile(latencies, 99) * 1000,
        "ok_p50_ms": fleet.percentile(ok_latencies, 50) * 1000, "ok_p99_ms": fleet.percentile(ok_latencies, 99) * 1000,
        "statuses": statuses, "retries": result.retries, "errors": result.errors,
        "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu1}, "drained": statuses.get("200", 0) + statuses.get("204", 0)
        == expected_batches, "retry_wait_s": result.retry_wait_s,
        "shed_metric": shed_total(metrics_url, ssl_context) if metrics_url else None,
    }
    if live_records is not None:
        live_figs = live_figures(live_records)
        figures |= {"live": live_figs, "live_records": live_records}
        print(live_table(live_figs), flush=True)
    print(f"{name}: {figures['lines_per_s']:,.0f} lines/s, {figures['samples_per_s']:,.0f} samples/s, "
          f"accepted p50 {figures['ok_p50_ms']:.0f} ms p99 {figures['ok_p99_ms']:.0f} ms, all p99 "
          f"{figures['p99_ms']:.0f} ms, {statuses}, shed metric {figures['shed_metric']}, {result.errors}, "
          f"drained in {seconds:.1f} s, cpu {figures['cpu_s']}", flush=True)
    return figures


def table(phases: list[dict]) -> str:
    """Return the results as a markdown table."""
    rows = ["| path | connections | batches ok / planned | lines/s | samples/s (VM counter) | "
            "accepted p50 ms | accepted p99 ms | all answers p50 / p99 ms | answers | 503s (collector's shed_total) | "
            "errors | CPU s: collector / VM / simulator | drain s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- | ---: |"]
    for f in phases:
        cpu = f["cpu_s"]
        shed = f"{f['statuses'].get('503', 0)} ({f['shed_metric']})" if f["shed_metric"] is not None else \
            str(f["statuses"].get("503", 0))
        rows.append(
            f"| {f['phase']} | {f['connections']} | {f['batches_ok']} / {f['batches_planned']} | "
            f"{f['lines_per_s']:,.0f} | {f['samples_per_s']:,.0f} | {f['ok_p50_ms']:.0f} | {f['ok_p99_ms']:.0f} | "
            f"{f['p50_ms']:.0f} / {f['p99_ms']:.0f} | {', '.join(f'{k}: {v}' for k, v in sorted(f['statuses'].items()))} | "
            f"{shed} | {', '.join(f'{k}: {v}' for k, v in f['errors'].items()) or '0'} | "
            f"{cpu.get('collector', 0):.1f} / {cpu.get('vm', 0):.1f} / {cpu.get('simulator', 0):.1f} | "
            f"{f['seconds']:.1f}{'' if f['drained'] else ' (not drained)'} |")
    return "\n".join(rows)


def compare_phase(code: Path, label: str, tmp: Path, pki: object, per_agent: list[fleet.Bodies],
                  spools: list[str], args: argparse.Namespace, max_inflight: int | None) -> dict:
    """Run one collector phase with the collector of source tree `code`: a fresh state file (enrolled by that tree's
    code), a fresh VM, the same bodies; return its figures (with the tree, the cap and the log's refusals)."""
    tmp.mkdir(parents=True)
    (tmp / "state").mkdir()
    agents = enroll_with(code, tmp / "state" / "collector.sqlite", args.agents)
    if [a.spool for a in agents] != spools:
        raise RuntimeError("the agents enrolled differ from the bodies' agents (spool ids)")
    log = tmp / "collector.log"
    with Victoria(tmp / "vm", retention="30d") as vm:
        port = free_port()
        url = f"{'http' if args.http else 'https'}://127.0.0.1:{port}"
        ssl_context = None if args.http else fleet.client_ssl(pki.province_root)
        limits = {"max_inflight": max_inflight} if max_inflight else {}
        collector = start_collector(collector_config(tmp, vm.url, port, pki, args.http, limits), url, log,
                                    ssl_context, code=code)
        try:
            plan = [({"Authorization": f"Bearer {a.credential}", "Content-Type": "application/json",
                      "Content-Encoding": "gzip"}, b.wire, b.lines, b.samples) for a, b in zip(agents, per_agent)]
            figures = run_phase(f"collector {label}, max_inflight {max_inflight or 'default'}",
                                url + "/api/v1/ingest", plan, {"collector": collector.pid, "vm": vm.process.pid}, vm,
                                ssl_context=ssl_context, warm_path="/health", deadline_s=args.deadline,
                                metrics_url=url)
        finally:
            collector.terminate()
            try:
                collector.wait(30)
            except subprocess.TimeoutExpired:
                collector.kill()
                collector.wait()
    text = log.read_text(errors="replace")
    refused = [line for line in text.splitlines() if "refused" in line or "Traceback" in line]
    if refused:
        print(f"{label}: {len(refused)} refusals in the collector log, first: {refused[0]}", flush=True)
    return figures | {"tree": label, "max_inflight": max_inflight, "refused_log": len(refused),
                      "refused_first": refused[0][:200] if refused else ""}


def compare_table(phases: list[dict], labels: list[str]) -> str:
    """Return medians per (cap, tree) and the ratio of the last tree to the first (after / before)."""
    rows = ["| max_inflight | collector | runs | lines/s (median) | samples/s (median) | accepted p50 / p99 ms | "
            "all answers p99 ms | 503s | drain s | collector CPU s | batches ok / planned, refused in log | "
            "lines/s of the runs |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    caps = list(dict.fromkeys(f["max_inflight"] for f in phases))
    for cap in caps:
        med: dict[str, dict[str, float]] = {}
        for label in labels:
            runs = [f for f in phases if f["max_inflight"] == cap and f["tree"] == label]
            if not runs:
                continue
            m = {k: statistics.median(f[k] for f in runs) for k in
                 ("lines_per_s", "samples_per_s", "ok_p50_ms", "ok_p99_ms", "p99_ms", "seconds")}
            m["503"] = statistics.median(f["statuses"].get("503", 0) for f in runs)
            m["cpu"] = statistics.median(f["cpu_s"].get("collector", 0) for f in runs)
            med[label] = m
            ok = ", ".join(f"{f['batches_ok']}/{f['batches_planned']}" for f in runs)
            each = ", ".join(f"{f['lines_per_s']:,.0f}" for f in runs)
            rows.append(
                f"| {cap or 'default (32)'} | {label} | {len(runs)} | {m['lines_per_s']:,.0f} | "
                f"{m['samples_per_s']:,.0f} | {m['ok_p50_ms']:.0f} / {m['ok_p99_ms']:.0f} | {m['p99_ms']:.0f} | "
                f"{m['503']:.0f} | {m['seconds']:.1f} | {m['cpu']:.1f} | {ok}; {sum(f['refused_log'] for f in runs)} | "
                f"{each} |")
        if len(med) == 2:
            a, b = med[labels[-1]], med[labels[0]]
            rows.append(
                f"| {cap or 'default (32)'} | **ratio {labels[-1].split()[0]} / {labels[0].split()[0]}** | | "
                f"**{a['lines_per_s'] / b['lines_per_s']:.3f}** | {a['samples_per_s'] / b['samples_per_s']:.3f} | "
                f"{a['ok_p50_ms'] / b['ok_p50_ms']:.2f} / {a['ok_p99_ms'] / b['ok_p99_ms']:.2f} | "
                f"{a['p99_ms'] / b['p99_ms']:.2f} | | {a['seconds'] / b['seconds']:.3f} | {a['cpu'] / b['cpu']:.3f} | | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write results/collector_ingest.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=3, help="batches per agent (its backlog)")
    parser.add_argument("--batch-size", type=int, default=500, help="measurements per batch (the agent's batch_max)")
    parser.add_argument("--deadline", type=float, default=180.0, help="seconds per phase at most")
    parser.add_argument("--max-inflight", help="the collector's limits.max_inflight (default: its own); with "
                        "--compare a comma-separated list of settings, `default` = its own (e.g. default,4096)")
    parser.add_argument("--compare", metavar="DIR", help="also run the collector phase with the collector of this "
                        "source tree, alternating (DIR first), and report medians and the ratio")
    parser.add_argument("--rounds", type=int, default=2, help="with --compare: collector phases per tree and cap")
    parser.add_argument("--http", action="store_true", help="plain HTTP to the collector (default HTTPS)")
    parser.add_argument("--skip-direct", action="store_true", help="only the collector phase")
    parser.add_argument("--profile", metavar="FILE", help="run the collector under py-spy (collapsed stacks to FILE)")
    parser.add_argument("--no-write", action="store_true", help="do not write results/collector_ingest.md")
    parser.add_argument("--live", type=int, default=0, metavar="N", help="during the collector phase also N agents "
                        "posting live batches (X-Cmon-Batch: live), N unmarked ones, heartbeats; writes "
                        "results/collector_ingest_live.md instead")
    parser.add_argument("--live-size", type=int, default=30, help="measurements per live batch")
    parser.add_argument("--live-interval", type=float, default=1.0, help="seconds between an agent's live batches")
    args = parser.parse_args(argv)
    if args.live and args.compare:
        parser.error("--live is not supported with --compare")
    caps = [None if c.strip() == "default" else int(c) for c in (args.max_inflight or "default").split(",")]
    if not args.compare:
        if len(caps) > 1:
            parser.error("several --max-inflight settings need --compare")
        args.max_inflight = caps[0]
    command = "`.venv/bin/python -m benchmarks.collector_ingest" + (f" {' '.join(argv or sys.argv[1:])}`".rstrip(" `") + "`")
    with tempfile.TemporaryDirectory(prefix="cmon-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        pki = make_pki(tmp / "pki", ["collector.lab.test", "localhost"], ["127.0.0.1"])
        agents = fleet.enroll(tmp / "state" / "collector.sqlite", PROVINCE, args.agents)
        live_agents = fleet.enroll(tmp / "state" / "collector.sqlite", PROVINCE, 2 * args.live, prefix="live") \
            if args.live else []
        started = time.perf_counter()
        per_agent = bodies(agents, args.batches, args.batch_size)
        print(f"{args.agents} agents enrolled, bodies ready in {time.perf_counter() - started:.1f} s", flush=True)
        phases = []
        if args.compare:
            return compare_main(args, command, tmp, pki, per_agent, [a.spool for a in agents], caps)
        with Victoria(tmp / "vm", retention="30d") as vm:
            port = free_port()
            url = f"{'http' if args.http else 'https'}://127.0.0.1:{port}"
            ssl_context = None if args.http else fleet.client_ssl(pki.province_root)
            limits = {"max_inflight": args.max_inflight} if args.max_inflight else {}
            collector = start_collector(collector_config(tmp, vm.url, port, pki, args.http, limits), url,
                                        tmp / "collector.log", ssl_context, args.profile)
            try:
                pids = {"collector": _child(collector.pid) if args.profile else collector.pid, "vm": vm.process.pid}
                if not args.skip_direct:
                    plan = [({"Content-Encoding": "gzip", "Content-Type": "text/plain"}, b.lineproto, b.lines,
                             b.samples) for b in per_agent]
                    phases.append(run_phase("VM direct (/api/v2/write, gzip line protocol, HTTP)",
                                            vm.url + "/api/v2/write?precision=ms", plan, pids, vm,
                                            warm_path=None, deadline_s=args.deadline))
                plan = [({"Authorization": f"Bearer {a.credential}", "Content-Type": "application/json",
                          "Content-Encoding": "gzip"}, b.wire, b.lines, b.samples) for a, b in zip(agents, per_agent)]
                name = f"collector ({'HTTP' if args.http else 'HTTPS'}, production path)"
                if args.live:
                    with LiveTraffic(url, None if args.http else str(pki.province_root), live_agents[:args.live],
                                     live_agents[args.live:], interval_s=args.live_interval, heartbeat_s=2.0,
                                     size=args.live_size, max_s=args.deadline) as live:
                        phases.append(run_phase(name, url + "/api/v1/ingest", plan, pids, vm, ssl_context=ssl_context,
                                                warm_path="/health", deadline_s=args.deadline, metrics_url=url,
                                                live=live))
                else:
                    phases.append(run_phase(name, url + "/api/v1/ingest", plan, pids, vm, ssl_context=ssl_context,
                                            warm_path="/health", deadline_s=args.deadline, metrics_url=url))
            finally:
                if args.profile:  # py-spy writes its file when the profiled process ends
                    os.kill(pids["collector"], 15)
                collector.terminate() if not args.profile else None
                try:
                    collector.wait(30)
                except subprocess.TimeoutExpired:
                    collector.kill()
                    collector.wait()
            if collector.returncode not in (0, -15):
                print((tmp / "collector.log").read_text()[-3000:])
            log_lines = (tmp / "collector.log").read_text(errors="replace").splitlines()
    RESULTS.parent.mkdir(exist_ok=True)
    text = "\n".join([header(args, command, per_agent), table(phases), ""])
    if args.live:
        text += "\n" + live_section(args, phases[-1], log_lines)
    print(text)
    if not args.no_write:
        (RESULTS_LIVE if args.live else RESULTS).write_text(text)
    return 0


def live_section(args: argparse.Namespace, phase: dict, log_lines: list[str]) -> str:
    """Return the results' live section: what ran, the table, the refusals in the collector's log."""
    refused = [line for line in log_lines if "refused" in line or "Traceback" in line]
    records = phase["live_records"]
    first = [r[1] for r in records]
    return "\n".join([
        "## Live batches during the storm", "",
        f"Beside the storm, from a process of its own: {args.live} agents posting a live batch of {args.live_size} "
        f"measurements (current timestamps, the next seqs of their spool, gzip'd JSON) every {args.live_interval:g} s "
        f"with `X-Cmon-Batch: live`, {args.live} agents doing the same without the header (taken for backlog), and "
        "one heartbeat per live agent every 2 s; each agent over its own pool of 2 connections (TLS handshakes before "
        "the clock), every agent enrolled in the state file. Sent from the storm's start to its end (first sends "
        f"over {max(first, default=0) - min(first, default=0):.1f} s of the {phase['seconds']:.1f} s drain + the last "
        "batches' tail). Latency: from a request's first send to its accepted (200) answer, the resends after each "
        "503/429's Retry-After (plus the shipper's jitter) included; an agent sends its next batch on its 1 s tick, or "
        "at once when the previous one took longer. Accepted = 200 with the expected `acked` range, `written` = the "
        "batch's measurements (not a duplicate) / a heartbeat's `server_time_ms`.", "",
        live_table(phase["live"]), "",
        "The storm table's shed_total counts these agents' 503s too. "
        f"The live simulator's CPU over the storm: {phase['cpu_s'].get('live simulator', 0):.1f} s. "
        f"Collector log: {len(refused)} `refused` / Traceback lines"
        + (f" (first: `{refused[0][:200]}`)" if refused else "") + ".", "",
    ])


def compare_main(args: argparse.Namespace, command: str, tmp: Path, pki: object, per_agent: list[fleet.Bodies],
                 spools: list[str], caps: list[int | None]) -> int:
    """The `--compare` run: VM direct once (unless skipped), then per cap the collector phases alternating."""
    trees = [Path(args.compare).resolve(), REPO_ROOT]
    labels = [f"{commit_of(t)} ({'--compare' if i == 0 else 'this tree'})" for i, t in enumerate(trees)]
    phases: list[dict] = []
    if not args.skip_direct:
        with Victoria(tmp / "vm-direct", retention="30d") as vm:
            plan = [({"Content-Encoding": "gzip", "Content-Type": "text/plain"}, b.lineproto, b.lines, b.samples)
                    for b in per_agent]
            direct = run_phase("VM direct (/api/v2/write, gzip line protocol, HTTP)", vm.url + "/api/v2/write?precision=ms",
                               plan, {"vm": vm.process.pid}, vm, warm_path=None, deadline_s=args.deadline)
    n = 0
    for cap in caps:
        for _ in range(args.rounds):
            for code, label in zip(trees, labels):
                n += 1
                phases.append(compare_phase(code, label, tmp / f"phase-{n}", pki, per_agent, spools, args, cap))
    order = ", ".join(f"{f['tree'].split()[0]}@{f['max_inflight'] or 'default'}" for f in phases)
    text = "\n".join([
        header(args, command, per_agent),
        f"Collector phases: {' and '.join(f'`{commit_of(t)}` ({t})' for t in trees)}, each phase with a fresh VM and "
        "a fresh state file enrolled by that tree's own code, the collector started as `python -m "
        f"{cli_module(trees[0])}` / `python -m {cli_module(trees[1])}` (`collector run`, PYTHONPATH and cwd = the "
        f"tree), the same pre-generated bodies; order: {order}. max_inflight `default` = the collector's own (32 in "
        f"both trees); {max((c for c in caps if c), default='–')} > the {args.agents} agents: no shedding. Refused "
        "in log: the collector's `refused a batch` / Traceback lines (log level info), which would void the run.", "",
        "### Medians per collector and the ratio (this tree / --compare)", "",
        compare_table(phases, labels), "",
        "### Every phase", "",
        table(([direct] if not args.skip_direct else []) + phases), "",
    ])
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(text)
    return 0


def header(args: argparse.Namespace, command: str, per_agent: list[fleet.Bodies]) -> str:
    """Return the results file's title, command, run line and the description of the storm."""
    lines_per_round = 32
    samples = sum(per_agent[0].samples) / sum(per_agent[0].lines)
    return "\n".join([
        "# Collector ingest: a backfill storm, beside VictoriaMetrics direct", "",
        f"Command: {command}  ",
        f"Run: {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC on {platform.node()} ({os.cpu_count()} CPUs, "
        f"Linux {platform.release()}), Python {platform.python_version()}", "",
        f"{args.agents} agents (enrolled for real in the collector's state file), each posting a backlog of "
        f"{args.batches} batches × {args.batch_size} measurements of the standard profile ({lines_per_round} lines per "
        f"30 s round, {samples:.1f} samples per line) back to back over its own connection, all agents at once. "
        "Drain s: from the first request to the last batch accepted (the whole storm written). Lines/s: lines of "
        "the batches answered 2xx over the drain time; samples/s: the increase of VM's "
        "`vm_rows_inserted_total{type=\"influx\"}` over the same time. Latency: per request, send → answer read; "
        "\"accepted\" counts only the 2xx answers, \"all answers\" the 503s too. A 503 (the collector shedding "
        "load before reading the body) is resent after its Retry-After plus the shipper's jitter; the 503 column "
        "counts them as the simulator saw them and, in brackets, as the collector's `cmon_collector_shed_total` "
        "counted them. One machine runs VM, the collector and the simulator (CPU s: utime+stime of each over the "
        "phase).", "",
    ])


if __name__ == "__main__":
    sys.exit(main())
