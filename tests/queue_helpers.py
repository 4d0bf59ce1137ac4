"""Queues for the shipper's tests: the real spool and the in-memory queue, recording the acks and quarantines;
`drain` runs a shipper until its queue is empty."""

import asyncio
import time

from agent.queue import MemoryQueue
from agent.spool import Spool


class Recording:
    """Mixed into a queue: records the acks and quarantines the shipper asks for."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.acked: list[tuple[int, int]] = []
        self.refused: list[tuple[int, int, str]] = []

    def ack(self, first: int, last: int) -> int:
        self.acked.append((first, last))
        return super().ack(first, last)

    def quarantine(self, first: int, last: int, reason: str) -> int:
        self.refused.append((first, last, reason))
        return super().quarantine(first, last, reason)


class RecordingSpool(Recording, Spool):
    pass


class RecordingMemoryQueue(Recording, MemoryQueue):
    pass


async def drain(shipper, queue, limit: float = 10.0) -> None:
    """Run `shipper` until `queue` is empty (at most `limit` s), then stop it."""
    task = asyncio.create_task(shipper.run())
    try:
        deadline = time.monotonic() + limit
        while queue.depth() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
