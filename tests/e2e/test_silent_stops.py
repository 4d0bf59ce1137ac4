"""No silent stops, with real processes: a damaged spool row and a full disk (tests/e2e/harness.py's Pipeline:
VictoriaMetrics, `cmon collector run`, an enrolled `cmon agent run` probing every second).

- A row of the agent's spool goes bad on disk while the agent is stopped: the restarted agent ships every other
  measurement, VM holds every scheduled round but that one, and the collector records its seq as LOST with the
  agent's reason. Before, the row ended the shipping task for good, silently.
- The spool's disk (a real 1 MB tmpfs) first runs low, then full, then has room again: the agent warns while it
  is low, counts every run it could not commit in `dropped_disk_full_total`, and ships again without a restart;
  every seq of the spool ends up acknowledged, evicted or lost at the collector.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import yaml

from agent.config import load_config
from agent.scheduler import planned_runs
from agent.spool import Spool
from core.ranges import merge
from disk_helpers import fill, tmpfs
from e2e.harness import AGENT_ID, Pipeline, Window
from e2e.schedule_check import _round_of, check_events, check_schedule, job_of
from core.measurement import Measurement

IDENTITY_MATCH = f'{{agent="{AGENT_ID}"}}'


# -- what VM holds, and what the collector recorded ---------------------------------------------------------------


def export(pipeline: Pipeline, settled: bool = True) -> list[dict]:
    """Return VM's samples of the agent; `settled`: once VM's insert counter is still (only with no agent running)."""
    if settled:
        pipeline.rows_inserted()  # VM ingests for up to a second after its 204: wait until its counter settles
        return pipeline.exported()  # and a series first written at the stop is searchable
    return pipeline.ns.call(pipeline.vm.export, IDENTITY_MATCH)


def field_series(exported: list[dict], m: Measurement) -> list[tuple[str, dict | None]]:
    """Return (metric name, exported series or None) for every field of `m`."""
    out = []
    for name in m.fields:
        metric = {"__name__": f"{m.name}_{name}", **m.tags}
        out.append((metric["__name__"], next((s for s in exported if s["metric"] == metric), None)))
    return out


def with_sample(exported: list[dict], m: Measurement) -> list[dict]:
    """Return the export as if VM also held `m` (the lost row): then it must match the schedule exactly."""
    for name, series in field_series(exported, m):
        assert series is not None, f"no series {name} for {m.tags}"
        assert m.time not in series["timestamps"], f"the lost measurement reached VM ({name})"
        series["timestamps"] = sorted([*series["timestamps"], m.time])
    return exported


def recorded(pipeline: Pipeline, table: str, spool_id: str) -> list[tuple]:
    """Return the rows the collector's state file holds for the spool in `acked`, `evicted` or `lost`."""
    columns = "first, last, reason" if table == "lost" else "first, last"
    conn = sqlite3.connect(pipeline.tmp / "state" / "collector.sqlite")
    try:
        return [tuple(r) for r in conn.execute(f"SELECT {columns} FROM {table} WHERE spool = ?", (spool_id,))]
    finally:
        conn.close()


def accounted(pipeline: Pipeline, spool_id: str) -> list[tuple[int, int]]:
    """Return the merged seq ranges the collector has as acknowledged, evicted or lost."""
    ranges = recorded(pipeline, "acked", spool_id) + recorded(pipeline, "evicted", spool_id)
    return merge(ranges + [(a, b) for a, b, _ in recorded(pipeline, "lost", spool_id)])


def spool_state(path: Path) -> tuple[str, int, int]:
    """Return the (stopped) agent's spool id, next seq and rows left."""
    conn = sqlite3.connect(path)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        return meta["spool_id"], int(meta["next_seq"]), conn.execute("SELECT count(*) FROM rows").fetchone()[0]
    finally:
        conn.close()


def wait_for(check, timeout: float = 60.0) -> None:
    """Retry `check()` (it asserts) once a second until it passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(1.0)


def running_window(pipeline: Pipeline, lag: float = 1.5) -> Window:
    """The running agent's window up to `lag` s ago (rounds after it may already be there)."""
    agent = pipeline.agents[-1]
    return Window(agent.launched, agent.scheduling, time.time() - lag, clean=True, open_end=True)


def agent_log(pipeline: Pipeline) -> str:
    return pipeline.agent_log.read_text(errors="replace")


# -- a damaged row ------------------------------------------------------------------------------------------------


