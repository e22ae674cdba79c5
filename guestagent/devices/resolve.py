"""Policy: which node a device belongs on. Pure: plain data in, a :class:`Resolution` out."""

from __future__ import annotations

from collections.abc import Mapping

from guestagent.devices.model import DeviceHint, NodeInfo, PciDevice, Resolution

#: Dom0's vnode sources that mean no vnode of the guest sits on the device's host node.
REMOTE_SOURCES = ("nearest", "none")


def on_remote_node(hint: DeviceHint | None) -> bool:
    """Dom0 says the device sits on a host node that holds none of this guest's vnodes: its DMA
    and interrupts cross the host's interconnect whatever the guest does, and only moving the
    guest (its memory and vCPUs) to that node makes it local. The same rule as Dom0's count
    (``guestagent.dom0.hints.on_remote_node``): ``nearest``, or ``none`` with a known node; a
    guest without vNUMA (``single``) has no per-node memory to compare with."""
    return (hint is not None and hint.host_node is not None
            and hint.vnode_source in REMOTE_SOURCES)


def resolve_node(
    device: PciDevice,
    nodes: NodeInfo,
    dom0: Mapping[str, DeviceHint],
    config: Mapping[str, DeviceHint],
) -> Resolution:
    """The device's own ``numa_node`` if >= 0 and online, else Dom0's hint, else the config's.

    Hints are expected already validated (:func:`~guestagent.devices.hints.validate_hints`); a hint
    for a node that is not online is still refused here, so the function is safe on its own.
    """
    notes: list[str] = []
    online = set(nodes.online)
    if device.numa_node >= 0:
        if device.numa_node in online:
            return Resolution(node=device.numa_node, source="kernel")
        notes.append(f"kernel numa_node {device.numa_node} is not an online node")
    for name, hints in (("dom0", dom0), ("config", config)):
        hint = hints.get(device.bdf)
        if hint is None:
            continue
        if hint.vnode in online:
            if name == "dom0":
                return Resolution(node=hint.vnode, source="dom0", notes=notes)
            return Resolution(node=hint.vnode, source="config", notes=notes)
        notes.append(f"{name} hint names node {hint.vnode}, which is not online")
    return Resolution(node=None, source="unknown", notes=notes)
