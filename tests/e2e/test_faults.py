"""Faults between the agent and VictoriaMetrics: after each, VM holds exactly the rounds the schedule promised.

Every test runs the real processes (tests/e2e/harness.py), disturbs one of them while the agent probes and
ships, lets the pipeline recover, stops the agent cleanly and asserts `Pipeline.finish()`: the distinct
(series, timestamp) pairs VM exports are exactly the schedule's rounds (`agent.scheduler.planned_runs`, not the
agent's counters), the agent's spool is empty, the collector's acknowledged ranges have no gap, and a resent
batch leaves `vm_rows_inserted_total` unchanged.

Time is compressed: probes run every 1 s instead of every 30 s (factor 30), so an outage of N rounds takes N
seconds. Each docstring gives the issue's duration and the rounds it covers here.
"""

from __future__ import annotations

import signal
import time

import pytest

from e2e.harness import FAKETIME_LIB, Pipeline, faketime_env
from lab import addresses


def _run_around(pipeline: Pipeline, fault, warm_s: float = 3.0, settle_s: float = 1.0) -> dict:
    pipeline.start_agent()
    time.sleep(warm_s)
    fault()
    pipeline.wait_delivered()
    time.sleep(settle_s)
    return pipeline.finish()


def _kill_collector(pipeline: Pipeline) -> None:
    pipeline.collector.process.kill()
    pipeline.collector.process.wait()


# what goes wrong → (begin, end, seconds between them = rounds missed by the database at 1 s per round)
OUTAGES = {
    # the collector stops cleanly mid-stream and comes back 6 s (6 rounds) later
    "collector-sigterm": (lambda p: p.collector.stop(), lambda p: p.collector.start(), 6),
    # the collector dies (maybe between VM's answer and its own commit) and comes back after 6 s
    "collector-sigkill": (_kill_collector, lambda p: p.collector.start(), 6),
    # VM stopped: the 2 minutes are 4 rounds at 30 s; here 15 rounds. The collector answers 503.
    "vm-sigterm": (lambda p: p.vm.stop(), lambda p: p.vm.start(), 15),
    # VM frozen: the 60 s are 2 rounds at 30 s; here 10. Its port accepts, nothing answers: the
    # collector's writes time out (2 s) → 503 + Retry-After.
    "vm-sigstop": (lambda p: p.vm.freeze(), lambda p: p.vm.thaw(), 10),
}


@pytest.mark.parametrize("what", OUTAGES)
def test_outage_mid_stream(pipeline: Pipeline, what: str) -> None:
    """The collector or VM is stopped, killed or frozen while the agent ships; the agent spools and resends."""
    begin, end, seconds = OUTAGES[what]

    def fault() -> None:
        begin(pipeline)
        time.sleep(seconds)
        end(pipeline)

    summary = _run_around(pipeline, fault)
    assert summary["local-tcp/-"] >= seconds + 4, summary


def test_agent_killed_mid_batch(pipeline: Pipeline) -> None:
    """kill -9 of the agent while a batch is in flight (VM frozen, so the collector holds the request), then a restart.

    VM is thawed right after the kill, within the collector's 2 s write timeout: the collector writes and
    records the batch the dead agent never saw acknowledged; the restarted agent resends it from its spool and
    the collector skips it. Runs planned while no agent ran are not expected.
    """
    def fault() -> None:
        pipeline.vm.freeze()
        time.sleep(0.9)
        pipeline.stop_agent(sig=signal.SIGKILL)
        time.sleep(0.2)
        pipeline.vm.thaw()
        time.sleep(2)
        pipeline.start_agent()

    summary = _run_around(pipeline, fault, settle_s=3.0)
    assert summary["local-tcp/-"] >= 7, summary
    assert [a.clean for a in pipeline.agents] == [False, True]
    # the batch in flight at the kill was written, then resent by the new process and skipped
    assert pipeline.collector_metric("cmon_collector_lines_skipped_total") >= 1


@pytest.mark.parametrize("offset", ["+10m", "-10m"])
def test_agent_clock_ten_minutes_wrong(pipeline: Pipeline, offset: str) -> None:
    """The agent's wall clock 10 minutes off (libfaketime, LD_PRELOAD: time.time() really is wrong) — not compressed.

    The agent measures the offset from the collector's X-Server-Time-Ms before its first probe and corrects its
    rounds and timestamps: VM's samples sit on the schedule's rounds in TRUE time (within 0.1 s early / 0.6 s
    late), none is refused as "in the future" (+10 min is exactly the collector's `max_future`).
    """
    if not FAKETIME_LIB.exists():
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    pipeline.agent_env = faketime_env(offset)
    summary = _run_around(pipeline, lambda: None, warm_s=6.0)
    assert summary["local-tcp/-"] >= 6, summary
    skew_ms = pipeline.stopped_row["clock_skew_ms"]
    expected = -600_000 if offset.startswith("+") else 600_000
    assert abs(skew_ms - expected) < 1_000, pipeline.stopped_row


def test_line_cut(lab_pipeline) -> None:
    """The commune's line to the province cut (silent drops) for ~22 s: the issue's 10 minutes are 20 rounds at
    30 s; here 22 rounds at 1 s. The agent keeps probing (local targets), spools, and delivers everything after."""
    lab, pipeline = lab_pipeline

    seen_during_cut: list[int] = []

    def fault() -> None:
        assert pipeline.registry_row()["egress"] == addresses.RTR_WAN1_ADDR  # shipping over the primary line
        lab.cut("wan1")
        time.sleep(4)  # a request in flight at the cut times out (3 s)
        for _ in range(2):
            seen_during_cut.append(pipeline.rows_inserted())
            time.sleep(8)
        lab.restore("wan1")

    summary = _run_around(pipeline, fault)
    assert summary["local-tcp/-"] >= 24, summary
    assert seen_during_cut[0] == seen_during_cut[1], "samples reached VM through a cut line"
