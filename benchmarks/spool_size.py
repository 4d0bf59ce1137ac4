"""Spool size and speed for a weekend offline: 60 h of the standard profile, written and drained for real.

Samples: a real `cmon probe -c lab.yaml --json` run of configs/lab.yaml against the province on loopback
(lab.servers.Province; root), once with every server up and once with them stopped (the failures carry their
`detail` sentences), plus real host (`probes.host.HostSampler`) and self (`agent.selfmetrics`) Measurements.
Rounds: one every 30 s for `--hours`, each = every probe sample (14 targets × 2 lines) + host + agent, values
jittered (timings × lognormal, counters growing) so no two rows are equal, times 30 s apart.

Per scenario (all up / all down): append the rows in batches of one round into a new spool without a size cap,
measure the file (closed: WAL checkpointed), bytes per row, append rows/s, open time (quick_check), then drain it
(next_batch(500) + ack) and count the gzip'd wire payload the shipper would send, hence the time to drain at
the default backlog cap. Also the same rows stored as plain JSON (no zlib), for the codec decision.

    .venv/bin/python -m benchmarks.spool_size [--hours 60] [--samples FILE]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.spool import Spool
from core.measurement import Measurement

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "spool_size.md"
ROUND_S = 30
BACKLOG_RATE = 32_000  # agent.config CollectorSection.backlog_rate default, bytes/s
BATCH_MAX = 500  # agent.config CollectorSection.batch_max default
IDENTITY = {"province": "lab", "commune": "lab-commune", "agent": "pc"}


def probe_samples(workdir: Path) -> dict[str, list[dict]]:
    """Run configs/lab.yaml once against the loopback province up, once with it stopped; return the JSON rows."""
    from lab.loopback import PROVINCE_ADDRESSES, province_skip_reason
    from lab.servers import Province
    from lab.servers.process import ServerStartError

    reason = province_skip_reason()
    if reason:
        sys.exit(f"cannot run the loopback province: {reason} (or pass --samples FILE)")
    text = (REPO_ROOT / "configs" / "lab.yaml").read_text(encoding="utf-8")
    for address in PROVINCE_ADDRESSES.values():  # the same move as tests/unit/cmon/test_cli.py
        text = text.replace(f"198.51.100.{address.rsplit('.', 1)[1]}", address)
    text = text.replace("198.51.100.80", "127.0.0.80").replace("10.20.0.11", "127.0.0.2")
    config = workdir / "lab.yaml"
    config.write_text(text, encoding="utf-8")
    out: dict[str, list[dict]] = {}
    deadline = time.monotonic() + 600
    while True:  # the loopback addresses are shared with test runs: wait for them to be free
        try:
            province = Province(workdir / "province", PROVINCE_ADDRESSES).start()
            break
        except ServerStartError as exc:
            if time.monotonic() > deadline:
                raise
            print(f"waiting for the loopback province addresses: {exc}", file=sys.stderr)
            time.sleep(10)
    with province:
        (workdir / "pki").symlink_to(province.workdir / "pki")
        out["up"] = _cmon_probe(config)
        province.stop_all()
        out["down"] = _cmon_probe(config)
    return out


def _cmon_probe(config: Path) -> list[dict]:
    run = subprocess.run([sys.executable, "-m", "cmon", "probe", "-c", str(config), "--json"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def host_and_agent_samples() -> list[dict]:
    """Return one real round of host Measurements and one agent Measurement."""
    from probes.host import HostSampler
    from agent.selfmetrics import agent_measurement

    sampler = HostSampler(IDENTITY)
    time.sleep(0.5)
    host = sampler.sample()
    agent = agent_measurement(IDENTITY, "0.1.0", "sha256:" + "ab" * 32, spool_rows=1234.0, spool_bytes=5.0e6,
                              dropped_total=0.0, quarantined_total=0.0, shipped_total=98765.0,
                              probe_errors_total=0.0, probe_runs_total=4321.0, ship_failures_total=17.0,
                              clock_skew_ms=-12.5, clock_measured=1.0, auth_refused=0.0)
    return [m.to_dict() for m in host + [agent]]


def rounds(templates: list[dict], hours: float, seed: int = 1):
    """Yield one list of Measurements per 30 s round for `hours`, jittered from the templates."""
    rnd = random.Random(seed)
    start = int(time.time() * 1000) - int(hours * 3600 * 1000)
    base = min(t["time"] for t in templates)
    for r in range(int(hours * 3600 / ROUND_S)):
        out = []
        for t in templates:
            fields = {k: _jitter(k, v, r, rnd) for k, v in t["fields"].items()}
            out.append(Measurement(t["name"], t["tags"], fields, start + r * ROUND_S * 1000 + (t["time"] - base) % 30000,
                                   t.get("result", "ok"), t.get("detail", "")))
        yield out


def _jitter(key: str, value: float, r: int, rnd: random.Random) -> float:
    if key.endswith(("_ms", "_pct", "load1", "cpu_s", "rss_bytes")) and value:
        return value * math.exp(rnd.gauss(0, 0.2))  # full-precision floats, like real timings
    if key.startswith("net_") and key.endswith(("bytes", "packets")):
        return value + r * rnd.randint(1_000, 90_000)
    if key in ("uptime_s", "mem_used_bytes", "mem_available_bytes", "disk_used_bytes", "disk_free_bytes"):
        return value + r * ROUND_S + rnd.random()
    return value


class PlainSpool(Spool):
    """The same spool storing bodies as plain compact JSON (the codec comparison)."""

    def _encode(self, m: Measurement) -> bytes:
        return json.dumps(m.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()

    def _decode(self, body: bytes) -> Measurement:
        return Measurement.from_dict(json.loads(body))


def measure(cls: type[Spool], templates: list[dict], hours: float, workdir: Path, drain: bool) -> dict:
    """Fill a spool with `hours` of rounds; return sizes and speeds (and drain figures when asked)."""
    path = workdir / f"{cls.__name__}-{len(templates)}-{time.monotonic_ns()}.db"
    spool = cls(path, max_bytes=2**40)
    n = raw = append_s = 0.0
    for batch in rounds(templates, hours):  # generated as we go: 60 h of Measurements do not fit in memory
        raw += sum(len(json.dumps(m.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()) for m in batch)
        n += len(batch)
        t0 = time.perf_counter()
        spool.append(batch)
        append_s += time.perf_counter() - t0
    n = int(n)
    open_size = spool.size_bytes()
    body = spool._db.execute("SELECT avg(length(body)) FROM rows").fetchone()[0]
    spool.close()
    size = os.path.getsize(path)
    t0 = time.perf_counter()
    spool = cls(path, max_bytes=2**40)
    open_s = time.perf_counter() - t0
    out = {"rows": n, "per_round": len(templates), "size": size, "open_size": open_size,
           "bytes_per_row": size / n, "json_per_row": raw / n, "body_per_row": body,
           "append_rows_s": n / append_s, "open_s": open_s}
    if drain:
        wire = 0
        t0 = time.perf_counter()
        while (batch := spool.next_batch(BATCH_MAX)) is not None:
            payload = {"version": 1, "spool": spool.spool_id, "first": batch.first, "last": batch.last,
                       "measurements": [{"seq": s, **m.to_dict()} for s, m in batch.items]}
            wire += len(gzip.compress(json.dumps(payload, separators=(",", ":")).encode(), 6))
            spool.ack(batch.first, batch.last)
        out |= {"drain_spool_s": time.perf_counter() - t0, "wire_bytes": wire, "drain_at_cap_min": wire / BACKLOG_RATE / 60}
    spool.close()
    out["size_after_drain"] = os.path.getsize(path)
    return out


def single_row_appends(workdir: Path, templates: list[dict], n: int = 2000) -> float:
    """Return appends/s of one Measurement each (one fsync'd transaction per probe run)."""
    spool = Spool(workdir / "single.db")
    ms = [m for r in rounds(templates, n * ROUND_S / 3600 / len(templates) + 0.01) for m in r][:n]
    t0 = time.perf_counter()
    for m in ms:
        spool.append([m])
    rate = len(ms) / (time.perf_counter() - t0)
    spool.close()
    return rate


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and write results/spool_size.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=60.0)
    parser.add_argument("--samples", type=Path, help="JSON {up: [...], down: [...]} instead of a province run")
    parser.add_argument("--save-samples", type=Path, help="write the province run's samples here (for --samples)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="spool-size-") as tmp:
        workdir = Path(tmp)
        samples = json.loads(args.samples.read_text()) if args.samples else probe_samples(workdir)
        if args.save_samples:
            args.save_samples.write_text(json.dumps(samples, ensure_ascii=False), encoding="utf-8")
        extra = host_and_agent_samples()
        for name, rows in samples.items():
            if len(rows) != 28:
                print(f"warning: {name} run gave {len(rows)} probe rows, not 28", file=sys.stderr)
        scenarios = {name: rows + extra for name, rows in samples.items()}
        outcomes = {name: _count(r["result"] for r in rows) for name, rows in samples.items()}
        results = []
        measure(Spool, scenarios["up"], 2, workdir, False)  # warm-up: the first spool of a process writes slower
        for name, templates in scenarios.items():
            results.append((name, "zlib + preset dictionary (shipped)", measure(Spool, templates, args.hours, workdir, True)))
            results.append((name, "plain JSON (for comparison)", measure(PlainSpool, templates, args.hours, workdir, False)))
        single = single_row_appends(workdir, scenarios["up"])
    text = report(results, single, args.hours, sys.argv[1:], outcomes)
    print(text)
    RESULTS.write_text(text, encoding="utf-8")
    return 0


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def report(results: list[tuple[str, str, dict]], single: float, hours: float, argv: list[str],
           outcomes: dict[str, dict[str, int]]) -> str:
    """Return the markdown results."""
    mib = 2**20
    lines = [
        "# Spool size and speed: a weekend offline",
        "",
        f"`.venv/bin/python -m benchmarks.spool_size {' '.join(argv)}`".replace(" `", "`"),
        "",
        f"{hours:g} h of the standard profile (configs/lab.yaml: 14 targets × 2 lines at 30 s, real `cmon probe --json`"
        " output against the loopback province; + real host and agent Measurements), values jittered per round. "
        "`up`: every probe succeeded; `down`: the province's servers stopped, the probes fail with their "
        "detail (the pings of loopback addresses still answer). "
        "Size = the closed database file (WAL checkpointed); the cap counts the open file + WAL.",
        "",
        "| scenario | body codec | rows (per 30 s) | file MiB | ≤ 100 MB? | bytes/row on disk | JSON bytes/row "
        "| stored body bytes/row | append rows/s (batches of a round) | reopen s (quick_check) | drain: spool s "
        "| drain: gzip wire MB | drain at 32 kB/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, codec, r in results:
        drain = (f"{r['drain_spool_s']:.1f} | {r['wire_bytes'] / 1e6:.1f} | {r['drain_at_cap_min']:.1f} min"
                 if "wire_bytes" in r else "– | – | –")
        lines.append(
            f"| {name} | {codec} | {r['rows']:,} ({r['per_round']}) | {r['size'] / mib:.1f} | "
            f"{'yes' if r['open_size'] <= 100e6 else 'NO'} | {r['bytes_per_row']:.0f} | {r['json_per_row']:.0f} | "
            f"{r['body_per_row']:.0f} | {r['append_rows_s']:,.0f} | {r['open_s']:.2f} | {drain} |")
    lines += ["", "Probe results in the samples: " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) for name, c in outcomes.items()) + "."]
    lines += ["", f"Single-row appends (one fsync'd transaction per probe run): {single:,.0f} appends/s.",
              "Append rates are bound by fsync (`synchronous=FULL`: one per transaction) and vary with the disk's "
              "other load; the agent needs ~1 row/s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
