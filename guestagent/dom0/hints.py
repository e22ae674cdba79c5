"""Which guest vnode each passthrough device belongs to (pure: no I/O).

For every device of a guest's PCI backend: its host node from the host topology
(``XEN_SYSCTL_pcitopoinfo``), then the guest's vnode on that node from the toolstack's vnode ->
pnode map. No vnode on that node: the vnode whose pnode is nearest by the host distance matrix
(ties: the lower vnode). No vNUMA: vnode 0, the guest's only node. The guest BDF is pciback's
``vdev-N`` for PV guests and libxl's ``vdevfn-N`` (on 0000:00) for HVM guests.
"""

from __future__ import annotations

from collections.abc import Sequence

from guestagent.dom0.backend import BackendDevice
from guestagent.dom0.schema import DeviceHint
from guestagent.dom0.toolstack import GuestConfig
from guestagent.dom0.topology import HostTopology
from guestagent.errors import InputError
from guestagent.xen.sysctl import PciAddress


def choose_vnode(
    host_node: int | None, vnode_pnodes: Sequence[int], topology: HostTopology
) -> tuple[int | None, str]:
    """(vnode, how it was chosen): see :mod:`guestagent.dom0.schema` for the sources."""
    if not vnode_pnodes:
        return 0, "single"
    if host_node is None:
        return None, "none"
    for vnode, pnode in enumerate(vnode_pnodes):
        if pnode == host_node:
            return vnode, "pnode"
    best: tuple[int, int] | None = None
    for vnode, pnode in enumerate(vnode_pnodes):
        distance = topology.distance(host_node, pnode)
        if distance is not None and (best is None or distance < best[0]):
            best = (distance, vnode)
    if best is None:
        return None, "none"
    return best[1], "nearest"


def on_remote_node(hint: DeviceHint) -> bool:
    """The device sits on a host node that holds none of the guest's vnodes (its DMA and
    interrupts cross the interconnect): ``nearest``, or ``none`` with a known node. A guest
    without vNUMA (``single``) is not counted: its memory has no per-node map to compare with."""
    return hint.host_node is not None and hint.vnode_source in ("nearest", "none")


def guest_address(device: BackendDevice, guest_type: str | None) -> PciAddress | None:
    if guest_type == "hvm":
        return device.vdevfn_address
    if guest_type in ("pv", "pvh"):
        return device.vdev
    return device.vdev if device.vdev is not None else device.vdevfn_address


def compute_hints(
    devices: Sequence[BackendDevice], config: GuestConfig | None, topology: HostTopology
) -> list[DeviceHint]:
    """One hint per device, in backend order. ``config`` None: the toolstack's view is unknown,
    so the guest is treated as having no vNUMA (vnode 0) and the type as unknown."""
    pnodes: Sequence[int] = config.vnode_pnodes if config is not None else ()
    for index, pnode in enumerate(pnodes):
        if pnode >= topology.num_nodes:
            raise InputError(
                config.source if config is not None else "toolstack",
                f"vnode {index} is placed on pnode {pnode}; "
                f"the host has {topology.num_nodes} nodes",
            )
    guest_type = config.type if config is not None else None
    hints: list[DeviceHint] = []
    for device in devices:
        host_device = topology.device(device.host)
        host_node = host_device.node if host_device is not None else None
        vnode, source = choose_vnode(host_node, pnodes, topology)
        hints.append(
            DeviceHint(device.host, guest_address(device, guest_type), host_node, vnode, source)
        )
    return hints
