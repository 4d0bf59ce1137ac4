"""Dead-line CPU: what a cut line costs the agent, per probe run and over a soak with periodic cuts.

A cut fiber drops everything silently (`lab.cut("wan1")`: iptables DROP at both ends, links stay up). The agent
keeps probing the primary line through it; that must cost time, not CPU.

Part `probes` (one lab, the primary cut the whole time): the standard profile's icmp, tcp, http and dns targets
(`internet-ping`, `ioffice-ping`, `dvc-https`, `ioffice-web`, `dns-ioffice`) run `--runs` times over the cut primary and
over the healthy backup line, alternately, through `agent.runner.run_probe` in one warm process per target and
source tree (as the agent runs them), for the code before the fix and after it side by side. Per run: CPU
(`time.process_time`, the whole process, runs are sequential within it), wall time, event-loop turns (select()
calls, counted by a selector subclass in the measuring process — nothing in the product is instrumented).

Part `soak` (one lab per side, all sides at the same time): `cmon agent run` with the standard profile on pc,
VictoriaMetrics and `cmon collector run` in dc (lab.stack.ProvinceStack, enrolled like an installer); on the
`cuts` side the primary is cut for `--cut-s` (60) every `--period-s` (300) seconds, on the `steady` side never.
Every `--sample` seconds: the agent's and the collector's CPU (utime + stime over the process tree), the
collector's open file descriptors (`/proc/PID/fd`) and its established TCP connections (`ss`). Reported: the
agent's CPU % of one core over the window, in and out of cuts, the cuts/steady ratio (goal ≤ 1.5), the fd series.

    git worktree add --detach /tmp/before <commit before the fix>
    git worktree add --detach /tmp/after HEAD
    .venv/bin/python -m benchmarks.dead_line_cpu probes --before /tmp/before --after /tmp/after --runs 15
    .venv/bin/python -m benchmarks.dead_line_cpu soak --code after=/tmp/after --minutes 30

Each run rewrites its own section of results/dead_line_cpu.md (`--section`, default the part's name) and keeps
the others.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from lab import Lab, LabError
from lab import stack as lab_stack
from lab.stack import COLLECTOR_PORT, ProvinceStack, lab_profile
from benchmarks.agent_footprint import AGENT_ENV, cpu_s, tree
from benchmarks.common import REPO_ROOT, RESULTS_DIR, command_line, fmt, md_table

RESULTS = RESULTS_DIR / "dead_line_cpu.md"
CUT_LINE, HEALTHY_LINE, CUT_LINK = "primary", "backup", "wan1"
# (probe, target). internet-ping's host is an address: its echoes leave at once. ioffice-ping's is a name, and the
# lab's resolver is in dc, behind the cut: its lookup takes the whole timeout and no echo is sent (on a real
# commune the resolver is the router, which answers from its cache, so every icmp target sends its echoes).
TARGETS = [("icmp", "internet-ping"), ("icmp", "ioffice-ping"), ("tcp", "dvc-https"), ("http", "ioffice-web"),
           ("dns", "dns-ioffice")]

# Runs inside pc with PYTHONPATH=<source tree>: imports only the tree's agent and probes, so old trees work.
MEASURE_CHILD = r"""
import asyncio, json, selectors, sys, time
from agent.config import load_config
from agent.runner import run_probe

class CountingSelector(selectors.DefaultSelector):
    calls = 0
    def select(self, timeout=None):
        CountingSelector.calls += 1
        return super().select(timeout)

config = load_config(sys.argv[1])
target = next(t for t in config.targets if t.name == sys.argv[2])
lines = config.line_objects()
runs, order = int(sys.argv[3]), sys.argv[4].split(",")
loop = asyncio.SelectorEventLoop(CountingSelector())
out = []
try:
    for line in order:  # warm-up: imports, TLS contexts, first sockets
        loop.run_until_complete(run_probe(config, target, lines[line]))
    for i in range(runs):
        for line in order:
            calls, cpu, wall = CountingSelector.calls, time.process_time(), time.monotonic()
            m = loop.run_until_complete(run_probe(config, target, lines[line]))
            out.append({"line": line, "cpu_s": time.process_time() - cpu, "wall_s": time.monotonic() - wall,
                        "turns": CountingSelector.calls - calls, "result": m.result})
finally:
    loop.close()
