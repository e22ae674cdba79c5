"""Compare the Linux view with Xen's vNUMA answer, in words an operator understands.

Pure functions over plain data: no I/O, no clock.

Linux node ids are compared with Xen vnode ids directly: in an HVM/PVH guest Linux numbers its
nodes from the SRAT proximity domains that hvmloader/libxl write as the vnode ids, so they are the
same.

What counts as a disagreement:

* node count: Xen's vnodes vs Linux's nodes (a PV guest always sees one node); when the counts
  differ and Linux sees a single node, per-node comparisons are skipped (they would only repeat
  it);
* vCPUs: a vCPU Xen knows that is offline (or absent) in Linux; an online CPU in a Linux node
  other than its vnode, or in no node; an online Linux CPU beyond Xen's vCPU count;
* memory: Linux node memory > 0 where Xen gives the vnode none, or none where Xen gives some;
  Linux MemTotal above the vnode's ranges; Linux MemTotal below :data:`MIN_MEMORY_FRACTION` of the
  vnode's ranges. Some shortfall is normal: MemTotal excludes the kernel's own reservations (the
  memmap, crash kernel, firmware areas), and they are charged unevenly (a real 3-vnode HVM guest
  showed 98 %, 98 % and 81 % of 512/256/256 MiB); ballooning down lowers it further;
* distances: any entry that differs, in either direction (asymmetric matrices are compared as such).

:func:`decide` is the topology job's decide step: from the :class:`Topology` read, the warnings
to log and the tree to publish (:class:`TopologyPlan`).
"""

from __future__ import annotations

from dataclasses import dataclass

from guestagent.errors import InputError
from guestagent.hostfs import format_cpulist
from guestagent.topology.model import (
    SOURCE_HYPERCALL,
    SOURCE_SYSFS,
    LinuxView,
    Node,
    Topology,
)
from guestagent.units import format_mib
from guestagent.xen.detect import Hypervisor
from guestagent.xen.errors import (
    HypercallError,
    NotOnXen,
    NoVnuma,
    PrivcmdRestricted,
    XenTooOld,
    XenUnavailable,
)
from guestagent.xen.vnuma import VnumaInfo

#: A Linux node with less than this share of its vnode's memory is reported.
MIN_MEMORY_FRACTION = 0.5

STATUS_OK = "ok"
STATUS_NO_HYPERVISOR = "not attempted: no hypervisor found"

_mib = format_mib


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _prefixed(prefix: str, reason: str) -> str:
    """``prefix: reason``, without repeating a prefix the reason already starts with."""
    if reason.lower().startswith(prefix.lower()):
        return reason
    return f"{prefix}: {reason}"


def hypercall_status(error: BaseException) -> str:
    """One line saying why XENMEM_get_vnumainfo did not answer."""
    if isinstance(error, NotOnXen):
        return _prefixed("not on Xen", error.reason)
    if isinstance(error, PrivcmdRestricted):
        return _prefixed("privcmd restricted", error.reason)
    if isinstance(error, NoVnuma):
        return _prefixed("no vNUMA", error.reason)
    if isinstance(error, XenTooOld):
        return _prefixed("Xen too old", error.reason)
    if isinstance(error, XenUnavailable):
        return _prefixed("Xen unavailable", error.reason)
    if isinstance(error, HypercallError):
        return f"hypercall failed: {error}"
    if isinstance(error, InputError):
        return f"hypercall answered garbage: {error}"
    if isinstance(error, ImportError):
        return f"C extension not built (reinstall guestagent to build it): {error}"
    if isinstance(error, OSError):
        return f"hypercall failed: {error}"
    return f"hypercall failed: {type(error).__name__}: {error}"


def nodes_from_vnuma(info: VnumaInfo) -> list[Node]:
    """Xen's vnodes as nodes, for when Linux has no NUMA view of its own."""
    nodes: list[Node] = []
    vcpus, memory_of = info.vcpus_by_vnode(), info.memory_by_vnode()
    for v in range(info.nr_vnodes):
        cpus, memory = vcpus[v], memory_of[v]
        distances = {j: info.distances[v][j] for j in range(info.nr_vnodes)}
        nodes.append(Node(v, cpus, memory, distances, bool(cpus), memory > 0))
    return nodes


