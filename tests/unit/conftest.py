"""Shared fixtures for unit tests: one real `Province` (HTTPS, SMTP, IMAP, DNS) on loopback for the session."""

from __future__ import annotations

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
