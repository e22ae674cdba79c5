"""The devices job's decisions: pure functions from a model of one device to a plan of steps.

``decide_device(model, context, state, config, apply)`` says, for one PCI device, what the job
does and why, as an ordered list of steps (:data:`Step`): report lines (:class:`Note`) and host
changes (:class:`WriteNumaNode`, :class:`Rebind`, :class:`SetIrqAffinity`,
:class:`ReserveHugepages`, :class:`ForgetRecords`). It reads no file and writes none: the model
comes from :mod:`guestagent.devices.read`, and :func:`guestagent.devices.execute.apply` carries
the plan out (the only code that writes), journalling each change before it makes it.

The rules, in the order they apply to a device:

1. node (:func:`resolve`): the kernel's ``numa_node`` when online, else Dom0's hint, else the
   configuration's override (:func:`guestagent.devices.resolve.resolve_node`); a ``numa_node``
   guestagent wrote itself counts as the -1 it replaced;
2. ``numa_node`` (:func:`numa_node_steps`): written where the kernel says -1 (or guestagent
   wrote it and the hint moved since), only for a Dom0 or config node and with
   ``write_numa_node`` on; never over a node the kernel found itself;
3. rebind (:func:`rebind_steps`): only with ``rebind`` on, only right after that write succeeded
   (the steps ride on :attr:`WriteNumaNode.then`), never for a protected device (the root file
   system's or the default route's, or every device when that cannot be told);
4. IRQs (:func:`irq_steps`): each vector onto the node's online CPUs, unless irqbalance owns IRQ
   affinity (:func:`guestagent.devices.irqbalance.decide`); records of vectors the device no
   longer has are dropped (the number may be another device's now);
5. hugepages (:func:`hugepage_steps`): the node's 2 MiB pool raised to the configured count once
   per node, never beyond half of the node's memory.

A rebind gives the device new vectors, so the plan comes in two parts: :attr:`DevicePlan.head`
(steps 1-3) and :attr:`DevicePlan.tail` (4-5). After a rebind the job reads the device again and
plans the tail anew with :func:`decide_tail`.

With ``apply`` false (``guestagent devices``) the plan holds ``planned`` lines instead of changes.
The hotplug rules (:func:`hotplug_forgets`, :func:`hotplug_reevaluates`) are here too.
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Union

from guestagent.devices.config import DevicesConfig
from guestagent.devices.discovery import PCI_DEVICES
from guestagent.devices.irqbalance import IrqDecision
from guestagent.devices.model import (
    DeviceHint,
    NodeInfo,
    NodeSource,
    PciDevice,
    Resolution,
)
from guestagent.devices.protect import Protected
from guestagent.devices.resolve import on_remote_node, resolve_node
from guestagent.errors import InputError
from guestagent.hostfs import format_cpulist, parse_int
from guestagent.nodesysfs import NODE_DIR
from guestagent.undo import Change
from guestagent.units import HUGE_PAGE_SIZE, MIB

HUGEPAGES_2M = "hugepages/hugepages-2048kB/nr_hugepages"
TAINT_NOTE = "this taints the kernel: TAINT_FIRMWARE_WORKAROUND, flag I"
#: Why a rebind is refused when the model holds no protection answer (rebind was off when read).
NO_PROTECTION_READ = "the protected devices were not determined"


def irq_affinity_path(irq: int) -> str:
    return f"/proc/irq/{irq}/smp_affinity_list"


def hugepages_path(node: int) -> str:
    return f"{NODE_DIR}/node{node}/{HUGEPAGES_2M}"


def numa_node_path(bdf: str) -> str:
    return f"{PCI_DEVICES}/{bdf}/numa_node"


# ---------------------------------------------------------------- the model (plain data)

IrqReadState = Literal["ok", "not_requested", "no_file", "unreadable"]


@dataclass(frozen=True)
class IrqRead:
    """One vector's ``/proc/irq/N/smp_affinity_list`` as read."""

    irq: int
    state: IrqReadState
    #: The text as read, stripped ("" unless ``ok``).
    text: str = ""
    cpus: list[int] = field(default_factory=list)
    #: Why it could not be read (``unreadable``).
    error: str = ""


