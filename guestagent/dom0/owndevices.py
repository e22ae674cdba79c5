"""Dom0's own devices on their node (issue 16 item 2): the plain data and the pure decision.

Dom0 is PV and its kernel sees one node, so the NIC and disk controllers it drives itself (bound
to any driver but pciback) get their interrupts wherever the scheduler puts them. Xen knows each
device's node (``XEN_SYSCTL_pcitopoinfo``) and each pCPU's (``cputopoinfo``), and where Dom0's
vCPUs may run (``XEN_DOMCTL_getvcpuaffinity``). A Dom0 IRQ is an event channel bound to one
vCPU, and Xen moves the physical interrupt to the pCPU that vCPU runs on; so an IRQ whose
``smp_affinity_list`` names only Dom0 vCPUs kept on the device's node is delivered on that node.

:func:`decide` turns that model into a plan of IRQ affinities, device by device, with the
devices job's step types (:mod:`guestagent.devices.plan`: ``SetIrqAffinity``, ``Note``,
``ForgetRecords``), so the same executor writes them, journals them and undoes them.
:mod:`guestagent.dom0.owndevices_io` reads the model and carries the plan out.

In a PV Dom0, Linux CPU ``N`` is vCPU ``N``: the CPU numbers written are the vCPU ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from guestagent.devices.irqbalance import IrqbalanceStatus, IrqDecision
from guestagent.devices.plan import (
    DevicesState,
    IrqRead,
    Note,
    Step,
    irq_affinity_path,
    one_irq_steps,
)
from guestagent.hostfs import format_cpulist
from guestagent.undo import Change

if TYPE_CHECKING:
    from guestagent.dom0.backendthreads import BackendThread, ThreadPlan

#: Drivers that hold a device for a guest (xen-pciback registers as ``pciback``).
PCIBACK_DRIVERS = frozenset({"pciback", "xen-pciback"})

#: The event logged when no Dom0 vCPU is kept on one node.
UNPLACED_EVENT = "dom0_vcpus_unplaced"
UNPLACED_REMEDY = (
    "Dom0's vCPUs may run on every node, so no IRQ can be kept near its device: set Xen's "
    "command line dom0_vcpus_pin (vCPU N on pCPU N) or dom0_nodes=<PXM list> (docs/IONUMA.md)"
)

IrqMode = Literal["auto", "pin", "defer"]


# ---------------------------------------------------------------- the model (plain data)


@dataclass(frozen=True)
class Dom0Vcpu:
    """One Dom0 vCPU as Xen has it: online, the pCPU it runs on now, its hard and soft
    affinity (pCPU sets)."""

    vcpu: int
    online: bool
    cpu: int
    hard: frozenset[int]
    soft: frozenset[int]


@dataclass(frozen=True)
class OwnDevice:
    """A PCI function of Dom0's: its driver (None: unbound), what Xen says of its node
    (``known``: Xen has the device; ``node`` None: no node), its IRQs' affinity as read, and one
    line per unusable input."""

    bdf: str
    driver: str | None
    known: bool
    node: int | None
    irqs: Mapping[int, IrqRead] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class OwnDevicesModel:
    """What one pass decides on: Dom0's devices, Dom0's vCPUs and the node of each present pCPU
    (pCPUs without a node are absent); netback's and blkback's threads and the node of each
    guest they serve (None: not kept on one, :mod:`.backendthreads`)."""

    devices: Sequence[OwnDevice]
    vcpus: Sequence[Dom0Vcpu]
    cpu_nodes: Mapping[int, int]
    irqbalance: IrqbalanceStatus = field(default_factory=lambda: IrqbalanceStatus(False))
    problems: tuple[str, ...] = ()
    threads: Sequence[BackendThread] = ()
    guest_nodes: Mapping[int, int | None] = field(default_factory=dict)


# ---------------------------------------------------------------- the plan (plain data)


@dataclass(frozen=True)
class OwnDevicePlan:
    """One Dom0-driven device: its node, the Dom0 vCPUs on that node, and the steps."""

    bdf: str
    driver: str
    node: int | None
    near_vcpus: tuple[int, ...]
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class OwnDevicesPlan:
    """Every Dom0-driven device's plan, the devices left out (not Dom0's: pciback, unbound) with
    their driver, each vCPU's node (None: not kept on one), whether the IRQs are ours to pin,
    and the notes of the whole pass."""

    devices: tuple[OwnDevicePlan, ...]
    others: Mapping[str, str]
    vcpu_nodes: Mapping[int, int | None]
    irq: IrqDecision
    notes: tuple[Note, ...] = ()
    #: Journal records to drop first (:func:`stale_records`, and the threads that ended).
    forget: tuple[str, ...] = ()
    #: Each backend thread's plan (:func:`guestagent.dom0.backendthreads.decide_threads`).
    threads: tuple[ThreadPlan, ...] = ()

    @property
    def unplaced(self) -> bool:
        return not any(node is not None for node in self.vcpu_nodes.values())


# ---------------------------------------------------------------- the decision (pure)


def dom0_driven(driver: str | None) -> bool:
    """Dom0 drives a device bound to a driver other than pciback: an unbound device has no IRQ
    in use, and pciback's belong to a guest (its IRQs are the guest's to place)."""
    return driver is not None and driver not in PCIBACK_DRIVERS


def effective_affinity(vcpu: Dom0Vcpu) -> frozenset[int]:
    """Where the scheduler runs the vCPU: the soft affinity within the hard one, or the hard one
    when the two do not meet (Xen ignores a soft affinity disjoint from the hard, and an empty
    hard affinity cannot be set)."""
    both = vcpu.hard & vcpu.soft
    return both if both else vcpu.hard


def vcpu_node(vcpu: Dom0Vcpu, cpu_nodes: Mapping[int, int]) -> int | None:
    """The node a vCPU is kept on: every pCPU of its effective affinity on one node. None when
    they span nodes (the default ``all``), include a pCPU without a node, or the vCPU is
    offline: such a vCPU may deliver an IRQ anywhere."""
    if not vcpu.online:
        return None
    nodes = {cpu_nodes.get(cpu) for cpu in effective_affinity(vcpu)}
    if len(nodes) != 1 or None in nodes:
        return None
    return nodes.pop()


def vcpus_near(node: int, vcpu_nodes: Mapping[int, int | None]) -> tuple[int, ...]:
    """The Dom0 vCPUs kept on ``node``, in order."""
    return tuple(sorted(v for v, n in vcpu_nodes.items() if n == node))


def irq_decision(mode: IrqMode, status: IrqbalanceStatus) -> IrqDecision:
    """Whether the IRQs of Dom0's devices are ours to pin. ``auto`` pins only when irqbalance
    does not run in Dom0: guestagent's policy script bans these IRQs too (it reads
    ``dom0-devices.json``), but only from irqbalance's next IRQ database build, and Dom0's pass
    sends irqbalance no SIGHUP, so irqbalance could move them back first; ``pin`` pins anyway
    (with a warning), ``defer`` never pins. The backend threads are not irqbalance's and are
    pinned in every mode."""
    who = f"irqbalance is running in Dom0 ({status.found_by or 'found'})"
    if mode == "defer":
        return IrqDecision(False, "defer", "IRQ affinity left alone (--irqbalance defer)")
    if not status.running:
        return IrqDecision(True, "pin", "irqbalance is not running in Dom0: guestagent pins")
    if mode == "pin":
        return IrqDecision(True, "pin", f"{who} but --irqbalance pin: guestagent pins",
                           warning=f"{who}: it may move the IRQs guestagent pinned")
    return IrqDecision(False, "defer", f"{who}: IRQs left to it, which guestagent does not ask "
                       "to rescan from Dom0 (--irqbalance pin to pin anyway)")


def stale_records(devices: Sequence[OwnDevice], records: Mapping[str, Change]) -> tuple[str, ...]:
    """Records of IRQs that are no longer a Dom0-driven device's: the device went, moved to
    pciback or freed the vector. The number may now be another device's, so an undo must not
    write it; the record is dropped (the kernel freed the IRQ and its affinity with it)."""
    current = {irq_affinity_path(irq) for d in devices if dom0_driven(d.driver) for irq in d.irqs}
    return tuple(sorted(p for p, c in records.items()
                        if c.kind == "irq_affinity" and p not in current))


def device_steps(device: OwnDevice, near: tuple[int, ...], plan_context: _PassContext
                 ) -> list[Step]:
    """One Dom0-driven device's steps: its IRQs onto the Dom0 vCPUs near it, or why not."""
    if device.node is None:
        why = "Xen has no node for it (no _PXM)" if device.known else "unknown to Xen"
        return [Note("skipped", f"IRQs: {why}")]
    if plan_context.unplaced:
        return [Note("skipped", "IRQs: no Dom0 vCPU is kept on one node "
                     f"({UNPLACED_EVENT}), pinned nowhere")]
    if not near:
        return [Note("skipped", f"IRQs: no Dom0 vCPU is kept on node {device.node}",
                     event="dom0_no_vcpu_near", fields=(("bdf", device.bdf),
                                                        ("node", device.node)))]
    if not device.irqs:
        return [Note("skipped", "IRQs: the device has none allocated")]
    if not plan_context.irq.touch:
        return [Note("skipped", f"IRQs: {plan_context.irq.reason}")]
    steps: list[Step] = []
    for irq in sorted(device.irqs):
        steps += one_irq_steps(device.bdf, device.irqs[irq], list(near), plan_context.state,
                               plan_context.apply)
    return steps