print(json.dumps(out))
"""


def git_commit(code: Path) -> str:
    """Return `<short hash> <subject>` of the source tree's HEAD, plus "+ changes" when it has uncommitted ones."""
    head = subprocess.run(["git", "-C", str(code), "log", "-1", "--format=%h %s"], capture_output=True,
                          text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head + (" + uncommitted changes" if dirty else "")


def code_env(code: Path, **extra: str) -> dict[str, str]:
    """Return the environment that makes Python import the product from `code`."""
    return dict(os.environ, PYTHONPATH=str(code), **extra)


# --- part (a): CPU per probe run -----------------------------------------------------------------------------


def measure_in_pc(lab: Lab, code: Path, config: Path, target: str, runs: int) -> list[dict]:
    """Run MEASURE_CHILD for one target in pc from source tree `code`; return its per-run records."""
    order = f"{CUT_LINE},{HEALTHY_LINE}"
    proc = lab.exec("pc", [sys.executable, "-c", MEASURE_CHILD, str(config), target, str(runs), order],
                    capture_output=True, text=True, cwd=code, env=code_env(code), timeout=runs * 60 + 120)
    if proc.returncode != 0:
        raise LabError(f"measuring {target} from {code} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def run_probes(args: argparse.Namespace) -> str:
    """Part (a): every (tree, target) in its own process, all at once, over the cut primary and the backup."""
    trees = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    results: dict[tuple[str, str], list[dict]] = {}
    errors: list[BaseException] = []
    with Lab() as lab:
        info = lab.province.info["ca"]
        pki = {"public": str(info["public"]), "province": str(info["province"])}
        work = Path(lab.workdir)
        config = work / "agent.yaml"
        config.write_text(yaml.safe_dump(lab_profile(pki, work), allow_unicode=True, sort_keys=False),
                          encoding="utf-8")
        lab.cut(CUT_LINK)  # for the whole part: the primary is a dead fiber, the backup is healthy

        def one(side: str, target: str) -> None:
            try:
                results[(side, target)] = measure_in_pc(lab, trees[side], config, target, args.runs)
            except BaseException as exc:  # noqa: BLE001 - reported after the other threads finish
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(side, target)) for side in trees for _, target in TARGETS]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    if errors:
        raise errors[0]
    return probes_report(args, trees, results, elapsed)


def probes_report(args: argparse.Namespace, trees: dict[str, Path], results: dict, elapsed: float) -> str:
    """Return the markdown section of part (a)."""
    rows = []
    for kind, target in TARGETS:
        for side in trees:
            runs = results[(side, target)]
            cut = [r for r in runs if r["line"] == CUT_LINE]
            ok = [r for r in runs if r["line"] == HEALTHY_LINE]
            cpu_cut, cpu_ok = (statistics.median(r["cpu_s"] * 1000 for r in x) for x in (cut, ok))
            turns_cut, turns_ok = (statistics.median(r["turns"] for r in x) for x in (cut, ok))
            results_cut = sorted({r["result"] for r in cut})
            results_ok = sorted({r["result"] for r in ok})
            rows.append((kind, target, side, fmt(cpu_cut, 1), fmt(cpu_ok, 1), fmt(cpu_cut / cpu_ok, 2),
                         f"{turns_cut:.0f} / {turns_ok:.0f}",
                         fmt(statistics.median(r["wall_s"] for r in cut), 2),
                         fmt(statistics.median(r["wall_s"] for r in ok), 2),
                         f"{', '.join(results_cut)} / {', '.join(results_ok)}"))
    table = md_table(["probe", "target", "code", "CPU ms, cut (median)", "CPU ms, healthy (median)",
                      "ratio cut/healthy", "loop turns cut / healthy", "wall s, cut", "wall s, healthy",
                      "results cut / healthy"], rows)
    codes = "\n".join(f"- {side}: `{path}` at {git_commit(path)}" for side, path in trees.items())
    return f"""## Part (a): CPU per probe run over the cut primary, beside the healthy backup

Command: `{command_line()}`  
Run: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {elapsed / 60:.1f} min; {args.runs} runs per line per target
and tree, after one warm-up run per line.

Code:
{codes}

The lab's standard profile (configs/commune-standard.yaml on the lab's names: timeout 10 s, icmp 5 echoes
0.2 s apart, 2 s each), the primary cut (`lab.cut("wan1")`) for the whole part, the backup (source
10.20.0.11 → wan2) healthy. One process per (target, tree), all ten at once on this 2-CPU machine; within a
process the runs alternate cut / healthy and are sequential, so `time.process_time()` around `run_probe` is
that run's CPU. Loop turns: the event loop's select() calls during the run.

{table}
"""


