"""PCI hotplug as an event source: a udev monitor with a ``fileno()`` for the daemon's poll loop.

The devices job's monitor (``Host.udev_monitor``) reads udev's netlink group itself
(:class:`UdevNetlink`: a socket, a kernel filter that passes only ``pci`` events, the message
format and the sender checks of libudev's monitor), which costs nothing the daemon has not
loaded already; pyudev's monitor, through libudev and ctypes (about 0.9 MiB resident,
benchmarks/README.md), is used where the C extension that attaches the filter is not built.
Events become ``(action, bdf)`` pairs; :func:`dispatch` hands them to
:meth:`DevicesJob.handle_event`, which re-evaluates that one device. Anything that is not a PCI
add/remove/bind/unbind is ignored.
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

from guestagent.devices.apply import DevicesJob
from guestagent.devices.model import DeviceReport, is_bdf
from guestagent.errors import GuestAgentError
from guestagent.lazyimport import import_pyudev

ACTIONS = ("add", "remove", "bind", "unbind")


class HotplugUnavailableError(GuestAgentError):
    """No udev monitor can be made here (pyudev or libudev missing, no netlink)."""


def event_key(event: Any) -> tuple[str, str] | None:
    """``(action, bdf)`` for a pyudev-like device event of interest, else None.

    Uses only ``action``, ``subsystem`` and ``sys_name`` (falling back to the last component of
    ``device_path``), so tests can feed plain objects.
    """
    action = getattr(event, "action", None)
    if action not in ACTIONS:
        return None
    subsystem = getattr(event, "subsystem", "pci")
    if subsystem not in (None, "pci"):
        return None
    name = getattr(event, "sys_name", None)
    if not name:
        path = str(getattr(event, "device_path", "") or "")
        name = path.rstrip("/").rsplit("/", 1)[-1]
    if not isinstance(name, str) or not is_bdf(name):
        return None
    return str(action), name


def dispatch(job: DevicesJob, event: Any) -> DeviceReport | None:
    """Feed one udev event to the job; events not about a PCI function are ignored."""
    key = event_key(event)
    if key is None:
        return None
    action, bdf = key
    return job.handle_event(action, bdf)


# ---------------------------------------------------------------- udev's netlink messages

#: The kernel's uevent netlink family; udevd re-sends each event it has processed to group 2
#: (libudev's "udev" monitor; group 1 is the kernel's raw events, before udev's rules ran).
NETLINK_KOBJECT_UEVENT = 15
UDEV_GROUP = 2
#: libudev's ``monitor_netlink_header`` (systemd, src/libsystemd/sd-device/device-monitor.c): the
#: prefix "libudev", the magic (network order), header size, properties offset and length (host
#: order), then hashes for kernel filters (network order): subsystem, devtype, tag bloom.
UDEV_PREFIX = b"libudev\0"
UDEV_MAGIC = 0xFEEDCAFE
UDEV_HEADER = struct.Struct("=8s4sIII")
MAGIC_OFFSET = 8
SUBSYSTEM_HASH_OFFSET = 24
#: libudev's receive buffer: a longer message is truncated, and dropped.
UDEV_MESSAGE_MAX = 8192
#: ``struct ucred`` (pid, uid, gid) of SCM_CREDENTIALS.
UCRED = struct.Struct("=iII")


@dataclass(frozen=True)
class UdevEvent:
    """One device event as udevd sent it: its ``ACTION``, ``SUBSYSTEM``, ``DEVPATH`` and every
    property (what :func:`event_key` reads of a pyudev device, by the same names)."""

    action: str
    subsystem: str
    device_path: str
    properties: dict[str, str]

    @property
    def sys_name(self) -> str:
        return self.device_path.rstrip("/").rsplit("/", 1)[-1]


def udev_properties(data: bytes) -> dict[str, str] | None:
    """The ``KEY=value`` properties of a message in udevd's format (prefix, magic, properties
    inside the message), else None."""
    if len(data) < 32:
        return None
    prefix, magic, _size, offset, length = UDEV_HEADER.unpack_from(data)
    if prefix != UDEV_PREFIX or magic != UDEV_MAGIC.to_bytes(4, "big"):
        return None
    if offset < 32 or offset + length > len(data):
        return None
    properties: dict[str, str] = {}
    for item in data[offset:offset + length].split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            properties[key.decode(errors="replace")] = value.decode(errors="replace")
    return properties


def parse_udev_message(data: bytes, sender_groups: int,
                       sender_uid: int | None) -> UdevEvent | None:
    """The event in one datagram of udev's netlink group, or None for what libudev's monitor
    drops too: a message not multicast (a process's unicast), one without root's credentials
    (``sender_uid``; None: none came), one not in udevd's format, one without an action or a
    device path."""
    if sender_groups == 0 or sender_uid != 0:
        return None
    properties = udev_properties(data)
    if properties is None or not properties.get("ACTION") or not properties.get("DEVPATH"):
        return None
    return UdevEvent(properties["ACTION"], properties.get("SUBSYSTEM", ""),
                     properties["DEVPATH"], properties)


def sender_uid(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The sender's uid in ``recvmsg``'s ancillary data (SCM_CREDENTIALS), None without it."""
    for level, kind, value in ancillary:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS) \
                and len(value) >= UCRED.size:
            return int(UCRED.unpack_from(value)[1])
    return None


