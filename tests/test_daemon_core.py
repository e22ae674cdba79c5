"""The daemon's event loop, sd_notify and resume detection."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestagent.daemon.loop import EventLoop
from guestagent.daemon.resume import ClockSample, ResumeState, detect_resume
from guestagent.daemon.systemd import notify, watchdog_period


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    ev = EventLoop()
    yield ev
    ev.close()


def test_reader_is_called_when_its_fd_is_readable(loop: EventLoop) -> None:
    r, w = os.pipe()
    seen: list[bytes] = []

    def on_read() -> None:
        seen.append(os.read(r, 100))
        loop.stop()

    loop.add_reader(r, on_read)
    loop.call_later(0, lambda: os.write(w, b"event"))
    loop.run()
    assert seen == [b"event"]
    loop.remove_reader(r)
    os.close(r)
    os.close(w)


def test_priority_reader_wakes_on_pollpri_only(loop: EventLoop) -> None:
    """PSI triggers signal with POLLPRI; out-of-band socket data raises the same condition."""
    a, b = socket.socketpair()
    try:
        b.send(b"!", socket.MSG_OOB)
    except OSError:
        pytest.skip("this kernel has no MSG_OOB on Unix sockets")
    woke: list[str] = []
    loop.add_reader(a.fileno(), lambda: (woke.append("pri"), loop.stop()), priority=True)
    loop.run_once(max_wait=5)
    assert woke == ["pri"]
    a.close()
    b.close()


def test_on_error_is_called_once_and_the_descriptor_dropped(loop: EventLoop) -> None:
    """add_reader(on_error=...): a hang-up (here the pipe's writer gone; a PSI trigger reports
    its end as POLLERR with POLLPRI) calls the owner's on_error once, never the reader, and the
    descriptor leaves the poll set at once (without on_error it stays for 32 rounds)."""
    r, w = os.pipe()
    calls: list[str] = []
    loop.add_reader(r, lambda: calls.append("read"), priority=True,
                    on_error=lambda: calls.append("error"))
    os.close(w)
    loop.run_once(max_wait=5)
    assert calls == ["error"] and r not in loop.readers
    loop.run_once(max_wait=0)
    assert calls == ["error"]
    # A reader without on_error is still called on the hang-up, to read it itself.
    r2, w2 = os.pipe()
    loop.add_reader(r2, lambda: calls.append("read"))
    os.close(w2)
    loop.run_once(max_wait=5)
    assert calls == ["error", "read"] and r2 in loop.readers
    loop.remove_reader(r2)
    os.close(r)
    os.close(r2)


def test_signals_are_dispatched_from_the_loop(loop: EventLoop) -> None:
    got: list[str] = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: (got.append("usr1"), loop.stop()))
    loop.call_later(0, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    loop.run()
    assert got == ["usr1"]
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def test_timers_run_in_order_and_periodic_ones_repeat(loop: EventLoop) -> None:
    order: list[str] = []
    ticks: list[int] = []
    loop.call_later(0.02, lambda: order.append("second"))
    loop.call_later(0.0, lambda: order.append("first"))
    cancelled = loop.call_later(0.01, lambda: order.append("never"))
    cancelled.cancel()

    def tick() -> None:
        ticks.append(1)
        if len(ticks) == 3:
            periodic.cancel()
            loop.stop()

    periodic = loop.call_every(0.01, tick)
    loop.run()
    assert order == ["first", "second"]
    assert len(ticks) == 3
    with pytest.raises(ValueError):
        loop.call_every(0, tick)


def test_a_failing_callback_does_not_stop_the_others(loop: EventLoop) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("job exploded")

    loop.call_later(0, broken)
    loop.call_later(0.001, lambda: (ran.append("next"), loop.stop()))
    loop.run()
    assert ran == ["next"]
    assert loop.errors == 1


def test_notify_reaches_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": path})
        assert server.recv(100) == b"READY=1\nSTATUS=serving"
    assert not notify("READY=1", {})


def test_notify_abstract_socket() -> None:
    name = f"guestagent-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert server.recv(100) == b"WATCHDOG=1"


@pytest.mark.parametrize(
    ("env", "period"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "abc"}, None),
        ({}, None),
    ],
)
def test_watchdog_period(env: dict[str, str], period: float) -> None:
    assert watchdog_period(env) == period


def test_resume_is_seen_from_the_clocks_and_the_domain_id() -> None:
    state = ResumeState()
    reason, state = detect_resume(state, ClockSample(100, 100, 1000), "uuid-a")
    assert reason is None
    reason, state = detect_resume(state, ClockSample(110, 110.5, 1010.2), "uuid-a")
    assert reason is None, "half a second of drift is noise"
    reason, state = detect_resume(state, ClockSample(120, 420, 1320), "uuid-a")
    assert reason is not None and "suspended for 300 s" in reason
    reason, state = detect_resume(state, ClockSample(130, 430, 1330), "uuid-b")
    assert reason is not None and "unique-domain-id changed" in reason
    reason, state = detect_resume(state, ClockSample(140, 440, 2340), None)
    assert reason is not None and "wall clock jumped by +1000 s" in reason
    assert state.unique_domain_id == "uuid-b"
