"""The demo province: build the lab, then show what a commune IT staffer sees from `cmon probe`.

1. Everything healthy: every service over the primary and the backup line.
2. The primary's fiber is cut: the primary goes red with `timeout`, the backup stays green.
3. The primary is back but congested (40 ms ± 5 ms, 3 % loss towards the province): latency and loss show up
   in the icmp rows, while the http/dns probes still succeed (retransmission inside the timeout).

Run: `scripts/demo.sh` (as root). Everything is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from lab import Lab
from lab.agent_config import write_agent_config

CMON = str(Path(sys.executable).with_name("cmon"))


def banner(text: str) -> None:
    """Print a section header."""
    print(f"\n=== {text} " + "=" * max(0, 100 - len(text)), flush=True)


def probe(lab: Lab, config: Path, *extra: str) -> int:
    """Run `cmon probe` on the counter PC and stream its table; return its exit status."""
    return lab.exec("pc", [CMON, "probe", "-c", str(config), *extra]).returncode


def main(argv: list[str] | None = None) -> int:
    """Run the three scenes of the demo."""
    parser = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the lab up at the end until Ctrl-C")
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
