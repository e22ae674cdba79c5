"""The devices job's reading of its own domid: a xenstore value like any other input."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest

from guestagent.config import load
from guestagent.daemon.loop import EventLoop
from guestagent.devices.hotplug import HotplugMonitor, HotplugUnavailableError, UdevNetlink
from guestagent.devices.job import DevicesJob, own_domid, pending_vectors
from guestagent.devices.model import DeviceReport
from guestagent.host import Host
from guestagent.hostfs import HostFS
from guestagent.xen.xenstore import XenstoreError


class Reader:
    def __init__(self, value: bytes | None) -> None:
        self.value = value

    def read(self, path: str) -> bytes:
        assert path == "domid"
        if self.value is None:
            raise XenstoreError(errno.ENOENT, path, "XS_READ")
        return self.value


@pytest.mark.parametrize(
    ("value", "domid"),
    [
        (b"5", 5),
        (b"32751\n", 32751),
        (b"0", None),  # Dom0 is not a guest
        (b"32752", None),  # DOMID_SELF and above are not real domains
        (b"-3", None),
        (b"5; rm -rf /", None),
        (b"\xff\xfe", None),
        (None, None),
    ],
)
def test_own_domid(value: bytes | None, domid: int | None) -> None:
    assert own_domid(Reader(value)) == domid


# --- vectors the driver has not requested yet -------------------------------------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VF = "0000:00:05.0"  # devices-2node: MSI-X 29, 30, 31; no node of its own


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_pass_with_vectors_not_requested_yet_is_repeated_with_backoff(tmp_path: Path) -> None:
    """Seen on real Xen: a NIC's vectors get /proc/irq entries only when its interface comes up,
    which no udev event reports. The job repeats its pass (30 s, then doubling) until they are
    pinned, then stops repeating."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "devices-2node", root, symlinks=True)
    parked = tmp_path / "irq30"
    shutil.move(str(root / "proc/irq/30"), str(parked))
    toml = tmp_path / "guestagent.toml"
    toml.write_text(f'[devices]\nnode_overrides = ["{VF}=1"]\nirqbalance = "pin"\n')
    config = load(str(toml), str(tmp_path / "conf.d"))

    def no_udev(hostfs: HostFS) -> None:
        raise HotplugUnavailableError("no udev in this test")

    clock = FakeClock()
    loop = EventLoop(clock=clock)
    hub = SimpleNamespace(client=lambda: None, watch=lambda path, cb: False)
    ctx = SimpleNamespace(loop=loop, hostfs=HostFS(str(root)), config=config, xenstore=hub,
                          role="guest", host=Host(HostFS(str(root)), open_udev=no_udev))
    job = DevicesJob()
    try:
        job.start(ctx)  # type: ignore[arg-type]
        irq = root / "proc/irq"
        assert (irq / "29/smp_affinity_list").read_text() == "2-3"
        assert job._retry is not None and job._retry.when == 1030.0
        # Still down after 30 s: the next repeat waits 60 s.
        clock.now = 1030.0
        loop.run_once(0)
        assert job._retry is not None and job._retry.when == 1090.0
        # The interface came up: the next pass pins the vector and stops repeating.
        shutil.move(str(parked), str(irq / "30"))
        clock.now = 1090.0
        loop.run_once(0)
        assert (irq / "30/smp_affinity_list").read_text() == "2-3"
        assert job._retry is None
        job.stop()
        assert (irq / "30/smp_affinity_list").read_text().strip() == "0-3"
    finally:
        loop.close()


def test_pending_vectors_names_only_the_not_requested_vectors() -> None:
    reports = [
        DeviceReport(bdf=VF, skipped=["IRQ 29: already on 2-3"], pending_irqs=[30]),
        DeviceReport(bdf="0000:00:06.0", skipped=["IRQ 33: kernel-managed, left alone"]),
    ]
    assert pending_vectors(reports) == [f"{VF} IRQ 30"]
    assert pending_vectors([]) == []


def test_status_is_the_last_pass_without_a_rescan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``guestagent status`` and every metrics scrape call ``status()``: it returns the last
    pass's reports, kept current by hotplug events, and reads no PCI device itself."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "devices-2node", root, symlinks=True)
    config = load(str(tmp_path / "none.toml"), str(tmp_path / "conf.d"))

    def no_udev(hostfs: HostFS) -> None:
        raise HotplugUnavailableError("no udev in this test")

    loop = EventLoop(clock=FakeClock())
    hub = SimpleNamespace(client=lambda: None, watch=lambda path, cb: False)
    ctx = SimpleNamespace(loop=loop, hostfs=HostFS(str(root)), config=config, xenstore=hub,
                          role="guest", host=Host(HostFS(str(root)), open_udev=no_udev))
    job = DevicesJob()
    try:
        job.start(ctx)  # type: ignore[arg-type]
        before = [d["bdf"] for d in job.status()["devices"]]
        assert VF in before and before == sorted(before)
        binder = job._binder
        assert binder is not None
        scans: list[bool] = []
        monkeypatch.setattr(binder, "scan", lambda apply: scans.append(apply) or [])
        for _ in range(3):
            assert [d["bdf"] for d in job.status()["devices"]] == before
        assert scans == []
        # A hotplug removal is in the next status at once, still without a scan.
        binder.handle_event("remove", VF)
        assert VF not in [d["bdf"] for d in job.status()["devices"]]
        assert scans == []
    finally:
        job.stop()
        loop.close()


