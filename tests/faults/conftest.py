"""Fixtures shared by the fault tests."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import structlog

from guestagent import log


@pytest.fixture
def logfmt() -> Iterator[io.StringIO]:
    """The agent's log lines as the journal gets them (logfmt)."""
    saved = structlog.get_config()
    stream = io.StringIO()
    log.configure(level="info", stream=stream, journal=False)
    try:
        yield stream
    finally:
        structlog.configure(**saved)
