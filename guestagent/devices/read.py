"""The devices job's reading: the model its decisions (:mod:`guestagent.devices.plan`) are made on.

* :func:`read_context`: the online nodes and their CPUs, and the Dom0 and configuration hints,
  validated against those nodes (one line per unusable input);
* :func:`read_device_model`: one PCI device (:func:`guestagent.devices.discovery.read_device`),
  the affinity of each of its vectors, and the hugepage pools of the nodes still to handle.

Reads only: nothing here writes. A device whose directory is gone raises
:class:`~guestagent.devices.discovery.DeviceGoneError`. irqbalance
(:func:`guestagent.devices.irqbalance.detect`) and the protected devices
(:func:`guestagent.devices.protect.protected_devices`) are read by the job once, on first use.
"""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from guestagent.devices.discovery import DeviceGoneError, device_exists, read_device, read_node_info
from guestagent.devices.hints import ConfigHintSource, HintSource, validate_hints
from guestagent.devices.model import DeviceHint, NodeInfo, PciDevice
from guestagent.devices.plan import (
    DeviceModel,
    HugepageNode,
    IrqRead,
    hugepages_path,
    irq_affinity_path,
)
from guestagent.errors import InputError, MissingInputError
from guestagent.hostfs import HostFS, parse_cpulist
from guestagent.nodesysfs import node_meminfo


@dataclass
class HintsAndNodes:
    """The nodes and the hints that name one of them; ``problems``: one line per input ignored."""

    nodes: NodeInfo
    dom0_hints: dict[str, DeviceHint] = field(default_factory=dict)
    config_hints: dict[str, DeviceHint] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def read_context(hostfs: HostFS, sources: Sequence[HintSource],
                 overrides: dict[str, int]) -> HintsAndNodes:
    """The nodes, then every hint source (the first to name a device wins), then the
    configuration's ``node_overrides``; a source that cannot be read is one problem line."""
    problems: list[str] = []
    found = HintsAndNodes(nodes=read_node_info(hostfs, problems))
    for source in sources:
        try:
            hints = source.hints()
        except (OSError, InputError) as e:
            problems.append(f"{source.name} hints unreadable: {e}")
            continue
        good, bad = validate_hints(hints, found.nodes, source.name)
        problems += bad
        for bdf, hint in good.items():
            found.dom0_hints.setdefault(bdf, hint)
    found.config_hints, bad = validate_hints(
        ConfigHintSource(overrides).hints(), found.nodes, "config")
    found.problems = problems + bad
    return found


def read_irq(hostfs: HostFS, bdf: str, irq: int) -> IrqRead:
    """One vector's affinity; raises DeviceGoneError when the device itself is gone."""
    path = irq_affinity_path(irq)
    try:
        text = hostfs.read_text(path).strip()
        cpus = parse_cpulist(text, path)
    except MissingInputError:
        if not device_exists(hostfs, bdf):
            raise DeviceGoneError(bdf, f"IRQ {irq} affinity") from None
        if not hostfs.exists(f"/proc/irq/{irq}"):
            return IrqRead(irq, "not_requested")
        return IrqRead(irq, "no_file")
    except InputError as e:
        return IrqRead(irq, "unreadable", error=str(e))
    return IrqRead(irq, "ok", text=text, cpus=cpus)


def read_hugepage_node(hostfs: HostFS, node: int) -> HugepageNode:
    """The node's 2 MiB pool and its ``MemTotal`` (0 when its meminfo cannot be read)."""
    try:
        current = hostfs.read_int(hugepages_path(node), minimum=0)
    except InputError as e:
        return HugepageNode(None, str(e))
    try:
        meminfo = node_meminfo(hostfs, node)  # the one node reader, as topology and tiering
    except InputError:
        return HugepageNode(current)
    mem_total = next((v for k, v in meminfo.items() if k.endswith("MemTotal")), 0)
    return HugepageNode(current, mem_total=mem_total)


def read_device_model(hostfs: HostFS, bdf: str, *, irqs: bool,
                      hugepage_nodes: Iterable[int] | None = None) -> DeviceModel:
    """The device, its vectors' affinity (with ``irqs``: IRQ affinity is ours to set) and the
    pools of ``hugepage_nodes`` plus the device's own node (None: hugepages are off)."""
    return complete_model(hostfs, read_device(hostfs, bdf), irqs=irqs,
                          hugepage_nodes=hugepage_nodes)


def complete_model(hostfs: HostFS, device: PciDevice, *, irqs: bool,
                   hugepage_nodes: Iterable[int] | None = None) -> DeviceModel:
    """:func:`read_device_model` for a device read already."""
    reads = {irq: read_irq(hostfs, device.bdf, irq) for irq in device.irqs} if irqs else {}
    nodes = set(hugepage_nodes) if hugepage_nodes is not None else set()
    if hugepage_nodes is not None and device.numa_node >= 0:
        nodes.add(device.numa_node)
    pools = {node: read_hugepage_node(hostfs, node) for node in sorted(nodes)}
    return DeviceModel(device=device, irqs=reads, hugepages=pools)