def _count_mismatch(linux: LinuxView, info: VnumaInfo, guest_type: str | None) -> str:
    seen = f"Linux sees {_plural(len(linux.nodes), 'node')}"
    if len(linux.nodes) > 1:
        seen += f" ({', '.join(str(i) for i in linux.node_ids())})"
    head = f"Xen reports {_plural(info.nr_vnodes, 'vnode')} but {seen}"
    if not linux.numa:
        return (
            f"{head}: Linux has no NUMA view (no /sys/devices/system/node: kernel built without "
            "CONFIG_NUMA)"
        )
    if len(linux.nodes) < info.nr_vnodes:
        if guest_type == "PV":
            return f"{head}: PV guests get no NUMA view (Linux disables SRAT for PV)"
        if guest_type in ("HVM", "PVH"):
            return (
                f"{head}: the kernel did not take the SRAT/SLIT Xen built (booted with numa=off, "
                "or too few nodes in CONFIG_NODES_SHIFT?)"
            )
        return (
            f"{head}: Linux did not take Xen's vNUMA layout (a PV guest, numa=off, or a kernel "
            "without NUMA)"
        )
    return f"{head}: Linux has nodes that Xen does not know"


def _cpu_mismatches(linux: LinuxView, info: VnumaInfo, compare_nodes: bool) -> list[str]:
    out: list[str] = []
    online = set(linux.online_cpus)
    present = None if linux.present_cpus is None else set(linux.present_cpus)
    # One map, not a search of every cpulist per vCPU (that was quadratic in the vCPU count).
    cpu_nodes = linux.cpu_nodes() if compare_nodes else {}
    for vcpu, vnode in enumerate(info.vcpu_to_vnode):
        if vcpu not in online:
            if present is not None and vcpu not in present:
                out.append(
                    f"vCPU {vcpu} is not present in Linux (not plugged in); Xen places it on "
                    f"vnode {vnode}"
                )
            else:
                out.append(f"vCPU {vcpu} is offline in Linux; Xen places it on vnode {vnode}")
            continue
        if not compare_nodes:
            continue
        node = cpu_nodes.get(vcpu)
        if node is None:
            out.append(
                f"vCPU {vcpu} is online but in no Linux node's cpulist; Xen places it on "
                f"vnode {vnode}"
            )
        elif node != vnode:
            out.append(f"vCPU {vcpu} is on Linux node {node} but Xen places it on vnode {vnode}")
    extra = [c for c in linux.online_cpus if c >= len(info.vcpu_to_vnode)]
    if extra:
        out.append(
            f"Linux CPUs {format_cpulist(extra)} are online but Xen reports only "
            f"{_plural(len(info.vcpu_to_vnode), 'vCPU')}"
        )
    return out


def _memory_mismatch(node: Node, xen_bytes: int) -> str | None:
    linux_bytes = node.memory_bytes
    v = node.id
    if linux_bytes > 0 and xen_bytes == 0:
        return f"Linux node {v} has {_mib(linux_bytes)} but Xen gives vnode {v} no memory"
    if linux_bytes == 0 and xen_bytes > 0:
        return f"Linux node {v} has no memory but Xen gives vnode {v} {_mib(xen_bytes)}"
    if linux_bytes > xen_bytes:
        return (
            f"Linux node {v} has {_mib(linux_bytes)}, more than the {_mib(xen_bytes)} in Xen's "
            f"ranges for vnode {v} (memory hot-added beyond the vNUMA layout?)"
        )
    if linux_bytes < xen_bytes * MIN_MEMORY_FRACTION:
        return (
            f"Linux node {v} has {_mib(linux_bytes)}, under {MIN_MEMORY_FRACTION:.0%} of the "
            f"{_mib(xen_bytes)} Xen gives vnode {v} (ballooned down, or memory offlined?)"
        )
    return None