def test_a_pass_forgets_devices_that_are_gone(tmp_path: Path) -> None:
    from guestagent.devices.apply import DevicesJob as DeviceBinder

    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "devices-2node", root, symlinks=True)
    binder = DeviceBinder(HostFS(str(root)))
    assert VF in {r.bdf for r in binder.scan(apply=False)}
    entry = root / "sys/bus/pci/devices" / VF  # hot-removed between two passes
    if entry.is_symlink():
        entry.unlink()
    else:
        shutil.rmtree(entry)
    binder.scan(apply=False)
    assert VF not in binder.reports


# --- the hotplug monitor's socket, closed at stop ------------------------------------------------


class PyudevLikeMonitor:
    """What the job uses of pyudev's monitor (no close: libudev closes at the last reference)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def poll(self, timeout: float = 0) -> None:
        return None


def started_job(tmp_path: Path, monitor: HotplugMonitor) -> tuple[DevicesJob, EventLoop]:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "devices-2node", root, symlinks=True)
    config = load(str(tmp_path / "none.toml"), str(tmp_path / "conf.d"))
    loop = EventLoop(clock=FakeClock())
    hub = SimpleNamespace(client=lambda: None, watch=lambda path, cb: False)
    ctx = SimpleNamespace(loop=loop, hostfs=HostFS(str(root)), config=config, xenstore=hub,
                          role="guest", host=Host(HostFS(str(root)), open_udev=lambda fs: monitor))
    job = DevicesJob()
    job.start(ctx)  # type: ignore[arg-type]
    return job, loop


def test_stop_closes_the_netlink_socket(tmp_path: Path) -> None:
    """The job's udev socket is closed when it stops, not left to the garbage collector (a
    socketpair end stands in for the netlink socket: UdevNetlink only reads and closes it)."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fd = ours.fileno()
    job, loop = started_job(tmp_path, HotplugMonitor(UdevNetlink(ours, "pci")))
    try:
        assert fd in loop.readers
        job.stop()
        assert fd not in loop.readers
        assert ours.fileno() == -1  # closed
        with pytest.raises(OSError):
            os.fstat(fd)
    finally:
        peer.close()
        loop.close()


def test_stop_drops_pyudevs_monitor_which_has_no_close(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    fake = PyudevLikeMonitor(sock)
    gone = weakref.ref(fake)
    job, loop = started_job(tmp_path, HotplugMonitor(fake))
    del fake
    try:
        job.stop()
        assert gone() is None  # the last reference: libudev's unref closes the socket
        job.stop()  # a second stop does nothing
    finally:
        sock.close()
        loop.close()


class QueuedEvents:
    """A pyudev-like monitor that hands out the events queued in it, readable while any is."""

    def __init__(self) -> None:
        self.ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.queue: list[SimpleNamespace] = []

    def put(self, action: str, bdf: str) -> None:
        self.queue.append(SimpleNamespace(action=action, subsystem="pci", sys_name=bdf))
        self.peer.send(b"x")

    def fileno(self) -> int:
        return self.ours.fileno()

    def poll(self, timeout: float = 0) -> SimpleNamespace | None:
        if not self.queue:
            return None
        self.ours.recv(1)
        return self.queue.pop(0)

    def close(self) -> None:
        self.ours.close()
        self.peer.close()


def test_a_hotplugged_device_whose_vectors_wait_gets_the_repeat_pass(tmp_path: Path) -> None:
    """Issue 16 item 3: a udev event for a device whose driver has not requested its vectors yet
    (a NIC attached with its interface down) schedules the repeat pass, as a full pass does;
    before, the event's reports were dropped and the vectors stayed unpinned."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "devices-2node", root, symlinks=True)
    toml = tmp_path / "guestagent.toml"
    toml.write_text(f'[devices]\nnode_overrides = ["{VF}=1"]\nirqbalance = "pin"\n')
    config = load(str(toml), str(tmp_path / "conf.d"))
    monitor = QueuedEvents()
    clock = FakeClock()
    loop = EventLoop(clock=clock)
    hub = SimpleNamespace(client=lambda: None, watch=lambda path, cb: False)
    host = Host(HostFS(str(root)), open_udev=lambda fs: HotplugMonitor(monitor))
    ctx = SimpleNamespace(loop=loop, hostfs=HostFS(str(root)), config=config, xenstore=hub,
                          role="guest", host=host)
    job = DevicesJob()
    try:
        job.start(ctx)  # type: ignore[arg-type]
        assert job._retry is None  # every vector pinned at start
        # The driver is re-bound and its interface is down: vector 30 has no /proc/irq entry.
        parked = tmp_path / "irq30"
        shutil.move(str(root / "proc/irq/30"), str(parked))
        monitor.put("bind", VF)
        clock.now = 1005.0
        loop.run_once(0)
        assert job._retry is not None and job._retry.when == 1035.0
        # An event for a device without waiting vectors leaves that repeat alone.
        retry = job._retry
        monitor.put("bind", "0000:00:03.0")
        loop.run_once(0)
        assert job._retry is retry
        # The interface came up: the repeat pins vector 30 and stops repeating.
        shutil.move(str(parked), str(root / "proc/irq/30"))
        clock.now = 1035.0
        loop.run_once(0)
        assert (root / "proc/irq/30/smp_affinity_list").read_text() == "2-3"
        assert job._retry is None
        job.stop()
    finally:
        loop.close()
        monitor.close()
