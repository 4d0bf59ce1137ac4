"""Reloading the agent's configuration while it runs: `Agent.reload()` in-process and SIGHUP to `cmon agent run`.

A new target is probed and the removed one stops; an invalid file is logged issue by issue (file:line) and the
old configuration goes on; what cannot change while running (the spool, the identity, the collector's address)
is held back with a warning, the rest applies; the reported config_version follows the file."""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import json
import logging
import signal
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web

from agent.config import AgentConfig, load_config
from agent.credentials import Credential, save
from agent.selfmetrics import config_number, config_version
from agent.supervisor import Supervisor
from cmon import cli

pytestmark = pytest.mark.skipif(importlib.util.find_spec("agent.spool") is None, reason="agent/spool.py not there yet")
HEAD = "agent: {province: ha-tinh, commune: dong-loc, id: quay-01}\n"


def target(name: str, port: int) -> str:
    return f"{{name: {name}, probe: tcp, host: 127.0.0.1, port: {port}, interval: 1s}}"


def write(path: Path, *targets: str, extra: str = "", head: str = HEAD) -> Path:
    path.write_text(head + extra + "schedule: {host_interval: 1s}\n"
                    f"services: {{dns: [{', '.join(targets)}]}}\n", encoding="utf-8")
    return path


async def until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


