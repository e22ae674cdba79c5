"""The watchdog timeout the daemon asks systemd for: the unit's while a job moves memory or
xenstore is lost, the idle one otherwise (guestagent.daemon.watchdog), and the feeds that go with
it, on a fake clock with a real NOTIFY_SOCKET."""

from __future__ import annotations

import shutil
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guestagent.config import Config, defaults
from guestagent.daemon.loop import EventLoop
from guestagent.daemon.service import Daemon
from guestagent.daemon.watchdog import watchdog_timeout
from guestagent.errors import GuestAgentError
from guestagent.hostfs import HostFS

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("unit_s, idle_s, running, lost, want", [
    (180.0, 720.0, [], False, 720.0),
    (180.0, 720.0, ["topology", "devices"], False, 720.0),
    (180.0, 720.0, ["topology", "balloon"], False, 180.0),
    (180.0, 720.0, ["tiering"], False, 180.0),
    (180.0, 720.0, ["topology"], True, 180.0),  # reconnecting: the give-up must bite soon
    (180.0, 0.0, ["topology"], False, 180.0),  # 0: keep the unit's
    (180.0, 60.0, [], False, 180.0),  # never shorter than the unit's
    (1200.0, 720.0, [], False, 1200.0),
])
def test_watchdog_timeout(unit_s: float, idle_s: float, running: list[str], lost: bool,
                          want: float) -> None:
    timeout, why = watchdog_timeout(unit_s, idle_s, running, lost)
    assert timeout == want and why


def test_the_reason_names_the_jobs_that_move_memory() -> None:
    assert watchdog_timeout(180.0, 720.0, ["tiering", "balloon"], False)[1] == (
        "the balloon and tiering job moves memory")


class Job:
    """A job that does nothing, by name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def start(self, ctx: Any) -> None:
        pass

    def stop(self) -> None:
        pass

    def reload(self, config: Config) -> None:
        pass

    def republish(self, reason: str) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {}


def no_xenstore() -> None:
    raise GuestAgentError("no xenstore in this test")


class Bed:
    """A daemon on the PV guest fixture, on a fake clock, without xenstore unless ``connect``
    gives one; ``jobs`` are the names the next (re)load makes, each by ``make_job``."""

    def __init__(self, tmp_path: Path, jobs: list[str], idle_s: float = 720.0,
                 connect: Callable[[], Any] = no_xenstore,
                 make_job: Callable[[str], Job] = Job) -> None:
        root = tmp_path / "root"
        shutil.copytree(FIXTURES / "pv-guest", root, symlinks=True)
        self.jobs = jobs
        self.idle_s = idle_s
        self.now = [1000.0]
        self.loop = EventLoop(clock=lambda: self.now[0])
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(tmp_path / "notify"))
        self.notify.setblocking(False)
        self.daemon = Daemon(HostFS(str(root)), self.config(), self.config,
                             lambda cfg, role: [make_job(n) for n in self.jobs],
                             "guest", loop=self.loop, xenstore_connect=connect,
                             release_memory=lambda: None)

    def close(self) -> None:
        self.daemon.shutdown("test")
        self.loop.close()
        self.notify.close()

    def config(self) -> Config:
        cfg = defaults()
        cfg.values["agent"]["state_dir"] = "/run/guestagent"
        cfg.values["agent"]["idle_watchdog_seconds"] = self.idle_s
        return cfg

    def sent(self) -> list[str]:
        got = []
        while True:
            try:
                got.append(self.notify.recv(4096).decode())
            except BlockingIOError:
                return got

    def run_for(self, seconds: float) -> list[float]:
        """Run the loop over ``seconds`` of fake time, wakeup by wakeup; when it fed the
        watchdog (fake time since the start of this run)."""
        start = self.now[0]
        fed: list[float] = []
        while True:
            timeout = self.loop._next_timeout()
            assert timeout is not None
            if self.now[0] + timeout > start + seconds:
                self.now[0] = start + seconds
                return fed
            self.now[0] += timeout
            self.loop.run_once(max_wait=0)
            if any(m.startswith("WATCHDOG=1") for m in self.sent()):
                fed.append(round(self.now[0] - start, 1))


@pytest.fixture
def signals_kept() -> Iterator[None]:
    """The daemon's start installs signal handlers: the test's are put back after it."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, signals_kept: None) -> Path:
    """NOTIFY_SOCKET and WATCHDOG_USEC as the unit's WatchdogSec=3min sets them."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "180000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    return tmp_path


def test_an_idle_daemon_asks_for_12_min_and_feeds_every_6(watched: Path) -> None:
    bed = Bed(watched, ["topology", "devices"])
    try:
        bed.daemon.start()
        assert bed.sent() == ["READY=1\nSTATUS=jobs: topology, devices",
                              "WATCHDOG=1\nWATCHDOG_USEC=720000000"]
        assert bed.daemon.status()["watchdog_timeout_s"] == 720.0
        fed = bed.run_for(3600)
        assert fed == [360.0 * i for i in range(1, 11)], fed
    finally:
        bed.close()


def test_a_daemon_that_moves_memory_keeps_the_units_timeout(watched: Path) -> None:
    bed = Bed(watched, ["topology", "balloon"])
    try:
        bed.daemon.start()
        assert not any("WATCHDOG_USEC" in m for m in bed.sent())
        fed = bed.run_for(3600)
        assert len(fed) == 41 and fed[0] == 0.0, fed  # at once, then every 90 s
        assert not any("WATCHDOG_USEC" in m for m in bed.sent())
    finally:
        bed.close()


def test_reload_and_a_jobs_end_move_between_the_timeouts(watched: Path) -> None:
    """Turning the balloon on asks for the unit's timeout with a feed, at once; turning it off
    again, or the job's end, asks for the idle one."""
    bed = Bed(watched, ["topology"])
    try:
        bed.daemon.start()
        assert "WATCHDOG=1\nWATCHDOG_USEC=720000000" in bed.sent()
        bed.run_for(100)
        bed.jobs = ["topology", "balloon"]
        bed.daemon.reload()
        assert "WATCHDOG=1\nWATCHDOG_USEC=180000000" in bed.sent()
        assert bed.daemon.status()["watchdog_timeout_s"] == 180.0
        fed = bed.run_for(400)
        assert fed[:4] == [90.0, 180.0, 270.0, 360.0], fed
        bed.jobs = ["topology"]
        bed.daemon.reload()
        assert "WATCHDOG=1\nWATCHDOG_USEC=720000000" in bed.sent()
        assert bed.run_for(359) == []
        bed.jobs = ["topology", "tiering"]
        bed.daemon.reload()
        assert "WATCHDOG=1\nWATCHDOG_USEC=180000000" in bed.sent()
        bed.daemon.end_job("tiering", "gave up in this test")  # stopped from the loop
        bed.loop.run_once(max_wait=0)
        assert "WATCHDOG=1\nWATCHDOG_USEC=720000000" in bed.sent()
    finally:
        bed.close()


