"""The devices job's pass runner: read -> decide -> apply, per device, and hotplug.

Each pass (:meth:`DevicesJob.scan`) and each udev event (:meth:`DevicesJob.handle_event`) runs the
three stages the house way (``docs/DEVELOPING.md``):

* read (:mod:`guestagent.devices.read`): the nodes and hints once per pass, then one device at a
  time into a :class:`~guestagent.devices.plan.DeviceModel` (its attributes, its vectors'
  affinity, the hugepage pools); irqbalance and the protected devices once per job;
* decide (:mod:`guestagent.devices.plan`): a pure :class:`~guestagent.devices.plan.DevicePlan`
  from the model, the journal's records and the configuration (the rules are listed there);
* apply (:mod:`guestagent.devices.execute`): the only code that writes; each change journalled
  in :mod:`guestagent.devices.state` (``devices.json``) before it is made, so
  ``guestagent reset`` undoes it after a crash.

A rebind gives the device new vectors: the job reads the device again and plans its IRQs anew.
A device that vanishes mid-way (its sysfs directory gone between two steps) is one log line and a
skip; its records are dropped, since its IRQ numbers may be reused by the next device.

This class holds no rule of its own: it sequences the stages and keeps the last pass's reports
(the daemon's ``status``, with no rescan per request).
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Optional

from guestagent.devices import execute
from guestagent.devices.config import DevicesConfig
from guestagent.devices.discovery import DeviceGoneError, driver_name, list_devices, read_device
from guestagent.devices.hints import HintSource
from guestagent.devices.irqbalance import IrqbalanceStatus, IrqDecision, decide, detect
from guestagent.devices.model import DeviceHint, DeviceReport, NodeInfo, PciDevice, is_bdf
from guestagent.devices.plan import (
    TAINT_NOTE,
    DeviceModel,
    DevicesContext,
    DevicesState,
    Step,
    decide_device,
    decide_tail,
    hotplug_forgets,
    hotplug_reevaluates,
    hugepages_path,
    irq_affinity_path,
)
from guestagent.devices.protect import (
    Protected,
    RouteLookup,
    protected_devices,
)
from guestagent.devices.read import complete_model, read_context
from guestagent.devices.state import StateStore
from guestagent.hostfs import HostFS
from guestagent.log import get_logger

__all__ = ["TAINT_NOTE", "DevicesJob", "hugepages_path", "irq_affinity_path"]

#: How the job asks irqbalance to rescan: :func:`execute.nudge_irqbalance` (status, file system,
#: reason) -> whether a signal was sent.
Nudge = Callable[[Optional[IrqbalanceStatus], HostFS, str], bool]


class DevicesJob:
    """One pass (``scan``) or a long-lived job fed by hotplug events (``handle_event``)."""

    def __init__(
        self,
        hostfs: HostFS,
        config: DevicesConfig | None = None,
        hint_sources: Sequence[HintSource] = (),
        *,
        route_lookup: RouteLookup | None = None,
        irqbalance_status: IrqbalanceStatus | None = None,
        nudge: Nudge | None = None,
    ) -> None:
        self.hostfs = hostfs
        self.config = config or DevicesConfig()
        self.hint_sources = list(hint_sources)
        self.route_lookup = route_lookup
        self.log: Any = get_logger("devices")
        self.state = StateStore(hostfs, self.config.state_file).load()
        self._irqbalance = irqbalance_status
        self._nudge: Nudge = nudge if nudge is not None else execute.nudge_irqbalance
        self._decision: IrqDecision | None = None
        self._protected: Protected | None = None
        self.nodes = NodeInfo(online=[], cpus={}, online_cpus=[])
        self.dom0_hints: dict[str, DeviceHint] = {}
        self.config_hints: dict[str, DeviceHint] = {}
        self.problems: list[str] = []
        self.reports: dict[str, DeviceReport] = {}
        #: Whether hotplug events apply (a daemon after ``apply``) or only re-report.
        self.applying = False
        self._hugepage_nodes: set[int] = set()
        self._refreshed = False
        #: Restores that failed in the last :meth:`reset` (malformed state entries included).
        self.reset_failures = 0

    # ---------------------------------------------------------------- read: the context

    def refresh(self) -> None:
        """Re-read the nodes and every hint source; log one line per unusable input."""
        self._refreshed = True
        found = read_context(self.hostfs, self.hint_sources, self.config.node_overrides)
        self.nodes = found.nodes
        self.dom0_hints, self.config_hints = found.dom0_hints, found.config_hints
        for line in found.problems:
            self.log.warning("devices_input_ignored", problem=line)
        self.problems = found.problems

    @property
    def irq_decision(self) -> IrqDecision:
        if self._decision is None:
            status = self._irqbalance if self._irqbalance is not None else detect(self.hostfs)
            self._irqbalance = status
            self._decision = decide(self.config.irqbalance, status)
            if self._decision.warning:
                self.log.warning("irqbalance_conflict", detail=self._decision.warning)
            elif not self._decision.touch:
                self.log.info("irqbalance_defer", detail=self._decision.reason)
        return self._decision

    @property
    def irqbalance(self) -> IrqbalanceStatus:
        self.irq_decision  # noqa: B018 - detection happens on first use
        assert self._irqbalance is not None
        return self._irqbalance

    @property
    def protected(self) -> Protected:
        if self._protected is None:
            lookup = self.route_lookup
            if lookup is None:  # no host handle given: the real host's, over this file system
                from guestagent.host import Host

                lookup = Host(self.hostfs).default_interfaces
            self._protected = protected_devices(self.hostfs, lookup)
        return self._protected

    def _context(self) -> DevicesContext:
        """What every device's decision shares; the protected devices are looked up (once per
        job) only when rebinds are configured."""
        return DevicesContext(
            nodes=self.nodes,
            dom0_hints=self.dom0_hints,
            config_hints=self.config_hints,
            irq=self.irq_decision,
            protected=self.protected if self.config.rebind else None,
        )

    def _state(self) -> DevicesState:
        """A snapshot of the journal's records for one decision."""
        return DevicesState(records=dict(self.state.changes),
                            hugepage_nodes=frozenset(self._hugepage_nodes))

    def _read(self, bdf: str, report: DeviceReport) -> DeviceModel:
        """The device (described in the report at once, so a device that vanishes later in
        the read still has its report) and the rest of its model."""
        device = read_device(self.hostfs, bdf)
        _fill(report, device)
        pools = None
        if self.config.hugepages_2m_per_node > 0:
            pools = [n for n in self.nodes.online if n not in self._hugepage_nodes]
        return complete_model(self.hostfs, device, irqs=self.irq_decision.touch,
                              hugepage_nodes=pools)

    # ---------------------------------------------------------------- passes

    def scan(self, apply: bool) -> list[DeviceReport]:
        """Every PCI device: report it, and with ``apply`` bind it to its node."""
        self.refresh()
        self.applying = self.applying or apply
        names, bad = list_devices(self.hostfs)
        for line in bad:
            self.log.warning("devices_input_ignored", problem=line)
        self.problems += bad
        reports: list[DeviceReport] = []
        pinned_before = self._pinned_irqs()
        for bdf in names:
            report = self.evaluate(bdf, apply)
            if report is not None:
                reports.append(report)
        if apply and self._pinned_irqs() != pinned_before:
            self._nudge_irqbalance("pinned IRQs changed; its policy script bans the pinned ones")
        self.reports = {r.bdf: r for r in reports}  # devices gone since the last pass drop out
        return reports

    def _pinned_irqs(self) -> set[str]:
        return {p for p, c in self.state.changes.items() if c.kind == "irq_affinity"}

    def _nudge_irqbalance(self, reason: str) -> None:
        """Ask irqbalance to rescan, looked for afresh: it may have started after the job's
        first pass, when the IRQ decision was taken."""
        self._nudge(detect(self.hostfs), self.hostfs, reason)

    def evaluate(self, bdf: str, apply: bool) -> DeviceReport | None:
        """One device; None when it vanished before anything could be read."""
        if not self._refreshed:
            self.refresh()
        report = DeviceReport(bdf=bdf)
        try:
            self._evaluate(bdf, apply, report)
        except DeviceGoneError as e:
            self._vanished(bdf, report, e)
            if not report.vendor:
                self.reports.pop(bdf, None)
                return None
        self.reports[bdf] = report
        return report

    def _vanished(self, bdf: str, report: DeviceReport, error: DeviceGoneError) -> None:
        self.log.warning("device_vanished", bdf=bdf, detail=error.reason)
        report.failed.append(f"{error.reason}; skipped")
        self.state.forget_all(c.path for c in self.state.for_device(bdf))

    def _evaluate(self, bdf: str, apply: bool, report: DeviceReport) -> None:
        """Read -> decide -> apply for one device; after a rebind its IRQs are read and planned
        again (the driver has new vectors)."""
        model = self._read(bdf, report)
        plan = decide_device(model, self._context(), self._state(), self.config, apply)
        report.node, report.source = plan.node, plan.source
        report.host_node, report.remote = plan.host_node, plan.remote
        head = self._apply(plan.head, report)
        tail = plan.tail
        if head.rebound and plan.node is not None:
            model = self._read(bdf, report)
            tail = decide_tail(model, plan.node, self._context(), self._state(), self.config,
                               apply)
        self._apply(tail, report)

    def _apply(self, steps: Sequence[Step], report: DeviceReport) -> execute.Applied:
        done = execute.apply(steps, self.hostfs, self.state)
        report.applied += done.applied
        report.planned += done.planned
        report.skipped += done.skipped
        report.failed += done.failed
        report.pending_irqs += done.pending_irqs
        self._hugepage_nodes |= done.hugepage_nodes
        return done

    # ---------------------------------------------------------------- undo

    def reset(self) -> list[str]:
        """Undo every recorded change, newest first (:func:`execute.undo_all`); one line per
        change and per malformed entry of the state file. Failed restores are counted in
        ``reset_failures`` and kept in the state file, so a later reset can try again. An
        irqbalance running guestagent's policy script is asked to rescan when IRQs were
        unpinned, so that it balances them again."""
        pinned = self._pinned_irqs()
        report = execute.undo_all(self.state, self.hostfs)
        self.reset_failures = report.failures
        if pinned - self._pinned_irqs():
            self._nudge_irqbalance("IRQs unpinned; its policy script no longer bans them")
        return report.lines

    # ---------------------------------------------------------------- hotplug

    def _unbound(self, bdf: str) -> bool:
        try:
            return driver_name(self.hostfs, bdf) is None
        except DeviceGoneError:
            return True

    def handle_event(self, action: str, bdf: str) -> DeviceReport | None:
        """React to one udev event for a PCI device (add, remove, bind, unbind)."""
        if not is_bdf(bdf):
            self.log.warning(
                "hotplug_event_ignored", action=action, device=bdf[:64], reason="not a PCI address"
            )
            return None
        self.log.info("hotplug_event", action=action, bdf=bdf)
        unbound = action == "unbind" and self._unbound(bdf)
        self.state.forget_all(hotplug_forgets(action, bdf, unbound, self._state()))
        if action == "remove":
            self.reports.pop(bdf, None)
            return None
        refresh, reevaluate = hotplug_reevaluates(action)
        if refresh:
            self.refresh()
        return self.evaluate(bdf, self.applying) if reevaluate else None


def _fill(report: DeviceReport, device: PciDevice) -> None:
    """The report's description of the device, as read."""
    report.vendor = f"0x{device.vendor:04x}" if device.vendor >= 0 else "?"
    report.device = f"0x{device.device:04x}" if device.device >= 0 else "?"
    report.pci_class = (
        f"0x{device.pci_class:06x} ({device.class_name})" if device.pci_class >= 0 else "?"
    )
    report.driver = device.driver
    report.kernel_node = device.numa_node
    report.irqs = device.irqs
