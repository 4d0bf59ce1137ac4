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
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import yaml

from lab import fleet
from lab.pki import make_pki
from lab.victoria import Victoria, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "collector_ingest.md"
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


def start_collector(config: Path, url: str, log: Path, ssl_context: object, profile: str | None = None) -> subprocess.Popen:
    """Start `cmon collector run -c config` (under `py-spy record` with `profile`) and wait for /health."""
    import ssl as _ssl
    spy = [str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200", "--gil", "-f", "raw", "-o", profile, "--"] if profile else []
    cmd = [*spy, str(Path(sys.executable).parent / "cmon"), "--log-level", "warning", "collector", "run", "-c", str(config)]
    with open(log, "ab") as out:
        process = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
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
              warm_path: str | None, deadline_s: float, metrics_url: str | None = None) -> dict:
    """Run one storm; return its figures (rates, latency, errors, CPU per process)."""
    rows0 = vm.rows_inserted()
    cpu0: dict[str, float] = {}

    def start() -> None:  # after the TLS handshakes of the warm-up
        cpu0.update({k: cpu_s(p) for k, p in pids.items()} | {"simulator": cpu_s()})
    result = asyncio.run(fleet.storm(url, plan, ssl_context=ssl_context, deadline_s=deadline_s, warm_path=warm_path,
                                     on_start=start))
    cpu1 = {k: cpu_s(p) for k, p in pids.items()} | {"simulator": cpu_s()}
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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write results/collector_ingest.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=3, help="batches per agent (its backlog)")
    parser.add_argument("--batch-size", type=int, default=500, help="measurements per batch (the agent's batch_max)")
    parser.add_argument("--deadline", type=float, default=180.0, help="seconds per phase at most")
    parser.add_argument("--max-inflight", type=int, help="the collector's limits.max_inflight (default: its own)")
    parser.add_argument("--http", action="store_true", help="plain HTTP to the collector (default HTTPS)")
    parser.add_argument("--skip-direct", action="store_true", help="only the collector phase")
    parser.add_argument("--profile", metavar="FILE", help="run the collector under py-spy (collapsed stacks to FILE)")
    parser.add_argument("--no-write", action="store_true", help="do not write results/collector_ingest.md")
    args = parser.parse_args(argv)
    command = "`.venv/bin/python -m benchmarks.collector_ingest" + (f" {' '.join(argv or sys.argv[1:])}`".rstrip(" `") + "`")
    with tempfile.TemporaryDirectory(prefix="cmon-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        pki = make_pki(tmp / "pki", ["collector.lab.test", "localhost"], ["127.0.0.1"])
        agents = fleet.enroll(tmp / "state" / "collector.sqlite", PROVINCE, args.agents)
        started = time.perf_counter()
        per_agent = bodies(agents, args.batches, args.batch_size)
        print(f"{args.agents} agents enrolled, bodies ready in {time.perf_counter() - started:.1f} s", flush=True)
        phases = []
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
                phases.append(run_phase(f"collector ({'HTTP' if args.http else 'HTTPS'}, production path)",
                                        url + "/api/v1/ingest", plan, pids, vm, ssl_context=ssl_context,
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
    lines_per_round = 32
    samples = sum(per_agent[0].samples) / sum(per_agent[0].lines)
    text = "\n".join([
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
        table(phases), "",
    ])
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