def test_idle_watchdog_seconds_0_keeps_the_units(watched: Path) -> None:
    bed = Bed(watched, ["topology"], idle_s=0.0)
    try:
        bed.daemon.start()
        assert not any("WATCHDOG_USEC" in m for m in bed.sent())
        assert len(bed.run_for(3600)) == 41
    finally:
        bed.close()


def test_no_watchdog_no_feeds(watched: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC")
    bed = Bed(watched, ["topology"])
    try:
        bed.daemon.start()
        assert bed.sent() == ["READY=1\nSTATUS=jobs: topology"]
        assert bed.run_for(3600) == []
        assert bed.daemon.status()["watchdog_timeout_s"] is None
    finally:
        bed.close()


def test_watch_events_read_during_start_are_delivered_by_start(tmp_path: Path,
                                                               signals_kept: None) -> None:
    """A watch's first firing that arrives while a job's start waits for a reply is read off
    the connection then; start delivers it, rather than the first timer's wakeup (seen on Xen:
    the devices job's hint watch handled 360 s after start, inside the footprint window)."""
    from guestagent.xen.xenstore import XenstoreClient
    from guestagent.xen.xsconn import connect_unix
    from tests.xenstore_server import XenstoreServer

    xs_path = str(tmp_path / "xenstored.sock")
    server = XenstoreServer(xs_path)
    server.populate_guest(5)
    server.default_domid = 5
    server.start()
    fired: list[str] = []

    class Watcher(Job):
        def start(self, ctx: Any) -> None:
            ctx.xenstore.watch("data", fired.append)
            ctx.xenstore.client().read("domid")  # the watch's first firing arrives meanwhile

    bed = Bed(tmp_path, ["watcher"], make_job=Watcher,
              connect=lambda: XenstoreClient(connect_unix(xs_path), timeout=5.0))
    try:
        bed.daemon.start()
        assert fired == ["data"], "the first firing waits for the loop"
    finally:
        bed.close()
        server.stop()
