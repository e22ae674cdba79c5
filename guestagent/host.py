"""The machine the agent runs on, opened in one place (issue 14 item 1).

A :class:`Host` is the root-prefixed file system (:class:`~guestagent.hostfs.HostFS`) plus the
platform handles the commands and jobs reach Xen and the kernel through, each opened lazily, when
first asked for, by its opener:

* :meth:`Host.vnuma_call`: XENMEM_get_vnumainfo through privcmd (the guest's topology);
* :meth:`Host.sysctl`: Xen's sysctls through privcmd, as a context manager (the Dom0 job);
* :meth:`Host.xen_controls`: sysctls and domctls on one privcmd (``host numa``, the hostnuma job);
* :meth:`Host.xenstore`: a xenstore client (``$XENSTORED_PATH``, the socket, the xenbus device);
* :meth:`Host.udev_monitor`: a udev monitor of PCI events (the devices job's hotplug);
* :meth:`Host.psi_trigger`: a memory PSI trigger descriptor (the balloon job, ``balloon record``);
* :meth:`Host.default_interfaces`: the interfaces of the default routes, through netlink (the
  devices job's protected devices);
* :attr:`Host.tiering_backends`: the cold-memory backends in order of preference;
* :meth:`Host.guard_commands`: modprobe, mkswap, swapon and swapoff for the balloon's allocation
  guard (the system's on the real host, none on a fixture tree);
* :attr:`Host.clock` and :attr:`Host.sleep`: the monotonic clock and the sleep a one-shot
  command paces its samples by (``host numa``; the daemon's jobs have the loop's clock).

The CLI makes one for each command (``Context.host``), the daemon hands it to every job
(``JobContext.host``). A test passes a Host with its own openers (a fake hypercall, a test
xenstored, a fake DAMON kernel): nothing is swapped in a module. The C extension is imported only
by the real openers, when they run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from guestagent.hostfs import HostFS

if TYPE_CHECKING:
    from guestagent.balloon.guard import GuardCommands
    from guestagent.tiering.model import Backend
    from guestagent.topology.reader import VnumaCall


def real_vnuma_call(hostfs: HostFS) -> VnumaCall:
    """XENMEM_get_vnumainfo through privcmd; the C extension is imported only when called."""
    from guestagent.xen.vnuma import VnumaInfo

    def call() -> VnumaInfo:
        # Imported here: without the built C extension this raises ImportError, which the
        # reader turns into the status line "C extension not built".
        from guestagent.xen.privcmd import open_privcmd
        from guestagent.xen.vnuma import get_vnumainfo

        with open_privcmd(hostfs) as privcmd:
            return get_vnumainfo(privcmd)

    return call


@contextmanager
def real_sysctl(hostfs: HostFS) -> Iterator[Any]:
    """A :class:`~guestagent.xen.sysctl.Sysctl` over privcmd (C extension imported here only)."""
    from guestagent.xen.errors import XenUnavailable
    from guestagent.xen.sysctl import Sysctl

    try:
        from guestagent.xen.privcmd import open_privcmd
    except ImportError as e:
        raise XenUnavailable(f"the C extension is not built ({e})") from None
    with open_privcmd(hostfs) as privcmd:
        yield Sysctl(privcmd)


@contextmanager
def real_xen_controls(hostfs: HostFS) -> Iterator[tuple[Any, Any]]:
    """Xen's sysctls and domctls on one privcmd, for a ``with`` block (``guestagent host numa``).
    Raises XenUnavailable when the C extension is not built."""
    from guestagent.xen.domctl import Domctl
    from guestagent.xen.errors import XenUnavailable
    from guestagent.xen.sysctl import Sysctl

    try:
        from guestagent.xen.privcmd import open_privcmd
    except ImportError as e:
        raise XenUnavailable(f"the C extension is not built ({e})") from None
    with open_privcmd(hostfs) as privcmd:
        yield Sysctl(privcmd), Domctl(privcmd)


def real_xenstore(hostfs: HostFS) -> Any:
    """A xenstore client the way ``xs_open`` chooses (``$XENSTORED_PATH``, the xenstored socket,
    the xenbus device). Raises NotOnXen without one, XenUnavailable when it cannot be opened (or
    the C extension is not built)."""
    from guestagent.xen.errors import XenUnavailable
    from guestagent.xen.xenstore import XenstoreClient

    try:
        from guestagent.xen.xsconn import open_xenstore
    except ImportError as e:
        raise XenUnavailable(f"the C extension is not built ({e})") from None
    connection = open_xenstore(hostfs)
    return XenstoreClient(connection)


def real_udev_monitor(hostfs: HostFS) -> Any:
    """A netlink udev monitor of PCI events: udev's group read directly, or pyudev's monitor
    without the C extension (imported only then). Raises HotplugUnavailableError without
    netlink (or pyudev and libudev, when it needs them)."""
    from guestagent.devices.hotplug import HotplugMonitor, HotplugUnavailableError, UdevNetlink

    try:
        return HotplugMonitor(UdevNetlink.open("pci"))
    except ImportError:  # no C extension to attach the kernel filter with: libudev attaches it
        return HotplugMonitor.open()
    except OSError as e:
        raise HotplugUnavailableError(
            f"udev monitor unavailable ({e}): PCI hotplug is not followed") from None


def real_psi_trigger(hostfs: HostFS, kind: str, stall_us: int, window_us: int) -> Any:
    """A :class:`~guestagent.balloon.signals.PsiTrigger` on ``/proc/pressure/memory``; None on a
    fixture tree (there the file is a plain file, which arming would overwrite). Raises
    InputError where the kernel refuses it."""
    if not hostfs.is_real_host:
        return None
    from guestagent.balloon.signals import PsiTrigger

    return PsiTrigger(hostfs, kind, stall_us, window_us)


def real_default_interfaces(hostfs: HostFS) -> list[str]:
    """The main table's default-route interfaces through pyroute2 (netlink: the running
    kernel's, whatever the root)."""
    from guestagent.devices.protect import pyroute2_default_interfaces

    return pyroute2_default_interfaces()