# --- part (b): the soak -------------------------------------------------------------------------------------


def established(lab: Lab, port: int) -> int:
    """Return how many TCP connections to the collector's port are established in dc."""
    out = lab.exec("dc", ["ss", "-Htn", "state", "established", f"( sport = :{port} )"], capture_output=True,
                   text=True).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def open_fds(pid: int) -> int:
    """Return the number of open file descriptors of a process tree."""
    total = 0
    for p in tree(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
    return total


def collector_pid(lab: Lab) -> int:
    """Return the pid of `cmon collector run` in dc (the process lab.popen started)."""
    for proc in lab._procs:  # noqa: SLF001 - the lab keeps what it started; the stack does not return it
        if any("collector" == a for a in proc.args) and "run" in proc.args:
            return proc.pid
    raise LabError("the collector process is not among the lab's processes")


def cmon_for(code: Path, where: Path) -> str:
    """Write a `cmon` that runs the command line of source tree `code` (its entry point moved: agent.cli → cmon).

    `-P`: the working directory (the checkout, for the collector) must not come before the tree on sys.path.
    """
    module = "cmon" if (code / "cmon" / "__main__.py").exists() else "agent.cli"
    script = where / "cmon"
    script.write_text(f'#!/bin/sh\nPYTHONPATH={code} exec {sys.executable} -P -m {module} "$@"\n')
    script.chmod(0o755)
    return str(script)


def soak_side(args: argparse.Namespace) -> None:
    """One side of the soak in its own lab; writes its samples as JSON to args.out."""
    code = Path(args.code).resolve()
    with Lab() as lab:
        # Every `cmon` the stack starts (collector, token, enroll) runs the tree's own command line.
        lab_stack.CMON = cmon = cmon_for(code, Path(lab.workdir))
        stack = ProvinceStack(lab).start()
        config = stack.agent_config()
        stack.enroll(config)
        with open(stack.work / "agent.log", "ab") as log:
            agent = lab.popen("pc", [cmon, "--log-level", "warning", "agent", "run", "-c", str(config)],
                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=stack.work,
                              env=code_env(code, **AGENT_ENV))
        collector = collector_pid(lab)
        time.sleep(args.warmup)
        samples: list[dict[str, Any]] = []
        cuts: list[tuple[float, float]] = []
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        cut_at = t0 + args.first_cut_s if args.cuts else float("inf")
        is_cut = False
        next_sample = t0
        try:
            while True:
                now = time.monotonic()
                if agent.poll() is not None:
                    raise LabError(f"the agent exited; see {stack.work / 'agent.log'}")
                if not is_cut and now >= cut_at and now + args.cut_s <= end:
                    lab.cut(CUT_LINK)
                    is_cut, cut_started = True, now
                elif is_cut and now >= cut_started + args.cut_s:
                    lab.restore(CUT_LINK)
                    is_cut = False
                    cuts.append((cut_started - t0, now - t0))
                    cut_at = cut_started + args.period_s
                if now >= next_sample:
                    samples.append({"t": now - t0, "agent_cpu_s": sum(cpu_s(p) for p in tree(agent.pid)),
                                    "collector_cpu_s": sum(cpu_s(p) for p in tree(collector)),
                                    "collector_fds": open_fds(collector),
                                    "collector_conns": established(lab, COLLECTOR_PORT), "cut": is_cut})
                    next_sample += args.sample
                    if now >= end:
                        break
                time.sleep(max(0.0, min(next_sample, cut_at if not is_cut else cut_started + args.cut_s)
                                    - time.monotonic()))
        finally:
            if is_cut:
                lab.restore(CUT_LINK)
        probe_up = stack.probe_samples()
        log_text = (stack.work / "agent.log").read_text(errors="replace")
        Path(args.out).write_text(json.dumps({
            "code": str(code), "commit": git_commit(code), "cuts": cuts, "samples": samples,
            "probe_up": {"samples": sum(len(v) for v in probe_up.values()),
                         "up": sum(1 for v in probe_up.values() for x in v if x == 1)},
            "agent_errors": sum(1 for line in log_text.splitlines() if " ERROR " in line or "Traceback" in line),
        }))


def cpu_pct(samples: list[dict], key: str, spans: list[tuple[float, float]] | None = None) -> float:
    """Return CPU % of one core of `key` over the sample intervals inside `spans` (None: the whole window)."""
    used = wall = 0.0
    for a, b in zip(samples, samples[1:]):
        mid = (a["t"] + b["t"]) / 2
        if spans is None or any(s <= mid <= e for s, e in spans):
            used += b[key] - a[key]
            wall += b["t"] - a["t"]
    return 100.0 * used / wall if wall else float("nan")


def outside(spans: list[tuple[float, float]], end: float) -> list[tuple[float, float]]:
    """Return the complement of `spans` within [0, end]."""
    out, at = [], 0.0
    for s, e in spans:
        out.append((at, s))
        at = e
    out.append((at, end))
    return out


def run_soak(args: argparse.Namespace) -> str:
    """Part (b): start every side (code × cuts/steady) in its own process and lab at once; report."""
    codes = dict(c.split("=", 1) for c in args.code)
    sides = [(label, cuts) for label in codes for cuts in (True, False)]
    procs = {}
    outdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"dead-line-soak-{os.getpid()}"
    outdir.mkdir(parents=True, exist_ok=True)
    for label, cuts in sides:
        out = outdir / f"{label}-{'cuts' if cuts else 'steady'}.json"
        argv = [sys.executable, "-m", "benchmarks.dead_line_cpu", "soak-side", "--code", codes[label],
                "--out", str(out), "--minutes", str(args.minutes), "--sample", str(args.sample),
                "--warmup", str(args.warmup), "--period-s", str(args.period_s), "--cut-s", str(args.cut_s),
                "--first-cut-s", str(args.first_cut_s)] + (["--cuts"] if cuts else [])
        procs[(label, cuts)] = (subprocess.Popen(argv, cwd=REPO_ROOT), out)
        time.sleep(5)  # labs come up one after the other (namespace and server start-up)
    failed = [side for side, (proc, _) in procs.items() if proc.wait() != 0]
    if failed:
        raise LabError(f"soak sides failed: {failed}")
    data = {side: json.loads(out.read_text()) for side, (_, out) in procs.items()}
    return soak_report(args, data)


def soak_report(args: argparse.Namespace, data: dict) -> str:
    """Return the markdown section of part (b)."""
    rows, fd_rows, notes = [], [], []
    steady_pct = {label: cpu_pct(d["samples"], "agent_cpu_s") for (label, cuts), d in data.items() if not cuts}
    for (label, cuts), d in data.items():
        s = d["samples"]
        end = s[-1]["t"]
        whole = cpu_pct(s, "agent_cpu_s")
        in_cut = cpu_pct(s, "agent_cpu_s", d["cuts"]) if d["cuts"] else float("nan")
        between = cpu_pct(s, "agent_cpu_s", outside(d["cuts"], end)) if d["cuts"] else float("nan")
        fds = [x["collector_fds"] for x in s]
        conns = [x["collector_conns"] for x in s]
        ratio = whole / steady_pct[label] if cuts else float("nan")
        goal = ("met" if ratio <= 1.5 else "not met") if cuts else ""
        rows.append((label, "cuts" if cuts else "steady", f"{end / 60:.1f}", len(d["cuts"]), fmt(whole, 3),
                     fmt(in_cut, 3), fmt(between, 3), fmt(ratio, 2), goal,
                     fmt(cpu_pct(s, "collector_cpu_s"), 3), f"{fds[0]} → {fds[-1]} (min {min(fds)}, max {max(fds)})",
                     f"{conns[0]} → {conns[-1]} (max {max(conns)})",
                     f"{d['probe_up']['samples']} ({d['probe_up']['up']} up)", d["agent_errors"]))
        step = max(1, round(args.fd_every * 60 / args.sample))
        fd_rows.append((label, "cuts" if cuts else "steady",
                        " ".join(f"{x['collector_fds']}" for x in s[::step])))
        notes.append(f"- {label}: `{d['code']}` at {d['commit']}")
    table = md_table(["code", "side", "minutes", "cuts", "agent CPU %", "in cuts", "between cuts",
                      "ratio to steady", "goal ≤ 1.5×", "collector CPU %", "collector fds", "collector conns",
                      "probe_up samples in VM", "agent log errors"], rows)
    fd_table = md_table(["code", "side", f"collector open fds, every {args.fd_every:g} min from the start"],
                        fd_rows)
    return f"""## Part (b): the agent with the primary cut {args.cut_s:g} s every {args.period_s / 60:g} min, beside one never cut

Command: `{command_line()}`  
Run: {time.strftime('%Y-%m-%d %H:%M:%S %Z')} (end)

Code (agent and collector from the same tree):
{chr(10).join(sorted(set(notes)))}

Each side is its own lab (namespaces, province servers, VictoriaMetrics, `cmon collector run`, `cmon agent run`
with the standard profile and the service's environment), all sides at the same time on this 2-CPU machine
after {args.warmup:g} s of warm-up. Cut side: first cut {args.first_cut_s:g} s into the window, then every
{args.period_s:g} s, each {args.cut_s:g} s (`lab.cut("wan1")`: silent drops both ways, links up; the collector
is reached over the primary, so the agent spools during a cut and ships the backlog after). Samples every
{args.sample:g} s. CPU % = utime + stime over the process tree / wall time, of one core; "in cuts" are the
sample intervals inside a cut, "between cuts" all the others (including the backlog shipped after each).

{table}

{fd_table}
"""


# --- results file -----------------------------------------------------------------------------------------------

PART_RE = re.compile(r"<!-- part:(\S+) -->\n.*?<!-- /part:\1 -->\n", re.S)


def write_part(part: str, section: str) -> None:
    """Replace (or add) section `part` of results/dead_line_cpu.md, keeping the others, and print it."""
    old = RESULTS.read_text() if RESULTS.exists() else ""
    sections = {m.group(1): m.group(0) for m in PART_RE.finditer(old)}
    sections[part] = f"<!-- part:{part} -->\n{section.rstrip()}\n<!-- /part:{part} -->\n"
    host = os.uname()
    head = (f"# Dead-line CPU: what a cut primary line costs the agent\n\n"
            f"Machine: {host.nodename} ({os.cpu_count()} CPUs, Linux {host.release}). "
            f"Code: benchmarks/dead_line_cpu.py (its docstring says how to run it).\n\n")
    notes = old.split("<!-- notes -->\n", 1)[1] if "<!-- notes -->\n" in old else ""  # written by hand
    body = "\n".join(sections[name] for name in sorted(sections, key=lambda n: (not n.startswith("probes"), n)))
    RESULTS.write_text(head + body + ("\n<!-- notes -->\n" + notes if notes else ""))
    print(section)
    print(f"written to {RESULTS.relative_to(REPO_ROOT)}")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run a part (or one soak side, for the orchestrator)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    probes = sub.add_parser("probes", help="part (a): CPU per probe run over the cut primary vs the backup")
    probes.add_argument("--before", required=True, help="source tree of the code before the fix (a git worktree)")
    probes.add_argument("--after", default=str(REPO_ROOT), help="source tree of the code after it")
    probes.add_argument("--runs", type=int, default=15, help="runs per line per target and tree (default 15)")
    for name, help_text in (("soak", "part (b): the agent with periodic cuts vs none, all sides at once"),
                            ("soak-side", "(internal) one side of the soak")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--minutes", type=float, default=60.0, help="measured window (default 60)")
        p.add_argument("--sample", type=float, default=10.0, help="seconds between samples (default 10)")
        p.add_argument("--warmup", type=float, default=45.0, help="seconds before the window (default 45)")
        p.add_argument("--period-s", type=float, default=300.0, help="a cut starts every … s (default 300)")
        p.add_argument("--cut-s", type=float, default=60.0, help="each cut lasts … s (default 60)")
        p.add_argument("--first-cut-s", type=float, default=120.0, help="first cut … s into the window")
    soak = sub.choices["soak"]
    soak.add_argument("--code", action="append", default=None,
                      help="LABEL=DIR: a source tree to soak (repeat for several; default after=<this tree>)")
    for p in (probes, soak):
        p.add_argument("--section", help="name of the results section to (re)write (default: the part's name)")
    soak.add_argument("--fd-every", type=float, default=2.5, help="minutes between fd counts in the table")
    side = sub.choices["soak-side"]
    side.add_argument("--code", required=True)
    side.add_argument("--out", required=True)
    side.add_argument("--cuts", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "probes":
        write_part(args.section or "probes", run_probes(args))
    elif args.command == "soak":
        args.code = args.code or [f"after={REPO_ROOT}"]
        write_part(args.section or "soak", run_soak(args))
    else:
        soak_side(args)


if __name__ == "__main__":
    main()
