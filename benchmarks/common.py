"""Shared parts of the benchmarks: the lab, blackbox_exporter in pc, the pc-side worker, ground truth, results.

The orchestrator (a benchmark module, run as root in the root namespace) owns the `Lab` and reads the
impairer's ground truth; everything that sends probes runs inside the lab's pc namespace: blackbox_exporter
(listening on 127.0.0.1 there) and `benchmarks.worker`, which probes and prints one JSON document.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from lab import Lab, LabError

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BLACKBOX_BIN = "/usr/bin/prometheus-blackbox-exporter"
BLACKBOX_PORT = 9115
BLACKBOX_START_TIMEOUT_S = 10.0

# The impairment: one direction of the upstream link.
IMPAIRED = {"delay_ms": 40.0, "jitter_ms": 5.0, "loss_pct": 3.0}


def blackbox_config(ca_file: str, *, icmp_timeout_s: float, http_timeout_s: float) -> str:
    """Return blackbox_exporter's YAML: an ip4 icmp module and an http module trusting the lab CA."""
    # Default DNS behaviour on purpose: blackbox resolves through the system resolver of pc, across the link.
    return f"""modules:
  icmp:
    prober: icmp
    timeout: {icmp_timeout_s:g}s
    icmp:
      preferred_ip_protocol: ip4
  http:
    prober: http
    timeout: {http_timeout_s:g}s
    http:
      preferred_ip_protocol: ip4
      tls_config:
        ca_file: {ca_file}
"""


def start_blackbox(lab: Lab, workdir: Path, ca_file: str, *, icmp_timeout_s: float = 2.0,
                   http_timeout_s: float = 5.0) -> subprocess.Popen:
    """Start blackbox_exporter in pc on 127.0.0.1:BLACKBOX_PORT and wait until it answers (lab.down() stops it)."""
    config = workdir / "blackbox.yml"
    config.write_text(blackbox_config(ca_file, icmp_timeout_s=icmp_timeout_s, http_timeout_s=http_timeout_s))
    log = open(workdir / "blackbox.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = lab.popen("pc", [BLACKBOX_BIN, f"--config.file={config}",
                            f"--web.listen-address=127.0.0.1:{BLACKBOX_PORT}"], stdout=log, stderr=subprocess.STDOUT)
    worker(lab, "wait-http", "--url", f"http://127.0.0.1:{BLACKBOX_PORT}/-/healthy",
           "--timeout", str(BLACKBOX_START_TIMEOUT_S), timeout=BLACKBOX_START_TIMEOUT_S + 10)
    if proc.poll() is not None:
        raise LabError(f"blackbox_exporter exited: {(workdir / 'blackbox.log').read_text(errors='replace')}")
    return proc


@contextmanager
def bench_lab(*, icmp_timeout_s: float = 2.0, http_timeout_s: float = 5.0) -> Iterator[tuple[Lab, Path, str]]:
    """Bring up a lab with the province servers and blackbox_exporter in pc; yield (lab, workdir, lab CA file)."""
    logging.basicConfig(level=logging.WARNING)
    with Lab() as lab:
        workdir, ca_file = Path(lab.workdir), str(lab.province.info["ca"]["public"])
        start_blackbox(lab, workdir, ca_file, icmp_timeout_s=icmp_timeout_s, http_timeout_s=http_timeout_s)
        yield lab, workdir, ca_file


def worker(lab: Lab, *args: str, timeout: float = 600) -> Any:
    """Run `python -m benchmarks.worker ARGS` in pc; return the JSON it prints (LabError on failure)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = lab.exec("pc", [sys.executable, "-m", "benchmarks.worker", *args], capture_output=True, text=True,
                    timeout=timeout, cwd=REPO_ROOT, env=env)
    if proc.returncode != 0:
        raise LabError(f"worker {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


# --- ground truth ---------------------------------------------------------------------------------------------


def icmp_records(stats: dict) -> list[list]:
    """Return the holder's per-packet ICMP records [id, seq, type, hold_ms | None, dropped] (never truncated)."""
    if stats.get("icmp_truncated"):
        raise LabError("the holder's ICMP record is truncated: the run sent too many echoes")
    return stats["icmp"]


def echo_requests(records: Sequence[list], start: int, end: int | None = None) -> list[list]:
    """Return the echo requests (type 8) among records[start:end]: what one tool sent in its time slot."""
    return [r for r in records[start:end] if r[2] == 8]


# --- statistics and tables ------------------------------------------------------------------------------------


def fmean(values: Iterable[float]) -> float:
    """Return the mean, NaN for no values."""
    values = list(values)
    return statistics.fmean(values) if values else math.nan


def median(values: Iterable[float]) -> float:
    """Return the median, NaN for no values."""
    values = list(values)
    return statistics.median(values) if values else math.nan


def fmt(value: float | None, digits: int = 2) -> str:
    """Format a number for a table cell ("–" when missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Return a markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """Return the command that is running, as one would type it from the repository root."""
    module = sys.modules["__main__"].__spec__.name if getattr(sys.modules["__main__"], "__spec__", None) else None
    argv = [".venv/bin/python", "-m", module, *sys.argv[1:]] if module else [sys.executable, *sys.argv]
    return " ".join(shlex.quote(a) for a in argv)


def write_results(name: str, title: str, body: str) -> Path:
    """Print the results document (title, command, date, host, body) and write it to results/NAME.md."""
    host = os.uname()
    doc = (f"# {title}\n\nCommand: `{command_line()}`  \n"
           f"Run: {time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {host.nodename} ({os.cpu_count()} CPUs, "
           f"Linux {host.release})\n\n{body.rstrip()}\n")
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(doc)
    print(doc)
    print(f"written to {path.relative_to(REPO_ROOT)}")
    return path
