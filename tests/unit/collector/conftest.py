"""Fixtures shared by the collector's tests: one real VictoriaMetrics per module, a collector app in front of it."""

import pytest

from collector_helpers import collector_client, make_config
from lab.victoria import Victoria, available


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    """One VictoriaMetrics for the module (tests use distinct agents/targets, so they do not see each other)."""
    if available() is not None:
        pytest.skip(available())
    with Victoria(tmp_path_factory.mktemp("vm"), retention="30d") as started:
        yield started


@pytest.fixture
async def client(vm, tmp_path):
    """The collector app (aiohttp's test client) writing to the module's VictoriaMetrics."""
    async with collector_client(make_config(tmp_path, vm.url)) as c:
        yield c
