"""A network device's interfaces across a driver rebind: read before the unbind, set back after.

Unbinding a NIC's driver destroys its interfaces; the bind makes new ones, down, with the
driver's default ring sizes, and nothing in the guest brings them back unless a network manager
follows udev's ``add`` events. So the rebind (:func:`guestagent.devices.execute`'s ``_rebind``)
reads each interface of the device first (:func:`read_interfaces`: its ``flags`` from sysfs and
its RX/TX ring sizes, ``ETHTOOL_GRINGPARAM``), and after the bind, on the CPUs of the device's
node, sets the ring sizes back (``ETHTOOL_SRINGPARAM``, while the interface is down: nothing is
allocated yet) and brings up the interfaces that were up (``IFF_UP`` written to
``/sys/class/net/<if>/flags``). The driver allocates its RX buffers when the interface comes up,
in the context of the process that brings it up and from that CPU's node (``kmalloc`` with the
default policy), and its descriptor rings from the device's node (``dma_alloc_coherent``); doing
the bring-up on the node's CPUs puts both on the device's node. What is set back is the
administrative state and the ring sizes only: addresses and routes are the network manager's
(and a device that carries the default route is never rebound, :mod:`guestagent.devices.protect`).
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import re
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Callable, Protocol

from guestagent.errors import InputError
from guestagent.hostfs import HostFS

#: ``IFF_UP`` of ``<linux/if.h>``.
IFF_UP = 0x1
#: ``<linux/sockios.h>`` and ``<linux/ethtool.h>``.
SIOCETHTOOL = 0x8946
ETHTOOL_GRINGPARAM = 0x10
ETHTOOL_SRINGPARAM = 0x11
#: ``struct ethtool_ringparam``: cmd, then 8 u32; rx_pending and tx_pending are the 5th and 8th.
_RING_WORDS = 8
_RX_PENDING, _TX_PENDING = 4, 7
#: ``struct ifreq`` on 64-bit Linux: 16 bytes of name, then a 24-byte union (here a pointer).
_IFREQ = "16sP16x"
#: How long the bind's new interface may take to get its old name back (udevd renames it).
RENAME_WAIT_SECONDS = 5.0
_IFNAME = re.compile(r"[A-Za-z0-9_.@:-]{1,15}")


@dataclass(frozen=True)
class Rings:
    """An interface's RX and TX ring sizes (descriptors)."""

    rx: int
    tx: int


@dataclass(frozen=True)
class InterfaceState:
    """One interface of the device before the unbind: its name, whether it was up, its rings
    (None: not read, e.g. on a fixture tree or a driver without ``get_ringparam``)."""

    name: str
    up: bool
    rings: Rings | None


class RingAccess(Protocol):
    """Reads and sets an interface's ring sizes; raises OSError."""

    def get(self, ifname: str) -> Rings: ...

    def set(self, ifname: str, rings: Rings) -> None: ...


class EthtoolRings:
    """The ring sizes through the ``SIOCETHTOOL`` ioctl (what ``ethtool -g``/``-G`` use), on a
    netlink socket: any socket family reaches the device ioctls, and the guest unit's
    ``RestrictAddressFamilies`` allows netlink. Setting them needs CAP_NET_ADMIN."""

    def get(self, ifname: str) -> Rings:
        words = _ringparam(ifname, ETHTOOL_GRINGPARAM, [0] * _RING_WORDS)
        return Rings(words[_RX_PENDING], words[_TX_PENDING])

    def set(self, ifname: str, rings: Rings) -> None:
        words = _ringparam(ifname, ETHTOOL_GRINGPARAM, [0] * _RING_WORDS)
        words[_RX_PENDING], words[_TX_PENDING] = rings.rx, rings.tx
        _ringparam(ifname, ETHTOOL_SRINGPARAM, words)


def _ringparam(ifname: str, cmd: int, words: list[int]) -> list[int]:
    buf = array.array("I", [cmd, *words])
    address, _ = buf.buffer_info()
    ifreq = struct.pack(_IFREQ, ifname.encode(), address)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    return list(buf[1:])


#: Every network interface, each a link into the device tree.
CLASS_NET = "/sys/class/net"


def flags_path(ifname: str) -> str:
    return f"{CLASS_NET}/{ifname}/flags"


def interface_names(hostfs: HostFS, bdf: str) -> list[str]:
    """The device's network interfaces now: those of ``/sys/class/net`` whose device path runs
    through the PCI function (its own ``net/``, or a child's such as virtio-net's
    ``virtio0/net/``)."""
    if not hostfs.exists(CLASS_NET):
        return []
    root = os.path.realpath(hostfs.root).rstrip("/")
    found = []
    for name in hostfs.listdir(CLASS_NET):
        real = os.path.realpath(hostfs.path(f"{CLASS_NET}/{name}"))
        if _IFNAME.fullmatch(name) and f"/{bdf}/" in real[len(root):]:
            found.append(name)
    return found


