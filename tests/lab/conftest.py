"""Fixtures for the lab tests: a network lab per session, one with the province servers per module, and small TCP
helpers run inside the lab.

The ``lab`` (network only) and ``lab_with_servers`` fixtures skip (with the reason) when this machine cannot run
the lab and always tear the lab down. The helpers run tiny Python servers in the dc namespace and clients in the
pc namespace.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

import pytest

from lab import Lab, addresses as A

WHOAMI_PORT = 7000
BLAST_PORT = 7001

# dc: answer every TCP connection with the peer address the province sees, then close.
WHOAMI_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()
while True:
    c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()
"""

# dc: send the number of bytes the client asks for (a decimal line), then close.
BLAST_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()
while True:
    c, _ = s.accept(); n = int(c.makefile().readline())
    c.sendall(b"x" * n); c.close()
"""

# pc: connect (optionally from a source address / with a tos byte), retrying until the server listens;
# print what came back, or for a download the bytes and seconds from first byte to EOF.
CLIENT = """
import socket, sys, time
addr, port, src, tos, nbytes = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
deadline = time.monotonic() + 5
while True:
    s = socket.socket(); s.settimeout(3)
    if src: s.bind((src, 0))
    if tos: s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
    try:
        s.connect((addr, port)); break
    except ConnectionRefusedError:
        s.close()
        if time.monotonic() > deadline: raise
        time.sleep(0.05)
if not nbytes:
    print(s.recv(100).decode()); sys.exit()
s.sendall(b"%d\\n" % nbytes); s.settimeout(30)
got = len(s.recv(65536)); t0 = time.monotonic()
while chunk := s.recv(65536): got += len(chunk)
print(got, time.monotonic() - t0)
"""


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, iptables, tc)"
    check = subprocess.run([sys.executable, "-m", "lab", "check"], capture_output=True, text=True)
    if check.returncode != 0:
        return f"`python -m lab check` failed: {check.stdout.strip()} {check.stderr.strip()}"
    return None


@pytest.fixture(scope="session")
def lab_supported() -> None:
    """Skip, with the reason, where this machine cannot run the lab."""
    reason = _lab_unavailable()
    if reason:
        pytest.skip(reason)


@contextmanager
def running_lab(servers: bool) -> Iterator[Lab]:
    """Bring a Lab up (with the province servers or not) and always tear it down, even if up() fails half-way."""
    the_lab = Lab(servers=servers)
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture(scope="session")
def lab(lab_supported):
    """A running lab (network only, no province servers), torn down at the end of the session."""
    with running_lab(servers=False) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def lab_with_servers(lab_supported):
    """A running lab with the province servers, torn down at the end of the module."""
    with running_lab(servers=True) as the_lab:
        yield the_lab


@pytest.fixture(scope="session")
def dc_servers(lab):
    """Start the whoami and blast servers in dc (killed by lab.down())."""
    for code, port in ((WHOAMI_SERVER, WHOAMI_PORT), (BLAST_SERVER, BLAST_PORT)):
        lab.popen("dc", [sys.executable, "-c", code, A.INTERNET_ADDR, str(port)])


def pc_client(lab, port: int, *, src: str = "", tos: int = 0, nbytes: int = 0, timeout: float = 30) -> str:
    """Run the TCP client in pc against dc's reference host and return its output."""
    proc = lab.exec("pc", [sys.executable, "-c", CLIENT, A.INTERNET_ADDR, str(port), src, str(tos), str(nbytes)],
                    capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def whoami(lab, dc_servers):
    """Return a function giving the source address dc sees for a connection from pc."""
    return lambda src="", tos=0: pc_client(lab, WHOAMI_PORT, src=src, tos=tos)


@pytest.fixture
def download_kbit(lab, dc_servers):
    """Return a function downloading ``nbytes`` from dc to pc and giving the rate in kbit/s."""
    def download(nbytes: int) -> float:
        got, seconds = pc_client(lab, BLAST_PORT, nbytes=nbytes).split()
        assert int(got) == nbytes
        return int(got) * 8 / float(seconds) / 1000
    return download

