"""The xenstore client against tests/xenstore_server.py over a real Unix socket.

The connections are ``guestagent.xen.xsconn.connect_unix`` (the C framing); only if that module
cannot be imported do the tests fall back to a small pure-Python framing transport below.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestagent.errors import InputError
from guestagent.xen import xs_wire as w
from guestagent.xen.xenstore import (
    PayloadTooLargeError,
    Transaction,
    XenstoreClient,
    XenstoreError,
)
from guestagent.xen.xs_wire import Permission, WatchEvent
from tests.xenstore_server import (
    DIRECTORY,
    DIRECTORY_PART,
    ERROR,
    GET_PERMS,
    READ,
    TRANSACTION_END,
    TRANSACTION_START,
    WATCH,
    WATCH_EVENT,
    WRITE,
    Intercept,
    Request,
    XenstoreServer,
    frame,
)

try:
    from guestagent.xen import xsconn
except ImportError as exc:  # C extension not built
    xsconn = None  # type: ignore[assignment]
    XSCONN_MISSING = f"guestagent.xen.xsconn unavailable: {exc}"
else:
    XSCONN_MISSING = ""

GUEST = 5
HOME = f"/local/domain/{GUEST}"


class _FallbackTransport:
    """Minimal framing over a Unix socket, used only when xsconn cannot be imported."""

    _HDR = struct.Struct("<IIII")

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)

    def send(self, msg_type: int, req_id: int, tx_id: int, payload: bytes) -> None:
        if len(payload) > w.XENSTORE_PAYLOAD_MAX:
            raise ValueError("payload too large")
        self._sock.sendall(self._HDR.pack(msg_type, req_id, tx_id, len(payload)) + payload)

    def _exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self._sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def recv(self, timeout: float | None = None) -> w.WireMessage:
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            raise TimeoutError("no message")
        msg_type, req_id, tx_id, length = self._HDR.unpack(self._exact(16))
        if length > w.XENSTORE_PAYLOAD_MAX:
            raise InputError("fallback transport", "oversized payload", length)
        return w.WireMessage(msg_type, req_id, tx_id, self._exact(length))

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()


def _open(path: str) -> w.Transport:
    if xsconn is not None:
        return xsconn.connect_unix(path)
    return _FallbackTransport(path)


Connect = Callable[..., XenstoreClient]


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now (pytest swaps and closes capture streams)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def _logging_to_live_stderr() -> None:
    # The client logs dropped packets. Another test may have left structlog bound to a capture
    # stream that is closed by now; log to the live stderr instead.
    from guestagent import log

    log.configure(stream=_CurrentStderr())


@pytest.fixture
def server() -> Iterator[XenstoreServer]:
    # Unix socket paths are limited to 108 bytes: keep it short rather than under tmp_path.
    directory = tempfile.mkdtemp(prefix="xs")
    srv = XenstoreServer(f"{directory}/socket", default_domid=GUEST)
    srv.populate_guest(GUEST)
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def connect(server: XenstoreServer) -> Iterator[Connect]:
    clients: list[XenstoreClient] = []

    def make(domid: int = GUEST, timeout: float = 5.0) -> XenstoreClient:
        server.next_domids.append(domid)
        client = XenstoreClient(_open(server.path), timeout=timeout)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(connect: Connect) -> XenstoreClient:
    return connect()


@pytest.fixture
def dom0(connect: Connect) -> XenstoreClient:
    return connect(domid=0)


# --- the transport -------------------------------------------------------------------------------


@pytest.mark.skipif(xsconn is None, reason=XSCONN_MISSING or "xsconn present")
def test_through_the_real_connection(server: XenstoreServer) -> None:
    assert xsconn is not None
    conn = xsconn.connect_unix(server.path)
    with XenstoreClient(conn) as client:
        assert isinstance(client._transport, xsconn.XenstoreConnection)
        client.write("data/real", "via C framing")
        assert client.read(f"{HOME}/data/real") == b"via C framing"
        client.watch("data/real", "r")
        assert client.read_events(2.0) == [WatchEvent("data/real", "r")]


# --- basic operations ----------------------------------------------------------------------------


def test_read_write_relative_and_absolute(client: XenstoreClient, server: XenstoreServer) -> None:
    client.write("data/x", "hello")
    assert client.read("data/x") == b"hello"
    assert client.read_str(f"{HOME}/data/x") == "hello"
    node = server.get_node(f"{HOME}/data/x")
    assert node is not None and node.value == b"hello"
    assert client.read_str("memory/target") == "524288"
    client.write("data/bin", b"\x00\x01")
    assert client.read("data/bin") == b"\x00\x01"
    with pytest.raises(InputError) as info:
        client.read_str("data/bin")
    assert info.value.source == "data/bin"


def test_write_creates_parents_owned_by_writer(client: XenstoreClient) -> None:
    client.write("data/a/b/c", b"1")
    assert client.directory("data/a") == ["b"]
    assert client.read("data/a/b") == b""
    assert client.get_perms("data/a/b/c") == [Permission("n", GUEST)]


def test_mkdir_rm_exists(client: XenstoreClient) -> None:
    client.mkdir("data/d")
    client.mkdir("data/d")  # exists already: fine
    assert client.exists("data/d")
    client.write("data/d/e", b"x")
    client.rm("data/d")
    assert not client.exists("data/d")
    assert not client.exists("data/d/e")
    client.rm("data/d")  # missing but parent exists: fine
    with pytest.raises(XenstoreError) as info:
        client.rm("data/nope/deeper")
    assert info.value.errno == errno.ENOENT


def test_directory(client: XenstoreClient) -> None:
    assert client.directory(HOME) == [
        "cpu", "memory", "control", "device", "name", "domid", "data", "attr", "feature",
        "drivers", "error",
    ]
    assert client.directory("memory") == ["static-max", "target"]
    assert client.directory("data") == []


def test_get_domain_path(client: XenstoreClient) -> None:
    assert client.get_domain_path(GUEST) == HOME
    assert client.get_domain_path(0) == "/local/domain/0"


def test_invalid_path_is_refused_before_sending(
    client: XenstoreClient, server: XenstoreServer
) -> None:
    before = len(server.requests)
    for bad in ("data//x", "data/", "", "da ta"):
        with pytest.raises(InputError):
            client.read(bad)
    assert len(server.requests) == before


# --- big directories -----------------------------------------------------------------------------


def _big_dir(server: XenstoreServer, count: int) -> list[str]:
    names = [f"child-{i:04d}-abcdefghij" for i in range(count)]
    for name in names:
        server.set_node(f"{HOME}/data/big/{name}", b"v")
    return names


def test_big_directory_uses_directory_part(client: XenstoreClient, server: XenstoreServer) -> None:
    names = _big_dir(server, 600)  # 600 * 22 bytes: four XS_DIRECTORY_PART replies
    assert client.directory("data/big") == names
    types = [r.type for r in server.requests]
    assert types.count(DIRECTORY) == 1
    assert types.count(DIRECTORY_PART) == 4


def test_directory_part_restarts_when_the_node_changes(
    client: XenstoreClient, server: XenstoreServer
) -> None:
    names = _big_dir(server, 400)
    calls: list[int] = []

    def change_on_second(req: Request) -> Intercept:
        calls.append(req.req_id)
        if len(calls) == 2:
            server.set_node(f"{HOME}/data/big/zz-late", b"v")
        return Intercept()

    server.intercept(DIRECTORY_PART, change_on_second, count=2)
    assert client.directory("data/big") == [*names, "zz-late"]


def test_directory_e2big_without_directory_part(
    client: XenstoreClient, server: XenstoreServer
) -> None:
    _big_dir(server, 300)
    server.intercept(
        DIRECTORY_PART,
        lambda req: Intercept(reply=frame(ERROR, req.req_id, 0, b"EINVAL\0"), process=False),
    )
    with pytest.raises(XenstoreError) as info:
        client.directory("data/big")
    assert info.value.errno == errno.E2BIG
    assert info.value.path == "data/big"


# --- permissions ---------------------------------------------------------------------------------


def test_perms(client: XenstoreClient) -> None:
    assert client.get_perms("data") == [Permission("n", GUEST)]
    assert client.get_perms("memory/target") == [Permission("n", 0), Permission("r", GUEST)]
    client.write("data/shared", b"1")
    client.set_perms("data/shared", [Permission("n", GUEST), Permission("r", 0)])
    assert client.get_perms("data/shared") == [Permission("n", GUEST), Permission("r", 0)]


def test_guest_cannot_give_away_or_take_ownership(client: XenstoreClient) -> None:
    client.write("data/mine", b"1")
    with pytest.raises(XenstoreError) as info:
        client.set_perms("data/mine", [Permission("n", 0)])
    assert info.value.errno == errno.EPERM
    with pytest.raises(XenstoreError) as info:
        client.set_perms("memory/target", [Permission("b", GUEST)])
    assert info.value.errno == errno.EACCES


def test_write_outside_owned_paths_is_eacces(
    client: XenstoreClient, server: XenstoreServer
) -> None:
    with pytest.raises(XenstoreError) as info:
        client.write("memory/target", "1")
    exc = info.value
    assert (exc.errno, exc.name, exc.path, exc.op) == (13, "EACCES", "memory/target", "XS_WRITE")
    assert isinstance(exc, OSError)
    assert "memory/target" in str(exc) and "EACCES" in str(exc)
    with pytest.raises(XenstoreError) as info:
        client.write("/local/domain/0/evil", "1")
    assert info.value.errno == errno.EACCES
    node = server.get_node(f"{HOME}/memory/target")
    assert node is not None and node.value == b"524288"


# --- error replies -------------------------------------------------------------------------------


def test_error_replies_map_to_errno(client: XenstoreClient, server: XenstoreServer) -> None:
    with pytest.raises(XenstoreError) as info:
        client.read("data/missing")
    assert (info.value.errno, info.value.name) == (errno.ENOENT, "ENOENT")
    server.intercept(
        READ, lambda req: Intercept(reply=frame(ERROR, req.req_id, 0, b"EQUOTA\0"), process=False)
    )
    with pytest.raises(XenstoreError) as info:
        client.read("data")
    assert (info.value.errno, info.value.name) == (errno.EIO, "EQUOTA")
    assert client.read("name") == b"guest"  # the connection carries on


def test_guest_value_quota(client: XenstoreClient) -> None:
    with pytest.raises(XenstoreError) as info:
        client.write("data/big", b"x" * 3000)
    assert info.value.errno == errno.ENOSPC


# --- payload limit -------------------------------------------------------------------------------


def test_payload_limit_checked_before_sending(
    client: XenstoreClient, dom0: XenstoreClient, server: XenstoreServer
) -> None:
    before = len(server.requests)
    with pytest.raises(PayloadTooLargeError) as info:
        client.write("data/huge", b"x" * 5000)
    assert info.value.source == "data/huge"
    assert "4096" in str(info.value)
    assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)
    assert len(server.requests) == before  # nothing was sent
    assert client.read("name") == b"guest"  # and the connection is alive
    path = f"{HOME}/data/exact"
    value = b"y" * (w.XENSTORE_PAYLOAD_MAX - len(path) - 1)  # exactly 4096 bytes of payload
    dom0.write(path, value)
    assert dom0.read(path) == value


def test_payload_limit_covers_every_request(client: XenstoreClient, server: XenstoreServer) -> None:
    before = len(server.requests)
    with pytest.raises(PayloadTooLargeError, match="XS_SET_PERMS payload of"):
        client.set_perms("data", [Permission("r", i) for i in range(1000)])
    with pytest.raises(PayloadTooLargeError, match="XS_WRITE"):
        client.run_transaction(lambda tx: tx.write("data/t", b"z" * 4096), retries=0)
    assert [r.type for r in server.requests[before:]] == [TRANSACTION_START, TRANSACTION_END]


# --- transactions --------------------------------------------------------------------------------


def test_transaction_commit(client: XenstoreClient, dom0: XenstoreClient) -> None:
    with client.transaction() as tx:
        tx.write("data/t/a", "1")
        tx.write("data/t/b", "2")
        assert tx.read("data/t/a") == b"1"
        assert not dom0.exists(f"{HOME}/data/t")  # invisible until commit
    assert tx.ended
    assert client.directory("data/t") == ["a", "b"]


def test_transaction_aborts_on_exception(client: XenstoreClient, server: XenstoreServer) -> None:
    with pytest.raises(RuntimeError, match="boom"), client.transaction() as tx:
        tx.write("data/t/a", "1")
        raise RuntimeError("boom")
    assert not client.exists("data/t/a")
    ends = [r.payload for r in server.requests if r.type == TRANSACTION_END]
    assert ends == [b"F\0"]
    with pytest.raises(RuntimeError, match="already ended"):
        tx.read("data")


def test_transaction_conflict_is_retried(client: XenstoreClient, dom0: XenstoreClient) -> None:
    attempts: list[int] = []

    def body(tx: Transaction) -> str:
        attempts.append(tx.tx_id)
        value = tx.read_str("data/counter") if tx.exists("data/counter") else "0"
        if len(attempts) == 1:
            dom0.write(f"{HOME}/data/other", "meanwhile")  # commits first: ours conflicts
        tx.write("data/counter", str(int(value) + 1))
        return value

    assert client.run_transaction(body) == "0"
    assert len(attempts) == 2 and attempts[0] != attempts[1]
    assert client.read_str("data/counter") == "1"
    assert client.read_str("data/other") == "meanwhile"


def test_transaction_conflict_retries_are_bounded(
    client: XenstoreClient, dom0: XenstoreClient
) -> None:
    attempts: list[int] = []

    def always_conflicts(tx: Transaction) -> None:
        attempts.append(1)
        tx.write("data/x", "mine")
        dom0.write(f"{HOME}/data/y", str(len(attempts)))

    with pytest.raises(XenstoreError) as info:
        client.run_transaction(always_conflicts, retries=2)
    assert info.value.errno == errno.EAGAIN
    assert len(attempts) == 3
    assert not client.exists("data/x")


# --- watches -------------------------------------------------------------------------------------


def _events(client: XenstoreClient, count: int, timeout: float = 3.0) -> list[WatchEvent]:
    """Collect ``count`` events (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    events: list[WatchEvent] = []
    while len(events) < count and time.monotonic() < deadline:
        events += client.read_events(deadline - time.monotonic())
    return events


def test_watch_fires_once_at_once_and_on_change(
    client: XenstoreClient, dom0: XenstoreClient
) -> None:
    client.watch("memory/target", "tgt")
    assert _events(client, 1) == [WatchEvent("memory/target", "tgt")]
    dom0.write(f"{HOME}/memory/target", "262144")
    assert _events(client, 1) == [WatchEvent("memory/target", "tgt")]  # relative, as registered
    client.watch(f"{HOME}/control", "ctl")
    assert _events(client, 1) == [WatchEvent(f"{HOME}/control", "ctl")]
    dom0.write(f"{HOME}/control/shutdown", "poweroff")
    assert _events(client, 1) == [WatchEvent(f"{HOME}/control/shutdown", "ctl")]
    assert client.read_events(0.1) == []
    assert client.watches == {("memory/target", "tgt"), (f"{HOME}/control", "ctl")}


def test_watch_events_interleaved_with_replies(
    client: XenstoreClient, server: XenstoreServer
) -> None:
    client.watch("data", "d")
    assert _events(client, 1) == [WatchEvent("data", "d")]
    # xenstored queues the event for our own write ahead of the write's reply.
    client.write("data/x", "1")
    assert client.pending_events() == [WatchEvent("data/x", "d")]
    # Events (and a second one) arriving between a request and its reply.
    server.intercept(
        READ,
        lambda req: Intercept(before=[
            frame(WATCH_EVENT, 0, 0, b"data/y\0d\0"),
            frame(WATCH_EVENT, 0, 0, b"data/z\0d\0"),
        ]),
    )
    assert client.read("data/x") == b"1"
    assert client.pending_events() == [WatchEvent("data/y", "d"), WatchEvent("data/z", "d")]
    assert client.pending_events() == []


def test_first_watch_event_ahead_of_the_watch_reply(
    client: XenstoreClient, server: XenstoreServer
) -> None:
    # Through /dev/xen/xenbus the kernel's watch thread may queue the first event before the
    # reply it synthesises.
    server.intercept(
        WATCH,
        lambda req: Intercept(before=[frame(WATCH_EVENT, 0, 0, b"data\0early\0")]),
    )
    client.watch("data", "early")
    assert client.pending_events() == [WatchEvent("data", "early")]
    assert _events(client, 1) == [WatchEvent("data", "early")]  # xenstored's own first event


def test_watch_usable_from_a_poll_loop(client: XenstoreClient, dom0: XenstoreClient) -> None:
    client.watch("data", "d")
    poller = select.poll()
    poller.register(client.fileno(), select.POLLIN)
    seen: list[WatchEvent] = []
    deadline = time.monotonic() + 3
    while not seen and time.monotonic() < deadline:
        seen += client.pending_events()
        if not seen and poller.poll(100):
            seen += client.read_events(0)
    assert seen == [WatchEvent("data", "d")]
    dom0.write(f"{HOME}/data/p", "1")
    assert poller.poll(3000)
    assert client.read_events(0) == [WatchEvent("data/p", "d")]


def test_unwatch(client: XenstoreClient, dom0: XenstoreClient) -> None:
    client.watch("data", "d")
    client.unwatch("data", "d")
    client.pending_events()
    dom0.write(f"{HOME}/data/q", "1")
    assert client.read_events(0.3) == []
    with pytest.raises(XenstoreError) as info:
        client.unwatch("data", "d")
    assert info.value.errno == errno.ENOENT


def test_watch_reply_synthesised_by_an_old_xenbus_kernel(
    client: XenstoreClient, server: XenstoreServer
) -> None:
    # Linux < 4.x answered WATCH on /dev/xen/xenbus with req_id 0 and tx_id 0.
    server.intercept(WATCH, lambda req: Intercept(reply=frame(WATCH, 0, 0, b"OK\0")))
    client.watch("data", "d")
    assert _events(client, 1) == [WatchEvent("data", "d")]
    assert client.read("name") == b"guest"


def test_rm_fires_watches_below(client: XenstoreClient, dom0: XenstoreClient) -> None:
    client.write("data/sub/leaf", "1")
    client.watch("data/sub/leaf", "leaf")
    assert _events(client, 1) == [WatchEvent("data/sub/leaf", "leaf")]
    dom0.rm(f"{HOME}/data/sub")
    assert _events(client, 1) == [WatchEvent("data/sub/leaf", "leaf")]


def test_transaction_changes_fire_on_commit(client: XenstoreClient, dom0: XenstoreClient) -> None:
    dom0.watch(f"{HOME}/data", "w")
    assert _events(dom0, 1) == [WatchEvent(f"{HOME}/data", "w")]
    with client.transaction() as tx:
        tx.write("data/c", "1")
        assert dom0.read_events(0.2) == []
    assert _events(dom0, 1) == [WatchEvent(f"{HOME}/data/c", "w")]


# --- unexpected and malformed packets ------------------------------------------------------------


def test_unexpected_packets_are_dropped_and_survived(
    client: XenstoreClient, server: XenstoreServer
) -> None:
    server.intercept(
        READ,
        lambda req: Intercept(before=[
            frame(READ, req.req_id + 1000, 0, b"reply for nobody"),
            frame(77, 0, 0, b""),
            frame(WATCH_EVENT, 0, 0, b"no-token-field\0"),  # malformed event: dropped
        ]),
    )
    assert client.read("name") == b"guest"
    assert client.dropped_packets == 3
    assert client.pending_events() == []
    server.inject(frame(WRITE, 4242, 0, b"OK\0"))  # while nobody waits
    assert client.read_events(0.3) == []
    assert client.dropped_packets == 4
    assert client.read_str("domid") == str(GUEST)


def test_malformed_reply_is_an_input_error_naming_the_message(
    client: XenstoreClient, server: XenstoreServer
) -> None:
    server.intercept(
        GET_PERMS,
        lambda req: Intercept(reply=frame(GET_PERMS, req.req_id, 0, b"x9\0"), process=False),
    )
    with pytest.raises(InputError) as info:
        client.get_perms("data")
    assert "XS_GET_PERMS reply (req_id" in info.value.source
    assert "for data" in info.value.source
    assert client.get_perms("data") == [Permission("n", GUEST)]  # stream still in sync


def test_reply_of_the_wrong_type_is_an_input_error(
    client: XenstoreClient, server: XenstoreServer
) -> None:
    server.intercept(
        READ, lambda req: Intercept(reply=frame(DIRECTORY, req.req_id, 0, b"a\0"), process=False)
    )
    with pytest.raises(InputError, match="wrong type") as info:
        client.read("name")
    assert info.value.source.startswith("XS_DIRECTORY reply (req_id")


def test_oversized_reply_breaks_the_connection_cleanly(
    client: XenstoreClient, server: XenstoreServer
) -> None:
    server.intercept(
        READ,
        lambda req: Intercept(reply=frame(READ, req.req_id, 0, b"", length=5000), process=False),
    )
    with pytest.raises(InputError) as info:
        client.read("name")
    assert "5000" in str(info.value)
    with pytest.raises(ConnectionError, match="unusable"):
        client.read("name")


def test_no_reply_times_out_and_a_late_reply_is_dropped(
    connect: Connect, server: XenstoreServer
) -> None:
    client = connect(timeout=0.3)
    held: list[Request] = []

    def swallow(req: Request) -> Intercept:
        held.append(req)
        return Intercept(reply=b"", process=False)

    server.intercept(READ, swallow)
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        client.read("name")
    assert time.monotonic() - started < 5  # generous: the test machine may be loaded
    assert info.value.filename == "name"
    server.inject(frame(READ, held[0].req_id, 0, b"late"))
    assert client.read("name") == b"guest"
    assert client.dropped_packets == 1


def test_closed_connection_from_the_server(client: XenstoreClient, server: XenstoreServer) -> None:
    assert client.read("name") == b"guest"
    for conn in server.connections:
        conn.kill()
    with pytest.raises(ConnectionError):
        client.read("name")
    with pytest.raises(ConnectionError):
        client.read_events(0)


def test_request_ids_are_unique_and_never_zero(
    client: XenstoreClient, server: XenstoreServer
) -> None:
    for _ in range(5):
        client.read("name")
    ids = [r.req_id for r in server.requests]
    assert 0 not in ids and len(set(ids)) == len(ids)


# --- opening, queue bounds, threads --------------------------------------------------------------


@pytest.mark.skipif(xsconn is None, reason=XSCONN_MISSING or "xsconn present")
def test_open_finds_the_socket_under_the_host_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from guestagent.hostfs import HostFS
    from guestagent.xen.errors import NotOnXen

    monkeypatch.delenv("XENSTORED_PATH", raising=False)
    root = tempfile.mkdtemp(prefix="xr")
    try:
        with pytest.raises(NotOnXen):
            XenstoreClient.open(HostFS(root))
        os.makedirs(f"{root}/run/xenstored")
        with XenstoreServer(f"{root}/run/xenstored/socket", default_domid=GUEST) as srv:
            srv.populate_guest(GUEST)
            with XenstoreClient.open(HostFS(root), timeout=2.0) as client:
                assert client.timeout == 2.0
                assert client.read_str("name") == "guest"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_event_queue_is_bounded(server: XenstoreServer) -> None:
    server.next_domids.append(GUEST)
    with XenstoreClient(_open(server.path), timeout=5.0, max_events=2) as client:
        client.watch("data", "d")
        for name in ("a", "b", "c"):
            client.write(f"data/{name}", "1")  # each event arrives ahead of the write's reply
        assert client.pending_events() == [WatchEvent("data/b", "d"), WatchEvent("data/c", "d")]
        assert client.dropped_events == 2


def test_one_client_shared_by_threads(client: XenstoreClient) -> None:
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for step in range(25):
                client.write(f"data/t{index}", str(step))
                assert client.read_str(f"data/t{index}") == str(step)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(client.directory("data")) == ["t0", "t1", "t2", "t3"]


# --- the client over arbitrary replies (hypothesis) ----------------------------------------------


class _ScriptedTransport:
    """Answers each request with the next scripted (type, payload, echo req_id?) message."""

    def __init__(self, replies: list[tuple[int, bytes, bool]]) -> None:
        self.replies = deque(replies)
        self.last_req_id = 0

    def send(self, msg_type: int, req_id: int, tx_id: int, payload: bytes) -> None:
        self.last_req_id = req_id

    def recv(self, timeout: float | None = None) -> w.WireMessage:
        if not self.replies:
            time.sleep(min(timeout or 0.0, 0.005))
            raise TimeoutError("script exhausted")
        msg_type, payload, echo = self.replies.popleft()
        return w.WireMessage(msg_type, self.last_req_id if echo else 0, 0, payload)

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


_OPERATIONS: list[Callable[[XenstoreClient], object]] = [
    lambda c: c.read("data/x"),
    lambda c: c.read_str("data/x"),
    lambda c: c.write("data/x", b"v"),
    lambda c: c.mkdir("data/x"),
    lambda c: c.rm("data/x"),
    lambda c: c.directory("data"),
    lambda c: c.get_perms("data"),
    lambda c: c.set_perms("data", [Permission("n", 5)]),
    lambda c: c.get_domain_path(5),
    lambda c: c.watch("data", "tok"),
    lambda c: c.unwatch("data", "tok"),
    lambda c: c.start_transaction(),
    lambda c: c.read_events(0.0),
    lambda c: c.run_transaction(lambda tx: tx.read("data"), retries=1),
]
_REPLY_TYPES = [*range(0, 24), 99, 0xFFFF]
_REPLY_PIECES = [b"\0", b"OK", b"E2BIG", b"EAGAIN", b"ENOENT", b"EXYZ", b"7", b"a", b"r5", b"/x",
                 b"\xff", b"T", b"data", b"/local/domain/5", b"tok"]


@settings(max_examples=300, deadline=None)
@given(
    op=st.sampled_from(range(len(_OPERATIONS))),
    replies=st.lists(
        st.tuples(
            st.sampled_from(_REPLY_TYPES),
            st.one_of(st.binary(max_size=40),
                      st.lists(st.sampled_from(_REPLY_PIECES), max_size=8).map(b"".join)),
            st.booleans(),
        ),
        max_size=6,
    ),
)
def test_client_survives_any_reply(op: int, replies: list[tuple[int, bytes, bool]]) -> None:
    client = XenstoreClient(_ScriptedTransport(replies), timeout=0.02)
    with contextlib.suppress(InputError, XenstoreError, TimeoutError):
        _OPERATIONS[op](client)
