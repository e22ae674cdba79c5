"""Plain data for I/O NUMA: devices, hints, node resolutions, the nodes, per-device reports."""

# House rule (docs/DEVELOPING.md): Optional[...], not X | None, for Python 3.9.

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

#: Where a device's node came from, in order of trust.
NodeSource = Literal["kernel", "dom0", "config", "unknown"]

#: A PCI address as sysfs names it: domain:bus:slot.function, lower-case hex.
BDF_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")


def is_bdf(text: str) -> bool:
    # fullmatch: "$" alone would also accept a trailing newline.
    return BDF_RE.fullmatch(text) is not None


@dataclass(frozen=True)
class PciDevice:
    """One PCI function as ``/sys/bus/pci/devices/<bdf>`` shows it."""

    bdf: str
    vendor: int
    device: int
    pci_class: int
    driver: str | None
    #: ``numa_node`` as read; -1 is NUMA_NO_NODE.
    numa_node: int
    #: ``local_cpulist``: the CPUs of its node, or every online CPU when the node is -1.
    local_cpus: list[int]
    #: ``msi_irqs/<n>`` names, sorted.
    msi_irqs: list[int]
    #: ``msi_irqs/<n>`` contents (``msi`` or ``msix``) by IRQ; absent when unreadable.
    msi_modes: dict[int, str]
    #: The legacy INTx ``irq`` (0 = none).
    legacy_irq: int
    #: Lines about single inputs that were unusable but did not stop the read.
    problems: list[str] = field(default_factory=list)

    @property
    def irqs(self) -> list[int]:
        """The interrupts that carry this device's traffic: its MSI/MSI-X vectors, else INTx."""
        if self.msi_irqs:
            return list(self.msi_irqs)
        return [self.legacy_irq] if self.legacy_irq > 0 else []

    @property
    def class_name(self) -> str:
        return _CLASS_NAMES.get(self.pci_class >> 16, "other")


_CLASS_NAMES = {
    0x00: "unclassified",
    0x01: "storage",
    0x02: "network",
    0x03: "display",
    0x04: "multimedia",
    0x05: "memory",
    0x06: "bridge",
    0x07: "communication",
    0x08: "system",
    0x0C: "serial-bus",
    0x12: "accelerator",
}


@dataclass(frozen=True)
class DeviceHint:
    """What Dom0 (or the operator) says about one device: its guest vnode and host node."""

    #: The device's address inside this guest, as sysfs names it.
    guest_bdf: str
    #: The guest NUMA node (vnode) the device sits closest to.
    vnode: int
    #: The physical (host) node of the device; None when the source does not know or say it.
    host_node: int | None = None
    #: How Dom0 chose the vnode (``guestagent.dom0.schema``: pnode, nearest, single, none);
    #: "" when the source does not say (the configuration's overrides).
    vnode_source: str = ""


@dataclass(frozen=True)
class NodeInfo:
    """The guest's NUMA nodes as the kernel has them online, and their online CPUs."""

    online: list[int]
    #: node -> its CPUs that are online now.
    cpus: dict[int, list[int]]
    online_cpus: list[int]


@dataclass(frozen=True)
class Resolution:
    """The node a device belongs on, and where that answer came from."""

    node: int | None
    source: NodeSource
    #: Why the better sources were not used (e.g. a hint naming an offline node).
    notes: list[str] = field(default_factory=list)


@dataclass
class DeviceReport:
    """What ``guestagent devices`` shows for one device."""

    bdf: str
    vendor: str = ""
    device: str = ""
    pci_class: str = ""
    driver: str | None = None
    kernel_node: int | None = None
    node: int | None = None
    source: NodeSource = "unknown"
    irqs: list[int] = field(default_factory=list)
    #: Changes in force (made now or recorded in the state file earlier).
    applied: list[str] = field(default_factory=list)
    #: What ``apply`` would do (shown by the read-only ``guestagent devices``).
    planned: list[str] = field(default_factory=list)
    #: What was deliberately not done, and why.
    skipped: list[str] = field(default_factory=list)
    #: What went wrong, one line each.
    failed: list[str] = field(default_factory=list)
    #: Allocated vectors the driver has not requested yet (no /proc/irq/N): a later pass pins them.
    pending_irqs: list[int] = field(default_factory=list)
    #: The device's host node, from Dom0's hint (None: no hint, or Xen knows no node).
    host_node: int | None = None
    #: The device sits on a host node where this guest has no vnode (Dom0's hint says so).
    remote: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "bdf": self.bdf,
            "vendor": self.vendor,
            "device": self.device,
            "class": self.pci_class,
            "driver": self.driver,
            "kernel_node": self.kernel_node,
            "node": self.node,
            "source": self.source,
            "irqs": self.irqs,
            "applied": self.applied,
            "planned": self.planned,
            "skipped": self.skipped,
            "failed": self.failed,
            "pending_irqs": self.pending_irqs,
            "host_node": self.host_node,
            "remote": self.remote,
        }
