"""Dom0's own devices: reading the model and carrying out the plan (:mod:`.owndevices` decides).

Read (nothing written): Dom0's PCI functions (``/sys/bus/pci/devices``, as the guest's devices
job reads them: :func:`guestagent.devices.discovery.read_device`), each one's node and every
pCPU's from Xen (:func:`guestagent.dom0.topology.read_host_topology`: ``pcitopoinfo``,
``cputopoinfo``), Dom0's vCPUs with their hard and soft affinity (``XEN_DOMCTL_getvcpuinfo``,
``getvcpuaffinity``), the IRQs' ``/proc/irq/N/smp_affinity_list``
(:func:`guestagent.devices.read.read_irq`) and whether irqbalance runs.

Write: exactly the plan's steps, through the devices job's executor
(:func:`guestagent.devices.execute.apply`), which records each IRQ's affinity in the journal
``dom0-devices.json`` (``[agent] state_dir``; owner ``dom0-devices``, the one kind
``irq_affinity``) before it writes it. :func:`undo` restores them from that file alone (``host
devices --reset``, ``guestagent reset``'s ``dom0_devices`` part).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from guestagent.devices import execute
from guestagent.devices.discovery import DeviceGoneError, list_devices, read_device
from guestagent.devices.read import read_irq
from guestagent.devices.state import KINDS as DEVICE_KINDS
from guestagent.dom0.backendthreads import THREAD_KIND
from guestagent.dom0.backendthreads_io import (
    THREAD_RULE,
    SetAffinity,
    StepLines,
    ThreadOutcome,
    carry_out_threads,
    read_guest_nodes,
    read_threads,
    sched_setaffinity_on,
    undo_thread,
)
from guestagent.dom0.owndevices import (
    Dom0Vcpu,
    IrqMode,
    OwnDevice,
    OwnDevicesModel,
    OwnDevicesPlan,
    decide,
    dom0_driven,
)
from guestagent.dom0.topology import HostTopology, read_host_topology
from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.undo import Journal, UndoReport
from guestagent.xen.sysctl import PciAddress

JOURNAL_NAME = "dom0-devices.json"
OWNER = "dom0-devices"
#: The kinds of change: an IRQ's affinity (the same rule as the guest's devices job) and a
#: backend thread's (:mod:`guestagent.dom0.backendthreads_io`).
KINDS = {"irq_affinity": DEVICE_KINDS["irq_affinity"], THREAD_KIND: THREAD_RULE}
DOM0 = 0


def journal_in(hostfs: HostFS, state_dir: str) -> Journal:
    """The journal of Dom0's own devices in ``state_dir`` (not loaded)."""
    return Journal(hostfs, f"{state_dir.rstrip('/')}/{JOURNAL_NAME}", OWNER, KINDS)


# ---------------------------------------------------------------- read


def read_vcpus(domctl: Any, max_cpus: int) -> list[Dom0Vcpu]:
    """Dom0's vCPUs: where each runs and its affinity (a vCPU gone between the two calls is
    left out). InputError when Xen does not know domain 0."""
    infos = domctl.vcpus(DOM0, max_cpus)
    if infos is None:
        raise InputError("XEN_DOMCTL_getvcpuinfo", "Xen does not know domain", DOM0)
    vcpus: list[Dom0Vcpu] = []
    for info in infos:
        affinity = domctl.vcpu_affinity(DOM0, info.vcpu, max_cpus)
        if affinity is not None:
            vcpus.append(Dom0Vcpu(info.vcpu, info.online, info.cpu, affinity.hard,
                                  affinity.soft))
    return vcpus


def read_one_device(hostfs: HostFS, bdf: str, topology: HostTopology) -> OwnDevice:
    """One function: its driver, Xen's node for it and, when Dom0 drives it, its IRQs'
    affinity. DeviceGoneError when it vanished."""
    device = read_device(hostfs, bdf)
    host = topology.device(PciAddress.parse(bdf, f"/sys/bus/pci/devices/{bdf}"))
    known, node = (host.known, host.node) if host is not None else (False, None)
    irqs = {}
    if dom0_driven(device.driver):
        irqs = {irq: read_irq(hostfs, bdf, irq) for irq in device.irqs}
    return OwnDevice(bdf, device.driver, known, node, irqs, tuple(device.problems))


def read_devices(hostfs: HostFS, topology: HostTopology, problems: list[str]) -> list[OwnDevice]:
    """Every PCI function of Dom0's; a vanished or unreadable one is a line in ``problems``."""
    names, bad = list_devices(hostfs)
    problems += bad
    devices: list[OwnDevice] = []
    for bdf in sorted(names):
        try:
            devices.append(read_one_device(hostfs, bdf, topology))
        except DeviceGoneError as e:
            problems.append(f"{e}; left out")
        except InputError as e:
            problems.append(f"{bdf}: {e}; left out")
    return devices


def read_model(hostfs: HostFS, sysctl: Any, domctl: Any) -> OwnDevicesModel:
    """The whole model of one pass (module text). Raises what Xen's calls raise."""
    from guestagent.devices.irqbalance import detect

    topology = read_host_topology(hostfs, sysctl)
    problems = list(topology.problems)
    cpu_nodes = {c.id: c.node for c in topology.cpus if c.node is not None}
    max_cpus = max((c.id for c in topology.cpus), default=-1) + 1
    if max_cpus == 0:
        raise InputError("XEN_SYSCTL_cputopoinfo", "no present pCPU", 0)
    vcpus = read_vcpus(domctl, max_cpus)
    devices = read_devices(hostfs, topology, problems)
    threads = read_threads(hostfs, problems)
    guest_nodes = read_guest_nodes(domctl, {t.domid for t in threads}, max_cpus, cpu_nodes)
    return OwnDevicesModel(devices, vcpus, cpu_nodes, detect(hostfs), tuple(problems), threads,
                           guest_nodes)


