"""The devices job of the daemon: bind devices at start, follow udev hotplug and the Dom0 hints,
undo every binding on stop.

A pass that finds vectors the driver has not requested yet (a NIC whose interface is still down:
no /proc/irq/N, and no udev event when it comes up) is repeated after 30 s, then after twice the
previous wait up to 10 minutes, until no such vector is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from guestagent.config import Config
from guestagent.devices.apply import DevicesJob as DeviceBinder
from guestagent.devices.config import DevicesConfig
from guestagent.devices.hints import HintSource, XenstoreHintSource
from guestagent.devices.hotplug import HotplugMonitor, HotplugUnavailableError
from guestagent.devices.model import DeviceReport
from guestagent.errors import GuestAgentError
from guestagent.log import get_logger

if TYPE_CHECKING:
    from guestagent.daemon.loop import Timer
    from guestagent.daemon.service import JobContext

#: Waits before passes repeated for vectors not requested yet (seconds): first, then doubled up to.
PENDING_RETRY_FIRST = 30.0
PENDING_RETRY_MAX = 600.0


def pending_vectors(reports: Sequence[DeviceReport]) -> list[str]:
    """``BDF IRQ N`` of every vector a pass skipped because its driver had not requested it."""
    return [f"{r.bdf} IRQ {irq}" for r in reports for irq in r.pending_irqs]


def own_domid(client: Any) -> int | None:
    """This guest's domid, from the ``domid`` key libxl writes in its home (read-only to it)."""
    try:
        text = client.read("domid").decode("ascii", "replace").strip()
    except (GuestAgentError, OSError):
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 0x7FF0 else None


class DevicesJob:
    name = "devices"

    def __init__(self) -> None:
        self._ctx: JobContext | None = None
        self._binder: DeviceBinder | None = None
        self._monitor: HotplugMonitor | None = None
        self._hotplug_off: str | None = None
        self._retry: Timer | None = None
        self._retry_wait = PENDING_RETRY_FIRST
        self._log = get_logger("devices")

    def start(self, ctx: JobContext) -> None:
        self._ctx = ctx
        sources: list[HintSource] = []
        client = ctx.xenstore.client()
        domid = own_domid(client) if client is not None else None
        if client is not None and domid is not None:
            source = XenstoreHintSource(client, domid)
            sources.append(source)
            ctx.xenstore.watch(source.base, lambda path: self._rescan("dom0 hints changed"))
        binder = DeviceBinder(ctx.hostfs, DevicesConfig.from_agent_config(ctx.config), sources,
                              route_lookup=ctx.host.default_interfaces)
        binder.applying = True
        for line in binder.state.problems:  # skipped entries of a state file left by a crash
            self._log.error("devices_state_entry_skipped", problem=line)
        binder.state.problems = []
        self._binder = binder
        self._after_pass(binder.scan(apply=True))
        try:
            self._monitor = ctx.host.udev_monitor()
        except HotplugUnavailableError as e:
            self._hotplug_off = str(e)
            self._log.warning("hotplug_off", reason=self._hotplug_off)
        else:
            ctx.loop.add_reader(self._monitor.fileno(), self._on_udev)

    def _on_udev(self) -> None:
        """Re-evaluate the devices udev names; a device whose vectors its driver has not
        requested yet (a NIC hot-plugged with its interface down) gets the repeat pass a full
        pass would schedule. A device with none never cancels a repeat set for another."""
        if self._monitor is not None and self._binder is not None:
            reports = self._monitor.pump(self._binder)
            if pending_vectors(reports):
                self._after_pass(reports)

    def _rescan(self, reason: str) -> None:
        if self._binder is not None:
            self._log.info("devices_rescan", reason=reason)
            self._after_pass(self._binder.scan(apply=True))

    def _after_pass(self, reports: Sequence[DeviceReport]) -> None:
        """Schedule a repeat while vectors wait for their driver; forget it once none do."""
        pending = pending_vectors(reports)
        if not pending:
            self._retry_wait = PENDING_RETRY_FIRST
            if self._retry is not None:
                self._retry.cancel()
                self._retry = None
            return
        if self._retry is None and self._ctx is not None:
            self._log.info("devices_pending_vectors", vectors=pending, retry_in=self._retry_wait)
            self._retry = self._ctx.loop.call_later(self._retry_wait, self._retry_pass)

    def _retry_pass(self) -> None:
        self._retry = None
        self._retry_wait = min(self._retry_wait * 2, PENDING_RETRY_MAX)
        self._rescan("vectors not requested by their driver yet")

    def reload(self, config: Config) -> None:
        assert self._binder is not None
        self._binder.config = DevicesConfig.from_agent_config(config)
        self._rescan("configuration reloaded")

    def republish(self, reason: str) -> None:
        self._rescan(reason)

    def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._monitor is not None:
            if self._ctx is not None:
                self._ctx.loop.remove_reader(self._monitor.fileno())
            self._monitor.close()  # the socket now, not when the garbage collector runs
            self._monitor = None
        if self._binder is not None:
            self._binder.reset()
            self._binder = None

    def status(self) -> dict[str, Any]:
        binder = self._binder
        if binder is None:
            return {}
        # The last pass's result, kept current by hotplug events: no rescan per status request
        # or metrics scrape (a scan re-reads every PCI device and the Dom0 hints).
        reports = [binder.reports[bdf] for bdf in sorted(binder.reports)]
        return {
            "hotplug": self._hotplug_off or "following udev",
            # Devices on a host node without any of this guest's vnodes (Dom0's hint): a gauge
            # to alert on, e.g. after a migration put the guest away from its device.
            "remote_devices": sum(r.remote for r in reports),
            "devices": [r.to_dict() for r in reports],
        }
