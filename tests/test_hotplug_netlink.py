"""The devices job's udev monitor read from udev's netlink group directly (guestagent.devices.
hotplug.UdevNetlink): the message format and sender checks of libudev's monitor, and the same
kernel filter, compared instruction for instruction with the one libudev attaches for pyudev."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from guestagent.devices.hotplug import (
    UDEV_MAGIC,
    HotplugMonitor,
    HotplugUnavailableError,
    UdevEvent,
    UdevNetlink,
    parse_udev_message,
    string_hash32,
    subsystem_filter,
)
from guestagent.host import Host
from guestagent.hostfs import HostFS

REPO = Path(__file__).resolve().parents[1]
VF = "0000:00:04.0"


def udev_message(properties: dict[str, str], subsystem: str | None = None,
                 magic: int = UDEV_MAGIC, prefix: bytes = b"libudev\0") -> bytes:
    """A datagram as udevd sends it to its group (systemd's ``device_monitor_send_device``)."""
    body = b"".join(f"{k}={v}".encode() + b"\0" for k, v in properties.items())
    subsystem = properties.get("SUBSYSTEM", "") if subsystem is None else subsystem
    return (prefix + struct.pack(">I", magic) + struct.pack("=III", 40, 40, len(body))
            + struct.pack(">IIII", string_hash32(subsystem), 0, 0, 0) + body)


def pci_event(action: str = "add", bdf: str = VF) -> dict[str, str]:
    return {"ACTION": action, "DEVPATH": f"/devices/pci0000:00/{bdf}", "SUBSYSTEM": "pci",
            "PCI_SLOT_NAME": bdf, "SEQNUM": "1234"}


def test_a_udev_message_is_the_event_pyudev_would_give() -> None:
    event = parse_udev_message(udev_message(pci_event("bind")), sender_groups=2, sender_uid=0)
    assert event == UdevEvent("bind", "pci", f"/devices/pci0000:00/{VF}", pci_event("bind"))
    assert event.sys_name == VF


@pytest.mark.parametrize(("why", "data", "groups", "uid"), [
    ("unicast from a process", udev_message(pci_event()), 0, 0),
    ("sender not root", udev_message(pci_event()), 2, 1000),
    ("no credentials", udev_message(pci_event()), 2, None),
    ("wrong magic", udev_message(pci_event(), magic=0xCAFEFEED), 2, 0),
    ("kernel's format", b"add@/devices/pci0000:00/x\0ACTION=add\0DEVPATH=/devices/x\0" * 2, 2, 0),
    ("properties past the end", udev_message(pci_event())[:60], 2, 0),
    ("no ACTION", udev_message({"DEVPATH": "/devices/x", "SUBSYSTEM": "pci"}), 2, 0),
    ("shorter than a header", b"libudev\0", 2, 0),
])
def test_what_libudev_drops_is_dropped(why: str, data: bytes, groups: int,
                                       uid: int | None) -> None:
    assert parse_udev_message(data, groups, uid) is None, why


def test_string_hash32_is_murmurhash2_as_udevd_computes_it() -> None:
    if sys.byteorder != "little":
        pytest.skip("the values below are a little-endian host's")
    # Values of systemd's string_hash32 (MurmurHash2, seed 0) on x86-64: "pci" is also the k of
    # the JEQ in the filter libudev attaches (the comparison with pyudev's below).
    assert string_hash32("pci") == 0x59163B92
    assert string_hash32("block") == 0xF0031DB7
    assert string_hash32("") == 0


def attached_filter(fd: int) -> bytes:
    """The classic BPF program on a socket (``SO_GET_FILTER``; its length is in instructions)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    count = ctypes.c_uint(64)
    buf = ctypes.create_string_buffer(8 * 64)
    if libc.getsockopt(fd, socket.SOL_SOCKET, 26, buf, ctypes.byref(count)) != 0:
        pytest.skip(f"SO_GET_FILTER refused (errno {ctypes.get_errno()})")
    return buf.raw[:8 * count.value]


def test_the_kernel_filter_is_the_one_libudev_attaches_for_pci() -> None:
    pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")
    pyudev = pytest.importorskip("pyudev")
    try:
        theirs = pyudev.Monitor.from_netlink(pyudev.Context())
        theirs.filter_by(subsystem="pci")
        theirs.start()
        ours = UdevNetlink.open("pci")
    except OSError as e:
        pytest.skip(f"no uevent netlink here: {e}")
    try:
        program = attached_filter(ours.fileno())
        assert program == subsystem_filter("pci")
        assert program == attached_filter(theirs.fileno())
    finally:
        ours.close()


def test_the_hosts_monitor_reads_netlink_itself_when_the_c_extension_is_there(
        tmp_path: Path) -> None:
    pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")
    try:
        monitor = Host(HostFS(str(tmp_path))).udev_monitor()
    except Exception as e:  # the reason is the skip's
        pytest.skip(f"no uevent netlink here: {e}")
    assert isinstance(monitor, HotplugMonitor)
    reader = monitor._monitor
    assert isinstance(reader, UdevNetlink)
    try:
        assert monitor.receive() == []  # non-blocking: nothing queued is no events
        assert reader.sock.getsockname()[1] == 2  # udev's group, not the kernel's
    finally:
        reader.close()


def test_the_hosts_monitor_without_the_c_extension_is_pyudevs(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No C extension: pyudev's monitor, as before (here pyudev is missing too, which says so)."""
    monkeypatch.setitem(sys.modules, "guestagent.xen._xenc", None)
    monkeypatch.setitem(sys.modules, "pyudev", None)
    with pytest.raises(HotplugUnavailableError, match="pyudev is not installed"):
        Host(HostFS(str(tmp_path))).udev_monitor()


#: In a network namespace of its own (uevent multicasts stay in their namespace): a udevd-like
#: sender multicasts a block event, a message whose SUBSYSTEM says pci but whose header hash is
#: block's (only the kernel filter drops that one) and a PCI bind. Our monitor gets the bind; so
#: does libudev's (through pyudev, when installed), which checks the messages are in its format.
IN_NETNS = """
import json, socket, sys
sys.path.insert(0, sys.argv[1])
from tests.test_hotplug_netlink import pci_event, udev_message
from guestagent.devices.hotplug import UdevNetlink
try:
    import pyudev
    libudev = pyudev.Monitor.from_netlink(pyudev.Context())
    libudev.filter_by(subsystem="pci")
    libudev.start()
except ImportError:
    libudev = None
monitor = UdevNetlink.open("pci")
sender = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 15)
for data in (udev_message({"ACTION": "add", "DEVPATH": "/devices/virtual/block/loop9",
                           "SUBSYSTEM": "block"}),
             udev_message(pci_event("add", "0000:00:05.0"), subsystem="block"),
             udev_message(pci_event("bind"))):
    sender.sendto(data, (0, 2))
seen = {"ours": [], "libudev": None}
while (event := monitor.poll(0)) is not None:
    seen["ours"].append([event.action, event.sys_name, event.subsystem])
if libudev is not None:
    seen["libudev"] = []
    while (device := libudev.poll(timeout=0.5)) is not None:
        seen["libudev"].append([device.action, device.sys_name, device.subsystem])
print(json.dumps(seen))
"""


def test_events_multicast_to_udevs_group_reach_the_monitor_filtered() -> None:
    pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1)")
    done = subprocess.run([unshare, "--net", sys.executable, "-c", IN_NETNS, str(REPO)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and ("unshare failed" in done.stderr or "Operation not permitted"
                                 in done.stderr):
        pytest.skip(f"no network namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["ours"] == [["bind", VF, "pci"]]
    assert seen["libudev"] in (None, seen["ours"]), seen