def _distance_mismatches(node: Node, info: VnumaInfo) -> list[str]:
    out: list[str] = []
    v = node.id
    if not node.distances:
        return out  # unreadable; already reported as an error
    for j in range(info.nr_vnodes):
        linux_d = node.distances.get(j)
        xen_d = info.distances[v][j]
        if linux_d is not None and linux_d != xen_d:
            out.append(
                f"distance from node {v} to node {j}: Linux says {linux_d}, Xen says {xen_d}"
            )
    return out


def reconcile(linux: LinuxView, info: VnumaInfo, guest_type: str | None) -> list[str]:
    """Every disagreement between the two views, one sentence each."""
    mismatches: list[str] = []
    counts_differ = len(linux.nodes) != info.nr_vnodes
    if counts_differ:
        mismatches.append(_count_mismatch(linux, info, guest_type))
    # With one Linux node against several vnodes every vCPU, memory and distance entry would
    # disagree for the one reason already given.
    per_node = linux.numa and not (counts_differ and len(linux.nodes) == 1)
    mismatches.extend(_cpu_mismatches(linux, info, compare_nodes=per_node))
    if not per_node:
        return mismatches
    memory_of = info.memory_by_vnode()
    for node in linux.nodes:
        if node.id >= info.nr_vnodes:
            mismatches.append(f"Linux node {node.id} has no matching Xen vnode")
            continue
        memory = _memory_mismatch(node, memory_of[node.id])
        if memory is not None:
            mismatches.append(memory)
        mismatches.extend(_distance_mismatches(node, info))
    linux_ids = set(linux.node_ids())
    for v in range(info.nr_vnodes):
        if v not in linux_ids and len(linux.nodes) > 1:
            mismatches.append(f"Xen vnode {v} has no Linux node")
    return mismatches


def assemble(
    hypervisor: Hypervisor,
    linux: LinuxView | None,
    linux_error: str | None,
    info: VnumaInfo | None,
    status: str,
) -> Topology:
    """Put both views together. ``linux_error`` is the line saying why sysfs could not be read."""
    sources: list[str] = []
    if info is not None:
        sources.append(SOURCE_HYPERCALL)
    if linux is not None:
        sources.append(SOURCE_SYSFS)
    errors: list[str] = list(hypervisor.problems)
    if linux_error is not None:
        errors.append(linux_error)
    if linux is not None:
        errors.extend(linux.problems)
    if info is None and status.startswith("hypercall answered garbage"):
        errors.append(status)

    nodes: list[Node] = []
    nodes_from: str | None = None
    if linux is not None and (linux.numa or info is None):
        nodes, nodes_from = list(linux.nodes), SOURCE_SYSFS
    elif info is not None:
        nodes, nodes_from = nodes_from_vnuma(info), SOURCE_HYPERCALL

    mismatches: list[str] = []
    if linux is not None and info is not None:
        mismatches = reconcile(linux, info, hypervisor.guest_type)
    by_id: dict[int, Node] = {n.id: n for n in nodes}
    return Topology(
        hypervisor=hypervisor,
        sources=sources,
        nodes=[by_id[i] for i in sorted(by_id)],
        nodes_from=nodes_from,
        hypercall=info,
        hypercall_status=status,
        mismatches=mismatches,
        linux=linux,
        errors=errors,
    )


# -- the topology job's decision: what one pass reports and publishes ------------------------------


@dataclass(frozen=True)
class TopologyPlan:
    """What one pass of the topology job does with what it read: the input problems to report
    (one warning each) and the tree to publish under ``schema.BASE`` (None: nothing answered,
    so nothing is published and the tree already there stays), leaving the sections in
    ``leave`` to their own publishers."""

    warnings: tuple[str, ...]
    tree: dict[str, str] | None
    leave: tuple[str, ...] = ()


def decide(topology: Topology) -> TopologyPlan:
    """The topology job's decide step (pure). It has no state and no configuration of its own:
    every pass publishes the whole description of what was read (the xenstore sync writes only
    what differs), and a pass where neither view answered publishes nothing rather than an
    empty description that would erase the last good one."""
    from guestagent.schema import TOPOLOGY_SECTION, guest_tree, others

    warnings = tuple(topology.errors)
    if not topology.answered:
        return TopologyPlan(warnings, None)
    return TopologyPlan(warnings, guest_tree(topology), others(TOPOLOGY_SECTION))