@dataclass(frozen=True)
class HugepageNode:
    """A node's 2 MiB pool: ``nr_hugepages`` (None and ``error`` when unreadable) and its memory
    (``MemTotal`` in bytes; 0 when unknown)."""

    current: int | None
    error: str = ""
    mem_total: int = 0


@dataclass(frozen=True)
class DeviceModel:
    """One device as read now: its sysfs attributes, the affinity of its vectors (read only when
    IRQ affinity is ours to set) and the hugepage pools of the nodes not handled yet (read only
    when hugepages are configured)."""

    device: PciDevice
    irqs: Mapping[int, IrqRead] = field(default_factory=dict)
    hugepages: Mapping[int, HugepageNode] = field(default_factory=dict)


@dataclass(frozen=True)
class DevicesContext:
    """What every device's decision shares: the nodes, the validated hints, whether IRQ affinity
    is ours (irqbalance), and the devices a rebind must not touch (None: not read, rebind off)."""

    nodes: NodeInfo
    dom0_hints: Mapping[str, DeviceHint]
    config_hints: Mapping[str, DeviceHint]
    irq: IrqDecision
    protected: Protected | None = None


@dataclass(frozen=True)
class DevicesState:
    """What the job did before: the journal's records by path, and the nodes whose hugepage pool
    is handled already (once per node for the job's lifetime)."""

    records: Mapping[str, Change] = field(default_factory=dict)
    hugepage_nodes: frozenset[int] = frozenset()

    def for_device(self, bdf: str) -> list[Change]:
        return [c for c in self.records.values() if c.bdf == bdf]


# ---------------------------------------------------------------- the plan (plain data)

Category = Literal["applied", "planned", "skipped", "failed"]


@dataclass(frozen=True)
class Note:
    """A line of the device's report; with ``event`` also a log line (at ``level``)."""

    category: Category
    text: str
    event: str = ""
    level: Literal["info", "warning"] = "warning"
    fields: tuple[tuple[str, object], ...] = ()
    #: A vector the driver has not requested yet: a later pass pins it.
    pending_irq: int | None = None


@dataclass(frozen=True)
class ForgetRecords:
    """Drop journal records that no longer describe the host (their IRQ numbers were freed)."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class Rebind:
    """Unbind ``driver`` from the device and bind it again (``drivers_probe`` if bind fails),
    then set its network interfaces back as they were (ring sizes, up), on ``cpus`` (the
    node's online CPUs: the driver allocates its RX buffers from the node of the CPU that
    brings the interface up)."""

    bdf: str
    driver: str
    cpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class WriteNumaNode:
    """Write the device's ``numa_node`` (it taints the kernel); ``then`` only once it is written."""

    bdf: str
    node: int
    previous: int
    source: NodeSource
    then: tuple[Step, ...] = ()

    @property
    def path(self) -> str:
        return numa_node_path(self.bdf)


@dataclass(frozen=True)
class SetIrqAffinity:
    """``/proc/irq/N/smp_affinity_list`` = ``wanted`` (was ``previous``)."""

    bdf: str
    irq: int
    wanted: str
    previous: str

    @property
    def path(self) -> str:
        return irq_affinity_path(self.irq)


@dataclass(frozen=True)
class ReserveHugepages:
    """Raise the node's 2 MiB pool to ``want`` pages (was ``previous``); handles the node."""

    node: int
    want: int
    previous: int

    @property
    def path(self) -> str:
        return hugepages_path(self.node)


@dataclass(frozen=True)
class HugepageNodeDone:
    """The node's pool needs nothing more for the job's lifetime (enough already, or too many)."""

    node: int


