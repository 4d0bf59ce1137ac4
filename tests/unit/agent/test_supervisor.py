"""agent.supervisor: a failing task is logged, counted and restarted with capped, resetting backoff; its health
and the exit-status rule follow from what really happened (real asyncio tasks, real time, small intervals)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from agent.supervisor import FAILED, OK, RESTARTING, Supervisor, printable


class Flaky:
    """A task body that fails its first `failures` runs (at once), then runs until cancelled or told to stop."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or RuntimeError("boom")
        self.starts: list[float] = []
        self.stop = asyncio.Event()

    async def __call__(self) -> None:
        self.starts.append(time.monotonic())
        if len(self.starts) <= self.failures:
            raise self.error
        await self.stop.wait()


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_failing_task_is_logged_counted_and_restarted_with_doubling_capped_backoff(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.supervisor")
    sup = Supervisor(backoff_s=0.05, backoff_max_s=0.2, healthy_s=10)
    body = Flaky(5)
    sup.start("shipper", body)
    await wait_for(lambda: len(body.starts) == 6)
    gaps = [b - a for a, b in zip(body.starts, body.starts[1:])]
    for gap, expected in zip(gaps, [0.05, 0.1, 0.2, 0.2, 0.2]):  # doubles, then the cap
        assert expected * 0.9 <= gap < expected + 0.1, gaps
    assert sup.tasks["shipper"].restarts == 5 and sup.restarts_total == 5
    assert sup.wire() == {"shipper": {"state": RESTARTING, "restarts": 5, "error": "RuntimeError: boom"}}
    assert sup.health() == "degraded"
    assert sup.fields() == {"task_restarts_total": 5.0, "task_shipper_restarts_total": 5.0, "task_shipper_ok": 0.0}
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 5 and all(r.exc_info and "boom" in str(r.exc_info[1]) for r in failures)
    await sup.stop("shipper", ask=body.stop.set, timeout=1)
    assert sup.exit_status() == 1  # it failed and had not run healthily for healthy_s when stopped


async def test_a_restarted_task_is_ok_after_a_healthy_stretch_and_its_backoff_starts_over() -> None:
    sup = Supervisor(backoff_s=0.05, backoff_max_s=5, healthy_s=0.3)
    runs: list[float] = []
    fail_now = asyncio.Event()

    async def body() -> None:
        runs.append(time.monotonic())
        if len(runs) <= 3:
            raise ValueError("early")
        await fail_now.wait()  # the 4th run is healthy until told to fail
        fail_now.clear()
        raise ValueError("later")

    sup.start("scheduler", body)
    await wait_for(lambda: len(runs) == 4)
    assert sup.wire()["scheduler"]["state"] == RESTARTING
    await asyncio.sleep(0.35)
    assert sup.wire()["scheduler"] == {"state": OK, "restarts": 3, "error": "ValueError: early"}
    assert sup.health() == "ok" and sup.fields()["task_scheduler_ok"] == 1.0
    failed_at = time.monotonic()
    fail_now.set()
    await wait_for(lambda: len(runs) == 5)
    # 3 quick failures in a row would make the next delay 0.4 s; after a healthy stretch it is 0.05 s again
    assert 0.045 <= runs[4] - failed_at < 0.3
    assert sup.tasks["scheduler"].error == "ValueError: later"
    assert sup.tasks["scheduler"].restarts == 4
    await sup.stop("scheduler", timeout=0)
    assert sup.exit_status() == 1


async def test_stopping_a_task_waiting_for_its_restart_marks_it_failed() -> None:
    sup = Supervisor(backoff_s=30)
    body = Flaky(1, OSError("no route"))
    sup.start("shipper", body)
    await wait_for(lambda: sup.tasks["shipper"].waiting)
    started = time.monotonic()
    await sup.stop("shipper", ask=body.stop.set, timeout=5)
    assert time.monotonic() - started < 1  # not the 30 s backoff
    assert sup.wire() == {"shipper": {"state": FAILED, "restarts": 1, "error": "OSError: no route"}}
    assert sup.exit_status() == 1


async def test_a_task_that_returns_unasked_is_restarted_and_a_clean_stop_exits_0() -> None:
    sup = Supervisor(backoff_s=0.01, healthy_s=0.2)
    calls: list[int] = []
    stop = asyncio.Event()

    async def returns_once() -> None:
        calls.append(1)
        if len(calls) > 1:
            await stop.wait()

    sup.start("disk_watch", returns_once)
    sup.start("spool_check", Flaky(0))
    await wait_for(lambda: len(calls) == 2)
    assert "returned without being asked to stop" in sup.tasks["disk_watch"].error
    await asyncio.sleep(0.25)  # healthy again
    await sup.stop("disk_watch", ask=stop.set, timeout=1)
    await sup.stop_all(timeout=0)
    assert {n: t["state"] for n, t in sup.wire().items()} == {"disk_watch": OK, "spool_check": OK}
    assert sup.exit_status() == 0  # it failed once but was healthy at the end


async def test_task_names_follow_the_wire_rule() -> None:
    sup = Supervisor()
    for bad in ("Shipper", "ship-per", "", "x" * 33):
        with pytest.raises(ValueError):
            sup.start(bad, Flaky(0))
    for i in range(16):
        sup.start("t" + "_" * i, Flaky(0))
    with pytest.raises(ValueError):
        sup.start("one_too_many", Flaky(0))
    with pytest.raises(ValueError):
        sup.start("t", Flaky(0))  # a duplicate
    await sup.stop_all(timeout=0)


def test_errors_on_the_wire_are_one_printable_line_of_at_most_300_characters() -> None:
    assert printable("a\nb\tc\x00 Đồng Lộc", 300) == "a b c Đồng Lộc"
    assert len(printable("x" * 1000, 300)) == 300
