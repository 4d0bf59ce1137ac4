"""The demo province: build the lab, then show what a commune IT staffer sees from `cmon probe`.

1. Everything healthy: every service over the primary and the backup line.
2. The primary's fiber is cut: the primary goes red with `timeout`, the backup stays green.
3. The primary is back but congested (40 ms ± 5 ms, 3 % loss towards the province): latency and loss show up
   in the icmp rows, while the http/dns probes still succeed (retransmission inside the timeout).
4. The pipeline: VictoriaMetrics and the collector in the province, the agent on the counter PC (enrolled with
   a one-time token) running the standard profile; the primary is cut for a while — the agent keeps probing and
   spooling, and after the line is back the province has every round, over both lines.

Run: `scripts/demo.sh` (as root). Everything is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab import Lab
from lab.agent_config import write_agent_config
from lab.stack import ProvinceStack

CMON = str(Path(sys.executable).with_name("cmon"))


def banner(text: str) -> None:
    """Print a section header."""
    print(f"\n=== {text} " + "=" * max(0, 100 - len(text)), flush=True)


def probe(lab: Lab, config: Path, *extra: str) -> int:
    """Run `cmon probe` on the counter PC and stream its table; return its exit status."""
    return lab.exec("pc", [CMON, "probe", "-c", str(config), *extra]).returncode


def pipeline(lab: Lab, interval: float, cut_s: float) -> None:
    """Scene 4: agent → collector → VictoriaMetrics through a cut of the primary line."""
    banner(f"4. the pipeline: agent (every {interval:g} s) → collector → VictoriaMetrics, primary cut {cut_s:g} s")
    stack = ProvinceStack(lab).start()
    config = stack.agent_config(interval=f"{interval:g}s")
    stack.enroll(config)
    print(f"collector {stack.collector_url}; agent enrolled with a one-time token; config {config}")
    agent = stack.start_agent(config)
    time.sleep(3 * interval)
    print(f"cutting the primary (wan1) for {cut_s:g} s: the agent ships over the default route, so it spools")
    lab.cut("wan1")
    time.sleep(cut_s)
    lab.restore("wan1")
    print("primary restored: the backlog drains")
    time.sleep(3 * interval)
    agent.send_signal(signal.SIGTERM)  # a clean stop: the collector is told `stopping`
    agent.wait(30)
    time.sleep(2)
    samples = stack.probe_samples()
    print("\nwhat the province has in VictoriaMetrics (probe_up samples per target and line):")
    print(f"  {'TARGET':16} {'LINE':8} {'SAMPLES':>7} {'UP':>4} {'DOWN':>5}")
    for (target, line), values in sorted(samples.items()):
        up = sum(1 for v in values if v == 1)
        print(f"  {target:16} {line:8} {len(values):7d} {up:4d} {len(values) - up:5d}")
    for row in stack.agents():
        print(f"\nfleet registry: {row}")


def main(argv: list[str] | None = None) -> int:
    """Run the three scenes of the demo."""
    parser = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the lab up at the end until Ctrl-C")
    parser.add_argument("--interval", type=float, default=5.0, help="probe interval of the agent, s (default 5)")
    parser.add_argument("--cut", type=float, default=20.0, help="how long the primary is cut, s (default 20)")
    args = parser.parse_args(argv)
    with Lab() as lab:
        config = write_agent_config(lab)
        print(f"lab {lab.prefix} is up; agent config {config}")
        print(f"run it yourself: ip netns exec {lab.ns('pc')} {CMON} probe -c {config}")

        banner("1. healthy: every service over both lines")
        probe(lab, config)

        banner("2. the primary line's fiber is cut (wan1)")
        lab.cut("wan1")
        try:
            probe(lab, config)
        finally:
            lab.restore("wan1")

        banner("3. the primary line is congested: 40 ms ± 5 ms and 3 % loss towards the province")
        impairment = lab.impair("wan1", direction="up", delay_ms=40, jitter_ms=5, loss_pct=3, seed=7)
        try:
            probe(lab, config, "--line", "primary")
        finally:
            stats = impairment.stats()
            impairment.clear()
        print(f"impairer ground truth: {stats.get('seen')} packets seen, {stats.get('dropped')} dropped")

        pipeline(lab, args.interval, args.cut)

        if args.keep:
            print("lab kept up; Ctrl-C to remove it")
            try:
                subprocess.run(["sleep", "infinity"])
            except KeyboardInterrupt:
                pass
    print("\nlab removed. Done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
