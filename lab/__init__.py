"""The commune-monitor lab: a commune LAN, a dual-WAN commune router, an ISP and a province data center in
network namespaces, for tests, benchmarks and demos.

    with Lab() as lab:
        lab.exec("pc", ["ping", "-c", "3", addresses.IOFFICE_ADDR], check=True)
        imp = lab.impair("wan1", direction="up", delay_ms=40, jitter_ms=5, loss_pct=3, seed=1)
        ...
        imp.stats(); imp.clear()
        lab.cut("wan1"); lab.restore("wan1")          # dead fiber: silent drops, links stay up
        lab.set_wan_link("wan2", up=False)             # carrier loss on rtr's WAN port

``Lab.up()`` builds the network (``lab.topology``) and then, when the package ``lab.servers`` exists, calls
``lab.servers.start_province(lab)`` to start the province services; what it returns is kept as
``lab.province`` and, if it is a context manager, exited by ``down()`` (the namespace processes are killed
anyway). ``Lab.down()`` is idempotent and also runs
at interpreter exit and on SIGTERM/SIGHUP; labs left by a killed process are removed by ``sweep()`` (also run
by ``up()`` for labs whose owner is gone). Needs root.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import shutil
import signal
import subprocess
import tempfile
import threading
from typing import Any

from lab import addresses, topology
from lab.impair import Impairment, cut, restore
from lab.topology import LabError, sweep

__all__ = ["Lab", "LabError", "Impairment", "addresses", "sweep"]

log = logging.getLogger(__name__)


def _exit_on_signal(signum, _frame):
    # Turn SIGTERM/SIGHUP into SystemExit so `with Lab()`, finally blocks and atexit all run.
    raise SystemExit(128 + signum)


def _install_signal_cleanup() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _exit_on_signal)


class Lab:
    """One lab instance with its own namespace prefix; a context manager."""

    def __init__(self, prefix: str | None = None, *, servers: bool = True) -> None:
        self.prefix = prefix
        self.servers = servers
        self.workdir: str | None = None
        self.is_up = False
        self._procs: list[subprocess.Popen] = []
        self._impairments: list[Impairment] = []
        self._next_queue = 1
        self.province: Any = None  # whatever lab.servers.start_province returned

    # --- life cycle -------------------------------------------------------------------------------------------

    def up(self) -> Lab:
        """Create the network (and start the province servers when lab.servers exists); idempotent."""
        if self.is_up:
            return self
        topology.sweep()
        self.prefix = self.prefix or topology.new_prefix()
        self.workdir = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        atexit.register(self.down)
        _install_signal_cleanup()
        self.is_up = True
        try:
            topology.create(self.prefix)
            if self.servers:
                self._start_servers()
        except BaseException:
            self.down()
            raise
        log.info("lab %s up (workdir %s)", self.prefix, self.workdir)
        return self

    def _start_servers(self) -> None:
        try:
            servers = importlib.import_module("lab.servers")
        except ModuleNotFoundError as exc:
            if exc.name != "lab.servers":
                raise
            log.info("lab.servers not available: no province servers")
            return
        self.province = servers.start_province(self)

    def down(self) -> None:
        """Stop everything this lab started and remove its namespaces; idempotent."""
        if not self.is_up:
            return
        self.is_up = False
        if hasattr(self.province, "__exit__"):
            try:
                self.province.__exit__(None, None, None)
            except Exception:
                log.exception("stopping the province servers")
            self.province = None
        for imp in list(self._impairments):
            try:
                imp.clear()
            except Exception:  # the namespaces go away next anyway
                log.exception("clearing %r", imp)
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        topology.destroy(self.prefix)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        atexit.unregister(self.down)
        log.info("lab %s down", self.prefix)

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # --- running things in namespaces -------------------------------------------------------------------------

    def ns(self, role: str) -> str:
        """Return the namespace name of ``role`` (pc, rtr, isp, dc)."""
        if self.prefix is None:
            raise LabError("the lab is not up")
        return topology.ns_name(self.prefix, role)

    def exec(self, role: str, argv: list[str], **kw: Any) -> subprocess.CompletedProcess:
        """Run ``argv`` inside ``role``'s namespace (subprocess.run keywords apply)."""
        return subprocess.run(["ip", "netns", "exec", self.ns(role), *argv], **kw)

    def popen(self, role: str, argv: list[str], **kw: Any) -> subprocess.Popen:
        """Start ``argv`` inside ``role``'s namespace; it is terminated by ``down()``."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(role), *argv], **kw)
        self._procs.append(proc)
        return proc

    # --- impairments ------------------------------------------------------------------------------------------

    def impair(self, link: str, direction: str = "up", *, delay_ms: float = 0.0, jitter_ms: float = 0.0,
               jitter_dist: str = "uniform", loss_pct: float = 0.0, rate_kbit: int | None = None,
               seed: int | None = None, use_holder: bool | None = None) -> Impairment:
        """Impair one direction of ``link`` (lan, wan1, wan2, core); "up" = commune towards province."""
        for imp in self._impairments:
            if (imp.link, imp.direction) == (link, direction):
                raise LabError(f"{link}/{direction} is already impaired by {imp!r}: clear() it first")
        imp = Impairment(self, link, direction, queue_num=self._next_queue, delay_ms=delay_ms,
                         jitter_ms=jitter_ms, jitter_dist=jitter_dist, loss_pct=loss_pct,
                         rate_kbit=rate_kbit, seed=seed, use_holder=use_holder)
        self._next_queue += 1
        self._impairments.append(imp)
        return imp.start()

    def _forget_impairment(self, imp: Impairment) -> None:
        if imp in self._impairments:
            self._impairments.remove(imp)

    def cut(self, link: str) -> None:
        """Make ``link`` a dead fiber: everything on it is dropped silently."""
        cut(self, link)

    def restore(self, link: str) -> None:
        """Undo ``cut(link)``."""
        restore(self, link)

    def set_wan_link(self, wan: str, up: bool) -> None:
        """Take rtr's WAN port down (carrier loss) or up again, re-adding its routes."""
        topology.set_wan_link(self.prefix, wan, up)
