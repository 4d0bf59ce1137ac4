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
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import pickle
import platform
import statistics
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
    args = parser.parse_args(argv)
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
    RESULTS.parent.mkdir(exist_ok=True)
    text = "\n".join([header(args, command, per_agent), table(phases), ""])
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
    return 0


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
