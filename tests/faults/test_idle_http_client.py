"""An idle HTTP client never holds the event loop (issue 15, item 7).

Seen before the fix: the metrics server accepted a connection and then waited in a blocking
``recv`` with a 0.5 s timeout, so a client that connected and sent nothing stopped the whole
loop (every job, the watchdog, the status socket) for 0.5 s, and again for each such client.

Now a connection with no request yet waits in the loop as its own descriptor (at most 8 of them,
each dropped after a few seconds); the loop goes on serving everyone else meanwhile.
"""

from __future__ import annotations

import socket

from guestagent.daemon.loop import EventLoop
from guestagent.daemon.metrics import MetricsServer


def rounds_until(loop: EventLoop, client: socket.socket, limit: int = 50) -> bytes:
    """Run loop rounds (none waits) until ``client`` has an answer."""
    client.setblocking(False)
    for _ in range(limit):
        loop.run_once(max_wait=0.05)
        try:
            data = client.recv(4096)
        except BlockingIOError:
            continue
        return data
    raise AssertionError("no answer")


def test_an_idle_client_does_not_stop_the_others() -> None:
    loop = EventLoop()
    server = MetricsServer("127.0.0.1:0", lambda: "guestagent_up 1\n", loop=loop)
    loop.add_reader(server.fileno(), server.on_readable)
    port = server.sock.getsockname()[1]
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        loop.run_once(max_wait=0.5)  # the idle connection is accepted; nothing to read yet
        assert server.pending == 1
        with socket.create_connection(("127.0.0.1", port), timeout=5) as other:
            other.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert rounds_until(loop, other).startswith(b"HTTP/1.0 200 OK")
        # The idle one was not given up on while the other was served; it is answered now.
        idle.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert rounds_until(loop, idle).startswith(b"HTTP/1.0 200 OK")
        assert server.pending == 0
    finally:
        idle.close()
        loop.remove_reader(server.fileno())
        server.close()
        loop.close()


def test_idle_clients_are_bounded() -> None:
    loop = EventLoop()
    server = MetricsServer("127.0.0.1:0", lambda: "guestagent_up 1\n", loop=loop)
    loop.add_reader(server.fileno(), server.on_readable)
    port = server.sock.getsockname()[1]
    clients: list[socket.socket] = []
    try:
        for _ in range(20):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            loop.run_once(max_wait=0.5)
            assert server.pending <= MetricsServer.MAX_PENDING
        assert server.pending == MetricsServer.MAX_PENDING
    finally:
        for c in clients:
            c.close()
        loop.remove_reader(server.fileno())
        server.close()
        loop.close()
