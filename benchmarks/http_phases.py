"""HTTP: our `http` probe beside blackbox_exporter's http module — phase timings and false failures.

    sudo .venv/bin/python -m benchmarks.http_phases [--pairs 100] [--probes 300] [--batch 10] [--seed 2]

Target: https://ioffice.lab.test/ (302 → /login) on the lab's fake iOffice, trusted through the lab CA, both
tools with a 5 s timeout, ip4, and DNS through pc's resolver (198.51.100.53, across the upstream link).
1. Phase timings, of `/` and of `/login` (no redirect), idle link then impaired (wan1 "up" 40 ms ± 5 ms, 3 % loss): `--pairs` times, one probe of
   ours (agent.runner.run_probe in one warm process, as the agent runs it) then one of blackbox, one at a time;
   medians of dns/connect/tls/ttfb/total per tool and the ratio ours / blackbox (goal: within 10 %).
2. False failures on the impaired link: `--probes` probes per tool, `--batch` at a time: ours through
   `cmon probe -c FILE --json` (a config of `--batch` identical targets per run), blackbox through
   /probe?module=http. The server is up all along, so every failure is false (goal: ours 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import common as C
from lab import Lab

URL = "https://ioffice.lab.test/"
DIRECT_URL = "https://ioffice.lab.test/login"  # the same page without the redirect: one request per probe
TIMEOUT_S = 5.0
# (label, our field, blackbox phase; None = blackbox's probe_duration_seconds)
PHASES = (("dns", "dns_ms", "resolve"), ("connect", "connect_ms", "connect"), ("tls", "tls_ms", "tls"),
          ("ttfb (processing)", "ttfb_ms", "processing"), ("total", "duration_ms", None))


def http_config(path: Path, ca_file: str, targets: int, url: str = URL) -> str:
    """Write an agent config with `targets` identical http targets of `url` (no expected text: like blackbox)."""
    entries = "".join(f"""    - name: http-{i:02d}
      probe: http
      url: "{url}"
      ca_file: {ca_file}
      timeout: {TIMEOUT_S:g}s
      ip_family: ipv4