def string_hash32(text: str) -> int:
    """MurmurHash2 with seed 0 of the string's bytes, read in host order: the hash udevd puts in
    the header for a kernel filter to compare (systemd's ``string_hash32``)."""
    data = text.encode()
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = len(data) & mask
    whole = len(data) - len(data) % 4
    for i in range(0, whole, 4):
        k = (int.from_bytes(data[i:i + 4], sys.byteorder) * m) & mask
        k = ((k ^ (k >> 24)) * m) & mask
        h = ((h * m) & mask) ^ k
    tail = data[whole:]
    if tail:
        for i in reversed(range(len(tail))):
            h ^= tail[i] << (8 * i)
        h = (h * m) & mask
    h = ((h ^ (h >> 13)) * m) & mask
    return h ^ (h >> 15)


#: Classic BPF: ``struct sock_filter`` (code, jt, jf, k) and the opcodes libudev's filter uses.
SOCK_FILTER = struct.Struct("=HBBI")
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06
SO_ATTACH_FILTER = 26


def subsystem_filter(subsystem: str) -> bytes:
    """The socket filter libudev attaches for ``filter_by(subsystem=...)``, instruction for
    instruction: a message without udev's magic passes, one whose subsystem hash is not
    ``subsystem``'s is dropped in the kernel (so other devices' events never wake the daemon)."""
    program = [
        (BPF_LD_W_ABS, 0, 0, MAGIC_OFFSET),
        (BPF_JEQ_K, 1, 0, UDEV_MAGIC),
        (BPF_RET_K, 0, 0, 0xFFFFFFFF),
        (BPF_LD_W_ABS, 0, 0, SUBSYSTEM_HASH_OFFSET),
        (BPF_JEQ_K, 0, 1, string_hash32(subsystem)),
        (BPF_RET_K, 0, 0, 0xFFFFFFFF),
        (BPF_RET_K, 0, 0, 0),
        (BPF_RET_K, 0, 0, 0xFFFFFFFF),
    ]
    return b"".join(SOCK_FILTER.pack(*ins) for ins in program)


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """``SO_ATTACH_FILTER``: its ``struct sock_fprog`` holds the program's address, which the C
    extension's cffi gives (the kernel copies the program before the call returns). ImportError
    when the C extension is not built."""
    from guestagent.xen._xenc import ffi

    buffer = bytearray(program)
    pointer = ffi.from_buffer(buffer)
    address = int(ffi.cast("uintptr_t", pointer))
    fprog = struct.pack("@HP", len(program) // SOCK_FILTER.size, address)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class UdevNetlink:
    """udev's events of one subsystem from its netlink group, with a pyudev monitor's
    ``fileno()`` and ``poll(timeout=0)`` (what :class:`HotplugMonitor` uses of one)."""

    def __init__(self, sock: socket.socket, subsystem: str) -> None:
        self.sock, self.subsystem = sock, subsystem

    @classmethod
    def open(cls, subsystem: str = "pci") -> UdevNetlink:
        """Bound to udev's group, credentials on, the kernel filter attached. OSError where
        netlink is refused, ImportError without the C extension (see :func:`attach_filter`)."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC
                             | socket.SOCK_NONBLOCK, NETLINK_KOBJECT_UEVENT)
        try:
            attach_filter(sock, subsystem_filter(subsystem))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind((0, 1 << (UDEV_GROUP - 1)))
        except BaseException:
            sock.close()
            raise
        return cls(sock, subsystem)

    def fileno(self) -> int:
        return self.sock.fileno()

    def poll(self, timeout: float = 0) -> UdevEvent | None:
        """The next queued event of the subsystem, or None when none is queued (never blocks:
        ``timeout`` is there for pyudev's signature; the daemon reads when ``fileno()`` is
        readable)."""
        while True:
            try:
                data, ancillary, flags, address = self.sock.recvmsg(
                    UDEV_MESSAGE_MAX, socket.CMSG_SPACE(UCRED.size))
            except (BlockingIOError, InterruptedError):
                return None
            if flags & socket.MSG_TRUNC:
                continue  # longer than libudev reads: dropped, as libudev drops it
            groups = address[1] if isinstance(address, tuple) and len(address) == 2 else 0
            event = parse_udev_message(data, groups, sender_uid(ancillary))
            if event is not None and event.subsystem == self.subsystem:
                return event

    def close(self) -> None:
        """Close the netlink socket (again: nothing)."""
        self.sock.close()


class HotplugMonitor:
    """A netlink udev monitor filtered to the ``pci`` subsystem: a :class:`UdevNetlink`, or
    pyudev's (:meth:`open`)."""

    def __init__(self, monitor: Any) -> None:
        self._monitor = monitor

    @classmethod
    def open(cls) -> HotplugMonitor:
        """pyudev's monitor (it loads libudev through ctypes)."""
        try:
            pyudev = import_pyudev()  # without ctypes.util and subprocess until used
        except ImportError:
            raise HotplugUnavailableError(
                "pyudev is not installed (pip install pyudev): PCI hotplug is not followed"
            ) from None
        try:
            context = pyudev.Context()
            monitor = pyudev.Monitor.from_netlink(context)
            monitor.filter_by(subsystem="pci")
            monitor.start()
        except (ImportError, OSError) as e:
            raise HotplugUnavailableError(
                f"udev monitor unavailable ({e}): PCI hotplug is not followed"
            ) from None
        return cls(monitor)

    def fileno(self) -> int:
        return int(self._monitor.fileno())

    def close(self) -> None:
        """Close the monitor's socket now, not when the garbage collector gets to it: a
        :class:`UdevNetlink` is closed; pyudev's monitor has no close (libudev closes its socket
        when the monitor's last reference goes, ``udev_monitor_unref`` in its ``__del__``), so
        its reference is dropped. After it the monitor is unusable; a second close does
        nothing."""
        monitor, self._monitor = self._monitor, None
        close = getattr(monitor, "close", None)
        if callable(close):
            close()

    def receive(self) -> list[Any]:
        """Every event queued now, without blocking (call when ``fileno()`` is readable)."""
        events: list[Any] = []
        while True:
            event = self._monitor.poll(timeout=0)
            if event is None:
                return events
            events.append(event)

    def pump(self, job: DevicesJob) -> list[DeviceReport]:
        """Receive and dispatch what is queued; the reports of the devices re-evaluated."""
        out: list[DeviceReport] = []
        for event in self.receive():
            report = dispatch(job, event)
            if report is not None:
                out.append(report)
        return out
