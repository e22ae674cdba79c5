"""The host's NUMA topology as Xen knows it: nodes, CPUs and PCI devices (reference 7.3, 7.4).

:func:`read_host_topology` asks the four sysctls; the device list is every entry of Dom0's
``/sys/bus/pci/devices``, as libxl's ``libxl__pci_topology_init`` does. :func:`build_topology`
(pure) cross-checks the answers: CPU and device node ids must name a node numainfo reported.
:func:`render_table` prints it the way ``xl info -n`` does; :func:`to_json` as one object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.units import MIB
from guestagent.xen.sysctl import CpuTopo, NumaInfo, PciAddress, PciNode, PhysInfo

if TYPE_CHECKING:
    from guestagent.xen.sysctl import Sysctl

PCI_DEVICES_DIR = "/sys/bus/pci/devices"


@dataclass(frozen=True)
class HostNode:
    id: int
    memsize: int | None  # bytes; None when the node is offline
    memfree: int | None
    distances: list[int | None]  # to every node id; None = unknown

    @property
    def online(self) -> bool:
        return self.memsize is not None


@dataclass(frozen=True)
class HostCpu:
    id: int
    core: int
    socket: int
    node: int | None


@dataclass(frozen=True)
class HostDevice:
    address: PciAddress
    known: bool  # Xen knows the device (Dom0 reported it with PHYSDEVOP_pci_device_add)
    node: int | None

    @property
    def bdf(self) -> str:
        return str(self.address)


@dataclass(frozen=True)
class HostTopology:
    nodes: list[HostNode]
    cpus: list[HostCpu]
    devices: list[HostDevice]
    physinfo: PhysInfo | None = None
    xen_release: tuple[int, int] | None = None
    interface_version: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    def device(self, address: PciAddress) -> HostDevice | None:
        for device in self.devices:
            if device.address == address:
                return device
        return None

    def distance(self, a: int, b: int) -> int | None:
        if 0 <= a < self.num_nodes and 0 <= b < self.num_nodes:
            return self.nodes[a].distances[b]
        return None


def build_topology(
    numa: NumaInfo,
    cputopo: Sequence[CpuTopo],
    pci: Sequence[PciNode],
    physinfo: PhysInfo | None = None,
    xen_release: tuple[int, int] | None = None,
    interface_version: int | None = None,
    problems: Sequence[str] = (),
) -> HostTopology:
    """Join the sysctl answers; InputError when a CPU or device names a node numainfo lacks."""
    n = numa.num_nodes
    nodes = [
        HostNode(i, m.memsize, m.memfree, list(numa.distances[i]))
        for i, m in enumerate(numa.memory)
    ]
    cpus: list[HostCpu] = []
    for cpu, topo in enumerate(cputopo):
        if topo.core is None or topo.socket is None:
            continue  # not present
        if topo.node is not None and topo.node >= n:
            raise InputError(
                "XEN_SYSCTL_cputopoinfo", f"cpu {cpu} is on node {topo.node}, numainfo has {n}"
            )
        cpus.append(HostCpu(cpu, topo.core, topo.socket, topo.node))
    devices: list[HostDevice] = []
    for entry in pci:
        if entry.node is not None and entry.node >= n:
            raise InputError(
                "XEN_SYSCTL_pcitopoinfo",
                f"device {entry.address} is on node {entry.node}, numainfo has {n}",
            )
        devices.append(HostDevice(entry.address, entry.known, entry.node))
    return HostTopology(
        nodes, cpus, devices, physinfo, xen_release, interface_version, list(problems)
    )


def list_pci_devices(hostfs: HostFS, problems: list[str]) -> list[PciAddress]:
    """Dom0's PCI functions from ``/sys/bus/pci/devices``; odd entry names are reported, skipped."""
    try:
        names = hostfs.listdir(PCI_DEVICES_DIR)
    except InputError as e:
        problems.append(str(e))
        return []
    addresses: list[PciAddress] = []
    for name in names:
        try:
            addresses.append(PciAddress.parse(name, f"{PCI_DEVICES_DIR}/{name}"))
        except InputError as e:
            problems.append(str(e))
    return sorted(addresses)


