"""The topology model: plain data built from sysfs and the vNUMA hypercall.

:class:`LinuxView` is what sysfs says, :class:`~guestagent.xen.vnuma.VnumaInfo` what Xen says, and
:class:`Topology` both side by side with the disagreements spelled out in ``mismatches``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from guestagent.xen.detect import Hypervisor
from guestagent.xen.vnuma import VnumaInfo

SOURCE_HYPERCALL = "hypercall"
SOURCE_SYSFS = "sysfs"

#: The kernel's LOCAL_DISTANCE: the distance of a node to itself when there is no SLIT.
LOCAL_DISTANCE = 10


@dataclass
class Node:
    """One NUMA node. Ids need not be contiguous; a node may have no CPUs or no memory."""

    id: int
    cpus: list[int]
    memory_bytes: int
    #: distance from this node to each other node (by node id); may be asymmetric, may be empty
    #: when the node's distance file was unreadable.
    distances: dict[int, int]
    has_cpu: bool
    has_memory: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "cpus": list(self.cpus),
            "memory_bytes": self.memory_bytes,
            "distances": {str(k): v for k, v in sorted(self.distances.items())},
            "has_cpu": self.has_cpu,
            "has_memory": self.has_memory,
        }


@dataclass
class LinuxView:
    """What sysfs (and /proc/meminfo) say."""

    nodes: list[Node]
    online_cpus: list[int]
    present_cpus: list[int] | None = None
    possible_cpus: list[int] | None = None
    possible_nodes: list[int] | None = None
    #: False when there is no /sys/devices/system/node (CONFIG_NUMA=n): ``nodes`` then holds one
    #: synthesized node 0 with every online CPU and /proc/meminfo's MemTotal.
    numa: bool = True
    #: Non-fatal problems (one line each, naming the file and value); the affected field fell back.
    problems: list[str] = field(default_factory=list)

    def node_ids(self) -> list[int]:
        return [n.id for n in self.nodes]

    def node_of_cpu(self, cpu: int) -> int | None:
        for node in self.nodes:
            if cpu in node.cpus:
                return node.id
        return None

    def cpu_nodes(self) -> dict[int, int]:
        """Every listed CPU's node, built in one pass: the answer of :meth:`node_of_cpu` for all
        CPUs at once (a CPU in two cpulists belongs to the first node listing it)."""
        where: dict[int, int] = {}
        for node in self.nodes:
            for cpu in node.cpus:
                where.setdefault(cpu, node.id)
        return where


def hypercall_to_json(info: VnumaInfo) -> dict[str, Any]:
    return {
        "vnodes": info.nr_vnodes,
        "vcpu_to_vnode": list(info.vcpu_to_vnode),
        "distances": [list(row) for row in info.distances],
        "memory_ranges": [
            {"start": r.start, "end": r.end, "node": r.node}
            for r in sorted(info.memory_ranges, key=lambda r: r.start)
        ],
    }


@dataclass
class Topology:
    """Both views of the NUMA topology and where they disagree."""

    hypervisor: Hypervisor
    #: the sources that answered, in the order of the JSON contract: "hypercall", then "sysfs"
    sources: list[str]
    #: sorted by id; from sysfs, else (Linux has no NUMA view, or sysfs failed) from the hypercall
    nodes: list[Node]
    nodes_from: str | None
    hypercall: VnumaInfo | None
    #: "ok" when the hypercall answered, else one line saying why it did not
    hypercall_status: str
    mismatches: list[str]
    linux: LinuxView | None = None
    #: one line per unreadable input (sysfs failure, garbage file, garbage hypercall answer)
    errors: list[str] = field(default_factory=list)

    @property
    def answered(self) -> bool:
        return bool(self.sources)

    def to_json(self) -> dict[str, Any]:
        linux = self.linux
        return {
            "hypervisor": self.hypervisor.kind,
            "guest_type": self.hypervisor.guest_type,
            "dom0": self.hypervisor.is_dom0,
            "sources": list(self.sources),
            "nodes": [n.to_json() for n in sorted(self.nodes, key=lambda n: n.id)],
            "nodes_from": self.nodes_from,
            "hypercall": None if self.hypercall is None else hypercall_to_json(self.hypercall),
            "hypercall_status": self.hypercall_status,
            "linux_numa": None if linux is None else linux.numa,
            "online_cpus": None if linux is None else list(linux.online_cpus),
            "mismatches": list(self.mismatches),
            "errors": list(self.errors),
        }
