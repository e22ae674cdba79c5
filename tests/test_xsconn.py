"""The xenstore connection over the C framing: refusals versus broken streams."""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest

pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")

from guestagent.errors import InputError
from guestagent.xen.xsconn import XenstoreConnection


def test_a_write_refused_before_any_byte_leaves_the_connection_usable() -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    conn = XenstoreConnection(fd, "test device")
    for _ in range(2):
        with pytest.raises(OSError) as caught:
            conn.send(4, 1, 0, b"bad\0token\0")
        assert caught.value.errno == errno.ENOSPC
        assert not isinstance(caught.value, ConnectionError)
    conn.close()


def test_oversized_payload_is_refused_before_sending() -> None:
    a, b = socket.socketpair()
    conn = XenstoreConnection(a.fileno(), "test", owner=a)
    with pytest.raises(ValueError, match="exceeds the 4096-byte limit"):
        conn.send(11, 1, 0, b"x" * 4097)
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(1)
    conn.close()
    b.close()


def test_eof_and_oversized_headers_break_the_connection() -> None:
    a, b = socket.socketpair()
    conn = XenstoreConnection(a.fileno(), "test", owner=a)
    b.sendall(struct.pack("<IIII", 2, 1, 0, 5000))
    with pytest.raises(InputError, match="announces 5000 payload bytes"):
        conn.recv(1)
    with pytest.raises(ConnectionError, match="oversized"):
        conn.recv(1)
    conn.close()
    a, b = socket.socketpair()
    conn = XenstoreConnection(a.fileno(), "test", owner=a)
    b.sendall(struct.pack("<IIII", 2, 1, 0, 10) + b"short")
    b.close()
    with pytest.raises(ConnectionError, match="closed by the other end"):
        conn.recv(1)
    conn.close()
    idle, peer = socket.socketpair()
    quiet = XenstoreConnection(idle.fileno(), "idle", owner=idle)
    with pytest.raises(TimeoutError):
        quiet.recv(0.05)
    quiet.close()
    peer.close()


def test_a_signal_during_an_unbounded_wait_runs_its_handler() -> None:
    """A blocked recv must let Python's signal handlers run (SIGTERM, test timeouts)."""
    import signal

    a, b = socket.socketpair()
    conn = XenstoreConnection(a.fileno(), "test", owner=a)

    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        with pytest.raises(Interrupted):
            conn.recv(None)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        conn.close()
        b.close()