@dataclass(frozen=True)
class _PassContext:
    """What every device's steps share within one pass."""

    irq: IrqDecision
    state: DevicesState
    apply: bool
    unplaced: bool


def pass_notes(vcpus: int, unplaced: bool, irq: IrqDecision, apply: bool) -> tuple[Note, ...]:
    """The lines of the whole pass: Dom0's vCPUs kept on no node (with the remedy, logged), and
    irqbalance running while ``--irqbalance pin`` pins (logged when it writes)."""
    notes: list[Note] = []
    if unplaced:
        notes.append(Note("skipped", UNPLACED_REMEDY, event=UNPLACED_EVENT,
                          fields=(("vcpus", vcpus),)))
    if irq.warning and apply:
        notes.append(Note("skipped", irq.warning, event="dom0_irqbalance_running"))
    return tuple(notes)


def device_plan(device: OwnDevice, vcpu_nodes: Mapping[int, int | None],
                context: _PassContext) -> OwnDevicePlan:
    """One Dom0-driven device: the vCPUs near its node, its input problems as lines, its
    steps."""
    near = vcpus_near(device.node, vcpu_nodes) if device.node is not None else ()
    steps: list[Step] = [Note("skipped", p) for p in device.problems]
    steps += device_steps(device, near, context)
    return OwnDevicePlan(device.bdf, str(device.driver), device.node, near, tuple(steps))


