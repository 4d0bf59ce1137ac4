"""The collector and VictoriaMetrics failing: VM stopped or frozen (503 + Retry-After, then written once), the
collector SIGKILLed between VM's answer and its commit (VM's dedup keeps one sample), a gzip bomb (bounded RSS)."""

from __future__ import annotations

import gzip
import json
import time
import zlib

import pytest

from collector_helpers import (CollectorProcess, post_to_a_crashing_collector, collector_client, credential, enroll_direct, expected_pairs,
                               http_post, make_config, payload, post)
from lab.victoria import Victoria, available

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")


def pairs(vm: Victoria, agent: str) -> list:
    return [(labels, t) for labels, t, _ in vm.samples(f'{{agent="{agent}"}}')]


async def test_vm_stopped_then_restarted_the_resend_is_written_once(tmp_path):
    with Victoria(tmp_path / "vm") as vm:
        async with collector_client(make_config(tmp_path, vm.url, timeout=2.0)) as client:
            cred = credential(client, agent="down-01")
            data = payload(1, 30)
            vm.stop()
            status, answer, headers = await post(client, cred, data)
            assert status == 503 and headers["Retry-After"] == "7", answer
            vm.start()
            status, answer, _ = await post(client, cred, data)
            assert status == 200 and answer["written"] == 30
            assert sorted(pairs(vm, "down-01")) == sorted(expected_pairs(data, agent="down-01"))
            before = vm.rows_inserted()
            assert (await post(client, cred, data))[1]["duplicate"] is True
            assert vm.rows_inserted() == before


async def test_vm_frozen_is_503_within_the_timeout(tmp_path):
    with Victoria(tmp_path / "vm") as vm:
        async with collector_client(make_config(tmp_path, vm.url, timeout=1.0)) as client:
            cred = credential(client, agent="frozen-01")
            data = payload(1, 10)
            vm.freeze()
            try:
                started = time.monotonic()
                status, _, headers = await post(client, cred, data)
                elapsed = time.monotonic() - started
            finally:
                vm.thaw()
            assert status == 503 and "Retry-After" in headers and elapsed < 5
            status, answer, _ = await post(client, cred, data)
            assert status == 200 and answer["written"] == 10
            assert len(pairs(vm, "frozen-01")) == 30  # the frozen write may also land: dedup keeps one each


# Kill the collector with SIGKILL right after VM accepted a batch, before the range is committed.
def test_sigkill_between_vm_answer_and_commit_leaves_one_sample(tmp_path):
    with Victoria(tmp_path / "vm") as vm:
        data = payload(1, 40)
        raw, headers = post_to_a_crashing_collector(tmp_path, vm.url, "crash-01", data)
        first_rows = vm.rows_inserted()
        assert first_rows >= 120  # VM had accepted the batch

        restarted = CollectorProcess(tmp_path, vm.url).start()
        try:
            status, answer, _ = http_post(restarted.url + "/api/v1/ingest", raw, headers)
            assert status == 200 and answer["written"] == 40  # not recorded, so written again...
            found = pairs(vm, "crash-01")
            assert len(found) == len(set(found))  # ...and VM's dedup keeps one sample per (series, ts)
            assert set(found) == expected_pairs(data, agent="crash-01")
            status, answer, _ = http_post(restarted.url + "/api/v1/ingest", raw, headers)
            assert answer["duplicate"] is True  # recorded this time, across the restart
        finally:
            restarted.stop()


def test_gzip_bomb_costs_the_collector_little_memory(tmp_path):
    with Victoria(tmp_path / "vm") as vm:
        collector = CollectorProcess(tmp_path, vm.url)
        cred = enroll_direct(tmp_path / "state", agent="bomb-01")
        collector.start()
        try:
            compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            zeros = b"0" * (1 << 20)
            bomb = b"".join(compressor.compress(zeros) for _ in range(1024)) + compressor.flush()  # 1 GiB inflated
            assert len(bomb) < 2_000_000
            headers = {"Authorization": f"Bearer {cred}", "Content-Encoding": "gzip"}
            before = collector.peak_rss_kb()
            status, answer, _ = http_post(collector.url + "/api/v1/ingest", bomb, headers)
            growth_mb = (collector.peak_rss_kb() - before) / 1024
            assert status == 413 and "decompresses" in answer["error"]
            assert growth_mb < 50, growth_mb
            print(f"gzip bomb ({len(bomb)} bytes → 1 GiB): collector peak RSS growth {growth_mb:.1f} MB")
            status, _, _ = http_post(collector.url + "/api/v1/ingest", gzip.compress(json.dumps(payload(1, 5)).encode()),
                                     headers)
            assert status == 200
        finally:
            collector.stop()
