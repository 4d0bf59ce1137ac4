"""Run one server as a child process, optionally inside a network namespace, and wait until it answers.

A `ServerProcess` starts its argv in a new session (so stop() can signal the whole process group without touching
anything else), sends stdout and stderr to a log file, and is ready when every `Check` succeeds: a TCP connect, or
a DNS query over UDP that gets any answer. With `netns`, the command runs under `ip netns exec NS` and the
readiness checks run from a thread that has joined the same namespace.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000


class ServerStartError(RuntimeError):
    """A server exited or did not answer before its deadline."""


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness condition: `tcp` connects, `dns` gets an answer to a UDP query."""

    proto: Literal["tcp", "dns"]
    host: str
    port: int

    def ok(self, timeout: float = 0.5) -> bool:
        """Return whether the server answers now."""
        try:
            if self.proto == "tcp":
                with socket.create_connection((self.host, self.port), timeout=timeout):
                    return True
            return _dns_answers(self.host, self.port, timeout)
        except OSError:
            return False


def _dns_answers(host: str, port: int, timeout: float) -> bool:
    import dns.exception
    import dns.message
    import dns.query

    try:
        dns.query.udp(dns.message.make_query("ready.invalid.", "A"), host, port=port, timeout=timeout)
        return True
    except dns.exception.Timeout:
        return False


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Call `fn` from a thread inside network namespace `netns` (or directly when None)."""
    if netns is None:
        return fn()
    result: dict[str, object] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{netns}") as ns:
                # setns() moves only this thread: the rest of the process stays where it was.
                if libc.setns(ns.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({netns}) failed")
            result["value"] = fn()
        except BaseException as exc:  # handed back to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]


class ServerProcess:
    """A server child process with a log file, a readiness wait and a clean stop."""

    def __init__(self, name: str, argv: list[str], checks: list[Check], log_file: Path,
                 netns: str | None = None, start_timeout: float = 15.0, env: dict[str, str] | None = None):
        self.name = name
        self.argv = list(argv)
        self.checks = list(checks)
        self.log_file = Path(log_file)
        self.netns = netns
        self.start_timeout = start_timeout
        self.env = env
        self._proc: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return f"ServerProcess({self.name!r}, pid={self.pid}, alive={self.alive})"

    @property
    def command(self) -> list[str]:
        """The full command line, with the `ip netns exec` prefix when in a namespace."""
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return prefix + self.argv

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the process (if not running) and wait until it answers."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process without waiting; `wait_ready()` finishes the job."""
        if self.alive:
            return
        # Something else answering already would make the readiness wait succeed for the wrong server.
        taken = [c for c in self.checks if run_in_netns(self.netns, c.ok)]
        if taken:
            raise ServerStartError(f"{self.name}: {taken} already answer: another server holds the address")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            env = None if self.env is None else {**os.environ, **self.env}
            self._proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True, env=env)
        log.info("started %s pid %s: %s", self.name, self._proc.pid, " ".join(self.command))

    def wait_ready(self) -> None:
        """Wait until every check passes; stop the process and raise ServerStartError if it never does."""
        deadline = time.monotonic() + self.start_timeout
        pending = list(self.checks)
        while pending:
            if not self.alive:
                raise ServerStartError(f"{self.name} exited with {self._exit_code()}:\n{self.log_tail()}")
            pending = [c for c in pending if not run_in_netns(self.netns, c.ok)]
            if pending and time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"{self.name} not answering on {pending} after {self.start_timeout:.0f} s:\n"
                                       f"{self.log_tail()}")
            if pending:
                time.sleep(0.05)

    def request_stop(self) -> None:
        """Send SIGTERM without waiting (lets a caller stop many servers in parallel before `stop()`)."""
        if self._proc is not None:
            self._signal_group(self._proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `timeout`, and reap the process."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session made the child its own group leader
        self._signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %.0f s: killing", self.name, timeout)
            self._signal_group(pgid, signal.SIGKILL)
            proc.wait()
        # Children (dovecot's workers, a shell's job) may outlive the leader: end them too.
        self._signal_group(pgid, signal.SIGKILL)
        log.info("stopped %s (exit %s)", self.name, proc.returncode)

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of the log file."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _exit_code(self) -> int | None:
        return self._proc.returncode if self._proc else None

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
