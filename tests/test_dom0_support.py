"""Shared pieces of the Dom0 tests (no tests here): the fixture host, and libxl's backend nodes."""

from __future__ import annotations

from pathlib import Path

from guestagent.dom0.topology import HostTopology, build_topology
from guestagent.xen.sysctl import CpuTopo, NodeMemory, NumaInfo, PciAddress, PciNode

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "dom0-three-node"
GIB = 1 << 30
DISTANCES = [[10, 21, 31], [21, 10, 17], [31, 17, 10]]
#: (seg, bus, devfn) -> node (None: known without a node); 0000:af:00.0 is unknown to Xen.
PCI_NODES: dict[tuple[int, int, int], int | None] = {
    (0, 0x00, 0x00): None,
    (0, 0x00, 0x10): 0,
    (0, 0x3B, 0x00): 1,
    (0, 0x3B, 0x01): 1,
    (0, 0x5E, 0x00): 2,
}
CPUS = [(0, 0, 0), (1, 0, 0), (0, 1, 1), (1, 1, 1), (0, 2, 2), (1, 2, 2)]


def fixture_topology() -> HostTopology:
    """The host the fixture models, as build_topology would join the sysctl answers."""
    numa = NumaInfo([NodeMemory(16 * GIB, 12 * GIB)] * 3, [list(r) for r in DISTANCES])
    cpus = [CpuTopo(c, s, n) for c, s, n in CPUS]
    pci = []
    for name in sorted(p.name for p in (FIXTURE / "sys/bus/pci/devices").iterdir()):
        address = PciAddress.parse(name)
        key = (address.seg, address.bus, address.devfn)
        pci.append(PciNode(address, key in PCI_NODES, PCI_NODES.get(key)))
    return build_topology(numa, cpus, pci, xen_release=(4, 17), interface_version=0x15)


def backend_nodes(
    domid: int, devices: list[tuple[str, str | None, str | None]]
) -> dict[str, bytes]:
    """What libxl (and pciback) write for ``devices`` = [(host BDF, vdevfn, vdev)]."""
    base = f"/local/domain/0/backend/pci/{domid}/0"
    nodes = {
        f"{base}/frontend": f"/local/domain/{domid}/device/pci/0".encode(),
        f"{base}/frontend-id": str(domid).encode(),
        f"{base}/online": b"1",
        f"{base}/state": b"4",
        f"{base}/num_devs": str(len(devices)).encode(),
    }
    for i, (bdf, vdevfn, vdev) in enumerate(devices):
        nodes[f"{base}/key-{i}"] = bdf.encode()
        nodes[f"{base}/dev-{i}"] = bdf.encode()
        nodes[f"{base}/opts-{i}"] = b"msitranslate=0,power_mgmt=0,permissive=0,rdm_policy=strict"
        nodes[f"{base}/state-{i}"] = b"4"
        if vdevfn is not None:
            nodes[f"{base}/vdevfn-{i}"] = vdevfn.encode()
        if vdev is not None:
            nodes[f"{base}/vdev-{i}"] = vdev.encode()
    return nodes
