"""A real VictoriaMetrics process for tests, benchmarks and the demo (`/usr/bin/victoria-metrics`).

`Victoria(directory, retention="30d")` starts it on a free port of 127.0.0.1 with its storage in `directory`,
`-dedup.minScrapeInterval=1ms` (one sample per series and millisecond: the safety net for a resent batch) and
waits for `/health`. Use it as a context manager (always stopped). `stop()` (SIGTERM) then `start()` again keeps
the port and the data; `freeze()`/`thaw()` send SIGSTOP/SIGCONT. `flush()` makes inserted rows searchable,
`export(match)` returns the series and their samples, `rows_inserted()` reads
`vm_rows_inserted_total{type="influx"}`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

BINARY = "victoria-metrics"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free now on `host`."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def available() -> str | None:
    """Return None when VictoriaMetrics can run here, else why not (a skip reason)."""
    return None if shutil.which(BINARY) else "victoria-metrics is not installed (apt-get install victoria-metrics)"


class Victoria:
    """One VictoriaMetrics process on 127.0.0.1."""

    def __init__(self, directory: str | Path, retention: str = "30d", port: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.directory = Path(directory)
        self.retention = retention
        self.port = port or free_port()
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Return the base URL, e.g. http://127.0.0.1:8428."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "Victoria":
        """Start the process and wait until /health answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "victoria.log", "ab")
        self.process = subprocess.Popen(
            [BINARY, f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self.directory / 'data'}",
             f"-retentionPeriod={self.retention}", "-dedup.minScrapeInterval=1ms", "-search.latencyOffset=0s",
             "-loggerLevel=ERROR", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited ({self.process.returncode}); see {self.directory}/victoria.log")
            try:
                if self._get("/health", timeout=1.0).strip() == "OK":
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"victoria-metrics did not become ready in {timeout} s")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop with SIGTERM (SIGKILL after `timeout`); the data stays."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a frozen process cannot handle SIGTERM
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Stop with SIGKILL."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after freeze()."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def __enter__(self) -> "Victoria":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _get(self, path: str, timeout: float = 10.0, data: dict | None = None) -> str:
        body = urllib.parse.urlencode(data, doseq=True).encode() if data is not None else None
        with urllib.request.urlopen(self.url + path, data=body, timeout=timeout) as response:
            return response.read().decode()

    def flush(self) -> None:
        """Make every inserted row visible to queries and exports (/internal/force_flush)."""
        self._get("/internal/force_flush")

    def export(self, match: str = '{__name__!=""}', flush: bool = True) -> list[dict]:
        """Return /api/v1/export for `match`: [{"metric": {...}, "values": [...], "timestamps": [...]}, ...]."""
        if flush:
            self.flush()
        text = self._get("/api/v1/export", data={"match[]": match})
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def samples(self, match: str = '{__name__!=""}') -> list[tuple[tuple[tuple[str, str], ...], int, float]]:
        """Return every (series labels sorted, timestamp ms, value), sorted; duplicates kept."""
        out = []
        for series in self.export(match):
            labels = tuple(sorted(series["metric"].items()))
            out += [(labels, t, v) for t, v in zip(series["timestamps"], series["values"])]
        return sorted(out)

    def rows_inserted(self, settle: float = 1.2) -> int:
        """Return vm_rows_inserted_total{type="influx"} (samples received over line protocol) once it is stable.

        VictoriaMetrics updates the counter up to about a second after answering a write, so the value is read
        until it stays the same for `settle` seconds (0: read once).
        """
        value = self._rows_inserted_now()
        while settle > 0:
            time.sleep(settle)
            again = self._rows_inserted_now()
            if again == value:
                break
            value = again
        return value

    def _rows_inserted_now(self) -> int:
        for line in self._get("/metrics").splitlines():
            if line.startswith('vm_rows_inserted_total{type="influx"}'):
                return int(float(line.split()[-1]))
        return 0

    def write(self, body: str) -> None:
        """POST line protocol (ms precision) directly, bypassing the collector."""
        request = urllib.request.Request(self.url + "/api/v2/write?precision=ms", data=body.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


__all__ = ["Victoria", "available", "free_port"]
