"""Agent footprint: `cmon agent run` with the standard commune profile beside node_exporter + blackbox_exporter.

In one lab run (root; `lab.Lab` with the province servers):
- dc: VictoriaMetrics (127.0.0.1:8428 there) and the real collector (`cmon collector run`, plain HTTP on
  COLLECTOR_ADDR, an extra address of dc), the agent enrolled straight in the collector's state;
- pc: `cmon agent run` with configs/commune-standard.yaml moved onto the lab (host names, CAs, the backup
  line's source address, the collector URL: `lab_profile()`), and beside it node_exporter (:9100) +
  blackbox_exporter (:9115) configured for the same targets over both lines, scraped every 30 s by a small
  scraper loop (`scrape` subcommand, as Prometheus would; the scraper itself is not measured).

Every `--sample` seconds (10) for `--minutes` (10), after one interval of warm-up, the orchestrator sums the PSS
(`/proc/PID/smaps_rollup`) and CPU time (utime + stime) over each measured process tree. Reported: median and
max PSS, growth per hour (least-squares slope over the second half), CPU % of one core over the whole window;
and as a check that both did the work: the agent's probe samples in VM, the exporters' probe successes.

    .venv/bin/python -m benchmarks.agent_footprint [--minutes 10] [--compare DIR]

`--compare DIR` runs a second agent from the source tree DIR (e.g. a git worktree of the commit before a change)
beside the first in the same lab, over the same window: same profile, its own spool, credential and agent id
(COMPARE_ID), enrolled the same way, shipping to the same collector. Each agent row is labelled with its tree's
commit, and the ratio of the medians (this tree / DIR) is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from lab import Lab, LabError, addresses as A
from lab.stack import COLLECTOR_ADDR, COLLECTOR_PORT, STANDARD_PROFILE as PROFILE, VM_PORT, lab_profile
from benchmarks.common import REPO_ROOT, BLACKBOX_BIN, fmt, md_table, write_results

NODE_EXPORTER_BIN = "/usr/bin/prometheus-node-exporter"
NODE_PORT, BLACKBOX_PORT = 9100, 9115
INTERVAL_S = 30.0
CMON = str(Path(sys.executable).with_name("cmon"))
# The agent's environment as the systemd unit sets it (cmon/service/systemd/commune-monitor-agent.service).
AGENT_ENV = {"MALLOC_ARENA_MAX": "2"}
COMPARE_ID = "quay-02"  # the agent id of the second agent (`--compare`)


def blackbox_setup(pki: dict[str, str]) -> tuple[str, list[tuple[str, str]]]:
    """Return blackbox_exporter's YAML and the (module, target) pairs doing the profile's work on both lines."""
    modules: dict[str, Any] = {}
    probes: list[tuple[str, str]] = []
    data = lab_profile(pki, Path("/nonexistent"))
    for line, source in (("primary", None), ("backup", A.PC_BACKUP_ADDR)):
        for service, targets in data["services"].items():
            for t in targets:
                module, target = _blackbox_module(t, service, pki, source)
                key = f"{t['name']}_{line}"
                modules[key] = module
                probes.append((key, target))
    return yaml.safe_dump({"modules": modules}, allow_unicode=True, sort_keys=False), probes


def _blackbox_module(t: dict, service: str, pki: dict[str, str], source: str | None) -> tuple[dict, str]:
    """Return the blackbox module and target for one profile target (source: the backup line's address)."""
    timeout = "10s"
    ca = {"ca_file": t.get("ca_file", pki["public"])}
    pin = {"source_ip_address": source} if source else {}
    kind = t["probe"]
    if kind == "http":
        # blackbox cannot fill a login form nor pin HTTP to a source address: a GET of the same URL instead.
        http: dict[str, Any] = {"preferred_ip_protocol": "ip4", "tls_config": ca}
        if "expect_text" in t and "login" not in t:
            http["fail_if_body_not_matches_regexp"] = [t["expect_text"]]
        return {"prober": "http", "timeout": timeout, "http": http}, t["url"]
    if kind == "icmp":
        return {"prober": "icmp", "timeout": "2s", "icmp": {"preferred_ip_protocol": "ip4", **pin}}, t["host"]
    if kind == "dns":
        return ({"prober": "dns", "timeout": timeout, "dns": {"query_name": t["query_name"], "query_type": "A",
                 "preferred_ip_protocol": "ip4", "transport_protocol": "udp", **pin}}, A.DNS_ADDR)
    tcp: dict[str, Any] = {"preferred_ip_protocol": "ip4", **pin}
    if kind == "tls" or (kind == "imap" and t.get("tls") == "implicit"):
        tcp.update(tls=True, tls_config=ca)
    if kind == "imap":
        tcp["query_response"] = [{"expect": r"^\* OK"}, {"send": "a1 LOGOUT"}]
    if kind == "smtp":  # the classic blackbox STARTTLS module
        tcp.update(tls_config=ca, query_response=[
            {"expect": "^220"}, {"send": "EHLO prober\r"}, {"expect": "^250-STARTTLS"}, {"send": "STARTTLS\r"},
            {"expect": "^220"}, {"starttls": True}, {"send": "EHLO prober\r"}, {"expect": "^250"},
            {"send": "QUIT\r"}])
    return {"prober": "tcp", "timeout": timeout, "tcp": tcp}, f"{t['host']}:{t['port'] if 'port' in t else 443}"


# --- measuring process trees --------------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """Return pid and all its descendants (from /proc/PID/task/TID/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return out


def memory_kib(pid: int) -> tuple[int, int, int]:
    """Return the process's (PSS, RSS, USS) in KiB from smaps_rollup (zeros if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0, 0
    kib = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()[1:] if line.endswith("kB")}
    return kib.get("Pss", 0), kib.get("Rss", 0), kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)


def cpu_s(pid: int) -> float:
    """Return the process's utime + stime in seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample(roots: list[int]) -> tuple[float, float, float, float]:
    """Return (PSS MiB, CPU seconds, RSS MiB, USS MiB) summed over the trees of `roots`."""
    pids = [p for r in roots for p in tree(r)]
    memory = [memory_kib(p) for p in pids]
    pss, rss, uss = (sum(m[i] for m in memory) / 1024.0 for i in range(3))
    return pss, sum(cpu_s(p) for p in pids), rss, uss


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Return the least-squares slope of (seconds, MiB) points in MiB per hour."""
    if len(points) < 2:
        return float("nan")
    return statistics.linear_regression([p[0] for p in points], [p[1] for p in points]).slope * 3600.0


def summarize(series: list[tuple[float, ...]]) -> dict[str, float]:
    """Summarize samples (t, PSS, CPU s, RSS, USS): median, max, growth/h over the second half, CPU %."""
    pss = [s[1] for s in series]
    half = series[len(series) // 2:]
    wall = series[-1][0] - series[0][0]
    return {"median": statistics.median(pss), "max": max(pss), "growth": slope_per_hour([(s[0], s[1]) for s in half]),
            "cpu_pct": 100.0 * (series[-1][2] - series[0][2]) / wall if wall > 0 else float("nan"),
            "rss": statistics.median(s[3] for s in series), "uss": statistics.median(s[4] for s in series)}


# --- inside a namespace: the scraper and small HTTP helpers ----------------------------------------------------


async def scrape_loop(probes: list[tuple[str, str]], out: Path, interval: float) -> None:
    """Scrape node_exporter and every blackbox (module, target) each `interval` until SIGTERM; write counts."""
    import aiohttp

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    counts = {"scrapes": 0, "probes": 0, "probe_success": 0, "failed": {}}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=interval)) as session:

        async def get(url: str) -> str:
            async with session.get(url) as response:
                return await response.text()

        async def probe(module: str, target: str) -> None:
            text = await get(f"http://127.0.0.1:{BLACKBOX_PORT}/probe?module={module}&target={target}")
            ok = any(line == "probe_success 1" for line in text.splitlines())
            counts["probes"] += 1
            counts["probe_success"] += ok
            if not ok:
                counts["failed"][module] = counts["failed"].get(module, 0) + 1

        next_at = time.monotonic()
        while not stop.is_set():
            await asyncio.gather(get(f"http://127.0.0.1:{NODE_PORT}/metrics"),
                                 *(probe(m, t) for m, t in probes), return_exceptions=True)
            counts["scrapes"] += 1
            out.write_text(json.dumps(counts))
            next_at += interval
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            except asyncio.TimeoutError:
                pass


def http_get(url: str, timeout: float, data: dict | None = None) -> str:
    """GET (POST with form data) `url`, retrying until it answers 200 or `timeout` passes."""
    import urllib.parse
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            body = urllib.parse.urlencode(data, doseq=True).encode() if data else None
            with urllib.request.urlopen(url, data=body, timeout=10) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def in_ns(lab: Lab, role: str, *args: str, timeout: float = 60) -> str:
    """Run `python -m benchmarks.agent_footprint ARGS` in `role`'s namespace; return its stdout."""
    proc = lab.exec(role, [sys.executable, "-m", "benchmarks.agent_footprint", *args], capture_output=True,
                    text=True, timeout=timeout, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    if proc.returncode != 0:
        raise LabError(f"{' '.join(args)} in {role} failed: {proc.stderr[-2000:]}")
    return proc.stdout


# --- the orchestrator ------------------------------------------------------------------------------------------


def start(lab: Lab, role: str, argv: list[str], log: Path, **kw: Any) -> subprocess.Popen:
    """Start a process in `role` with its output in `log` (lab.down() stops it)."""
    with open(log, "ab") as out:
        return lab.popen(role, argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)


def commit_of(code: Path) -> str:
    """Return the short commit of the source tree `code` (`git -C code log -1 --format=%h`; "?" if not a repo)."""
    proc = subprocess.run(["git", "-C", str(code), "log", "-1", "--format=%h"], capture_output=True, text=True)
    return proc.stdout.strip() or "?"


def agent_argv(code: Path, config: Path) -> list[str]:
    """Return the command running the agent of source tree `code`: `python -m cmon`, or before the `cmon`
    package existed, `python -m agent.cli` (the old console script's module)."""
    module = ["cmon"] if (code / "cmon" / "__main__.py").exists() else ["agent.cli"]
    return [sys.executable, "-m", *module, "--log-level", "warning", "agent", "run", "-c", str(config)]


def start_collector(lab: Lab, work: Path, agents: dict[str, Path]) -> None:
    """Start VictoriaMetrics and the collector in dc; enroll each agent (id → its workdir, where its credential
    goes) in the collector's state."""
    from agent.credentials import Credential, save
    from collector.auth import Auth
    from collector.db import connect

    start(lab, "dc", ["victoria-metrics", f"-httpListenAddr=127.0.0.1:{VM_PORT}", f"-storageDataPath={work / 'vm'}",
                      "-retentionPeriod=30d", "-dedup.minScrapeInterval=1ms", "-loggerLevel=ERROR"], work / "vm.log")
    lab.exec("dc", ["ip", "addr", "add", f"{COLLECTOR_ADDR}/24", "dev", A.DC_IF], check=True)
    state = work / "collector"
    state.mkdir()
    config = {"province": "lab", "data_dir": str(state),
              "listen": {"host": COLLECTOR_ADDR, "port": COLLECTOR_PORT, "allow_http": True},
              "database": {"url": f"http://127.0.0.1:{VM_PORT}", "timeout": "10s", "retention": "30d"}}
    (work / "collector.yaml").write_text(yaml.safe_dump(config))
    conn = connect(state / "collector.sqlite")
    try:
        auth = Auth(conn, "lab")
        secrets = {agent_id: auth.enroll(auth.create_token("lab-commune", 3600), agent_id)[0] for agent_id in agents}
    finally:
        conn.close()
    url = f"http://{COLLECTOR_ADDR}:{COLLECTOR_PORT}"
    for agent_id, agent_work in agents.items():
        save(agent_work / "credential.json", Credential(url, secrets[agent_id], "lab", "lab-commune", agent_id))
    in_ns(lab, "dc", "get", f"http://127.0.0.1:{VM_PORT}/health")
    # --log-level info: the collector logs every refused batch at info (counted in the results)
    start(lab, "dc", [CMON, "--log-level", "info", "collector", "run", "-c", str(work / "collector.yaml")], work / "collector.log",
          cwd=REPO_ROOT)
    in_ns(lab, "pc", "get", f"{url}/health")


def vm_probe_samples(lab: Lab) -> dict[str, dict[str, Any]]:
    """Return each agent's probe_up samples in VM (by agent id): total, up, and per (target, line) counts."""
    base = f"http://127.0.0.1:{VM_PORT}"
    in_ns(lab, "dc", "get", f"{base}/internal/force_flush")
    text = in_ns(lab, "dc", "get", f"{base}/api/v1/export", "--form", json.dumps({"match[]": "probe_up"}))
    out: dict[str, dict[str, Any]] = {}
    for row in (json.loads(x) for x in text.splitlines() if x.strip()):
        counts = out.setdefault(row["metric"].get("agent", "?"), {"total": 0, "up": 0, "per_series": {}})
        key = f"{row['metric'].get('target')}/{row['metric'].get('line')}"
        counts["per_series"][key] = counts["per_series"].get(key, 0) + len(row["values"])
        counts["total"] += len(row["values"])
        counts["up"] += sum(1 for v in row["values"] if v == 1)
    return out


def run(args: argparse.Namespace) -> None:
    """Bring up the lab, run both stacks side by side, sample them, write the results."""
    with Lab() as lab:
        work = Path(lab.workdir) / "footprint"
        work.mkdir()
        info = lab.province.info["ca"]
        pki = {"public": str(info["public"]), "province": str(info["province"])}
        code = Path(args.agent_code).resolve()
        # label → (source tree, agent id, workdir); the first is the tree under test, the second the one compared.
        agents_spec = {f"agent {commit_of(code)}": (code, "pc", work)}
        if args.compare:
            other = Path(args.compare).resolve()
            (work / "compare").mkdir()
            agents_spec[f"agent {commit_of(other)} (--compare)"] = (other, COMPARE_ID, work / "compare")
        start_collector(lab, work, {agent_id: w for _, agent_id, w in agents_spec.values()})
        agents: dict[str, subprocess.Popen] = {}
        for label, (tree_dir, agent_id, agent_work) in agents_spec.items():
            profile = lab_profile(pki, agent_work)
            profile["agent"]["id"] = agent_id
            agent_yaml = agent_work / "agent.yaml"
            agent_yaml.write_text(yaml.safe_dump(profile, allow_unicode=True, sort_keys=False))
            agents[label] = start(lab, "pc", agent_argv(tree_dir, agent_yaml), agent_work / "agent.log",
                                  cwd=tree_dir, env=dict(os.environ, PYTHONPATH=str(tree_dir), **AGENT_ENV))
        bb_yaml, bb_probes = blackbox_setup(pki)
        (work / "blackbox.yml").write_text(bb_yaml)
        (work / "scrape.json").write_text(json.dumps(bb_probes))

        node = start(lab, "pc", [NODE_EXPORTER_BIN, f"--web.listen-address=127.0.0.1:{NODE_PORT}"], work / "node.log")
        blackbox = start(lab, "pc", [BLACKBOX_BIN, f"--config.file={work / 'blackbox.yml'}",
                                     f"--web.listen-address=127.0.0.1:{BLACKBOX_PORT}"], work / "blackbox.log")
        in_ns(lab, "pc", "get", f"http://127.0.0.1:{BLACKBOX_PORT}/-/healthy")
        in_ns(lab, "pc", "get", f"http://127.0.0.1:{NODE_PORT}/metrics")
        scraper = start(lab, "pc", [sys.executable, "-m", "benchmarks.agent_footprint", "scrape",
                                    str(work / "scrape.json"), str(work / "scraped.json")], work / "scraper.log",
                        cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))

        print(f"warming up {args.warmup:g} s (one interval: every probe module loaded, every target run)", flush=True)
        time.sleep(args.warmup)
        groups = {**{label: [p.pid] for label, p in agents.items()},
                  "node_exporter": [node.pid], "blackbox_exporter": [blackbox.pid]}
        series: dict[str, list[tuple[float, ...]]] = {g: [] for g in groups}
        vm_before = vm_probe_samples(lab)
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        while True:
            now = time.monotonic()
            for name, roots in groups.items():
                if any(p.poll() is not None for p in (*agents.values(), node, blackbox)):
                    raise LabError(f"a measured process exited; see logs in {work}")
                series[name].append((now - t0, *sample(roots)))
            if now >= end:
                break
            print(f"  {now - t0:5.0f} s  " + "  ".join(f"{n} {s[-1][1]:.1f} MiB" for n, s in series.items()),
                  flush=True)
            time.sleep(min(args.sample, max(0.0, end - time.monotonic())))
        vm_after = vm_probe_samples(lab)
        scraper.send_signal(signal.SIGTERM)
        scraper.wait(15)
        scraped = json.loads((work / "scraped.json").read_text()) if (work / "scraped.json").exists() else {}
        logs = {label: (w / "agent.log").read_text(errors="replace") for label, (_, _, w) in agents_spec.items()}
        collector_log = (work / "collector.log").read_text(errors="replace")
        ids = {label: agent_id for label, (_, agent_id, _) in agents_spec.items()}
        commands = {label: " ".join(agent_argv(tree_dir, Path())[1:3]) for label, (tree_dir, _, _) in agents_spec.items()}
        write_results("agent_footprint", "Agent footprint: the standard commune profile",
                      report(args, series, vm_before, vm_after, scraped, len(bb_probes), logs, ids, commands,
                             collector_log))


def report(args: argparse.Namespace, series: dict, vm_before: dict, vm_after: dict, scraped: dict,
           bb_count: int, logs: dict[str, str], ids: dict[str, str], commands: dict[str, str],
           collector_log: str) -> str:
    """Return the markdown results body (`logs`, `ids`, `commands`: each agent row's log, agent id, `-m` module)."""
    stats = {name: summarize(s) for name, s in series.items()}
    both = [(a[0], *(x + y for x, y in zip(a[1:], b[1:])))
            for a, b in zip(series["node_exporter"], series["blackbox_exporter"])]
    stats["node_exporter + blackbox_exporter"] = summarize(both)
    labels = list(logs)
    goals = {label: "≤ 40 MB, ≤ 0.3 %, ≤ 1 MB/h" for label in labels}
    rows = [(name, fmt(s["median"], 1), fmt(s["max"], 1), fmt(s["growth"], 2), fmt(s["cpu_pct"], 3),
             fmt(s["uss"], 1), fmt(s["rss"], 1), goals.get(name, "")) for name, s in stats.items()]
    table = md_table(["process tree", "PSS median (MiB)", "PSS max (MiB)", "growth (MiB/h, 2nd half)",
                      "CPU (% of one core)", "USS median", "RSS median", "goal"], rows)
    minutes = series[labels[0]][-1][0] / 60
    ratio = ""
    if len(labels) == 2:
        a, b = (stats[label] for label in labels)
        rows = [(f"{label} ({ids[label]})", fmt(stats[label]["median"], 1), fmt(stats[label]["cpu_pct"], 3),
                 fmt(stats[label]["uss"], 1), fmt(stats[label]["rss"], 1)) for label in labels]
        rows.append((f"ratio {labels[0].split()[1]} / {labels[1].split()[1]}", fmt(a["median"] / b["median"], 3),
                     fmt(a["cpu_pct"] / b["cpu_pct"], 3), fmt(a["uss"] / b["uss"], 3), fmt(a["rss"] / b["rss"], 3)))
        ratio = ("Both agents ran at once, side by side in pc over the same window (same profile, each its own "
                 "spool, credential and agent id, both shipping to the same collector; the collector is this "
                 "tree's). Both map the same interpreter and libraries, so their PSS is split alike (and lower "
                 "than with one agent). Ratio: this tree / the `--compare` tree, of the medians (CPU: over the "
                 "window):\n\n"
                 + md_table(["agent", "PSS median (MiB)", "CPU (% of one core)", "USS median", "RSS median"], rows)
                 + "\n")
    refusals = [line for line in collector_log.splitlines() if "refused" in line]
    work_lines = []
    for label in labels:
        before = vm_before.get(ids[label], {"total": 0, "up": 0})
        after = vm_after.get(ids[label], {"total": 0, "up": 0, "per_series": {}})
        errors = [line for line in logs[label].splitlines() if " ERROR " in line or "Traceback" in line]
        warnings = [line for line in logs[label].splitlines() if " WARNING " in line]
        work_lines.append(
            f"- {label} (`python {commands[label]} agent run` as agent `{ids[label]}`, "
            f"configs/commune-standard.yaml on the lab's names, shipping to the real collector → VictoriaMetrics in dc): {after['total'] - before['total']} `probe_up` samples reached VM "
            f"({after['up'] - before['up']} up) in {len(after['per_series'])} series (target × line); host health "
            f"and self-metrics every 30 s besides. Agent log errors: {len(errors)}, warnings: {len(warnings)}"
            + (f" (first: `{warnings[0][:160]}`)." if warnings else "."))
    profile = yaml.safe_load(PROFILE.read_text(encoding="utf-8"))
    targets = sum(len(t) for t in profile["services"].values())
    scraped_line = (f"{scraped.get('probes', 0)} blackbox probes in {scraped.get('scrapes', 0)} scrape rounds "
                    f"({bb_count} per round), {scraped.get('probe_success', 0)} successful; failed by module: "
                    f"{scraped.get('failed') or 'none'}")
    return f"""Measured over {minutes:.1f} min after {args.warmup:g} s of warm-up, one sample every {args.sample:g} s:
PSS summed over each process tree (`/proc/PID/smaps_rollup`), CPU = (utime + stime) over the window / wall time.
MiB = 2^20 bytes (the goal's "MB" read as MiB). Growth: least-squares slope of the second half's samples.
PSS splits shared pages between the processes mapping them: here the agent shares the Python interpreter and
its libraries (libpython, libssl/libcrypto, pydantic-core, aiohttp's extensions) with the collector and the
scraper, also Python; on a counter PC it is the only Python process and its PSS lies between the USS (its
private pages) and the RSS shown. The exporters are static Go binaries: their PSS is close to their RSS.

{table}

{ratio}
The work done in the window (both sides: the profile's {targets} targets over 2 lines every {INTERVAL_S:g} s):
{chr(10).join(work_lines)}
- collector log lines mentioning a refusal: {len(refusals)}{': ' + refusals[0][:200] if refusals else ''}.
- exporters: node_exporter (default collectors) scraped every 30 s; {scraped_line}.
  blackbox cannot fill iOffice's login form (a GET of the same URL instead) nor pin HTTP to the backup line's
  source address (its HTTP runs go unpinned); icmp/tcp/dns use `source_ip_address` for the backup line.
"""


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the benchmark (or a helper inside a namespace)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    scrape = sub.add_parser("scrape", help="(inside pc) scrape the exporters every 30 s until SIGTERM")
    scrape.add_argument("probes")
    scrape.add_argument("out")
    get = sub.add_parser("get", help="(inside a namespace) print an HTTP answer, retrying until it comes")
    get.add_argument("url")
    get.add_argument("--form", help="JSON form data to POST")
    parser.add_argument("--minutes", type=float, default=10.0, help="measured window (default 10)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--agent-code", default=str(REPO_ROOT),
                        help="run the agent from this source tree (e.g. a git worktree of an older commit)")
    parser.add_argument("--compare", metavar="DIR",
                        help="also run an agent from this source tree beside the first (agent id quay-02), same window")
    parser.add_argument("--warmup", type=float, default=INTERVAL_S + 5, help="seconds before the first sample")
    args = parser.parse_args(argv)
    if args.command == "scrape":
        probes = [tuple(p) for p in json.loads(Path(args.probes).read_text())]
        asyncio.run(scrape_loop(probes, Path(args.out), INTERVAL_S))
    elif args.command == "get":
        print(http_get(args.url, 30.0, json.loads(args.form) if args.form else None))
    else:
        run(args)


if __name__ == "__main__":
    main()