def damage_a_probe_row(path: Path) -> tuple[int, Measurement]:
    """Overwrite the body of a probe row in the middle of the stopped agent's spool; return its seq and content."""
    with Spool(path) as spool:
        rows = spool._db.execute("SELECT seq, body FROM rows ORDER BY seq").fetchall()
        probes = [(seq, spool._decode(body)) for seq, body in rows]
        probes = [(seq, m) for seq, m in probes
                  if isinstance(m, Measurement) and m.name == "probe" and m.tags["target"] == "local-tcp"]
    seq, measurement = probes[len(probes) // 2]
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute("UPDATE rows SET body = ? WHERE seq = ?", (b"\x07 bad sector \xff" * 4, seq))
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"  # SQLite itself sees nothing wrong
    finally:
        conn.close()
    return seq, measurement


def test_a_damaged_spool_row_is_reported_lost_and_every_other_round_reaches_vm(pipeline: Pipeline) -> None:
    """~35 s. The agent spools while the collector is away, stops; one probe row of its backlog is damaged; the
    agent starts again: it ships every other row, the collector records the seq as lost with the reason."""
    pipeline.start_agent()
    time.sleep(3)
    pipeline.collector.stop()  # the backlog stays in the spool
    time.sleep(4)
    pipeline.stop_agent()
    spool_path = pipeline.config_path.parent / "spool.db"
    seq, lost = damage_a_probe_row(spool_path)
    pipeline.collector.start()
    pipeline.start_agent()
    config = load_config(pipeline.config_path)

    def delivered() -> dict:
        windows = [*pipeline.windows_so_far(), running_window(pipeline)]
        return check_schedule(config, with_sample(export(pipeline, settled=False), lost), windows,
                              pipeline._producers())

    wait_for(delivered)
    time.sleep(1)
    pipeline.stop_agent()
    spool_id, next_seq, left = spool_state(spool_path)
    assert left == 0
    # VM: every scheduled round of both processes, except exactly the damaged one
    summary = check_schedule(config, with_sample(export(pipeline), lost), pipeline.windows(), pipeline._producers())
    assert summary["local-tcp/-"] >= 6, summary  # the rounds of both processes (~7 s + ~2 s)
    # the collector: the seq lost with the agent's reason, every other seq acknowledged, no gap
    assert recorded(pipeline, "lost", spool_id) == [(seq, seq, "damaged spool row: cannot decompress")]
    assert accounted(pipeline, spool_id) == [(1, next_seq - 1)]
    assert seq not in {s for a, b in recorded(pipeline, "acked", spool_id) for s in range(a, b + 1)}
    row = pipeline.registry_row()
    assert (row["lost_total"], row["lost_seqs"], row["health"]) == (1, 1, "ok"), row
    assert row["tasks"]["shipper"] == {"state": "ok", "restarts": 0}
    assert f"measurements {seq}..{seq} cannot be read" in agent_log(pipeline)
    with Spool(spool_path) as spool:
        assert spool.pending_lost() == [] and [s for s, _ in spool.damaged()] == [seq]


# -- a full disk ---------------------------------------------------------------------------------------------------


def missing_in(config, exported: list[dict], producers, start: float, end: float) -> dict[str, int]:
    """Return, per job, the rounds planned in [start, end) that VM does not hold (by each job's anchor series)."""
    anchors = {"host": "host_mem_pct", "self": "agent_uptime_s"}
    runs = planned_runs(config, start - 5, end + 5, producers)
    times: dict[str, list[float]] = {}
    for job, at in runs:
        times.setdefault(job.key, []).append(at)
    present: dict[str, set[float]] = {key: set() for key in times}
    for series in exported:
        key = job_of(series["metric"])
        if series["metric"]["__name__"] in (anchors.get(key), "probe_up"):
            present[key] |= {_round_of(times[key], t / 1000) for t in series["timestamps"]}
    out: dict[str, int] = {}
    for job, at in runs:
        if start <= at < end and at not in present[job.key]:
            out[job.key] = out.get(job.key, 0) + 1
    return out


def host_measurements_per_run(exported: list[dict]) -> int:
    """Return how many `host` Measurements one host run makes here (the PC, each disk, each interface)."""
    return len({tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__"))
                for s in exported if s["metric"]["__name__"].startswith("host_")})


def last_value(exported: list[dict], name: str) -> float:
    series = next(s for s in exported if s["metric"]["__name__"] == name)
    return series["values"][series["timestamps"].index(max(series["timestamps"]))]


def use_spool_on(pipeline: Pipeline, relative: str, max_size: str) -> None:
    data = yaml.safe_load(pipeline.config_path.read_text())
    data["spool"] = {"path": relative, "max_size": max_size}
    pipeline.config_path.write_text(yaml.safe_dump(data))


def test_a_full_disk_counts_the_runs_it_drops_and_shipping_resumes_without_a_restart(pipeline: Pipeline) -> None:
    """~40 s. The spool on a 1 MB tmpfs: low for 5 s (warned), full for 8 s (runs dropped, counted), then room
    again: the same agent process commits and ships again."""
    disk = pipeline.config_path.parent / "disk"
    with tmpfs(disk, "1M"):
        try:
            use_spool_on(pipeline, "disk/spool.db", "400kB")
            pipeline.start_agent()
            time.sleep(3)
            low_from = time.time()
            fill_to_free(disk / "ballast-1", 150_000)  # below the room the spool may need: warned, still works
            time.sleep(5)
            pipeline.quiet_moment(0.3)  # no run in flight as the disk fills: which rounds were dropped is exact
            full_from = time.time()
            fill(disk / "ballast-2")
            time.sleep(8)
            for ballast in disk.glob("ballast-*"):
                ballast.unlink()
            full_until = time.time()
            config, producers = load_config(pipeline.config_path), pipeline._producers()
            agent = pipeline.agents[-1]

            def episode_windows(end: Window) -> list[Window]:
                before = Window(agent.launched, agent.scheduling, full_from, clean=True)
                during = Window(full_from, full_until + 0.5, full_until + 0.5)  # rounds may be missing
                after = Window(full_until + 0.5, full_until + 0.5, end.ended, clean=True, open_end=end.open_end)
                return [before, during, after]

            wait_for(lambda: check_schedule(config, export(pipeline, settled=False),
                                            episode_windows(running_window(pipeline)), producers, events=False))
            # shipping resumed: every round since the disk has room again is in VM
            time.sleep(3)  # a few self-metrics after the episode: their counters are final
            pipeline.stop_agent()
            assert [a.process.returncode for a in pipeline.agents] == [0]  # one process throughout
            spool_id, next_seq, left = spool_state(disk / "spool.db")
        finally:
            for each in pipeline.agents:  # never leave a process inside the mount
                if each.process.poll() is None:
                    each.process.kill()
                    each.process.wait()
    exported = export(pipeline)
    ended = Window(0, 0, agent.ended, clean=True)
    check_schedule(config, exported, episode_windows(ended), producers, events=False)
    # one process: its start before the episode, its clean stop after it, each once
    assert not check_events([s for s in exported if s["metric"]["__name__"] == "event_count"],
                            [Window(agent.launched, agent.scheduling, agent.ended, clean=True)])
    # every run the disk could not take is counted, measurement for measurement
    missing = missing_in(config, exported, producers, full_from, full_until + 0.5)
    expected = sum(host_measurements_per_run(exported) if job == "host" else 1 for job in missing
                   for _ in range(missing[job]))
    assert missing.get("local-tcp/-", 0) >= 5, missing  # the disk really was full for seconds
    assert last_value(exported, "agent_dropped_disk_full_total") == expected, (missing, expected)
    # every seq the spool assigned is acknowledged, evicted or lost at the collector; none left behind
    assert left == 0
    assert accounted(pipeline, spool_id) == [(1, next_seq - 1)]
    evicted = sum(b - a + 1 for a, b in recorded(pipeline, "evicted", spool_id))
    row = pipeline.registry_row()
    assert row["dropped_total"] == expected + evicted, row
    assert row["health"] == "ok" and row["disk_free_bytes"] > 500_000, row
    # warned while the disk was low (before it was full), once; the full episode logged once each way
    low = [t for s in exported if s["metric"]["__name__"] == "agent_spool_disk_low"
           for t, v in zip(s["timestamps"], s["values"]) if v == 1]
    assert low and low_from * 1000 <= min(low) < full_from * 1000, (low, low_from, full_from)  # warned first
    assert max(low) < (full_until + 0.5) * 1000, (low, full_until)
    assert last_value(exported, "agent_spool_disk_low") == 0
    text = agent_log(pipeline)
    assert text.count("the spool's disk is nearly full") == 1
    assert text.count("cannot commit measurements (the disk is full)") == 1
    assert text.count(f"writes again: {expected} measurements were dropped while the disk is full") == 1


def fill_to_free(path: Path, free: int) -> None:
    """Write a ballast file that leaves about `free` bytes free on its file system."""
    size = shutil.disk_usage(path.parent).free - free
    with open(path, "wb") as f:
        f.write(b"\0" * max(0, size))