def read_host_topology(
    hostfs: HostFS, sysctl: Sysctl, extra: Sequence[PciAddress] = ()
) -> HostTopology:
    """Ask Xen (numainfo, cputopoinfo, pcitopoinfo for Dom0's devices and ``extra``, physinfo)."""
    problems: list[str] = []
    addresses = sorted(set(list_pci_devices(hostfs, problems)) | set(extra))
    numa = sysctl.numainfo()
    cputopo = sysctl.cputopoinfo()
    pci = sysctl.pcitopoinfo(addresses)
    physinfo = sysctl.physinfo()
    return build_topology(
        numa, cputopo, pci, physinfo, sysctl.xen_release, sysctl.interface_version, problems
    )


# --- output ------------------------------------------------------------------------------------


def _version_text(topology: HostTopology) -> str:
    xen = "unknown" if topology.xen_release is None else "{}.{}".format(*topology.xen_release)
    iface = "unknown" if topology.interface_version is None else f"{topology.interface_version:#x}"
    return f"xen {xen}, sysctl interface {iface}"


def render_table(topology: HostTopology) -> str:
    """``xl info -n``'s three sections (memory in MiB), plus what Xen could not place."""
    lines = [f"host topology ({_version_text(topology)})"]
    lines.append("numa_info              :")
    lines.append("node:    memsize    memfree    distances")
    for node in topology.nodes:
        dist = ",".join("-" if d is None else str(d) for d in node.distances)
        if node.memsize is None or node.memfree is None:
            lines.append(f"{node.id:4d}:    {'offline':>6}     {'-':>6}      {dist}")
        else:
            size, free = node.memsize // MIB, node.memfree // MIB
            lines.append(f"{node.id:4d}:    {size:6d}     {free:6d}      {dist}")
    lines.append("cpu_topology           :")
    lines.append("cpu:    core    socket     node")
    for cpu in topology.cpus:
        where = "-" if cpu.node is None else str(cpu.node)
        lines.append(f"{cpu.id:3d}:    {cpu.core:4d}     {cpu.socket:4d}     {where:>4}")
    lines.append("device topology        :")
    placed = [d for d in topology.devices if d.node is not None]
    if placed:
        lines.append("device           node")
        lines.extend(f"{d.bdf}      {d.node}" for d in placed)
    else:
        lines.append("No device topology data available")
    no_node = [d.bdf for d in topology.devices if d.known and d.node is None]
    unknown = [d.bdf for d in topology.devices if not d.known]
    if no_node:
        lines.append(f"without a node ({len(no_node)}): {' '.join(no_node)}")
    if unknown:
        lines.append(f"unknown to Xen ({len(unknown)}): {' '.join(unknown)}")
    for problem in topology.problems:
        lines.append(f"warning: {problem}")
    return "\n".join(lines) + "\n"


def to_json(topology: HostTopology) -> dict[str, Any]:
    p = topology.physinfo
    physinfo: dict[str, Any] | None = None
    if p is not None:
        physinfo = {
            "nr_cpus": p.nr_cpus,
            "nr_nodes": p.nr_nodes,
            "threads_per_core": p.threads_per_core,
            "cores_per_socket": p.cores_per_socket,
            "cpu_khz": p.cpu_khz,
            "total_pages": p.total_pages,
            "free_pages": p.free_pages,
        }
    return {
        "xen": None if topology.xen_release is None else "{}.{}".format(*topology.xen_release),
        "sysctl_interface_version": topology.interface_version,
        "physinfo": physinfo,
        "nodes": [
            {
                "id": n.id,
                "online": n.online,
                "memsize_bytes": n.memsize,
                "memfree_bytes": n.memfree,
                "distances": n.distances,
            }
            for n in topology.nodes
        ],
        "cpus": [
            {"id": c.id, "core": c.core, "socket": c.socket, "node": c.node}
            for c in topology.cpus
        ],
        "devices": [
            {"bdf": d.bdf, "known_to_xen": d.known, "node": d.node} for d in topology.devices
        ],
        "problems": list(topology.problems),
    }