def read_flags(hostfs: HostFS, ifname: str) -> int:
    """``/sys/class/net/<if>/flags`` (``0x1003``); InputError naming the file when unusable."""
    path = flags_path(ifname)
    text = hostfs.read_text(path).strip()
    if not re.fullmatch(r"0x[0-9a-fA-F]{1,8}", text):
        raise InputError(path, "expected hexadecimal interface flags like 0x1003", text)
    return int(text, 16)


def read_interfaces(hostfs: HostFS, bdf: str,
                    rings: RingAccess | None) -> tuple[list[InterfaceState], list[str]]:
    """Each interface of the device with its state, and a line for what could not be read (the
    interface is then left as the bind makes it)."""
    states: list[InterfaceState] = []
    problems: list[str] = []
    for name in interface_names(hostfs, bdf):
        try:
            up = bool(read_flags(hostfs, name) & IFF_UP)
        except InputError as e:
            problems.append(f"interface {name}: state not read ({e}); left as the bind makes it")
            continue
        sizes = None
        if rings is not None:
            try:
                sizes = rings.get(name)
            except OSError as e:
                problems.append(f"interface {name}: ring sizes not read ({e}); not set back")
        states.append(InterfaceState(name, up, sizes))
    return states, problems


def new_name(hostfs: HostFS, bdf: str, old: InterfaceState, count: int,
             wait: float = RENAME_WAIT_SECONDS,
             sleep: Callable[[float], None] = time.sleep) -> str | None:
    """The name of ``old``'s interface after the bind: its old name once it is back (udevd may
    rename the kernel's name; waited for up to ``wait`` seconds), else the device's one
    interface when it had one (``count``), else None."""
    deadline = time.monotonic() + wait
    while True:
        names = interface_names(hostfs, bdf)
        if old.name in names:
            return old.name
        if time.monotonic() >= deadline:
            return names[0] if count == 1 and len(names) == 1 else None
        sleep(0.1)


@contextlib.contextmanager
def on_cpus(cpus: Sequence[int], hostfs: HostFS) -> Iterator[str]:
    """The calling thread on ``cpus`` for the block (Linux: pid 0 is the calling thread), so
    the driver's allocations in its context come from their node; its affinity is set back
    after. Yields how it ran (a note for the report); a refusal leaves the affinity alone."""
    if not cpus or not hostfs.is_real_host:
        yield ""
        return
    previous = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, set(cpus))
    except OSError as e:
        yield f"not on the node's CPUs ({e})"
        return
    try:
        yield "on the node's CPUs"
    finally:
        os.sched_setaffinity(0, previous)


def restore(hostfs: HostFS, bdf: str, state: InterfaceState, name: str,
            rings: RingAccess | None) -> list[str]:
    """Set ``state``'s ring sizes back on interface ``name`` (still down), then bring it up if
    it was up; what was done, one phrase each. OSError from the flags write propagates."""
    done: list[str] = []
    if state.rings is not None and rings is not None:
        current = rings.get(name)
        if current != state.rings:
            rings.set(name, state.rings)
            done.append(f"rings rx {state.rings.rx} tx {state.rings.tx}")
    if state.up:
        flags = read_flags(hostfs, name)
        hostfs.write_text(flags_path(name), hex(flags | IFF_UP))
        done.append("up")
    return done


@dataclass(frozen=True)
class NetAccess:
    """How the rebind reaches the interfaces besides sysfs: their rings (None: not read, not set
    back) and how long a new interface may take to get its old name back."""

    rings: RingAccess | None
    rename_wait: float = RENAME_WAIT_SECONDS
    #: Whether this process may set rings and bring interfaces up (CAP_NET_ADMIN): without it a
    #: rebind would leave an interface that was up down, so the rebind is refused instead.
    can_admin: bool = True


#: ``CAP_NET_ADMIN`` of ``<linux/capability.h>``: its bit in ``CapEff`` of /proc/PID/status.
CAP_NET_ADMIN = 12


def has_net_admin(status_text: str) -> bool:
    """Whether the ``CapEff`` line of a /proc/PID/status text holds CAP_NET_ADMIN (False when
    the line is missing or unreadable: refuse rather than risk an interface left down)."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            try:
                return bool(int(line.split(":", 1)[1].strip(), 16) >> CAP_NET_ADMIN & 1)
            except ValueError:
                return False
    return False


def net_access(hostfs: HostFS) -> NetAccess:
    """The ioctl on the real host, and this process's own CAP_NET_ADMIN (its /proc/self, not
    a host path); no rings on a fixture tree (its interfaces are files)."""
    if not hostfs.is_real_host:
        return NetAccess(None)
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            can_admin = has_net_admin(f.read())
    except OSError:
        can_admin = False
    return NetAccess(EthtoolRings(), can_admin=can_admin)
