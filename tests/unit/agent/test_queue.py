"""The OutboundQueue contract (agent/queue.py), checked on the SQLite spool and on MemoryQueue alike: gap-free
seqs, contiguous batches, live rows first then the backlog oldest first, the batch in flight never evicted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.queue import MemoryQueue, OutboundQueue
from agent.spool import Spool
from core.measurement import Measurement


def rows(n: int) -> list[Measurement]:
    now = int(time.time() * 1000)
    return [Measurement("probe", {"target": "t"}, {"up": 1.0, "i": float(i)}, now + i) for i in range(n)]


@pytest.fixture(params=["spool", "memory"])
def new_queue(request: pytest.FixtureRequest, tmp_path: Path):
    opened: list[Spool] = []

    def make(live_age_s: float = 120.0) -> Spool | MemoryQueue:
        if request.param == "memory":
            return MemoryQueue(live_age_s=live_age_s)
        opened.append(Spool(tmp_path / f"q{len(opened)}.db", live_age_s=live_age_s))
        return opened[-1]

    yield make
    for spool in opened:
        spool.close()


def test_both_queues_are_outbound_queues(new_queue) -> None:
    queue: OutboundQueue = new_queue()  # mypy checks the protocol; here the calls exist
    for name in ("spool_id", "next_batch", "ack", "quarantine", "pending_evictions", "evictions_reported",
                 "pending_lost", "lost_reported"):
        assert hasattr(queue, name)


def test_seqs_are_gap_free_and_batches_contiguous(new_queue) -> None:
    queue = new_queue()
    assert queue.append(rows(5)) == range(1, 6) and queue.append(rows(3)) == range(6, 9)
    batch = queue.next_batch(4)
    assert (batch.first, batch.last, [s for s, _ in batch.items]) == (1, 4, [1, 2, 3, 4]) and batch.live
    queue.ack(3, 4)  # a hole: the next batch stops before it
    batch = queue.next_batch(10)
    assert (batch.first, batch.last) == (1, 2)
    first, second = queue.next_batch(10).split()
    assert (first.first, first.last, second.first, second.last) == (1, 1, 2, 2)
    assert queue.ack(1, 2) == 2 and queue.ack(1, 2) == 0
    assert (queue.next_batch(10).first, queue.next_batch(10).last) == (5, 8)
    assert queue.quarantine(5, 8, "bad") == 4 and queue.next_batch(10) is None
    assert queue.append(rows(1)) == range(9, 10)  # never reused
    assert [(s, r) for s, r, _ in queue.quarantined()] == [(5, "bad"), (6, "bad"), (7, "bad"), (8, "bad")]


def test_backlog_is_oldest_first_and_flagged(new_queue) -> None:
    queue = new_queue(live_age_s=0.0)
    queue.append(rows(3))
    batch = queue.next_batch(2)
    assert (batch.first, batch.last, batch.live) == (1, 2, False)


def test_ranges_reported_are_forgotten_in_part(new_queue) -> None:
    queue = new_queue()
    queue.append(rows(1))
    queue.next_batch(1)  # in flight
    queue.append(rows(2000))  # more than the spool's smallest cap (64 KiB)
    if isinstance(queue, MemoryQueue):
        queue.max_rows = 2
    else:
        queue.max_bytes = 0
    queue.append(rows(1))
    (a, b), = queue.pending_evictions()
    assert a == 2 and b > 2 and queue.dropped_total == b - a + 1
    queue.evictions_reported([(a, a)])
    assert queue.pending_evictions() == [(a + 1, b)]
    queue.evictions_reported([[a + 1, b]])
    assert queue.pending_evictions() == []
