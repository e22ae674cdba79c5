"""I/O NUMA in the guest: PCI devices bound to their NUMA node.

Data flows the house way (``docs/DEVELOPING.md``):

* :mod:`~guestagent.devices.discovery` reads ``/sys/bus/pci/devices/*`` into :class:`PciDevice`;
* :mod:`~guestagent.devices.hints` gives the Dom0 and configuration hints (:class:`DeviceHint`,
  :class:`HintSource`);
* :mod:`~guestagent.devices.resolve` decides each device's node (pure);
* :mod:`~guestagent.devices.apply` writes IRQ affinity, ``numa_node``, driver rebinds and hugepage
  reservations, recording the previous state first in :mod:`~guestagent.devices.state`;
* :mod:`~guestagent.devices.irqbalance` decides whether IRQ affinity is ours to touch;
* :mod:`~guestagent.devices.hotplug` turns udev events into the re-evaluation of one device;
* :mod:`~guestagent.devices.commands` is ``guestagent devices``.
"""

from __future__ import annotations

from guestagent.devices.model import DeviceHint, NodeSource, PciDevice, Resolution

__all__ = ["DeviceHint", "NodeSource", "PciDevice", "Resolution"]