Step = Union[Note, ForgetRecords, Rebind, WriteNumaNode, SetIrqAffinity, ReserveHugepages,
             HugepageNodeDone]


@dataclass(frozen=True)
class DevicePlan:
    """One device's node, where it came from, and the steps (see the module text)."""

    bdf: str
    node: int | None
    source: NodeSource
    head: tuple[Step, ...] = ()
    tail: tuple[Step, ...] = ()
    #: The device's host node (Dom0's hint), and whether no vnode of the guest sits there.
    host_node: int | None = None
    remote: bool = False


# ---------------------------------------------------------------- decide


def decide_device(model: DeviceModel, context: DevicesContext, state: DevicesState,
                  config: DevicesConfig, apply: bool) -> DevicePlan:
    """The plan for one device (see the module text for the rules and their order)."""
    device = model.device
    head: list[Step] = [
        Note("failed", line, event="device_input_unusable",
             fields=(("bdf", device.bdf), ("problem", line)))
        for line in device.problems
    ]
    resolution = resolve(device, context, state)
    head += [Note("skipped", note) for note in resolution.notes]
    head += recorded_lines(device.bdf, state)
    hint = context.dom0_hints.get(device.bdf)
    host_node = hint.host_node if hint is not None else None
    remote = on_remote_node(hint)
    if remote:
        head.append(remote_note(device.bdf, host_node, resolution.node))
    node = resolution.node
    if node is None:
        head.append(Note("skipped", no_node_line(device)))
        return DevicePlan(device.bdf, None, resolution.source, tuple(head),
                          host_node=host_node, remote=remote)
    head += numa_node_steps(device, node, resolution.source, context, state, config, apply)
    tail = decide_tail(model, node, context, state, config, apply)
    return DevicePlan(device.bdf, node, resolution.source, tuple(head), tail,
                      host_node=host_node, remote=remote)


def remote_note(bdf: str, host_node: int | None, node: int | None) -> Note:
    """What a device on a host node without any of the guest's vnodes costs, and the remedy
    (only the operator can move a guest); a warning in the log at every pass."""
    nearest = f"vnode {node}, the nearest," if node is not None else "no vnode"
    return Note(
        "skipped",
        f"remote: the device sits on host node {host_node}, where this guest has no vnode; "
        f"{nearest} is used. Its DMA and interrupts cross the host's interconnect: move the "
        f"guest (its memory and vCPUs) to host node {host_node} to make it local",
        event="device_remote",
        fields=(("bdf", bdf), ("host_node", host_node), ("vnode", node)))


def decide_tail(model: DeviceModel, node: int, context: DevicesContext, state: DevicesState,
                config: DevicesConfig, apply: bool) -> tuple[Step, ...]:
    """The IRQ and hugepage steps of a device placed on ``node`` (planned again after a rebind,
    from the device as read afterwards)."""
    steps = irq_steps(model, node, context, state, apply)
    steps += hugepage_steps(model, node, state, config, apply)
    return tuple(steps)


def resolve(device: PciDevice, context: DevicesContext, state: DevicesState) -> Resolution:
    """The device's node. A ``numa_node`` guestagent wrote itself counts as the value it replaced
    (the hint it came from may have moved); with no hint left, the written node stays the
    answer, with a note saying so."""
    written = state.records.get(numa_node_path(device.bdf))
    seen = device
    if written is not None and written.applied == str(device.numa_node):
        seen = replace(device, numa_node=_int_or(written.previous, -1))
    resolution = resolve_node(seen, context.nodes, context.dom0_hints, context.config_hints)
    if resolution.node is None and seen is not device:
        return Resolution(
            node=device.numa_node,
            source="kernel",
            notes=[
                f"numa_node {device.numa_node} was written by guestagent earlier; no current "
                "hint or override names a node for this device"
            ],
        )
    return resolution


