"""Fixtures for the end-to-end tests: the whole pipeline as real processes, always stopped, even on failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from e2e.harness import NetNS, Pipeline
from lab import Lab, addresses
from lab.victoria import available


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    """VM + collector started, the agent enrolled (not yet running); every process stopped afterwards."""
    reason = available()
    if reason:
        pytest.skip(reason)
    pipe = Pipeline(tmp_path)
    try:
        yield pipe.start()
    finally:
        pipe.close()


@pytest.fixture
def lab_pipeline(tmp_path: Path) -> Iterator[tuple[Lab, Pipeline]]:
    """The lab (no province servers): VM and the collector in the data center, the agent on the counter PC.

    The agent reaches the collector through the commune router's primary line, as a real commune PC does.
    """
    reason = available()
    if reason:
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, iptables)")
    check = subprocess.run([sys.executable, "-m", "lab", "check"], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip(f"`python -m lab check` failed: {check.stdout.strip()} {check.stderr.strip()}")
    lab = Lab(servers=False)
    spaces: list[NetNS] = []
    pipe = None
    try:
        lab.up()
        spaces = [NetNS(lab.ns("dc")), NetNS(lab.ns("pc"))]
        pipe = Pipeline(tmp_path, ns=spaces[0], agent_ns=spaces[1], collector_host=addresses.INTERNET_ADDR)
        yield lab, pipe.start()
    finally:
        if pipe is not None:
            pipe.close()
        for space in spaces:
            space.close()
        lab.down()
