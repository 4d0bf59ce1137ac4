"""The service units under a real systemd: one container booted for the module (see harness.py)."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from typing import Iterator

import pytest
import yaml

from lab import container as ct
from lab.victoria import Victoria, free_port

from system.harness import (BOX_SITE, BOX_SRC, CMON, HOST_ADDR, PREFIX, PROVINCE, ROOT, SITE, VM_BINARY, System,
                            install_agent, install_collector, install_venv, prepare_tree, skip_reason, wait_health)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    tree = ct.cached_tree()
    timings["tree"] = time.monotonic() - t0
    if not (tree / "usr/bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}").exists():
        pytest.skip(f"the {ct.SUITE} tree has no python{sys.version_info[0]}.{sys.version_info[1]}: "
                    f"this checkout's virtual environment cannot run in it")
    tmp = tmp_path_factory.mktemp("system")
    ct.sweep()  # what a killed earlier run left
    veth = ct.Veth.for_owner(f"{HOST_ADDR}/{PREFIX}")
    binds = [(ROOT, BOX_SRC), (SITE, BOX_SITE), VM_BINARY]  # the checkout and its dependencies: see harness.py
    box = ct.Container(tree, tmp / "box", binds=binds, veth=veth)
    vm = Victoria(tmp / "vm")
    collector: subprocess.Popen | None = None
    try:
        box.mount()
        prepare_tree(box, veth)
        box.boot()
        install_venv(box)
        vm.start()
        port = free_port()
        views_token = secrets.token_urlsafe(16)
        host_config = tmp / "collector.yaml"
        host_config.write_text(yaml.safe_dump({
            "province": PROVINCE, "data_dir": str(tmp / "collector-state"),
            "listen": {"host": HOST_ADDR, "port": port, "allow_http": True},
            "database": {"url": vm.url, "retention": "1y"}, "views_token": views_token}))
        with open(tmp / "collector.log", "ab") as log:
            collector = subprocess.Popen([str(CMON), "--log-level", "info", "collector", "run", "-c",
                                          str(host_config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        url = f"http://{HOST_ADDR}:{port}"
        wait_health(url, collector, tmp / "collector.log")
        system = System(box, vm, url, views_token)
        system.timings = timings
        t1 = time.monotonic()
        install_agent(system, host_config, url)
        install_collector(system)
        timings["install"] = time.monotonic() - t1
        yield system
    finally:
        t2 = time.monotonic()
        try:
            box.close()
        finally:
            if collector is not None and collector.poll() is None:
                collector.send_signal(signal.SIGTERM)
                try:
                    collector.wait(30)
                except subprocess.TimeoutExpired:
                    collector.kill()
                    collector.wait()
            vm.stop()
        timings["close"] = time.monotonic() - t2
        timings["boots"] = box.boots  # type: ignore[assignment]
        (tmp / "timings.json").write_text(json.dumps(timings, indent=1))
        print(f"\ntests/system timings: {json.dumps(timings)}")