def decide(model: OwnDevicesModel, records: Mapping[str, Change], apply: bool,
           mode: IrqMode = "auto") -> OwnDevicesPlan:
    """The plan of one pass: each Dom0-driven device's IRQs onto the Dom0 vCPUs kept on its
    node, each backend thread onto those of its guest's node (``records``: the journal's, by
    path; ``apply`` False: planned lines instead of writes)."""
    from guestagent.dom0.backendthreads import decide_threads, stale_threads
    vcpu_nodes = {v.vcpu: vcpu_node(v, model.cpu_nodes) for v in model.vcpus}
    unplaced = not any(n is not None for n in vcpu_nodes.values())
    irq = irq_decision(mode, model.irqbalance)
    context = _PassContext(irq, DevicesState(records=records), apply, unplaced)
    ours = [d for d in model.devices if dom0_driven(d.driver)]
    others = {d.bdf: d.driver or "unbound" for d in model.devices if not dom0_driven(d.driver)}
    plans = tuple(device_plan(d, vcpu_nodes, context) for d in ours)
    stale = (*stale_records(model.devices, records),
             *stale_threads(model.threads, records)) if apply else ()
    threads = decide_threads(model.threads, model.guest_nodes, vcpu_nodes, records, apply)
    return OwnDevicesPlan(plans, others, vcpu_nodes, irq,
                          pass_notes(len(vcpu_nodes), unplaced, irq, apply), stale,
                          tuple(threads))


def vcpus_json(model: OwnDevicesModel, vcpu_nodes: Mapping[int, int | None]) -> list[Any]:
    """Dom0's vCPUs for the report: where each runs, its affinity, the node it is kept on."""
    return [{"vcpu": v.vcpu, "online": v.online, "cpu": v.cpu,
             "hard": format_cpulist(sorted(v.hard)), "soft": format_cpulist(sorted(v.soft)),
             "node": vcpu_nodes.get(v.vcpu)} for v in model.vcpus]
