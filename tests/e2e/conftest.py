"""Fixtures for the end-to-end tests: the whole pipeline as real processes, always stopped, even on failure."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from e2e.harness import Pipeline
from lab.victoria import available


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    """VM + collector started, the agent enrolled (not yet running); every process stopped afterwards."""
    reason = available()
    if reason:
        pytest.skip(reason)
    pipe = Pipeline(tmp_path)
    try:
        yield pipe.start()
    finally:
        pipe.close()
