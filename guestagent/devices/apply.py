"""The devices job: discover, resolve, apply with undo, and re-evaluate one device on hotplug.

Per device, in this order (each change recorded in the :class:`StateStore` *before* it is made):

1. ``numa_node``: written when the kernel says -1, the node came from Dom0 or the config, the
   node is online, and ``write_numa_node`` is on (default; the kernel taints itself, flag ``I``);
2. driver rebind (only with ``rebind``, only right after writing ``numa_node``, never for the
   root file system's or the default route's device): ``drivers/<drv>/unbind`` then ``bind``
   (``drivers_probe`` when ``bind`` fails), so the driver allocates its rings on the node;
3. IRQs: every MSI/MSI-X vector (else the INTx ``irq``) -> ``/proc/irq/N/smp_affinity_list`` =
   the node's online CPUs, unless irqbalance owns them (:mod:`guestagent.devices.irqbalance`);
   managed vectors refuse with EIO and are reported "kernel-managed, left alone";
4. hugepages: ``nodeN/hugepages/hugepages-2048kB/nr_hugepages`` raised to the configured count.

A device that vanishes mid-way (its sysfs directory gone between two steps) is one log line and a
skip; its records are dropped, since its IRQ numbers may be reused by the next device.
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from guestagent.devices.config import DevicesConfig
from guestagent.devices.discovery import (
    PCI_DRIVERS,
    DeviceGoneError,
    device_exists,
    device_path,
    driver_name,
    list_devices,
    read_device,
    read_node_info,
)
from guestagent.devices.hints import ConfigHintSource, HintSource, validate_hints
from guestagent.devices.irqbalance import IrqbalanceStatus, IrqDecision, decide, detect
from guestagent.devices.model import (
    DeviceHint,
    DeviceReport,
    NodeInfo,
    PciDevice,
    Resolution,
    is_bdf,
)
from guestagent.devices.protect import (
    Protected,
    RouteLookup,
    protected_devices,
    pyroute2_default_interfaces,
)
from guestagent.devices.resolve import resolve_node
from guestagent.devices.state import Change, StateStore
from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import HostFS, format_cpulist, parse_cpulist, parse_int
from guestagent.log import get_logger
from guestagent.nodesysfs import NODE_DIR

HUGEPAGES_2M = "hugepages/hugepages-2048kB/nr_hugepages"
TAINT_NOTE = "this taints the kernel: TAINT_FIRMWARE_WORKAROUND, flag I"


def irq_affinity_path(irq: int) -> str:
    return f"/proc/irq/{irq}/smp_affinity_list"


def hugepages_path(node: int) -> str:
    return f"{NODE_DIR}/node{node}/{HUGEPAGES_2M}"


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
    ) -> None:
        self.hostfs = hostfs
        self.config = config or DevicesConfig()
        self.hint_sources = list(hint_sources)
        self.route_lookup = route_lookup
        self.log: Any = get_logger("devices")
        self.state = StateStore(hostfs, self.config.state_file).load()
        self._irqbalance = irqbalance_status
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

    # ---------------------------------------------------------------- context

    def refresh(self) -> None:
        """Re-read the nodes and every hint source; log one line per unusable input."""
        problems: list[str] = []
        self._refreshed = True
        self.nodes = read_node_info(self.hostfs, problems)
        self.dom0_hints = {}
        for source in self.hint_sources:
            try:
                hints = source.hints()
            except (OSError, InputError) as e:
                problems.append(f"{source.name} hints unreadable: {e}")
                continue
            good, bad = validate_hints(hints, self.nodes, source.name)
            problems += bad
            for bdf, hint in good.items():
                self.dom0_hints.setdefault(bdf, hint)
        self.config_hints, bad = validate_hints(
            ConfigHintSource(self.config.node_overrides).hints(), self.nodes, "config"
        )
        problems += bad
        for line in problems:
            self.log.warning("devices_input_ignored", problem=line)
        self.problems = problems

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
            self._protected = protected_devices(
                self.hostfs, self.route_lookup or pyroute2_default_interfaces
            )
        return self._protected

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
            self._nudge_irqbalance()
        return reports

    def _pinned_irqs(self) -> set[str]:
        return {p for p, c in self.state.changes.items() if c.kind == "irq_affinity"}

    def _nudge_irqbalance(self) -> None:
        """irqbalance running guestagent's policy script asks it again on SIGHUP (a rescan)."""
        status = self._irqbalance
        if status is None or not status.running or not status.uses_our_policy:
            return
        if status.pid is None or not self.hostfs.is_real_host:
            return
        try:
            os.kill(status.pid, signal.SIGHUP)
        except OSError as e:
            self.log.warning("irqbalance_rescan_failed", pid=status.pid, error=_errname(e))
            return
        self.log.info(
            "irqbalance_rescan",
            pid=status.pid,
            reason="pinned IRQs changed; its policy script now bans them",
        )

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
        for change in self.state.for_device(bdf):
            self.state.forget(change.path)

    def _evaluate(self, bdf: str, apply: bool, report: DeviceReport) -> None:
        device = read_device(self.hostfs, bdf)
        self._fill(report, device)
        for line in device.problems:
            self.log.warning("device_input_unusable", bdf=bdf, problem=line)
            report.failed.append(line)
        written = self.state.get(device_path(bdf, "numa_node"))
        seen = device
        if written is not None and written.applied == str(device.numa_node):
            # The kernel's node is ours: resolve as the kernel had it before we wrote it.
            seen = replace(device, numa_node=_int_or(written.previous, -1))
        resolution = resolve_node(seen, self.nodes, self.dom0_hints, self.config_hints)
        if resolution.node is None and seen is not device:
            resolution = Resolution(
                node=device.numa_node,
                source="kernel",
                notes=[
                    f"numa_node {device.numa_node} was written by guestagent earlier; no current "
                    "hint or override names a node for this device"
                ],
            )
        report.node, report.source = resolution.node, resolution.source
        for note in resolution.notes:
            report.skipped.append(note)
        self._report_recorded(report)
        node = resolution.node
        if node is None:
            kernel = (
                "kernel numa_node is -1"
                if device.numa_node < 0
                else f"kernel numa_node {device.numa_node} is not online"
            )
            report.skipped.append(f"no node known: {kernel}, no Dom0 hint, no config override")
            return
        just_written = self._numa_node_step(device, node, resolution.source, apply, report)
        if just_written and self.config.rebind:
            device = self._rebind_step(device, apply, report) or device
        elif self.config.rebind and device.numa_node < 0 and not apply:
            report.planned.append("rebind the driver after writing numa_node")
        self._irq_step(device, node, apply, report)
        self._hugepage_step(node, apply, report)

    @staticmethod
    def _fill(report: DeviceReport, device: PciDevice) -> None:
        report.vendor = f"0x{device.vendor:04x}" if device.vendor >= 0 else "?"
        report.device = f"0x{device.device:04x}" if device.device >= 0 else "?"
        report.pci_class = (
            f"0x{device.pci_class:06x} ({device.class_name})" if device.pci_class >= 0 else "?"
        )
        report.driver = device.driver
        report.kernel_node = device.numa_node
        report.irqs = device.irqs

    def _report_recorded(self, report: DeviceReport) -> None:
        for change in self.state.for_device(report.bdf):
            if change.kind == "irq_affinity":
                report.applied.append(f"{change.path} = {change.applied} (was {change.previous})")
            elif change.kind == "numa_node":
                report.applied.append(f"numa_node = {change.applied} (was {change.previous})")

    # ---------------------------------------------------------------- numa_node and rebind

    def _numa_node_step(
        self, device: PciDevice, node: int, source: str, apply: bool, report: DeviceReport
    ) -> bool:
        """Write ``numa_node``; True when it was written now (a rebind may follow).

        Written when the kernel says -1, or when guestagent wrote it earlier and the hint has
        moved since (a Dom0 republish); never over a node the kernel found itself.
        """
        if source not in ("dom0", "config"):
            return False
        path = device_path(device.bdf, "numa_node")
        ours = self.state.get(path)
        if device.numa_node >= 0 and (ours is None or device.numa_node == node):
            return False
        if not self.config.write_numa_node:
            report.skipped.append("numa_node left at -1: writing it is off by configuration")
            return False
        if not apply:
            report.planned.append(f"write numa_node = {node} ({TAINT_NOTE})")
            return False
        self.state.record(
            Change(kind="numa_node", path=path, bdf=device.bdf, previous=str(device.numa_node))
        )
        try:
            self._write(device.bdf, path, str(node))
        except OSError as e:
            self.state.forget(path)
            line = f"numa_node = {node} refused by the kernel ({_errname(e)})"
            self.log.warning("numa_node_write_failed", bdf=device.bdf, node=node, error=_errname(e))
            report.failed.append(line)
            return False
        self.state.set_applied(path, str(node))
        self.log.warning(
            "numa_node_written", bdf=device.bdf, node=node, source=source, note=TAINT_NOTE
        )
        report.applied.append(f"numa_node = {node} (was {device.numa_node}; {TAINT_NOTE})")
        return True

    def _rebind_step(
        self, device: PciDevice, apply: bool, report: DeviceReport
    ) -> PciDevice | None:
        """Unbind and rebind the driver; the device as read again afterwards (new IRQs)."""
        if device.driver is None:
            report.skipped.append("rebind: no driver bound; it will probe on the new node")
            return None
        refusal = self.protected.refusal(device.bdf)
        if refusal is not None:
            self.log.warning("rebind_refused", bdf=device.bdf, reason=refusal)
            report.skipped.append(f"rebind refused: {refusal}")
            return None
        driver, bdf = device.driver, device.bdf
        path = device_path(bdf)
        self.state.record(Change(kind="driver_rebind", path=path, bdf=bdf, previous=driver))
        # The old vectors are freed by the unbind; their numbers may go to another device.
        for change in self.state.for_device(bdf):
            if change.kind == "irq_affinity":
                self.state.forget(change.path)
        try:
            self._write(bdf, f"{PCI_DRIVERS}/{driver}/unbind", bdf)
        except OSError as e:
            self.state.forget(path)
            report.failed.append(f"rebind: unbind from {driver} failed ({_errname(e)})")
            return None
        try:
            self._write(bdf, f"{PCI_DRIVERS}/{driver}/bind", bdf)
            how = f"{PCI_DRIVERS}/{driver}/bind"
        except DeviceGoneError:
            raise
        except OSError as e:
            self.log.info("rebind_bind_failed", bdf=bdf, driver=driver, error=_errname(e))
            try:
                self._write(bdf, "/sys/bus/pci/drivers_probe", bdf)
                how = "/sys/bus/pci/drivers_probe"
            except DeviceGoneError:
                raise
            except OSError as e2:
                report.failed.append(
                    f"rebind: {driver} unbound but bind and drivers_probe "
                    f"failed ({_errname(e)}, {_errname(e2)}); device unbound"
                )
                self.log.error("rebind_failed", bdf=bdf, driver=driver, error=_errname(e2))
                return None
        self.state.set_applied(path, driver)
        self.log.info("driver_rebound", bdf=bdf, driver=driver, via=how)
        report.applied.append(f"driver {driver} rebound (via {how})")
        again = read_device(self.hostfs, bdf)
        self._fill(report, again)
        return again

    # ---------------------------------------------------------------- IRQs

    def _irq_step(self, device: PciDevice, node: int, apply: bool, report: DeviceReport) -> None:
        irqs = device.irqs
        if not irqs:
            report.skipped.append("IRQs: the device has none allocated")
            return
        decision = self.irq_decision
        if not decision.touch:
            report.skipped.append(f"IRQs: {decision.reason}")
            return
        if apply:
            # Records for vectors the device no longer has: the number may be another's now.
            for change in self.state.for_device(device.bdf):
                if change.kind == "irq_affinity" and change.path not in {
                    irq_affinity_path(i) for i in irqs
                }:
                    self.state.forget(change.path)
        cpus = self.nodes.cpus.get(node, [])
        if not cpus:
            report.failed.append(f"IRQs: node {node} has no online CPUs")
            return
        wanted = format_cpulist(cpus)
        for irq in irqs:
            self._one_irq(device.bdf, irq, cpus, wanted, apply, report)

    def _one_irq(
        self, bdf: str, irq: int, cpus: list[int], wanted: str, apply: bool, report: DeviceReport
    ) -> None:
        path = irq_affinity_path(irq)
        try:
            current_text = self.hostfs.read_text(path).strip()
            current = parse_cpulist(current_text, path)
        except MissingInputError:
            if not device_exists(self.hostfs, bdf):
                raise DeviceGoneError(bdf, f"IRQ {irq} affinity") from None
            if not self.hostfs.exists(f"/proc/irq/{irq}"):
                # Seen on real Xen: e1000e allocates its MSI-X vectors at probe, but the kernel
                # makes /proc/irq/N only when the driver requests the IRQ (interface up).
                report.skipped.append(
                    f"IRQ {irq}: not requested by the driver yet (no /proc/irq/{irq}); "
                    "pinned on the next pass after it is"
                )
                report.pending_irqs.append(irq)
                return
            report.failed.append(f"IRQ {irq}: {path} does not exist")
            return
        except InputError as e:
            report.failed.append(f"IRQ {irq}: {e}")
            return
        if current == cpus:
            if self.state.get(path) is None:
                report.skipped.append(f"IRQ {irq}: already on {wanted}")
            return
        if not apply:
            report.planned.append(f"IRQ {irq}: smp_affinity_list {current_text} -> {wanted}")
            return
        self.state.record(Change(kind="irq_affinity", path=path, bdf=bdf, previous=current_text))
        try:
            self._write(bdf, path, wanted)
        except DeviceGoneError:
            raise
        except OSError as e:
            self.state.forget(path)
            if e.errno == errno.EIO:
                report.skipped.append(f"IRQ {irq}: kernel-managed, left alone")
                self.log.info("irq_managed", bdf=bdf, irq=irq)
            else:
                report.failed.append(f"IRQ {irq}: write refused ({_errname(e)})")
                self.log.warning("irq_affinity_failed", bdf=bdf, irq=irq, error=_errname(e))
            return
        try:
            applied = self.hostfs.read_text(path).strip()
        except InputError:
            applied = wanted
        self.state.set_applied(path, applied)
        effective = ""
        with contextlib.suppress(InputError):
            effective = self.hostfs.read_text(f"/proc/irq/{irq}/effective_affinity_list").strip()
        shown = f"{path} = {applied} (was {current_text}"
        shown += f"; effective {effective})" if effective else ")"
        report.applied.append(shown)
        self.log.info("irq_affinity_set", bdf=bdf, irq=irq, cpus=applied, previous=current_text)

    # ---------------------------------------------------------------- hugepages

    def _hugepage_step(self, node: int, apply: bool, report: DeviceReport) -> None:
        want = self.config.hugepages_2m_per_node
        if want <= 0:
            return
        path = hugepages_path(node)
        if node in self._hugepage_nodes:
            return
        try:
            current = self.hostfs.read_int(path, minimum=0)
        except InputError as e:
            report.failed.append(f"hugepages: {e}")
            return
        if current >= want:
            report.skipped.append(f"hugepages: node {node} already has {current} >= {want}")
            self._hugepage_nodes.add(node)
            return
        too_many = self._hugepages_beyond_bound(node, want)
        if too_many is not None:
            report.failed.append(too_many)
            self._hugepage_nodes.add(node)
            return
        if not apply:
            report.planned.append(f"hugepages: node {node} nr_hugepages {current} -> {want}")
            return
        self._hugepage_nodes.add(node)
        self.state.record(Change(kind="hugepages", path=path, bdf="", previous=str(current)))
        try:
            self.hostfs.write_text(path, str(want))
            got = self.hostfs.read_int(path, minimum=0)
        except (OSError, InputError) as e:
            report.failed.append(f"hugepages: node {node}: {e}")
            return
        self.state.set_applied(path, str(got))
        self.log.info("hugepages_reserved", node=node, asked=want, got=got, previous=current)
        if got < want:
            report.failed.append(f"hugepages: node {node}: asked {want}, the kernel gave {got}")
        else:
            report.applied.append(f"hugepages: node {node} nr_hugepages = {got} (was {current})")

    def _hugepages_beyond_bound(self, node: int, want: int) -> str | None:
        """Why ``want`` 2 MiB pages are too many for the node, or None. The kernel hands over
        every free page it can find for a reservation, so one above half of the node's memory
        is not made (an unreadable meminfo leaves the reservation to the kernel, as before)."""
        try:
            total = self.hostfs.read_meminfo(f"{NODE_DIR}/node{node}/meminfo")
        except InputError:
            return None
        mem_total = next((v for k, v in total.items() if k.endswith("MemTotal")), 0)
        asked = want * 2 * 1024 * 1024
        if mem_total <= 0 or asked * 2 <= mem_total:
            return None
        return (f"hugepages: node {node}: {want} pages ({asked >> 20} MiB) is more than half of "
                f"the node's {mem_total >> 20} MiB; not reserved")

    # ---------------------------------------------------------------- writes and undo

    def _write(self, bdf: str, path: str, value: str) -> None:
        """Write an existing sysfs/procfs file; a vanished device raises DeviceGoneError."""
        if not self.hostfs.exists(path):
            if not device_exists(self.hostfs, bdf):
                raise DeviceGoneError(bdf, f"write of {path}")
            raise FileNotFoundError(errno.ENOENT, "does not exist", path)
        try:
            self.hostfs.write_text(path, value)
        except (FileNotFoundError, NotADirectoryError) as e:
            if not device_exists(self.hostfs, bdf):
                raise DeviceGoneError(bdf, f"write of {path}") from None
            raise e
        except OSError as e:
            if e.errno == errno.ENODEV and not device_exists(self.hostfs, bdf):
                raise DeviceGoneError(bdf, f"write of {path}") from None
            raise

    def reset(self) -> list[str]:
        """Undo every recorded change, newest first; one line per change and per malformed
        entry of the state file (skipped at load: the others are restored all the same).

        A restore that failed is logged at error level (``devices_undo_failed``), counted in
        ``reset_failures`` and kept in the state file, so a later reset can try again."""
        lines: list[str] = []
        self.reset_failures = 0
        for problem in self.state.problems:
            self._undo_line(lines, f"state file entry malformed, skipped: {problem}", False)
        self.state.problems = []
        for change in reversed(list(self.state.changes.values())):
            line, ok = self._undo(change)
            self._undo_line(lines, line, ok)
            if ok:
                self.state.forget(change.path)
        return lines

    def _undo_line(self, lines: list[str], line: str, ok: bool) -> None:
        lines.append(line)
        if ok:
            self.log.info("devices_undo", result=line)
        else:
            self.reset_failures += 1
            # error= too: the repeat filter keys on it, so each failed restore gets its own line
            self.log.error("devices_undo_failed", result=line, error=line)

    def _undo(self, change: Change) -> tuple[str, bool]:
        """What undoing one change did, and whether it is done with (False: it failed)."""
        if change.kind == "driver_rebind":
            return (
                f"{change.bdf}: driver {change.previous} was rebound; it stays bound "
                "(memory it allocated stays where it is until its next probe)"
            ), True
        try:
            current = self.hostfs.read_text(change.path).strip()
        except MissingInputError:
            return f"{change.path}: gone (device or IRQ removed), nothing to undo", True
        except InputError as e:
            return f"{change.path}: unreadable, left alone ({e})", False
        if change.applied and not _same(change, current):
            return (
                f"{change.path}: now {current!r}, not the {change.applied!r} guestagent left; "
                "changed by someone else, left alone"
            ), True
        try:
            self.hostfs.write_text(change.path, change.previous)
        except FileNotFoundError:
            return f"{change.path}: gone (device or IRQ removed), nothing to undo", True
        except OSError as e:
            return f"{change.path}: restoring {change.previous!r} failed ({_errname(e)})", False
        note = " (the taint stays until reboot)" if change.kind == "numa_node" else ""
        return f"{change.path}: restored {change.previous!r}{note}", True

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
        if action == "remove":
            for change in self.state.for_device(bdf):
                self.state.forget(change.path)
            self.reports.pop(bdf, None)
            return None
        if action == "unbind" and self._unbound(bdf):
            # The driver freed its vectors; records for those IRQ numbers are stale now. (Not
            # when a driver is bound again already: our own rebind re-pinned the new vectors.)
            for change in self.state.for_device(bdf):
                if change.kind == "irq_affinity":
                    self.state.forget(change.path)
        if action in ("add", "bind", "unbind"):
            if action == "add":
                self.refresh()
            return self.evaluate(bdf, self.applying)
        return None


def _int_or(text: str, default: int) -> int:
    try:
        return parse_int(text, "state")
    except InputError:
        return default


def _same(change: Change, current: str) -> bool:
    if change.kind == "irq_affinity":
        try:
            return parse_cpulist(current, change.path) == parse_cpulist(change.applied, "state")
        except InputError:
            return False
    return current.strip() == change.applied.strip()


def _errname(e: OSError) -> str:
    if e.errno is not None and e.errno in errno.errorcode:
        return f"{errno.errorcode[e.errno]}: {e.strerror or ''}".rstrip(": ")
    return str(e)