def recorded_lines(bdf: str, state: DevicesState) -> list[Step]:
    """The device's changes in force from earlier passes (or runs), one ``applied`` line each."""
    lines: list[Step] = []
    for change in state.for_device(bdf):
        if change.kind == "irq_affinity":
            lines.append(Note("applied",
                              f"{change.path} = {change.applied} (was {change.previous})"))
        elif change.kind == "numa_node":
            lines.append(Note("applied",
                              f"numa_node = {change.applied} (was {change.previous})"))
    return lines


def no_node_line(device: PciDevice) -> str:
    kernel = (
        "kernel numa_node is -1"
        if device.numa_node < 0
        else f"kernel numa_node {device.numa_node} is not online"
    )
    return f"no node known: {kernel}, no Dom0 hint, no config override"


def numa_node_steps(device: PciDevice, node: int, source: NodeSource, context: DevicesContext,
                    state: DevicesState, config: DevicesConfig, apply: bool) -> list[Step]:
    """Write ``numa_node`` where the kernel says -1, or where guestagent wrote it earlier and the
    hint has moved since (a Dom0 republish); never over a node the kernel found itself. The
    rebind (when configured) follows the write, and only a write that succeeded."""
    steps: list[Step] = []
    ours = state.records.get(numa_node_path(device.bdf))
    kernel_knows = device.numa_node >= 0 and (ours is None or device.numa_node == node)
    if source in ("dom0", "config") and not kernel_knows:
        steps.append(_numa_node_write(device, node, source, context, config, apply))
    if not apply and config.rebind and device.numa_node < 0:
        steps.append(Note("planned", "rebind the driver after writing numa_node"))
    return steps


def _numa_node_write(device: PciDevice, node: int, source: NodeSource, context: DevicesContext,
                     config: DevicesConfig, apply: bool) -> Step:
    if not config.write_numa_node:
        return Note("skipped", "numa_node left at -1: writing it is off by configuration")
    if not apply:
        return Note("planned", f"write numa_node = {node} ({TAINT_NOTE})")
    cpus = tuple(context.nodes.cpus.get(node, []))
    then = rebind_steps(device, context.protected, cpus) if config.rebind else ()
    return WriteNumaNode(device.bdf, node, device.numa_node, source, then)


def rebind_steps(device: PciDevice, protected: Protected | None,
                 cpus: tuple[int, ...] = ()) -> tuple[Step, ...]:
    """Unbind and rebind the driver, so it allocates its rings on the node (its interfaces
    brought back on the node's ``cpus``); never a protected device (the root file system's,
    the default route's; all of them when unknown)."""
    if device.driver is None:
        return (Note("skipped", "rebind: no driver bound; it will probe on the new node"),)
    refusal = protected.refusal(device.bdf) if protected is not None else NO_PROTECTION_READ
    if refusal is not None:
        return (Note("skipped", f"rebind refused: {refusal}", event="rebind_refused",
                     fields=(("bdf", device.bdf), ("reason", refusal))),)
    return (Rebind(device.bdf, device.driver, cpus),)


def irq_steps(model: DeviceModel, node: int, context: DevicesContext, state: DevicesState,
              apply: bool) -> list[Step]:
    """Every vector of the device onto the node's online CPUs, unless irqbalance owns them."""
    device = model.device
    irqs = device.irqs
    if not irqs:
        return [Note("skipped", "IRQs: the device has none allocated")]
    if not context.irq.touch:
        return [Note("skipped", f"IRQs: {context.irq.reason}")]
    steps: list[Step] = []
    if apply:
        wanted_paths = {irq_affinity_path(i) for i in irqs}
        stale = tuple(c.path for c in state.for_device(device.bdf)
                      if c.kind == "irq_affinity" and c.path not in wanted_paths)
        if stale:
            steps.append(ForgetRecords(stale))
    cpus = context.nodes.cpus.get(node, [])
    if not cpus:
        steps.append(Note("failed", f"IRQs: node {node} has no online CPUs"))
        return steps
    for irq in irqs:
        read = model.irqs.get(irq, IrqRead(irq, "unreadable", error="not read"))
        steps += one_irq_steps(device.bdf, read, cpus, state, apply)
    return steps


