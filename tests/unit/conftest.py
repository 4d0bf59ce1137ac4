"""Shared fixtures for unit tests: one real `Province` (HTTPS, SMTP, IMAP, DNS) on loopback for the session, and a
listening TCP port."""

from __future__ import annotations

import socket
from typing import Iterator

import pytest

from lab.loopback import PROVINCE_ADDRESSES, province_skip_reason
from lab.servers import Province


@pytest.fixture(scope="session")
def province(tmp_path_factory):
    """A running Province on loopback (lab.loopback addresses); always stopped at the end of the session."""
    reason = province_skip_reason()
    if reason:
        pytest.skip(reason)
    with Province(tmp_path_factory.mktemp("province"), PROVINCE_ADDRESSES) as started:
        yield started


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections (the kernel completes them from the backlog)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]