class Running:
    """`run_agent` in-process; every measurement appended to its spool recorded with the monotonic time."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.agent = None
        self.appended: list[tuple[float, str, dict]] = []  # (when, name, tags)
        self.events: list = []  # the Events committed
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    def ready(self, agent) -> None:
        self.agent = agent
        real = agent.spool.append

        def append(measurements):
            measurements = list(measurements)
            now = time.monotonic()
            self.appended += [(now, getattr(m, "name", "event"), dict(m.tags)) for m in measurements]
            self.events += [m for m in measurements if hasattr(m, "kind")]
            return real(measurements)

        agent.spool.append = append

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def targets(self, since: float = 0.0) -> list[str]:
        return [tags["target"] for when, name, tags in self.appended if name == "probe" and when >= since]

    async def __aenter__(self) -> "Running":
        from agent.daemon import run_agent

        self.task = asyncio.create_task(run_agent(self.config, self.stop, Supervisor(), ready=self.ready))
        await until(lambda: self.agent is not None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.stop.set()
        assert await asyncio.wait_for(self.task, 20) == 0


async def test_a_reload_probes_the_new_target_stops_the_removed_one_and_reports_the_new_version(
        tmp_path: Path, listening_port: int) -> None:
    from agent.spool import Spool

    path = write(tmp_path / "agent.yaml", target("old", listening_port))
    async with Running(load_config(path)) as run:
        agent = run.agent
        await until(lambda: "old" in run.targets())
        before = agent.info()["config_version"]
        spool = agent.spool
        write(path, target("new", listening_port), target("other", listening_port))
        assert await agent.reload() is True
        reloaded = time.monotonic()
        await until(lambda: run.targets(reloaded).count("new") >= 2 and "other" in run.targets(reloaded))
        await until(lambda: any(name == "agent" and when > reloaded for when, name, _ in run.appended))
        assert "old" not in run.targets(reloaded)  # its job ended before reload() returned
        assert agent.spool is spool  # the same spool throughout
        assert agent.info()["config_version"] == config_version(path) != before
        assert agent.supervisor.wire()["scheduler"] == {"state": "ok", "restarts": 0}
        assert [t.name for t in agent.config.targets] == ["new", "other"]
        [event] = [e for e in run.events if e.kind == "config_reloaded"]  # the timeline says when it changed
        assert event.attributes == {"config_version": config_version(path), "previous_config_version": before,
                                    "held": "", "jobs": 4.0}  # 2 targets, host, self
        self_metrics = await agent.self_metrics()
        assert self_metrics[0].fields["config_version"] == config_number(config_version(path))
    with Spool(tmp_path / "spool.db") as stored:
        batch = stored.next_batch(10_000)
        assert batch is not None
        seen = {m.tags.get("target") for _, m in batch.items if getattr(m, "name", None) == "probe"}
        assert {"old", "new", "other"} <= seen  # committed to the spool, before and after the reload


async def test_an_invalid_file_is_logged_with_its_lines_and_the_old_config_goes_on(
        tmp_path: Path, listening_port: int, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "agent.yaml", target("old", listening_port))
    async with Running(load_config(path)) as run:
        agent = run.agent
        await until(lambda: "old" in run.targets())
        before = agent.info()["config_version"]
        path.write_text(HEAD + "services:\n  dns:\n    - {name: new, probe: tcp, host: 127.0.0.1, port: https}\n"
                        "spool: {max_size: lots}\n", encoding="utf-8")
        with caplog.at_level(logging.INFO, logger="agent.daemon"):
            assert await agent.reload() is False
        failed = time.monotonic()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors == [
            f"{path}:4: services.dns[0].port: 'https' is not a whole number",
            f"{path}:5: spool.max_size: 'lots' is not a size: write e.g. 100MB, 64kB or a number of bytes",
            f"configuration not reloaded: 2 errors in {path}; going on with the previous one",
        ]
        await until(lambda: run.targets(failed).count("old") >= 2)  # still probing, as before
        assert agent.info()["config_version"] == before
        assert not task_failed(agent)
        [event] = [e for e in run.events if e.kind == "config_rejected"]
        assert event.attributes == {"errors": 2.0, "first_error": errors[0]}
        assert "config_reloaded" not in run.kinds()


async def test_what_cannot_change_while_running_is_held_back_with_a_warning_and_the_rest_applies(
        tmp_path: Path, listening_port: int, caplog: pytest.LogCaptureFixture) -> None:
    save(tmp_path / "credential.json", Credential("http://127.0.0.1:9", "x", "ha-tinh", "dong-loc", "quay-01"))
    collector = "collector: {url: 'http://127.0.0.1:9', allow_http: true, batch_max: 500, backlog_rate: 32kB}\n"
    path = write(tmp_path / "agent.yaml", target("old", listening_port), extra=collector)
    async with Running(load_config(path)) as run:
        agent = run.agent
        await until(lambda: "old" in run.targets())
        spool, spool_path = agent.spool, agent.spool.path
        write(path, target("new", listening_port), head=HEAD.replace("quay-01", "quay-02"),
              extra=collector.replace("127.0.0.1:9", "127.0.0.1:10").replace("500", "50").replace("32kB", "1MB")
              + "spool: {path: elsewhere/spool.db}\n")
        with caplog.at_level(logging.INFO, logger="agent.daemon"):
            assert await agent.reload() is True
        reloaded = time.monotonic()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [f"reload: agent.id, spool.path, collector.url changed in {path}, which cannot change "
                            "while the agent runs: the previous values stay until the agent is restarted "
                            "(systemctl restart commune-monitor-agent)"]
        await until(lambda: "new" in run.targets(reloaded))
        assert agent.spool is spool and agent.spool.path == spool_path
        assert not (tmp_path / "elsewhere").exists()
        assert {tags["agent"] for _, _, tags in run.appended} == {"quay-01"}  # the identity is the spool's
        assert agent.config.collector is not None and str(agent.config.collector.url) == "http://127.0.0.1:9/"
        assert (agent.shipper.batch_max, agent.shipper.backlog_rate) == (50, 1_000_000)
        assert agent.info()["config_version"] == config_version(path)
        [event] = [e for e in run.events if e.kind == "config_reloaded"]
        assert event.attributes["held"] == "agent.id, spool.path, collector.url"


def task_failed(agent) -> bool:
    return any(task["state"] != "ok" for task in agent.supervisor.wire().values())


async def test_sighup_and_cmon_agent_reload_reload_a_running_cmon_agent_run(tmp_path: Path, listening_port: int,
                                                                          capsys: pytest.CaptureFixture) -> None:
    from agent.spool import Spool

    path = write(tmp_path / "agent.yaml", target("old", listening_port))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "cmon", "--log-level", "info", "agent", "run",
                                                "-c", str(path), stderr=asyncio.subprocess.PIPE)
    log: list[str] = []

    async def wait_for(text: str) -> None:
        assert proc.stderr is not None
        async with asyncio.timeout(20):
            while not any(text in line for line in log):
                line = (await proc.stderr.readline()).decode()
                assert line, "the agent ended: " + "".join(log)
                log.append(line)

    try:
        await wait_for("running:")
        path.write_text(HEAD + "services: {dns: [{name: old, probe: tcp, port: 1}]}\n", encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        await wait_for("configuration not reloaded")
        assert any(f"{path}:2: services.dns[0]: missing required key 'host'" in line for line in log), log
        write(path, target("new", listening_port))
        assert cli.main(["agent", "reload", "-c", str(path), "--pid", str(proc.pid)]) == 0
        assert f"asked the agent (process {proc.pid}) to reload" in capsys.readouterr().out
        await wait_for("configuration reloaded")
        await asyncio.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, "".join(log) + err.decode()
    with Spool(tmp_path / "spool.db") as stored:
        batch = stored.next_batch(10_000)
        assert batch is not None
        assert "new" in {m.tags.get("target") for _, m in batch.items if getattr(m, "name", None) == "probe"}


def test_cmon_agent_reload_refuses_a_config_with_errors_and_sends_nothing(tmp_path: Path, capsys) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(HEAD + "services: {}\n", encoding="utf-8")
    assert cli.main(["agent", "reload", "-c", str(path), "--pid", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        f"{path}:2: services: no services: add at least one service with its targets",
        "cmon agent reload: not reloading: the config has 1 error; the agent goes on with the one it has",
    ]


async def test_supervisor_replace_runs_the_new_body_under_the_same_name_and_health() -> None:
    supervisor, started, stop = Supervisor(), [], asyncio.Event()

    def body(tag: str):
        async def run() -> None:
            started.append(tag)
            await stop.wait()
            stop.clear()
        return run

    supervisor.start("scheduler", body("old"))
    await until(lambda: started == ["old"])
    prepared = []
    task = await supervisor.replace("scheduler", body("new"), ask=stop.set, prepare=lambda: prepared.append(1))
    assert task is not None and prepared == [1]
    await until(lambda: started == ["old", "new"])
    assert supervisor.wire() == {"scheduler": {"state": "ok", "restarts": 0}}  # a replacement is not a failure
    await supervisor.stop("scheduler", ask=stop.set, timeout=1)
    assert task.done() and supervisor.exit_status() == 0


async def test_supervisor_a_stop_during_a_replacement_wins() -> None:
    supervisor, started, stop = Supervisor(), [], asyncio.Event()

    async def slow_to_stop() -> None:
        started.append("old")
        await stop.wait()
        await asyncio.sleep(0.2)

    async def new() -> None:
        started.append("new")

    supervisor.start("scheduler", slow_to_stop)
    await until(lambda: started == ["old"])
    replacing = asyncio.create_task(supervisor.replace("scheduler", new, ask=stop.set))
    await asyncio.sleep(0.05)
    await supervisor.stop("scheduler", ask=stop.set, timeout=1)  # the agent stops meanwhile
    assert await replacing is None
    await asyncio.sleep(0.05)
    assert started == ["old"]
    assert await supervisor.replace("scheduler", new) is None  # nor later


async def test_supervisor_a_task_failing_as_it_is_replaced_stays_counted() -> None:
    supervisor, stop = Supervisor(healthy_s=60), asyncio.Event()

    async def fails_on_stop() -> None:
        await stop.wait()
        raise RuntimeError("bug on the way out")

    async def new() -> None:
        await asyncio.Event().wait()

    supervisor.start("scheduler", fails_on_stop)
    await asyncio.sleep(0.05)
    assert await supervisor.replace("scheduler", new, ask=stop.set) is not None
    assert supervisor.wire()["scheduler"] == {"state": "restarting", "restarts": 1,
                                              "error": "RuntimeError: bug on the way out"}
    await supervisor.stop("scheduler", timeout=0)
    assert supervisor.exit_status() == 1


async def test_the_collector_hears_the_new_config_version_and_the_new_targets(tmp_path: Path, listening_port: int) -> None:
    payloads: list[dict] = []

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        payloads.append(json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body))
        acked = {"acked": [payloads[-1]["first"], payloads[-1]["last"]]} if "first" in payloads[-1] else {}
        return web.json_response(acked, headers={"X-Server-Time-Ms": str(int(time.time() * 1000))})

    app = web.Application()
    app.router.add_post("/api/v1/ingest", answer)
    app.router.add_post("/api/v1/heartbeat", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        save(tmp_path / "credential.json", Credential(url, "x", "ha-tinh", "dong-loc", "quay-01"))
        collector = f"collector: {{url: '{url}', allow_http: true}}\n"
        path = write(tmp_path / "agent.yaml", target("old", listening_port), extra=collector)
        old_version = config_version(path)
        async with Running(load_config(path)) as run:
            await until(lambda: any(p.get("agent", {}).get("config_version") == old_version for p in payloads))
            write(path, target("new", listening_port), extra=collector)
            assert await run.agent.reload() is True
            sent = len(payloads)
            await until(lambda: any("new" in targets_in(p) for p in payloads[sent:]))
        new_version = config_version(path)
        after = payloads[sent:]
        assert after and all(p["agent"]["config_version"] == new_version != old_version for p in after)
        assert payloads[-1]["state"] == "stopping"  # the stop sequence still ends the run
    finally:
        await runner.cleanup()


def targets_in(payload: dict) -> set[str]:
    return {m.get("tags", {}).get("target") for m in payload.get("measurements", [])}