""" for i in range(1, targets + 1))
    path.write_text(f"agent: {{province: lab, commune: bench, id: pc}}\nservices:\n  ioffice:\n{entries}")
    return str(path)


def bb_value(result: dict, phase: str | None) -> float | None:
    """Return blackbox's phase duration (ms), or the whole probe's for None."""
    return result.get("duration_ms") if phase is None else result["phases"].get(phase)


def phase_rows(out: dict, condition: str) -> list[tuple]:
    """Return table rows (condition, url, phase, n, median ours, median blackbox, ratio) over successful probes."""
    ours = [m["fields"] for m in out["ours"] if m["result"] == "ok"]
    theirs = [r for r in out["blackbox"] if r.get("success")]
    rows = []
    for label, field, phase in PHASES:
        mine = C.median(f[field] for f in ours if field in f)
        bb = C.median(v for r in theirs if (v := bb_value(r, phase)) is not None)
        ratio = mine / bb if bb else float("nan")
        within = "yes" if abs(ratio - 1) <= 0.10 else "no"
        rows.append((condition, out["url"].removeprefix("https://ioffice.lab.test"), label, f"{len(ours)}/{len(theirs)}", C.fmt(mine, 3), C.fmt(bb, 3),
                     C.fmt(mine - bb, 3), C.fmt(ratio, 3), within))
    return rows


def failures(lab: Lab, imp, args: argparse.Namespace, config: str) -> dict:
    """Run the false-failure count for both tools; return counts, reasons and the holder's drops meanwhile."""
    out = {}
    for tool in ("ours", "blackbox"):
        before = imp.stats()
        if tool == "ours":
            runs = -(-args.probes // args.batch)
            got = C.worker(lab, "cmon", "--config", config, "--runs", str(runs))
            results = [m["result"] + (f": {m['detail']}" if m.get("detail") else "") for m in got["measurements"]]
            failed = [r for r in results if not r.startswith("ok")]
            how = f"{runs} × `{got['command']}` ({args.batch} targets per run)"
        else:
            got = C.worker(lab, "blackbox", "--module", "http", "--target", URL, "--count", str(args.probes),
                           "--concurrency", str(args.batch))
            results = got["results"]
            failed = [f"{r.get('error', 'probe_success 0')} (after {r['duration_ms'] / 1000:.0f} s)"
                      for r in results if not r.get("success")]
            how = f"{args.probes} × GET /probe?module=http&target={URL}, {args.batch} at a time"
        after = imp.stats()
        out[tool] = {"probes": len(results), "failed": failed, "how": how, "seconds": got["seconds"],
                     "seen": after["seen"] - before["seen"], "dropped": after["dropped"] - before["dropped"]}
    return out


def report(idle: list[dict], impaired: list[dict], fails: dict, args: argparse.Namespace) -> str:
    """Return the markdown body: phase medians and ratios, then the false-failure counts."""
    fail_rows, reasons = [], []
    for tool, f in fails.items():
        n = len(f["failed"])
        fail_rows.append((tool, f["probes"], n, C.fmt(100 * n / f["probes"], 1), f"{f['seconds']:.0f}",
                          f"{f['dropped']} of {f['seen']}", f["how"]))
        counts: dict[str, int] = {}
        for r in f["failed"]:
            counts[r] = counts.get(r, 0) + 1
        reasons += [f"- {tool}: {r} × {c}" for r, c in sorted(counts.items(), key=lambda kv: -kv[1])]
    ours_failed = len(fails["ours"]["failed"])
    return "\n\n".join([
        f"Target {URL} (302 → /login), lab CA, timeout {TIMEOUT_S:g} s, ip4, DNS via pc's resolv.conf "
        f"({C.IMPAIRED['delay_ms']:g} ms ± {C.IMPAIRED['jitter_ms']:g} ms, {C.IMPAIRED['loss_pct']:g} % loss on "
        f"wan1 up, seed {args.seed}, when impaired). For `/` both tools sum phases over the redirect's two "
        f"requests; `/login` is the same page in one request.",
        f"## Phase timings: medians (ms) over {args.pairs} alternating pairs, ours / blackbox\n\n" + C.md_table(
            ("link", "path", "phase", "n ok (ours/bb)", "ours", "blackbox", "ours − bb", "ratio ours/bb",
             "within 10 %"),
            [row for out in idle for row in phase_rows(out, "idle")]
            + [row for out in impaired for row in phase_rows(out, "impaired")]),
        "## False failures on the impaired link (the server never fails)\n\n" + C.md_table(
            ("tool", "probes", "failed", "%", "seconds", "packets dropped (truth)", "how"), fail_rows),
        "Failure reasons:\n" + ("\n".join(reasons) if reasons else "- none"),
        f"Goal (ours 0 false failures in {fails['ours']['probes']}): {'met' if ours_failed == 0 else 'NOT met'}.",
    ])


def main(argv: list[str] | None = None) -> None:
    """Run the HTTP benchmark and write benchmarks/results/http_phases.md."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.http_phases", description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=100, help="alternating probe pairs per link condition")
    p.add_argument("--probes", type=int, default=300, help="probes per tool for the false-failure count")
    p.add_argument("--batch", type=int, default=10, help="probes at once in the false-failure count")
    p.add_argument("--seed", type=int, default=2)
    args = p.parse_args(argv)
    with C.bench_lab(http_timeout_s=TIMEOUT_S) as (lab, workdir, ca_file):
        singles = {url: http_config(workdir / f"http-one-{i}.yaml", ca_file, 1, url)
                   for i, url in enumerate((URL, DIRECT_URL))}
        batch = http_config(workdir / "http-batch.yaml", ca_file, args.batch)

        def phases(url: str, count: int) -> dict:
            out = C.worker(lab, "phases", "--config", singles[url], "--target-name", "http-01", "--url", url,
                           "--count", str(count))
            return out | {"url": url}

        phases(URL, 5)  # warm caches (ARP, page cache) before timing
        print("phase timings, idle link ...", flush=True)
        idle = [phases(url, args.pairs) for url in singles]
        imp = lab.impair("wan1", direction="up", seed=args.seed, **C.IMPAIRED)
        try:
            print("phase timings, impaired link ...", flush=True)
            impaired = [phases(url, args.pairs) for url in singles]
            print("false failures, impaired link ...", flush=True)
            fails = failures(lab, imp, args, batch)
        finally:
            imp.clear()
    C.write_results("http_phases", "HTTP phase timings and false failures beside blackbox_exporter",
                    report(idle, impaired, fails, args))


if __name__ == "__main__":
    main()
