"""PCI hotplug as an event source: a pyudev monitor with a ``fileno()`` for the daemon's poll loop.

pyudev is imported only when a monitor is made (it loads libudev). Events become
``(action, bdf)`` pairs; :func:`dispatch` hands them to :meth:`DevicesJob.handle_event`, which
re-evaluates that one device. Anything that is not a PCI add/remove/bind/unbind is ignored.
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

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


class HotplugMonitor:
    """A netlink udev monitor filtered to the ``pci`` subsystem."""

    def __init__(self, monitor: Any) -> None:
        self._monitor = monitor

    @classmethod
    def open(cls) -> HotplugMonitor:
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
