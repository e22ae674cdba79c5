"""Fixtures shared by the fault tests."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from guestagent import config as config_mod
from guestagent import log


@pytest.fixture
def logfmt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[io.StringIO]:
    """The agent's log lines as the journal gets them (logfmt), and no configuration files of
    this machine: the main file and conf.d are the test's own (none until a test writes one)."""
    monkeypatch.setattr(config_mod, "MAIN_FILE", str(tmp_path / "guestagent.toml"))
    monkeypatch.setattr(config_mod, "CONF_DIR", str(tmp_path / "conf.d"))
    saved = structlog.get_config()
    stream = io.StringIO()
    log.configure(level="info", stream=stream, journal=False)
    try:
        yield stream
    finally:
        structlog.configure(**saved)
