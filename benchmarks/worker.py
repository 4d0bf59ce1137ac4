"""The pc-side half of the benchmarks: run one tool's probes inside the lab's pc namespace, print one JSON document.

Run by the orchestrators through `lab.exec("pc", ...)` (benchmarks.common.worker), never by hand:

    python -m benchmarks.worker ping --count 300 --interval 0.05 --target 198.51.100.10
    python -m benchmarks.worker cmon --config FILE --runs 30
    python -m benchmarks.worker blackbox --module icmp --target 198.51.100.10 --count 300
    python -m benchmarks.worker phases --config FILE --target-name T --url URL --count 100

Our probes run through the real code: `cmon probe -c FILE --json` (a subprocess per run), or, for phase
timings, `agent.runner.run_probe` in one warm process (as the long-running agent runs them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import BLACKBOX_PORT

PING_RE = re.compile(r"icmp_seq=(\d+) ttl=\d+ time=([\d.]+) ms")
METRIC_RE = re.compile(r'^(\w+)(?:\{([^}]*)\})? (\S+)$', re.M)
LABEL_RE = re.compile(r'(\w+)="([^"]*)"')
ERROR_RE = re.compile(r'level=error .*?msg="([^"]*)"(?:.*?err="([^"]*)")?')
CMON = str(Path(sys.executable).with_name("cmon"))


def cmd_wait_http(args: argparse.Namespace) -> dict:
    """Poll a URL until it answers 200."""
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            with urllib.request.urlopen(args.url, timeout=1) as resp:
                if resp.status == 200:
                    return {"ok": True}
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{args.url} did not answer within {args.timeout} s")
        time.sleep(0.05)


def cmd_ping(args: argparse.Namespace) -> dict:
    """Run system ping; return {seq: rtt_ms} of the answered echoes."""
    argv = ["ping", "-n", "-c", str(args.count), "-i", str(args.interval), "-W", str(args.wait), args.target]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=args.count * args.interval + 60).stdout
    return {"command": " ".join(argv), "sent": args.count,
            "rtts": {int(seq): float(rtt) for seq, rtt in PING_RE.findall(out)},
            "summary": out.strip().splitlines()[-1] if out.strip() else ""}


def cmd_cmon(args: argparse.Namespace) -> dict:
    """Run `cmon probe -c CONFIG --json` `runs` times; return every measurement."""
    measurements, started = [], time.monotonic()
    for _ in range(args.runs):
        proc = subprocess.run([CMON, "probe", "-c", args.config, "--json"], capture_output=True, text=True,
                              timeout=120)
        if proc.returncode not in (0, 1):  # 1: a probe is down, which is data
            raise SystemExit(f"cmon probe exited {proc.returncode}: {proc.stderr}")
        measurements += [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return {"command": f"cmon probe -c {args.config} --json", "runs": args.runs,
            "seconds": time.monotonic() - started, "measurements": measurements}


def blackbox_probe(module: str, target: str, timeout_s: float = 30) -> dict:
    """Ask blackbox_exporter for one probe; return success, duration, phase durations (ms) and its first error."""
    # debug=true: the probe's log comes with the metrics (same probe, same timing), so failures say why.
    query = urllib.parse.urlencode({"module": module, "target": target, "debug": "true"})
    with urllib.request.urlopen(f"http://127.0.0.1:{BLACKBOX_PORT}/probe?{query}", timeout=timeout_s) as resp:
        text = resp.read().decode()
    out: dict = {"phases": {}}
    if error := ERROR_RE.search(text):
        out["error"] = ": ".join(filter(None, error.groups()))
    for name, labels, value in METRIC_RE.findall(text):
        labels = dict(LABEL_RE.findall(labels or ""))
        if name == "probe_success":
            out["success"] = float(value) == 1.0
        elif name == "probe_duration_seconds":
            out["duration_ms"] = float(value) * 1000
        elif name in ("probe_icmp_duration_seconds", "probe_http_duration_seconds"):
            out["phases"][labels["phase"]] = float(value) * 1000
        elif name == "probe_http_status_code":
            out["status"] = int(float(value))
    return out


def cmd_blackbox(args: argparse.Namespace) -> dict:
    """Run `count` blackbox probes, `concurrency` at a time, `spacing` seconds apart when sequential."""
    def one(_i: int) -> dict:
        result = blackbox_probe(args.module, args.target)
        if args.spacing:
            time.sleep(args.spacing)
        return result

    started = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(one, range(args.count)))
    return {"module": args.module, "target": args.target, "seconds": time.monotonic() - started,
            "results": results}


async def phases(args: argparse.Namespace) -> dict:
    """Alternate our probe (in-process, agent.runner.run_probe) and blackbox's, one at a time."""
    from agent.config import load_config
    from agent.runner import run_probe

    config = load_config(args.config)
    target = next(t for t in config.targets if t.name == args.target_name)
    ours, theirs = [], []
    for _ in range(args.count):
        measurement = await run_probe(config, target, None)
        ours.append(measurement.to_dict())
        theirs.append(await asyncio.to_thread(blackbox_probe, "http", args.url))
    return {"count": args.count, "ours": ours, "blackbox": theirs}


def main(argv: list[str] | None = None) -> None:
    """Parse the subcommand, run it, print its JSON."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("wait-http")
    s.add_argument("--url", required=True)
    s.add_argument("--timeout", type=float, default=10)
    s = sub.add_parser("ping")
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--interval", type=float, default=0.05)
    s.add_argument("--wait", type=int, default=2)
    s.add_argument("--target", required=True)
    s = sub.add_parser("cmon")
    s.add_argument("--config", required=True)
    s.add_argument("--runs", type=int, default=1)
    s = sub.add_parser("blackbox")
    s.add_argument("--module", required=True)
    s.add_argument("--target", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--concurrency", type=int, default=1)
    s.add_argument("--spacing", type=float, default=0.0)
    s = sub.add_parser("phases")
    s.add_argument("--config", required=True)
    s.add_argument("--target-name", required=True)
    s.add_argument("--url", required=True)
    s.add_argument("--count", type=int, required=True)
    args = p.parse_args(argv)
    handlers = {"wait-http": cmd_wait_http, "ping": cmd_ping, "cmon": cmd_cmon, "blackbox": cmd_blackbox}
    result = asyncio.run(phases(args)) if args.cmd == "phases" else handlers[args.cmd](args)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