# ---------------------------------------------------------------- apply


@dataclass
class DeviceOutcome(StepLines):
    """What one pass did for one Dom0-driven device."""

    bdf: str
    driver: str
    node: int | None
    near_vcpus: list[int]


@dataclass
class PassOutcome:
    """One pass: every Dom0-driven device's and backend thread's outcome, and the lines of the
    whole pass."""

    devices: list[DeviceOutcome]
    lines: list[str] = field(default_factory=list)
    threads: list[ThreadOutcome] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(d.failed for d in self.devices) or any(t.failed for t in self.threads)


def carry_out(plan: OwnDevicesPlan, hostfs: HostFS, journal: Journal,
              set_affinity: SetAffinity | None = None) -> PassOutcome:
    """Write exactly the plan, each IRQ and thread journalled before its write (a plan made
    without ``apply`` holds no write: only its lines come out); a device that vanishes mid-way
    is one skipped line. ``set_affinity``: the threads' ``sched_setaffinity`` (default:
    :func:`~guestagent.dom0.backendthreads_io.sched_setaffinity_on` the host)."""
    journal.forget_all(plan.forget)
    outcome = PassOutcome([], [n.text for n in plan.notes])
    execute.apply(plan.notes, hostfs, journal)
    for device in plan.devices:
        result = DeviceOutcome(device.bdf, device.driver, device.node, list(device.near_vcpus))
        try:
            done = execute.apply(device.steps, hostfs, journal)
        except DeviceGoneError as e:
            result.skipped.append(f"vanished: {e}")
        else:
            result.applied, result.planned = done.applied, done.planned
            result.skipped, result.failed = done.skipped, done.failed
        outcome.devices.append(result)
    outcome.threads = carry_out_threads(plan.threads, hostfs, journal,
                                        set_affinity or sched_setaffinity_on(hostfs))
    return outcome


def undo_journal(journal: Journal, hostfs: HostFS,
                 set_affinity: SetAffinity | None = None) -> UndoReport:
    """Every recorded change restored, newest first: an IRQ's as the guest's devices job does
    (:func:`guestagent.devices.execute.undo_one`), a thread's with ``sched_setaffinity``
    (:func:`~guestagent.dom0.backendthreads_io.undo_thread`). One line per change and per
    malformed entry; a failed restore stays in the journal for the next reset."""
    from guestagent.log import get_logger

    setter = set_affinity or sched_setaffinity_on(hostfs)
    report = UndoReport()
    lines = [(f"journal entry malformed, skipped: {p}", False) for p in journal.problems]
    journal.problems = []
    for change in reversed(list(journal.changes.values())):
        if change.kind == THREAD_KIND:
            line, ok = undo_thread(change, hostfs, setter)
        else:
            line, ok = execute.undo_one(change, hostfs)
        lines.append((line, ok))
        if ok:
            journal.forget(change.path)
    log = get_logger("dom0")
    for line, ok in lines:
        report.lines.append(line)
        if ok:
            log.info("dom0_devices_undo", result=line)
        else:
            report.failures += 1
            log.error("dom0_devices_undo_failed", result=line, error=line)
    return report


def undo(hostfs: HostFS, state_dir: str) -> UndoReport:
    """Restore every change ``dom0-devices.json`` in ``state_dir`` records, from that file
    alone (:func:`undo_journal`; the caller holds the state lock). InputError when the file
    cannot be read at all."""
    return undo_journal(journal_in(hostfs, state_dir).load(), hostfs)


class OwnDevicesRunner:
    """The Dom0 daemon's passes over Dom0's own devices (``[dom0] own_devices``): read, decide
    with ``apply``, carry out, over one pair of Xen handles and the journal the daemon's state
    directory holds; :meth:`undo` at the job's stop."""

    def __init__(self, hostfs: HostFS, sysctl: Any, domctl: Any, journal: Journal,
                 mode: IrqMode) -> None:
        self.hostfs, self.sysctl, self.domctl = hostfs, sysctl, domctl
        self.journal = journal
        self.mode: IrqMode = mode
        self.last: tuple[OwnDevicesPlan, PassOutcome] | None = None

    def run_pass(self) -> PassOutcome:
        """One pass; raises what reading Xen raises (the job logs it, the next pass retries)."""
        model = read_model(self.hostfs, self.sysctl, self.domctl)
        plan = decide(model, self.journal.changes, True, self.mode)
        outcome = carry_out(plan, self.hostfs, self.journal)
        self.last = (plan, outcome)
        return outcome

    def undo(self) -> UndoReport:
        """Every change the journal records, restored (:func:`undo_journal`)."""
        return undo_journal(self.journal, self.hostfs)

    def status(self) -> dict[str, Any]:
        """Flat figures for the daemon's status and metrics (``guestagent_dom0_own_devices_*``)."""
        plan, outcome = self.last if self.last is not None else (None, None)
        return {
            "own_devices": self.mode,
            "own_devices_pinned_irqs": len(self.journal.of_kind("irq_affinity")),
            "own_devices_devices": len(outcome.devices) if outcome is not None else 0,
            "own_devices_failed": sum(bool(d.failed) for d in outcome.devices) if outcome else 0,
            "own_devices_vcpus_unplaced": plan.unplaced if plan is not None else False,
            "own_devices_pinned_threads": len(self.journal.of_kind(THREAD_KIND)),
        }