def one_irq_steps(bdf: str, read: IrqRead, cpus: list[int], state: DevicesState,
                  apply: bool) -> list[Step]:
    irq, path, wanted = read.irq, irq_affinity_path(read.irq), format_cpulist(cpus)
    if read.state == "not_requested":
        # Seen on real Xen: e1000e allocates its MSI-X vectors at probe, but the kernel makes
        # /proc/irq/N only when the driver requests the IRQ (interface up).
        return [Note("skipped", f"IRQ {irq}: not requested by the driver yet (no "
                     f"/proc/irq/{irq}); pinned on the next pass after it is", pending_irq=irq)]
    if read.state == "no_file":
        return [Note("failed", f"IRQ {irq}: {path} does not exist")]
    if read.state == "unreadable":
        return [Note("failed", f"IRQ {irq}: {read.error}")]
    if read.cpus == cpus:
        if path in state.records:
            return []
        return [Note("skipped", f"IRQ {irq}: already on {wanted}")]
    if not apply:
        return [Note("planned", f"IRQ {irq}: smp_affinity_list {read.text} -> {wanted}")]
    return [SetIrqAffinity(bdf, irq, wanted, read.text)]


def hugepage_steps(model: DeviceModel, node: int, state: DevicesState, config: DevicesConfig,
                   apply: bool) -> list[Step]:
    """The node's 2 MiB pool raised to ``hugepages_2m_per_node``, once per node."""
    want = config.hugepages_2m_per_node
    if want <= 0 or node in state.hugepage_nodes:
        return []
    pool = model.hugepages.get(node, HugepageNode(None, f"node {node}: pool not read"))
    if pool.current is None:
        return [Note("failed", f"hugepages: {pool.error}")]
    current = pool.current
    if current >= want:
        return [Note("skipped", f"hugepages: node {node} already has {current} >= {want}"),
                HugepageNodeDone(node)]
    too_many = hugepages_beyond_bound(node, want, pool.mem_total)
    if too_many is not None:
        return [Note("failed", too_many), HugepageNodeDone(node)]
    if not apply:
        return [Note("planned", f"hugepages: node {node} nr_hugepages {current} -> {want}")]
    return [ReserveHugepages(node, want, current)]


def hugepages_beyond_bound(node: int, want: int, mem_total: int) -> str | None:
    """Why ``want`` 2 MiB pages are too many for the node, or None. The kernel hands over
    every free page it can find for a reservation, so one above half of the node's memory
    is not made (an unknown MemTotal, 0, leaves the reservation to the kernel)."""
    asked = want * HUGE_PAGE_SIZE
    if mem_total <= 0 or asked * 2 <= mem_total:
        return None
    return (f"hugepages: node {node}: {want} pages ({asked // MIB} MiB) is more than half of "
            f"the node's {mem_total // MIB} MiB; not reserved")


# ---------------------------------------------------------------- hotplug


def hotplug_forgets(action: str, bdf: str, unbound: bool, state: DevicesState) -> tuple[str, ...]:
    """The journal records a udev event makes stale: all of a removed device's; on ``unbind``
    (the driver freed its vectors, their numbers may go to another device) its IRQ records, but
    only when no driver is bound again already (our own rebind re-pinned the new vectors)."""
    if action == "remove":
        return tuple(c.path for c in state.for_device(bdf))
    if action == "unbind" and unbound:
        return tuple(c.path for c in state.for_device(bdf) if c.kind == "irq_affinity")
    return ()


def hotplug_reevaluates(action: str) -> tuple[bool, bool]:
    """(re-read the nodes and hints first, evaluate the device again) for a udev action."""
    return action == "add", action in ("add", "bind", "unbind")


def _int_or(text: str, default: int) -> int:
    try:
        return parse_int(text, "state")
    except InputError:
        return default
