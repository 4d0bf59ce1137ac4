"""The pipeline end to end, nothing disturbed: a real agent enrolled with a real token, its collector, VM.

Time is compressed: probes every 1 s and host health every 2 s instead of 30 s (factor 30).
"""

from __future__ import annotations

import time

from e2e.harness import Pipeline


def test_enrolled_agent_delivers_exactly_its_schedule_and_a_resend_is_not_written(pipeline: Pipeline) -> None:
    pipeline.start_agent()
    time.sleep(8)
    summary = pipeline.finish()
    assert summary["local-tcp/-"] >= 7 and summary["local-ping/-"] >= 7 and summary["host"] >= 3, summary
    row = pipeline.stopped_row
    assert row["state"] == "stopping" and row["stopped_cleanly"], row
    # the agent block of the requests reached the fleet registry
    assert row["version"] and row["config_version"].startswith("sha256:") and row["spool_rows"] == 0, row
    assert abs(row["clock_skew_ms"]) < 50, row