def real_guard_commands(hostfs: HostFS) -> GuardCommands | None:
    """The system's modprobe, mkswap, swapon and swapoff on the real host; None on a fixture
    tree (the guard then skips its zram swap, logged)."""
    if not hostfs.is_real_host:
        return None
    from guestagent.balloon.guard import SystemCommands

    return SystemCommands()


def _damon(hostfs: HostFS) -> Backend:
    from guestagent.tiering.damon import DamonBackend

    return DamonBackend(hostfs)


def _tmem(hostfs: HostFS) -> Backend:
    from guestagent.tiering.tmem import TmemBackend

    return TmemBackend(hostfs)


#: A cold-memory backend: its name and what makes it for a host's file system.
BackendFactory = tuple[str, Callable[[HostFS], "Backend"]]

#: The tiering backends in order of preference.
TIERING_BACKENDS: tuple[BackendFactory, ...] = (("damon", _damon), ("tmem", _tmem))


@dataclass
class Host:
    """The host's file system and its platform handles, each opened by its opener on use."""

    fs: HostFS
    open_vnuma: Callable[[HostFS], VnumaCall] = real_vnuma_call
    open_sysctl: Callable[[HostFS], AbstractContextManager[Any]] = real_sysctl
    open_xenstore: Callable[[HostFS], Any] = real_xenstore
    open_xen_controls: Callable[[HostFS], AbstractContextManager[tuple[Any, Any]]] = (
        real_xen_controls)
    open_udev: Callable[[HostFS], Any] = real_udev_monitor
    open_psi_trigger: Callable[[HostFS, str, int, int], Any] = real_psi_trigger
    open_default_interfaces: Callable[[HostFS], list[str]] = real_default_interfaces
    open_guard_commands: Callable[[HostFS], GuardCommands | None] = real_guard_commands
    tiering_backends: Sequence[BackendFactory] = TIERING_BACKENDS
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def vnuma_call(self) -> VnumaCall:
        """The vNUMA hypercall, made when called (its failure is the reader's status line)."""
        return self.open_vnuma(self.fs)

    def sysctl(self) -> AbstractContextManager[Any]:
        """Xen's sysctls for a ``with`` block (closed at its end)."""
        return self.open_sysctl(self.fs)

    def xenstore(self) -> Any:
        """A new xenstore client (the caller closes it)."""
        return self.open_xenstore(self.fs)

    def xen_controls(self) -> AbstractContextManager[tuple[Any, Any]]:
        """(Sysctl, Domctl) on one privcmd for a ``with`` block (closed at its end)."""
        return self.open_xen_controls(self.fs)

    def udev_monitor(self) -> Any:
        """A new udev monitor of PCI events (the caller stops reading it)."""
        return self.open_udev(self.fs)

    def psi_trigger(self, kind: str = "some", stall_us: int = 150_000,
                    window_us: int = 1_000_000) -> Any:
        """A memory PSI trigger (the caller closes it); None where none may be armed (a fixture
        tree); InputError where the kernel refuses it."""
        return self.open_psi_trigger(self.fs, kind, stall_us, window_us)

    def default_interfaces(self) -> list[str]:
        """The interfaces of the default routes (ImportError without pyroute2, OSError when
        netlink refuses)."""
        return self.open_default_interfaces(self.fs)

    def guard_commands(self) -> GuardCommands | None:
        """The allocation guard's commands (None: no zram swap here, a fixture tree)."""
        return self.open_guard_commands(self.fs)

    def tiering_backend(self, name: str) -> Backend:
        """The named backend over this host's file system (KeyError: no such backend)."""
        return dict(self.tiering_backends)[name](self.fs)
