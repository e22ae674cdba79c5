"""Shared fixtures: the xenstore wire-protocol server and clients connected to it as a domain;
the log events of a test."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.xenstore_server import XenstoreServer


@pytest.fixture
def xs_server(tmp_path: Path) -> Iterator[XenstoreServer]:
    """A running test xenstored with one guest (domid 5) laid out the way libxl does."""
    server = XenstoreServer(str(tmp_path / "xenstored.sock"))
    server.populate_guest(5)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def xs_connect(xs_server: XenstoreServer) -> Iterator[Callable[[int], Any]]:
    """``xs_connect(domid)``: a XenstoreClient over the real C framing, seen as that domain."""
    pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")
    from guestagent.xen.xenstore import XenstoreClient
    from guestagent.xen.xsconn import connect_unix

    clients: list[Any] = []

    def connect(domid: int) -> Any:
        xs_server.next_domids.append(domid)
        client = XenstoreClient(connect_unix(xs_server.path), timeout=5.0)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def log_events(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog event of the test, as dicts, whatever level an earlier test configured
    (structlog's capture; the agent's own configuration is not installed)."""
    import logging

    import structlog
    from structlog.testing import capture_logs


    # structlog configured here (is_configured), so the agent's get_logger keeps the capture;
    # left as found: unconfigured again if it was (the next get_logger sets up the default).
    was_configured = structlog.is_configured()
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as captured:
            yield captured
    finally:
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()
